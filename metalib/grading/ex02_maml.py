"""Exercise 02_maml: MAML variants the chapter does not show, and an experiment.

The chapter shows MAML's inner loop (:func:`metalib.maml.adapt`), its meta-gradient, first-order
MAML and Reptile's update; the questions ask for what it does not show. q1 ``anil_inner_loop``:
ANIL's inner loop (Raghu et al., 2020), where only the head takes steps and the body passes
through unchanged, yet still in the graph. q2 ``lslr_meta_gradient``: the second-order
meta-gradient with respect to the initial weights *and* to learned inner step sizes, one per
parameter tensor and per inner step (MAML++'s LSLR, Antoniou et al., 2019). q3 ``reptile_adam``:
Reptile whose inner optimiser is several steps of Adam, a fresh Adam per task (Nichol et al.,
2018). q4 ``inner_lr_sweep``: the experiment, the query loss after adapting every weight or the
head only, for each inner step size and number of steps, from a MAML initialisation.

What the questions check. q1: the adapted weights and their graph back to ``params`` (through a
vector-Jacobian product, :func:`adapted_and_gradient`): the body's tensors must be ``params``'
own (an identity in the graph), and the head's steps must depend on the body through the
features and on the head through the inner gradients (second order). q2: both gradients, and a
``ValueError`` for step sizes that do not match ``params``. q3: the new θ, and a ``ValueError``
for inputs and targets of different numbers of tasks. q4: the loss grids within 1% (see
:data:`SWEEP_TOLERANCE`) and the best settings exactly, after claims that hold on every seed.
No question may change its inputs in place (the network's own weights included).

How cases are built. A spec names a network and a task as plain data (:func:`network`,
:func:`task`): a 2- to 5-way :class:`~metalib.nets.Conv4` with cross-entropy on seeded images
(:func:`metalib.grading.builders.tiny_conv4`, :func:`~metalib.grading.builders.tiny_support`),
a sinusoid :class:`~metalib.nets.MLP` with the squared error, or the linear model y = w x + b
on one support and one query point. ``params`` are leaf copies of the weights, shifted off the
model's own by ``shift`` times seeded noise where a case says so (so that running the model's own
weights shows in the values). q4's network is an MLP meta-trained by MAML (:func:`maml_init`,
cached per seed, one thread so that the sandbox and the grader train the same weights).

Tolerances: 1e-9 (absolute) and 1e-7 (relative) in float64, 1e-5 and 1e-4 otherwise
(:func:`metalib.grading.question.difference`); q4's, :data:`SWEEP_TOLERANCE`.

References: :func:`reference_anil_inner_loop`, :func:`reference_lslr_meta_gradient` (on
:func:`metalib.maml.adapt`), :func:`reference_reptile_adam` (``torch.optim.Adam``, then
:func:`metalib.reptile.update`), :func:`reference_inner_lr_sweep`. A wrong answer is matched
against the usual mistakes (first order where second order was asked, the body adapted too or
cut from the graph, one step size for every step, SGD or a shared Adam for the tasks, no bias
correction, diverged runs left as they are...) so that the message can say which one it is.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import grad, vmap

from metalib import maml, reptile
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
from metalib.nets import MLP, forward_with
from metalib.tasks import Episode

Params = dict[str, torch.Tensor]
Spec = dict[str, Any]
HEAD = "head."  # the names of the head's weights start with it (MLP and Conv4 alike)

# ------------------------------------------------------------------------- networks and tasks


def network(kind: str, **spec: Any) -> nn.Module:
    """The network of a case: ``conv4`` (:func:`~metalib.grading.builders.tiny_conv4`),
    ``mlp`` (1 input, 1 output, ReLU layers ``hidden``) or ``linear`` (y = w x + b, float64)."""
    if kind == "conv4":
        return builders.tiny_conv4(**spec)
    if kind == "mlp":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(spec["seed"])
            net = MLP(in_features=1, out_features=1, hidden=tuple(spec["hidden"]))
        return net.to(builders.dtype(spec.get("dtype", "float32")))
    net = MLP(in_features=1, out_features=1, hidden=()).double()
    with torch.no_grad():
        net.head.weight.fill_(spec["w"])
        net.head.bias.fill_(spec["b"])
    return net


def task(model: Spec, data: Spec) -> tuple[torch.Tensor, ...]:
    """One task's ``(support_x, support_y, query_x, query_y)``: the tensors ``data`` holds, or
    seeded images and labels (Conv4), or one sinusoid task, in the network's dtype."""
    if "support_x" in data:
        return data["support_x"], data["support_y"], data["query_x"], data["query_y"]
    dtype = model.get("dtype", "float32")
    if model["kind"] == "conv4":
        n_way, size = data["n_way"], model.get("image_size", 16)
        sx, sy = builders.tiny_support(n_way, data["k_shot"], data["seed"], size, dtype)
        qx, qy = builders.tiny_support(n_way, data["q_queries"], data["seed"] + 1, size, dtype)
        return sx, sy, qx, qy
    sampled = SinusoidFamily().sample(
        1, data["k_shot"], data["q_queries"], data["seed"], builders.dtype(dtype)
    )
    return tuple(sampled[k][0] for k in ("support_x", "support_y", "query_x", "query_y"))


