"""What limits accuracy at the book's CPU budget: ProtoNet and MAML on Glyphs, one change at a time.

    .venv/bin/python benchmarks/accuracy_budget.py [--learners protonet maml] [--out FILE]

Each variant changes one thing of a chapter's recipe as it was before issue 19 (ProtoNet without
rotations, MAML with 160 meta-iterations) -- the network's capacity (Conv4-64 for Conv4-32), the
number of training episodes (more meta-iterations), augmentation (every training class rotated by
90, 180 and 270 degrees as three new classes, ``with_rotations``; now in ProtoNet's recipe), the way
of the training episodes -- or adds one to the rotations, and is trained from scratch (no cache,
seed 0) with its weights kept at 8 points of training (``Config.snapshots``). Each snapshot is
scored on the chapter's fixed test episodes of new scripts: ProtoNet at 5-way 1-shot (300 episodes,
5 queries per class, as chapter 4) and, trained, at 20-way 1-shot; MAML at 5-way 1-shot after its 3
test steps (100 episodes, 15 queries per class, as chapter 2). Writes a Markdown table of accuracy
against training seconds (the curves, in numbers) and a figure of them beside ``--out``.

The goals of issue 19 for reference: ProtoNet 97% (5-way) and 90% (20-way), MAML 85% (5-way).
"""

from __future__ import annotations

import os

os.environ.setdefault("METALIB_THREADS", "2")

import argparse  # noqa: E402
import platform  # noqa: E402
import shlex  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, replace  # noqa: E402
from functools import partial  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402

from metalib import maml, plots, protonet, runtime  # noqa: E402
from metalib.data import glyphs  # noqa: E402
from metalib.data.base import with_rotations  # noqa: E402
from metalib.tasks import FixedEpisodes  # noqa: E402
from metalib.train import accuracy_fn, episode_accuracy_fn, evaluate  # noqa: E402
from metalib.trained import train_once  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "accuracy_budget.md"
GOALS = {"ProtoNet": (0.97, 0.90), "MAML": (0.85, None)}


@dataclass(frozen=True)
class Variant:
    learner: str  # "ProtoNet" or "MAML"
    label: str
    config: Any
    rotations: bool = False


def variants(budget: runtime.Budget, learners: list[str]) -> list[Variant]:
    book = protonet.Config.preset(budget)  # with rotations since issue 19
    proto = replace(book, rotations=False)
    meta = maml.Config.preset(budget, snapshots=8, test_steps=3)  # as chapter 2 reports it
    meta = replace(meta, steps=160)  # the book's until issue 19; it now trains 400
    out = []
    if "protonet" in learners:
        out += [
            Variant("ProtoNet", "before: Conv4-32, 2,000 episodes of 20-way", proto),
            Variant("ProtoNet", "capacity: Conv4-64", replace(proto, hidden=64)),
            Variant("ProtoNet", "episodes: 4,000", replace(proto, steps=2 * proto.steps)),
            Variant("ProtoNet", "augmentation: rotations, 4x classes (book)", book),
            Variant("ProtoNet", "training way: 40-way", replace(proto, train_way=40)),
            Variant("ProtoNet", "rotations and Conv4-64", replace(book, hidden=64)),
            Variant("ProtoNet", "rotations and 4,000 episodes", replace(book, steps=4_000)),
        ]
    if "maml" in learners:
        out += [
            Variant("MAML", "before: Conv4-32, 160 meta-iterations of 8 tasks", meta),
            Variant(
                "MAML",
                "meta-iterations: 640 (the book's 400 is the 5th snapshot)",
                replace(meta, steps=640),
            ),
            Variant("MAML", "capacity: Conv4-64", replace(meta, hidden=64)),
            Variant(
                "MAML",
                "augmentation: rotations, 640 meta-iterations",
                replace(meta, steps=640),
                rotations=True,
            ),  # fmt: skip
        ]
    return out


def scorers(test, device):
    """``{setting: fn(learner, config, net) -> Score}`` of each learner, as its chapter scores."""
    proto5 = FixedEpisodes(test, 5, 1, 5, 300, seed=1)
    proto20 = FixedEpisodes(test, 20, 1, 5, 300, seed=1)
    maml5 = FixedEpisodes(test, 5, 1, 15, 100, seed=0)

    def score_proto(episodes, config, net):
        return evaluate(episode_accuracy_fn(net), episodes, batch_size=25, desc=None)

    def score_maml(config, net):
        predict = partial(maml.predict, config, net)
        return evaluate(accuracy_fn(predict, device), maml5, batch_size=20, desc=None)

    return {
        "ProtoNet": (partial(score_proto, proto5), partial(score_proto, proto20)),
        "MAML": (score_maml, None),
    }


