"""Hidden cases of exercise 00_tasks, run only by the grader (other seeds, sizes and edges)."""

from __future__ import annotations

from metalib.grading.ex00_tasks import (
    classes_raises,
    episode_case,
    episode_raises,
    relabel_case,
    relabel_raises,
    sample_classes_case,
    split,
    support_query_case,
    support_query_raises,
    table_case,
)
from metalib.grading.question import Case

HIDDEN: dict[str, list[Case]] = {
    "q1": [
        sample_classes_case(20, 5, seed=7, draws=600),
        sample_classes_case(2, 2, seed=3, draws=100),  # n_way == n_classes, smallest
        sample_classes_case(30, 2, seed=11, draws=800),
        classes_raises(4, 9, valid_way=2, seed=5),
    ],
    "q2": [
        support_query_case(20, 5, 10, seed=5, draws=300),
        support_query_case(2, 1, 1, seed=2, draws=100),  # every image used
        support_query_case(10, 1, 1, seed=9, draws=300),  # 1-shot, 1 query
        support_query_raises(3, 2, 2, valid_q=1, seed=1),
    ],
    "q3": [
        relabel_case([1, 0, 0, 1, 1], [1, 0]),  # 2-way
        relabel_case([42], [3, 42, 17, 8]),  # one sample
        relabel_case([19, 3, 250, 64, 3, 19, 64, 250, 3, 250], [250, 19, 64, 3]),
        relabel_raises("classes 6 and 8 are not in the episode", [6, 1, 8], [3, 1, 2], [1, 2, 3]),
    ],
    "q4": [
        episode_case(split(12, 10, size=10, seed=4), 5, 1, 2, seed=11, draws=200),
        episode_case(split(3, 2, seed=5), 2, 1, 1, seed=2, draws=100),  # smallest episode
        episode_case(split(6, 8, seed=6), 6, 3, 5, seed=3, draws=100),  # all classes, all images
        episode_raises("4-way from 3 classes (impossible)", split(3, 6), (4, 1, 1), (3, 1, 1)),
    ],
    "q5": [
        table_case(7, 40, [3, 6], [1, 2, 4, 8], 80),
        table_case(11, 25, [2, 4, 8], [1, 5], 120),
    ],
}
