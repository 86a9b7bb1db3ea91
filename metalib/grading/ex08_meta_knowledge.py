"""Exercise 08_meta_knowledge: the weighted step, example weights by meta-gradient, Meta-SGD.

What the questions check. q1 ``weighted_step``: one SGD step on the per-example-weighted
training loss, its values *and* its graph back to the example weights and to θ (learning to
reweight differentiates through it). q2 ``example_weights``: Ren et al.'s weights from the
meta-gradient of a clean validation loss, returned detached (all zero when no example agrees
with the validation gradient). q3 ``inner_update``: Meta-SGD's per-entry step, its values and
its graph back to the step sizes, θ and the gradients; it must refuse dicts whose names differ,
a gradient of another shape than its weight, or a step size that does not broadcast to it
(``ValueError``). No question may change its inputs in place (the network included).

How cases are built. A spec is plain data, rebuilt on both sides (:func:`classifier`,
:func:`batch`): small seeded softmax classifiers (linear, a ReLU perceptron, a Conv4 with
batch-statistics norm, all tiny so that a second-order step costs milliseconds), seeded batches,
example weights of several kinds (random, sparse, uniform, all zero), and for q3 a network's
weights with seeded gradients and step sizes per entry, per tensor (0-d) and per row, the dicts
listing their names in other orders than θ. Graphs are judged through vector-Jacobian products
(:func:`metalib.grading.builders.vjp`): the gradient of ``Σ_k <new[k], v[k]>`` (seeded random
``v``) with respect to each input that must carry one, so that a detached input shows as a zero
gradient, a first-order step as ``v`` itself, and no graph at all as none.

Tolerances: 1e-9 (absolute) and 1e-7 (relative) in float64, 1e-5 and 1e-4 otherwise
(:func:`metalib.grading.question.difference`). The validation loss's reduction (mean or sum)
does not matter in q2: g only scales with it, and the normalised weights do not change.

References: :func:`metalib.reweight.weighted_step` and :func:`metalib.reweight.example_weights`
(Ren, Zeng, Yang and Urtasun, 2018), :func:`metalib.meta_sgd.inner_update` (Li et al., 2017). A
wrong answer is matched against the usual mistakes (a mean for the weighted sum, no weights,
gradient ascent, no create_graph; the sign of g flipped, no clamp, no normalisation, ε away from
0, the validation loss on the training batch; α added, dicts paired by position, one step size
for all, an input detached, an in-place update) so that the message can say which one it is.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from metalib import meta_sgd, reweight
from metalib.grading import builders, feedback
from metalib.grading.question import Case, Exercise, Mistake, Question, case, plain, raises
from metalib.nets import MLP, Conv4, forward_with

Params = dict[str, torch.Tensor]
Spec = dict[str, Any]

# ------------------------------------------------------------------------- networks and data


def classifier(
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
        if kind == "conv4":
            net: nn.Module = Conv4(n_classes, 1, hidden[0], image_size)
        else:
            net = MLP(features, n_classes, hidden=tuple(hidden) if kind == "mlp" else ())
    return net.to(builders.dtype(dtype))


def leaves(net: nn.Module, subset: str = "all") -> Params:
    """Fresh leaf copies of the network's weights that require gradients (all, or the head's)."""
    return {
        k: p.detach().clone().requires_grad_()
        for k, p in net.named_parameters()
        if subset == "all" or k.startswith(f"{subset}.")
    }


def batch(model: Spec, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded inputs ``(n, features)`` (or ``(n, 1, S, S)`` images for Conv4), of scale 1, and
    labels ``(n,)`` uniform over the classes."""
    g = builders.generator(seed)
    if model["kind"] == "conv4":
        size = model.get("image_size", 16)
        x = torch.rand(n, 1, size, size, generator=g, dtype=torch.float64)
    else:
        x = torch.randn(n, model.get("features", 6), generator=g, dtype=torch.float64)
    y = torch.randint(0, model.get("n_classes", 3), (n,), generator=g)
    return x.to(builders.dtype(model.get("dtype", "float64"))), y


