"""Hidden cases of exercise 05_learned_optimizers, run only by the grader (0-d and 3-d
gradients, gradients all below or all above the cut-off, p = 1 and 20, huge values; one or
three cells, one coordinate, 100 coordinates, other output scales; one step, the paper's 10-d
quadratics, rectangular W, float32, a larger LSTM)."""

from __future__ import annotations

from metalib.grading.ex05_learned_optimizers import (
    bad_p_case,
    grad_spec,
    meta_case,
    optimizer_spec,
    preprocess_case,
    step_case,
)
from metalib.grading.question import Case

HIDDEN: dict[str, list[Case]] = {
    "q1": [
        preprocess_case(grad_spec(values=2.5)),
        preprocess_case(grad_spec((2, 3, 4), seed=10)),
        preprocess_case(grad_spec((20,), seed=11, low=-9, high=-5), note="all below e^-p"),
        preprocess_case(grad_spec((6,), seed=12, low=-1, high=8, dtype="float32"), p=20.0),
        preprocess_case(grad_spec(values=[1e30, -1e-30, 0.5, -0.5, 0.0]), p=1.0),
        preprocess_case(grad_spec((5, 5), seed=13, low=-12, high=0), p=20.0),
        bad_p_case(-1.0),
    ],
    "q2": [
        step_case(optimizer_spec(3, 3, seed=10), grad_spec((4,), seed=10), "random", 10),
        step_case(optimizer_spec(4, 2, seed=11, scale=0.01), grad_spec((1,), seed=11), "zeros", 11),
        step_case(
            optimizer_spec(20, 2, seed=12, dtype="float32"),
            grad_spec((100,), seed=12, low=-7, high=1),
            "random",
            12,
        ),
        step_case(
            optimizer_spec(8, 1, seed=13, p=1.0, scale=2.0),
            grad_spec((10,), seed=13, low=-2, high=1),
            "random",
            13,
        ),
        step_case(optimizer_spec(5, 2, seed=14), grad_spec(values=[0.0, 1e-6, -3.0]), "zeros", 14),
    ],
    "q3": [
        meta_case(optimizer_spec(4, 2, seed=10), 2, 3, 3, steps=1, seed=10),
        meta_case(optimizer_spec(20, 2, seed=11), 4, 10, 10, steps=8, seed=11),
        meta_case(optimizer_spec(6, 1, seed=12, scale=0.5), 3, 6, 2, steps=4, seed=12),
        meta_case(optimizer_spec(5, 2, seed=13, dtype="float32"), 5, 3, 6, steps=3, seed=13),
        meta_case(optimizer_spec(8, 3, seed=14, p=5.0), 1, 4, 4, steps=6, seed=14),
    ],
}
