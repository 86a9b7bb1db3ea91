"""Exercise 08_meta_knowledge: variants of the chapter's meta-knowledge, and an experiment.

The chapter shows Ren et al.'s weighted step, example weights and reweighted step, Meta-SGD's
inner update and meta-gradient, and the hypernetwork's functional MLP, network and training
loop; the questions ask for what it does not show:

* q1, soft example weights: w = softmax(−g / τ) of the meta-gradients g of the validation loss
  (the entropy-regularised weights, one exponentiated-gradient step from uniform weights), which,
  unlike the chapter's max(−g, 0) / Σ, see the scale of g: lr and the validation loss's mean;
  a temperature that is not positive is refused;
* q2, FiLM (Perez et al., 2018): one shared target MLP whose hidden units each function scales
  and shifts, h = relu(γ ⊙ (h Wᵀ + b) + β), the 2H numbers a hypernetwork would then predict
  instead of all P weights; γ or β of the wrong shape is refused;
* q3, one inner step size per parameter tensor, kept positive as α_k = exp(s_k) (MAML++'s
  per-layer step sizes): the gradient of the mean adapted query loss with respect to each s_k,
  second order through several inner steps; names that differ or an s_k that is not 0-d are
  refused;
* q4, an experiment: learn MAML's single inner step size (α = exp(s), Adam on s, θ fixed) on
  tiny linear-regression tasks, graded against the reference on the same tasks
  (:data:`LR_TOLERANCE`) and by claims that held on every seed tried (:func:`lr_claims`).

How cases are built. A spec is plain data, rebuilt on both sides: seeded softmax classifiers
(linear, a ReLU perceptron, a Conv4 with batch-statistics norm) and batches (:func:`classifier`,
:func:`batch`); flat MLP weights drawn as ``nn.Linear`` draws them and modulations around
γ = 1, β = 0 (:func:`film_inputs`); episodes of sinusoid tasks
(:class:`metalib.data.sinusoid.SinusoidFamily`) or of random classification tasks, step sizes
listed in another order than θ (:func:`layerwise_inputs`); seeded linear-regression tasks
(:func:`regression_setup`). Graphs are judged through vector-Jacobian products
(:func:`metalib.grading.builders.vjp`); no question may change its inputs in place.

Tolerances: 1e-9 (absolute) and 1e-7 (relative) in float64, 1e-5 and 1e-4 otherwise
(:func:`metalib.grading.question.difference`); q4's numbers to :data:`LR_TOLERANCE`.

References: :func:`metalib.reweight.weighted_step` inside q1's (Ren, Zeng, Yang and Urtasun,
2018), :func:`metalib.hypernet.unflatten` inside q2's, :func:`metalib.maml.task_losses` with
0-d step sizes inside q3's (Li et al., 2017; Antoniou, Edwards and Storkey, 2019), q3's inside
q4's. A wrong answer is matched against the usual mistakes so that the message can say which one
it is.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from metalib import hypernet, maml, reweight
from metalib.data.sinusoid import SinusoidFamily
from metalib.grading import builders, feedback
from metalib.grading.question import (
    Case,
    Exercise,
    Mistake,
    Question,
    case,
    plain,
    raises,
)
from metalib.maml import MAMLConfig
from metalib.nets import MLP, Conv4, forward_with
from metalib.tasks import Episode

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


def leaves(net: nn.Module) -> Params:
    """Fresh leaf copies of the network's weights that require gradients."""
    return {k: p.detach().clone().requires_grad_() for k, p in net.named_parameters()}


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
    if model["kind"] == "sinusoid":
        return f"sinusoids, MLP 1-{'-'.join(map(str, model['hidden']))}-1, seed {model['seed']}"
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


def sinusoid(seed: int, hidden=(8,)) -> Spec:
    return {"kind": "sinusoid", "seed": seed, "hidden": list(hidden)}


# ------------------------------------------------------------------------- q1


def weights_inputs(model: Spec, data: Spec, lr: float, temperature: float) -> dict:
    """The arguments of ``softmax_example_weights(model, params, x, y, val_x, val_y, lr,
    temperature)``: a training batch of ``data["n"]`` and a validation batch of ``data["m"]``."""
    net = classifier(**model)
    x, y = batch(model, data["n"], data["seed"])
    val_x, val_y = batch(model, data["m"], data["seed"] + 1)
    return dict(
        model=net,
        params=leaves(net),
        x=x,
        y=y,
        val_x=val_x,
        val_y=val_y,
        lr=lr,
        temperature=temperature,
    )


