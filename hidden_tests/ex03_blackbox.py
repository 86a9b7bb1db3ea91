"""Hidden cases of exercise 03_blackbox, run only by the grader (more tasks, ways, shots and
queries, 20-way, one feature or one query, more slots than classes, deeper and wider LSTMs,
longer sequences, float32, non-linear φ and other scales)."""

from __future__ import annotations

from metalib.grading.ex03_blackbox import (
    label_too_large_case,
    lstm_case,
    mask_case,
    tokens_case,
    weights_case,
)

HIDDEN = {
    "q1": [
        tokens_case(4, 5, 1, 5, 8, n_slots=20, seed=10),  # many more slots than classes
        tokens_case(1, 1, 1, 1, 1, n_slots=1, seed=11),
        tokens_case(2, 20, 1, 10, 16, n_slots=20, seed=12, dtype="float32"),
        tokens_case(3, 4, 5, 3, 2, n_slots=4, seed=13),
        label_too_large_case(n_slots=5, dim=3, seed=14),
    ],
    "q2": [
        lstm_case(4, 5, 5, 5, 8, n_slots=5, hidden=16, layers=2, seed=10),
        lstm_case(1, 1, 1, 1, 2, n_slots=1, hidden=4, layers=1, seed=11),  # one query
        lstm_case(2, 20, 1, 20, 16, n_slots=20, hidden=32, layers=3, seed=12, dtype="float32"),
        lstm_case(1, 3, 2, 6, 5, n_slots=5, hidden=8, layers=1, seed=13),
        lstm_case(3, 2, 4, 2, 3, n_slots=2, hidden=5, layers=2, seed=14),
    ],
    "q3": [mask_case(1, 1), mask_case(10, 1), mask_case(1, 8), mask_case(25, 5), mask_case(6, 0)],
    "q4": [
        weights_case(4, 5, 5, 5, 16, "mlp", 10.0, seed=10),
        weights_case(1, 20, 1, 20, 32, "linear", 20.0, seed=11, dtype="float32"),
        weights_case(3, 2, 4, 1, 3, "mlp", 2.5, seed=12),  # one query
        weights_case(1, 1, 3, 2, 4, "linear", 10.0, seed=13),  # one class
        weights_case(2, 3, 2, 3, 1, "linear", 3.0, seed=14),  # one feature: cos = ±1
    ],
}