def weights(net: nn.Module, shift: float = 0.0, seed: int = 0, subset: str = "all") -> Params:
    """Leaf copies of ``net``'s weights (all, or the head's only), each moved off the model's own
    by ``shift`` times seeded noise, requiring gradients."""
    own = {
        k: p.detach().clone()
        for k, p in net.named_parameters()
        if subset == "all" or k.startswith(HEAD)
    }
    noise = builders.directions(own, seed + 100)
    return {k: (w + shift * noise[k]).requires_grad_() for k, w in own.items()}


def _loss_fn(model: Spec) -> Callable:
    return F.cross_entropy if model["kind"] == "conv4" else F.mse_loss


def adapted_and_gradient(fn: Callable[..., Any], args: Mapping[str, Any], spec: Spec) -> dict:
    """The adapted weights, and the gradient of ``Σ_k <adapted[k], v[k]>`` (seeded ``v``) with
    respect to ``params``: ``None`` when they carry no graph at all."""
    out = fn(*args.values())
    return {"adapted": plain(out), "gradient to params": builders.vjp(out, args["params"])}


def describe(model: Spec, data: Spec) -> str:
    if model["kind"] == "linear":
        return f"y = w·x + b (w={model['w']}, b={model['b']}), one support and one query point"
    dtype = model.get("dtype", "float32")
    if model["kind"] == "conv4":
        return (
            f"Conv4 ({model['hidden']} channels, {model['image_size']}x{model['image_size']}), "
            f"{data['n_way']}-way {data['k_shot']}-shot, {data['q_queries']} queries per class, "
            f"{dtype}, seed {data['seed']}"
        )
    hidden = "-".join(map(str, model["hidden"]))
    return (
        f"MLP {hidden} on a sinusoid, {data['k_shot']} support points, {dtype}, seed {data['seed']}"
    )


def conv4(seed: int, n_way: int = 3, hidden: int = 4, size: int = 16, dtype="float64") -> Spec:
    return dict(kind="conv4", seed=seed, n_way=n_way, hidden=hidden, image_size=size, dtype=dtype)


def mlp(seed: int, hidden: tuple[int, ...] = (8, 8), dtype: str = "float64") -> Spec:
    return {"kind": "mlp", "seed": seed, "hidden": list(hidden), "dtype": dtype}


LINEAR = {"kind": "linear", "w": 0.5, "b": -0.2}
HAND = "the hand-derived example"


def linear_data() -> dict[str, torch.Tensor]:
    """One support point (2, 1) and one query point (-1, 0.5), as in ``tests/test_maml.py``."""
    t = lambda v: torch.tensor([[v]], dtype=torch.float64)  # noqa: E731
    return {"support_x": t(2.0), "support_y": t(1.0), "query_x": t(-1.0), "query_y": t(0.5)}


def images(n_way: int, k_shot: int, q_queries: int, seed: int) -> Spec:
    return {"n_way": n_way, "k_shot": k_shot, "q_queries": q_queries, "seed": seed}


def points(k_shot: int, q_queries: int, seed: int) -> Spec:
    return {"k_shot": k_shot, "q_queries": q_queries, "seed": seed}


def task_case(model: Spec, data: Spec, note: str = "", **spec: Any) -> Case:
    """A case of q1 or q2: a network, a task, and the rest of the question's spec."""
    if model["kind"] == "conv4":
        model = {**model, "n_way": data["n_way"]}  # the head has one output per class
    said = {"lr": "lr={}", "steps": "steps={}", "shift": "params off the model's own by {}"}
    extra = [said[k].format(v) for k, v in spec.items() if k in said and (v or k == "steps")]
    label = ", ".join([describe(model, data), *extra])
    label += ", params of the head only" if spec.get("subset") == "head" else ""
    if "spread" in spec:  # q2's step sizes
        spread = spec["spread"]
        label += (
            ", every step size = lr" if spread == 0 else f", step sizes in lr·(1 ± {spread / 2})"
        )
    return case(label + (f" ({note})" if note else ""), model=model, data=data, **spec)


_NO_GRAPH = (
    "the values are right, but the adapted weights carry no graph back to params (they were "
    "detached, or computed under torch.no_grad()); MAML differentiates through the inner loop, so "
    "compute them from params with differentiable operations"
)
_FIRST_ORDER_LOOP = (
    "the values are right, but it is first order, as if the inner gradients were constants "
    "(torch.autograd.grad without create_graph=True, or .detach()), so a meta-gradient through "
    "these weights would miss the second-order (Hessian) term; keep the graph of the inner "
    "gradients"
)
_STEPS = lambda s: s["steps"] > 0  # noqa: E731  (where a step makes a difference)

# ------------------------------------------------------------------------- q1: ANIL


