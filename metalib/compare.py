"""Every learner on one benchmark: accuracy with a 95% CI against what it costs.

:func:`compare` meta-trains each method of :data:`metalib.methods.REGISTRY` on Glyphs' training
scripts and scores it on the *same* fixed test episodes (one :class:`~metalib.tasks.FixedEpisodes`
per shot setting, from one seed), one task at a time, measuring the adaptation time per task and
the peak memory of adaptation. Meta-training is cached on disk under a key made of the source
of every metalib module the learners run (:func:`source_files`), the method's name and settings,
the training data, torch's version and the device type, so a result produced by other code or
other settings is never shown; a cached row reports the training time
of the run that trained it (``cached=True``).
"""

from __future__ import annotations

import ast
import csv
import dataclasses
import itertools
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from torch import nn

from metalib import methods as registry
from metalib import runtime
from metalib.data import cache as disk
from metalib.data.base import ImageClasses
from metalib.features import FeatureClasses, embed_classes
from metalib.tasks import Episode, FixedEpisodes
from metalib.train import accuracy, mean_ci95

ROOT = Path(__file__).resolve().parent


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


def source_files(module: str = "metalib.compare") -> list[Path]:
    """The files of ``module`` and of every metalib module it imports, directly or not (found by
    reading their ``import`` statements), in a fixed order: the code part of each cache key.

    For this module that is the learners, their networks, data and training loops, and not the
    rest of metalib (the grader, the plots, the chapters' widgets), whose edits cannot change a
    trained learner.
    """
    package = ROOT.parent
    todo, files = [module], set()
    while todo:
        parts = todo.pop().split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # packages' __init__ run too
        candidates = (
            package.joinpath(*parts).with_suffix(".py"),
            package.joinpath(*parts, "__init__.py"),
        )
        path = next((c for c in candidates if c.is_file()), None)
        if path is None or path in files:  # not a module (a class, a function), or read already
            continue
        files.add(path)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                todo += [a.name for a in node.names if a.name.split(".")[0] == "metalib"]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("metalib"):
                # `from metalib import maml` names a module; `from metalib.nets import Conv4` not
                todo += [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
    return sorted(files)


def source_digest(sources: Sequence[Path] | None = None) -> str:
    """A digest of the content of ``sources`` (``None``: :func:`source_files`), read once."""
    return disk.digest(*(source_files() if sources is None else [Path(p) for p in sources]))


def cache_key(name: str, settings: dict, code: str, device: torch.device, seed: int = 0) -> str:
    """The key of one trained learner: its code (:func:`source_digest`), name, settings, torch's
    version, the device type and the training seed."""
    return disk.digest(code, name, sorted(settings.items()), torch.__version__, device.type, seed)


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def _cached_training(
    path: Path | None,
    build: Callable[[], nn.Module],
    train: Callable[[], nn.Module],
    prepare: Callable[[], float] = lambda: 0.0,
) -> tuple[nn.Module, float, bool]:
    """``(model, seconds, cached)``: the weights at ``path`` if valid, else trained and saved.

    ``prepare()`` runs only before training and returns seconds that count as training time
    (embedding the training split); the saved seconds include them.
    """
    entry = disk.load(path) if path is not None else None
    if entry is not None:
        model = build()
        model.load_state_dict(entry["state"])
        return model, float(entry["seconds"]), True
    seconds = prepare()
    start = time.perf_counter()
    model = train()
    seconds += time.perf_counter() - start
    if path is not None:
        disk.save(path, {"state": model.state_dict(), "seconds": seconds})
    return model, seconds, False


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
    with torch.profiler.profile(activities=activity, profile_memory=True) as prof:
        fn()
    events = sorted(prof.events(), key=lambda e: e.time_range.start)
    held = itertools.accumulate(e.self_cpu_memory_usage for e in events)
    return max(0, max(held, default=0)) / 2**20


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
    sources: Sequence[Path] | None = None,
    folder: Path | None = None,
) -> Comparison:
    """Meta-train every method (or load it from the cache) and score all on the same episodes.

    Args:
        methods: names from :data:`metalib.methods.REGISTRY` (``None``: all, in registry order).
        shots: K of the N-way K-shot test settings, e.g. ``(1, 5)``.
        n_way: N of the test tasks.
        n_episodes: test episodes per shot setting (``None``: 300, ``long`` budget 600).
        queries: query images per class in the test episodes.
        budget: the run budget that picks the training settings (``None``: ``runtime.budget()``).
        seed: seeds the test episodes and every method's training (training: shifted by
            ``METALIB_SEED``, as :func:`metalib.runtime.seed_everything` is).
        cache: reuse and store meta-trained weights in ``folder``.
        data: ``(train, test)`` splits (``None``: Glyphs' ``train`` and ``test``, 20 per class).
        overrides: per method name, settings that replace the budget's (e.g. fewer steps).
        sources: the files whose content keys the cache (``None``: :func:`source_files`).
        folder: the cache folder (``None``: ``runtime.cache_dir() / "compare"``).

    Returns:
        A :class:`Comparison` with one :class:`Row` per method and shot setting.
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
    stray = [n for n in overrides if n not in registry.REGISTRY]
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
    # read once, so that files edited during the run do not mix keys; the training split's
    # pixels are part of what produced the weights, so they are part of the key too
    code = disk.digest(source_digest(sources), train.name, train.images.numpy().tobytes())
    folder = (runtime.cache_dir() / "compare") if folder is None else Path(folder)

    train_seed = seed + runtime.seed_shift()

    def path(name: str, settings: dict) -> Path | None:
        return folder / f"{_slug(name)}-{cache_key(name, settings, code, device, train_seed)}.pt"

    backbones: dict[str, tuple[nn.Module, float, bool]] = {}  # by cache key of its settings
    embedded: dict[tuple[str, str], tuple[FeatureClasses, float]] = {}

    def backbone(settings: dict) -> tuple[nn.Module, float, bool]:
        key = repr(sorted(settings.items()))
        if key not in backbones:
            g = torch.Generator().manual_seed(train_seed)
            backbones[key] = _cached_training(
                path("backbone", settings) if cache else None,
                lambda: registry.build_backbone(settings, train, device),
                lambda: registry.train_backbone(settings, train, device, g),
            )
        return backbones[key]

    def features(settings: dict, split: ImageClasses) -> tuple[FeatureClasses, float]:
        key = (repr(sorted(settings.items())), split.name)
        if key not in embedded:
            start = time.perf_counter()
            f = embed_classes(split, backbone(settings)[0].body)
            embedded[key] = (f, time.perf_counter() - start)
        return embedded[key]

    episodes = {k: FixedEpisodes(test, n_way, k, queries, n_episodes, seed) for k in shots}
    rows = []
    for name in runtime.progress(names, desc="methods"):
        method = registry.REGISTRY[name]
        settings = {**method.settings(budget), **overrides.get(name, {})}
        bb = settings.get("backbone")
        inputs = registry.Inputs(
            train,
            device,
            backbone=lambda bb=bb: backbone(bb)[0],
            train_features=lambda bb=bb: features(bb, train)[0],
        )
        extra, cached = 0.0, False  # nothing to train: nothing came from the cache
        if method.uses_backbone:
            _, extra, cached = backbone(bb)
        if method.train is None:
            model, seconds = method.build(settings, inputs), 0.0
        else:
            g = torch.Generator().manual_seed(train_seed)
            with torch.random.fork_rng(devices=[]):  # networks draw their initial weights
                torch.manual_seed(train_seed)
                model, seconds, cached_own = _cached_training(
                    path(name, settings) if cache else None,
                    partial(method.build, settings, inputs),
                    partial(method.train, settings, inputs, g),
                    # embedding the training split is part of meta-training these learners
                    partial(lambda bb: features(bb, train)[1] if bb else 0.0, bb)
                    if method.reads_features
                    else lambda: 0.0,
                )
            cached = cached_own and (cached or not method.uses_backbone)
        test_features = features(bb, test)[0] if method.reads_features else None
        encoder = backbone(bb)[0].body if method.reads_features else None
        for k in shots:
            score, ms, peak = _evaluate(
                method, model, settings, episodes[k], test_features, encoder, device
            )
            rows.append(
                Row(
                    name,
                    method.family,
                    n_way,
                    k,
                    score.mean,
                    score.ci95,
                    len(episodes[k]),
                    seconds + extra,
                    ms,
                    peak,
                    cached,
                )
            )
    return Comparison(tuple(rows), budget.name, device.type)


def _evaluate(
    method: registry.Method,
    model: nn.Module,
    settings: dict,
    episodes: FixedEpisodes,
    test_features: FeatureClasses | None,
    encoder: nn.Module | None,
    device: torch.device,
):
    """Score one method on ``episodes`` one task at a time: Score, ms per task, peak MB.

    A method that reads embeddings is scored on ``test_features`` (the split embedded once, as it
    was trained), but its time and memory include ``encoder`` embedding the task's own images
    (support and query, one forward pass without gradients): that is what adapting to a new task
    costs it, and what the methods working on pixels pay inside ``predict``.
    """
    same = episodes
    if test_features is not None:  # the same indices drawn over the embeddings of the same images
        same = FixedEpisodes(
            test_features, episodes.n_way, episodes.k_shot, episodes.q_queries, len(episodes),
            episodes.seed,
        )  # fmt: skip

    def embed(images: Episode) -> None:
        if encoder is not None:
            with torch.no_grad():
                encoder(torch.cat([images.support_x[0], images.query_x[0]]))

    def adapt(images: Episode, ep: Episode) -> torch.Tensor:
        embed(images)
        return method.predict(model, settings, ep)

    # memory first, on one task (adapting to a task is what is measured), then time every task
    first, first_images = same[0].to(device), episodes[0].to(device)
    peak_mb = peak_memory_mb(lambda: adapt(first_images, first), device)
    accs, seconds = [], 0.0
    bar = runtime.progress(
        zip(episodes.batches(1), same.batches(1), strict=True),
        total=len(episodes),
        desc=f"{method.name}, {episodes.k_shot}-shot",
    )
    for images, ep in bar:
        if not torch.equal(images.classes, ep.classes):
            raise RuntimeError("feature episodes drifted from the image episodes")  # a bug
        images, ep = (images.to(device) if encoder is not None else images), ep.to(device)
        runtime.synchronize()
        start = time.perf_counter()
        logits = adapt(images, ep)
        runtime.synchronize()
        seconds += time.perf_counter() - start
        accs.append(accuracy(logits.float(), ep.query_y).cpu())
    return mean_ci95(torch.cat(accs), percent=True), 1000 * seconds / len(episodes), peak_mb
