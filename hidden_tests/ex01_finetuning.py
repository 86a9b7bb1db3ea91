"""Hidden cases of exercise 01_finetuning, run only by the grader (other seeds, sizes and edges)."""

from __future__ import annotations

from metalib.grading.ex01_finetuning import (
    accuracy_case,
    finetune_case,
    freeze_case,
    freeze_raises,
    head_case,
    step_case,
)
from metalib.grading.question import Case

HIDDEN: dict[str, list[Case]] = {
    "q1": [
        freeze_case(0, seed=3),  # nothing frozen
        freeze_case(1, seed=4),
        freeze_case(3, seed=5, start_frozen=True),
        freeze_case(4, seed=6, start_frozen=True),  # only the head learns
        freeze_raises(-1),
    ],
    "q2": [
        head_case(20, seed=7, hidden=4, size=48),  # 720 weights: the spread is checked tightly
        head_case(3, seed=8, hidden=8, size=16, dtype="float64"),  # the head keeps the dtype
        head_case(2, seed=9, hidden=8, size=32),
    ],
    "q3": [
        step_case(5, 1, lr=0.3, frozen=4, calls=3, seed=2),  # only the head moves
        step_case(2, 1, lr=1.0, frozen=1, calls=2, seed=3),
        step_case(4, 3, lr=0.05, frozen=0, calls=2, seed=4, dtype="float32"),
    ],
    "q4": [
        finetune_case(2, 3, steps=4, lr=1.0, frozen=4, seed=5),
        finetune_case(5, 1, steps=0, lr=0.1, frozen=0, seed=6),  # no step: an equal copy
        finetune_case(4, 2, steps=2, lr=0.3, frozen=1, seed=7, dtype="float32"),
    ],
    "q5": [
        accuracy_case(5, n=15, n_right=0, seed=2),
        accuracy_case(2, n=1, n_right=1, seed=3),
        accuracy_case(10, n=50, n_right=31, seed=4),
    ],
}
