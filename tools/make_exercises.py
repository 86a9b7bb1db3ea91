"""Generate the exercise notebooks from the solutions (``make exercises``).

Usage: ``python tools/make_exercises.py [--check] [solutions/NN_topic.ipynb ...]``
(default: every ``solutions/*.ipynb``). Each solution ``<dir>/solutions/X.ipynb`` gives
``<dir>/exercises/X.ipynb``. With ``--check`` nothing is written: the exit status is 1 when a
committed exercise differs from what would be generated (or is missing, or has no solution left),
0 when all are in sync. Malformed markers exit 2 with the notebook, cell and line.

In code cells, every block from a ``# BEGIN SOLUTION`` line to an ``# END SOLUTION`` line
(whole lines, any indentation, trailing spaces allowed) becomes
``raise NotImplementedError("<hint>")`` at the BEGIN line's indentation. A ``# HINT: text`` line
right after BEGIN is kept as a comment above the stub and ``text`` becomes the message. Cells
tagged ``solution-only`` are dropped. Outputs and noisy metadata are stripped exactly as
``tools/strip_notebooks.py`` does, and the notebook metadata gets ``workbook.role = "exercise"``.
Markdown and raw cells are copied unchanged (prose may mention the markers). Cells are counted
from 0 (nbformat's index) and lines within a cell from 1 in error messages.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import nbformat

# `python tools/make_exercises.py` puts tools/ on sys.path; importing this file by path does not.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from strip_notebooks import clean  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_HINT = "write your answer here, then run the check cell below"
SOLUTION_ONLY = "solution-only"

BEGIN = re.compile(r"^([ \t]*)# BEGIN SOLUTION[ \t]*$")
END = re.compile(r"^[ \t]*# END SOLUTION[ \t]*$")
HINT = re.compile(r"^[ \t]*#[ \t]*HINT:(.*)$")
# A misspelt marker ("### BEGIN SOLUTION", "#END SOLUTION", "# begin solution") would copy the
# answer into the student notebook unnoticed, so anything resembling a marker must be exact.
NEAR_MISS = re.compile(r"(BEGIN|END)[ \t_-]*SOLUTION", re.IGNORECASE)


def _literal(text: str) -> str:
    """A double-quoted Python string literal for ``text``."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + escaped.replace("\n", "\\n").replace("\r", "\\r") + '"'


MAX_LINE = 100  # the project's line length (ruff)


def stub_source(source: str, where: str) -> tuple[str, int]:
    """Replace each solution block of one code cell's source by a ``NotImplementedError`` stub.

    Args:
        source: the cell's source text.
        where: ``"<notebook>, cell <i>"``, the prefix of error messages.
    Returns:
        the new source and the number of blocks replaced.
    Raises:
        ValueError: nested BEGIN, END without BEGIN, BEGIN without END, or a near-miss marker.
    """
    out: list[str] = []
    opened = 0  # 1-based line of the open BEGIN, 0 when outside a block
    indent = ""
    blocks = 0
    lines = source.split("\n")
    for number, line in enumerate(lines, start=1):
        begin, end = BEGIN.match(line), END.match(line)
        if not (begin or end) and NEAR_MISS.search(line):
            raise ValueError(
                f"{where}, line {number}: {line.strip()!r} looks like a solution marker; "
                "write exactly '# BEGIN SOLUTION' or '# END SOLUTION' on a line of its own"
            )
        if begin:
            if opened:
                raise ValueError(
                    f"{where}, line {number}: nested '# BEGIN SOLUTION' (the block opened at "
                    f"line {opened} is not closed); add '# END SOLUTION' before it"
                )
            opened, indent = number, begin.group(1)
            hint = HINT.match(lines[number]) if number < len(lines) else None
            message = hint.group(1).strip() if hint else ""
            if hint:
                out.append(f"{indent}# HINT: {message}".rstrip())
            stub = f"{indent}raise NotImplementedError({_literal(message or DEFAULT_HINT)})"
            if len(stub) > MAX_LINE:  # the layout ruff format gives a long call
                stub = (
                    f"{indent}raise NotImplementedError(\n{indent}    "
                    f"{_literal(message or DEFAULT_HINT)}\n{indent})"
                )
            out.append(stub)
        elif end:
            if not opened:
                raise ValueError(
                    f"{where}, line {number}: '# END SOLUTION' without a '# BEGIN SOLUTION' "
                    "before it in the same cell"
                )
            opened = 0
            blocks += 1
        elif not opened:
            out.append(line)
    if opened:
        raise ValueError(
            f"{where}, line {opened}: '# BEGIN SOLUTION' is never closed; add '# END SOLUTION' "
            "in the same cell"
        )
    return "\n".join(out), blocks