def weights_and_graph(fn: Callable[..., Any], args: Mapping[str, Any], spec: Spec) -> dict:
    """The weights, and whether they come back detached."""
    out = fn(*args.values())
    return {"weights": plain(out), "detached": not getattr(out, "requires_grad", False)}


def meta_gradients(model, params, x, y, val_x, val_y, lr, start=0.0, on_train=False, mean=True):
    """g = ∂ CE(validation; θ'(ε)) / ∂ε at ε = ``start`` (a number or "1/n"), θ' Ren et al.'s
    look-ahead step (:func:`metalib.reweight.weighted_step`), CE the mean cross-entropy (the sum
    unless ``mean``), of the training batch if ``on_train``."""
    start = 1 / len(y) if start == "1/n" else start
    eps = torch.full(y.shape, start, dtype=x.dtype, requires_grad=True)
    fast = reweight.weighted_step(model, params, x, y, eps, lr)
    vx, vy = (x, y) if on_train else (val_x, val_y)
    loss = F.cross_entropy(forward_with(model, fast, vx), vy, reduction="mean" if mean else "sum")
    return torch.autograd.grad(loss, eps)[0]


def reference_softmax_example_weights(model, params, x, y, val_x, val_y, lr, temperature):
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    g = meta_gradients(model, params, x, y, val_x, val_y, lr)
    return torch.softmax(-g / temperature, dim=0).detach()


def _soft(then: Callable[[torch.Tensor, float], torch.Tensor], **how: Any) -> Callable:
    """A mistake: ``then(g, τ)``, g taken as :func:`meta_gradients` says with ``how``."""
    return lambda *a: then(meta_gradients(*a[:7], **how), a[7]).detach()


def _right(g: torch.Tensor, t: float) -> torch.Tensor:
    return torch.softmax(-g / t, dim=0)


def _naive(g: torch.Tensor, t: float) -> torch.Tensor:
    return torch.exp(-g / t) / torch.exp(-g / t).sum()


def _chapter(g: torch.Tensor, t: float) -> torch.Tensor:
    w = (-g).clamp(min=0)
    return w / w.sum() if w.sum() > 0 else w


def weights_case(model: Spec, n: int, m: int, lr: float, temperature: float, seed: int) -> Case:
    what = f"{n} training and {m} validation example{'s' * (m > 1)}, seed {seed}"
    label = f"{_describe(model)}, {what}, lr={lr}, temperature {temperature}"
    return case(
        label, model=model, data={"n": n, "m": m, "seed": seed}, lr=lr, temperature=temperature
    )


def weights_raises(temperature: float) -> Case:
    spec = {"model": linear(0), "data": {"n": 4, "m": 3, "seed": 0}, "lr": 0.5}
    label = f"temperature {temperature} (must be positive)"
    return raises(label, {**spec, "temperature": temperature}, {**spec, "temperature": 0.1})


_NOT_1 = lambda key: lambda s: s[key] != 1  # noqa: E731
_SAYS = {
    "overflow": "exp overflowed: exp(−g/τ) / Σ exp(−g/τ) gives inf / inf = nan for a small τ; "
    "use torch.softmax, which subtracts the largest entry first",
    "sign": "the sign is flipped: softmax(+g/τ) favours the examples that raise the validation "
    "loss",
    "times": "τ multiplied g instead of dividing it: softmax(−g·τ)",
    "no τ": "the temperature was left out (τ = 1)",
    "chapter": "these are the chapter's weights max(−g, 0) / Σ max(−g, 0), not the softmax",
    "sum": "g is m times too large: the validation loss was summed; take its mean (the softmax, "
    "unlike the chapter's normalisation, sees the scale of g)",
    "lr": "g is missing its factor lr: the look-ahead step θ − lr·∇ gives g_i = −lr ∇L_val·∇ℓ_i",
    "1/n": "g was taken at ε = 1/n: take it at ε = 0, where θ' = θ",
    "train": "the validation loss was computed on the training batch (x, y); use (val_x, val_y)",
    "graph": "the weights still carry a graph; return them detached (w.detach())",
}