def run_variant(v: Variant, train, score, device) -> dict:
    module = protonet if v.learner == "ProtoNet" else maml
    data = with_rotations(train) if v.rotations else train
    start = time.perf_counter()
    run = train_once(module, v.config, data, seed=0, device=device, cache=False)
    wall = time.perf_counter() - start
    net = module.build(v.config, data).to(device)
    curve = []
    for step, state in sorted(run.snapshots.items()):
        net.load_state_dict(state)
        seconds = run.history["seconds"][run.history.step.index(step - 1)]
        curve.append((step, seconds, score[0](v.config, net)))
    net.load_state_dict(run.snapshots[max(run.snapshots)])
    wide = score[1](v.config, net) if score[1] else None
    return {"variant": v, "curve": curve, "wide": wide, "wall": wall}


def report(args, threads, dev, results, started) -> str:
    lines = [
        f"Measured {time.strftime('%Y-%m-%d %H:%M')} on {platform.machine()}, {os.cpu_count()} "
        f"cores, torch {torch.__version__}, {threads} threads, device {dev}, budget "
        f"{runtime.budget().name}; whole run {time.perf_counter() - started:.0f} s.",
        "",
        "Command: `python benchmarks/accuracy_budget.py " + shlex.join(sys.argv[1:]) + "`",
        "",
        __doc__.split("\n\n", 2)[2].strip().replace("\n", " "),
        "",
        "| learner | variant | training s | 5-way 1-shot (95% CI) | 20-way 1-shot (95% CI) | "
        "accuracy at each snapshot (training s: 5-way %) |",
        "| --- | --- | ---: | ---: | ---: | --- |",
    ]
    for r in results:
        v, curve = r["variant"], r["curve"]
        _, seconds, last = curve[-1]
        points = ", ".join(f"{s:.0f}: {100 * sc.mean:.1f}" for _, s, sc in curve)
        wide = r["wide"].as_percent() if r["wide"] else "–"
        lines.append(
            f"| {v.learner} | {v.label} | {seconds:.0f} | {last.as_percent()} | {wide} | {points} |"
        )
    lines += ["", "![accuracy against training time](accuracy_budget.png)", ""]
    return "\n".join(lines)


def figure(results, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots.book_style()
    learners = list(dict.fromkeys(r["variant"].learner for r in results))
    fig, axes = plt.subplots(1, len(learners), figsize=(6 * len(learners), 4), squeeze=False)
    for ax, learner in zip(axes[0], learners, strict=True):
        for r in (r for r in results if r["variant"].learner == learner):
            xs = [s for _, s, _ in r["curve"]]
            ys = [100 * sc.mean for _, _, sc in r["curve"]]
            ax.plot(xs, ys, marker="o", label=r["variant"].label)
        goal = GOALS[learner][0]
        ax.axhline(100 * goal, color="black", linestyle=":", label=f"goal, {100 * goal:.0f}%")
        ax.set(xlabel="training seconds (2 CPU cores)", ylabel="test accuracy, 5-way 1-shot (%)",
               title=f"{learner} on Glyphs")  # fmt: skip
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--learners", nargs="+", default=["protonet", "maml"],
                        choices=["protonet", "maml"])  # fmt: skip
    parser.add_argument("--out", type=Path, default=OUT, help="the Markdown file to write")
    args = parser.parse_args()
    started = time.perf_counter()
    threads = runtime.set_threads()
    dev = runtime.device()
    train, test = glyphs.load("train"), glyphs.load("test")
    score = scorers(test, dev)
    results = []
    for v in runtime.progress(variants(runtime.budget(), args.learners), desc="variants"):
        results.append(run_variant(v, train, score[v.learner], dev))
        print(f"{v.learner}, {v.label}: {results[-1]['curve'][-1][2]}", flush=True)
    text = report(args, threads, dev, results, started)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    figure(results, args.out.with_suffix(".png"))
    print("\n" + text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