def anil_inputs(model: Spec, data: Spec, lr: float, steps: int, shift: float = 0.0) -> dict:
    """The arguments of ``anil_inner_loop(model, params, x, y, loss_fn, lr, steps)``: ``params``
    holds every weight of the model, shifted off its own by ``shift``."""
    net = network(**model)
    sx, sy, _, _ = task(model, data)
    params = weights(net, shift, data.get("seed", 0))
    return dict(model=net, params=params, x=sx, y=sy, loss_fn=_loss_fn(model), lr=lr, steps=steps)


def _anil(model, params, x, y, loss_fn, lr, steps, variant="") -> Params:
    """ANIL's inner loop, or one known mistake in it (``variant``)."""
    if variant == "all":
        return maml.adapt(model, params, x, y, loss_fn, steps, lr)
    body = {k: w for k, w in params.items() if not k.startswith(HEAD)}
    head = {k: w for k, w in params.items() if k.startswith(HEAD)}
    seen = {k: w.detach() for k, w in body.items()} if variant == "features detached" else body
    if variant == "model's body":
        seen = {}  # forward_with falls back to the model's own weights

    def support_loss(h: Params) -> torch.Tensor:
        return loss_fn(forward_with(model, {**seen, **h}, x), y)

    for _ in range(steps):
        grads = grad(support_loss)(head)
        if variant == "first order":
            grads = {k: g.detach() for k, g in grads.items()}
        head = {k: w - lr * grads[k] for k, w in head.items()}
    if variant in ("body detached", "no graph"):
        body = {k: w.detach() for k, w in body.items()}
    if variant == "no graph":
        head = {k: w.detach() for k, w in head.items()}
    return {k: body[k] if k in body else head[k] for k in params}


def reference_anil_inner_loop(model, params, x, y, loss_fn, lr, steps):
    return _anil(model, params, x, y, loss_fn, lr, steps)


def _anil_wrong(variant: str = "", steps: int = 0, lr: float = 1.0) -> Callable:
    def anil_inner_loop(model, params, x, y, loss_fn, rate, n):
        return _anil(model, params, x, y, loss_fn, lr * rate, n + steps, variant)

    return anil_inner_loop


_BODY_MOVED = (
    "the body moved too: this is MAML's inner loop; ANIL steps the head's weights (names starting "
    "with 'head.') only"
)
_MODEL_BODY = (
    "the body ran on the model's own weights, not on those of params; run the model on params' "
    "body and the current head, functional_call(model, {**body, **head}, (x,))"
)
_FEATURES_DETACHED = (
    "the values are right, but the head's steps do not depend on params' body (the features were "
    "computed from detached weights, or from the model's own): the body's meta-gradient would "
    "miss how the body shapes the head's adaptation; compute the features from params' body "
    "tensors, without detaching them"
)
_BODY_CUT = (
    "the values are right, but the body's weights come back cut from the graph (detached or "
    "copied): ANIL leaves them unchanged, yet the meta-gradient still flows to them; return "
    "params' own tensors"
)

Q1 = Question(
    "q1",
    "anil_inner_loop",
    3,
    anil_inputs,
    title="ANIL's inner loop: only the head adapts, the body stays in the graph",
    reference=reference_anil_inner_loop,
    observe=adapted_and_gradient,
    mistakes=(
        Mistake(_BODY_MOVED, _anil_wrong("all"), _STEPS),
        Mistake("no step was taken: these are the values of params", lambda m, p, *_: dict(p)),
        Mistake("these are the weights after one step fewer than asked", _anil_wrong(steps=-1)),
        Mistake("these are the weights after one step more than asked", _anil_wrong(steps=1)),
        Mistake("this is gradient ascent; step against the gradient", _anil_wrong(lr=-1), _STEPS),
        Mistake(_MODEL_BODY, _anil_wrong("model's body"), lambda s: s["shift"] > 0),
        Mistake(_FIRST_ORDER_LOOP, _anil_wrong("first order"), _STEPS),
        Mistake(_FEATURES_DETACHED, _anil_wrong("features detached"), _STEPS),
        Mistake(_BODY_CUT, _anil_wrong("body detached")),
        Mistake(_NO_GRAPH, _anil_wrong("no graph")),
    ),
    rule="Every name of params comes back: the body's tensors as they are, the head's after "
    "`steps` steps h ← h − lr·∇_h loss_fn(model run on params' body and h, with x, y), with the "
    "inner gradients' graph kept ('gradient to params': that of Σ_k <adapted[k], v[k]>, v random)",
    visible=(
        task_case(mlp(1), points(5, 5, seed=1), lr=0.05, steps=3, shift=0.1),
        task_case(conv4(0), images(3, 2, 2, seed=0), lr=0.4, steps=1, shift=0.0),
        task_case(conv4(2, dtype="float32"), images(3, 1, 2, seed=2), lr=0.4, steps=2, shift=0.05),
    ),
)

# ------------------------------------------------------------------------- q2: LSLR


