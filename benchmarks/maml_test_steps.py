"""MAML's test accuracy against the number of test steps, at 1 and 5 shots: how to adapt it.

    .venv/bin/python benchmarks/maml_test_steps.py [--steps 7] [--episodes 200] [--out FILE]

The book's MAML (``maml.Config.preset``: Conv4-32 meta-trained for one inner step of 0.4 on 5-way
1-shot Glyphs tasks; trained once, ``train_once``) adapted to 5-way 1-shot and 5-shot test tasks
of new scripts (15 queries per class) by 0, 1, ... ``--steps`` first-order steps of 0.4. Writes a
Markdown table: accuracy with its 95% interval per number of steps.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from dataclasses import replace
from functools import partial
from pathlib import Path

os.environ.setdefault("METALIB_THREADS", "2")

from metalib import maml, runtime  # noqa: E402
from metalib.data import glyphs  # noqa: E402
from metalib.tasks import FixedEpisodes  # noqa: E402
from metalib.train import accuracy_fn, evaluate  # noqa: E402
from metalib.trained import train_once  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "maml_test_steps.md"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=7, help="the most test steps")
    parser.add_argument("--episodes", type=int, default=200, help="test episodes per setting")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    runtime.set_threads()
    dev = runtime.device()
    train, test = glyphs.load("train"), glyphs.load("test")
    recipe = maml.Config.preset(runtime.budget())
    run = train_once(maml, recipe, train, seed=0, device=dev)
    steps = range(args.steps + 1)
    lines = [
        f"Measured {time.strftime('%Y-%m-%d %H:%M')} on {platform.machine()}, device {dev}; "
        f"MAML {run.took}.",
        "",
        "Command: `python benchmarks/maml_test_steps.py " + " ".join(sys.argv[1:]) + "`",
        "",
        __doc__.split("\n\n", 2)[2].strip().replace("\n", " "),
        "",
        "| test steps | " + " | ".join(str(s) for s in steps) + " |",
        "| --- |" + " ---: |" * len(steps),
    ]
    for shots in (1, 5):
        episodes = FixedEpisodes(test, 5, shots, 15, args.episodes, seed=0)
        cells = []
        for s in steps:
            predict = partial(maml.predict, replace(recipe, test_steps=s), run.model)
            score = evaluate(accuracy_fn(predict, dev), episodes, batch_size=20, desc=None)
            cells.append(score.as_percent())
        lines.append(f"| 5-way {shots}-shot | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
