"""Every learner trained once for the whole book: a trained model is cached under its recipe.

A learner's *recipe* lives in its own module (e.g. :mod:`metalib.protonet`): a frozen ``Config``
dataclass with a preset per run budget, ``build(config, data)`` (the untrained network) and
``train(config, data, generator, device) -> Run``. :func:`train_once` runs a recipe, or loads
what an earlier run trained with the same recipe, so a chapter that teaches by training in front
of the reader trains, and a later chapter (the comparison of chapter 7) loads the same weights.

The key of a trained learner (:func:`recipe_key`) is what produced it: the config, the data's
identity, the source of the learner's module and of every metalib module it imports
(:func:`source_files`, not all of metalib), torch's version, the device type and
the seed. A cached entry keeps the weights, the training history, any snapshots and the seconds
the training took in the run that did it.
"""

from __future__ import annotations

import ast
import dataclasses
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from metalib import runtime
from metalib.data import cache as disk
from metalib.data.base import ImageClasses
from metalib.features import FeatureClasses, embed_classes
from metalib.train import History

State = dict[str, torch.Tensor]


@dataclass
class Run:
    """What a recipe's ``train`` returns.

    Attributes:
        model: the trained network.
        history: its training :class:`~metalib.train.History`.
        snapshots: the weights (``state_dict``) at some steps of training, by step: for
            accuracy-against-training-time curves, scored after training.
    """

    model: nn.Module
    history: History
    snapshots: dict[int, State] = field(default_factory=dict)


