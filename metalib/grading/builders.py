"""Trusted builders shared by several exercises: seeded inputs from plain specs, and gradients.

A question's ``build`` turns a case's plain-data spec into arguments; it runs in the sandbox for
the student's function and in the grader for the reference, so everything here depends only on
its arguments (seeded generators, never the global random state).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F

from metalib.data.base import ImageClasses
from metalib.grading.question import one_thread as one_thread  # re-exported for the exercises
from metalib.grading.question import plain
from metalib.nets import Conv4

Tensors = dict[str, torch.Tensor]


def dtype(name: str) -> torch.dtype:
    """``torch.float64`` for ``"float64"``, and so on."""
    return getattr(torch, name)


def generator(seed: int) -> torch.Generator:
    """A CPU generator seeded with ``seed``."""
    return torch.Generator().manual_seed(int(seed))


def tiny_image_classes(
    n_classes: int = 8, per_class: int = 6, size: int = 8, seed: int = 0
) -> ImageClasses:
    """A synthetic split whose images tell which class and which image they are.

    Pixel ``(0, 0)`` of image ``m`` of class ``c`` holds ``c`` and pixel ``(0, 1)`` holds ``m``
    (as uint8, so ``c / 255`` and ``m / 255`` after :meth:`ImageClasses.get`); the other pixels
    are seeded noise, so that a judge can tell the images apart and check them exactly.
    """
    g = generator(seed)
    images = torch.randint(0, 256, (n_classes, per_class, size, size), generator=g)
    images = images.to(torch.uint8)
    images[:, :, 0, 0] = torch.arange(n_classes, dtype=torch.uint8)[:, None]
    images[:, :, 0, 1] = torch.arange(per_class, dtype=torch.uint8)[None, :]
    return ImageClasses(
        name=f"tiny{n_classes}x{per_class}",
        images=images,
        class_names=tuple(f"class {c}" for c in range(n_classes)),
        groups=tuple(f"group {c % 2}" for c in range(n_classes)),
    )


def shape_classes(seed: int, classes: int, per_class: int, size: int = 16) -> ImageClasses:
    """Synthetic glyphs: class ``c`` is one seeded shape (a smooth random field above a
    threshold); each of its images moves it by up to 3 pixels and adds pixel noise of std 0.3."""
    field = torch.randn(classes, 1, 5, 5, generator=generator(seed), dtype=torch.float64)
    shapes = F.interpolate(field, size=(size, size), mode="bicubic", align_corners=True) > 0.5
    g = generator(seed + 1)
    moves = torch.randint(-3, 4, (classes, per_class, 2), generator=g).tolist()
    rolled = [[torch.roll(shapes[c, 0], m, dims=(0, 1)) for m in moves[c]] for c in range(classes)]
    x = torch.stack([torch.stack(images) for images in rolled])  # (C, M, S, S)
    x = (x.float() + 0.3 * torch.randn(x.shape, generator=g)).clamp(0.0, 1.0)
    return ImageClasses(
        name=f"shapes {seed}",
        images=(255 * x).round().to(torch.uint8),
        class_names=tuple(f"shape {c}" for c in range(classes)),
        groups=("shapes",) * classes,
    )


def tiny_conv4(
    seed: int = 0, n_way: int = 5, hidden: int = 8, image_size: int = 16, dtype: str = "float32"
) -> Conv4:
    """A small :class:`~metalib.nets.Conv4` whose weights depend only on ``seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = Conv4(n_classes=n_way, hidden=hidden, image_size=image_size)
    return net.to(getattr(torch, dtype))


