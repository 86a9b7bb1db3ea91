"""Every learner on one benchmark: accuracy with a 95% CI against what it costs.

:func:`compare` meta-trains each learner of :data:`metalib.methods.REGISTRY` on Glyphs' training
scripts with its own recipe, or loads what an earlier chapter trained with the same recipe
(:func:`metalib.trained.train_once`: keyed by the config, the data, the learner's source, torch's
version, the device type and the seed), and scores every learner on the *same* fixed test
episodes (one :class:`~metalib.tasks.FixedEpisodes` per shot setting, from one seed), one task
at a time, measuring the adaptation time per task and the peak memory of adaptation (the learners
that read embeddings are charged the shared backbone's pass over a task's images, timed once per
setting: :func:`_embedding_ms`). A cached row reports the training time of the run that
trained it (``cached=True``).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import itertools
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from metalib import methods as registry
from metalib import runtime
from metalib.data.base import ImageClasses
from metalib.features import FeatureClasses
from metalib.tasks import Episode, FixedEpisodes
from metalib.train import Timer, accuracy, mean_ci95
from metalib.trained import Trained, embedded, train_once


@dataclass(frozen=True)
class Row:
    """One method at one shot setting; accuracies are fractions, ``ci95`` the half-width."""

    method: str
    family: str
    n_way: int
    shots: int
    accuracy: float
    ci95: float
    n_episodes: int
    train_seconds: float
    adapt_ms: float
    peak_mb: float | None
    cached: bool


@dataclass(frozen=True)
class Comparison:
    """The rows of a comparison and how they were produced (budget, device, episodes)."""

    rows: tuple[Row, ...]
    budget: str
    device: str

    def __iter__(self):
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def table_markdown(self) -> str:
        """A Markdown table, one line per row; cached training times are marked."""
        lines = [
            "| method | family | shots | accuracy (95% CI) | meta-training s | "
            "adaptation ms/task | peak MB |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in self.rows:
            train = f"{r.train_seconds:.0f}" + (" (cached)" if r.cached else "")
            peak = "n/a" if r.peak_mb is None else f"{r.peak_mb:.1f}"
            lines.append(
                f"| {r.method} | {r.family} | {r.n_way}-way {r.shots}-shot | "
                f"{100 * r.accuracy:.1f}% ± {100 * r.ci95:.1f}% | {train} | {r.adapt_ms:.2f} | "
                f"{peak} |"
            )
        return "\n".join(lines)

    def to_csv(self, path: Path | str) -> None:
        """Write every field of every row to ``path`` (a header line, then one line per row)."""
        fields = [f.name for f in dataclasses.fields(Row)]
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            for r in self.rows:
                writer.writerow(dataclasses.asdict(r))


@contextlib.contextmanager
def _without_stderr() -> Iterator[None]:
    """Send what is written to the process's standard error (file descriptor 2) nowhere."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_memory_mb(fn: Callable[[], object], device: torch.device) -> float | None:
    """Peak memory held by the tensors ``fn()`` allocates, above what was held before, in MB.

    An accelerator: its allocator's peak (:func:`metalib.runtime.device_peak_mb`; ``None`` where
    the device keeps no statistics). The CPU: torch's profiler records every allocation and free
    of a tensor (``profile_memory=True``); the peak of their running sum, each operation's own
    allocations counted when it starts. The same quantity as on a GPU, on every operating system,
    and deterministic: what the C library's allocator keeps or returns to the system plays no part
    (the process's resident memory would count it).
    """
    if device.type != "cpu":
        return runtime.device_peak_mb(fn, device)
    activity = [torch.profiler.ProfilerActivity.CPU]
    prof = torch.profiler.profile(activities=activity, profile_memory=True)
    with _without_stderr():  # the profiler prints a line to stderr as it starts and stops
        prof.start()
    try:
        fn()  # its own messages, if any, are printed as usual
    finally:
        with _without_stderr():
            prof.stop()
    events = sorted(prof.events(), key=lambda e: e.time_range.start)
    held = itertools.accumulate(e.self_cpu_memory_usage for e in events)
    return max(0, max(held, default=0)) / 2**20


