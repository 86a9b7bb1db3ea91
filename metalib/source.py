"""Show metalib's own code in a chapter, so the book and the library never drift apart.

A chapter cell ``show(sample_indices)`` (its input hidden in the book) renders the function's
source with syntax highlighting: the reader sees exactly the code that runs.

The library documents its functions for someone calling them: what each argument is, its shape,
what comes back, an example. In a chapter that reads badly: a 6-line function with a 24-line
docstring is read as 30 lines, and the lesson is the 6. So ``show`` prints every docstring of
the code it shows (a function's own, a class's and its methods') cut to its summary, the first
paragraph, and keeps the body exactly as it runs; the full docstrings sit in a fold under the
code, one click away. The code fits the book's column (77 characters): a summary longer than
that is re-wrapped, and the chapters' test checks every shown line.
"""

from __future__ import annotations

import ast
import html
import inspect
import textwrap
from dataclasses import dataclass, field
from typing import Any

__all__ = ["COLUMN", "Shown", "show", "source", "summarize"]

COLUMN = 77
"""Characters in a line of a code block of the book (the 78th scrolls): ``show``'s width."""


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
    first = _docstring_node(node)
    if first is None:
        return text  # the object has no docstring of its own
    lines = text.splitlines(keepends=True)
    return "".join(lines[: first.lineno - 1] + lines[first.end_lineno :])


def _docstring_node(node: ast.AST) -> ast.Constant | None:
    """The string constant that is the docstring of a module, class or function node, if any."""
    body = getattr(node, "body", None)
    first = body[0] if isinstance(body, list) and body else None
    if (
        isinstance(first, ast.Expr)
        and isinstance(first.value, ast.Constant)
        and isinstance(first.value.value, str)
    ):
        return first.value
    return None


def _name(obj: Any) -> str:
    """How the fold names an object: its module's last name, then its qualified name."""
    if inspect.ismodule(obj):
        return obj.__name__.rsplit(".", 1)[-1]
    module = getattr(obj, "__module__", None) or ""
    qualname = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", repr(obj))
    if module in ("", "__main__", "builtins"):
        return qualname
    return f"{module.rsplit('.', 1)[-1]}.{qualname}"


def _summary_lines(literal: str, indent: int, width: int) -> list[str] | None:
    """The lines of a docstring literal cut to its first paragraph, as a triple-quoted string.

    ``literal`` is the docstring as written in the source (prefix and quotes included), so escapes
    stay as the author wrote them. The summary keeps its own line breaks where every line fits in
    ``width`` columns at ``indent``; otherwise it is re-wrapped. ``None`` for a literal this does
    not understand (an implicit concatenation, say), which is then left as it is.
    """
    prefix = ""
    while literal[:1].isalpha():
        prefix, literal = prefix + literal[0], literal[1:]
    quote = next((q for q in ('"""', "'''", '"', "'") if literal.startswith(q)), None)
    if quote is None or not literal.endswith(quote) or len(literal) < 2 * len(quote):
        return None
    inner = inspect.cleandoc(literal[len(quote) : -len(quote)])
    paragraph: list[str] = []
    for line in inner.splitlines():
        if not line.strip():
            if paragraph:
                break
            continue
        paragraph.append(line.rstrip())
    if not paragraph:
        return None
    pad = " " * indent
    opening = prefix + '"""'
    lines = [pad + opening + paragraph[0]] + [pad + line for line in paragraph[1:]]
    lines[-1] += '"""'
    if max(len(line) for line in lines) <= width:
        return lines
    wrapped = textwrap.wrap(
        " ".join(line.strip() for line in paragraph),
        width=max(width - indent - len('"""'), 20),
        initial_indent=opening,
        break_long_words=False,
        break_on_hyphens=False,
    )
    lines = [pad + line for line in wrapped]
    lines[-1] += '"""'
    return lines


