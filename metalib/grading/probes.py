"""Probes: trusted code that calls a student's function on a case's inputs.

A probe takes the student's function and a case's keyword arguments (plain data) and returns
plain data (tensors, numbers, strings, lists, tuples, dicts) for the question's judge. It may
build richer inputs first (an ``ImageClasses`` from tensors, a network from a state dict) and
reduce richer outputs after (a fine-tuned network to its parameters' ``requires_grad`` flags).
In the grader, probes run inside the sandbox next to the submission; judges never do.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from metalib.data.base import ImageClasses
from metalib.nets import Conv4


def plain(value: Any) -> Any:
    """``value`` reduced to plain data: tensors detached and moved to the CPU, containers walked.

    Raises:
        TypeError: for anything else (a module, a generator, an open file...), naming its type.
    """
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return type(value)(plain(v) for v in value)
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    raise TypeError(
        f"the function returned a {type(value).__name__}; the question expects tensors, numbers "
        "or lists and dicts of them"
    )


def call(fn: Callable[..., Any], **kwargs: Any) -> Any:
    """Call ``fn(**kwargs)`` and return its result as plain data."""
    return plain(fn(**kwargs))


# ---------------------------------------------------------------------------------------------
# Shared builders. Cases stay plain data; these turn a spec into a rich input, the same way in
# the sandbox (for the student's function) and in the grader (for the judge's reference).


def tiny_image_classes(
    n_classes: int = 8, per_class: int = 6, size: int = 8, seed: int = 0
) -> ImageClasses:
    """A synthetic split whose images tell which class and which image they are.

    Pixel ``(0, 0)`` of image ``m`` of class ``c`` holds ``c`` and pixel ``(0, 1)`` holds ``m``
    (as uint8, so ``c / 255`` and ``m / 255`` after :meth:`ImageClasses.get`); the other pixels
    are seeded noise, so that a judge can tell the images apart and check them exactly.
    """
    g = torch.Generator().manual_seed(seed)
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


def tiny_conv4(
    seed: int = 0,
    n_way: int = 5,
    hidden: int = 8,
    image_size: int = 16,
    dtype: str = "float32",
) -> Conv4:
    """A small :class:`~metalib.nets.Conv4` whose weights depend only on ``seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = Conv4(n_classes=n_way, hidden=hidden, image_size=image_size)
    return net.to(getattr(torch, dtype))


def tiny_support(
    n_way: int = 5,
    k_shot: int = 2,
    seed: int = 0,
    image_size: int = 16,
    dtype: str = "float32",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random images ``(N*K, 1, S, S)`` and shuffled labels ``(N*K,)`` (each of 0..N-1 K times)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n_way * k_shot, 1, image_size, image_size, generator=g)
    y = torch.arange(n_way).repeat_interleave(k_shot)
    y = y[torch.randperm(n_way * k_shot, generator=g)]
    return x.to(getattr(torch, dtype)), y


def build(value: Any) -> Any:
    """A rich input from its plain spec: ``{"generator": seed}``, ``{"image_classes": {...}}``,
    ``{"conv4": {...}}``; anything else is returned as it is."""
    if isinstance(value, dict) and len(value) == 1:
        ((kind, spec),) = value.items()
        if kind == "generator":
            return torch.Generator().manual_seed(int(spec))
        if kind == "image_classes":
            return tiny_image_classes(**spec)
        if kind == "conv4":
            return tiny_conv4(**spec)
    return value


def raises(fn: Callable[..., Any], args: list[Any], valid: list[Any]) -> dict[str, Any]:
    """Call ``fn(*valid)``, which must work, then ``fn(*args)``, which it should refuse.

    Each argument is built by :func:`build`. The valid call comes first so that a function that
    refuses everything does not pass.

    Returns:
        ``{"valid_error": <type>: <text>}`` when the valid call raised; else ``{"error": None}``
        when the second call returned, or ``{"error": <exception type name>, "message": <text>}``.
        ``NotImplementedError`` propagates (the stub of an exercise).
    """
    with torch.random.fork_rng(devices=[]):
        try:
            fn(*[build(a) for a in valid])
        except NotImplementedError:
            raise
        except Exception as err:  # the judge reports it
            return {"valid_error": f"{type(err).__name__}: {err}"}
        try:
            fn(*[build(a) for a in args])
        except NotImplementedError:
            raise
        except Exception as err:  # the judge decides whether this is the error asked for
            return {"error": type(err).__name__, "message": str(err)}
    return {"error": None}


