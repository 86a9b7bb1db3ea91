"""A chapter's claims and numbers across seeds: does what the prose says hold for other seeds?

    .venv/bin/python benchmarks/seeds.py [chapters...] [--seeds 0 1 2] [--jobs 2]
        [--budget default|long] [--out benchmarks/results/seeds.md]

Executes every chapter once per seed with ``METALIB_SEED`` set (each ``seed_everything(s)`` of
the chapter then seeds ``s + METALIB_SEED``: other initial weights, other training draws; the
fixed test episodes stay the same), every cell even after a failed assertion, one process per
run, ``--jobs`` at a time with one thread each. A GPU draws other random numbers than a CPU for
the same seed, so a claim that fails for some seed here would fail on some GPU too.

Writes, per chapter, the assertions that failed for each seed and the glued numbers (what the
prose quotes) for every seed with their range, to ``--out`` (Markdown). Wall-clock times are
noisy on a shared machine; they say roughly how long a run took, nothing more.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from notebook_run import ROOT, Result, number, run_in_process  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "seeds.md"


def report(results: dict[tuple[str, int], Result], seeds: list[int], header: str) -> str:
    """The Markdown report: per chapter, failed claims and the glued numbers across seeds."""
    lines = [header]
    for name in dict.fromkeys(nb for nb, _ in results):
        runs = [results[(name, s)] for s in seeds]
        times = ", ".join(f"{r.seconds:.0f}" for r in runs)
        lines += [f"## {Path(name).stem}", "", f"Seconds per run (seeds {seeds}): {times}.", ""]
        failures = [(s, e) for s, r in zip(seeds, runs, strict=True) for e in r.errors]
        problems = [(s, r.problem) for s, r in zip(seeds, runs, strict=True) if r.problem]
        if failures or problems:
            lines += ["| seed | code cell | error |", "| ---: | ---: | --- |"]
            for s, e in failures:
                lines.append(f"| {s} | {e['cell']} | {e['ename']}: {e['evalue'][:300]} |")
            lines += [f"| {s} | - | {p} |" for s, p in problems]
        else:
            lines.append("Every cell ran without error for every seed.")
        names = list(dict.fromkeys(k for r in runs for k in r.glued))
        rows = []
        for key in names:
            texts = [r.glued.get(key, "") for r in runs]
            values = [number(t) for t in texts]
            known = [v for v in values if v is not None]
            if not known:
                continue
            cells = [t.strip("'\"")[:24] for t in texts]
            spread = f"{min(known):.4g} .. {max(known):.4g}" if len(set(known)) > 1 else "same"
            rows.append(f"| {key} | " + " | ".join(cells) + f" | {spread} |")
        if rows:
            lines += [
                "",
                "| glued value | " + " | ".join(f"seed {s}" for s in seeds) + " | range |",
                "| --- |" + " ---: |" * (len(seeds) + 1),
                *rows,
            ]
        lines.append("")
    return "\n".join(lines)


def merge(old: str, new: str) -> str:
    """``old`` with the chapter sections of ``new`` put in place (or added), both headers kept."""
    old_head, *old_parts = re.split(r"(?m)^(?=## )", old)
    new_head, *new_parts = re.split(r"(?m)^(?=## )", new)
    title = lambda part: part.splitlines()[0]  # noqa: E731
    fresh = {title(p): p for p in new_parts}
    parts = [fresh.pop(title(p), p) for p in old_parts] + list(fresh.values())
    names = ", ".join(title(p).removeprefix("## ") for p in new_parts)
    update = new_head.replace("# Chapters across seeds\n\n", "").replace("Measured", "Updated")
    update = update.strip().removesuffix(".") + f" (these chapters: {names})."
    return old_head.rstrip("\n") + "\n\n" + update.strip() + "\n\n" + "".join(parts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("chapters", nargs="*", type=Path, help="default: every chapter")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--budget", choices=("default", "long"), default="default")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per cell")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument(
        "--update", action="store_true", help="replace only these chapters' sections in --out"
    )
    args = parser.parse_args()
    chapters = args.chapters or sorted((ROOT / "chapters").glob("*.ipynb"))
    chapters = [p.resolve().relative_to(ROOT) for p in chapters]
    jobs = [(str(p), s) for p in chapters for s in args.seeds]

    def run(job: tuple[str, int]) -> Result:
        path, seed = job
        env = {
            **os.environ,
            "METALIB_SEED": str(seed),
            "METALIB_BUDGET": args.budget,
            "METALIB_PROGRESS": "0",
            "METALIB_THREADS": os.environ.get("METALIB_THREADS", "1"),
            "PYTHONUNBUFFERED": "1",
        }
        result = run_in_process(ROOT / path, env, args.timeout)
        state = "ok" if result.passed else f"{len(result.errors)} error(s) {result.problem or ''}"
        print(f"{Path(path).stem} seed {seed}: {result.seconds:.0f} s, {state}", flush=True)
        return result

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        results = dict(zip(jobs, pool.map(run, jobs), strict=True))
    from metalib.runtime import device

    header = (
        f"# Chapters across seeds\n\nMeasured {time.strftime('%Y-%m-%d %H:%M')} by "
        f"`benchmarks/seeds.py --seeds {' '.join(map(str, args.seeds))} --budget {args.budget}`"
        f" on {platform.machine()}, {os.cpu_count()} cores, device {device()}, torch "
        f"{torch.__version__}, {args.jobs} run(s) at a time with "
        f"{os.environ.get('METALIB_THREADS', '1')} thread(s) each, "
        f"{(time.perf_counter() - start) / 60:.0f} min in all.\n"
    )
    text = report(results, args.seeds, header)
    if args.update and args.out.exists():
        text = merge(args.out.read_text(), text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"wrote {args.out}")
    return 0 if all(r.passed for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
