"""Exercise 08_meta_knowledge: the weighted step, example weights by meta-gradient, Meta-SGD.

Every case is rebuilt from a seed on both sides (see :mod:`metalib.grading.probes_08`): small
softmax classifiers (linear, a ReLU perceptron, a Conv4 with batch-statistics norm), training
and validation batches, example weights of several kinds (random, sparse, uniform, all zero),
and parameter dicts with per-entry, per-tensor and per-row step sizes listed in another order
than θ. The judges compare with :mod:`metalib.reweight` (``weighted_step``,
``example_weights``) and :mod:`metalib.meta_sgd` (``inner_update``) to 1e-9 in float64 and
about 1e-5 in float32, and check the gradients the methods follow (to the example weights and
θ; to the step sizes α). A wrong answer is matched against the usual mistakes (a mean for the
weighted sum, no weights, gradient ascent; the sign of g flipped, no clamp, no normalisation,
ε away from 0, the validation loss on the training batch; one scalar step size, α added,
dicts paired by position) so the message can say which one it is.

The validation loss's reduction (mean or sum) does not matter: g only scales with it, and the
normalised weights do not change; so a summed validation loss passes, as it should.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from metalib import meta_sgd, reweight
from metalib.grading import feedback
from metalib.grading.ex00_tasks import judge_raises, raises_case
from metalib.grading.ex02_maml import _mismatch, _names
from metalib.grading.ex06_test_time_adaptation import _tolerance, close, show
from metalib.grading.probes_08 import (
    directions,
    msgd_inputs,
    rw_batch,
    rw_data,
    rw_model,
    rw_params,
    rw_weights,
    vjp,
)
from metalib.grading.spec import Case, Exercise, Question
from metalib.nets import forward_with

Params = dict[str, torch.Tensor]


def _first_wrong(got: Params, want: Params) -> str | None:
    for name, w in want.items():
        if not close(got[name], w):
            return name
    return None


def _same(got: Params, want: Params) -> bool:
    return _names(got, want, "") is None and _first_wrong(got, want) is None


_MODEL_CHANGED = (
    "the network's own weights changed; run it on params with "
    "metalib.nets.forward_with(model, params, x) and build new tensors, leaving the model as it is"
)
_INPUTS_CHANGED = (
    "an input (params, x, y or the weights) changed in place; leave the inputs as they are and "
    "return new tensors"
)


# ---------------------------------------------------------------------------------- q1


def _step_inputs(kw: dict[str, Any]):
    model = kw["model"]
    net = rw_model(**model)
    params = rw_params(net, kw.get("subset", "all"))
    x, y = rw_batch(model, kw["n"], kw["seed"])
    w = rw_weights(kw["n"], kw["weights"], kw["seed"] + 1, model.get("dtype", "float64"))
    return net, params, x, y, w.requires_grad_()


def _step(kw: dict[str, Any]) -> tuple[Params, Params, dict]:
    """The reference θ' (with its graph), θ, and the gradients of the probe's product."""
    net, params, x, y, w = _step_inputs(kw)
    new = reweight.weighted_step(net, params, x, y, w, kw["lr"])
    return new, params, vjp(new, {"weights": {"w": w}, "params": params}, kw["seed"] + 2)


def _unweighted(kw: dict[str, Any], each: str) -> Params:
    """θ' with every example weighted 1 (``each="one"``) or 1/n (``"1/n"``)."""
    net, params, x, y, w = _step_inputs(kw)
    w = torch.full_like(w.detach(), 1.0 if each == "one" else 1.0 / len(w))
    return {
        k: t.detach() for k, t in reweight.weighted_step(net, params, x, y, w, kw["lr"]).items()
    }


_WEIGHTED = "θ' = θ − lr·∇_θ Σ_i weights_i·ℓ_i(θ), ℓ_i the cross-entropy of example i"


