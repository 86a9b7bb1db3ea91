"""Prove a tests folder against the course: solutions score full marks, exercise stubs zero.

Usage: ``python tools/check_tests.py [--tests DIR] [--jobs N] [--only NN_topic]``
(``make check-tests TESTS=dir``).

Grades every ``solutions/*.ipynb`` and ``exercises/*.ipynb`` with the grader itself (its sandbox,
so Linux) under the hidden tests of ``DIR`` (default: the repository's ``hidden_tests/``), and
prints one row per notebook. Exit status 0 when every solution scores its maximum and every
exercise 0; 1 otherwise (the failing checks' feedback is printed); 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def grade(notebooks: list[Path], tests: Path, jobs: int, out: Path) -> dict[Path, dict]:
    """``{notebook: its results.json}``, graded by ``python -m metalib.grading``.

    Raises:
        RuntimeError: the grader did not run (its output says why).
    """
    command = [sys.executable, "-m", "metalib.grading", *map(str, notebooks)]
    command += ["--out", str(out), "--tests", str(tests), f"--jobs={jobs}"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"the grader failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    sys.path.insert(0, str(ROOT))
    from metalib.grading.__main__ import output_names

    names = output_names(notebooks)
    return {
        nb: json.loads((out / n / "results.json").read_text())
        for nb, n in zip(notebooks, names, strict=True)
    }


def problems(results: dict[Path, dict]) -> list[str]:
    """What is wrong: a solution below full marks, an exercise above zero (with its feedback)."""
    found = []
    for nb, r in results.items():
        want = r["max_score"] if nb.parent.name == "solutions" else 0
        if r["score"] != want or r["max_score"] <= 0:
            failed = [t["output"] for t in r["tests"] if t["score"] < t["max_score"]]
            if nb.parent.name == "exercises":
                failed = [t["output"] for t in r["tests"] if t["score"] > 0]
            detail = "\n".join(failed)[:1500]
            score = f"{r['score']:g}/{r['max_score']:g}"
            found.append(f"{nb.relative_to(ROOT)}: {score}, expected {want:g}\n{detail}")
    return found


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tests", type=Path, default=ROOT / "hidden_tests", help="the tests folder")
    p.add_argument("--jobs", type=int, default=2, help="notebooks graded at once")
    p.add_argument("--only", metavar="NN_topic", help="one exercise's solution and stub only")
    args = p.parse_args(argv)
    if not args.tests.is_dir():
        p.error(f"tests folder {args.tests} does not exist")
    pattern = f"{args.only}.ipynb" if args.only else "*.ipynb"
    solutions = sorted((ROOT / "solutions").glob(pattern))
    exercises = sorted((ROOT / "exercises").glob(pattern))
    if not solutions or not exercises:
        p.error("needs solutions/*.ipynb and exercises/*.ipynb (the instructors' repository)")
    with tempfile.TemporaryDirectory(prefix="metalib-check-tests-") as out:
        try:
            results = grade(solutions + exercises, args.tests.resolve(), args.jobs, Path(out))
        except RuntimeError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
    print("| notebook | score | expected |\n|---|--:|--:|")
    for nb, r in results.items():
        want = r["max_score"] if nb.parent.name == "solutions" else 0
        print(f"| {nb.relative_to(ROOT)} | {r['score']:g}/{r['max_score']:g} | {want:g} |")
    found = problems(results)
    for text in found:
        print(f"\nFAILED: {text}", file=sys.stderr)
    verdict = "fails" if found else "passes"
    print(f"\nThe tests folder {args.tests} {verdict}: {len(found)} notebook(s) off.")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
