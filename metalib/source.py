"""Show metalib's own code in a chapter, so the book and the library never drift apart.

A chapter cell ``show(sample_indices)`` (its input hidden in the book) renders the function's
source with syntax highlighting: the reader sees exactly the code that runs.
"""

from __future__ import annotations

import inspect
from typing import Any


def source(obj: Any, docstring: bool = True) -> str:
    """The source of a function, class or module (without its docstring if ``docstring=False``)."""
    try:
        text = inspect.getsource(obj)
    except (TypeError, OSError) as err:
        raise ValueError(
            f"no source available for {obj!r}: pass a function, class or module"
        ) from err
    if docstring:
        return text
    doc = inspect.getdoc(obj)
    if not doc:
        return text
    lines = text.splitlines(keepends=True)
    for i, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith(('"""', "'''", 'r"""')):
            quote = stripped.lstrip("r")[:3]
            end = (
                i
                if stripped.count(quote) >= 2 and len(stripped) > 3
                else next(j for j in range(i + 1, len(lines)) if quote in lines[j])
            )
            return "".join(lines[:i] + lines[end + 1 :])
    return text


def show(*objs: Any, docstring: bool = True):
    """Display the source of one or more functions or classes as highlighted Python."""
    from IPython.display import Code

    return Code("\n\n".join(source(o, docstring=docstring) for o in objs), language="python")