def lslr_inputs(
    model: Spec,
    data: Spec,
    lr: float,
    steps: int,
    subset: str = "all",
    short: str | None = None,
    missing: str | None = None,
    spread: float = 1.0,
) -> dict:
    """The arguments of ``lslr_meta_gradient(model, params, lrs, support_x, support_y, query_x,
    query_y, loss_fn)``: ``lrs[name]`` holds ``steps`` seeded step sizes in lr·(1 ± spread/2);
    the one of ``short`` has a step fewer, and ``missing`` has none (cases to refuse)."""
    net = network(**model)
    sx, sy, qx, qy = task(model, data)
    params = weights(net, 0.0, data.get("seed", 0), subset)
    g = builders.generator(data.get("seed", 0) + 7)
    lrs = {
        k: lr
        * (1 + spread * (torch.rand(steps - (k == short), generator=g, dtype=torch.float64) - 0.5))
        for k in params
        if k != missing
    }
    lrs = {k: a.to(params[k].dtype).requires_grad_() for k, a in lrs.items()}
    args = dict(model=net, params=params, lrs=lrs, support_x=sx, support_y=sy, query_x=qx)
    return {**args, "query_y": qy, "loss_fn": _loss_fn(model)}


def inner_steps(params: Params, lrs: Params) -> int:
    """The number of inner steps ``lrs`` gives: one 1-D tensor per name of ``params``, all of
    the same length.

    Raises:
        ValueError: the names differ, or a tensor is not 1-D, or the lengths differ.
    """
    if set(lrs) != set(params):
        raise ValueError(f"lrs must have the names of params, {sorted(params)}; got {sorted(lrs)}")
    lengths = {k: tuple(a.shape) for k, a in lrs.items()}
    if len(set(lengths.values())) != 1 or len(next(iter(lengths.values()))) != 1:
        raise ValueError(f"lrs must be 1-D tensors of one length (one per step), got {lengths}")
    return next(iter(lengths.values()))[0]


def _lslr(model, params, lrs, sx, sy, qx, qy, loss_fn, variant="") -> tuple[Params, Params]:
    """The reference, or one known mistake (``variant``)."""
    steps = inner_steps(params, lrs)
    fast = params
    for s in range(0 if variant == "at theta" else steps):
        rates = {k: lrs[k][0 if variant == "first rate" else s] for k in fast}
        if variant == "constant rates":
            rates = {k: a.detach() for k, a in rates.items()}
        if variant == "ascent":
            rates = {k: -a for k, a in rates.items()}
        fast = maml.adapt(model, fast, sx, sy, loss_fn, 1, rates, variant == "first order")
    loss = loss_fn(forward_with(model, fast, qx), qy)
    wrt = fast if variant == "wrt adapted" else params
    names = list(params)
    found = torch.autograd.grad(loss, [*wrt.values(), *lrs.values()], allow_unused=True)
    leaves = [*params.values(), *lrs.values()]
    found = [torch.zeros_like(v) if g is None else g for v, g in zip(leaves, found, strict=True)]
    n = len(names)
    return dict(zip(names, found[:n], strict=True)), dict(zip(lrs, found[n:], strict=True))


def reference_lslr_meta_gradient(model, params, lrs, sx, sy, qx, qy, loss_fn):
    return _lslr(model, params, lrs, sx, sy, qx, qy, loss_fn)


def lslr_case(model: Spec, data: Spec, lr: float, steps: int, spread: float = 1.0, **kw) -> Case:
    """A case of q2: ``steps`` seeded step sizes per tensor, in lr·(1 ± spread/2)."""
    return task_case(model, data, lr=lr, steps=steps, spread=spread, **kw)


def lslr_refused(label: str, model: Spec, data: Spec, **bad: str) -> Case:
    """A case whose step sizes do not match ``params`` (``short`` or ``missing`` a name)."""
    valid = dict(model={**model, "n_way": data.get("n_way", 2)}, data=data, lr=0.1, steps=2)
    return raises(label, {**valid, **bad}, valid)


_SECOND_ORDER_MISSING = (
    "it is first order, as if the inner gradients were constants (torch.autograd.grad without "
    "create_graph=True, or .detach()): the second-order term is missing; keep the graph of the "
    "inner gradients and differentiate the query loss with respect to params and lrs"
)
_WRT_ADAPTED = (
    "the gradient of params is taken with respect to the adapted weights (first order); "
    "differentiate with respect to params themselves"
)
_RATES_CONSTANT = (
    "the step sizes got no gradient (turned into numbers with float() or .item(), or detached): "
    "use the tensors lrs[name][s] themselves in the inner steps"
)
_AT_THETA = (
    "this is the gradient of the query loss at params themselves, before any inner step; adapt "
    "on the support set first"
)


def _lslr_mistake(says: str, variant: str, fewest_steps: int = 1) -> Mistake:
    """A known mistake of q2, tried where the case takes at least ``fewest_steps`` steps."""
    return Mistake(says, partial(_lslr, variant=variant), lambda s: s["steps"] >= fewest_steps)