def judge_weighted_step(case: Case, out: Any) -> str | None:
    """``weighted_step(model, params, x, y, weights, lr) -> θ'``, with its graph."""
    kw = case.kwargs
    if "problem" in out:
        return out["problem"]
    if out["model_changed"]:
        return _MODEL_CHANGED
    if out["inputs_changed"]:
        return _INPUTS_CHANGED
    new, theta, grads = _step(kw)
    want = {k: t.detach() for k, t in new.items()}
    got = out["new"]
    problem = _names(got, want, "the new θ")
    if problem:
        return problem
    name = _first_wrong(got, want)
    n, lr = kw["n"], kw["lr"]
    if name is not None:
        wrong = _mismatch(got, want, name)
        theta = {k: t.detach() for k, t in theta.items()}
        delta = {k: want[k] - theta[k] for k in want}  # −lr·∇ Σ w_i ℓ_i
        guesses = [
            (
                {k: theta[k] + delta[k] / n for k in want},
                (
                    f"this step is {n} times too short: it used the mean of the weighted losses, "
                    f"(1/n)·Σ_i w_i ℓ_i with n={n}; the weights already say how much each example "
                    "counts, so take their weighted sum Σ_i w_i ℓ_i"
                ),
            ),
            (
                {k: theta[k] - delta[k] for k in want},
                ("this is gradient ascent (θ + lr·∇); step against the gradient"),
            ),
            (
                _unweighted(kw, "1/n"),
                ("the weights were ignored: this is a step on the plain mean loss"),
            ),
            (
                _unweighted(kw, "one"),
                ("the weights were ignored: this is a step on the plain sum of the losses"),
            ),
            (theta, "no step was taken: these are the values of params"),
        ]
        for candidate, why in guesses:
            if _same(got, candidate):
                return f"{wrong}: {why}"
        return f"{wrong}, with lr={lr}. Expected {_WEIGHTED}"
    want_v = grads["params"]
    if out["weights_grad"] is None:
        first_order = out["params_vjp"] is not None and _same(
            out["params_vjp"], directions(want, kw["seed"] + 2)
        )
        why = (
            "the gradient was taken without create_graph=True, so it is a constant"
            if first_order or out["params_vjp"] is None
            else "the weights were detached (or turned into numbers)"
        )
        return (
            "the values are right, but θ' carries no gradient back to the example weights: "
            f"{why}. Learning to reweight differentiates θ' with respect to the weights, so "
            "keep the graph (torch.autograd.grad(..., create_graph=True), or torch.func.grad)"
        )
    want_w = grads["weights"]["w"]
    if not close(out["weights_grad"], want_w):
        wrong = (
            "the values are right, but their gradient with respect to the weights is not: "
            f"expected {show(want_w)}, got {show(out['weights_grad'])}"
        )
        if close(out["weights_grad"], want_w / n):
            return (
                f"{wrong}, {n} times too small: the step used the mean of the weighted losses; "
                "take their weighted sum Σ_i w_i ℓ_i"
            )
        if close(out["weights_grad"], -want_w):
            return f"{wrong}, of the wrong sign: is this gradient ascent (θ + lr·∇)?"
        return f"{wrong}; {_WEIGHTED}, every operation differentiable"
    if out["params_vjp"] is None:
        return (
            "the values are right, but θ' carries no graph back to params; compute it from "
            "params with differentiable operations"
        )
    name = _first_wrong(out["params_vjp"], want_v)
    if name is None:
        return None
    if _same(out["params_vjp"], directions(want, kw["seed"] + 2)):
        return (
            "the values are right, but θ' is first order in params: the gradient was treated as a "
            "constant (create_graph=True is missing); keep the graph of the gradient"
        )
    return (
        f"the values are right, but the gradient through θ' with respect to params, "
        f"{_mismatch(out['params_vjp'], want_v, name)}; {_WEIGHTED}"
    )


# ---------------------------------------------------------------------------------- q2


def _setup(kw: dict[str, Any]):
    net = rw_model(**kw["model"])
    return net, rw_params(net), rw_data(kw["model"], kw["data"])


def _meta_grad(kw: dict[str, Any], start: str = "zero", val: str = "val") -> torch.Tensor:
    """g = ∂ mean-CE(val; θ'(ε)) / ∂ε at ε = 0 (or ``start`` = "uniform", 1/n; "ones", 1),
    with the validation loss on the validation batch (or ``val="train"``)."""
    net, params, (x, y, vx, vy) = _setup(kw)
    if val == "train":
        vx, vy = x, y
    n = len(y)
    value = {"zero": 0.0, "uniform": 1.0 / n, "ones": 1.0}[start]
    eps = torch.full((n,), value, dtype=x.dtype, requires_grad=True)
    fast = reweight.weighted_step(net, params, x, y, eps, kw["lr"])
    (g,) = torch.autograd.grad(F.cross_entropy(forward_with(net, fast, vx), vy), eps)
    return g.detach()


def _normalised(w: torch.Tensor) -> torch.Tensor:
    total = w.sum()
    return w / total if total > 0 else w


_WEIGHTS = (
    "ε = 0 (requiring grad), θ' = weighted_step(..., ε, lr), g = ∂ L_val(θ')/∂ε with L_val the "
    "mean cross-entropy of the validation batch, w̃ = max(−g, 0), w = w̃ / Σ w̃ (zeros if Σ w̃ = 0)"
)


