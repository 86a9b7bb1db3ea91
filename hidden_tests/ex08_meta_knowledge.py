"""Hidden cases of exercise 08_meta_knowledge, run only by the grader (q1: five classes, one
validation example, lr = 1, one training example, a temperature so small that exp overflows in
float32, a negative temperature; q2: three hidden layers, none at all, a wide float32 network,
β of the wrong shape; q3: θ's own order, one task, a two-layer perceptron, float32 with three
steps, a step size per entry; q4: inputs of scale 2 with three inner steps, a start that
overshoots, 8-d tasks with two inner steps)."""

from __future__ import annotations

from metalib.grading.ex08_meta_knowledge import (
    conv4,
    film_case,
    film_raises,
    layerwise_case,
    layerwise_raises,
    linear,
    lr_case,
    mlp,
    sinusoid,
    weights_case,
    weights_raises,
)
from metalib.grading.question import Case

HIDDEN: dict[str, list[Case]] = {
    "q1": [
        weights_case(
            mlp(10, n_classes=5, hidden=(6, 6)), 10, 5, lr=0.05, temperature=0.005, seed=10
        ),
        weights_case(linear(14, n_classes=2, features=3), 5, 1, lr=0.3, temperature=0.1, seed=14),
        weights_case(mlp(13, dtype="float32"), 12, 3, lr=1.0, temperature=0.5, seed=13),
        weights_case(linear(3, features=32), 1, 4, lr=0.5, temperature=0.1, seed=3),
        weights_case(
            conv4(15, n_classes=2, dtype="float32"), 4, 4, lr=0.1, temperature=1e-3, seed=15
        ),
        weights_raises(-1.0),
    ],
    "q2": [
        film_case([3, 10, 2], 5, 7, seed=10),
        film_case([1, 4, 4, 4, 1], 2, 6, seed=11),
        film_case([2, 3], 2, 3, seed=12),
        film_case([1, 16, 16, 1], 1, 20, seed=13, dtype="float32"),
        film_raises("beta"),
    ],
    "q3": [
        layerwise_case(linear(10, n_classes=4), 4, 3, 5, 2, order="same"),
        layerwise_case(sinusoid(11, hidden=(10,)), 1, 10, 10, 2),
        layerwise_case(mlp(12, hidden=(5, 4)), 3, 6, 2, 1),
        layerwise_case(mlp(13, dtype="float32"), 2, 4, 4, 3),
        layerwise_raises("full"),
    ],
    "q4": [
        lr_case(2, 4, 2.0, 40, 5, alpha0=0.001, inner_steps=3),
        lr_case(3, 4, 0.5, 40, 5, alpha0=1.5, inner_steps=1),
        lr_case(4, 8, 1.0, 30, 8, alpha0=0.003, inner_steps=2),
    ],
}