Q2 = Question(
    "q2",
    "lslr_meta_gradient",
    3,
    lslr_inputs,
    title="learned per-layer, per-step inner step sizes (MAML++'s LSLR) and their meta-gradient",
    reference=reference_lslr_meta_gradient,
    what="(gradient of params, gradient of lrs)",
    mistakes=(
        _lslr_mistake(_SECOND_ORDER_MISSING, "first order"),
        _lslr_mistake(_WRT_ADAPTED, "wrt adapted"),
        _lslr_mistake("every step used lrs[name][0]; step s uses lrs[name][s]", "first rate", 2),
        _lslr_mistake(_RATES_CONSTANT, "constant rates"),
        _lslr_mistake(_AT_THETA, "at theta"),
        _lslr_mistake("the inner steps went uphill (θ + α∇L)", "ascent"),
    ),
    rule="Step s: θ[k] ← θ[k] − lrs[k][s]·∇_k L(θ, support), for s = 0 .. len(lrs[k]) − 1, "
    "differentiably; then the gradients of the query loss at the adapted weights with respect "
    "to params and to lrs, as two dicts",
    visible=(
        lslr_case(LINEAR, linear_data(), lr=0.1, steps=1, spread=0.0, note=HAND),
        lslr_case(conv4(0), images(3, 2, 3, seed=0), lr=0.4, steps=2),
        lslr_case(mlp(1), points(5, 10, seed=1), lr=0.05, steps=3),
        lslr_refused(
            "lrs['head.bias'] has a step fewer", mlp(3), points(4, 4, 3), short="head.bias"
        ),
    ),
)

# ------------------------------------------------------------------------- q3: Reptile, Adam


