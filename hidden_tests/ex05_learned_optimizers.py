"""Hidden cases of exercise 05_learned_optimizers, run only by the grader (one coordinate, one
momentum or five, no timescale or one, late steps, all-zero and huge gradients, float32; other
multipliers, wider MLPs, many problems; T not a multiple of K, K = T, K = 1, one step; for the
experiment, other sizes, truncations, seeds and learning rates)."""

from __future__ import annotations

from metalib.grading.ex05_learned_optimizers import (
    features_case,
    features_refused,
    meta_case,
    race_case,
    step_case,
)
from metalib.grading.question import Case

HIDDEN: dict[str, list[Case]] = {
    "q1": [
        features_case(2, 1, 10, t=5, note="one coordinate"),
        features_case(5, 8, 11, t=100, betas=[0.1, 0.5, 0.9, 0.99, 0.999], timescales=[1]),
        features_case(3, 4, 12, t=2, timescales=[], note="no timescale"),
        features_case(2, 6, 13, t=7, scale=1e4, state="zeros", dtype="float32"),
        features_case(3, 5, 14, t=0, scale=1e-4, zero=0, note="tiny, and zero"),
        features_refused("1 momentum", seed=15),
    ],
    "q2": [
        step_case(16, 10, 4, 10, t=50),
        step_case(3, 11, 1, 1, t=0, step_mult=1.0, exp_mult=0.001),
        step_case(5, 12, 6, 4, t=9, betas=[0.99], timescales=[1, 3, 10, 30, 100]),
        step_case(8, 13, 2, 3, t=1, dtype="float32", exp_mult=2.0),
    ],
    "q3": [
        meta_case(8, 4, 10, steps=10, truncation=4, seed=10),
        meta_case(4, 2, 3, steps=5, truncation=5, seed=11, note="K = T: no cut"),
        meta_case(6, 3, 4, steps=1, truncation=3, seed=12, note="one step"),
        meta_case(5, 2, 6, steps=6, truncation=2, seed=13, dtype="float32", exp_mult=0.5),
        meta_case(12, 5, 5, steps=8, truncation=1, seed=14, betas=[0.9], timescales=[3, 10]),
    ],
    "q4": [
        race_case(8, 8, 5, steps=20, truncation=10, meta_steps=20, meta_lr=0.01, seed=10),
        race_case(16, 16, 10, steps=30, truncation=10, meta_steps=20, meta_lr=0.005, seed=11),
        race_case(
            8,
            12,
            6,
            steps=12,
            truncation=4,
            meta_steps=15,
            meta_lr=0.01,
            seed=12,
            lrs=[0.01, 0.1, 1.0],
        ),  # fmt: skip
    ],
}
