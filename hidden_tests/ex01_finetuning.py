"""Hidden cases of exercise 01_finetuning, run only by the grader (other seeds, sizes and edges)."""

from __future__ import annotations

from metalib.grading.ex01_finetuning import (
    accuracy_case,
    finetune_case,
    lrs_case,
    lrs_raises,
    penalty_case,
    sweep_case,
)
from metalib.grading.question import Case

HIDDEN: dict[str, list[Case]] = {
    "q1": [
        lrs_case(0.3, 1.0, 4, seed=2),  # no decay, the whole body frozen: only the head learns
        lrs_case(0.05, 1 / 2.6, 1, seed=3, hidden=8),  # ULMFiT's factor
        lrs_case(0.2, 0.5, 3, seed=4, dtype="float64"),
        lrs_raises(-1, 0.5),
        lrs_raises(2, 0.0),  # a rate of 0 for every block but the head is freezing, not decay
    ],
    "q2": [
        penalty_case(2, alpha=0.0, beta=1.0, dtype="float64"),  # the head's term alone
        penalty_case(3, alpha=2.0, beta=0.0, dtype="float64", hidden=8),  # the body's alone
        penalty_case(4, alpha=0.3, beta=0.2, dtype="float64", start="first blocks"),
        penalty_case(5, alpha=1.0, beta=1.0, dtype="float64", move=0.0),  # at the start point
    ],
    "q3": [
        finetune_case(2, 3, 1.0, 0.5, frozen=4, steps=4, alpha=1.0, beta=0.5, seed=5),
        finetune_case(5, 1, 0.1, 0.5, frozen=0, steps=0, alpha=1.0, beta=1.0, seed=6),  # a copy
        finetune_case(4, 2, 0.3, 0.25, 1, steps=3, alpha=0.5, beta=0.1, seed=7, dtype="float32"),
        finetune_case(3, 2, 0.5, 1.0, frozen=0, steps=3, alpha=0.0, beta=0.0, seed=8),  # plain
    ],
    "q4": [
        sweep_case(2, "pre-trained", k_shot=2),
        sweep_case(3, "random", k_shot=2, lr=0.3, steps=12),
    ],
    "q5": [
        accuracy_case(5, n=15, n_right=0, seed=2),
        accuracy_case(2, n=1, n_right=1, seed=3),
        accuracy_case(10, n=50, n_right=31, seed=4),
    ],
}