def _describe(model: Spec) -> str:
    c = model.get("n_classes", 3)
    if model["kind"] == "conv4":
        s = model.get("image_size", 16)
        what = f"a Conv4 ({model['hidden'][0]} channels, {s}x{s} images)"
    elif model["kind"] == "mlp":
        what = f"a perceptron {model['features']}-{'-'.join(map(str, model['hidden']))}-{c}"
    else:
        what = f"softmax regression on {model['features']} features"
    return f"{what}, {c} classes, {model.get('dtype', 'float64')}, seed {model['seed']}"


def linear(seed: int, n_classes: int = 3, features: int = 6, dtype: str = "float64") -> Spec:
    return {"kind": "linear", **locals()}


def mlp(seed: int, n_classes: int = 3, features: int = 6, hidden=(8,), dtype="float64") -> Spec:
    return {"kind": "mlp", **locals(), "hidden": list(hidden)}


def conv4(seed: int, n_classes: int = 3, hidden: int = 4, image_size=16, dtype="float64") -> Spec:
    return {"kind": "conv4", **locals(), "hidden": [hidden]}


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


def _gradients(out: Any, groups: Mapping[str, Params], seed: int) -> dict[str, Params] | None:
    """:func:`~metalib.grading.builders.vjp` of ``out`` with respect to each group of inputs."""
    flat = {(group, k): t for group, ts in groups.items() for k, t in ts.items()}
    grads = builders.vjp(out, flat, seed)
    if grads is None:
        return None
    return {group: {k: grads[(group, k)] for k in ts} for group, ts in groups.items()}


# ------------------------------------------------------------------------- q1


def step_inputs(model: Spec, n: int, weights: str, lr: float, seed: int, subset: str = "all"):
    """The arguments of ``weighted_step(model, params, x, y, weights, lr)``: example weights
    ``"random"`` (in [0, 1)), ``"sparse"`` (about half of them 0), ``"uniform"`` (1/n: the
    mean loss) or ``"zeros"`` (Ren et al.'s ε = 0), requiring gradients."""
    net = classifier(**model)
    x, y = batch(model, n, seed)
    g = builders.generator(seed + 1)
    w = torch.rand(n, generator=g, dtype=torch.float64)
    if weights == "sparse":
        w = w * (torch.rand(n, generator=g, dtype=torch.float64) < 0.5)
    elif weights in ("uniform", "zeros"):
        w = torch.full((n,), 1.0 / n if weights == "uniform" else 0.0, dtype=torch.float64)
    w = w.to(x.dtype).requires_grad_()
    return {"model": net, "params": leaves(net, subset), "x": x, "y": y, "weights": w, "lr": lr}


def step_and_gradients(fn: Callable[..., Any], args: Mapping[str, Any], spec: Spec) -> dict:
    """θ', and the gradients of ``Σ_k <θ'[k], v[k]>`` (seeded ``v``) with respect to the example
    weights and to ``params``: ``None`` when θ' carries no graph at all."""
    out = fn(*args.values())
    groups = {"weights": {"w": args["weights"]}, "params": args["params"]}
    grads = _gradients(out, groups, spec["seed"] + 2) or {"weights": {"w": None}, "params": None}
    return {
        "new": plain(out),
        "gradient to weights": grads["weights"]["w"],
        "gradient to params": grads["params"],
    }


_WEIGHT_KINDS = {
    "random": "random weights in [0, 1)",
    "sparse": "random weights, about half of them 0",
    "uniform": "weights 1/n (the mean loss)",
    "zeros": "all weights 0 (ε = 0)",
}


def step_case(model: Spec, n: int, weights: str, lr: float, seed: int, subset="all") -> Case:
    label = f"{_describe(model)}, {_count(n, 'example')}, {_WEIGHT_KINDS[weights]}, lr={lr}"
    label += ", only the head in params" if subset == "head" else ""
    return case(label, model=model, n=n, weights=weights, lr=lr, seed=seed, subset=subset)


def reference_weighted_step(model, params, x, y, weights, lr):
    return reweight.weighted_step(model, params, x, y, weights, lr)