Q1 = Question(
    "q1",
    "softmax_example_weights",
    2,
    weights_inputs,
    title="soft example weights: a softmax of the negative meta-gradients",
    reference=reference_softmax_example_weights,
    observe=weights_and_graph,
    mistakes=(
        Mistake(_SAYS["overflow"], _soft(_naive), lambda s: s["temperature"] < 1e-3),
        Mistake(_SAYS["sign"], _soft(lambda g, t: _right(-g, t))),
        Mistake(_SAYS["times"], _soft(lambda g, t: _right(g, 1 / t)), _NOT_1("temperature")),
        Mistake(_SAYS["no τ"], _soft(lambda g, t: _right(g, 1.0)), _NOT_1("temperature")),
        Mistake(_SAYS["chapter"], _soft(_chapter)),
        Mistake(_SAYS["sum"], _soft(_right, mean=False), lambda s: s["data"]["m"] > 1),
        Mistake(_SAYS["lr"], lambda *a: _soft(_right)(*a[:6], 1.0, a[7]), _NOT_1("lr")),
        Mistake(_SAYS["1/n"], _soft(_right, start="1/n")),
        Mistake(_SAYS["train"], _soft(_right, on_train=True)),
        Mistake(_SAYS["graph"], lambda *a: reference_softmax_example_weights(*a).requires_grad_()),
    ),
    rule="Expected w = softmax(−g / temperature) over the n examples, g_i = ∂L_val(θ'(ε))/∂ε_i "
    "at ε = 0, θ'(ε) = θ − lr ∇_θ Σ_i ε_i ℓ_i(θ), L_val the mean validation cross-entropy, "
    "detached",
    visible=(
        weights_case(mlp(0), 8, 6, lr=0.5, temperature=0.2, seed=0),
        weights_case(linear(1), 6, 4, lr=0.1, temperature=0.02, seed=1),
        weights_case(conv4(2, dtype="float32"), 6, 6, lr=0.2, temperature=1.0, seed=2),
        weights_case(mlp(0), 8, 6, lr=0.5, temperature=1e-4, seed=0),
        weights_raises(0.0),
    ),
)

# ------------------------------------------------------------------------- q2


def film_inputs(
    sizes: list[int],
    functions: int,
    points: int,
    seed: int,
    dtype="float64",
    widths: list[int] | None = None,
) -> dict:
    """The arguments of ``film_mlp(flat, gamma, beta, x, sizes)``: flat weights ``(P,)`` drawn
    as ``nn.Linear`` draws them, modulations γ around 1 and β around 0 ``(B, H)`` (or of the
    ``widths`` given, to be refused), inputs ``(B, n, d_in)``; every tensor requires gradients."""
    g = builders.generator(seed)
    pairs = list(zip(sizes[:-1], sizes[1:], strict=True))
    fan_in = torch.cat([torch.full((b * a + b,), float(a), dtype=torch.float64) for a, b in pairs])
    flat = (2 * torch.rand(len(fan_in), generator=g, dtype=torch.float64) - 1) * fan_in.rsqrt()
    h_gamma, h_beta = widths or [sum(sizes[1:-1])] * 2
    gamma = 1 + 0.5 * torch.randn(functions, h_gamma, generator=g, dtype=torch.float64)
    beta = 0.5 * torch.randn(functions, h_beta, generator=g, dtype=torch.float64)
    x = torch.randn(functions, points, sizes[0], generator=g, dtype=torch.float64)
    args = {"flat": flat, "gamma": gamma, "beta": beta, "x": x}
    args = {k: v.to(builders.dtype(dtype)).requires_grad_() for k, v in args.items()}
    return {**args, "sizes": list(sizes)}


def film_and_gradients(fn: Callable[..., Any], args: Mapping[str, Any], spec: Spec) -> dict:
    """The outputs, and their gradients along seeded directions with respect to the shared
    weights, γ and β (``None`` without a graph)."""
    out = fn(*args.values())
    wrt = {k: args[k] for k in ("flat", "gamma", "beta")}
    return {"out": plain(out), "gradients": builders.vjp(out, wrt, spec["seed"] + 1)}