def _read(path: Path) -> nbformat.NotebookNode:
    """Read a notebook; cells without an id get a stable one (nbformat would draw a random one)."""
    data = json.loads(path.read_text(encoding="utf-8"))
    if (data.get("nbformat"), data.get("nbformat_minor", 0)) >= (4, 5):
        for i, cell in enumerate(data.get("cells", [])):
            cell.setdefault("id", f"cell-{i}")
    return nbformat.reads(json.dumps(data), as_version=4)


def make_exercise(solution: nbformat.NotebookNode, name: str) -> nbformat.NotebookNode:
    """Build the exercise notebook from a solution notebook (the argument is not modified).

    Args:
        solution: the solution notebook (nbformat 4).
        name: how errors name it, e.g. ``"solutions/00_tasks.ipynb"``.
    Returns:
        a new notebook: stubs for the blocks, ``solution-only`` cells dropped, outputs and
        metadata stripped as by ``tools/strip_notebooks.py``, ``workbook.role = "exercise"``.
    Raises:
        ValueError: malformed markers (naming notebook, cell and line), or no block at all.
    """
    nb = nbformat.from_dict(json.loads(json.dumps(solution)))  # deep copy
    cells, blocks = [], 0
    for i, cell in enumerate(nb.cells):
        if SOLUTION_ONLY in cell.metadata.get("tags", []):
            continue
        if cell.cell_type == "code":
            cell.source, n = stub_source(cell.source, f"{name}, cell {i}")
            blocks += n
        cells.append(cell)
    if not blocks:
        raise ValueError(
            f"{name}: no '# BEGIN SOLUTION' ... '# END SOLUTION' block in any code cell; "
            "the exercise would hand out the whole solution"
        )
    nb.cells = cells
    clean(nb)
    nb.metadata["workbook"] = {**nb.metadata.get("workbook", {}), "role": "exercise"}
    return nb


def render(solution_path: Path) -> str:
    """The exact text of the exercise generated from ``solution_path`` (ends with a newline)."""
    nb = make_exercise(_read(solution_path), _show(solution_path))
    return nbformat.writes(nb, version=4) + "\n"


def exercise_path(solution_path: Path) -> Path:
    """``<dir>/solutions/X.ipynb`` -> ``<dir>/exercises/X.ipynb``."""
    return solution_path.resolve().parent.parent / "exercises" / solution_path.name


def _show(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def main(argv: list[str] | None = None, root: Path = ROOT) -> int:
    """Write (or with ``--check`` compare) the exercises; return the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 on drift")
    parser.add_argument("solutions", nargs="*", type=Path, help="default: solutions/*.ipynb")
    args = parser.parse_args(argv)
    paths = args.solutions or sorted((root / "solutions").glob("*.ipynb"))
    errors, drifted, written = [], [], 0
    for path in paths:
        if path.suffix != ".ipynb" or path.resolve().parent.name != "solutions":
            errors.append(f"{_show(path)}: expected a notebook inside a 'solutions' folder")
            continue
        try:
            text = render(path)
        except (ValueError, nbformat.ValidationError, json.JSONDecodeError) as err:
            errors.append(str(err) if isinstance(err, ValueError) else f"{_show(path)}: {err}")
            continue
        target = exercise_path(path)
        data = text.encode("utf-8")
        if target.exists() and target.read_bytes() == data:
            continue
        if args.check:
            state = "differs from" if target.exists() else "is missing; generate it from"
            drifted.append(f"{_show(target)} {state} {_show(path)}")
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)  # bytes: no newline translation, same file on every OS
            written += 1
            print(f"wrote {_show(target)}")
    if not args.solutions:  # a full run also notices exercises whose solution is gone
        names = {p.name for p in paths}
        for orphan in sorted((root / "exercises").glob("*.ipynb")):
            if orphan.name not in names:
                drifted.append(f"{_show(orphan)} has no solution; delete it")
    for line in errors:
        print(f"error: {line}", file=sys.stderr)
    if args.check:
        for line in drifted:
            print(f"drift: {line}", file=sys.stderr)
        if drifted and not errors:
            print("run `make exercises` (python tools/make_exercises.py)", file=sys.stderr)
    else:
        for line in drifted:
            print(f"note: {line}", file=sys.stderr)
        print(f"{written} exercise(s) written, {len(paths) - written - len(errors)} unchanged")
    if errors:
        return 2
    return 1 if args.check and drifted else 0


if __name__ == "__main__":
    raise SystemExit(main())