def reptile_inputs(
    model: Spec,
    n_tasks: int,
    m: int,
    seed: int,
    steps: int,
    lr: float,
    betas: list[float],
    beta: float,
    fewer_targets: bool = False,
) -> dict:
    """The arguments of ``reptile_adam(model, params, x, y, loss_fn, steps, lr, betas, beta)``:
    θ (the model's weights shifted by seeded noise, detached), ``n_tasks`` tasks of ``m``
    examples stacked ``(n_tasks, m, ...)`` (sinusoid points, or seeded images for Conv4)."""
    net = network(**model)
    params = {k: w.detach() for k, w in weights(net, 0.1, seed).items()}
    dtype = model.get("dtype", "float64")
    if model["kind"] == "conv4":
        n_way, size = model["n_way"], model["image_size"]
        pairs = [
            builders.tiny_support(n_way, m // n_way, seed + i, size, dtype) for i in range(n_tasks)
        ]
        x, y = torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
    else:
        d = SinusoidFamily().sample(n_tasks, m, 1, seed, builders.dtype(dtype))
        x, y = d["support_x"], d["support_y"]
    y = y[:-1] if fewer_targets else y
    args = dict(model=net, params=params, x=x, y=y, loss_fn=_loss_fn(model), steps=steps, lr=lr)
    return {**args, "betas": tuple(betas), "beta": beta}


def _reptile_adam(model, params, x, y, loss_fn, steps, lr, betas, beta, variant="") -> Params:
    """Reptile with a hand-written Adam, with one known mistake (``variant``)."""
    b1, b2 = (0.9, 0.999) if variant == "default betas" else betas
    start, adapted, m, v, t = {k: w.detach() for k, w in params.items()}, [], None, None, 0
    for xi, yi in zip(x, y, strict=False):
        w = dict(start)
        if variant != "shared state" or m is None:
            m, v, t = {k: torch.zeros_like(a) for k, a in w.items()}, None, 0
            v = {k: torch.zeros_like(a) for k, a in w.items()}
        for _ in range(steps):
            g = grad(lambda p, xi=xi, yi=yi: loss_fn(forward_with(model, p, xi), yi))(w)
            t += 1
            m = {k: b1 * m[k] + (1 - b1) * g[k] for k in w}
            v = {k: b2 * v[k] + (1 - b2) * g[k] ** 2 for k in w}
            c1, c2 = (1.0, 1.0) if variant == "no bias correction" else (1 - b1**t, 1 - b2**t)
            step = {k: (m[k] / c1) / ((v[k] / c2).sqrt() + 1e-8) for k in w}
            w = {k: w[k] - lr * (g[k] if variant == "sgd" else step[k]) for k in w}
        adapted.append(w)
        start = w if variant == "serial" else start
    stacked = {k: torch.stack([a[k] for a in adapted]) for k in params}
    theta = {k: w.detach() for k, w in params.items()}
    move = {
        "sum": lambda k: beta * (stacked[k] - theta[k]).sum(0),
        "wrong sign": lambda k: -beta * (stacked[k] - theta[k]).mean(0),
        "no beta": lambda k: (stacked[k] - theta[k]).mean(0),
        "last": lambda k: beta * (stacked[k][-1] - theta[k]),
    }.get(variant, lambda k: beta * (stacked[k] - theta[k]).mean(0))
    return {k: (theta[k] + move(k)).detach() for k in params}


def reference_reptile_adam(model, params, x, y, loss_fn, steps, lr, betas, beta):
    if len(x) != len(y):
        raise ValueError(f"x holds {len(x)} tasks but y holds {len(y)}")
    adapted = []
    for xi, yi in zip(x, y, strict=True):
        w = {k: t.detach().clone().requires_grad_() for k, t in params.items()}
        optimiser = torch.optim.Adam(list(w.values()), lr=lr, betas=tuple(betas))
        for _ in range(steps):
            loss = loss_fn(forward_with(model, w, xi), yi)
            for t, g in zip(w.values(), torch.autograd.grad(loss, list(w.values())), strict=True):
                t.grad = g
            optimiser.step()
        adapted.append({k: t.detach() for k, t in w.items()})
    stacked = {k: torch.stack([a[k] for a in adapted]) for k in params}
    return reptile.update(params, stacked, beta)


def reptile_case(model: Spec, n_tasks: int, m: int, seed: int, steps: int, lr: float, betas, beta):
    what = "Conv4" if model["kind"] == "conv4" else "MLP" if model["kind"] == "mlp" else "y = wx+b"
    label = (
        f"{what}, {n_tasks} task(s) of {m} examples, {steps} Adam step(s) of lr={lr}, "
        f"betas={tuple(betas)}, β={beta}, {model.get('dtype', 'float64')}, seed {seed}"
    )
    spec = dict(steps=steps, lr=lr, betas=list(betas), beta=beta)
    return case(label, model=model, n_tasks=n_tasks, m=m, seed=seed, **spec)


def reptile_refused(label: str, model: Spec, seed: int) -> Case:
    valid = dict(model=model, n_tasks=3, m=4, seed=seed, steps=1, lr=0.01, betas=[0.0, 0.999])
    valid["beta"] = 0.5
    return raises(label, {**valid, "fewer_targets": True}, valid)


_TASKS = lambda s: s["n_tasks"] > 1  # noqa: E731  (where the tasks can differ)
_BETA = lambda s: s["beta"] != 1  # noqa: E731  (where β makes a difference)

_SHARED_ADAM = (
    "one Adam (its moments and step count) was carried from one task to the next; each task "
    "starts a fresh Adam from θ"
)
_NO_BIAS_CORRECTION = "Adam without bias correction: divide m by 1 − β1^t and v by 1 − β2^t"
_SERIAL = "the tasks ran one after another, each from the previous task's weights; each from θ"


def _reptile_mistake(says: str, variant: str, when: Callable | None = None) -> Mistake:
    return Mistake(says, partial(_reptile_adam, variant=variant), when)


Q3 = Question(
    "q3",
    "reptile_adam",
    2,
    reptile_inputs,
    title="Reptile with Adam as the inner optimiser",
    reference=reference_reptile_adam,
    what="the new θ",
    mistakes=(
        _reptile_mistake("these are plain SGD steps (w − lr·g), not Adam's", "sgd"),
        _reptile_mistake(_SHARED_ADAM, "shared state", _TASKS),
        _reptile_mistake(_SERIAL, "serial", _TASKS),
        _reptile_mistake(_NO_BIAS_CORRECTION, "no bias correction"),
        _reptile_mistake(
            "these are Adam's default betas (0.9, 0.999), not the betas given",
            "default betas",
            lambda s: list(s["betas"]) != [0.9, 0.999],
        ),
        _reptile_mistake("it summed the tasks' moves instead of averaging them", "sum", _TASKS),
        _reptile_mistake("it moved away from the tasks' weights (wrong sign)", "wrong sign"),
        _reptile_mistake("it went all the way to the mean, ignoring β", "no beta", _BETA),
        _reptile_mistake("it used the last task only", "last", _TASKS),
    ),
    rule="For each task i, a fresh Adam(lr, betas) runs `steps` steps on loss_fn(model on w, "
    "x[i], y[i]) from w = θ, giving W_i; then θ + β·(1/n)·Σ_i (W_i − θ)",
    changed={
        "params": "each task starts from a copy, {k: t.clone().requires_grad_() ...}",
        "model": "run the model on the task's weights with functional_call; leave its own alone",
    },
    visible=(
        reptile_case(mlp(0), 3, 10, seed=0, steps=5, lr=0.01, betas=(0.0, 0.999), beta=0.5),
        reptile_case(LINEAR, 2, 4, seed=1, steps=3, lr=0.1, betas=(0.9, 0.999), beta=1.0),
        reptile_case(
            mlp(2, dtype="float32"), 4, 8, seed=2, steps=2, lr=0.003, betas=(0.5, 0.99), beta=0.3
        ),
        reptile_refused("y holds one task fewer than x", mlp(3), seed=3),
    ),
)

# ------------------------------------------------------------------------- q4: the experiment

ALPHA = 0.01  # the inner step size MAML meta-trains the initialisation for
DIVERGED = 1e6  # a mean query loss above it (or not finite) counts as diverged: inf


@functools.lru_cache(maxsize=4)
def _meta_trained(seed: int, iterations: int) -> dict[str, torch.Tensor]:
    with torch.random.fork_rng(devices=[]), builders.one_thread():
        torch.manual_seed(seed)
        net = MLP(hidden=(40, 40)).double()
        optimiser = torch.optim.Adam(net.parameters(), lr=5e-3)
        g, config = builders.generator(seed), maml.MAMLConfig(1, ALPHA, vectorise=True)
        for _ in range(iterations):
            d = SinusoidFamily().sample(10, 10, 10, g, torch.float64)
            e = Episode(d["support_x"], d["support_y"], d["query_x"], d["query_y"])
            maml.meta_step(net, optimiser, e, F.mse_loss, config)
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def maml_init(seed: int, iterations: int = 300) -> MLP:
    """An MLP 1-40-40-1 (float64) meta-trained by MAML on sinusoids: ``iterations`` Adam steps
    (lr 5e-3) of 10 tasks, one inner step of size :data:`ALPHA` (cached per seed)."""
    net = MLP(hidden=(40, 40)).double()
    net.load_state_dict(copy.deepcopy(_meta_trained(seed, iterations)))
    return net


def sweep_inputs(seed: int, tasks: int, n_tasks: int, lrs: list[float], steps: list[int]) -> dict:
    """``inner_lr_sweep(model, support_x, support_y, query_x, query_y, loss_fn, lrs, steps)``'s
    arguments: :func:`maml_init` of ``seed``, and ``n_tasks`` sinusoid tasks drawn with seed
    ``tasks`` (10 support and 25 query points each, float64)."""
    d = SinusoidFamily().sample(n_tasks, 10, 25, tasks, torch.float64)
    data = {k: d[k] for k in ("support_x", "support_y", "query_x", "query_y")}
    return {"model": maml_init(seed), **data, "loss_fn": F.mse_loss, "lrs": lrs, "steps": steps}


def _grid(model, sx, sy, qx, qy, loss_fn, lrs, steps, inner, variant="") -> torch.Tensor:
    """The mean query loss ``(len(steps), len(lrs))`` after ``inner``'s steps, every task
    adapted on its own (vectorised) from the model's weights; a known mistake (``variant``)."""
    theta = {k: w.detach() for k, w in model.named_parameters()}
    grid = torch.empty(len(steps), len(lrs), dtype=torch.float64)
    for j, lr in enumerate(lrs):

        def losses(sx, sy, qx, qy, lr=lr):
            found, fast, done = [], theta, 0
            x, y = (qx, qy) if variant == "query" else (sx, sy)
            for n in steps:  # in increasing order: each count continues the previous one
                more = n if variant == "cumulative" else n - done
                fast, done = inner(model, fast, x, y, loss_fn, lr, more), n
                found.append(loss_fn(forward_with(model, fast, qx), qy))
            return torch.stack(found)

        per_task = vmap(losses)(sx, sy, qx, qy)
        grid[:, j] = (per_task.sum(0) if variant == "sum" else per_task.mean(0)).detach()
    if variant != "no cap":
        grid = torch.where(torch.isfinite(grid) & (grid <= DIVERGED), grid, torch.inf)
    return grid


def _adapt_all(model, params, x, y, loss_fn, lr, steps):
    return maml.adapt(model, params, x, y, loss_fn, steps, lr, first_order=True)


def _best(grid: torch.Tensor, lrs: list[float], steps: list[int]) -> dict[str, Any]:
    i, j = divmod(int(torch.nan_to_num(grid, nan=torch.inf).argmin()), len(lrs))
    return {"best_lr": lrs[j], "best_steps": steps[i]}


def _inner_lr_sweep(model, sx, sy, qx, qy, loss_fn, lrs, steps, variant="") -> dict:
    found = {}
    for mode, inner in (("all", _adapt_all), ("head", reference_anil_inner_loop)):
        if variant == "swapped":
            mode = "head" if mode == "all" else "all"
        grid = _grid(model, sx, sy, qx, qy, loss_fn, lrs, steps, inner, variant)
        found[mode] = {"loss": grid, **_best(grid, lrs, steps)}
    return found


def reference_inner_lr_sweep(model, support_x, support_y, query_x, query_y, loss_fn, lrs, steps):
    return _inner_lr_sweep(model, support_x, support_y, query_x, query_y, loss_fn, lrs, steps)


def observe_sweep(fn: Callable[..., Any], args: dict[str, Any], spec: Spec) -> Any:
    """What came back as plain data: a loss grid as a float64 tensor (a list of lists too), 0-d
    tensors and whole floats as numbers (``best_steps`` an int)."""

    def tidy(key: str, v: Any) -> Any:
        if isinstance(v, dict):
            return {k: tidy(k, u) for k, u in v.items()}
        if key == "loss" and isinstance(v, (list, tuple)):
            with_tensors = torch.tensor([[float(u) for u in row] for row in v])
            return with_tensors.double() if with_tensors.dim() == 2 else v
        if key == "loss" and isinstance(v, torch.Tensor) and v.is_floating_point():
            return v.double()
        if isinstance(v, torch.Tensor) and v.dim() == 0:
            v = v.item()
        if key == "best_steps" and isinstance(v, float) and v.is_integer():
            return int(v)
        return v

    return tidy("", plain(fn(*args.values())))


def claims(spec: Spec, got: Any) -> str | None:
    """What holds on every seed, checked on ``got`` (see :data:`SWEEP_TOLERANCE`); ``None`` when
    it holds or when ``got`` is not shaped as asked (the comparison then says so)."""
    try:
        grids = {mode: got[mode]["loss"] for mode in ("all", "head")}
        if any(g.shape != (len(spec["steps"]), len(spec["lrs"])) for g in grids.values()):
            return None
    except (KeyError, TypeError, AttributeError):
        return None
    if 0 in spec["steps"]:
        row = spec["steps"].index(0)
        for mode, g in grids.items():
            if not torch.allclose(g[row], g[row, :1].expand(len(spec["lrs"])), rtol=1e-6):
                return (
                    f"with 0 steps every step size must give the same loss, that before "
                    f"adaptation; got {g[row].tolist()} for {mode!r}"
                )
    best = {mode: float(g.nan_to_num(torch.inf).min()) for mode, g in grids.items()}
    if not best["all"] < best["head"]:
        return (
            f"from this MAML initialisation adapting every weight reaches a lower loss than "
            f"adapting the head alone (on every seed we tried), got {best['all']:.4g} for 'all' "
            f"and {best['head']:.4g} for 'head'"
        )
    return None


def seed_spread(seeds=range(5), **spec: Any) -> dict[str, torch.Tensor]:
    """The reference experiment's loss grids on each seed (meta-training and test tasks),
    ``{mode: (seeds, steps, lrs)}``, for the spec of the first visible case (``spec``
    overrides it): the measure of the tolerance."""
    spec = {**Q4.visible[0].kwargs, **spec}
    runs = [
        reference_inner_lr_sweep(*sweep_inputs(**{**spec, "seed": s, "tasks": 100 + s}).values())
        for s in seeds
    ]
    return {mode: torch.stack([run[mode]["loss"] for run in runs]) for mode in ("all", "head")}


# Measured with `.venv/bin/python -c "from metalib.grading.ex02_maml import seed_spread as s;
# g = s(); f = lambda v: (v.std(0) / v.mean(0))[(v < 100).all(0)]; print({m: f(v).aminmax() for
# m, v in g.items()})"` (seeds 0-4 of the initialisation and tasks, the first visible case's
# sweep; entries that stay below 100 on every seed): the losses' standard deviation over seeds is
# 15% to 44% of their mean for 'all' (median 19%) and 12% to 65% for 'head' (median 19%), while
# right answers on the same initialisation and tasks agree to about 1e-12 (float64). 1% sits far
# inside both: any known mistake moves some entry by more, no right answer does.
SWEEP_TOLERANCE = 0.01


def sweep_case(seed: int, tasks: int, n_tasks: int, lrs: list[float], steps: list[int]) -> Case:
    label = (
        f"MAML initialisation of seed {seed}, {n_tasks} sinusoid tasks of seed {tasks}, lrs "
        f"{lrs}, steps {steps}"
    )
    return case(label, seed=seed, tasks=tasks, n_tasks=n_tasks, lrs=lrs, steps=steps)


LRS, STEPS = [0.001, 0.003, 0.01, 0.03, 0.1], [0, 1, 3, 10]
_KEPT_DIVERGED = (
    "diverged runs must count as inf (a loss not finite or above 1e6), so that no nan is taken "
    "for the best"
)
_ON_QUERY = (
    "the tasks were adapted on their query sets; adapt on the support set, score on the query set"
)
_ADDED_UP = (
    "the step counts were added up: after steps[i-1] steps, take steps[i] − steps[i-1] more (or "
    "start again from the model's weights)"
)


def _sweep_mistake(says: str, variant: str) -> Mistake:
    return Mistake(says, partial(_inner_lr_sweep, variant=variant))


Q4 = Question(
    "q4",
    "inner_lr_sweep",
    2,
    sweep_inputs,
    title="experiment: the inner step size and number of steps, every weight or the head only",
    reference=reference_inner_lr_sweep,
    observe=observe_sweep,
    claims=claims,
    what="the result",
    hints=lambda s: {
        (len(s["lrs"]), len(s["steps"])): "one row per number of steps, one column per step size"
    },
    rule="result[mode]['loss'][i, j] is the mean over the tasks of the query loss after steps[i] "
    "steps of size lrs[j] from the model's weights (mode 'all': every weight; 'head': "
    "anil_inner_loop), inf where not finite or above 1e6; best_lr and best_steps: its smallest",
    tolerance={"rtol": SWEEP_TOLERANCE, "atol": 0.0},
    seconds=30,
    mistakes=(
        _sweep_mistake("the losses are summed over the tasks; average them", "sum"),
        _sweep_mistake(_KEPT_DIVERGED, "no cap"),
        _sweep_mistake("'all' and 'head' are swapped", "swapped"),
        _sweep_mistake(_ON_QUERY, "query"),
        _sweep_mistake(_ADDED_UP, "cumulative"),
    ),
    visible=(
        sweep_case(0, 100, 16, LRS, STEPS),
        sweep_case(1, 101, 16, LRS, STEPS),
    ),
)

EXERCISE = Exercise("02_maml", (Q1, Q2, Q3, Q4))


def check(name: str, fn: Callable[..., Any]) -> feedback.Verdict:
    """Run the visible cases of question ``name`` on ``fn`` and print the verdict."""
    return feedback.check(EXERCISE, name, fn)
