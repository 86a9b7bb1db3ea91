"""Hidden cases of exercise 04_protonet, run only by the grader (more tasks, ways and shots,
unequal shots per class, no unlabelled example, one feature, 20-way, larger encoders and images,
float32, small β, gradients through the variances; for the experiment, 3- and 4-way tasks, other
shots, seeds and synthetic splits)."""

from __future__ import annotations

from metalib.grading.ex04_protonet import (
    conv_encoder,
    empty_refine_case,
    experiment_case,
    loss_case,
    mahalanobis_case,
    mlp_encoder,
    refine_case,
)

HIDDEN = {
    "q1": [
        refine_case(4, [5] * 5, 20, 16, seed=10),
        refine_case(1, [7, 1], 5, 3, seed=11, note="very unequal shots"),
        refine_case(2, [1] * 20, 30, 6, seed=12, dtype="float32", note="20-way 1-shot"),
        refine_case(3, [2, 4, 2], 4, 1, seed=13, note="one feature"),
        refine_case(2, [3, 2], 0, 4, seed=14, note="no unlabelled example: the first prototypes"),
        empty_refine_case([1, 3, 2], 6, 4, seed=15),
    ],
    "q2": [
        mahalanobis_case(4, [5] * 5, 10, 16, seed=10),
        mahalanobis_case(1, [7, 1], 3, 3, seed=11, beta=0.1),  # very unequal shots
        mahalanobis_case(2, [1] * 20, 20, 8, seed=12, dtype="float32"),  # 20-way 1-shot
        mahalanobis_case(3, [2, 4, 2], 5, 1, seed=13),  # one feature
        mahalanobis_case(1, [1, 2, 3], 6, 5, seed=14, beta=0.01, grad=True),
    ],
    "q3": [
        loss_case(conv_encoder(10), 3, 5, 5, 2, 2, seed=10),
        loss_case(
            conv_encoder(11, hidden=8, image_size=32), 2, 3, 2, 2, 3, seed=11, dtype="float32"
        ),
        loss_case(mlp_encoder(12), 4, 20, 1, 1, 1, seed=12),  # 20-way 1-shot
        loss_case(conv_encoder(13), 1, 2, 3, 4, 0, seed=13),  # no unlabelled image
        loss_case(mlp_encoder(14, hidden=16), 1, 10, 2, 1, 4, seed=14),
    ],
    "q4": [
        experiment_case(2, 3, [1, 3, 10], steps=50, hidden=16, data_seed=1),
        experiment_case(3, 5, [1, 10], steps=50, hidden=16, data_seed=2),
        experiment_case(4, 4, [2, 4], steps=0, hidden=8, data_seed=3),
    ],
}
