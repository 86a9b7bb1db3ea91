"""Show metalib's own code in a chapter, so the book and the library never drift apart.

A chapter cell ``show(sample_indices)`` (its input hidden in the book) renders the function's
source with syntax highlighting: the reader sees exactly the code that runs.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
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
    tree = ast.parse(textwrap.dedent(text))
    node = tree if inspect.ismodule(obj) else tree.body[0]
    body = getattr(node, "body", [])
    first = body[0] if body else None
    if not (
        isinstance(first, ast.Expr)
        and isinstance(first.value, ast.Constant)
        and isinstance(first.value.value, str)
    ):
        return text  # the object has no docstring of its own
    lines = text.splitlines(keepends=True)
    return "".join(lines[: first.lineno - 1] + lines[first.end_lineno :])


def show(*objs: Any, docstring: bool = True):
    """Display the source of one or more functions or classes as highlighted Python."""
    from IPython.display import Code

    return Code("\n\n".join(source(o, docstring=docstring) for o in objs), language="python")
