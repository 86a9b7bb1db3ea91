"""Every learner on the same Glyphs test episodes: accuracy, training time, adaptation cost.

Runs :func:`metalib.compare.compare` from the command line and writes ``compare.md`` (a Markdown
table with the machine and the command) and ``compare.csv`` to ``--out``. Meta-training is
cached (``METALIB_CACHE``/compare), so a second run only evaluates.

    python benchmarks/compare.py                      # the book's CPU budget
    python benchmarks/compare.py --budget long        # closer to the papers (a GPU)
    python benchmarks/compare.py --methods MAML ProtoNet --episodes 100
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from datetime import datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", choices=("default", "long"), default="default")
    parser.add_argument("--methods", nargs="+", default=None, help="names (default: all)")
    parser.add_argument("--shots", nargs="+", type=int, default=[1, 5])
    parser.add_argument("--episodes", type=int, default=None, help="test episodes per setting")
    parser.add_argument("--no-cache", action="store_true", help="train everything again")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)
    os.environ["METALIB_BUDGET"] = args.budget  # before metalib reads it

    import torch

    from metalib import runtime
    from metalib.compare import compare

    command = sys.argv[1:] if argv is None else argv
    threads = runtime.set_threads()
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    result = compare(
        methods=args.methods,
        shots=tuple(args.shots),
        n_episodes=args.episodes,
        budget=runtime.budget(),
        cache=not args.no_cache,
    )
    seconds = time.perf_counter() - start
    cached = sum(r.cached for r in result) // max(len(args.shots), 1)
    header = (
        f"Measured {datetime.now():%Y-%m-%d %H:%M} on {platform.machine()}, "
        f"{os.cpu_count()} cores, torch {torch.__version__}, {threads} threads, device "
        f"{result.device}, budget {result.budget}. Whole run: {seconds:.0f} s ({cached} of "
        f"{len(result) // max(len(args.shots), 1)} methods' training from the cache). One-minute "
        f"load average before / after: {load_before:.1f} / {os.getloadavg()[0]:.1f}.\n\n"
        f"Command: `python benchmarks/compare.py {' '.join(command)}`"
        "\n\nAccuracy: mean over the same fixed test episodes (Glyphs test scripts, 15 queries per "
        "class) with the 95% CI half-width. Meta-training s: wall time of the run that trained "
        "the method, including the shared pre-trained Conv4 (and its embedding of the training "
        "split) for the methods built on it; '(cached)' marks weights loaded from the cache. "
        "Adaptation ms/task: from a task's support set to its query logits, one task at a time "
        "(the black-box learners and the weight predictor read embeddings of the split computed "
        "once, as in training, but their time includes the encoder embedding the task's "
        "images). Peak MB: peak memory while adapting to the first task of the setting "
        "(Linux: peak RSS above the RSS before, with glibc returning freed blocks at once; "
        "see `metalib.compare.peak_memory_mb`).\n\n"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "compare.md").write_text(header + result.table_markdown() + "\n")
    result.to_csv(args.out / "compare.csv")
    print(result.table_markdown())
    print(f"{seconds:.0f} s; wrote {args.out / 'compare.md'} and {args.out / 'compare.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