def reference_film_mlp(flat, gamma, beta, x, sizes):
    hidden = sum(sizes[1:-1])
    if gamma.shape != (x.shape[0], hidden) or beta.shape != gamma.shape:
        raise ValueError(
            f"gamma and beta must both be (B, H) = ({x.shape[0]}, {hidden}): B functions, H the "
            f"hidden units of {tuple(sizes)}; got {tuple(gamma.shape)} and {tuple(beta.shape)}"
        )
    weights = hypernet.unflatten(flat.unsqueeze(0), sizes)  # checks flat's size
    h, start, layers = x, 0, len(sizes) - 1
    for i in range(layers):
        h = h @ weights[f"{2 * i}.weight"][0].T + weights[f"{2 * i}.bias"][0]
        if i < layers - 1:
            width = slice(start, start + sizes[i + 1])
            h = torch.relu(gamma[:, None, width] * h + beta[:, None, width])
            start += sizes[i + 1]
    return h


def _film(variant: str) -> Callable:
    """The FiLM network with one known mistake."""

    def film_mlp(flat, gamma, beta, x, sizes):
        weights = hypernet.unflatten(flat.unsqueeze(0), sizes)
        if variant == "detached":
            weights = {k: w.detach() for k, w in weights.items()}
        if variant == "swapped":
            gamma, beta = beta, gamma
        h, end, layers = x, sum(sizes[1:-1]), len(sizes) - 1
        start = 0 if variant != "reversed" else end
        for i in range(layers):
            w, b = weights[f"{2 * i}.weight"][0], weights[f"{2 * i}.bias"][0]
            if i == layers - 1:
                h = h @ w.T + b
                return torch.relu(h) if variant == "relu at the end" else h
            n = sizes[i + 1]
            width = slice(start, start + n) if variant != "reversed" else slice(start - n, start)
            start += n if variant != "reversed" else -n
            gm, bt = gamma[:, None, width], beta[:, None, width]
            if variant == "after":
                h = gm * torch.relu(h @ w.T + b) + bt
            elif variant == "bias after":
                h = torch.relu(gm * (h @ w.T) + b + bt)
            else:
                gm = 1 + gm if variant == "residual" else gm
                h = torch.relu(gm * (h @ w.T + b) + bt)

    return film_mlp


def film_case(sizes: list[int], functions: int, points: int, seed: int, dtype="float64") -> Case:
    label = (
        f"MLP {'-'.join(map(str, sizes))} shared by {functions} functions, {points} points "
        f"each, {dtype}, seed {seed}"
    )
    return case(label, sizes=sizes, functions=functions, points=points, seed=seed, dtype=dtype)


def film_raises(kind: str) -> Case:
    spec = {"sizes": [1, 4, 3, 1], "functions": 2, "points": 5, "seed": 0}
    widths, label = {
        "gamma": ([6, 7], "gamma (2, 6) for the 7 hidden units of 1-4-3-1"),
        "beta": ([7, 4], "beta (2, 4) for gamma (2, 7)"),
    }[kind]
    return raises(label, {**spec, "widths": widths}, spec)


_DEEP = lambda s: len(s["sizes"]) > 3  # noqa: E731  (two hidden layers or more)
_FILM = {
    "swapped": "γ and β are swapped: γ scales, β shifts",
    "after": "the modulation came after the activation; FiLM modulates the pre-activation: "
    "relu(γ ⊙ (W h + b) + β)",
    "bias after": "γ scaled W h but not the bias b; scale the whole pre-activation W h + b",
    "residual": "this scales by 1 + γ; the question's γ is the scale itself",
    "reversed": "the layers took their γ and β from the wrong end: the first hidden layer's "
    "units are columns 0 .. H_1 − 1",
    "relu at the end": "the output layer has a relu too; it is linear, as in functional_mlp",
    "detached": "the outputs carry no gradient back to the shared weights flat (detached); "
    "they are meta-learned with the hypernetwork",
}

Q2 = Question(
    "q2",
    "film_mlp",
    2,
    film_inputs,
    title="FiLM: one shared MLP, modulated per function",
    reference=reference_film_mlp,
    observe=film_and_gradients,
    mistakes=tuple(
        Mistake(says, _film(k), _DEEP if k == "reversed" else None) for k, says in _FILM.items()
    ),
    rule="Expected, for each hidden layer l (its units' columns of gamma and beta in layer "
    "order), h = relu(γ_l ⊙ (h W_l^T + b_l) + β_l), and a linear output layer, the weights split "
    "from flat in the order of hypernet.mlp_shapes",
    visible=(
        film_case([1, 8, 1], 3, 5, seed=0),
        film_case([2, 5, 5, 3], 2, 4, seed=1),
        film_case([1, 6, 4, 1], 4, 3, seed=2, dtype="float32"),
        film_raises("gamma"),
    ),
)

