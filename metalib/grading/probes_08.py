"""Probes of exercise 08_meta_knowledge: the weighted step, the example weights, Meta-SGD.

They follow :mod:`metalib.grading.probes` (which re-exports them, so that a case names them as
it names any probe): trusted code that builds a case's inputs from plain specs, calls the
student's function and reduces what comes back to plain data. The builders are shared with the
judges, which rebuild the same inputs to compute the reference answers.

Differentiability is judged through vector-Jacobian products: the probe differentiates
``Σ_k <new[k], v[k]>`` (seeded random ``v``) with respect to the inputs that must carry a graph
(the example weights and θ in the weighted step; the step sizes, θ and the gradients in
Meta-SGD's update), so a detached input shows as a missing gradient and a first-order step as
a product equal to ``v`` itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from metalib.grading.probes_0506 import _changed, _plain, _state
from metalib.nets import MLP, Conv4

Params = dict[str, torch.Tensor]


def rw_model(
    kind: str,
    seed: int,
    n_classes: int = 3,
    features: int = 6,
    hidden: tuple[int, ...] = (8,),
    image_size: int = 16,
    dtype: str = "float64",
) -> nn.Module:
    """A seeded classifier: ``"linear"`` (softmax regression on ``features`` inputs), ``"mlp"``
    (ReLU layers of widths ``hidden``) or ``"conv4"`` (a :class:`~metalib.nets.Conv4` of
    ``hidden[0]`` channels with batch-statistics norm, on ``(1, S, S)`` images)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if kind == "linear":
            net: nn.Module = MLP(features, n_classes, hidden=())
        elif kind == "mlp":
            net = MLP(features, n_classes, hidden=tuple(hidden))
        elif kind == "conv4":
            net = Conv4(n_classes, 1, hidden[0], image_size)
        else:
            raise ValueError(f"unknown model kind {kind!r}; use linear, mlp or conv4")
    return net.to(getattr(torch, dtype))