def judge_example_weights(case: Case, out: Any) -> str | None:
    """``example_weights(model, params, x, y, val_x, val_y, lr) -> (n,)``, detached."""
    kw = case.kwargs
    if out["model_changed"]:
        return _MODEL_CHANGED
    if out["inputs_changed"]:
        return _INPUTS_CHANGED
    net, params, (x, y, vx, vy) = _setup(kw)
    want = reweight.example_weights(net, params, x, y, vx, vy, kw["lr"])
    got, n = out["weights"], len(y)
    if not isinstance(got, torch.Tensor):
        return (
            f"expected a tensor of shape ({n},), one weight per training example, got {show(got)}"
        )
    if got.shape != want.shape:
        return f"got shape {tuple(got.shape)}, expected ({n},): one weight per training example"
    if got.dtype != want.dtype:
        return f"got dtype {got.dtype}; keep the dtype of params ({want.dtype})"
    g = _meta_grad(kw)
    if not torch.isfinite(got).all():
        if want.sum() == 0:
            return (
                f"got {show(got)}: here no example's gradient agrees with the validation "
                "gradient (every g_i ≥ 0), so every max(−g_i, 0) is 0 and dividing by their sum "
                "0 gives nan; return the zeros as they are when the sum is 0"
            )
        return f"got {show(got)}, which is not finite; expected {show(want)}"
    if out["requires_grad"]:
        return (
            "the weights still carry a graph; return them detached (w.detach()): the training "
            "step that follows treats them as constants"
        )
    if close(got, want):
        return None
    wrong = f"expected {show(want)}, got {show(got)}"
    if want.sum() == 0 and close(got, _normalised(g)):
        return (
            f"{wrong}: here every g_i ≥ 0 (no example agrees with the validation gradient), so "
            "every max(−g_i, 0) is 0 and so is every weight; this is g / Σ g: was the clamp "
            "skipped, or the sign of g flipped?"
        )
    guesses = [
        (
            _normalised(g.clamp(min=0)),
            (
                "this is max(+g, 0) normalised: the sign is flipped. Raising ε_i lowers the "
                "validation loss when g_i < 0, and those examples are the ones to keep: "
                "w̃ = max(−g, 0)"
            ),
        ),
        ((-g).clamp(min=0), "these are max(−g, 0) not normalised: divide by their sum"),
        (-g / (-g).sum(), "this is −g / Σ(−g) without the clamp: negative weights must be 0"),
        (
            _normalised((-_meta_grad(kw, "uniform")).clamp(min=0)),
            ("g was taken at ε = 1/n (uniform weights): take it at ε = 0, where θ' = θ"),
        ),
        (
            _normalised((-_meta_grad(kw, "ones")).clamp(min=0)),
            ("g was taken at ε = 1 (weights of one): take it at ε = 0, where θ' = θ"),
        ),
        (
            _normalised((-_meta_grad(kw, val="train")).clamp(min=0)),
            ("the validation loss was computed on the training batch (x, y); use (val_x, val_y)"),
        ),
    ]
    for candidate, why in guesses:
        if close(got, candidate):
            return f"{wrong}: {why}"
    if (got < 0).any():
        return f"{wrong}: a weight is negative; clamp −g at 0 before normalising"
    if want.sum() > 0 and not torch.isclose(got.sum().double(), torch.ones((), dtype=torch.double)):
        return f"{wrong}: the weights sum to {float(got.sum()):.6g}, not 1; normalise them"
    return f"{wrong}. {_WEIGHTS}"


# ---------------------------------------------------------------------------------- q3


_META_SGD = "θ'_k = θ_k − α_k ∘ g_k for each name k, with α_k = lrs[k] and g_k = grads[k]"


def _by_position(theta: Params, grads: Params, alphas: Params) -> Params | None:
    try:
        return {
            k: t - a * g
            for (k, t), g, a in zip(theta.items(), grads.values(), alphas.values(), strict=True)
        }
    except RuntimeError:
        return None


def _one_step_size(got: Params, theta: Params, grads: Params) -> float | None:
    """``c`` when ``got = θ − c·g`` with one number ``c`` for every entry, else ``None``."""
    d = torch.cat([(theta[k] - got[k].to(theta[k].dtype)).flatten() for k in theta])
    g = torch.cat([grads[k].flatten() for k in theta])
    c = (d * g).sum() / (g * g).sum()
    return float(c) if torch.allclose(d, c * g, **_tolerance(g.dtype)) else None