# ------------------------------------------------------------------------- q3


def layerwise_inputs(
    model: Spec,
    tasks: int,
    shots: int,
    queries: int,
    steps: int,
    order: str = "shuffled",
    bad: str = "",
) -> dict:
    """The arguments of ``layerwise_meta_gradient(model, params, log_lrs, episode, loss_fn,
    steps)``: θ (leaves requiring gradients) and one log step size s_k per tensor (a 0-d leaf;
    e^s uniform in [0.002, 0.03] for sinusoids, [0.05, 0.5] for classifiers), listed in another
    order than θ if ``order == "shuffled"``; ``bad``: ``"missing"`` (one name left out) or
    ``"full"`` (one s_k of its weight's shape), to be refused."""
    seed = model["seed"]
    g = builders.generator(seed + 1)
    if model["kind"] == "sinusoid":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net: nn.Module = MLP(1, 1, tuple(model["hidden"])).double()
        d = SinusoidFamily().sample(tasks, shots, queries, g, torch.float64)
        episode = Episode(d["support_x"], d["support_y"], d["query_x"], d["query_y"])
        loss_fn, low, high = F.mse_loss, 0.002, 0.03
    else:
        net = classifier(**model)
        x, y = batch(model, tasks * (shots + queries), seed + 2)
        x, y = x.view(tasks, shots + queries, *x.shape[1:]), y.view(tasks, -1)
        episode = Episode(x[:, :shots], y[:, :shots], x[:, shots:], y[:, shots:])
        loss_fn, low, high = F.cross_entropy, 0.05, 0.5
    params = leaves(net)
    names = list(params)
    if order == "shuffled":
        names = [names[i] for i in torch.randperm(len(names), generator=g).tolist()]
    dtype = next(iter(params.values())).dtype
    alpha = low + (high - low) * torch.rand(len(names), generator=g, dtype=torch.float64)
    log_lrs = {k: a.log().to(dtype).requires_grad_() for k, a in zip(names, alpha, strict=True)}
    if bad == "missing":
        del log_lrs[names[-1]]
    elif bad == "full":
        log_lrs[names[-1]] = torch.full_like(params[names[-1]], -3.0, requires_grad=True)
    return dict(
        model=net, params=params, log_lrs=log_lrs, episode=episode, loss_fn=loss_fn, steps=steps
    )


def reference_layerwise_meta_gradient(model, params, log_lrs, episode, loss_fn, steps):
    maml.check_step_sizes(params, log_lrs)  # the same names; each broadcasts to its weight
    if any(s.dim() != 0 for s in log_lrs.values()):
        raise ValueError("log_lrs holds one step size per tensor: each entry must be 0-d")
    lrs = {k: s.exp() for k, s in log_lrs.items()}
    config = MAMLConfig(steps, 1.0, vectorise=False, fast_loop=False)  # inner_lr: lrs instead
    loss = maml.task_losses(model, params, episode, loss_fn, replace(config, inner_lr=lrs)).mean()
    names = list(params)
    grads = torch.autograd.grad(loss, [log_lrs[k] for k in names], allow_unused=True)
    return {
        k: torch.zeros_like(log_lrs[k]) if d is None else d.detach()
        for k, d in zip(names, grads, strict=True)
    }, loss.detach()


def _meta(variant: str) -> Callable:
    """q3 with one known mistake."""

    def layerwise_meta_gradient(model, params, log_lrs, episode, loss_fn, steps):
        names = list(params)
        if variant == "by position":
            log_lrs = dict(zip(names, log_lrs.values(), strict=True))
        lrs = {k: s if variant == "no exp" else s.exp() for k, s in log_lrs.items()}
        steps = 1 if variant == "one step" else steps
        cfg = MAMLConfig(steps, 1.0, variant == "first order", vectorise=False, fast_loop=False)
        loss = maml.task_losses(model, params, episode, loss_fn, replace(cfg, inner_lr=lrs))
        loss = loss.sum() if variant == "sum" else loss.mean()
        wrt = [(lrs if variant == "alpha" else log_lrs)[k] for k in names]
        grads = torch.autograd.grad(loss, wrt)
        return {k: d.detach() for k, d in zip(names, grads, strict=True)}, loss.detach()

    return layerwise_meta_gradient