def summarize(obj: Any, width: int = COLUMN) -> tuple[str, list[tuple[str, str]]]:
    """The source of ``obj`` with its docstrings cut to their summaries, and the full docstrings.

    Every docstring in the source (the object's own and those of the functions and classes
    defined in it, e.g. a class's methods) becomes its first paragraph, re-wrapped to ``width``
    columns if a line would be longer; the rest of the code is unchanged. A method's source is
    dedented to column 0.

    Returns:
        ``(code, docstrings)``: the code as shown, and one ``(name, text)`` per docstring it
        held, in source order, e.g. ``("maml.adapt", "Adapt ...")``, with ``inspect.cleandoc``'s
        indentation. Empty for an object without docstrings.
    Raises:
        ValueError: ``obj`` has no source (a builtin, an instance, a value).
    """
    text = textwrap.dedent(source(obj))
    tree = ast.parse(text)
    top = tree if inspect.ismodule(obj) else tree.body[0]
    found: list[tuple[str, ast.Constant]] = []

    def visit(node: ast.AST, name: str) -> None:
        doc = _docstring_node(node)
        if doc is not None:
            found.append((name, doc))
        for child in _definitions(node):
            visit(child, f"{name}.{child.name}")

    visit(top, _name(obj))
    lines = text.splitlines(keepends=True)
    for _, doc in sorted(found, key=lambda item: item[1].lineno, reverse=True):
        first, last = lines[doc.lineno - 1], lines[doc.end_lineno - 1]
        before, after = first[: doc.col_offset], last[doc.end_col_offset :]
        if before.strip() or after.strip():
            continue  # shares a line with other code: leave it as written
        literal = "".join(lines[doc.lineno - 1 : doc.end_lineno])[doc.col_offset :].rstrip()
        summary = _summary_lines(literal, doc.col_offset, width)
        if summary is not None:
            lines[doc.lineno - 1 : doc.end_lineno] = [line + "\n" for line in summary]
    docstrings = [(name, inspect.cleandoc(doc.value)) for name, doc in found]
    return "".join(lines), docstrings


def _definitions(node: ast.AST):
    """The functions and classes defined in ``node``'s body, also inside its ``if``, ``with``..."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            yield child
        elif not isinstance(child, (ast.expr, ast.arguments)):
            yield from _definitions(child)


_FOLD_STYLE = "white-space: pre-wrap; overflow-wrap: anywhere; margin-top: 0.5em"


@dataclass
class Shown:
    """What ``show`` returns: highlighted code, with the full docstrings folded below it.

    ``data`` is the code as shown (summaries only), which is also the plain-text repr;
    ``docstrings`` holds, per object shown, its ``(name, text)`` docstrings. In HTML (the book,
    Jupyter, Colab) the code is IPython's ``Code``, so pygments' ``<div class="highlight">``
    looks as any code of the page, and each documented object gets a ``<details>`` fold.
    """

    data: str
    docstrings: list[list[tuple[str, str]]] = field(default_factory=list)

    def _code(self):
        from IPython.display import Code

        return Code(self.data, language="python")

    def __repr__(self) -> str:
        return self.data

    def _repr_pretty_(self, printer, cycle: bool) -> None:
        printer.text(self.data)

    def _repr_html_(self) -> str:
        return self._code()._repr_html_() + "".join(_fold(docs) for docs in self.docstrings)

    def _repr_latex_(self) -> str:
        return self._code()._repr_latex_()


def _fold(docs: list[tuple[str, str]]) -> str:
    """The ``<details>`` that holds one object's full docstrings ("" when it has none)."""
    if not docs:
        return ""
    if len(docs) == 1:
        title = f"Full docstring of {docs[0][0]}"
        body = f'<pre style="{_FOLD_STYLE}">{html.escape(docs[0][1])}</pre>'
    else:
        title = f"Full docstrings of {_owner([name for name, _ in docs])}"
        body = "".join(
            f"<p><code>{html.escape(name)}</code></p>"
            f'<pre style="{_FOLD_STYLE}">{html.escape(text)}</pre>'
            for name, text in docs
        )
    return (
        f'<details class="metalib-docstring"><summary>{html.escape(title)}</summary>'
        f"{body}</details>"
    )


def _owner(names: list[str]) -> str:
    """The dotted name that all ``names`` start with: ``tta.Tent`` for the class and its methods."""
    common: list[str] = []
    for level in zip(*(name.split(".") for name in names), strict=False):
        if len(set(level)) > 1:
            break
        common.append(level[0])
    return ".".join(common)


def show(*objs: Any) -> Shown:
    """Display the source of functions or classes: summaries in the code, full docstrings folded.

    Each object is shown as its source with every docstring cut to its summary (see
    ``summarize``), so the reader reads the code that runs and not its reference documentation;
    the objects are separated by a blank line. Under the code, each documented object has a fold
    "Full docstring of maml.adapt" with the whole docstring. The last expression of a cell
    displays the result; ``repr`` gives the code as plain text.

    Raises:
        ValueError: one of ``objs`` has no source (a builtin, an instance, a value).
    """
    shown = [summarize(obj) for obj in objs]
    return Shown("\n\n".join(code for code, _ in shown), [docs for _, docs in shown])