def _step(weights: Callable | None = None, params: Callable | None = None, then=None):
    """A mistake: the reference on ``weights(w)`` and ``params(θ)``, ``then(θ_k, θ'_k)`` after."""

    def weighted_step(model, theta, x, y, w, lr):
        p = params(theta) if params else theta
        new = reweight.weighted_step(model, p, x, y, weights(w) if weights else w, lr)
        return {k: then(theta[k], t) for k, t in new.items()} if then else new

    return weighted_step


_DETACHED = lambda p: {k: t.detach().requires_grad_() for k, t in p.items()}  # noqa: E731
_MEAN = (
    "this step is n times too short (and so is its gradient with respect to the weights): it used "
    "the mean of the weighted losses, (1/n)·Σ_i w_i ℓ_i; the weights already say how much each "
    "example counts, so take their weighted sum Σ_i w_i ℓ_i"
)
_IGNORED = "the weights were ignored: this is a step on the plain {} of the losses"
_NO_WEIGHTS = (
    "the values are right, but θ' carries no gradient back to the example weights: {}. Learning "
    "to reweight differentiates θ' with respect to the weights, so keep the graph "
    "(torch.autograd.grad(..., create_graph=True), or torch.func.grad)"
)
_CONSTANT = "the gradient was taken without create_graph=True, so it is a constant"
_NO_GRAPH = (
    "the values are right, but θ' carries no graph at all (it was detached, or computed under "
    "torch.no_grad()); compute it from params and the weights with differentiable operations"
)
_FIRST_ORDER = (
    "the values are right, but θ' is first order in params: the gradient was treated as a "
    "constant with respect to params; keep the graph of the gradient"
)
_STEPS = lambda s: s["weights"] != "zeros"  # noqa: E731  (where θ' is not θ)

Q1 = Question(
    "q1",
    "weighted_step",
    3,
    step_inputs,
    title="one SGD step on the weighted training loss, differentiable",
    reference=reference_weighted_step,
    observe=step_and_gradients,
    mistakes=(
        Mistake(_MEAN, _step(weights=lambda w: w / len(w))),
        Mistake(
            "this is gradient ascent (θ + lr·∇); step against the gradient",
            _step(then=lambda p, t: 2 * p - t),
        ),
        Mistake(_IGNORED.format("mean"), _step(weights=lambda w: torch.full_like(w, 1 / len(w)))),
        Mistake(_IGNORED.format("sum"), _step(weights=torch.ones_like)),
        Mistake(
            "no step was taken: these are the values of params", lambda m, p, *_: dict(p), _STEPS
        ),
        Mistake(_NO_WEIGHTS.format(_CONSTANT), _step(then=lambda p, t: p - (p - t).detach())),
        Mistake(
            _NO_WEIGHTS.format("the weights were detached (or turned into numbers)"),
            _step(weights=torch.detach),
        ),
        Mistake(_NO_GRAPH, _step(then=lambda p, t: t.detach())),
        Mistake(_FIRST_ORDER, _step(params=_DETACHED, then=lambda p, t: p + t - p.detach())),
    ),
    rule="Expected θ' = θ − lr·∇_θ Σ_i weights_i·ℓ_i(θ), ℓ_i the cross-entropy of example i, with "
    "differentiable operations (the gradients are those of Σ_k <θ'[k], v[k]>, v random)",
    visible=(
        step_case(linear(0), 5, "random", lr=0.5, seed=0),
        step_case(mlp(1), 6, "sparse", lr=0.3, seed=1),
        step_case(conv4(2, dtype="float32"), 4, "random", lr=0.2, seed=2),
        step_case(mlp(3), 4, "zeros", lr=0.5, seed=3),
    ),
)

# ------------------------------------------------------------------------- q2


def weights_inputs(model: Spec, data: Spec, lr: float) -> dict:
    """The arguments of ``example_weights(model, params, x, y, val_x, val_y, lr)``: a training
    and a validation batch, or with ``data["val"] == "conflict"`` the training inputs again with
    every label changed (then no example agrees with the validation gradient: every weight is 0)."""
    net = classifier(**model)
    x, y = batch(model, data["n"], data["seed"])
    if data.get("val") == "conflict":
        val_x, val_y = x.clone(), (y + 1) % model.get("n_classes", 3)
    else:
        val_x, val_y = batch(model, data["m"], data["seed"] + 1)
    return dict(model=net, params=leaves(net), x=x, y=y, val_x=val_x, val_y=val_y, lr=lr)


