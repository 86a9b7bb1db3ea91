"""The book's link between a chapter's numbers and its prose, wherever the chapter runs.

A chapter computes a number, then ``glue("name", value, display=False)`` hands it to the prose,
which cites it as ``{glue:text}`name```: every number of the book comes from the code beside it.
While the book is built, this is ``myst_nb.glue``. Where MyST-NB is not installed — Colab, a
student's plain JupyterLab, a release without the book's tools — gluing has no book to feed, so
the value is only shown (or nothing happens, with ``display=False``), and the chapter runs the
same.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

__all__ = ["glue", "table"]

try:  # the book's build, and any environment with the book's tools
    from myst_nb import glue as _myst_glue
except ImportError:  # Colab and other front ends: nothing reads glued values
    _myst_glue = None


def glue(name: str, variable: Any, display: bool = True) -> None:
    """Glue ``variable`` under ``name`` for the prose (MyST-NB's ``glue``, same arguments).

    Args:
        name: the key the prose cites, e.g. ``{glue:text}`maml_acc```.
        variable: any value; the book shows its plain-text or rich representation.
        display: also show the value below the cell, as MyST-NB does.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"glue needs a non-empty string name, got {name!r}")
    if _myst_glue is not None:
        _myst_glue(name, variable, display=display)
    elif display:
        from IPython.display import display as show

        show(variable)


def table(header: Sequence[str], rows: Iterable[Sequence[Any]]):
    """A Markdown table to display under a cell: the first column left-aligned, the rest right.

    Args:
        header: the column titles.
        rows: one sequence per row, as long as ``header``; cells are shown with ``str``, so
            format numbers first (``f"{x:.2f}"``, ``score.as_percent()``).
    Returns:
        An ``IPython.display.Markdown`` object; the last expression of a cell shows it.

    Example:
        >>> table(["method", "accuracy"], [["MAML", "85.4%"]]).data.splitlines()[1]
        '| --- | ---: |'
    """
    from IPython.display import Markdown

    header = [str(h) for h in header]
    if not header:
        raise ValueError("a table needs at least one column title")
    lines = [
        "| " + " | ".join(header) + " |",
        "| --- |" + " ---: |" * (len(header) - 1),
    ]
    for i, row in enumerate(rows):
        cells = [str(c) for c in row]
        if len(cells) != len(header):
            raise ValueError(f"row {i} has {len(cells)} cells for {len(header)} columns: {cells}")
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return Markdown("\n".join(lines))
