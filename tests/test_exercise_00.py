"""Exercise 00_tasks: wrong samplers fail with a message naming the mistake."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from conftest import (
    exercise,
    exercise_tests,
    solution,
)
from metalib.grading.feedback import run_case
from metalib.tasks import FixedEpisodes

NAME = "00_tasks"


def _classes_checked(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    def wrapped(n_classes, n_way, generator):
        if n_way > n_classes:
            raise ValueError("too many ways")
        return fn(n_classes, n_way, generator)

    return wrapped


def _support_query_checked(fn):
    def wrapped(per_class, k_shot, q_queries, generator):
        if k_shot + q_queries > per_class:
            raise ValueError("too many images")
        return fn(per_class, k_shot, q_queries, generator)

    return wrapped


def _episode(variant: str):
    """The solution's make_episode with one thing done wrong."""
    ns = solution("00_tasks")
    sample_classes, relabel = ns["sample_classes"], ns["relabel"]

    def make_episode(data, n_way, k_shot, q_queries, generator):
        if k_shot + q_queries > data.per_class or n_way > data.n_classes:
            raise ValueError("impossible episode")
        classes = sample_classes(data.n_classes, n_way, generator)
        out = {"classes": classes}
        for part, per, offset in (("support", k_shot, 0), ("query", q_queries, k_shot)):
            c = classes.repeat_interleave(per)
            m = torch.stack(
                [torch.randperm(data.per_class, generator=generator) for _ in range(n_way)]
            )
            m = m[:, offset : offset + per].flatten()  # a fresh permutation per set: overlaps
            if variant != "overlap":
                m = torch.arange(offset, offset + per).repeat(n_way)
            if variant != "grouped":
                order = torch.randperm(len(c), generator=generator)
                c, m = c[order], m[order]
            out[f"{part}_x"] = data.get(c, m)
            out[f"{part}_y"] = c if variant == "class labels" else relabel(c, classes)
            if variant == "uint8":
                out[f"{part}_x"] = data.images[c, m].unsqueeze(1)
        return tuple(out.values()) if variant == "tuple" else out

    return make_episode


def _table(variant: str):
    """A nearest-neighbour table with one thing done wrong (written apart from the grader's)."""

    def nearest_neighbour_table(data, ways, shots, q_queries, n_episodes):
        acc, half = torch.zeros(len(ways), len(shots)), torch.zeros(len(ways), len(shots))
        for i, n in enumerate(ways):
            for j, k in enumerate(shots):
                ep = next(FixedEpisodes(data, n, k, q_queries, n_episodes, 0).batches(n_episodes))
                s, q = ep.support_x.flatten(2), ep.query_x.flatten(2)
                d = ((q[:, :, None] - s[:, None]) ** 2).sum(-1)
                if variant == "cosine":
                    d = -F.normalize(q, dim=-1) @ F.normalize(s, dim=-1).transpose(1, 2)
                hits = (ep.support_y.gather(1, d.argmin(-1)) == ep.query_y).double()
                per = hits.mean(1)
                acc[i, j] = per.mean()
                spread = hits.std() / hits.numel() ** 0.5 if variant == "pooled" else per.std()
                half[i, j] = 1.96 * spread / (1 if variant == "pooled" else n_episodes**0.5)
        if variant == "sem without 1.96":
            half = half / 1.96
        if variant == "error":
            acc = 1 - acc
        return {"accuracy": acc, "half_width": half}

    return nearest_neighbour_table