def weights_and_graph(fn: Callable[..., Any], args: Mapping[str, Any], spec: Spec) -> dict:
    """The weights, and whether they come back detached."""
    out = fn(*args.values())
    return {"weights": plain(out), "detached": not getattr(out, "requires_grad", False)}


def reference_example_weights(model, params, x, y, val_x, val_y, lr):
    return reweight.example_weights(model, params, x, y, val_x, val_y, lr)


def _g(model, params, x, y, val_x, val_y, lr, start: Any = 0.0, on_train: bool = False):
    """g = ∂ mean-CE(validation; θ'(ε)) / ∂ε at ε = ``start`` (a number or "1/n"), with the
    validation loss on the training batch if ``on_train``."""
    start = 1 / len(y) if start == "1/n" else start
    eps = torch.full(y.shape, start, dtype=x.dtype, requires_grad=True)
    fast = reweight.weighted_step(model, params, x, y, eps, lr)
    vx, vy = (x, y) if on_train else (val_x, val_y)
    return torch.autograd.grad(F.cross_entropy(forward_with(model, fast, vx), vy), eps)[0]


def _weights(then: Callable[[torch.Tensor], torch.Tensor], **how: Any) -> Callable:
    """A mistake: ``then(g)``, g taken as :func:`_g` says with ``how``."""
    return lambda *args: then(_g(*args, **how)).detach()


def _normalised(w: torch.Tensor) -> torch.Tensor:
    return w / w.sum() if w.sum() > 0 else w


_KEEP = lambda g: _normalised((-g).clamp(min=0))  # noqa: E731  (the right rule)
_CONFLICT = lambda s: s["data"].get("val") == "conflict"  # noqa: E731
_AT = "g was taken at ε = {}: take it at ε = 0, where θ' = θ"


def weights_case(model: Spec, n: int, m: int, lr: float, seed: int, val: str = "clean") -> Case:
    if val == "conflict":
        what = f"{n} examples validated on the same inputs with every label changed, seed {seed}"
    else:
        what = f"{n} training and {_count(m, 'validation example')}, seed {seed}"
    data = {"n": n, "m": m, "seed": seed, "val": val}
    return case(f"{_describe(model)}, {what}, lr={lr}", model=model, data=data, lr=lr)


_ALL_ZERO = "here every g_i ≥ 0 (no example agrees with the validation gradient), so every "
_CLAMP_SKIPPED = (
    _ALL_ZERO + "max(−g_i, 0) is 0 and so is every weight; this is g / Σ g: the clamp was skipped, "
    "or the sign of g flipped"
)
_NAN = (
    _ALL_ZERO + "max(−g_i, 0) is 0 and dividing by their sum 0 gives nan; return the zeros as "
    "they are when the sum is 0"
)
_SIGN = (
    "this is max(+g, 0) normalised: the sign is flipped. Raising ε_i lowers the validation loss "
    "when g_i < 0, and those examples are the ones to keep: w̃ = max(−g, 0)"
)
_ON_TRAIN = "the validation loss was computed on the training batch (x, y); use (val_x, val_y)"
_GRAPH = (
    "the weights still carry a graph; return them detached (w.detach()): the training step that "
    "follows treats them as constants"
)

