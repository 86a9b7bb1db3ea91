"""The setup cell that lets every chapter and exercise run on Colab (``make colab``).

Colab opens a single notebook from a published repository, with torch installed but without the
repository beside it, so ``import metalib`` fails there. The first code cell of every chapter and
solution (and so of every generated exercise) is therefore this module's :func:`setup_cell`: where
``metalib`` is not importable it pip-installs the workbook from its repository (Colab's torch is
kept: metalib's torch range has no upper bound); everywhere else it does nothing. The data needs
no download (Glyphs renders from matplotlib's fonts), so nothing else is fetched.

Only the publisher knows the repository's address. The committed notebooks name none: there the
cell stops with a message saying what to do. ``make colab REPOSITORY=https://github.com/owner/name
[BRANCH=main]`` writes the address into every notebook (``make release`` does the same for the
students' copy), after which Colab runs them as they are. ``METALIB_SOURCE`` overrides the address
with any pip requirement (a wheel, a folder, a git URL): the tests use it to install a local wheel.

Usage: ``python tools/colab.py [--repository URL] [--branch NAME] [--root DIR] [--check]``.
Without ``--repository`` the cells are rewritten with the address they already carry.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("chapters", "solutions")  # exercises are generated from solutions
TAG = "remove-cell"  # the book's readers need no setup cell
FIRST_LINE = "# Colab setup: installs metalib where it is missing (Colab); else nothing."
# The first line of the cell as written before it fit the book's 77-character code column: a
# notebook holding that cell gets the new one in its place.
OLD_FIRST_LINES = (
    "# Colab setup: installs metalib if it is missing (on Colab); does nothing elsewhere.",
)

TEMPLATE = """{first}
import importlib.util
import os
import subprocess
import sys

SOURCE = os.environ.get(
    "METALIB_SOURCE",
    "{source}",
)
if importlib.util.find_spec("metalib") is None:
    if not SOURCE:
        raise ModuleNotFoundError(
            "metalib is not installed, and this copy of the workbook "
            "names no repository to install it from. Install the "
            "workbook (see its README), or set METALIB_SOURCE to a pip "
            "requirement for it (its git URL, a wheel or a folder)."
        )
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", SOURCE],
        check=True,
    )
    importlib.invalidate_caches()"""

SOURCE_LINE = re.compile(
    r'^SOURCE = os\.environ\.get\(\n    "METALIB_SOURCE",\n    "([^"]*)",\n\)$', re.M
)
URL = re.compile(r"^https://[A-Za-z0-9.-]+/[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")


def pip_source(repository: str | None, branch: str = "main") -> str:
    """The pip requirement that installs the workbook from ``repository`` at ``branch``.

    Raises:
        ValueError: if ``repository`` is not ``https://host/owner/name`` or ``branch`` is empty.
    """
    if not repository:
        return ""
    repository = repository.strip().rstrip("/")
    if not URL.match(repository) or repository.endswith(".git"):
        raise ValueError(
            "REPOSITORY must be the repository's web address, https://host/owner/name "
            f"(no .git), got {repository!r}"
        )
    if not branch or not re.fullmatch(r"[A-Za-z0-9._/-]+", branch):
        raise ValueError(f"BRANCH must name a branch, e.g. main; got {branch!r}")
    return f"metalib @ git+{repository}.git@{branch}"


def setup_cell(source: str = "") -> str:
    """The setup cell's code, installing ``source`` (a pip requirement; "" when none is known)."""
    if '"' in source or "\\" in source or "\n" in source:
        raise ValueError(f"a pip requirement without quotes or backslashes, got {source!r}")
    return TEMPLATE.format(first=FIRST_LINE, source=source)


def is_setup_cell(cell: dict) -> bool:
    """Whether ``cell`` is a setup cell (of any repository)."""
    text = "".join(cell.get("source", ""))
    firsts = (FIRST_LINE, *OLD_FIRST_LINES)
    return cell.get("cell_type") == "code" and text.startswith(firsts)


def cell_source(cell: dict) -> str | None:
    """The pip requirement a setup cell installs ("" for none), or None if it is not one exactly."""
    text = "".join(cell.get("source", ""))
    match = SOURCE_LINE.search(text)
    if not is_setup_cell(cell) or not match or text != setup_cell(match.group(1)):
        return None
    return match.group(1)


def stamp(nb: nbformat.NotebookNode, source: str) -> bool:
    """Put the setup cell installing ``source`` before ``nb``'s first code cell. True if changed."""
    cells = [c for c in nb.cells if not is_setup_cell(c)]
    first_code = next((i for i, c in enumerate(cells) if c.cell_type == "code"), len(cells))
    cell = nbformat.v4.new_code_cell(setup_cell(source), metadata={"tags": [TAG]})
    old = [c for c in nb.cells if is_setup_cell(c)]
    if len(old) == 1 and nb.cells.index(old[0]) == first_code and old[0].source == cell.source:
        if TAG in old[0].get("metadata", {}).get("tags", []):
            return False
    if old and old[0].get("id"):
        cell["id"] = old[0]["id"]
    cells.insert(first_code, cell)
    nb.cells = cells
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", help="https://host/owner/name; default: keep the current")
    parser.add_argument("--branch", default="main")
    parser.add_argument("--root", type=Path, default=ROOT, help="the workbook's folder")
    parser.add_argument("--check", action="store_true", help="exit 1 if a cell would change")
    args = parser.parse_args(argv)
    try:
        wanted = pip_source(args.repository, args.branch) if args.repository else None
    except ValueError as err:
        print(f"colab.py: {err}", file=sys.stderr)
        return 2
    stale = []
    for folder in FOLDERS:
        for path in sorted((args.root / folder).glob("*.ipynb")):
            nb = nbformat.read(path, as_version=4)
            current = [cell_source(c) for c in nb.cells if is_setup_cell(c)]
            source = wanted if wanted is not None else next((s for s in current if s), "")
            if stamp(nb, source):
                stale.append(path.relative_to(args.root))
                if not args.check:
                    nbformat.write(nb, path)
    verb = "would change" if args.check else "wrote"
    for path in stale:
        print(f"{verb} {path}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
