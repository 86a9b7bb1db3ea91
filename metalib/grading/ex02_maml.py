"""Exercise 02_maml: the inner loop, second- and first-order meta-gradients, Reptile's update.

What the questions check. q1 ``inner_loop``: the adapted weights after ``steps`` gradient steps,
*and* their graph back to ``params`` (MAML differentiates through the inner loop). q2
``maml_meta_gradient`` and q3 ``fomaml_meta_gradient``: one task's meta-gradient, with and
without the second-order term, on the same inputs (a student sees the two side by side). q4
``reptile_update``: Reptile's batched update, which must refuse adapted weights without a task
axis (``ValueError``). No question may change its inputs in place (the network's own weights
included: MAML's inner loop is a pure function of ``params``).

How cases are built. A spec names a network and a task as plain data (:func:`network`,
:func:`task`): a 2- to 5-way :class:`~metalib.nets.Conv4` with cross-entropy on seeded images
(:func:`metalib.grading.builders.tiny_conv4`, :func:`~metalib.grading.builders.tiny_support`),
a sinusoid :class:`~metalib.nets.MLP` with the squared error, or the linear model y = w x + b
on one support and one query point, whose meta-gradients ``tests/test_maml.py`` derives by hand;
``params`` are fresh leaf copies of all the weights, or of the head's only. The inner loop's
graph is judged through a vector-Jacobian product (:func:`adapted_and_gradient`,
:func:`metalib.grading.builders.vjp`): the gradient of ``Σ_k <adapted[k], v[k]>`` (seeded random
``v``) with respect to ``params``. With the graph of the inner gradients kept it is the
reference's second-order product; with the inner gradients detached it is ``v`` itself (the
first-order Jacobian is the identity); with no graph at all there is none.

Tolerances: 1e-9 (absolute) and 1e-7 (relative) in float64, 1e-5 and 1e-4 otherwise
(:func:`metalib.grading.question.difference`).

References: :func:`metalib.maml.adapt` (q1), :func:`metalib.maml.meta_gradient` with and
without ``first_order`` (q2, q3; Finn, Abbeel and Levine, 2017), :func:`metalib.maml.
reptile_update` (q4; Nichol, Achiam and Schulman, 2018). A wrong answer is matched against the
usual mistakes (first order where second order was asked and the reverse, no graph, gradients
at θ instead of after adaptation, a step too few or too many, a sum for a mean, the wrong sign)
so that the message can say which one it is.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from metalib import maml
from metalib.data.sinusoid import SinusoidFamily
from metalib.grading import builders, feedback
from metalib.grading.question import Case, Exercise, Mistake, Question, case, plain, raises
from metalib.nets import MLP
from metalib.tasks import Episode

Params = dict[str, torch.Tensor]
Spec = dict[str, Any]

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


def _setup(model: Spec, data: Spec, subset: str) -> tuple[nn.Module, Params, tuple, Callable]:
    net = network(**model)
    params = {
        k: p.detach().clone().requires_grad_()
        for k, p in net.named_parameters()
        if subset == "all" or k.startswith(f"{subset}.")
    }
    loss_fn = F.cross_entropy if model["kind"] == "conv4" else F.mse_loss
    return net, params, task(model, data), loss_fn


def inner_inputs(model: Spec, data: Spec, lr: float, steps: int, subset: str = "all") -> dict:
    """The arguments of ``inner_loop(model, params, x, y, loss_fn, lr, steps)``."""
    net, params, (sx, sy, _, _), loss_fn = _setup(model, data, subset)
    return dict(model=net, params=params, x=sx, y=sy, loss_fn=loss_fn, lr=lr, steps=steps)


def task_inputs(model: Spec, data: Spec, lr: float, steps: int, subset: str = "all") -> dict:
    """The arguments of ``maml_meta_gradient(model, params, support_x, support_y, query_x,
    query_y, loss_fn, lr, steps)`` (and of ``fomaml_meta_gradient``)."""
    net, params, (sx, sy, qx, qy), loss_fn = _setup(model, data, subset)
    args = dict(model=net, params=params, support_x=sx, support_y=sy, query_x=qx, query_y=qy)
    return {**args, "loss_fn": loss_fn, "lr": lr, "steps": steps}


def adapted_and_gradient(fn: Callable[..., Any], args: Mapping[str, Any], spec: Spec) -> dict:
    """The adapted weights, and the gradient of ``Σ_k <adapted[k], v[k]>`` (seeded ``v``) with
    respect to ``params``: ``None`` when they carry no graph at all."""
    out = fn(*args.values())
    return {"adapted": plain(out), "gradient to params": builders.vjp(out, args["params"])}


def _describe(model: Spec, data: Spec) -> str:
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


def task_case(model: Spec, data: Spec, lr: float, steps: int, subset="all", note="") -> Case:
    """A case of q1, q2 or q3: a network, a task, the inner step size and number of steps."""
    if model["kind"] == "conv4":
        model = {**model, "n_way": data["n_way"]}  # the head has one output per class
    label = f"{_describe(model, data)}, {steps} step(s), lr={lr}"
    label += ", only the head adapted" if subset == "head" else ""
    label += f" ({note})" if note else ""
    return case(label, model=model, data=data, lr=lr, steps=steps, subset=subset)


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


# ------------------------------------------------------------------------- q1


def reference_inner_loop(model, params, x, y, loss_fn, lr, steps):
    return maml.adapt(model, params, x, y, loss_fn, steps, lr)


def _inner(steps: int = 0, lr: float = 1.0, first_order: bool = False, start=None) -> Callable:
    """A mistake: the reference with ``steps`` more steps, ``lr`` times the step size, first
    order, or from ``start(params)``."""

    def inner_loop(model, params, x, y, loss_fn, rate, n):
        p = params if start is None else start(params)
        return maml.adapt(model, p, x, y, loss_fn, n + steps, lr * rate, first_order)

    return inner_loop


_NO_GRAPH = (
    "the values are right, but the adapted weights carry no graph back to params (they were "
    "detached, or computed under torch.no_grad()); MAML differentiates through the inner loop, so "
    "compute them from params with differentiable operations"
)
_NOT_FROM_PARAMS = (
    "the values are right, but the adapted weights do not depend on params (were params detached, "
    "or the loss computed with the model's own weights? run the model on the current weights with "
    "torch.func.functional_call(model, fast, (x,)))"
)
_FIRST_ORDER_LOOP = (
    "the values are right, but it is first order, as if the inner gradients were constants "
    "(torch.autograd.grad without create_graph=True, or .detach()), so a meta-gradient through "
    "these weights would miss the second-order (Hessian) term; keep the graph of the inner "
    "gradients"
)
_STEPS = lambda s: s["steps"] > 0  # noqa: E731  (where a step makes a difference)

Q1 = Question(
    "q1",
    "inner_loop",
    3,
    inner_inputs,
    title="the inner loop, differentiable",
    reference=reference_inner_loop,
    observe=adapted_and_gradient,
    mistakes=(
        Mistake(
            "no step was taken: these are the values of params", lambda m, p, *_: dict(p), _STEPS
        ),
        Mistake(
            "these are the weights after one step fewer than asked",
            _inner(steps=-1),
            lambda s: s["steps"] >= 2,
        ),
        Mistake("these are the weights after one step more than asked", _inner(steps=1)),
        Mistake(
            "this is gradient ascent (θ + lr·∇loss); step against the gradient",
            _inner(lr=-1),
            _STEPS,
        ),
        Mistake(_NO_GRAPH, lambda *a: {k: w.detach() for k, w in reference_inner_loop(*a).items()}),
        Mistake(
            _NOT_FROM_PARAMS,
            _inner(start=lambda p: {k: w.detach().requires_grad_() for k, w in p.items()}),
        ),
        Mistake(_FIRST_ORDER_LOOP, _inner(first_order=True), _STEPS),
    ),
    rule="Each step is θ ← θ − lr·∇_θ loss_fn(model run on θ with x, y), from params, with "
    "differentiable operations ('gradient to params': that of Σ_k <adapted[k], v[k]>, v random)",
    visible=(
        task_case(LINEAR, linear_data(), lr=0.1, steps=1, note=HAND),
        task_case(conv4(0), images(3, 2, 2, seed=0), lr=0.4, steps=1),
        task_case(mlp(1), points(5, 5, seed=1), lr=0.05, steps=3),
        task_case(conv4(2, dtype="float32"), images(3, 1, 2, seed=2), lr=0.4, steps=2),
    ),
)

# ------------------------------------------------------------------------- q2 and q3


def _meta_gradient(model, params, sx, sy, qx, qy, loss_fn, lr, steps, first_order) -> Params:
    episode = Episode(sx[None], sy[None], qx[None], qy[None])
    config = maml.MAMLConfig(steps, lr, first_order=first_order, vectorise=False)
    return maml.meta_gradient(model, params, episode, loss_fn, config)[0]


def reference_maml_meta_gradient(model, params, sx, sy, qx, qy, loss_fn, lr, steps):
    return _meta_gradient(model, params, sx, sy, qx, qy, loss_fn, lr, steps, first_order=False)


def reference_fomaml_meta_gradient(model, params, sx, sy, qx, qy, loss_fn, lr, steps):
    return _meta_gradient(model, params, sx, sy, qx, qy, loss_fn, lr, steps, first_order=True)


def _unadapted(*args) -> Params:
    return _meta_gradient(*args[:-1], 0, first_order=False)


def _zeros(model, params, *rest) -> Params:
    return {k: torch.zeros_like(p) for k, p in params.items()}


_FIRST_ORDER = "∇L_ts evaluated at the adapted weights θ′"
_ADAPTED = "θ′ = the weights after `steps` inner steps of size lr on the support set"
_AT_THETA = (
    "this is the gradient of the query loss at params themselves, before any inner step; adapt "
    "on the support set first"
)
_ZEROS = "the gradient is zero everywhere; the graph to params was cut somewhere"

# q2 and q3 are judged on the same inputs, so that a student sees the two gradients side by side
GRADIENT_CASES = (
    task_case(LINEAR, linear_data(), lr=0.1, steps=1, note=HAND),
    task_case(conv4(0), images(3, 2, 3, seed=0), lr=0.4, steps=2),
    task_case(mlp(1), points(5, 10, seed=1), lr=0.05, steps=1),
)

Q2 = Question(
    "q2",
    "maml_meta_gradient",
    3,
    task_inputs,
    title="the second-order meta-gradient",
    reference=reference_maml_meta_gradient,
    what="the meta-gradient",
    mistakes=(
        Mistake(
            f"this is the first-order gradient ({_FIRST_ORDER}); the second-order term is missing. "
            "Keep the graph of the inner gradients (create_graph=True, or torch.func.grad, in "
            "inner_loop) and differentiate the query loss with respect to params, not to the "
            "adapted weights",
            reference_fomaml_meta_gradient,
            when=_STEPS,
        ),
        Mistake(_AT_THETA, _unadapted, when=_STEPS),
        Mistake(_ZEROS, _zeros),
    ),
    rule=f"Expected ∇_θ L_ts(θ′), the gradient of the query loss at {_ADAPTED} with respect to "
    "params (for one step, (I − α H_tr(θ)) ∇L_ts(θ′))",
    visible=GRADIENT_CASES,
)

Q3 = Question(
    "q3",
    "fomaml_meta_gradient",
    2,
    task_inputs,
    title="the first-order meta-gradient",
    reference=reference_fomaml_meta_gradient,
    what="the meta-gradient",
    mistakes=(
        Mistake(
            "this is the second-order meta-gradient; first-order MAML treats the inner gradients "
            "as constants (detach them, or adapt without create_graph) so the Hessian term drops "
            "out",
            reference_maml_meta_gradient,
            when=_STEPS,
        ),
        Mistake(_AT_THETA, _unadapted, when=_STEPS),
        Mistake(_ZEROS, _zeros),
    ),
    rule=f"Expected ∇L_ts(θ′), the gradient of the query loss at {_ADAPTED} with respect to θ′ "
    "itself",
    visible=GRADIENT_CASES,
)

# ------------------------------------------------------------------------- q4


def reptile_inputs(
    beta: float, model: Spec | None = None, n_tasks: int = 1, seed: int = 0, **given: Params
) -> dict:
    """The arguments of ``reptile_update(params, adapted, beta)``: a network's weights θ and
    ``n_tasks`` adapted copies stacked ``(n_tasks, ...)`` per name, each θ plus seeded noise of
    scale 0.1; or the ``params`` and ``adapted`` given."""
    if model is None:
        return {"params": given["params"], "adapted": given["adapted"], "beta": beta}
    theta = {k: p.detach().clone() for k, p in network(**model).named_parameters()}
    g = builders.generator(seed)
    adapted = {
        k: t + 0.1 * torch.randn((n_tasks, *t.shape), generator=g, dtype=t.dtype)
        for k, t in theta.items()
    }
    return {"params": theta, "adapted": adapted, "beta": beta}


def reference_reptile_update(params, adapted, beta):
    return maml.reptile_update(params, adapted, beta)


def _reptile(says: str, step: Callable, when: Callable | None = None) -> Mistake:
    """A mistake: θ + ``step(θ, W, β)`` for each name (W stacked ``(n, ...)``)."""
    return Mistake(
        says,
        lambda params, adapted, beta: {k: t + step(t, adapted[k], beta) for k, t in params.items()},
        when,
    )


_TASKS = lambda s: s["n_tasks"] > 1  # noqa: E731  (where the tasks can differ)


def reptile_case(model: Spec, n_tasks: int, beta: float, seed: int) -> Case:
    what = "Conv4" if model["kind"] == "conv4" else "MLP"
    label = f"{what} weights, {n_tasks} task(s), β={beta}, {model.get('dtype', 'float32')}"
    return case(label, model=model, n_tasks=n_tasks, beta=beta, seed=seed)


def reptile_raises(label: str, bad: torch.Tensor, good: torch.Tensor) -> Case:
    """θ = {"w": [1, 2]}: ``adapted["w"] = bad`` must be refused, ``good`` accepted (β = 0.5)."""
    theta = {"w": torch.tensor([1.0, 2.0])}
    return raises(
        label,
        {"params": theta, "adapted": {"w": bad}, "beta": 0.5},
        {"params": theta, "adapted": {"w": good}, "beta": 0.5},
    )


Q4 = Question(
    "q4",
    "reptile_update",
    2,
    reptile_inputs,
    title="Reptile's batched update",
    reference=reference_reptile_update,
    what="the new θ",
    mistakes=(
        _reptile(
            "it moved n times too far, summing the tasks' steps instead of averaging them",
            lambda t, w, b: b * (w - t).sum(0),
            _TASKS,
        ),
        _reptile(
            "it moved away from the tasks' weights (wrong sign)",
            lambda t, w, b: -b * (w - t).mean(0),
        ),
        _reptile(
            "it went all the way to the tasks' mean weights, ignoring β",
            lambda t, w, b: (w - t).mean(0),
        ),
        _reptile("it added β·mean(W_i) instead of β·mean(W_i − θ)", lambda t, w, b: b * w.mean(0)),
        _reptile("it used the last task only", lambda t, w, b: b * (w[-1] - t), _TASKS),
    ),
    rule="Reptile moves θ towards the tasks' weights: θ + β·(1/n)·Σ_i (W_i − θ)",
    visible=(
        reptile_case(mlp(0), n_tasks=3, beta=0.5, seed=0),
        reptile_case(conv4(1, dtype="float32"), n_tasks=4, beta=1.0, seed=1),
        reptile_raises(
            "adapted['w'] of shape (2,) for θ of shape (2,): the task axis is missing",
            bad=torch.tensor([3.0, 2.0]),
            good=torch.tensor([[3.0, 2.0]]),  # one task: (1, 2)
        ),
    ),
)

EXERCISE = Exercise("02_maml", (Q1, Q2, Q3, Q4))


def check(name: str, fn: Callable[..., Any]) -> feedback.Verdict:
    """Run the visible cases of question ``name`` on ``fn`` and print the verdict."""
    return feedback.check(EXERCISE, name, fn)