def _twice_and_many(
    fn: Callable[..., Any], args: tuple[Any, ...], seed: int, draws: int
) -> dict[str, Any]:
    """Outputs of ``fn(*args, generator)``: twice with one seed, then ``draws`` from one generator.

    The global generator is reseeded differently before the two first calls, so a function that
    draws from it instead of ``generator`` gives two different results; it is restored after,
    so a check in a notebook leaves the student's random state as it was.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(10_000 + seed)
        first = plain(fn(*args, torch.Generator().manual_seed(seed)))
        torch.manual_seed(20_000 + seed)
        again = plain(fn(*args, torch.Generator().manual_seed(seed)))
        g = torch.Generator().manual_seed(seed + 1)
        many = [plain(fn(*args, g)) for _ in range(draws)]
    return {"first": first, "again": again, "many": many}


# ---------------------------------------------------------------------------------------------
# 00_tasks: episode sampling.


def sample_classes(
    fn: Callable[..., Any], n_classes: int, n_way: int, seed: int, draws: int
) -> dict[str, Any]:
    """``fn(n_classes, n_way, generator)`` twice with ``seed``, then ``draws`` times in a row."""
    return _twice_and_many(fn, (n_classes, n_way), seed, draws)


def sample_support_query(
    fn: Callable[..., Any], per_class: int, k_shot: int, q_queries: int, seed: int, draws: int
) -> dict[str, Any]:
    """``fn(per_class, k_shot, q_queries, generator)`` twice with ``seed``, then ``draws`` times."""
    return _twice_and_many(fn, (per_class, k_shot, q_queries), seed, draws)


def make_episode(
    fn: Callable[..., Any],
    data: dict[str, int],
    n_way: int,
    k_shot: int,
    q_queries: int,
    seed: int,
    draws: int,
) -> dict[str, Any]:
    """``fn(split, n_way, k_shot, q_queries, generator)`` on ``tiny_image_classes(**data)``."""
    return _twice_and_many(fn, (tiny_image_classes(**data), n_way, k_shot, q_queries), seed, draws)


# ---------------------------------------------------------------------------------------------
# 01_finetuning: freezing, a new head, gradient steps on a support set.


def _state(net: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in net.named_parameters()}


def _flags(net: nn.Module) -> dict[str, bool]:
    return {name: p.requires_grad for name, p in net.named_parameters()}


def freeze_blocks(
    fn: Callable[..., Any], model: dict[str, Any], k: int, start_frozen: bool = False
) -> dict[str, Any]:
    """``fn(net, k)`` on ``tiny_conv4(**model)`` (all of it frozen first if ``start_frozen``)."""
    net = tiny_conv4(**model)
    if start_frozen:
        net.requires_grad_(False)
    with torch.random.fork_rng(devices=[]):
        out = fn(net, k)
    return {"returned_model": out is net, "requires_grad": _flags(net), "params": _state(net)}


def new_head(
    fn: Callable[..., Any], model: dict[str, Any], n_way: int, seed: int
) -> dict[str, Any]:
    """``fn(net, n_way, generator)`` three times (seed, seed again, seed + 1), then edits the
    first copy to see whether the original moves with it."""
    net = tiny_conv4(**model)
    before = _state(net)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(10_000 + seed)
        new = fn(net, n_way, torch.Generator().manual_seed(seed))
        after = _state(net)
        if not isinstance(new, nn.Module):
            return {"problem": f"it returned a {type(new).__name__}, not a network (nn.Module)"}
        if new is net:
            return {"problem": "it returned the original network itself, not a copy"}
        copy_state = _state(new)
        torch.manual_seed(20_000 + seed)
        again = _state(fn(net, n_way, torch.Generator().manual_seed(seed)))
        other = _state(fn(net, n_way, torch.Generator().manual_seed(seed + 1)))
    with torch.no_grad():
        for p in new.parameters():
            p.add_(1.0)
    return {
        "before": before,
        "after": after,
        "new": copy_state,
        "again": again,
        "other": other,
        "after_editing_copy": _state(net),
    }


def sgd_step(
    fn: Callable[..., Any],
    model: dict[str, Any],
    support: dict[str, Any],
    lr: float,
    frozen: int,
    calls: int,
) -> dict[str, Any]:
    """``fn(net, x, y, lr)`` ``calls`` times on ``tiny_conv4(**model)`` and
    ``tiny_support(**support)``, with the first ``frozen`` body blocks set not to learn."""
    net = tiny_conv4(**model)
    for block in list(net.body)[:frozen]:
        block.requires_grad_(False)
    x, y = tiny_support(**support)
    with torch.random.fork_rng(devices=[]):
        losses = [plain(fn(net, x, y, lr)) for _ in range(calls)]
    return {"losses": losses, "params": _state(net)}


def finetune(
    fn: Callable[..., Any],
    model: dict[str, Any],
    support: dict[str, Any],
    steps: int,
    lr: float,
    frozen: int,
) -> dict[str, Any]:
    """``fn(net, x, y, steps, lr, frozen)`` on ``tiny_conv4(**model)``, ``tiny_support(**support)``;
    returns what came back and the original network after the call."""
    net = tiny_conv4(**model)
    x, y = tiny_support(**support)
    with torch.random.fork_rng(devices=[]):
        out = fn(net, x, y, steps, lr, frozen)
    result: dict[str, Any] = {"original_after": _state(net), "original_flags": _flags(net)}
    if not isinstance(out, nn.Module):
        result["problem"] = f"it returned a {type(out).__name__}, not a network (nn.Module)"
    elif out is net:
        result["problem"] = "it returned the original network itself, not a fine-tuned copy"
    else:
        result["result"] = _state(out)
    return result


def query_accuracy(
    fn: Callable[..., Any], model: dict[str, Any], n_way: int, n: int, n_right: int, seed: int
) -> Any:
    """``fn(net, x, y)`` where exactly ``n_right`` of the ``n`` labels ``y`` are the network's
    predictions (the whole batch at once) and the others are not."""
    net = tiny_conv4(**model)
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, net.image_size, net.image_size, generator=g)
    with torch.no_grad():
        predicted = net(x).argmax(dim=-1)
    y = (predicted + 1) % n_way
    right = torch.randperm(n, generator=g)[:n_right]
    y[right] = predicted[right]
    with torch.random.fork_rng(devices=[]):
        return plain(fn(net, x, y))
