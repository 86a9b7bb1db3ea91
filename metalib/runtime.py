"""Where code runs and how long it may run: the device, seeding, the run budget, the cache folder.

Everything that depends on the machine is decided here and nowhere else, so a chapter runs
unchanged on a laptop CPU and on a GPU:

* ``device()`` picks CUDA when it is present, else the CPU; ``METALIB_DEVICE=cpu`` (or ``cuda``,
  ``cuda:1``, ``mps``) forces one.
* ``seed_everything(seed)`` seeds Python, NumPy and torch and returns a ``torch.Generator`` for
  code that takes its randomness explicitly; ``METALIB_SEED=s`` shifts every such seed by ``s``,
  to check that a chapter's claims hold across seeds (``benchmarks/seeds.py``).
* ``budget()`` is the run budget: ``default`` fits every chapter into a few minutes on a 2-core
  CPU; ``METALIB_BUDGET=long`` runs closer to the papers' settings, meant for a GPU (each
  chapter within 10 minutes on one is the target; ``make test-gpu BUDGET=long`` measures it).
* ``progress(iterable)`` is the one progress bar (tqdm; ``METALIB_PROGRESS=0`` turns bars off,
  as the book build does so that no bar clutters the HTML).
* ``cache_dir()`` is where rendered datasets and downloads are kept (``METALIB_CACHE``, else
  ``~/.cache/metalib``).
* ``describe()`` names the device for a results table; ``synchronize()``, ``device_peak_mb()``
  and ``timing_claim()`` are what timing and memory
  measurements need to know about the device: an accelerator runs queued kernels
  asynchronously, keeps its own allocator statistics, and is launch-bound on small operations,
  so a claim about time is asserted only on the CPU.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterable
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
ENV_SEED = "METALIB_SEED"

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


def seed_shift() -> int:
    """``METALIB_SEED`` as an int (0 when unset): the amount every seed of a run is shifted by.

    ``METALIB_SEED=3`` runs a chapter as if each of its ``seed_everything(s)`` calls read
    ``seed_everything(s + 3)``: other initial weights and other training draws, the same code.
    ``benchmarks/seeds.py`` uses it to measure how far a chapter's numbers move between seeds.
    """
    env = os.environ.get(ENV_SEED, "").strip()
    try:
        shift = int(env) if env else 0
    except ValueError:
        shift = -1
    if shift < 0:
        raise ValueError(
            f"{ENV_SEED}={env!r} is not a non-negative integer; set it to e.g. 1, or unset it"
        )
    return shift


def seed_everything(seed: int = 0) -> torch.Generator:
    """Seed Python's, NumPy's and torch's global generators; return a fresh seeded generator.

    Called once at the top of each chapter and of the test session. Library code never relies on
    the global state: samplers take the returned ``torch.Generator`` (or a seed) explicitly.
    The seed used is ``seed + seed_shift()`` (``METALIB_SEED``, 0 unless set).
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    seed += seed_shift()
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


def describe(dev: torch.device | None = None) -> str:
    """The device in words, with torch's version: ``"cuda:0 (NVIDIA H200), torch 2.11.0+cu130,
    CUDA 13.0"`` or ``"cpu (x86_64, 2 cores), torch 2.13.0+cpu"`` (``None``: :func:`device`)."""
    import platform

    dev = device() if dev is None else torch.device(dev)
    if dev.type == "cuda":
        name = torch.cuda.get_device_name(dev)
        return f"{dev} ({name}), torch {torch.__version__}, CUDA {torch.version.cuda}"
    return f"{dev} ({platform.machine()}, {os.cpu_count()} cores), torch {torch.__version__}"


def synchronize() -> None:
    """Wait until every kernel queued on an accelerator has run (a no-op on the CPU).

    CUDA (and MPS) return from an operation as soon as it is queued, so a clock read right after
    it measures the queueing, not the work; :class:`metalib.train.Timer` calls this at its start
    and end.
    """
    if torch.cuda.is_initialized():
        for index in range(torch.cuda.device_count()):
            torch.cuda.synchronize(index)
    if torch.backends.mps.is_available():
        torch.mps.synchronize()


def device_peak_mb(fn: Callable[[], object], dev: torch.device) -> float | None:
    """Peak memory the accelerator's allocator held above its starting level while ``fn()`` ran.

    Returns:
        Megabytes (2**20 bytes) on CUDA; ``None`` on any other device, which keeps no allocator
        statistics (``fn`` is then not run: the caller measures the process, or reports nothing).
    """
    if dev.type != "cuda":
        return None
    torch.cuda.synchronize(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    before = torch.cuda.memory_allocated(dev)
    fn()
    torch.cuda.synchronize(dev)
    return (torch.cuda.max_memory_allocated(dev) - before) / 2**20


def timing_claim(holds: bool, claim: str, dev: torch.device | None = None) -> bool:
    """Assert a claim about time on the CPU; elsewhere return whether it held, without asserting.

    On a CPU every floating-point operation costs time, so "A costs more than B" follows from
    the work each does. On a GPU small operations cost about the same launch overhead whatever
    they compute, so the same comparison can come out either way: there the chapter shows the
    numbers but does not assert them.

    Args:
        holds: whether the measured times satisfy the claim.
        claim: the claim in words, for the error message.
        dev: the device the times were measured on (``None``: :func:`device`).

    Returns:
        ``holds``.

    Raises:
        AssertionError: on the CPU, when the claim does not hold.
    """
    dev = device() if dev is None else torch.device(dev)
    if dev.type == "cpu" and not holds:
        raise AssertionError(f"on the CPU, {claim}: the measured times say otherwise")
    return bool(holds)
