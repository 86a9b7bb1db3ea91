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
import torch.nn.functional as F
from torch import nn

from metalib.blackbox import SequenceLearner, label_sequence, query_tokens
from metalib.data.base import ImageClasses
from metalib.data.sinusoid import SinusoidFamily
from metalib.nets import MLP, Conv4
from metalib.tasks import Episode


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


def _changed(before: dict[str, torch.Tensor], net: nn.Module) -> bool:
    """Whether a parameter of ``net`` differs from its copy in ``before`` (see :func:`_state`)."""
    return any(not torch.equal(before[k], p) for k, p in _state(net).items())


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


# ---------------------------------------------------------------------------------------------
# 02_maml: the inner loop, second- and first-order meta-gradients, Reptile's update.
#
# A case names a network and a task as plain specs: ``{"kind": "conv4", ...}`` (5-way images,
# cross-entropy), ``{"kind": "mlp", ...}`` (sinusoid regression, mean squared error) or
# ``{"kind": "linear", "w": .., "b": ..}`` (y = w x + b in float64, for hand-derived values).


def tiny_mlp(seed: int = 0, hidden: tuple[int, ...] = (8, 8), dtype: str = "float32") -> MLP:
    """A small regression :class:`~metalib.nets.MLP` (1 input, 1 output) fixed by ``seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = MLP(in_features=1, out_features=1, hidden=tuple(hidden))
    return net.to(getattr(torch, dtype))


def maml_model(kind: str, **spec: Any) -> nn.Module:
    """The network of a 02_maml case: ``conv4`` (:func:`tiny_conv4`), ``mlp`` (:func:`tiny_mlp`)
    or ``linear`` (y = w x + b, float64)."""
    if kind == "conv4":
        return tiny_conv4(**spec)
    if kind == "mlp":
        return tiny_mlp(**spec)
    if kind == "linear":
        net = MLP(in_features=1, out_features=1, hidden=()).double()
        with torch.no_grad():
            net.head.weight.fill_(spec["w"])
            net.head.bias.fill_(spec["b"])
        return net
    raise ValueError(f"unknown model kind {kind!r}; use conv4, mlp or linear")


def maml_loss(model: dict[str, Any]) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Cross-entropy for the image classifier, mean squared error for the regressors."""
    return F.cross_entropy if model["kind"] == "conv4" else F.mse_loss


def maml_task(model: dict[str, Any], data: dict[str, Any]) -> tuple[torch.Tensor, ...]:
    """One task's ``(support_x, support_y, query_x, query_y)`` for a case's network.

    ``data`` holds the four tensors themselves, or ``{"k_shot", "q_queries", "seed"}`` (plus
    ``"n_way"`` for Conv4): images and shuffled labels from :func:`tiny_support`, or one
    sinusoid task of :class:`~metalib.data.sinusoid.SinusoidFamily`, in the network's dtype.
    """
    if "support_x" in data:
        return data["support_x"], data["support_y"], data["query_x"], data["query_y"]
    dtype = model.get("dtype", "float32")
    if model["kind"] == "conv4":
        n_way, size = data["n_way"], model.get("image_size", 16)
        sx, sy = tiny_support(n_way, data["k_shot"], data["seed"], size, dtype)
        qx, qy = tiny_support(n_way, data["q_queries"], data["seed"] + 1, size, dtype)
        return sx, sy, qx, qy
    task = SinusoidFamily().sample(
        1, data["k_shot"], data["q_queries"], data["seed"], getattr(torch, dtype)
    )
    return tuple(task[k][0] for k in ("support_x", "support_y", "query_x", "query_y"))


def maml_params(net: nn.Module, subset: str = "all") -> dict[str, torch.Tensor]:
    """Fresh leaf copies of the network's weights that require gradients: all of them, or only
    the head's (``subset="head"``)."""
    return {
        name: p.detach().clone().requires_grad_()
        for name, p in net.named_parameters()
        if subset == "all" or name.startswith(f"{subset}.")
    }


def maml_directions(params: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """A seeded random tensor per parameter: the vector of a vector-Jacobian product."""
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(p.shape, generator=g, dtype=p.dtype) for k, p in params.items()}


