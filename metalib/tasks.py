"""Episodes: N-way K-shot tasks with a support set to adapt on and a query set to score on.

An episode is an explicit value (:class:`Episode`): named support and query tensors with a
leading task dimension ``T``, labels ``0..N-1`` written out in ``*_y``, and the original class of
every label in ``classes``. Support and query are each shuffled, so no learner can read labels
from positions. Sampling follows Vinyals et al. (2016), "Matching Networks for One Shot
Learning": N distinct classes per task, K + Q distinct images per class, the first K of them
support and the other Q query, the labels a random relabelling of the chosen classes.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from metalib.data.base import ImageClasses


@dataclass(frozen=True, eq=False)
class Episode:
    """A batch of T tasks, each with its support and query sets.

    Attributes:
        support_x: ``(T, N*K, ...)`` inputs to adapt on (images: ``(T, N*K, 1, H, W)``).
        support_y: ``(T, N*K)`` long labels in ``0..N-1``; for regression ``(T, K, 1)`` floats.
        query_x: ``(T, N*Q, ...)`` inputs to score on.
        query_y: ``(T, N*Q)`` long labels (regression: ``(T, Q, 1)`` floats).
        classes: ``(T, N)`` long, ``classes[t, j]`` is the dataset class behind label ``j`` of
            task ``t``; ``None`` for regression episodes.
    """

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor
    classes: torch.Tensor | None = None

    def __post_init__(self) -> None:
        named = {
            "support_x": self.support_x,
            "support_y": self.support_y,
            "query_x": self.query_x,
            "query_y": self.query_y,
        }
        if self.classes is not None:
            named["classes"] = self.classes
        for name, t in named.items():
            if not isinstance(t, torch.Tensor) or t.dim() < 2:
                got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise ValueError(
                    f"Episode.{name} must be a tensor with a leading task axis and a sample axis "
                    f"(T, n, ...), got {got}; add a task axis with .unsqueeze(0)"
                )
        n_tasks = {name: t.shape[0] for name, t in named.items()}
        if len(set(n_tasks.values())) != 1:
            raise ValueError(f"Episode tensors disagree on the number of tasks T: {n_tasks}")
        for part in ("support", "query"):
            x, y = named[f"{part}_x"], named[f"{part}_y"]
            if x.shape[1] != y.shape[1]:
                raise ValueError(
                    f"Episode: {part}_x has {x.shape[1]} samples per task but {part}_y has "
                    f"{y.shape[1]}; every input needs exactly one label"
                )

    @property
    def n_tasks(self) -> int:
        """T, the number of tasks in this episode batch."""
        return self.support_x.shape[0]

    @property
    def n_way(self) -> int:
        """N, the number of classes per task (classification episodes only)."""
        if self.classes is None:
            raise ValueError("this episode has no classes (a regression episode); it has no n_way")
        return self.classes.shape[1]

    def __len__(self) -> int:
        return self.n_tasks

    def to(self, device: torch.device | str) -> Episode:
        """The same episode with every tensor on ``device``."""
        return Episode(
            self.support_x.to(device),
            self.support_y.to(device),
            self.query_x.to(device),
            self.query_y.to(device),
            None if self.classes is None else self.classes.to(device),
        )

    def task(self, i: int) -> Episode:
        """Task ``i`` alone, keeping a leading task axis of length 1."""
        if not -self.n_tasks <= i < self.n_tasks:
            raise IndexError(f"task {i} out of range for an episode of {self.n_tasks} tasks")
        i = i % self.n_tasks
        sl = slice(i, i + 1)
        return Episode(
            self.support_x[sl],
            self.support_y[sl],
            self.query_x[sl],
            self.query_y[sl],
            None if self.classes is None else self.classes[sl],
        )


def check_labelled(
    features: torch.Tensor,
    labels: torch.Tensor,
    n_classes: int,
    name: str = "n_way",
    items: str = "N*K",
) -> None:
    """Raise a ValueError unless ``features`` are ``(T, items, D)`` and ``labels`` ``(T, items)``
    long labels in ``0..n_classes-1`` (a task's labelled set, as learners receive it).

    Args:
        name: what ``n_classes`` is called by the caller (``"n_way"``, ``"n_slots"``), for the
            messages; items: how the caller names the item axis (``"N*K"``, ``"S"``).
    """
    if n_classes < 1:
        raise ValueError(f"{name} must be at least 1, got {n_classes}")
    if features.dim() != 3:
        raise ValueError(
            f"support_features must be (T, {items}, D), got shape {tuple(features.shape)}; "
            "add a task axis with .unsqueeze(0)"
        )
    if labels.shape != features.shape[:2]:
        raise ValueError(
            f"support_y must be (T, {items}) = {tuple(features.shape[:2])}, got "
            f"{tuple(labels.shape)}"
        )
    if labels.dtype != torch.long:
        raise ValueError(f"support_y must hold long labels 0..N-1, got dtype {labels.dtype}")
    if labels.numel() and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(
            f"support labels must lie in 0..{n_classes - 1} ({name}={n_classes}), got values "
            f"from {labels.min().item()} to {labels.max().item()}; relabel the task's classes "
            "0..N-1" + (" or use more slots" if name == "n_slots" else "")
        )


def _check_sizes(
    n_classes: int,
    per_class: int,
    n_way: int,
    k_shot: int,
    q_queries: int,
    n_tasks: int,
    source: str = "the dataset",
) -> None:
    if n_way < 2:
        raise ValueError(f"asked for {n_way}-way episodes; an episode needs at least 2 classes")
    if n_way > n_classes:
        raise ValueError(
            f"asked for {n_way}-way episodes but {source} has {n_classes} classes; "
            f"use at most {n_classes} ways or another split"
        )
    if k_shot < 1:
        raise ValueError(f"k_shot must be at least 1 (one support image per class), got {k_shot}")
    if q_queries < 1:
        raise ValueError(
            f"q_queries must be at least 1 (queries are what an episode is scored on), "
            f"got {q_queries}"
        )
    if k_shot + q_queries > per_class:
        raise ValueError(
            f"asked for {k_shot} shots + {q_queries} queries per class, but each class of {source} "
            f"has {per_class} images; k_shot + q_queries must be at most {per_class}"
        )
    if n_tasks < 1:
        raise ValueError(f"n_tasks must be at least 1, got {n_tasks}")


def sample_indices(
    n_classes: int,
    per_class: int,
    n_way: int,
    k_shot: int,
    q_queries: int,
    n_tasks: int = 1,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw which classes and which of their images make up each task.

    Args:
        n_classes, per_class: the size of the split (C classes of M images).
        n_way, k_shot, q_queries: N classes per task, K support and Q query images per class.
        n_tasks: T, how many tasks to draw.
        generator: the source of randomness (``None``: torch's global generator).

    Returns:
        ``classes`` ``(T, N)`` long: N distinct classes per task in random order, so label ``j``
        stands for ``classes[:, j]``; ``samples`` ``(T, N, K+Q)`` long: distinct image indices
        within each class, the first K for support, the rest for query.
    """
    _check_sizes(n_classes, per_class, n_way, k_shot, q_queries, n_tasks)
    # argsort of i.i.d. uniform keys is a uniform random permutation,
    # drawn for all tasks at once
    keys = torch.rand(n_tasks, n_classes, generator=generator)
    classes = keys.argsort(dim=1)[:, :n_way]  # (T, N)
    keys = torch.rand(n_tasks, n_way, per_class, generator=generator)
    samples = keys.argsort(dim=2)[:, :, : k_shot + q_queries]  # (T, N, K+Q)
    return classes, samples


def _orders(
    n_tasks: int, n_way: int, k_shot: int, q_queries: int, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random positions for the support ``(T, N*K)`` and query ``(T, N*Q)`` sets."""
    support = torch.rand(n_tasks, n_way * k_shot, generator=generator).argsort(dim=1)
    query = torch.rand(n_tasks, n_way * q_queries, generator=generator).argsort(dim=1)
    return support, query


def _build(
    data: ImageClasses,
    classes: torch.Tensor,
    samples: torch.Tensor,
    k_shot: int,
    support_order: torch.Tensor,
    query_order: torch.Tensor,
) -> Episode:
    """Gather the images named by indices into a shuffled episode."""
    n_tasks, n_way, kq = samples.shape
    images = data.get(classes[:, :, None].expand(-1, -1, kq), samples)  # (T, N, K+Q, 1, H, W)
    labels = torch.arange(n_way).view(1, n_way, 1).expand(n_tasks, -1, kq)  # (T, N, K+Q)

    def part(sl: slice, order: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = images[:, :, sl].flatten(1, 2)  # (T, N*S, 1, H, W), grouped by label
        y = labels[:, :, sl].flatten(1, 2)  # (T, N*S)
        x = x[torch.arange(n_tasks)[:, None], order]  # shuffled so positions carry no label
        return x, y.gather(1, order)

    support_x, support_y = part(slice(0, k_shot), support_order)
    query_x, query_y = part(slice(k_shot, kq), query_order)
    return Episode(support_x, support_y, query_x, query_y, classes.clone())


def sample_episodes(
    data: ImageClasses,
    n_way: int,
    k_shot: int,
    q_queries: int,
    n_tasks: int = 1,
    generator: torch.Generator | None = None,
) -> Episode:
    """Sample T random N-way K-shot tasks from a split.

    Args:
        data: the split to draw classes and images from.
        n_way, k_shot, q_queries: N classes per task, K support and Q query images per class.
        n_tasks: T, the number of tasks (the episode's leading axis).
        generator: the source of randomness (``None``: torch's global generator, which
            ``metalib.runtime.seed_everything`` seeds).

    Returns:
        An :class:`Episode` with ``support_x`` ``(T, N*K, 1, H, W)``, ``support_y`` ``(T, N*K)``,
        ``query_x`` ``(T, N*Q, 1, H, W)``, ``query_y`` ``(T, N*Q)``, ``classes`` ``(T, N)``, on the
        CPU.
    """
    _check_sizes(
        data.n_classes, data.per_class, n_way, k_shot, q_queries, n_tasks, f"split {data.name}"
    )
    classes, samples = sample_indices(
        data.n_classes, data.per_class, n_way, k_shot, q_queries, n_tasks, generator
    )
    support, query = _orders(n_tasks, n_way, k_shot, q_queries, generator)
    return _build(data, classes, samples, k_shot, support, query)


class FixedEpisodes:
    """A fixed, seeded set of evaluation episodes, shared by every method that is compared.

    Stores indices, not images (600 episodes of 20-way 5-shot would be thousands of images), and
    draws them from a private generator seeded with ``seed``, so the same arguments give the same
    episodes whatever the global random state. Reporting the mean accuracy with a 95% confidence
    interval over 600 such episodes is the convention of Finn et al. (2017) and Snell et al. (2017).

    Example:
        >>> episodes = FixedEpisodes(split, n_way=5, k_shot=1, q_queries=15, n_episodes=600)
        >>> for ep in episodes.batches(16): ...   # Episodes with T = 16 (the last one shorter)
    """

    def __init__(
        self,
        data: ImageClasses,
        n_way: int,
        k_shot: int,
        q_queries: int,
        n_episodes: int = 600,
        seed: int = 0,
    ) -> None:
        if n_episodes < 1:
            raise ValueError(f"n_episodes must be at least 1, got {n_episodes}")
        _check_sizes(
            data.n_classes, data.per_class, n_way, k_shot, q_queries, 1, f"split {data.name}"
        )
        self.data = data
        self.n_way, self.k_shot, self.q_queries, self.seed = n_way, k_shot, q_queries, seed
        g = torch.Generator().manual_seed(seed)
        self._classes, self._samples = sample_indices(
            data.n_classes, data.per_class, n_way, k_shot, q_queries, n_episodes, g
        )  # (E, N), (E, N, K+Q)
        self._support, self._query = _orders(n_episodes, n_way, k_shot, q_queries, g)

    def __len__(self) -> int:
        return self._classes.shape[0]

    def _slice(self, sl: slice) -> Episode:
        return _build(
            self.data,
            self._classes[sl],
            self._samples[sl],
            self.k_shot,
            self._support[sl],
            self._query[sl],
        )

    def __getitem__(self, i: int) -> Episode:
        """Episode ``i`` as an :class:`Episode` with T = 1."""
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"episode {i} out of range for {n} fixed episodes")
        i = i % n
        return self._slice(slice(i, i + 1))

    def batches(self, batch_size: int) -> Iterator[Episode]:
        """All episodes in order, ``batch_size`` tasks at a time (the last batch may be shorter)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        for start in range(0, len(self), batch_size):
            yield self._slice(slice(start, start + batch_size))

    def __repr__(self) -> str:
        return (
            f"FixedEpisodes({self.data.name!r}: {len(self)} episodes of {self.n_way}-way "
            f"{self.k_shot}-shot, {self.q_queries} queries per class, seed {self.seed})"
        )