@dataclass
class Learners:
    """What the learners of one comparison share: the training split, where and how they are
    trained, and the backbone and its embeddings (trained or loaded once, on first use).

    Attributes:
        train: the meta-training split.
        budget: picks each learner's preset.
        seed: the training seed (:func:`~metalib.trained.train_once` shifts it by METALIB_SEED).
        overrides: per learner name (and ``"backbone"``), fields of its config to replace.
        cache, folder: :func:`~metalib.trained.train_once`'s.
    """

    train: ImageClasses
    device: torch.device
    budget: runtime.Budget
    seed: int = 0
    overrides: dict[str, dict] = field(default_factory=dict)
    cache: bool = True
    folder: Path | None = None
    _backbone: Trained | None = None
    _features: dict[str, tuple[FeatureClasses, str]] = field(default_factory=dict)

    def config(self, name: str, preset: Callable[[runtime.Budget], Any]) -> Any:
        """``name``'s preset at the budget, with its overrides."""
        return dataclasses.replace(preset(self.budget), **self.overrides.get(name, {}))

    def trained(self, learner: ModuleType, config: Any, data: Any, data_id: str | None = None):
        return train_once(
            learner, config, data, seed=self.seed, device=self.device, data_id=data_id,
            cache=self.cache, folder=self.folder,
        )  # fmt: skip

    def backbone_config(self) -> Any:
        """The shared backbone's config: fine-tuning's preset, with ``"backbone"``'s overrides."""
        return self.config("backbone", registry.BACKBONE.Config.preset)

    def backbone(self) -> Trained:
        """The shared pre-trained backbone (fine-tuning's recipe)."""
        if self._backbone is None:
            self._backbone = self.trained(registry.BACKBONE, self.backbone_config(), self.train)
        return self._backbone

    def features(self, split: ImageClasses) -> tuple[FeatureClasses, str]:
        """``split`` embedded by the backbone, and its identity (see ``trained.embedded``)."""
        if split.name not in self._features:
            features = embedded(self.backbone(), split, cache=self.cache, folder=self.folder)
            self._features[split.name] = features
        return self._features[split.name]

    def learn(self, method: registry.Method) -> tuple[Any, Trained | None, float, bool]:
        """``(config, trained, seconds, cached)`` of one learner; ``seconds`` include the
        backbone's for the learners built on it (``None`` and 0 with nothing to train)."""
        if method.learner is None:
            return None, None, 0.0, False
        if method.learner is registry.BACKBONE:  # fine-tuning: the backbone is what it trains
            shared = self.backbone_config()
            config = self.config(method.name, lambda _: shared)
            same = dataclasses.replace(config, tune=shared.tune) == shared  # only tuned otherwise
            run = self.backbone() if same else self.trained(method.learner, config, self.train)
            return config, run, run.seconds, run.cached
        config = self.config(method.name, method.preset)
        if not method.reads_features:
            run = self.trained(method.learner, config, self.train)
            return config, run, run.seconds, run.cached
        base = self.backbone()
        run = self.trained(method.learner, config, *self.features(self.train))
        return config, run, run.seconds + base.seconds, run.cached and base.cached


def compare(
    methods: Iterable[str] | None = None,
    shots: Sequence[int] = (1, 5),
    n_way: int = 5,
    n_episodes: int | None = None,
    queries: int = 15,
    budget: runtime.Budget | None = None,
    seed: int = 0,
    cache: bool = True,
    data: tuple[ImageClasses, ImageClasses] | None = None,
    overrides: dict[str, dict] | None = None,
    folder: Path | None = None,
) -> Comparison:
    """Meta-train every learner (or load it) and score all on the same episodes.

    Args:
        methods: names from :data:`metalib.methods.REGISTRY` (``None``: all, in registry order).
        shots: K of the N-way K-shot test settings, e.g. ``(1, 5)``.
        n_way: N of the test tasks.
        n_episodes: test episodes per shot setting (``None``: 300, ``long`` budget 600).
        queries: query images per class in the test episodes.
        budget: picks each learner's preset (``None``: ``runtime.budget()``).
        seed: seeds the test episodes and every learner's training.
        cache: reuse and store trained learners (:func:`metalib.trained.train_once`).
        data: ``(train, test)`` splits (``None``: Glyphs' ``train`` and ``test``, 20 per class).
        overrides: per learner name, and ``"backbone"`` for the shared backbone, fields of its
            config to replace (e.g. ``{"ProtoNet": {"steps": 10}}``).
        folder: the cache folder (``None``: :func:`~metalib.trained.train_once`'s, shared with
            the chapters).

    Returns:
        A :class:`Comparison` with one :class:`Row` per learner and shot setting.
    """
    names = list(registry.REGISTRY) if methods is None else list(methods)
    unknown = [n for n in names if n not in registry.REGISTRY]
    if unknown or not names:
        raise ValueError(
            f"unknown methods {unknown}; choose from {list(registry.REGISTRY)}"
            if unknown
            else f"methods is empty; choose from {list(registry.REGISTRY)}"
        )
    overrides = overrides or {}
    stray = [n for n in overrides if n not in registry.REGISTRY and n != "backbone"]
    if stray:
        raise ValueError(f"overrides for unknown methods {stray}; use names from the registry")
    shots = tuple(shots)
    if not shots or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in shots):
        raise ValueError(f"shots must be positive ints such as (1, 5), got {shots!r}")
    budget = budget or runtime.budget()
    n_episodes = n_episodes or budget.pick(default=300, long=600)
    if data is None:
        from metalib.data import glyphs

        data = (glyphs.load("train"), glyphs.load("test"))
    train, test = data
    if max(shots) + queries > test.per_class:
        raise ValueError(
            f"{max(shots)} shots + {queries} queries exceed the {test.per_class} images per "
            f"class of {test.name}; use fewer shots or queries"
        )
    device = runtime.device()
    learners = Learners(train, device, budget, seed, overrides, cache, folder)
    episodes = {k: FixedEpisodes(test, n_way, k, queries, n_episodes, seed) for k in shots}
    embed_ms: dict[int, float] = {}  # per shot setting: embedding one task's images
    rows = []
    for name in runtime.progress(names, desc="methods"):
        method = registry.REGISTRY[name]
        config, run, seconds, cached = learners.learn(method)
        if method.learner is None:
            predict = registry.pixel_logits
        else:
            predict = partial(method.learner.predict, config, run.model)
        features, encoder = None, None
        if method.reads_features:  # scored on the test split embedded once, as it was trained
            features, encoder = learners.features(test)[0], learners.backbone().model.body
            for k in set(shots) - set(embed_ms):  # what each of them pays first, timed once
                embed_ms[k] = _embedding_ms(encoder, episodes[k], device)
        for k in shots:
            score, ms, peak = _evaluate(predict, episodes[k], features, encoder, device, name)
            ms += embed_ms[k] if encoder is not None else 0.0
            rows.append(
                Row(
                    name, method.family, n_way, k, score.mean, score.ci95, len(episodes[k]),
                    seconds, ms, peak, cached,
                )
            )  # fmt: skip
    return Comparison(tuple(rows), budget.name, device.type)