def tiny_support(
    n_way: int = 5, k_shot: int = 2, seed: int = 0, image_size: int = 16, dtype: str = "float32"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random images ``(N*K, 1, S, S)`` and shuffled labels ``(N*K,)`` (each of 0..N-1 K times)."""
    g = generator(seed)
    x = torch.rand(n_way * k_shot, 1, image_size, image_size, generator=g)
    y = torch.arange(n_way).repeat_interleave(k_shot)
    y = y[torch.randperm(n_way * k_shot, generator=g)]
    return x.to(getattr(torch, dtype)), y


def features(shape: tuple[int, ...], seed: int, dtype: str = "float64") -> torch.Tensor:
    """Seeded features of ``shape`` (..., D), each row scaled by a factor in [0.5, 3)."""
    g = generator(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    scale = 0.5 + 2.5 * torch.rand((*shape[:-1], 1), generator=g, dtype=torch.float64)
    return (x * scale).to(getattr(torch, dtype))


def shuffled_labels(tasks: int, counts: list[int], seed: int) -> torch.Tensor:
    """``(tasks, sum(counts))`` long labels: class ``n`` ``counts[n]`` times, shuffled per task."""
    g = generator(seed)
    y = torch.arange(len(counts)).repeat_interleave(torch.tensor(counts))
    return torch.stack([y[torch.randperm(len(y), generator=g)] for _ in range(tasks)])


def support(
    tasks: int, counts: list[int], dim: int, seed: int, dtype: str = "float64"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Support features ``(T, M, D)`` and labels ``(T, M)``, ``M = sum(counts)``."""
    y = shuffled_labels(tasks, counts, seed)
    return features((tasks, y.shape[1], dim), seed + 1, dtype), y


def directions(tensors: Tensors, seed: int) -> Tensors:
    """A seeded random tensor per name, drawn in sorted name order (whatever order a dict lists
    its names in): the vector of a vector-Jacobian product."""
    g = generator(seed)
    return {
        k: torch.randn(tensors[k].shape, generator=g, dtype=torch.float64).to(tensors[k].dtype)
        for k in sorted(tensors)
    }


def vjp(out: Any, wrt: Tensors, seed: int = 0) -> Tensors | None:
    """``∂ Σ <out, v> / ∂ wrt[name]`` for seeded ``v`` (see :func:`directions`): how the output
    depends on each input, as plain tensors; zeros for an input it does not depend on, ``None``
    when the output carries no graph at all (a tensor, or a dict of them)."""
    outs = out if isinstance(out, dict) else {"out": out}
    live = {
        k: t
        for k, t in outs.items()
        if isinstance(t, torch.Tensor) and t.requires_grad and t.is_floating_point()
    }
    if not live:
        return None
    v = directions({k: t.detach() for k, t in live.items()}, seed)
    total = sum((t * v[k]).sum() for k, t in live.items())
    grads = torch.autograd.grad(total, list(wrt.values()), allow_unused=True)
    return {
        k: torch.zeros_like(p) if g is None else g.detach()
        for (k, p), g in zip(wrt.items(), grads, strict=True)
    }


def numbers(fn: Callable[..., Any], args: Mapping[str, Any], spec: Mapping[str, Any]) -> Any:
    """An experiment's ``observe``: ``fn`` on the arguments in order, its result as plain data
    with every tensor a (nested) list of Python numbers, tuples lists and keys strings, so that
    an answer is compared number by number whatever containers it uses."""

    def walk(v: Any) -> Any:
        if isinstance(v, torch.Tensor):
            return v.tolist()
        if isinstance(v, dict):
            return {k: walk(u) for k, u in v.items()}
        return [walk(u) for u in v] if isinstance(v, (list, tuple)) else v

    return walk(plain(fn(*args.values())))


def relative_vjp(out: Any, params: Tensors) -> dict[str, Any]:
    """The gradient of ``out`` along seeded directions (:func:`vjp`) with respect to ``params``:
    its scale (its largest entry in absolute value), and every entry divided by it (``None``
    both when ``out`` carries no graph).

    Relative, because float32 rounding is about 1e-6 of the largest entry (the gradient of a
    bias before a batch norm, zero up to rounding, among others), which the absolute tolerance
    (1e-5) cannot absorb when that entry is about 10; the rounding differs between the sandbox
    and the judge's process.
    """
    grad = vjp(out, params)
    if grad is None:
        return {"gradient scale": None, "gradient / scale": None}
    top = torch.stack([g.abs().max() for g in grad.values()]).max()
    relative = {k: g / top.clamp_min(1e-30) for k, g in grad.items()}
    return {"gradient scale": top, "gradient / scale": relative}


def spec_of(build: Callable[..., Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
    """The spec of a case whose arguments are ``build``'s, defaults included."""
    bound = inspect.signature(build).bind(*args, **kwargs)
    bound.apply_defaults()
    return dict(bound.arguments)
