"""Hidden cases of exercise 03_blackbox, run only by the grader (more tasks, classes, slots and
queries, a sequence of one example, 20-way, a support of one token, an encoding as wide as the
features, masks of one class, of no query and of unequal shots, imprinting with no base class or
one novel class, one feature, float32, and the experiment on other seeds, ways and shots)."""

from __future__ import annotations

from metalib.grading.ex03_blackbox import (
    average_case,
    imprint_case,
    label_too_large_case,
    mask_case,
    sequence_case,
    shots_case,
)

HIDDEN = {
    "q1": [
        sequence_case(4, 10, 5, 8, n_slots=20, seed=10),  # many more slots than classes
        sequence_case(1, 1, 1, 1, n_slots=1, seed=11),  # one example: zeros for its label
        sequence_case(2, 40, 20, 16, n_slots=20, seed=12, dtype="float32"),
        sequence_case(3, 7, 3, 2, n_slots=3, seed=13),  # uneven classes
        label_too_large_case(n_slots=5, dim=3, seed=14),
    ],
    "q2": [
        average_case(4, 5, 5, 5, 8, n_slots=5, hidden=16, width=8, seed=10),
        average_case(1, 1, 1, 1, 2, n_slots=1, hidden=4, width=2, seed=11),  # one token
        average_case(2, 20, 1, 20, 16, n_slots=20, hidden=32, width=16, seed=12, dtype="float32"),
        average_case(1, 3, 2, 6, 5, n_slots=5, hidden=8, width=5, seed=13),  # r as wide as x
        average_case(3, 2, 4, 2, 3, n_slots=2, hidden=5, width=1, seed=14),
    ],
    "q3": [
        mask_case(1, [1], n_query=1, seed=10),
        mask_case(2, [5], n_query=2, seed=11),  # one class: the chapter's mask
        mask_case(1, [1, 1, 1, 1], n_query=0, seed=12),  # no query, one shot per class
        mask_case(4, [3, 1, 2], n_query=4, seed=13),
        mask_case(2, [2] * 10, n_query=5, seed=14),
    ],
    "q4": [
        imprint_case(4, 10, 5, 5, 5, 16, 10.0, seed=10),
        imprint_case(1, 64, 20, 1, 20, 32, 20.0, seed=11, dtype="float32"),
        imprint_case(3, 0, 2, 4, 1, 3, 2.5, seed=12),  # no base class, one query
        imprint_case(1, 2, 1, 3, 2, 4, 10.0, seed=13),  # one novel class
        imprint_case(2, 3, 3, 2, 3, 1, 3.0, seed=14),  # one feature: cos = ±1
    ],
    "q5": [
        shots_case(2, 12, 5, [1, 3, 10], 60),
        shots_case(3, 10, 3, [1, 2, 4, 8], 100),
        shots_case(4, 20, 10, [1, 5], 40),
        shots_case(5, 8, 2, [2, 6, 12], 100),  # no 1-shot entry
        shots_case(6, 12, 5, [10, 1], 60),  # shots in decreasing order
    ],
}