def layerwise_case(
    model: Spec, tasks: int, shots: int, queries: int, steps: int, order: str = "shuffled"
) -> Case:
    what = f"{tasks} task{'s' * (tasks > 1)} of {shots} support and {queries} query points"
    label = f"{_describe(model)}, {what}, {steps} inner step{'s' * (steps > 1)}"
    label += " (log_lrs lists the names in another order)" if order == "shuffled" else ""
    spec = dict(model=model, tasks=tasks, shots=shots, queries=queries, steps=steps)
    return case(label, **spec, order=order)


def layerwise_raises(bad: str) -> Case:
    spec = {"model": linear(0), "tasks": 2, "shots": 3, "queries": 3, "steps": 1}
    label = {
        "missing": "log_lrs has no entry for 'head.bias' (the names differ)",
        "full": "log_lrs['head.bias'] has the bias's shape (one step size per tensor: 0-d)",
    }[bad]
    return raises(label, {**spec, "order": "same", "bad": bad}, {**spec, "order": "same"})


_STEPS = lambda s: s["steps"] > 1  # noqa: E731
_LAYERWISE = {
    "alpha": ("these are the gradients with respect to α_k = exp(s_k); by the chain rule "
              "∂L/∂s_k = α_k ∂L/∂α_k", None),
    "no exp": ("the step size used was s_k itself; it is α_k = exp(s_k)", None),
    "by position": ("the log step sizes were paired with params by position; look each up by "
                    "its name", lambda s: s.get("order") == "shuffled"),
    "first order": ("this is first order: the inner gradients were detached (or computed "
                    "without create_graph=True); from the second step on, ∇L(θ_1) depends on s "
                    "through θ_1", _STEPS),
    "one step": ("only one inner step was taken; take `steps` of them", _STEPS),
    "sum": ("the task losses were summed; take their mean", lambda s: s["tasks"] > 1),
}  # fmt: skip

Q3 = Question(
    "q3",
    "layerwise_meta_gradient",
    3,
    layerwise_inputs,
    title="the meta-gradient of per-layer log step sizes",
    reference=reference_layerwise_meta_gradient,
    what="(grads, loss)",
    mistakes=tuple(Mistake(says, _meta(k), when) for k, (says, when) in _LAYERWISE.items()),
    rule="Expected ({k: ∂L/∂s_k}, L), L the mean over tasks of the query loss after `steps` "
    "inner steps θ_k ← θ_k − exp(s_k) ∇_k loss_fn(support), second order",
    visible=(
        layerwise_case(sinusoid(0), 3, 5, 5, 1),
        layerwise_case(mlp(1), 2, 4, 4, 2),
        layerwise_case(sinusoid(2, hidden=(6, 6)), 2, 4, 6, 3),
        layerwise_raises("missing"),
    ),
)

# ------------------------------------------------------------------------- q4