Q2 = Question(
    "q2",
    "example_weights",
    4,
    weights_inputs,
    title="example weights from the meta-gradient of the validation loss",
    reference=reference_example_weights,
    observe=weights_and_graph,
    mistakes=(
        Mistake(_CLAMP_SKIPPED, _weights(lambda g: g / g.sum()), _CONFLICT),
        Mistake(_NAN, _weights(lambda g: (-g).clamp(min=0) / (-g).clamp(min=0).sum()), _CONFLICT),
        Mistake(_SIGN, _weights(lambda g: _KEEP(-g))),
        Mistake(
            "these are max(−g, 0) not normalised: divide by their sum",
            _weights(lambda g: (-g).clamp(min=0)),
        ),
        Mistake(
            "this is −g / Σ(−g) without the clamp: negative weights must be 0",
            _weights(lambda g: g / g.sum()),
        ),
        Mistake(_AT.format("1/n (uniform weights)"), _weights(_KEEP, start="1/n")),
        Mistake(_AT.format("1 (weights of one)"), _weights(_KEEP, start=1.0)),
        Mistake(_ON_TRAIN, _weights(_KEEP, on_train=True)),
        Mistake(_GRAPH, lambda *a: reference_example_weights(*a).requires_grad_()),
    ),
    rule="Expected ε = 0 (requiring grad), θ' = weighted_step(..., ε, lr), g = ∂ L_val(θ')/∂ε "
    "with L_val the mean cross-entropy of the validation batch, w̃ = max(−g, 0), w = w̃ / Σ w̃ "
    "(zeros if Σ w̃ = 0)",
    visible=(
        weights_case(mlp(0), 8, 6, lr=0.5, seed=0),
        weights_case(linear(1), 6, 4, lr=0.1, seed=1),
        weights_case(conv4(2, dtype="float32"), 6, 6, lr=0.2, seed=2),
        weights_case(linear(0, features=16), 4, 4, lr=0.5, seed=0, val="conflict"),
    ),
)

# ------------------------------------------------------------------------- q3


def update_inputs(
    model: Spec | None = None,
    lrs: str = "full",
    seed: int = 0,
    order: str = "shuffled",
    given: dict[str, Params] | None = None,
) -> dict:
    """The arguments of ``inner_update(params, grads, lrs)``, every tensor a leaf requiring
    gradients: the ``given`` dicts, or a network's weights θ with seeded gradients and step
    sizes α (uniform in [0.005, 0.1], as Meta-SGD initialises them).

    ``lrs``: ``"full"`` (one α per entry), ``"scalar"`` (one 0-d α per tensor) or ``"mixed"``
    (full, 0-d, and one α per output row, shape ``(out, 1)``, in turn). With
    ``order="shuffled"`` the gradients and the step sizes list their names in two other orders
    than θ (a dict is looked up by name).
    """
    if given is not None:
        return {k: {n: t.clone().requires_grad_() for n, t in given[k].items()} for k in given}
    theta = {k: p.detach().clone() for k, p in classifier(**model).named_parameters()}
    g = builders.generator(seed)
    dtype = next(iter(theta.values())).dtype
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
        alphas[k] = 0.005 + 0.095 * torch.rand(shape[kind], generator=g, dtype=torch.float64)
        alphas[k] = alphas[k].to(dtype)
    if order == "shuffled":
        names = list(theta)
        perm = torch.randperm(len(names), generator=g).tolist()
        grads = {names[i]: grads[names[i]] for i in perm}
        alphas = {names[i]: alphas[names[i]] for i in reversed(perm)}
    inputs = {"params": theta, "grads": grads, "lrs": alphas}
    return {k: {n: t.requires_grad_() for n, t in ts.items()} for k, ts in inputs.items()}


def update_and_gradients(fn: Callable[..., Any], args: Mapping[str, Any], spec: Spec) -> dict:
    """θ', and the gradients of ``Σ_k <θ'[k], v[k]>`` (seeded ``v``) with respect to params,
    grads and lrs (``None`` without a graph at all); or the error it raised, as text (one text
    for every mismatch of sizes, so that a known mistake is recognised whatever the sizes)."""
    try:
        out = fn(*args.values())
    except NotImplementedError:
        raise
    except Exception as err:  # an in-place update of a leaf, dicts paired by position...
        text = f"{type(err).__name__}: {err}"[:300]
        if "must match the size of tensor" in text:
            text = "RuntimeError: tensors of sizes that do not match were combined"
        return {"raised": text, "new": None, "gradients": None}
    gradients = _gradients(out, args, spec.get("seed", 0) + 1)
    return {"raised": None, "new": plain(out), "gradients": gradients}