def judge_inner_update(case: Case, out: Any) -> str | None:
    """``inner_update(params, grads, lrs) -> θ'``: Meta-SGD's per-entry step, differentiable."""
    if case.probe == "raises":
        return judge_raises(case, out)
    kw = case.kwargs
    if "raised" in out:
        text = out["raised"]
        if "in-place" in text:
            return f"raised {text}: build new tensors (θ − α∘g), do not update params in place"
        if any(s in text for s in ("size of tensor", "broadcast", "shape")):
            return (
                f"raised {text}: look each gradient and step size up by its name, grads[k] and "
                "lrs[k]; the three dicts may list their names in different orders"
            )
        return f"raised {text}"
    if "problem" in out:
        return out["problem"]
    if out["inputs_changed"]:
        return "params, grads or lrs changed in place; leave the inputs as they are"
    theta, grads, alphas = msgd_inputs(kw["model"], kw["lrs"], kw["seed"], kw["order"])
    want = meta_sgd.inner_update(theta, grads, alphas)
    got = out["new"]
    problem = _names(got, {k: want[k] for k in theta}, "the adapted θ")
    if problem:
        return problem
    name = _first_wrong(got, want)
    if name is not None:
        wrong = _mismatch(got, want, name)
        added = {k: theta[k] + alphas[k] * grads[k] for k in theta}
        if _same(got, added):
            return f"{wrong}: α∘g was added; subtract it, {_META_SGD}"
        position = _by_position(theta, grads, alphas)
        if position is not None and _same(got, position):
            return (
                f"{wrong}: the dicts were paired by position; look each gradient and step size "
                "up by its name (grads[k], lrs[k]): the dicts list their names in other orders"
            )
        c = _one_step_size(got, theta, grads)
        if c is not None:
            return (
                f"{wrong}: this takes one step size ({c:.4g}) for every entry; Meta-SGD learns "
                f"one per entry, {_META_SGD}"
            )
        return f"{wrong}; {_META_SGD}"
    groups = {"params": theta, "grads": grads, "lrs": alphas}
    for ts in groups.values():
        for t in ts.values():
            t.requires_grad_()
    want_vjp = vjp(meta_sgd.inner_update(theta, grads, alphas), groups, kw["seed"] + 1)
    what = {
        "lrs": "the step sizes α, which Meta-SGD meta-learns",
        "params": "params",
        "grads": "the gradients (second-order Meta-SGD differentiates through them)",
    }
    for group in ("lrs", "params", "grads"):
        if out["vjp"].get(group) is None:
            return (
                f"the values are right, but θ' carries no gradient back to {what[group]}: "
                "compute it with differentiable operations (no .detach(), .item() or "
                "torch.no_grad())"
            )
        name = _first_wrong(out["vjp"][group], want_vjp[group])
        if name is not None:
            return (
                f"the values are right, but their gradient with respect to {what[group]}, "
                f"{_mismatch(out['vjp'][group], want_vjp[group], name)}"
            )
    return None


# ---------------------------------------------------------------------------------- cases


def linear(seed: int, n_classes: int = 3, features: int = 6, dtype: str = "float64") -> dict:
    return {
        "kind": "linear",
        "seed": seed,
        "n_classes": n_classes,
        "features": features,
        "dtype": dtype,
    }


def mlp(
    seed: int,
    n_classes: int = 3,
    features: int = 6,
    hidden: tuple[int, ...] = (8,),
    dtype: str = "float64",
) -> dict:
    return {
        "kind": "mlp",
        "seed": seed,
        "n_classes": n_classes,
        "features": features,
        "hidden": list(hidden),
        "dtype": dtype,
    }


def conv4(
    seed: int, n_classes: int = 3, hidden: int = 4, image_size: int = 16, dtype: str = "float64"
) -> dict:
    return {
        "kind": "conv4",
        "seed": seed,
        "n_classes": n_classes,
        "hidden": [hidden],
        "image_size": image_size,
        "dtype": dtype,
    }


def _describe(model: dict[str, Any]) -> str:
    c = model.get("n_classes", 3)
    if model["kind"] == "conv4":
        s = model.get("image_size", 16)
        what = f"a Conv4 ({model['hidden'][0]} channels, {s}x{s} images)"
    elif model["kind"] == "mlp":
        widths = "-".join(map(str, model["hidden"]))
        what = f"a perceptron {model['features']}-{widths}-{c}"
    else:
        what = f"softmax regression on {model['features']} features"
    return f"{what}, {c} classes, {model.get('dtype', 'float64')}, seed {model['seed']}"


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


_WEIGHT_KINDS = {
    "random": "random weights in [0, 1)",
    "sparse": "random weights, about half of them 0",
    "uniform": "weights 1/n (the mean loss)",
    "zeros": "all weights 0 (ε = 0)",
}


