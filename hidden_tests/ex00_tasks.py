"""Hidden cases of exercise 00_tasks, run only by the grader (other seeds, sizes and edges)."""

from __future__ import annotations

import torch

from metalib.grading.ex00_tasks import (
    episode_case,
    raises_case,
    relabel_case,
    sample_classes_case,
    support_query_case,
)
from metalib.grading.spec import Case


def _split(n_classes: int, per_class: int, size: int = 8, seed: int = 0) -> dict[str, int]:
    return {"n_classes": n_classes, "per_class": per_class, "size": size, "seed": seed}


def _gen(seed: int) -> dict[str, int]:
    return {"generator": seed}


HIDDEN: dict[str, list[Case]] = {
    "q1": [
        sample_classes_case(20, 5, seed=7, draws=600),
        sample_classes_case(2, 2, seed=3, draws=100),  # n_way == n_classes, smallest
        sample_classes_case(30, 2, seed=11, draws=800),
        raises_case("9-way from 4 classes (impossible)", [4, 9, _gen(5)], [4, 2, _gen(5)]),
    ],
    "q2": [
        support_query_case(20, 5, 10, seed=5, draws=300),
        support_query_case(2, 1, 1, seed=2, draws=100),  # every image used
        support_query_case(10, 1, 1, seed=9, draws=300),  # 1-shot, 1 query
        raises_case(
            "2 shots + 2 queries from 3 images (impossible)", [3, 2, 2, _gen(1)], [3, 2, 1, _gen(1)]
        ),
    ],
    "q3": [
        relabel_case([1, 0, 0, 1, 1], [1, 0]),  # 2-way
        relabel_case([42], [3, 42, 17, 8]),  # one sample
        relabel_case([19, 3, 250, 64, 3, 19, 64, 250, 3, 250], [250, 19, 64, 3]),
        raises_case(
            "classes 6 and 8 are not in the episode",
            [torch.tensor([6, 1, 8]), torch.tensor([1, 2, 3])],
            [torch.tensor([3, 1, 2]), torch.tensor([1, 2, 3])],
        ),
    ],
    "q4": [
        episode_case(_split(12, 10, size=10, seed=4), 5, 1, 2, seed=11, draws=200),
        episode_case(_split(3, 2, seed=5), 2, 1, 1, seed=2, draws=100),  # smallest episode
        episode_case(_split(6, 8, seed=6), 6, 3, 5, seed=3, draws=100),  # all classes, all images
        raises_case(
            "4-way from 3 classes (impossible)",
            [{"image_classes": _split(3, 6)}, 4, 1, 1, _gen(0)],
            [{"image_classes": _split(3, 6)}, 3, 1, 1, _gen(0)],
        ),
    ],
}
