"""Hidden cases of exercise 06_test_time_adaptation, run only by the grader (one row, 100
classes, no sample or every sample confident, huge logits in float32; batch-statistics norm,
every layer, a duplicate index, frozen models in float64, empty and negative out-of-range
indices; one test image, a prior so strong it is the source model, larger images; one image,
larger encoders; other seeds, corruptions, batch sizes and prior strengths)."""

from __future__ import annotations

from metalib.grading.ex06_test_time_adaptation import (
    dihedral_case,
    eata_case,
    model_spec,
    prior_case,
    select_case,
    select_refused,
    sweep_case,
)
from metalib.grading.question import Case

HIDDEN: dict[str, list[Case]] = {
    "q1": [
        eata_case(1, 2, seed=10, scale=5.0),
        eata_case(8, 100, seed=11, scale=10.0),
        eata_case(6, 5, seed=12, scale=1000.0, dtype="float32", learnable=True),
        eata_case(5, 7, seed=13, scale=0.1, learnable=True),  # nothing below the margin
        eata_case(4, 3, seed=14, fraction=1.01, learnable=True),  # everything below it
        eata_case(16, 10, seed=15, scale=6.0, fraction=0.2, dtype="float32", learnable=True),
    ],
    "q2": [
        select_case(model_spec("conv4-batch", seed=10), [0, 1, 2, 3]),
        select_case(model_spec("conv4", seed=11, dtype="float64"), [-2], start_frozen=True),
        select_case(model_spec("mlp", seed=12), [-1], start_frozen=True),
        select_case(model_spec("mixed", seed=13, hidden=6), [3, -4]),
        select_case(model_spec("mixed", seed=14), [2, -2, 0]),  # the LayerNorm twice
        select_refused(model_spec("mixed", seed=15), [], [0]),
        select_refused(model_spec("conv4", seed=16), [1, -5], [1, -4]),
    ],
    "q3": [
        prior_case(model_spec("conv4", seed=10), 1, 4.0, seed=10),
        prior_case(model_spec("conv4", seed=11, dtype="float64"), 5, 1e6, seed=11),
        prior_case(model_spec("mlp", seed=12), 1, 8.0, seed=12),
        prior_case(model_spec("mixed", seed=13, hidden=6), 16, 100.0, seed=13),
        prior_case(model_spec("conv4", seed=14, hidden=8, image_size=32), 12, 0.0, seed=14),
        prior_case(model_spec("mlp", seed=15, dtype="float64"), 32, 3.0, seed=15),
    ],
    "q4": [
        dihedral_case(model_spec("mlp", seed=10), 1, seed=10),
        dihedral_case(model_spec("conv4", seed=11, hidden=8), 5, seed=11),
        dihedral_case(model_spec("conv4", seed=12, image_size=32, dtype="float64"), 2, seed=12),
        dihedral_case(model_spec("mlp", seed=13, hidden=8, dtype="float64"), 6, seed=13),
        dihedral_case(model_spec("conv4", seed=14), 8, seed=14),
    ],
    "q5": [
        sweep_case(2, "blur", 4, 128, [1, 2, 16], [0, 1, 4, 32]),
        sweep_case(3, "contrast", 2, 128, [1, 8, 64], [0, 4, 16, 256]),
    ],
}
