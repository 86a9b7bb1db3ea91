"""What glibc's allocator settings cost torch on a CPU: the Makefile's GLIBC_TUNABLES against none.

Every command of the Makefile runs with ``GLIBC_TUNABLES`` set (Linux; other systems ignore it)
so that glibc keeps up to 256 MB of freed memory instead of giving each large block back to the
system: the next tensor of that size then reuses pages already mapped, instead of faulting in and
zeroing fresh ones. This script measures the difference on the book's own work, each workload
in a fresh process per setting, the two settings alternating round by round (same machine load),
and writes ``malloc.md`` to ``--out``. Each process warms up first (the training runs twice and
the second is timed): glibc adapts its thresholds as a process runs, so a short, cold run would
overstate the difference a chapter's long-running kernel sees.

    python benchmarks/malloc.py              # 3 rounds
    python benchmarks/malloc.py --rounds 5

Workloads: a Conv4-64 forward pass over a task's 80 and 100 images (what chapter 7's learners on
embeddings pay per task), and a few steps of the book's recipes (Reptile, MAML, first-order
MAML, the backbone's pre-training, ProtoNet).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from datetime import datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
TUNED = "glibc.malloc.mmap_threshold=268435456:glibc.malloc.trim_threshold=268435456"

WORKLOAD = r"""
import json, sys, time
import torch
from metalib import finetune, maml, protonet, reptile, runtime
from metalib.data import glyphs
from metalib.nets import fast_conv4

runtime.set_threads()
name = sys.argv[1]
if name.startswith("forward"):
    torch.manual_seed(0)
    net = fast_conv4(100, 64, 28).train()
    x = torch.rand(int(name.split("-")[1]), 1, 28, 28)
    with torch.no_grad():
        for _ in range(10):  # warm up, as in a long-running kernel
            net.body(x)
        start = time.perf_counter()
        for _ in range(30):
            net.body(x)
    print(json.dumps(1000 * (time.perf_counter() - start) / 30))
    raise SystemExit
train, budget = glyphs.load("train"), runtime.budget()
module, config = {  # configs cost nothing to make: all of them, then the one asked for
    "Reptile, 30 steps": (reptile, reptile.Config.preset(budget, steps=30)),
    "MAML, 20 steps": (maml, maml.Config.preset(budget, steps=20)),
    "first-order MAML, 20 steps": (maml, maml.Config.preset(budget, first_order=True, steps=20)),
    "pre-training, 30 steps": (finetune, finetune.Config.preset(
        budget, pretrain=finetune.PretrainConfig(30, 128, 2e-3))),
    "ProtoNet, 100 steps": (protonet, protonet.Config.preset(budget, steps=100)),
}[name]
for timed in (False, True):  # the first run only warms up, as in a long-running kernel
    start = time.perf_counter()
    module.train(config, train, torch.Generator().manual_seed(0), torch.device("cpu"))
print(json.dumps(time.perf_counter() - start))
"""

WORKLOADS = (
    ("forward-80", "Conv4-64 forward, 80 images", "ms"),
    ("forward-100", "Conv4-64 forward, 100 images", "ms"),
    ("Reptile, 30 steps", "Reptile, 30 meta-iterations", "s"),
    ("MAML, 20 steps", "MAML, 20 meta-iterations", "s"),
    ("first-order MAML, 20 steps", "first-order MAML, 20 meta-iterations", "s"),
    ("pre-training, 30 steps", "backbone pre-training, 30 steps", "s"),
    ("ProtoNet, 100 steps", "ProtoNet, 100 episodes", "s"),
)


def run(workload: str, tunables: str | None) -> float:
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    env["METALIB_PROGRESS"] = "0"
    if tunables:
        env["GLIBC_TUNABLES"] = tunables
    done = subprocess.run(
        [sys.executable, "-c", WORKLOAD, workload], env=env, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise RuntimeError(f"{workload} failed:\n{done.stderr[-2000:]}")
    return float(json.loads(done.stdout.strip().splitlines()[-1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)
    if not sys.platform.startswith("linux"):
        print("GLIBC_TUNABLES only means something to glibc (Linux); nothing to measure here")
        return 0
    times: dict[str, dict[str, list[float]]] = {w: {"none": [], "tuned": []} for w, *_ in WORKLOADS}
    for r in range(args.rounds):
        for workload, label, unit in WORKLOADS:
            for setting, tunables in (("none", None), ("tuned", TUNED)):
                times[workload][setting].append(run(workload, tunables))
            t = times[workload]
            print(f"round {r + 1}: {label}: {t['none'][-1]:.2f} / {t['tuned'][-1]:.2f} {unit}")
    lines = [
        "# glibc's allocator settings and torch on a CPU",
        "",
        f"{datetime.now():%Y-%m-%d %H:%M}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, {platform.python_version()}; `python benchmarks/malloc.py "
        f"--rounds {args.rounds}`: median of {args.rounds} fresh processes per setting, the "
        f"settings alternating, each warmed up first (a training runs twice, the second "
        f"timed). Tuned: `GLIBC_TUNABLES={TUNED}` (the Makefile's).",
        "",
        "| workload | no setting | tuned | no setting / tuned |",
        "| --- | ---: | ---: | ---: |",
    ]
    for workload, label, unit in WORKLOADS:
        a, b = (statistics.median(times[workload][s]) for s in ("none", "tuned"))
        lines.append(f"| {label} | {a:.2f} {unit} | {b:.2f} {unit} | {a / b:.2f} |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "malloc.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
