"""Hidden cases of exercise 04_protonet, run only by the grader (more tasks, ways and shots,
unequal shots per class, one feature, one query, 20-way, larger encoders and images, float32,
learnable and small temperatures)."""

from __future__ import annotations

from metalib.grading.ex04_protonet import (
    conv_encoder,
    cosine_case,
    distances_case,
    empty_class_case,
    loss_case,
    mlp_encoder,
    prototypes_case,
)

HIDDEN = {
    "q1": [
        prototypes_case(4, [5] * 5, 16, seed=10),
        prototypes_case(1, [7, 1], 3, seed=11),  # very unequal shots
        prototypes_case(2, [1] * 20, 6, seed=12, dtype="float32"),  # 20-way 1-shot
        prototypes_case(1, [3], 2, seed=13),  # one class
        prototypes_case(3, [2, 4, 2], 1, seed=14),  # one feature
        empty_class_case([1, 3, 2], 4, seed=15),
    ],
    "q2": [
        distances_case(1, 1, 1, 3, seed=10),  # one query, one prototype
        distances_case(2, 5, 3, 1, seed=11),  # one feature
        distances_case(4, 20, 20, 64, seed=12, dtype="float32"),
        distances_case(2, 10, 3, 3, seed=13),
    ],
    "q3": [
        loss_case(conv_encoder(10), 3, 5, 5, 2, seed=10),
        loss_case(conv_encoder(11, hidden=8, image_size=32), 2, 3, 2, 2, seed=11, dtype="float32"),
        loss_case(mlp_encoder(12), 4, 20, 1, 1, seed=12),  # 20-way 1-shot
        loss_case(conv_encoder(13), 1, 2, 3, 4, seed=13),
        loss_case(mlp_encoder(14, hidden=16), 1, 10, 2, 1, seed=14),
    ],
    "q4": [
        cosine_case(1, 4, 3, 5, seed=10, temperature=0.5, dtype="float32"),
        cosine_case(3, 10, 20, 32, seed=11, temperature=16.0, learnable=True),
        cosine_case(2, 5, 3, 1, seed=12, temperature=2.0),  # one feature: cos = ±1
        cosine_case(1, 1, 1, 4, seed=13, temperature=10.0, dtype="float32", learnable=True),
    ],
}
