"""Time each chapter, the cold and cached book builds, and the README's test command.

    .venv/bin/python benchmarks/timings.py [--skip-book] [--skip-tests]

Prints a Markdown table and writes it to benchmarks/results/timings.md. Budgets (2-core CPU, see
DESIGN.md): a chapter <= 180 s; the cold book build of what exists <= 600 s at this stage (whole
book <= 1200 s); the test command <= 900 s at this stage. Wall-clock times on a shared machine
are noisy: read them as budgets met or not, not as precise figures.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import torch
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
OUT = ROOT / "benchmarks" / "results" / "timings.md"


def run(cmd: list[str], env: dict | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(
        cmd,
        cwd=ROOT,
        check=True,
        env={**os.environ, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return time.perf_counter() - start


def time_chapter(path: Path) -> float:
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    )
    start = time.perf_counter()
    client.execute()
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-book", action="store_true")
    parser.add_argument("--skip-tests", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("METALIB_PROGRESS", "0")
    os.environ.setdefault("METALIB_THREADS", "2")

    rows: list[tuple[str, float, str]] = []
    for path in sorted((ROOT / "chapters").glob("*.ipynb")):
        seconds = time_chapter(path)
        rows.append((f"chapter {path.stem}", seconds, "<= 180 s"))
        print(f"{path.stem}: {seconds:.1f} s", flush=True)

    if not args.skip_book:
        shutil.rmtree(ROOT / "_build", ignore_errors=True)
        rows.append(("book build, cold (make book)", run(["make", "book"]), "<= 600 s"))
        rows.append(("book build, cached (make book)", run(["make", "book"]), "< 60 s"))
    if not args.skip_tests:
        rows.append(("test command (make test)", run(["make", "test"]), "<= 900 s"))

    header = (
        f"Measured {time.strftime('%Y-%m-%d %H:%M')} on {platform.machine()}, "
        f"{os.cpu_count()} cores, torch {torch.__version__}, "
        f"{os.environ['METALIB_THREADS']} threads, budget "
        f"{os.environ.get('METALIB_BUDGET', 'default')}\n\n"
    )
    table = "| what | seconds | budget |\n| --- | ---: | --- |\n" + "".join(
        f"| {name} | {sec:.1f} | {budget} |\n" for name, sec, budget in rows
    )
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(header + table)
    print("\n" + header + table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