def _tensor_dict(out: Any, what: str) -> str | None:
    """A message when ``out`` is not a dict of tensors (what the 02_maml questions return)."""
    if not isinstance(out, dict):
        return f"{what} should be a dict of tensors by parameter name, got a {type(out).__name__}"
    for name, value in out.items():
        if not isinstance(value, torch.Tensor):
            return (
                f"{what} should be a dict of tensors by parameter name, but its {name!r} is a "
                f"{type(value).__name__}"
            )
    return None


def inner_loop(
    fn: Callable[..., Any],
    model: dict[str, Any],
    data: dict[str, Any],
    lr: float,
    steps: int,
    subset: str = "all",
    seed: int = 0,
) -> dict[str, Any]:
    """``fn(net, params, support_x, support_y, loss_fn, lr, steps)``: the adapted weights, and
    the gradient of ``sum_k <adapted[k], v[k]>`` with respect to ``params`` (random ``v``), which
    tells whether the adapted weights carry the graph of the inner loop back to ``params``."""
    net = maml_model(**model)
    before = _state(net)
    sx, sy, _, _ = maml_task(model, data)
    params = maml_params(net, subset)
    with torch.random.fork_rng(devices=[]):
        out = fn(net, params, sx, sy, maml_loss(model), lr, steps)
    result: dict[str, Any] = {"model_changed": _changed(before, net)}
    problem = _tensor_dict(out, "the adapted weights")
    if problem:
        return {**result, "problem": problem}
    result["adapted"] = plain(out)
    v = maml_directions(params, seed)
    terms = [
        (out[k] * v[k]).sum()
        for k in params
        if k in out and out[k].shape == v[k].shape and out[k].requires_grad
    ]
    if not terms:
        return {**result, "vjp": None}
    grads = torch.autograd.grad(sum(terms), list(params.values()), allow_unused=True)
    result["vjp"] = {
        k: torch.zeros_like(p) if g is None else g.detach()
        for (k, p), g in zip(params.items(), grads, strict=True)
    }
    return result


def meta_gradient(
    fn: Callable[..., Any],
    model: dict[str, Any],
    data: dict[str, Any],
    lr: float,
    steps: int,
    subset: str = "all",
) -> dict[str, Any]:
    """``fn(net, params, support_x, support_y, query_x, query_y, loss_fn, lr, steps)``: the
    gradients it returns, and whether the network's own weights changed."""
    net = maml_model(**model)
    before = _state(net)
    sx, sy, qx, qy = maml_task(model, data)
    params = maml_params(net, subset)
    with torch.random.fork_rng(devices=[]):
        out = fn(net, params, sx, sy, qx, qy, maml_loss(model), lr, steps)
    result: dict[str, Any] = {"model_changed": _changed(before, net)}
    problem = _tensor_dict(out, "the meta-gradient")
    return {**result, "problem": problem} if problem else {**result, "grads": plain(out)}


