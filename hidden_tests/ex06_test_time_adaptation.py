"""Hidden cases of exercise 06_test_time_adaptation, run only by the grader (one class, one
row, uniform and huge logits in float32, 100 classes; batch-statistics norm, frozen models in
float64; SGD with momentum, small batches, longer streams, larger images; one image, larger
encoders)."""

from __future__ import annotations

from metalib.grading.ex06_test_time_adaptation import (
    adam,
    collect_case,
    encoder_spec,
    entropy_case,
    model_spec,
    rotation_case,
    sgd,
    tent_case,
)
from metalib.grading.spec import Case

HIDDEN: dict[str, list[Case]] = {
    "q1": [
        entropy_case(1, 2, seed=10),
        entropy_case(8, 100, seed=11, scale=10.0),
        entropy_case(4, 5, seed=12, scale=1000.0, dtype="float32"),
        entropy_case(3, 7, seed=13, scale=0.0),  # uniform: log 7
        entropy_case(2, 1, seed=14),  # one class: 0
        entropy_case(6, 3, seed=15, scale=50.0, learnable=True),
    ],
    "q2": [
        collect_case(model_spec("conv4-batch", seed=10)),
        collect_case(model_spec("conv4", seed=11, dtype="float64"), start_frozen=True),
        collect_case(model_spec("mlp", seed=12), start_frozen=True),
        collect_case(model_spec("mixed", seed=13, hidden=6)),
        collect_case(model_spec("conv4", seed=14, hidden=8)),
    ],
    "q3": [
        tent_case(model_spec("conv4-batch", seed=10), sgd(0.3, momentum=0.9), [6, 6, 6], seed=10),
        tent_case(model_spec("mixed", seed=11), adam(0.001), [16], seed=11),
        tent_case(model_spec("mlp", seed=12, dtype="float64"), sgd(1.0), [4, 10], seed=12),
        tent_case(model_spec("conv4", seed=13), sgd(0.1), [2, 2, 2, 2], seed=13),
        tent_case(
            model_spec("conv4", seed=14, hidden=8, image_size=32), adam(0.05), [12, 3], seed=14
        ),
    ],
    "q4": [
        rotation_case(encoder_spec("mlp", seed=10), 1, seed=10),
        rotation_case(encoder_spec("conv4", seed=11, hidden=8), 5, seed=11),
        rotation_case(encoder_spec("conv4", seed=12, image_size=32, dtype="float64"), 2, seed=12),
        rotation_case(encoder_spec("mlp", seed=13, hidden=8, dtype="float64"), 6, seed=13),
        rotation_case(encoder_spec("conv4", seed=14), 8, seed=14),
    ],
}
