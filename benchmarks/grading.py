"""Time the grader: one submission, and a folder of ten (solutions and blank exercises mixed).

    .venv/bin/python benchmarks/grading.py

Prints a Markdown table and writes benchmarks/results/grading.md. The issue's budget: at most
30 s per submission besides the time its own code needs. The per-notebook times are the
grader's own (sandbox start, notebook, checks, judging); the wall time adds the one-off
start-up and preflight of each command.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "grading.md"


def grade(folder: Path, out: Path, *extra: str) -> tuple[float, list[float]]:
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "metalib.grading", str(folder), "--out", str(out), *extra],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    wall = time.perf_counter() - start
    per = [float(m) for m in re.findall(r"\[([0-9.]+) s\]", done.stdout)]
    return wall, per


def main() -> int:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        one, ten = tmp / "one", tmp / "ten"
        one.mkdir()
        ten.mkdir()
        shutil.copy(ROOT / "solutions" / "01_finetuning.ipynb", one / "student.ipynb")
        sources = sorted((ROOT / "solutions").glob("*.ipynb")) * 3
        sources += sorted((ROOT / "exercises").glob("*.ipynb")) * 2
        for i, src in enumerate(sources[:10]):
            shutil.copy(src, ten / f"student{i:02d}_{src.stem}.ipynb")
        wall, per = grade(one, tmp / "out1")
        rows.append(("one submission (solution 01)", wall, f"{per[0]:.1f}"))
        for jobs in ("1", "2"):
            wall, per = grade(ten, tmp / f"out10_{jobs}", "--jobs", jobs)
            rows.append(
                (
                    f"folder of 10, --jobs {jobs}",
                    wall,
                    f"{min(per):.1f}–{max(per):.1f} (median {sorted(per)[len(per) // 2]:.1f})",
                )
            )
    header = f"Measured {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores\n\n"
    table = "| what | wall s | per notebook s |\n| --- | ---: | --- |\n" + "".join(
        f"| {name} | {wall:.1f} | {per} |\n" for name, wall, per in rows
    )
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(header + table)
    print(header + table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