def reptile_inputs(
    model: dict[str, Any], n_tasks: int, seed: int
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """θ (a network's weights) and ``n_tasks`` adapted copies, stacked ``(n_tasks, ...)`` per
    name, each θ plus seeded noise of scale 0.1."""
    theta = {k: p.detach().clone() for k, p in maml_model(**model).named_parameters()}
    g = torch.Generator().manual_seed(seed)
    adapted = {
        k: t + 0.1 * torch.randn((n_tasks, *t.shape), generator=g, dtype=t.dtype)
        for k, t in theta.items()
    }
    return theta, adapted


def reptile_update(
    fn: Callable[..., Any], model: dict[str, Any], n_tasks: int, beta: float, seed: int
) -> dict[str, Any]:
    """``fn(params, adapted, beta)`` on :func:`reptile_inputs`; also reports whether the inputs
    were changed in place."""
    theta, adapted = reptile_inputs(model, n_tasks, seed)
    keep = (plain(theta), plain(adapted))
    with torch.random.fork_rng(devices=[]):
        out = fn(theta, adapted, beta)
    changed = [
        k
        for k in theta
        if not (torch.equal(theta[k], keep[0][k]) and torch.equal(adapted[k], keep[1][k]))
    ]
    problem = _tensor_dict(out, "the new θ")
    result: dict[str, Any] = {"inputs_changed": changed}
    return {**result, "problem": problem} if problem else {**result, "new": plain(out)}


# ---------------------------------------------------------------------------------------------
# 04_protonet: prototypes, squared distances, the episode loss, cosine logits.
#
# Features are seeded ``randn`` tensors whose rows have different norms (so that a missing
# normalisation shows); support labels are each task's own shuffle of ``counts[n]`` copies of
# each class ``n`` (so that a reshape assuming a class-sorted support shows).


def proto_features(shape: tuple[int, ...], seed: int, dtype: str = "float64") -> torch.Tensor:
    """Seeded features of ``shape`` (..., D), each row scaled by a factor in [0.5, 3)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    scale = 0.5 + 2.5 * torch.rand((*shape[:-1], 1), generator=g, dtype=torch.float64)
    return (x * scale).to(getattr(torch, dtype))


def proto_labels(tasks: int, counts: list[int], seed: int) -> torch.Tensor:
    """``(tasks, sum(counts))`` long labels: class ``n`` ``counts[n]`` times, shuffled per task."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(len(counts)).repeat_interleave(torch.tensor(counts))
    return torch.stack([y[torch.randperm(len(y), generator=g)] for _ in range(tasks)])


def proto_support(
    tasks: int, counts: list[int], dim: int, seed: int, dtype: str = "float64"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Support features ``(T, M, D)`` and labels ``(T, M)``, ``M = sum(counts)``."""
    y = proto_labels(tasks, counts, seed)
    return proto_features((tasks, y.shape[1], dim), seed + 1, dtype), y


def protonet_prototypes(
    fn: Callable[..., Any],
    tasks: int,
    counts: list[int],
    dim: int,
    seed: int,
    dtype: str = "float64",
    n_way: int | None = None,
) -> dict[str, Any]:
    """``fn(support_features, support_y, n_way)`` on :func:`proto_support`; also reports
    whether the inputs changed (``n_way`` defaults to ``len(counts)``)."""
    f, y = proto_support(tasks, counts, dim, seed, dtype)
    keep = (f.clone(), y.clone())
    with torch.random.fork_rng(devices=[]):
        out = fn(f, y, len(counts) if n_way is None else n_way)
    changed = not (torch.equal(f, keep[0]) and torch.equal(y, keep[1]))
    return {"protos": plain(out), "inputs_changed": changed}


def protonet_distances(
    fn: Callable[..., Any],
    tasks: int,
    queries: int,
    n_way: int,
    dim: int,
    seed: int,
    dtype: str = "float64",
) -> Any:
    """``fn(query_features, protos)`` on seeded ``(T, P, D)`` and ``(T, N, D)`` features."""
    q = proto_features((tasks, queries, dim), seed, dtype)
    c = proto_features((tasks, n_way, dim), seed + 1, dtype)
    with torch.random.fork_rng(devices=[]):
        return plain(fn(q, c))


def protonet_cosine(
    fn: Callable[..., Any],
    tasks: int,
    queries: int,
    n_way: int,
    dim: int,
    seed: int,
    temperature: float,
    dtype: str = "float64",
    learnable: bool = False,
) -> dict[str, Any]:
    """``fn(query_features, protos, temperature)``; with ``learnable`` the temperature is a
    0-d tensor that requires gradients, and the gradient of ``sum(logits * v)`` (seeded ``v``)
    with respect to it is returned too (``None`` when the logits do not depend on it)."""
    q = proto_features((tasks, queries, dim), seed, dtype)
    c = proto_features((tasks, n_way, dim), seed + 1, dtype)
    t: Any = temperature
    if learnable:
        t = torch.tensor(temperature, dtype=getattr(torch, dtype), requires_grad=True)
    with torch.random.fork_rng(devices=[]):
        out = fn(q, c, t)
    result: dict[str, Any] = {"logits": plain(out), "temperature_grad": None}
    if learnable and isinstance(out, torch.Tensor) and out.requires_grad:
        v = proto_features(tuple(out.shape), seed + 2, dtype) if out.dim() else torch.ones(())
        (grad,) = torch.autograd.grad((out * v.to(out.dtype)).sum(), [t], allow_unused=True)
        result["temperature_grad"] = None if grad is None else grad.detach()
    return result


def protonet_encoder(
    kind: str, seed: int, hidden: int = 8, image_size: int = 16, dtype: str = "float64"
) -> nn.Module:
    """``(B, 1, S, S) -> (B, D)``: a tiny Conv4 body (batch-statistics norm, so batching
    matters) or a two-layer perceptron on the pixels (each image on its own)."""
    if kind == "conv4":
        return tiny_conv4(seed, 1, hidden, image_size, dtype).body
    if kind != "mlp":
        raise ValueError(f"unknown encoder kind {kind!r}; use conv4 or mlp")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(image_size * image_size, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
        )
    return net.to(getattr(torch, dtype))


def protonet_episode(
    tasks: int,
    n_way: int,
    k_shot: int,
    q_queries: int,
    seed: int,
    image_size: int = 16,
    dtype: str = "float64",
) -> Episode:
    """A seeded batch of image tasks: each class a random template plus noise, labels shuffled."""
    g = torch.Generator().manual_seed(seed)
    size = (1, image_size, image_size)
    templates = torch.rand((tasks, n_way, *size), generator=g, dtype=torch.float64)
    parts = []
    for per in (k_shot, q_queries):
        y = proto_labels(tasks, [per] * n_way, seed + len(parts) + 1)
        x = templates[torch.arange(tasks)[:, None], y]  # (T, N*per, 1, S, S)
        x = x + 0.3 * torch.randn(x.shape, generator=g, dtype=torch.float64)
        parts += [x.to(getattr(torch, dtype)), y]
    classes = torch.stack([torch.randperm(50, generator=g)[:n_way] for _ in range(tasks)])
    return Episode(*parts, classes=classes)


def protonet_loss(
    fn: Callable[..., Any], encoder: dict[str, Any], episode: dict[str, Any]
) -> dict[str, Any]:
    """``fn(encoder, episode) -> (loss, acc)``; with the gradient of the loss with respect to
    the encoder's parameters (``None`` when the loss carries no graph), and whether the encoder
    changed."""
    net, ep = protonet_encoder(**encoder), protonet_episode(**episode)
    before = _state(net)
    with torch.random.fork_rng(devices=[]):
        out = fn(net, ep)
    result: dict[str, Any] = {"model_changed": _changed(before, net)}
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        what = f"a {type(out).__name__}" + (
            f" of length {len(out)}" if isinstance(out, (tuple, list)) else ""
        )
        return {**result, "problem": f"it returned {what}; return a pair (loss, acc)"}
    loss, acc = out
    if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
        got = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
        return {**result, "problem": f"the loss should be a scalar tensor (0-d), got {got}"}
    result.update(loss=plain(loss), acc=plain(acc), grads=None)
    if loss.requires_grad:
        named = dict(net.named_parameters())
        grads = torch.autograd.grad(loss, list(named.values()), allow_unused=True)
        result["grads"] = {
            k: torch.zeros_like(p) if g is None else g.detach()
            for (k, p), g in zip(named.items(), grads, strict=True)
        }
    return result


# ---------------------------------------------------------------------------------------------
# 03_blackbox: label-conditioned tokens, the LSTM learner's forward pass, the attention mask,
# classifier weights predicted from activations. Features as in 04_protonet (proto_features).


def blackbox_features(
    tasks: int, n_way: int, k_shot: int, queries: int, dim: int, seed: int, dtype: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Support features ``(T, N*K, D)``, shuffled labels ``(T, N*K)``, query features
    ``(T, P, D)``."""
    sf, sy = proto_support(tasks, [k_shot] * n_way, dim, seed, dtype)
    return sf, sy, proto_features((tasks, queries, dim), seed + 2, dtype)


def blackbox_tokens(
    fn: Callable[..., Any],
    tasks: int,
    n_way: int,
    k_shot: int,
    queries: int,
    dim: int,
    n_slots: int,
    seed: int,
    dtype: str = "float64",
) -> dict[str, Any]:
    """``fn(support_features, support_y, query_features, n_slots)``; also reports whether the
    inputs changed."""
    inputs = blackbox_features(tasks, n_way, k_shot, queries, dim, seed, dtype)
    keep = [t.clone() for t in inputs]
    with torch.random.fork_rng(devices=[]):
        out = fn(*inputs, n_slots)
    changed = not all(torch.equal(a, b) for a, b in zip(inputs, keep, strict=True))
    return {"out": plain(out), "inputs_changed": changed}


def output_grads(out: Any, net: nn.Module, seed: int) -> dict[str, torch.Tensor] | None:
    """The gradient of ``sum(out * v)`` (``v`` seeded, like :func:`proto_features`) with respect
    to each parameter of ``net``, zeros where unused; ``None`` when ``out`` carries no graph."""
    if not isinstance(out, torch.Tensor) or not out.requires_grad or not out.is_floating_point():
        return None
    dtype = str(out.dtype).removeprefix("torch.")
    v = proto_features(tuple(out.shape), seed, dtype) if out.dim() else torch.ones_like(out)
    named = dict(net.named_parameters())
    grads = torch.autograd.grad((out * v).sum(), list(named.values()), allow_unused=True)
    return {
        k: torch.zeros_like(p) if g is None else g.detach()
        for (k, p), g in zip(named.items(), grads, strict=True)
    }


def blackbox_learner(
    kind: str, dim: int, n_slots: int, hidden: int, layers: int, seed: int, dtype: str
) -> nn.Module:
    """A :class:`~metalib.blackbox.SequenceLearner` whose weights depend only on ``seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = SequenceLearner(dim, n_slots, kind, hidden=hidden, layers=layers, heads=2)
    return net.to(getattr(torch, dtype))


def blackbox_lstm(
    fn: Callable[..., Any],
    tasks: int,
    n_way: int,
    k_shot: int,
    queries: int,
    dim: int,
    n_slots: int,
    hidden: int,
    layers: int,
    seed: int,
    dtype: str = "float64",
) -> dict[str, Any]:
    """``fn(lstm, head, support_tokens, query_tokens)`` with the LSTM learner of
    :func:`blackbox_learner`; returns the logits, the gradient of ``sum(logits * v)`` (seeded
    ``v``) with respect to the learner's weights (``None`` without a graph), and whether the
    weights changed."""
    net = blackbox_learner("lstm", dim, n_slots, hidden, layers, seed, dtype)
    sf, sy, qf = blackbox_features(tasks, n_way, k_shot, queries, dim, seed + 10, dtype)
    support, query = label_sequence(sf, sy, n_slots), query_tokens(qf, n_slots)
    before = _state(net)
    with torch.random.fork_rng(devices=[]):
        out = fn(net.lstm, net.head, support, query)
    result: dict[str, Any] = {
        "model_changed": _changed(before, net),
        "logits": plain(out),
        "grads": output_grads(out, net, seed + 20),
    }
    return result


def blackbox_phi(kind: str, dim: int, seed: int, dtype: str) -> nn.Module:
    """φ of the weight predictor: ``nn.Linear(D, D)`` near the identity, or a small ReLU MLP."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if kind == "linear":
            phi: nn.Module = nn.Linear(dim, dim)
            with torch.no_grad():
                phi.weight.add_(torch.eye(dim))
        elif kind == "mlp":
            phi = nn.Sequential(nn.Linear(dim, 2 * dim), nn.ReLU(), nn.Linear(2 * dim, dim))
        else:
            raise ValueError(f"unknown phi kind {kind!r}; use linear or mlp")
    return phi.to(getattr(torch, dtype))


def blackbox_weights(
    fn: Callable[..., Any],
    tasks: int,
    n_way: int,
    k_shot: int,
    queries: int,
    dim: int,
    phi: str,
    scale: float,
    seed: int,
    dtype: str = "float64",
) -> dict[str, Any]:
    """``fn(phi, support_features, support_y, query_features, n_way, scale)``; returns the
    logits, the gradient of ``sum(logits * v)`` (seeded ``v``) with respect to φ's weights
    (``None`` without a graph), and whether φ changed."""
    net = blackbox_phi(phi, dim, seed, dtype)
    sf, sy, qf = blackbox_features(tasks, n_way, k_shot, queries, dim, seed + 10, dtype)
    before = _state(net)
    with torch.random.fork_rng(devices=[]):
        out = fn(net, sf, sy, qf, n_way, scale)
    result: dict[str, Any] = {
        "model_changed": _changed(before, net),
        "logits": plain(out),
        "grads": output_grads(out, net, seed + 20),
    }
    return result


# ---------------------------------------------------------------------------------------------
# 05_learned_optimizers and 06_test_time_adaptation: their probes live in probes_0506 (this file
# is long enough) and are re-exported here, where the sandbox and check() look probes up.

from metalib.grading.probes_0506 import (  # noqa: E402, F401
    lopt_meta_loss,
    lopt_preprocess,
    lopt_step,
    tta_collect,
    tta_entropy,
    tta_rotation,
    tta_tent,
)

# 08_meta_knowledge: its probes live in probes_08 (re-exported here like those of 05 and 06).
from metalib.grading.probes_08 import (  # noqa: E402, F401
    msgd_update,
    rw_example_weights,
    rw_step,
)