def step_case(
    model: dict[str, Any], n: int, weights: str, lr: float, seed: int, subset: str = "all"
) -> Case:
    label = f"{_describe(model)}, {_count(n, 'example')}, {_WEIGHT_KINDS[weights]}, lr={lr}"
    label += ", only the head in params" if subset == "head" else ""
    kwargs = {"model": model, "n": n, "weights": weights, "lr": lr, "seed": seed, "subset": subset}
    return Case(label, kwargs, probe="rw_step")


def weights_case(
    model: dict[str, Any], n: int, m: int, lr: float, seed: int, val: str = "clean"
) -> Case:
    data = {"n": n, "m": m, "seed": seed, "val": val}
    if val == "conflict":
        what = f"{n} examples validated on the same inputs with every label changed, seed {seed}"
    else:
        what = f"{n} training and {_count(m, 'validation example')}, seed {seed}"
    return Case(
        f"{_describe(model)}, {what}, lr={lr}",
        {"model": model, "data": data, "lr": lr},
        probe="rw_example_weights",
    )


_LR_KINDS = {
    "full": "one step size per entry",
    "scalar": "one step size per tensor (0-d)",
    "mixed": "step sizes per entry, per tensor and per row",
}


def update_case(model: dict[str, Any], lrs: str, seed: int, order: str = "shuffled") -> Case:
    names = " (grads and lrs list the names in other orders)" if order == "shuffled" else ""
    label = f"the weights of {_describe(model)}, {_LR_KINDS[lrs]}{names}"
    return Case(
        label, {"model": model, "lrs": lrs, "seed": seed, "order": order}, probe="msgd_update"
    )


def _t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def update_raises(kind: str) -> Case:
    """``inner_update`` must refuse dicts whose names differ, or an α that does not fit θ."""
    theta = {"w": _t(1.0, 2.0), "b": _t(0.5)}
    grads = {"w": _t(0.1, -0.2), "b": _t(1.0)}
    lrs = {"w": _t(0.1, 0.2), "b": _t(0.01)}
    if kind == "missing lr":
        label = "lrs has no step size for 'b' (names differ)"
        bad = [theta, grads, {"w": lrs["w"]}]
    elif kind == "extra grad":
        label = "grads has a name 'v' params does not have (names differ)"
        bad = [theta, {**grads, "v": _t(3.0)}, lrs]
    elif kind == "grad shape":
        label = "grads['w'] has shape (1,) for θ['w'] of shape (2,) (a gradient has θ's shape)"
        bad = [theta, {**grads, "w": _t(0.1)}, lrs]
    else:
        label = "lrs['w'] has shape (3,) for θ['w'] of shape (2,) (does not broadcast)"
        bad = [theta, grads, {**lrs, "w": _t(0.1, 0.2, 0.3)}]
    return raises_case(label, bad, [theta, grads, lrs])


EXERCISE = Exercise(
    "08_meta_knowledge",
    (
        Question(
            "q1",
            "weighted_step",
            3,
            judge_weighted_step,
            visible=(
                step_case(linear(0), 5, "random", lr=0.5, seed=0),
                step_case(mlp(1), 6, "sparse", lr=0.3, seed=1),
                step_case(conv4(2, dtype="float32"), 4, "random", lr=0.2, seed=2),
                step_case(mlp(3), 4, "zeros", lr=0.5, seed=3),
            ),
            title="one SGD step on the weighted training loss, differentiable",
        ),
        Question(
            "q2",
            "example_weights",
            4,
            judge_example_weights,
            visible=(
                weights_case(mlp(0), 8, 6, lr=0.5, seed=0),
                weights_case(linear(1), 6, 4, lr=0.1, seed=1),
                weights_case(conv4(2, dtype="float32"), 6, 6, lr=0.2, seed=2),
                weights_case(linear(0, features=16), 4, 4, lr=0.5, seed=0, val="conflict"),
            ),
            title="example weights from the meta-gradient of the validation loss",
        ),
        Question(
            "q3",
            "inner_update",
            3,
            judge_inner_update,
            visible=(
                update_case(mlp(0), "full", seed=0),
                update_case(mlp(1, hidden=(5, 5)), "scalar", seed=1),
                update_case(conv4(2, dtype="float32"), "mixed", seed=2),
                update_raises("missing lr"),
            ),
            title="Meta-SGD's inner update with per-parameter step sizes",
        ),
    ),
)


def check(name: str, fn: Callable[..., Any]) -> feedback.Verdict:
    """Run the visible cases of question ``name`` on ``fn`` and print the verdict."""
    return feedback.check(EXERCISE, name, fn)
