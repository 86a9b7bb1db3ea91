"""``python -m metalib.grading``: grade notebooks into Gradescope results and one CSV.

Usage::

    python -m metalib.grading SUBMISSION_OR_FOLDER [...] --out DIR [--tests DIR]
        [--exercise NAME] [--timeout S] [--cell-timeout S] [--case-timeout S] [--memory-mb M]
        [--jobs N]
        [--brief-hidden] [--hidden-visibility WHEN] [--python PATH] [--gradescope RESULTS_JSON]

Writes ``DIR/<submission>/results.json`` (Gradescope's format), ``DIR/<submission>/log.txt``
(the notebook's output and how it was sandboxed, for the instructor), ``DIR/scores.csv``
(one row per submission: exercise, a column per question, total, max), ``DIR/report.md`` (the
class report, :mod:`metalib.grading.report`) and one line per submission on stdout.

Exit status: 0 when grading ran, whatever the scores; 2 for bad arguments or when no notebook is
found; 1 when the grader cannot run (not on Linux, a dependency missing in the sandbox's Python,
a broken tests folder) or hit an internal error on some submission.

Grading needs Linux (its sandbox). Students on any system check their own notebook with
``python -m metalib.grading.check NOTEBOOK`` (:mod:`metalib.grading.check`): the visible checks
only, unsandboxed.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from metalib.grading import registry, report
from metalib.grading.grader import Grade, Grader, GraderError, exposure
from metalib.grading.launch import Limits, require_linux

VISIBILITIES = ("hidden", "after_due_date", "after_published", "visible")  # Gradescope's


def parse_args(argv: list[str]) -> argparse.Namespace:
    limits = Limits()
    p = argparse.ArgumentParser(
        prog="python -m metalib.grading",
        description="Grade exercise notebooks in a sandbox (Linux): Gradescope results.json per "
        "submission and scores.csv for all of them.",
        epilog="To check your own notebook on any system (visible checks only, no sandbox): "
        "python -m metalib.grading.check NOTEBOOK",
    )
    p.add_argument("paths", nargs="+", type=Path, help="notebooks, or folders of notebooks")
    p.add_argument("--out", type=Path, help="folder for the results (required unless --gradescope)")
    p.add_argument(
        "--tests",
        type=Path,
        help="folder of hidden tests (default: the repository's hidden_tests/)",
    )
    add_run_options(p, limits)
    p.add_argument(
        "--memory-mb", type=int, default=limits.memory_mb, help="address space per notebook"
    )
    p.add_argument(
        "--brief-hidden",
        action="store_true",
        help="report failed hidden checks by count only, not their inputs and messages",
    )
    p.add_argument(
        "--hidden-visibility",
        choices=VISIBILITIES,
        default="after_due_date",
        help="when students see the hidden checks' results on Gradescope (default: after_due_date)",
    )
    p.add_argument("--jobs", type=int, default=1, help="notebooks graded at once")
    p.add_argument(
        "--python", default=sys.executable, help="Python that runs the notebooks (default: this)"
    )
    p.add_argument(
        "--gradescope",
        type=Path,
        metavar="RESULTS_JSON",
        help="Gradescope mode: expect exactly one notebook, write its results.json here",
    )
    args = p.parse_args(argv)
    if args.out is None and args.gradescope is None:
        p.error("--out DIR is required")
    if args.jobs < 1:
        p.error(f"--jobs must be at least 1, got {args.jobs}")
    try:
        args.limits = Limits(
            timeout=args.timeout,
            cell_timeout=args.cell_timeout,
            case_timeout=args.case_timeout,
            memory_mb=args.memory_mb,
        )
    except ValueError as err:
        p.error(str(err))
    return args


def add_run_options(p: argparse.ArgumentParser, limits: Limits) -> None:
    """The options the grader and the students' self-check share: the exercise, the time limits."""
    p.add_argument("--exercise", help="exercise of notebooks whose metadata names none")
    p.add_argument("--timeout", type=float, default=limits.timeout, help="seconds per notebook")
    p.add_argument(
        "--cell-timeout", type=float, default=limits.cell_timeout, help="seconds per code cell"
    )
    p.add_argument(
        "--case-timeout", type=float, default=limits.case_timeout, help="seconds per check"
    )


def find_notebooks(paths: list[Path]) -> list[Path]:
    """The notebooks named, and those directly inside the folders named, in order.

    Raises:
        ValueError: a path does not exist or is a file that is not a notebook.
    """
    found = []
    for path in paths:
        if path.is_dir():
            found += sorted(p for p in path.glob("*.ipynb") if not p.name.startswith("."))
        elif path.is_file() and path.suffix == ".ipynb":
            found.append(path)
        elif path.exists():
            raise ValueError(f"{path} is not a notebook (.ipynb) or a folder")
        else:
            raise ValueError(f"{path} does not exist")
    return found