def with_snapshots(
    step: Callable[[int], dict[str, float]], model: nn.Module, steps: int, count: int
) -> tuple[Callable[[int], dict[str, float]], dict[int, State]]:
    """``step`` timed, with ``model``'s weights kept ``count`` times over ``steps`` training steps.

    The returned step runs ``step``, adds its seconds to a running total and, every ``steps //
    count`` steps, keeps a CPU copy of ``model.state_dict()`` in the returned dict (by steps done)
    and reports the seconds so far as the metric ``seconds``: what a recipe's ``train`` needs for
    :attr:`Run.snapshots` and an accuracy-against-time curve. ``count`` 0 keeps nothing.
    """
    every = max(steps // count, 1) if count else 0
    snapshots: dict[int, State] = {}
    seconds = 0.0

    def timed(i: int) -> dict[str, float]:
        nonlocal seconds
        start = time.perf_counter()
        metrics = step(i)
        seconds += time.perf_counter() - start
        if every and (i + 1) % every == 0:
            snapshots[i + 1] = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            metrics["seconds"] = seconds
        return metrics

    return timed, snapshots


@dataclass
class Trained(Run):
    """A :class:`Run` and where it came from.

    Attributes:
        seconds: the training time, in the run that trained it (a cached one reports that run's).
        cached: loaded from the cache rather than trained now.
        key: the recipe's key (:func:`recipe_key`).
    """

    seconds: float = 0.0
    cached: bool = False
    key: str = ""

    @property
    def took(self) -> str:
        """``"in 47 s"``, and who trained it when it came from the cache (for a chapter's print)."""
        loaded = " (loaded: an earlier run trained it)" if self.cached else ""
        return f"in {self.seconds:.0f} s{loaded}"


def source_files(module: str) -> list[Path]:
    """The files of ``module`` and of every metalib module it imports, directly or not (found by
    reading their ``import`` statements), in a fixed order: the code part of each cache key.

    For a learner's module that is its network, data, training loop and what they use, and not
    the rest of metalib (other learners, the grader, the plots), whose edits cannot change it.
    """
    package = Path(__file__).resolve().parents[1]
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


def source_digest(sources: Sequence[Path]) -> str:
    """A digest of the content of the files ``sources``, read once."""
    return disk.digest(*[Path(p) for p in sources])


def data_identity(data: ImageClasses) -> str:
    """A digest of a split's name and pixels: the data part of a key."""
    if not isinstance(data, ImageClasses):
        raise ValueError(
            f"the identity of {type(data).__name__} data is not known here; pass data_id= (for "
            "embeddings: the key of the network that embedded them, and the split's identity)"
        )
    return disk.digest(data.name, data.images.numpy().tobytes())


def embedded(
    backbone: Trained, split: ImageClasses, *, cache: bool = True, folder: Path | None = None
) -> tuple[FeatureClasses, str]:
    """``split`` embedded by a trained backbone's body (:func:`metalib.features.embed_classes`),
    and the identity of those embeddings: the data, and its ``data_id``, of the learners that
    read embeddings.

    The identity is the backbone's key, the split's and the source of :mod:`metalib.features`.
    Like a trained learner, the embeddings are stored in ``folder`` under it and loaded when the
    same backbone embedded the same split before (Glyphs' training split costs a pass of the
    backbone over 28,700 images); ``cache=False`` always embeds and stores nothing.
    """
    data_id = disk.digest(
        backbone.key, data_identity(split), source_digest(source_files("metalib.features"))
    )
    path = _folder(folder) / f"features-{data_id}.pt"
    entry = disk.load(path) if cache else None
    if entry is not None:
        return FeatureClasses(entry["name"], entry["features"]), data_id
    features = embed_classes(split, backbone.model.body)
    if cache:
        disk.save(path, {"name": features.name, "features": features.features})
    return features, data_id


def _folder(folder: Path | None) -> Path:
    """Where trained learners and embeddings are stored (default: the cache's ``trained``)."""
    return runtime.cache_dir() / "trained" if folder is None else Path(folder)


def recipe_key(
    learner: ModuleType, config: Any, data_id: str, device: torch.device, seed: int
) -> str:
    """The key of ``learner`` trained with ``config`` on the data ``data_id`` (see the module)."""
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        raise ValueError(f"config must be a dataclass instance, got {config!r}")
    code = source_digest(source_files(learner.__name__))
    return disk.digest(
        learner.__name__, repr(config), data_id, code, torch.__version__, device.type, seed
    )


def train_once(
    learner: ModuleType,
    config: Any,
    data: Any,
    *,
    seed: int = 0,
    device: torch.device | None = None,
    data_id: str | None = None,
    cache: bool = True,
    folder: Path | None = None,
) -> Trained:
    """``learner.train(config, data, ...)``, or the weights an earlier run trained the same way.

    Training starts from ``seed`` shifted by ``METALIB_SEED`` (:func:`metalib.runtime.seed_shift`):
    torch's global generator, which draws the initial weights, is seeded with it inside a forked
    random state (the caller's is left as it was), and so is the generator of the training draws.

    Args:
        learner: the module that owns the recipe (``Config``, ``build``, ``train``).
        config: an instance of ``learner.Config``.
        data: what ``train`` reads (an :class:`~metalib.data.base.ImageClasses` split, or
            embeddings with ``data_id``).
        seed: the training seed.
        device: where to train (``None``: :func:`metalib.runtime.device`).
        data_id: the identity of ``data`` (``None``: :func:`data_identity`).
        cache: load and store in ``folder``; ``False`` always trains and stores nothing.
        folder: the cache folder (``None``: ``runtime.cache_dir() / "trained"``).
    """
    if not isinstance(config, learner.Config):
        raise ValueError(
            f"config must be a {learner.__name__}.Config, got {type(config).__name__}; "
            f"use {learner.__name__}.Config.preset(budget)"
        )
    device = runtime.device() if device is None else torch.device(device)
    seed += runtime.seed_shift()
    key = recipe_key(
        learner, config, data_identity(data) if data_id is None else data_id, device, seed
    )
    name = re.sub(r"[^a-z0-9]+", "-", learner.__name__.rsplit(".", 1)[-1].lower())
    path = _folder(folder) / f"{name}-{key}.pt"
    entry = disk.load(path) if cache else None
    if entry is not None:
        model = learner.build(config, data).to(device)
        model.load_state_dict(entry["state"])
        history = History(entry["history"]["step"], entry["history"]["metrics"])
        return Trained(model, history, entry["snapshots"], entry["seconds"], True, key)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        start = time.perf_counter()
        run = learner.train(config, data, torch.Generator().manual_seed(seed), device)
        seconds = time.perf_counter() - start
    if cache:
        disk.save(
            path,
            {
                "state": run.model.state_dict(),
                "history": {"step": run.history.step, "metrics": run.history.metrics},
                "snapshots": run.snapshots,
                "seconds": seconds,
            },
        )
    return Trained(run.model, run.history, run.snapshots, seconds, False, key)
