"""Correct answers score full marks on a busy machine: the solutions graded again under load.

    .venv/bin/python benchmarks/grading_load.py [--runs 5] [--hogs 2]

Starts ``--hogs`` processes that spin on a core each (both cores of a 2-core machine busy), then
grades every ``solutions/*.ipynb`` and ``exercises/*.ipynb`` with ``--jobs=2`` ``--runs`` times
(:mod:`tools.check_tests`). Writes ``benchmarks/results/grading_load.md``: per run, how many
solutions scored full marks, how many stubs 0, and the slowest notebook; every score that was
off, with its feedback. Exit status 1 when any was off.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "grading_load.md"
sys.path.insert(0, str(ROOT / "tools"))
from check_tests import grade, problems  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--hogs", type=int, default=2, help="busy processes beside the grader")
    args = p.parse_args(argv)
    notebooks = sorted((ROOT / "solutions").glob("*.ipynb"))
    notebooks += sorted((ROOT / "exercises").glob("*.ipynb"))
    spin = [sys.executable, "-c", "while True: pass"]
    hogs = [subprocess.Popen(spin) for _ in range(args.hogs)]
    rows, off = [], []
    try:
        for run in range(1, args.runs + 1):
            with tempfile.TemporaryDirectory(prefix="metalib-load-") as out:
                start = time.perf_counter()
                results = grade(notebooks, ROOT / "hidden_tests", 2, Path(out))
                wall = time.perf_counter() - start
            found = problems(results)
            off += [f"run {run}: {text}" for text in found]
            solutions = [r for nb, r in results.items() if nb.parent.name == "solutions"]
            stubs = [r for nb, r in results.items() if nb.parent.name == "exercises"]
            full = sum(r["score"] == r["max_score"] for r in solutions)
            zero = sum(r["score"] == 0 for r in stubs)
            slowest = max(r["execution_time"] for r in results.values())
            rows.append((run, full, len(solutions), zero, len(stubs), slowest, wall))
            print(
                f"run {run}: {full}/{len(solutions)} full, {zero}/{len(stubs)} zero, {wall:.0f} s"
            )
    finally:
        for hog in hogs:
            hog.kill()
    header = (
        f"Measured {time.strftime('%Y-%m-%d %H:%M')} on {os.cpu_count()} cores with {args.hogs} "
        f"busy processes beside the grader (`--jobs=2`), {args.runs} runs.\n\n"
    )
    table = "| run | solutions at full marks | stubs at 0 | slowest notebook s | wall s |\n"
    table += "| ---: | ---: | ---: | ---: | ---: |\n"
    table += "".join(
        f"| {r} | {f}/{s} | {z}/{e} | {t:.1f} | {w:.0f} |\n" for r, f, s, z, e, t, w in rows
    )
    tail = "\nEvery score as expected.\n" if not off else "\nOff:\n\n" + "\n".join(off) + "\n"
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(header + table + tail)
    print(header + table + tail)
    return 1 if off else 0


if __name__ == "__main__":
    raise SystemExit(main())
