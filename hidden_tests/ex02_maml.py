"""Hidden cases of exercise 02_maml, run only by the grader (other networks, sizes, dtypes, more
inner steps, no step at all, no body, params of the head only, one task, β = 0, other betas,
other meta-trained initialisations, tasks and sweeps)."""

from __future__ import annotations

from metalib.grading.ex02_maml import (
    LINEAR,
    LRS,
    conv4,
    images,
    linear_data,
    lslr_case,
    lslr_refused,
    mlp,
    points,
    reptile_case,
    reptile_refused,
    sweep_case,
    task_case,
)
from metalib.grading.question import Case

HIDDEN: dict[str, list[Case]] = {
    "q1": [
        task_case(conv4(3), images(5, 1, 2, seed=3), lr=0.2, steps=5, shift=0.05),  # more steps
        task_case(conv4(4), images(3, 2, 2, seed=4), lr=0.4, steps=0, shift=0.1),  # no step
        task_case(LINEAR, linear_data(), lr=0.1, steps=2, shift=0.0),  # no body: MAML
        task_case(mlp(6, (40, 40), "float32"), points(10, 10, seed=6), lr=0.01, steps=2, shift=0),
        task_case(
            conv4(7, hidden=8, size=32, dtype="float32"),
            images(2, 3, 2, seed=7),
            lr=0.3,
            steps=1,
            shift=0.02,
        ),
    ],
    "q2": [
        lslr_case(mlp(2), points(5, 10, seed=2), lr=0.05, steps=0),  # no step: plain gradient
        lslr_case(conv4(3), images(5, 1, 2, seed=3), lr=0.3, steps=3),
        lslr_case(conv4(4), images(4, 2, 2, seed=4), lr=0.5, steps=2, subset="head"),
        lslr_case(conv4(5, dtype="float32"), images(3, 2, 3, seed=5), lr=0.4, steps=1),
        lslr_case(mlp(6, (20, 20)), points(10, 10, seed=6), lr=0.02, steps=10),
        lslr_case(LINEAR, linear_data(), lr=0.05, steps=2),
        lslr_refused(
            "lrs has no entry for 'body.0.weight'",
            mlp(7),
            points(4, 4, seed=7),
            missing="body.0.weight",
        ),
    ],
    "q3": [
        reptile_case(mlp(2), 1, 5, seed=2, steps=3, lr=0.02, betas=(0.9, 0.999), beta=1.0),
        reptile_case(
            mlp(3, (20, 20)), 5, 10, seed=3, steps=1, lr=0.01, betas=(0.0, 0.999), beta=0.0
        ),
        reptile_case(
            conv4(4, n_way=3), 3, 6, seed=4, steps=2, lr=0.01, betas=(0.9, 0.99), beta=0.7
        ),
        reptile_case(
            mlp(5, (40, 40)), 8, 10, seed=5, steps=10, lr=0.005, betas=(0.0, 0.999), beta=0.1
        ),
        reptile_case(LINEAR, 4, 3, seed=6, steps=4, lr=0.05, betas=(0.5, 0.9), beta=0.5),
        reptile_refused("y holds one task fewer than x (linear model)", LINEAR, seed=7),
    ],
    "q4": [
        sweep_case(0, 200, 12, [0.002, 0.005, 0.01, 0.02, 0.04, 0.2], [0, 2, 5]),
        sweep_case(2, 102, 16, LRS, [1, 10]),
        sweep_case(1, 103, 8, [0.0003, 0.01, 0.3], [0, 1, 4, 8]),
    ],
}
