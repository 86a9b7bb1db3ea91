"""Hidden cases of exercise 02_maml, run only by the grader (other networks, sizes, dtypes, more
inner steps, no step at all, only the head adapted, more tasks and other step sizes)."""

from __future__ import annotations

import torch

from metalib.grading.ex02_maml import (
    LINEAR,
    conv4,
    images,
    linear_data,
    mlp,
    points,
    reptile_case,
    reptile_raises,
    task_case,
)
from metalib.grading.question import Case

HIDDEN: dict[str, list[Case]] = {
    "q1": [
        task_case(conv4(3), images(5, 1, 2, seed=3), lr=0.2, steps=5),  # more steps
        task_case(conv4(4), images(3, 2, 2, seed=4), lr=0.4, steps=0),  # no step: params
        task_case(conv4(5), images(4, 2, 2, seed=5), lr=0.5, steps=2, subset="head"),
        task_case(mlp(6, (40, 40), "float32"), points(10, 10, seed=6), lr=0.01, steps=2),
        task_case(
            conv4(7, hidden=8, size=32, dtype="float32"), images(2, 3, 2, seed=7), lr=0.3, steps=1
        ),
        task_case(LINEAR, linear_data(), lr=0.05, steps=3),
    ],
    "q2": [
        task_case(mlp(2), points(5, 10, seed=2), lr=0.05, steps=0),  # no step: plain gradient
        task_case(conv4(3), images(5, 1, 2, seed=3), lr=0.3, steps=3),
        task_case(conv4(4), images(4, 2, 2, seed=4), lr=0.5, steps=2, subset="head"),
        task_case(conv4(5, dtype="float32"), images(3, 2, 3, seed=5), lr=0.4, steps=1),
        task_case(mlp(6, (20, 20)), points(10, 10, seed=6), lr=0.02, steps=10),
        task_case(LINEAR, linear_data(), lr=0.05, steps=2),
    ],
    "q3": [
        task_case(mlp(2), points(5, 10, seed=12), lr=0.05, steps=0),
        task_case(conv4(13), images(5, 1, 2, seed=13), lr=0.3, steps=3),
        task_case(conv4(14), images(4, 2, 2, seed=14), lr=0.5, steps=2, subset="head"),
        task_case(conv4(15, dtype="float32"), images(3, 2, 3, seed=15), lr=0.4, steps=1),
        task_case(mlp(16, (20, 20)), points(10, 10, seed=16), lr=0.02, steps=10),
        task_case(LINEAR, linear_data(), lr=0.05, steps=2),
    ],
    "q4": [
        reptile_case(mlp(2), n_tasks=1, beta=1.0, seed=2),  # one task, full step: W_1
        reptile_case(conv4(3), n_tasks=5, beta=0.0, seed=3),  # β = 0: θ stays
        reptile_case(mlp(4, (40, 40), "float32"), n_tasks=8, beta=0.1, seed=4),
        reptile_case(conv4(5), n_tasks=5, beta=0.7, seed=5),
        reptile_raises(
            "adapted['w'] of shape (3, 3) for θ of shape (2,)",
            bad=torch.zeros(3, 3),
            good=torch.zeros(1, 2),
        ),
    ],
}
