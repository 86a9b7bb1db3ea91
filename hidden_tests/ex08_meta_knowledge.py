"""Hidden cases of exercise 08_meta_knowledge, run only by the grader (more classes, one
example, only the head in params, uniform and all-zero weights in float32; more validation
examples or one, two more sets where no example agrees with the validation set; step sizes
listed in θ's own order, per tensor on a Conv4, a gradient of the wrong shape)."""

from __future__ import annotations

from metalib.grading.ex08_meta_knowledge import (
    conv4,
    linear,
    mlp,
    step_case,
    update_case,
    update_raises,
    weights_case,
)
from metalib.grading.question import Case

HIDDEN: dict[str, list[Case]] = {
    "q1": [
        step_case(linear(10, n_classes=5, features=4), 7, "uniform", lr=1.0, seed=10),
        step_case(mlp(11, hidden=(6, 6)), 5, "random", lr=0.1, seed=11, subset="head"),
        step_case(conv4(12, n_classes=2, dtype="float32"), 3, "zeros", lr=0.3, seed=12),
        step_case(mlp(13, dtype="float32"), 8, "sparse", lr=0.05, seed=13),
        step_case(linear(14, n_classes=2), 1, "random", lr=2.0, seed=14),
    ],
    "q2": [
        weights_case(mlp(10, n_classes=5, hidden=(6, 6)), 10, 5, lr=0.05, seed=10),
        weights_case(linear(3, features=32), 4, 4, lr=0.5, seed=3, val="conflict"),
        weights_case(mlp(1, features=16), 4, 4, lr=0.5, seed=1, val="conflict"),
        weights_case(mlp(13, dtype="float32"), 12, 3, lr=1.0, seed=13),
        weights_case(linear(14, n_classes=2, features=3), 5, 1, lr=0.3, seed=14),
        weights_case(conv4(15, n_classes=2, dtype="float32"), 4, 4, lr=0.1, seed=15),
    ],
    "q3": [
        update_case(mlp(10, hidden=(4,)), "mixed", seed=10),
        update_case(linear(11, dtype="float32"), "full", seed=11, order="same"),
        update_case(conv4(12), "scalar", seed=12),
        update_case(mlp(13, n_classes=5, hidden=(3, 7)), "full", seed=13),
        update_raises("extra grad"),
        update_raises("grad shape"),
        update_raises("shape"),
    ],
}