EMBEDDING_TASKS = 20
"""Tasks over which :func:`_embedding_ms` times the shared backbone's pass over a task's images."""


def _embed(encoder: nn.Module, images: Episode) -> None:
    """One forward pass of ``encoder`` over a task's support and query images, no gradients."""
    with torch.no_grad():
        encoder(torch.cat([images.support_x[0], images.query_x[0]]))


def _embedding_ms(encoder: nn.Module, episodes: FixedEpisodes, device: torch.device) -> float:
    """Mean ms for ``encoder`` to embed one task's images, over the first
    :data:`EMBEDDING_TASKS` episodes (after one untimed pass).

    Every learner that reads embeddings pays this before it adapts, on every task: its time per
    task is this plus its own, measured on every task (:func:`_evaluate`). Every task of a
    setting has the same number of images, so the pass costs the same work each time; timing it
    once per setting, not once per learner and task, saved chapter 7 about half a minute.
    """
    n = min(EMBEDDING_TASKS, len(episodes))
    _embed(encoder, episodes[0].to(device))  # allocations and kernels warmed up, not timed
    seconds = 0.0
    for i in range(n):
        images = episodes[i].to(device)
        with Timer() as t:
            _embed(encoder, images)
        seconds += t.seconds
    return 1000 * seconds / n


def _evaluate(
    predict: Callable[[Episode], torch.Tensor],
    episodes: FixedEpisodes,
    test_features: FeatureClasses | None,
    encoder: nn.Module | None,
    device: torch.device,
    name: str,
):
    """Score ``predict`` on ``episodes`` one task at a time: Score, ms per task, peak MB.

    A learner that reads embeddings is scored on ``test_features`` (the split embedded once, as
    it was trained). Its peak memory includes ``encoder`` embedding the task's own images
    (support and query, one forward pass without gradients), what adapting to a new task costs
    it; the time of that pass is measured once per setting (:func:`_embedding_ms`) and added by
    the caller, so the ms per task returned here are the learner's own.
    """
    same = episodes
    # the same indices drawn over the embeddings of the same images
    if test_features is not None:
        same = FixedEpisodes(
            test_features, episodes.n_way, episodes.k_shot,
            episodes.q_queries, len(episodes), episodes.seed,
        )  # fmt: skip

    def adapt(images: Episode, ep: Episode) -> torch.Tensor:
        if encoder is not None:
            _embed(encoder, images)
        return predict(ep)

    # memory first, on one task (adapting to a task is what is measured),
    # then time every task
    first, first_images = same[0].to(device), episodes[0].to(device)
    peak_mb = peak_memory_mb(lambda: adapt(first_images, first), device)
    accs, seconds = [], 0.0
    bar = runtime.progress(
        zip(episodes.batches(1), same.batches(1), strict=True),
        total=len(episodes),
        desc=f"{name}, {episodes.k_shot}-shot",
    )
    for images, ep in bar:
        if not torch.equal(images.classes, ep.classes):
            # cannot happen unless metalib has a bug
            raise RuntimeError(
                "feature episodes drifted from the image episodes",
            )
        ep = ep.to(device)
        with Timer() as t:
            logits = predict(ep)
        seconds += t.seconds
        accs.append(accuracy(logits.float(), ep.query_y).cpu())
    return (
        mean_ci95(torch.cat(accs), percent=True),
        1000 * seconds / len(episodes),
        peak_mb,
    )