def regression_setup(
    seed: int,
    dim: int,
    scale: float,
    meta_steps: int,
    n_tasks: int,
    k_shot: int = 8,
    n_queries: int = 8,
    n_eval: int = 50,
) -> tuple:
    """The experiment's fixed model and tasks, all float64: linear regression ``MLP(dim, 1,
    hidden=())`` initialised from ``torch.manual_seed(seed)``, its weights θ (leaves), then,
    from a generator seeded with ``seed``, an evaluation Episode of ``n_eval`` tasks and
    ``meta_steps`` training Episodes of ``n_tasks``. A task is y = x·w + b + 0.1·noise with
    w ~ N(0, I), b ~ N(0, 1), inputs x ~ N(0, scale² I), ``k_shot`` support and ``n_queries``
    query points.

    Returns:
        ``(model, params, episodes, eval_episode)``.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MLP(dim, 1, hidden=()).double()
    params = leaves(model)  # θ requires gradients, as in q3, but stays fixed
    g, n = builders.generator(seed), k_shot + n_queries

    def episode(tasks: int) -> Episode:
        w = torch.randn(tasks, dim, 1, generator=g, dtype=torch.float64)
        b = torch.randn(tasks, 1, 1, generator=g, dtype=torch.float64)
        x = scale * torch.randn(tasks, n, dim, generator=g, dtype=torch.float64)
        y = x @ w + b + 0.1 * torch.randn(tasks, n, 1, generator=g, dtype=torch.float64)
        return Episode(x[:, :k_shot], y[:, :k_shot], x[:, k_shot:], y[:, k_shot:])

    eval_episode = episode(n_eval)
    return model, params, [episode(n_tasks) for _ in range(meta_steps)], eval_episode


def lr_inputs(
    seed: int,
    dim: int,
    scale: float,
    meta_steps: int,
    n_tasks: int,
    alpha0: float,
    meta_lr: float,
    inner_steps: int,
) -> dict:
    """The arguments of ``learn_inner_lr(model, params, episodes, eval_episode, alpha0, meta_lr,
    inner_steps)``: :func:`regression_setup` with 8 support and 8 query points, 50 eval tasks."""
    model, params, episodes, eval_episode = regression_setup(seed, dim, scale, meta_steps, n_tasks)
    settings = dict(alpha0=alpha0, meta_lr=meta_lr, inner_steps=inner_steps)
    return dict(
        model=model, params=params, episodes=episodes, eval_episode=eval_episode, **settings
    )


def reference_learn_inner_lr(model, params, episodes, eval_episode, alpha0, meta_lr, inner_steps):
    """Adam on s = log α, the gradient from q3 with every tensor's s_k a copy of s."""
    s = torch.tensor(math.log(alpha0), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.Adam([s], lr=meta_lr)

    def meta_loss(episode: Episode) -> tuple[torch.Tensor, float]:
        copies = {k: s.detach().clone().requires_grad_() for k in params}
        grads, loss = reference_layerwise_meta_gradient(
            model, params, copies, episode, F.mse_loss, inner_steps
        )
        return sum(grads.values()), loss.item()  # ∂L/∂s = Σ_k ∂L/∂s_k

    before, losses = meta_loss(eval_episode)[1], []
    for episode in episodes:
        s.grad, loss = meta_loss(episode)
        losses.append(loss)
        optimizer.step()
    after = meta_loss(eval_episode)[1]
    return {
        "alpha": s.exp().item(),
        "train losses": losses,
        "eval loss before": before,
        "eval loss after": after,
    }


def _learn(variant: str) -> Callable:
    """The experiment with one known mistake."""

    def learn_inner_lr(model, params, episodes, eval_episode, alpha0, meta_lr, inner_steps):
        theta = {
            k: p.detach().clone().requires_grad_(variant == "theta") for k, p in params.items()
        }
        start = alpha0 if variant == "alpha" else math.log(alpha0)
        s = torch.tensor(start, dtype=torch.float64, requires_grad=True)
        kind = torch.optim.SGD if variant == "sgd" else torch.optim.Adam
        optimizer = kind([s, *theta.values()] if variant == "theta" else [s], lr=meta_lr)
        cfg = MAMLConfig(inner_steps, 1.0, variant == "first order", False, False)

        def meta_loss(episode: Episode) -> torch.Tensor:
            lrs = dict.fromkeys(theta, s if variant == "alpha" else s.exp())
            return maml.task_losses(
                model, theta, episode, F.mse_loss, replace(cfg, inner_lr=lrs)
            ).mean()

        before, losses = meta_loss(eval_episode).item(), []
        for episode in episodes:
            loss = meta_loss(episode)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        after = before if variant == "after at start" else meta_loss(eval_episode).item()
        alpha = s.item() if variant in ("log", "alpha") else s.exp().item()
        keys = ("alpha", "train losses", "eval loss before", "eval loss after")
        return dict(zip(keys, (alpha, losses, before, after), strict=True))

    return learn_inner_lr


# Measured with `.venv/bin/python -c "from metalib.grading.ex08_meta_knowledge import
# lr_spread; print(lr_spread())"`: over seeds 0-4 (the first visible case's spec) the learned
# α's standard deviation is 30% of its mean, that of the training losses 14% or more (per
# meta-step), of the eval losses before and after 14% and 19%. Right answers on the same tasks
# agree to about 1e-15 in float64 (a vmapped inner loop, one s differentiated directly, or
# question 3's copies), to 1e-7 when the losses come back as float32 tensors, to 1e-6 with s
# itself in float32; every known mistake is 33% or more away in some number on every case where
# it applies. A relative 1e-4 admits the first and refuses the second. The claims of
# :func:`lr_claims` held on seeds 0-99 of every case's configuration (the spec of each case with
# its seed replaced): the learned α lowered the eval loss by 37% or more, rose from α0 = 0.001
# or 0.003 (to 0.028 or more) and fell from α0 = 1.5 (to 0.65 or less).
LR_TOLERANCE = {"rtol": 1e-4, "atol": 1e-9}


def lr_spread(seeds=range(5), **spec: Any) -> dict[str, float]:
    """The reference experiment's spread over ``seeds`` for the first visible case's spec
    (``spec`` overrides it): each number's standard deviation over the seeds relative to its
    mean (for the training losses, the smallest over the meta-steps)."""
    spec = {**Q4.visible[0].kwargs, **spec}
    runs = [reference_learn_inner_lr(**lr_inputs(**{**spec, "seed": s})) for s in seeds]
    found = {}
    for key in ("alpha", "train losses", "eval loss before", "eval loss after"):
        v = torch.tensor([r[key] for r in runs])
        found[key] = round((v.std(0) / v.mean(0)).min().item(), 3)
    return found


def lr_claims(spec: Spec, got: Any) -> str | None:
    """What held on every seed tried, checked on ``got``; ``None`` when it holds, or when
    ``got`` is not shaped as asked (the comparison says so)."""
    try:
        alpha, before, after = (
            float(got[k]) for k in ("alpha", "eval loss before", "eval loss after")
        )
    except (KeyError, TypeError, ValueError):
        return None
    if not after < before:
        return "the learned α should lower the loss on the evaluation tasks: after ≥ before"
    if spec["alpha0"] <= 0.01 and not alpha > spec["alpha0"]:
        return f"from α0 = {spec['alpha0']}, far too small to adapt, α should rise"
    if spec["alpha0"] >= 1 and not alpha < spec["alpha0"]:
        return f"from α0 = {spec['alpha0']}, a step that overshoots, α should fall"
    return None


def lr_case(
    seed: int,
    dim: int,
    scale: float,
    meta_steps: int,
    n_tasks: int,
    alpha0: float,
    inner_steps: int,
) -> Case:
    label = (
        f"linear regression in {dim}-d, inputs of scale {scale}, {meta_steps} meta-steps of "
        f"{n_tasks} tasks, α0 = {alpha0}, {inner_steps} inner step{'s' * (inner_steps > 1)}, "
        f"seed {seed}"
    )
    spec = dict(seed=seed, dim=dim, scale=scale, meta_steps=meta_steps, n_tasks=n_tasks)
    return case(label, **spec, alpha0=alpha0, meta_lr=0.2, inner_steps=inner_steps)


_INNER = lambda s: s["inner_steps"] > 1  # noqa: E731
_LEARN = {
    "log": "this is s = log α; return α = exp(s)",
    "alpha": "Adam updated α itself; it updates s = log α (α = exp(s) stays positive)",
    "sgd": "this is plain SGD on s; use torch.optim.Adam([s], lr=meta_lr)",
    "theta": "θ was meta-trained too; only s is learned, θ stays as given",
    "first order": "the inner loop is first order; keep the graph of the inner gradients",
    "after at start": "'eval loss after' was computed with α0; use the learned α",
}

Q4 = Question(
    "q4",
    "learn_inner_lr",
    3,
    lr_inputs,
    title="experiment: learn the inner step size",
    reference=reference_learn_inner_lr,
    observe=builders.numbers,
    claims=lr_claims,
    what="the experiment's numbers",
    tolerance=LR_TOLERANCE,
    mistakes=tuple(
        Mistake(says, _learn(k), _INNER if k == "first order" else None)
        for k, says in _LEARN.items()
    ),
    rule="Expected s = log(alpha0) (float64); for each episode in order, its mean query MSE "
    "after inner_steps steps θ − exp(s)∇ (second order) appended to 'train losses', then an Adam "
    "step on s; 'eval loss before'/'after': that loss on eval_episode at α0 and at the learned "
    "α = exp(s)",
    visible=(
        lr_case(0, 4, 1.0, 40, 5, alpha0=0.001, inner_steps=1),
        lr_case(1, 4, 1.0, 40, 5, alpha0=0.001, inner_steps=1),
    ),
)

EXERCISE = Exercise("08_meta_knowledge", (Q1, Q2, Q3, Q4))


def check(name: str, fn: Callable[..., Any]) -> feedback.Verdict:
    """Run the visible cases of question ``name`` on ``fn`` and print the verdict."""
    return feedback.check(EXERCISE, name, fn)