def output_names(notebooks: list[Path]) -> list[str]:
    """A distinct folder name per notebook: its stem, then ``stem-2``, ``stem-3``..."""
    names, seen = [], set()
    for nb in notebooks:
        name, n = nb.stem, 1
        while name in seen:
            n += 1
            name = f"{nb.stem}-{n}"
        seen.add(name)
        names.append(name)
    return names


def write_results(out: Path, name: str, results: dict, log: str) -> None:
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (folder / "log.txt").write_text(log + "\n")


def write_csv(path: Path, rows: list[tuple[str, Grade]]) -> None:
    """One row per submission: its exercise, a column per question, the total and the maximum."""
    names = list(dict.fromkeys(q.name for _, grade in rows for q in grade.questions))
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["submission", "exercise", *names, "total", "max"])
        for name, grade in rows:
            got = {q.name: f"{q.score:g}" for q in grade.questions}
            cells = [got.get(q, "") for q in names]
            total = [f"{grade.score:g}", f"{grade.max_score:g}"]
            writer.writerow([name, grade.exercise or "", *cells, *total])


def gradescope_refusal(notebooks: list[Path]) -> dict:
    """results.json telling the student to upload exactly one notebook."""
    found = ", ".join(nb.name for nb in notebooks) or "no .ipynb file"
    return {
        "score": 0,
        "output": f"Upload exactly one notebook (.ipynb) to be graded; found {found}.",
        "tests": [],
    }


def _grade_safely(grader: Grader, path: Path) -> tuple[Grade, bool]:
    try:
        return grader.grade(path), True
    except Exception:  # a grader bug: report it, go on with the next submission
        text = traceback.format_exc()
        print(f"internal grader error on {path}:\n{text}", file=sys.stderr)
        note = "Internal grader error: this score is not valid; tell the instructor."
        return Grade(path.name, None, (), (note,), 0.0, text), False


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        require_linux()
    except GraderError as err:
        print(f"error: the grader cannot run: {err}", file=sys.stderr)
        return 1
    if args.out is not None:
        return grade(args, args.out)
    with tempfile.TemporaryDirectory(prefix="metalib-results-") as out:  # Gradescope mode
        return grade(args, Path(out))


def grade(args: argparse.Namespace, out: Path) -> int:
    """Grade what ``args`` name into ``out``; the exit status."""
    try:
        notebooks = find_notebooks(args.paths)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.gradescope is not None and len(notebooks) != 1:
        args.gradescope.parent.mkdir(parents=True, exist_ok=True)
        args.gradescope.write_text(json.dumps(gradescope_refusal(notebooks), indent=2) + "\n")
        print(f"expected exactly one notebook, found {len(notebooks)}; wrote {args.gradescope}")
        return 0
    if not notebooks:
        print(f"error: no notebook (.ipynb) in {', '.join(map(str, args.paths))}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    try:
        exercises = registry.load_exercises(args.tests)
    except ValueError as err:
        print(f"error: the grader cannot run: {err}", file=sys.stderr)
        return 1
    if args.exercise is not None and args.exercise not in exercises:
        known = ", ".join(sorted(exercises))
        print(
            f"error: --exercise {args.exercise!r} is not a known exercise ({known})",
            file=sys.stderr,
        )
        return 2
    try:
        folders = sorted({nb.parent.resolve() for nb in notebooks})
        # The repository's own hidden_tests/ too when --tests names other ones: both are secret.
        both = (args.tests, registry.default_tests_dir())
        tests = list(dict.fromkeys(Path(t).resolve() for t in both if t is not None))
        hide = [*tests, out, *folders]
        grader = Grader(
            exercises,
            args.limits,
            args.python,
            args.exercise,
            [h for h in hide if h],
            hidden_details=not args.brief_hidden,
        )
        notes = grader.preflight()
    except (ValueError, GraderError) as err:
        print(f"error: the grader cannot run: {err}", file=sys.stderr)
        return 1
    print("sandbox: " + "; ".join(notes))
    for warning in exposure(notes, tests):
        print(f"warning: {warning}", file=sys.stderr)
    start, rows, failures = time.monotonic(), [], 0
    names = output_names(notebooks)
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        graded = pool.map(lambda nb: _grade_safely(grader, nb), notebooks)
        for name, (result, ok) in zip(names, graded, strict=True):
            write_results(out, name, result.results(args.hidden_visibility), result.log)
            rows.append((name, result))
            failures += not ok
            print(result.summary(), flush=True)
    write_csv(out / "scores.csv", rows)
    if args.gradescope is not None:
        args.gradescope.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(rows[0][1].results(args.hidden_visibility), indent=2)
        args.gradescope.write_text(text + "\n")
    else:
        report.write(out, exercises)
    took = time.monotonic() - start
    print(
        f"graded {len(rows)} notebook(s) in {took:.1f} s; scores in {out / 'scores.csv'}, "
        f"class report in {out / 'report.md'}"
        if args.gradescope is None
        else f"graded {len(rows)} notebook(s) in {took:.1f} s"
    )
    if failures:
        print(f"error: {failures} submission(s) hit an internal grader error", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
