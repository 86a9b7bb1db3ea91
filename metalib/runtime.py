"""Where code runs and how long it may run: the device, seeding, the run budget, the cache folder.

Everything that depends on the machine is decided here and nowhere else, so a chapter runs
unchanged on a laptop CPU and on a GPU:

* ``device()`` picks CUDA when it is present, else the CPU; ``METALIB_DEVICE=cpu`` (or ``cuda``,
  ``cuda:1``, ``mps``) forces one.
* ``seed_everything(seed)`` seeds Python, NumPy and torch and returns a ``torch.Generator`` for
  code that takes its randomness explicitly.
* ``budget()`` is the run budget: ``default`` fits every chapter into a few minutes on a 2-core
  CPU; ``METALIB_BUDGET=long`` runs closer to the papers' settings (minutes on a GPU).
* ``progress(iterable)`` is the one progress bar (tqdm; ``METALIB_PROGRESS=0`` turns bars off,
  as the book build does so that no bar clutters the HTML).
* ``cache_dir()`` is where rendered datasets and downloads are kept (``METALIB_CACHE``, else
  ``~/.cache/metalib``).
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

ENV_DEVICE = "METALIB_DEVICE"
ENV_BUDGET = "METALIB_BUDGET"
ENV_CACHE = "METALIB_CACHE"
ENV_THREADS = "METALIB_THREADS"
ENV_PROGRESS = "METALIB_PROGRESS"

T = TypeVar("T")


def device() -> torch.device:
    """The device every chapter and benchmark puts its tensors on.

    CUDA when available, else the CPU; the environment variable ``METALIB_DEVICE`` overrides the
    choice (``cpu``, ``cuda``, ``cuda:1``, ``mps``). Library functions never call this: they
    follow the device of their inputs.

    Raises:
        ValueError: ``METALIB_DEVICE`` names a device that is not a torch device or not present.
    """
    forced = os.environ.get(ENV_DEVICE, "").strip()
    if not forced:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(forced)
    except RuntimeError as err:
        raise ValueError(
            f"{ENV_DEVICE}={forced!r} is not a torch device; use 'cpu', 'cuda', 'cuda:N' or 'mps', "
            f"or unset {ENV_DEVICE} to choose automatically"
        ) from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"{ENV_DEVICE}={forced!r} asks for CUDA, but torch sees no CUDA device here; "
            f"unset {ENV_DEVICE} or set it to 'cpu'"
        )
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"{ENV_DEVICE}={forced!r} asks for MPS, which is not available here")
    return dev


def seed_everything(seed: int = 0) -> torch.Generator:
    """Seed Python's, NumPy's and torch's global generators; return a fresh seeded generator.

    Called once at the top of each chapter and of the test session. Library code never relies on
    the global state: samplers take the returned ``torch.Generator`` (or a seed) explicitly.
    """
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def set_threads(n: int | None = None) -> int:
    """Pin torch's intra-op thread count (``METALIB_THREADS``, else the number of cores, at most 4).

    Returns the count in force. Pinned counts make timings comparable and results repeatable.
    """
    if n is None:
        env = os.environ.get(ENV_THREADS, "").strip()
        try:
            n = int(env) if env else min(4, os.cpu_count() or 1)
        except ValueError as err:
            raise ValueError(
                f"{ENV_THREADS}={env!r} is not a positive integer; set it to e.g. 2, or unset it"
            ) from err
    if n < 1:
        raise ValueError(f"thread count must be at least 1, got {n}")
    torch.set_num_threads(n)
    return n


@dataclass(frozen=True)
class Budget:
    """How long experiments may run: ``default`` (minutes on a laptop CPU) or ``long``.

    Chapters write ``budget().pick(default=300, long=5000)`` for every size that trades time for
    quality, and state which budget produced their numbers.
    """

    name: str

    def pick(self, default: T, long: T) -> T:
        """The value for this budget."""
        return long if self.name == "long" else default


BUDGETS = ("default", "long")


def budget() -> Budget:
    """The run budget chosen by ``METALIB_BUDGET`` (``default`` when unset)."""
    name = os.environ.get(ENV_BUDGET, "").strip() or "default"
    if name not in BUDGETS:
        raise ValueError(f"{ENV_BUDGET}={name!r} is not a budget; choose one of {BUDGETS}")
    return Budget(name)


def cache_dir() -> Path:
    """The folder for rendered datasets and downloads (created on first use).

    ``METALIB_CACHE`` when set, else ``~/.cache/metalib``.
    """
    env = os.environ.get(ENV_CACHE, "").strip()
    path = Path(env).expanduser() if env else Path.home() / ".cache" / "metalib"
    path.mkdir(parents=True, exist_ok=True)
    return path


def progress(iterable: Iterable[T] | None = None, **kwargs: Any):
    """A tqdm progress bar (a widget in Jupyter, text in a terminal); ``METALIB_PROGRESS=0``: off.

    Takes tqdm's arguments (``total``, ``desc``, ...). The book build sets ``METALIB_PROGRESS=0``
    so that executed pages carry no bars.
    """
    from tqdm.auto import tqdm

    off = os.environ.get(ENV_PROGRESS, "1").strip().lower() in ("0", "false", "no", "off")
    kwargs.setdefault("disable", off)
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, **kwargs)