def rw_batch(model: dict[str, Any], n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded inputs ``(n, features)`` (or ``(n, 1, S, S)`` images for Conv4), of scale 1, and
    labels ``(n,)`` uniform over the classes."""
    g = torch.Generator().manual_seed(seed)
    if model["kind"] == "conv4":
        size = model.get("image_size", 16)
        x = torch.rand(n, 1, size, size, generator=g, dtype=torch.float64)
    else:
        x = torch.randn(n, model.get("features", 6), generator=g, dtype=torch.float64)
    y = torch.randint(0, model.get("n_classes", 3), (n,), generator=g)
    return x.to(getattr(torch, model.get("dtype", "float64"))), y


def rw_data(
    model: dict[str, Any], data: dict[str, Any]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A training batch and a validation batch ``(x, y, val_x, val_y)`` from ``data``:
    ``{"n", "m", "seed"}``, plus ``"val": "conflict"`` for a validation set of the training
    inputs whose labels all differ from the training labels (then no training example agrees
    with the validation gradient: every weight is 0)."""
    x, y = rw_batch(model, data["n"], data["seed"])
    if data.get("val") == "conflict":
        return x, y, x.clone(), (y + 1) % model.get("n_classes", 3)
    val_x, val_y = rw_batch(model, data["m"], data["seed"] + 1)
    return x, y, val_x, val_y


def rw_weights(n: int, kind: str, seed: int, dtype: str = "float64") -> torch.Tensor:
    """Example weights ``(n,)``: ``"random"`` (uniform in [0, 1)), ``"sparse"`` (random, about
    half of them 0), ``"uniform"`` (1/n each: the mean loss) or ``"zeros"`` (Ren et al.'s ε = 0)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.rand(n, generator=g, dtype=torch.float64)
    if kind == "sparse":
        w = w * (torch.rand(n, generator=g, dtype=torch.float64) < 0.5)
    elif kind == "uniform":
        w = torch.full((n,), 1.0 / n, dtype=torch.float64)
    elif kind == "zeros":
        w = torch.zeros(n, dtype=torch.float64)
    elif kind != "random":
        raise ValueError(f"unknown weights kind {kind!r}; use random, sparse, uniform or zeros")
    return w.to(getattr(torch, dtype))


def _probes():
    # probes.py imports this module at its end, so its helpers are looked up at call time.
    from metalib.grading import probes

    return probes


def rw_params(net: nn.Module, subset: str = "all") -> Params:
    """Fresh leaf copies of the network's weights that require gradients (all, or the head's)."""
    return _probes().maml_params(net, subset)


def directions(tensors: Params, seed: int) -> Params:
    """A seeded random tensor per name, drawn in sorted name order (so whatever order a dict
    lists its names in): the vector of a vector-Jacobian product."""
    g = torch.Generator().manual_seed(seed)
    return {
        k: torch.randn(tensors[k].shape, generator=g, dtype=torch.float64).to(tensors[k].dtype)
        for k in sorted(tensors)
    }


def vjp(out: Params, wrt: dict[str, Params], seed: int) -> dict[str, Params | None]:
    """``∂ Σ_k <out[k], v[k]> / ∂ wrt[group][name]`` for each group of inputs: ``None`` for a
    group none of whose tensors the output depends on, zeros for a single unused tensor."""
    live = [k for k, t in out.items() if t.requires_grad]  # floating point, with a graph
    v = directions({k: out[k].detach() for k in live}, seed)
    flat = [(group, name, t) for group, ts in wrt.items() for name, t in ts.items()]
    grads: list[torch.Tensor | None] = [None] * len(flat)
    if live:
        total = sum((out[k] * v[k]).sum() for k in live)
        grads = list(torch.autograd.grad(total, [t for _, _, t in flat], allow_unused=True))
    result: dict[str, Params | None] = {}
    for group, ts in wrt.items():
        got = [(name, g) for (grp, name, _), g in zip(flat, grads, strict=True) if grp == group]
        if all(g is None for _, g in got):
            result[group] = None
        else:
            result[group] = {
                name: torch.zeros_like(ts[name]) if g is None else g.detach() for name, g in got
            }
    return result


def _tensor_dict(out: Any, what: str) -> str | None:
    return _probes()._tensor_dict(out, what)


def _same_tensors(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(s.detach(), t) for s, t in zip(a, b, strict=True))


# ---------------------------------------------------------------------------------------------
# q1: the weighted inner step.


def rw_step(
    fn: Callable[..., Any],
    model: dict[str, Any],
    n: int,
    weights: str,
    lr: float,
    seed: int,
    subset: str = "all",
) -> dict[str, Any]:
    """``fn(model, params, x, y, weights, lr)``: the new weights, the gradient of
    ``Σ_k <new[k], v[k]>`` with respect to the example weights and to ``params`` (``None``
    without a graph to them), and whether the network or the inputs changed."""
    net = rw_model(**model)
    params = rw_params(net, subset)
    x, y = rw_batch(model, n, seed)
    w = rw_weights(n, weights, seed + 1, model.get("dtype", "float64")).requires_grad_()
    before, inputs = _state(net), [*params.values(), x, y, w]
    keep = [t.detach().clone() for t in inputs]
    with torch.random.fork_rng(devices=[]):
        out = fn(net, params, x, y, w, lr)
    result: dict[str, Any] = {
        "model_changed": _changed(before, net),
        "inputs_changed": not _same_tensors(inputs, keep),
    }
    problem = _tensor_dict(out, "the new θ")
    if problem:
        return {**result, "problem": problem}
    grads = vjp(out, {"weights": {"w": w}, "params": params}, seed + 2)
    weights_grad = grads["weights"]
    return {
        **result,
        "new": _plain(out),
        "weights_grad": None if weights_grad is None else weights_grad["w"],
        "params_vjp": grads["params"],
    }


# ---------------------------------------------------------------------------------------------
# q2: the example weights from the meta-gradient of the validation loss.


def rw_example_weights(
    fn: Callable[..., Any], model: dict[str, Any], data: dict[str, Any], lr: float
) -> dict[str, Any]:
    """``fn(model, params, x, y, val_x, val_y, lr)``: the weights, whether they still carry a
    graph, and whether the network or the inputs changed."""
    net = rw_model(**model)
    params = rw_params(net)
    batch = rw_data(model, data)
    before, inputs = _state(net), [*params.values(), *batch]
    keep = [t.detach().clone() for t in inputs]
    with torch.random.fork_rng(devices=[]):
        out = fn(net, params, *batch, lr)
    return {
        "model_changed": _changed(before, net),
        "inputs_changed": not _same_tensors(inputs, keep),
        "weights": _plain(out),
        "requires_grad": isinstance(out, torch.Tensor) and out.requires_grad,
    }


# ---------------------------------------------------------------------------------------------
# q3: Meta-SGD's inner update.


def msgd_inputs(
    model: dict[str, Any], lrs: str, seed: int, order: str = "shuffled"
) -> tuple[Params, Params, Params]:
    """θ (a network's weights), gradients and step sizes α, three dicts with the same names.

    ``lrs``: ``"full"`` (one α per entry, uniform in [0.005, 0.1] as Meta-SGD initialises them),
    ``"scalar"`` (one 0-d α per tensor) or ``"mixed"`` (full, 0-d, and one α per output row,
    shape ``(out, 1)``, broadcast along the row). With ``order="shuffled"`` the gradients and
    the step sizes list their names in two other orders than θ (a dict is looked up by name).
    """
    net = rw_model(**model)
    theta = {k: p.detach().clone() for k, p in net.named_parameters()}
    g = torch.Generator().manual_seed(seed)
    dtype = next(iter(theta.values())).dtype

    def uniform(shape: tuple[int, ...]) -> torch.Tensor:
        return (0.005 + 0.095 * torch.rand(shape, generator=g, dtype=torch.float64)).to(dtype)

    grads = {
        k: torch.randn(t.shape, generator=g, dtype=torch.float64).to(dtype)
        for k, t in theta.items()
    }
    alphas = {}
    for i, (k, t) in enumerate(theta.items()):
        kind = lrs if lrs != "mixed" else ("full", "scalar", "row")[i % 3]
        if kind == "row" and t.dim() < 2:
            kind = "full"
        shape = {"full": tuple(t.shape), "scalar": (), "row": (t.shape[0], *[1] * (t.dim() - 1))}
        alphas[k] = uniform(shape[kind])
    if order == "shuffled":
        names = list(theta)
        perm = torch.randperm(len(names), generator=g).tolist()
        grads = {names[i]: grads[names[i]] for i in perm}
        alphas = {names[i]: alphas[names[i]] for i in reversed(perm)}
    return theta, grads, alphas


def msgd_update(
    fn: Callable[..., Any], model: dict[str, Any], lrs: str, seed: int, order: str = "shuffled"
) -> dict[str, Any]:
    """``fn(params, grads, lrs)`` on :func:`msgd_inputs` (every input a leaf that requires
    gradients): the new θ, the gradient of ``Σ_k <new[k], v[k]>`` with respect to the step
    sizes, θ and the gradients (``None`` without a graph to them), and whether the inputs
    changed; an error is returned as text."""
    theta, grads, alphas = msgd_inputs(model, lrs, seed, order)
    groups = {"params": theta, "grads": grads, "lrs": alphas}
    for ts in groups.values():
        for t in ts.values():
            t.requires_grad_()
    inputs = [t for ts in groups.values() for t in ts.values()]
    keep = [t.detach().clone() for t in inputs]
    try:
        with torch.random.fork_rng(devices=[]):
            out = fn(theta, grads, alphas)
    except NotImplementedError:
        raise
    except Exception as err:  # the judge explains errors (an in-place update, a shape)
        return {"raised": f"{type(err).__name__}: {err}"[:500]}
    result: dict[str, Any] = {"inputs_changed": not _same_tensors(inputs, keep)}
    problem = _tensor_dict(out, "the adapted θ")
    if problem:
        return {**result, "problem": problem}
    try:
        grads_back = vjp(out, groups, seed + 1)
    except RuntimeError as err:  # e.g. shapes the judge reports anyway
        grads_back = {"params": None, "grads": None, "lrs": None, "error": str(err)[:300]}
    return {**result, "new": _plain(out), "vjp": grads_back}