def reference_inner_update(params, grads, lrs):
    return meta_sgd.inner_update(params, grads, lrs)


def _update(step: Callable, detach: str = "") -> Callable:
    """A mistake: ``step(θ_k, α_k, g_k)`` for each name, with the input ``detach`` names
    ("params", "grads", "lrs" or "all") detached."""

    def inner_update(params, grads, lrs):
        p, g, a = (
            {k: t.detach() for k, t in d.items()} if detach in (name, "all") else d
            for d, name in ((params, "params"), (grads, "grads"), (lrs, "lrs"))
        )
        return {k: step(p[k], a[k], g[k]) for k in p}

    return inner_update


def _cut(detach: str, what: str) -> Mistake:
    """The right step with ``detach`` detached: no gradient back to ``what``."""
    return Mistake(
        f"the values are right, but θ' carries no gradient back to {what}: compute it with "
        "differentiable operations (no .detach(), .item() or torch.no_grad())",
        _update(lambda t, a, g: t - a * g, detach),
    )


def _by_position(params, grads, lrs):
    zipped = zip(params.items(), grads.values(), lrs.values(), strict=True)
    return {k: t - a * g for (k, t), g, a in zipped}


def _one_step_size(params, grads, lrs):
    alpha = torch.cat([a.flatten() for a in lrs.values()]).mean()
    return {k: t - alpha * grads[k] for k, t in params.items()}


def _in_place(params, grads, lrs):
    for k, t in params.items():
        t.sub_(lrs[k] * grads[k])
    return params


_LR_KINDS = {
    "full": "one step size per entry",
    "scalar": "one step size per tensor (0-d)",
    "mixed": "step sizes per entry, per tensor and per row",
}


def update_case(model: Spec, lrs: str, seed: int, order: str = "shuffled") -> Case:
    names = " (grads and lrs list the names in other orders)" if order == "shuffled" else ""
    label = f"the weights of {_describe(model)}, {_LR_KINDS[lrs]}{names}"
    return case(label, model=model, lrs=lrs, seed=seed, order=order)


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
    names = ("params", "grads", "lrs")
    valid = dict(zip(names, (theta, grads, lrs), strict=True))
    return raises(label, {"given": dict(zip(names, bad, strict=True))}, {"given": valid})


Q3 = Question(
    "q3",
    "inner_update",
    3,
    update_inputs,
    title="Meta-SGD's inner update with per-parameter step sizes",
    reference=reference_inner_update,
    observe=update_and_gradients,
    mistakes=(
        Mistake("α∘g was added; subtract it", _update(lambda t, a, g: t + a * g)),
        Mistake(
            "the dicts were paired by position; look each gradient and step size up by its "
            "name (grads[k], lrs[k]): the dicts list their names in other orders",
            _by_position,
            lambda s: s.get("order") == "shuffled",
        ),
        Mistake(
            "this takes one step size (the mean of lrs) for every entry; Meta-SGD learns one "
            "per entry",
            _one_step_size,
        ),
        Mistake("build new tensors (θ − α∘g), do not update params in place", _in_place),
        _cut("lrs", "the step sizes α, which Meta-SGD meta-learns"),
        _cut("params", "params"),
        _cut("grads", "the gradients (second-order Meta-SGD differentiates through them)"),
        _cut("all", "any of the inputs"),
    ),
    rule="Expected θ'_k = θ_k − α_k ∘ g_k for each name k, with α_k = lrs[k] and g_k = grads[k], "
    "with differentiable operations (the gradients are those of Σ_k <θ'[k], v[k]>, v random)",
    visible=(
        update_case(mlp(0), "full", seed=0),
        update_case(mlp(1, hidden=(5, 5)), "scalar", seed=1),
        update_case(conv4(2, dtype="float32"), "mixed", seed=2),
        update_raises("missing lr"),
    ),
)

EXERCISE = Exercise("08_meta_knowledge", (Q1, Q2, Q3))


def check(name: str, fn: Callable[..., Any]) -> feedback.Verdict:
    """Run the visible cases of question ``name`` on ``fn`` and print the verdict."""
    return feedback.check(EXERCISE, name, fn)
