"""The book's link between a chapter's numbers and its prose, wherever the chapter runs.

A chapter computes a number, then ``glue("name", value, display=False)`` hands it to the prose,
which cites it as ``{glue:text}`name```: every number of the book comes from the code beside it.
While the book is built, this is ``myst_nb.glue``. Where MyST-NB is not installed — Colab, a
student's plain JupyterLab, a release without the book's tools — gluing has no book to feed, so
the value is only shown (or nothing happens, with ``display=False``), and the chapter runs the
same.
"""

from __future__ import annotations

from typing import Any

__all__ = ["glue"]

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