WRONG = {
    "sorted classes": (
        "q1",
        _classes_checked(lambda n, k, g: torch.randperm(n, generator=g)[:k].sort().values),
        "random order",
    ),
    "global generator": (
        "q1",
        _classes_checked(lambda n, k, g: torch.randperm(n)[:k]),
        "torch's global generator",
    ),
    "classes with repeats": (
        "q1",
        _classes_checked(lambda n, k, g: torch.randint(n, (k,), generator=g)),
        "must be distinct",
    ),
    "one class short": (
        "q1",
        _classes_checked(lambda n, k, g: torch.randperm(n - 1, generator=g)[:k]),
        "should have shape (5,)",
    ),
    "no ValueError": (
        "q1",
        lambda n, k, g: torch.randperm(n, generator=g)[:k],
        "expected a ValueError",
    ),
    "float classes": (
        "q1",
        _classes_checked(lambda n, k, g: torch.randperm(n, generator=g)[:k].float()),
        "integer indices",
    ),
    "support and query drawn apart": (
        "q2",
        _support_query_checked(
            lambda m, k, q, g: (
                torch.randperm(m, generator=g)[:k],
                torch.randperm(m, generator=g)[:q],
            )
        ),
        "share images",
    ),
    "always the first images": (
        "q2",
        _support_query_checked(lambda m, k, q, g: (torch.arange(k), torch.arange(k, k + q))),
        "every image must be possible",
    ),
    "labels by sorted class": (
        "q3",
        lambda sample_classes, episode_classes: torch.searchsorted(
            episode_classes.sort().values, sample_classes
        ),
        "so its label is",
    ),
    "class numbers as labels": (
        "q3",
        lambda sample_classes, episode_classes: sample_classes,
        "expected labels",
    ),
    "grouped, not shuffled": ("q4", _episode("grouped"), "no position tells the label"),
    "class numbers in y": ("q4", _episode("class labels"), "should hold labels 0.."),
    "support and query overlap": ("q4", _episode("overlap"), "must be distinct"),
    "uint8 images": ("q4", _episode("uint8"), "float32 images"),
    "a tuple, not a dict": ("q4", _episode("tuple"), "should return a dict"),
    "half-widths over pooled queries": ("q5", _table("pooled"), "the episodes are the samples"),
    "half-widths without 1.96": ("q5", _table("sem without 1.96"), "lack the factor 1.96"),
    "error rates": ("q5", _table("error"), "above chance"),
    "cosine similarity": ("q5", _table("cosine"), "nearest support image (Euclidean"),
}


def _episode_by_keys(data, n_way, k_shot, q_queries, generator):
    """Another right make_episode: argsort of uniform keys, labels shuffled with their images."""
    if k_shot + q_queries > data.per_class or n_way > data.n_classes:
        raise ValueError("impossible episode")
    classes = torch.randperm(data.n_classes, generator=generator)[:n_way]
    keys = torch.rand(n_way, data.per_class, generator=generator).argsort(dim=1)
    out = {}
    for part, cut in (("support", slice(0, k_shot)), ("query", slice(k_shot, k_shot + q_queries))):
        m = keys[:, cut]
        y = torch.arange(n_way)[:, None].expand_as(m).flatten()
        order = torch.randperm(len(y), generator=generator)
        y, m = y[order], m.flatten()[order]
        out[f"{part}_x"], out[f"{part}_y"] = data.get(classes[y], m), y
    return {**out, "classes": classes}


def _relabel_by_dict(sample_classes, episode_classes):
    """Another right relabel: a dict lookup, int32 labels."""
    where = {int(c): j for j, c in enumerate(episode_classes)}
    if any(int(c) not in where for c in sample_classes):
        raise ValueError("a class is not in the episode")
    return torch.tensor([where[int(c)] for c in sample_classes], dtype=torch.int32)


OTHER = {
    "table as tensors, distances by hand": ("q5", _table("")),
    "episode by sorted keys": ("q4", _episode_by_keys),
    "relabel by a dict": ("q3", _relabel_by_dict),
}


(
    test_a_wrong_answer_fails_with_a_helpful_message,
    test_every_question_has_a_wrong_answer,
    test_other_right_answers_pass_every_case,
) = exercise_tests(NAME, WRONG, OTHER)


def test_a_raised_error_is_feedback_not_a_crash():
    question = exercise(NAME).question("q4")

    def broken(data, n_way, k_shot, q_queries, generator):
        return data.get(torch.zeros(3), torch.zeros(4))

    message = run_case(question, question.visible[0], broken)
    assert message is not None and "raised ValueError" in message
