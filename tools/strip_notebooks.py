"""Strip outputs, execution counts and noisy metadata from notebooks (``make strip``).

Usage: ``python tools/strip_notebooks.py [paths...]`` (default: chapters, exercises, solutions).
Keeps cell tags, the book's per-cell settings (``mystnb``) and the kernelspec; drops outputs,
counts, widget state and execution timing.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
KEEP_NB_METADATA = ("kernelspec", "language_info", "jupytext", "workbook")
# tags, and the book's per-cell settings (the label of a folded cell: "mystnb" code_prompt_show)
KEEP_CELL_METADATA = ("tags", "mystnb")


def clean(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Strip one notebook in memory (in place, and returned): outputs, counts, noisy metadata."""
    nb.metadata = {k: v for k, v in nb.metadata.items() if k in KEEP_NB_METADATA}
    nb.metadata.setdefault(
        "kernelspec", {"name": "python3", "display_name": "Python 3", "language": "python"}
    )
    nb.metadata.get("language_info", {}).pop("version", None)
    for cell in nb.cells:
        cell.metadata = {k: v for k, v in cell.metadata.items() if k in KEEP_CELL_METADATA}
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    return nb


def strip(path: Path) -> bool:
    """Strip one notebook file in place; return True when it changed."""
    before = path.read_text()
    after = nbformat.writes(clean(nbformat.reads(before, as_version=4)), version=4) + "\n"
    if after != before:
        path.write_text(after)
        return True
    return False


def main(argv: list[str]) -> int:
    paths = [Path(a) for a in argv] or [
        p
        for d in ("chapters", "exercises", "solutions")
        for p in sorted((ROOT / d).glob("*.ipynb"))
    ]
    for p in paths:
        if strip(p):
            print(f"stripped {p}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
