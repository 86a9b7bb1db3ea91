"""Exercise 02_maml: the inner loop, second- and first-order meta-gradients, Reptile's update.

Every case is a tiny network and one task rebuilt from plain specs on both sides (see the
02_maml section of :mod:`metalib.grading.probes`): a 3- to 5-way :class:`~metalib.nets.Conv4`
with cross-entropy, a sinusoid :class:`~metalib.nets.MLP` with the squared error, or the linear
model y = w x + b whose meta-gradients ``tests/test_maml.py`` derives by hand. The judges
compare with :mod:`metalib.maml` (``adapt``, ``meta_gradient``, ``reptile_update``) to 1e-9 in
float64 and 1e-5 in float32. A wrong answer is matched against the usual mistakes (first order
where second order was asked and the reverse, gradients at θ instead of after adaptation, a sum
for a mean, the wrong sign) so the message can say which one it is.

The inner loop's graph is judged through a vector-Jacobian product: the probe differentiates
``Σ_k <adapted[k], v[k]>`` (seeded random ``v``) with respect to ``params``. With the graph of
the inner gradients kept, that is the reference's second-order product; with the inner gradients
detached it is ``v`` itself (the first-order Jacobian is the identity); with no graph it cannot
be taken at all.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from metalib import maml
from metalib.grading import feedback
from metalib.grading.ex00_tasks import judge_raises, raises_case
from metalib.grading.probes import (
    maml_directions,
    maml_loss,
    maml_model,
    maml_params,
    maml_task,
    reptile_inputs,
)
from metalib.grading.spec import Case, Exercise, Question
from metalib.tasks import Episode

Params = dict[str, torch.Tensor]


def _tolerance(dtype: str) -> dict[str, float]:
    return {"float64": {"rtol": 1e-7, "atol": 1e-9}}.get(dtype, {"rtol": 1e-4, "atol": 1e-5})


def _dtype(kw: dict[str, Any]) -> str:
    return "float64" if kw["model"]["kind"] == "linear" else kw["model"].get("dtype", "float32")


def _show(t: Any, limit: int = 4) -> str:
    if not isinstance(t, torch.Tensor):
        return f"a {type(t).__name__}"
    values = [f"{v:.6g}" for v in t.detach().double().flatten()[:limit].tolist()]
    more = ", ..." if t.numel() > limit else ""
    return f"[{', '.join(values)}{more}]"


def _names(got: Params, want: Params, what: str) -> str | None:
    """A message when ``got`` does not have exactly ``want``'s names and shapes."""
    missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    if missing:
        return f"{what} has no {missing[0]!r}; return one tensor per name of params"
    if extra:
        return f"{what} has {extra[0]!r}, which params does not have; keep params' names only"
    for name, w in want.items():
        if tuple(got[name].shape) != tuple(w.shape):
            return f"{what}[{name!r}] has shape {tuple(got[name].shape)}, expected {tuple(w.shape)}"
        if got[name].dtype != w.dtype:
            return f"{what}[{name!r}] has dtype {got[name].dtype}; keep params' dtype {w.dtype}"
    return None


def _first_wrong(got: Params, want: Params, tol: dict[str, float]) -> str | None:
    """The first name whose tensor is not close to ``want``'s (``got`` has the right names)."""
    for name, w in want.items():
        if not torch.allclose(got[name].to(w.dtype), w, **tol):
            return name
    return None


def _same(got: Params, want: Params, tol: dict[str, float]) -> bool:
    return _names(got, want, "") is None and _first_wrong(got, want, tol) is None


def _mismatch(got: Params, want: Params, name: str) -> str:
    off = float((got[name].to(want[name].dtype) - want[name]).abs().max())
    return f"{name}: expected {_show(want[name])}, got {_show(got[name])} (off by up to {off:.2g})"


def _setup(kw: dict[str, Any]):
    net = maml_model(**kw["model"])
    sx, sy, qx, qy = maml_task(kw["model"], kw["data"])
    return net, maml_params(net, kw.get("subset", "all")), (sx, sy, qx, qy), maml_loss(kw["model"])


_MODEL_CHANGED = (
    "the network's own weights changed; MAML's inner loop is a pure function: build new tensors "
    "in a new dict and leave the model as it is (torch.func.functional_call runs it on them)"
)


# ---------------------------------------------------------------------------------- q1


def _adapted(kw: dict[str, Any], steps: int, lr: float, first_order: bool = False) -> Params:
    net, params, (sx, sy, _, _), loss_fn = _setup(kw)
    fast = maml.adapt(net, params, sx, sy, loss_fn, steps, lr, first_order)
    return {k: w.detach() for k, w in fast.items()}


def _reference_vjp(kw: dict[str, Any]) -> Params:
    net, params, (sx, sy, _, _), loss_fn = _setup(kw)
    fast = maml.adapt(net, params, sx, sy, loss_fn, kw["steps"], kw["lr"])
    v = maml_directions(params, kw.get("seed", 0))
    total = sum((fast[k] * v[k]).sum() for k in params)
    grads = torch.autograd.grad(total, list(params.values()), allow_unused=True)
    return {
        k: torch.zeros_like(p) if g is None else g
        for (k, p), g in zip(params.items(), grads, strict=True)
    }


_STEP = "each step is θ ← θ − lr·∇_θ loss_fn(model run on θ with x, y), starting from params"


def judge_inner_loop(case: Case, out: Any) -> str | None:
    """``inner_loop(model, params, x, y, loss_fn, lr, steps) -> adapted``, with its graph."""
    kw = case.kwargs
    if "problem" in out:
        return out["problem"]
    if out["model_changed"]:
        return _MODEL_CHANGED
    steps, lr, tol = kw["steps"], kw["lr"], _tolerance(_dtype(kw))
    want = _adapted(kw, steps, lr)
    got = out["adapted"]
    problem = _names(got, want, "the adapted dict")
    if problem:
        return problem
    name = _first_wrong(got, want, tol)
    if name is not None:
        guesses = [
            (0, lr, "no step was taken: these are the values of params"),
            (steps - 1, lr, f"these are the weights after {steps - 1} steps, not {steps}"),
            (steps + 1, lr, f"these are the weights after {steps + 1} steps, not {steps}"),
            (steps, -lr, "this is gradient ascent (θ + lr·∇loss); step against the gradient"),
        ]
        for n, rate, why in guesses:
            if n >= 0 and (n, rate) != (steps, lr) and _same(got, _adapted(kw, n, rate), tol):
                return f"{_mismatch(got, want, name)}; {why}"
        return f"{_mismatch(got, want, name)} after {steps} steps with lr={lr}; {_STEP}"
    if out["vjp"] is None:
        return (
            "the values are right, but the adapted weights carry no graph back to params (they "
            "were detached, or computed under torch.no_grad()); MAML differentiates through the "
            "inner loop, so compute them from params with differentiable operations"
        )
    got_vjp, want_vjp = out["vjp"], _reference_vjp(kw)
    name = _first_wrong(got_vjp, want_vjp, tol)
    if name is None:
        return None
    where = f"the gradient through the adapted weights, {_mismatch(got_vjp, want_vjp, name)}"
    if all(float(t.abs().max()) == 0 for t in got_vjp.values()):
        return (
            f"the values are right, but {where}: the adapted weights do not depend on params "
            "(is the loss computed with the model's own weights? run the model on the current "
            "weights with torch.func.functional_call(model, fast, (x,)))"
        )
    v = maml_directions(want_vjp, kw.get("seed", 0))
    if _same(got_vjp, v, tol):
        return (
            f"the values are right, but {where}: it is first order, as if the inner gradients "
            "were constants (torch.autograd.grad without create_graph=True, or .detach()), so a "
            "meta-gradient through these weights would miss the second-order (Hessian) term; "
            "keep the graph of the inner gradients"
        )
    return f"the values are right, but {where}; {_STEP}, every operation differentiable"


# ---------------------------------------------------------------------------------- q2, q3


def _meta(kw: dict[str, Any], first_order: bool, steps: int | None = None) -> Params:
    net, params, (sx, sy, qx, qy), loss_fn = _setup(kw)
    steps = kw["steps"] if steps is None else steps
    episode = Episode(sx[None], sy[None], qx[None], qy[None])
    config = maml.MAMLConfig(steps, kw["lr"], first_order=first_order, vectorise=False)
    grads, _ = maml.meta_gradient(net, params, episode, loss_fn, config)
    return grads


_SECOND_ORDER = (
    "∇_θ L_ts(θ′) with θ′ = the adapted weights (for one step, (I − α H_tr(θ)) ∇L_ts(θ′))"
)
_FIRST_ORDER = "∇L_ts evaluated at the adapted weights θ′"


def _judge_gradient(case: Case, out: Any, first_order: bool) -> str | None:
    kw = case.kwargs
    if "problem" in out:
        return out["problem"]
    if out["model_changed"]:
        return _MODEL_CHANGED
    tol = _tolerance(_dtype(kw))
    want, got = _meta(kw, first_order), out["grads"]
    problem = _names(got, want, "the gradient dict")
    if problem:
        return problem
    name = _first_wrong(got, want, tol)
    if name is None:
        return None
    wrong = _mismatch(got, want, name)
    if _same(got, _meta(kw, not first_order), tol):
        if first_order:
            return (
                f"{wrong}: this is the second-order meta-gradient; first-order MAML treats the "
                "inner gradients as constants (detach them, or adapt without create_graph) so "
                f"the Hessian term drops out and the answer is {_FIRST_ORDER}"
            )
        return (
            f"{wrong}: this is the first-order gradient ({_FIRST_ORDER}); the second-order term "
            f"is missing. Expected {_SECOND_ORDER}: keep the graph of the inner gradients "
            "(create_graph=True, or torch.func.grad, in inner_loop) and differentiate the query "
            "loss with respect to params, not to the adapted weights"
        )
    if kw["steps"] > 0 and _same(got, _meta(kw, first_order, steps=0), tol):
        return (
            f"{wrong}: this is the gradient of the query loss at params themselves, before any "
            f"inner step; adapt on the support set first ({kw['steps']} step(s), lr={kw['lr']})"
        )
    if all(float(t.abs().max()) == 0 for t in got.values()):
        return f"{wrong}: the gradient is zero everywhere; the graph to params was cut somewhere"
    expected = _FIRST_ORDER if first_order else _SECOND_ORDER
    return f"{wrong}; expected {expected}, the query loss after {kw['steps']} inner steps"


def judge_maml_gradient(case: Case, out: Any) -> str | None:
    """``maml_meta_gradient(...) -> grads``: the second-order meta-gradient of one task."""
    return _judge_gradient(case, out, first_order=False)


def judge_fomaml_gradient(case: Case, out: Any) -> str | None:
    """``fomaml_meta_gradient(...) -> grads``: the first-order meta-gradient of one task."""
    return _judge_gradient(case, out, first_order=True)


# ---------------------------------------------------------------------------------- q4


def judge_reptile_update(case: Case, out: Any) -> str | None:
    """``reptile_update(params, adapted, beta) -> new θ`` = θ + β (1/n) Σ_i (W_i − θ)."""
    if case.probe == "raises":
        return judge_raises(case, out)
    kw = case.kwargs
    if "problem" in out:
        return out["problem"]
    if out["inputs_changed"]:
        return (
            f"params or adapted[{out['inputs_changed'][0]!r}] changed in place; leave the inputs "
            "as they are and return a new dict"
        )
    theta, adapted = reptile_inputs(kw["model"], kw["n_tasks"], kw["seed"])
    beta, n, tol = kw["beta"], kw["n_tasks"], _tolerance(kw["model"].get("dtype", "float32"))
    want, got = maml.reptile_update(theta, adapted, beta), out["new"]
    problem = _names(got, want, "the new θ")
    if problem:
        return problem
    name = _first_wrong(got, want, tol)
    if name is None:
        return None
    step = {k: adapted[k] - t for k, t in theta.items()}  # (n, ...) per name: W_i − θ
    formula = "Reptile moves θ towards the tasks' weights: θ + β·(1/n)·Σ_i (W_i − θ)"
    guesses = [
        (
            {k: t + beta * step[k].sum(0) for k, t in theta.items()},
            f"it moved n={n} times too far, summing the tasks' steps instead of averaging them",
        ),
        (
            {k: t - beta * step[k].mean(0) for k, t in theta.items()},
            "it moved away from the tasks' weights (wrong sign)",
        ),
        (
            {k: t + step[k].mean(0) for k, t in theta.items()},
            "it went all the way to the tasks' mean weights, ignoring β",
        ),
        (
            {k: t + beta * adapted[k].mean(0) for k, t in theta.items()},
            "it added β·mean(W_i) instead of β·mean(W_i − θ)",
        ),
        (
            {k: t + beta * step[k][-1] for k, t in theta.items()},
            "it used the last task only",
        ),
    ]
    for candidate, why in guesses:
        if _same(got, candidate, tol):
            return f"{_mismatch(got, want, name)}; {why}. {formula}"
    return f"{_mismatch(got, want, name)}; {formula}"


# ---------------------------------------------------------------------------------- cases


def conv4(seed: int, n_way: int = 3, hidden: int = 4, size: int = 16, dtype: str = "float64"):
    return {
        "kind": "conv4",
        "seed": seed,
        "n_way": n_way,
        "hidden": hidden,
        "image_size": size,
        "dtype": dtype,
    }


def mlp(seed: int, hidden: tuple[int, ...] = (8, 8), dtype: str = "float64"):
    return {"kind": "mlp", "seed": seed, "hidden": list(hidden), "dtype": dtype}


LINEAR = {"kind": "linear", "w": 0.5, "b": -0.2}


def linear_data() -> dict[str, torch.Tensor]:
    """One support point (2, 1) and one query point (-1, 0.5), as in ``tests/test_maml.py``."""
    t = lambda v: torch.tensor([[v]], dtype=torch.float64)  # noqa: E731
    return {"support_x": t(2.0), "support_y": t(1.0), "query_x": t(-1.0), "query_y": t(0.5)}


def images(n_way: int, k_shot: int, q_queries: int, seed: int) -> dict[str, int]:
    return {"n_way": n_way, "k_shot": k_shot, "q_queries": q_queries, "seed": seed}


def points(k_shot: int, q_queries: int, seed: int) -> dict[str, int]:
    return {"k_shot": k_shot, "q_queries": q_queries, "seed": seed}


def _describe(model: dict[str, Any], data: dict[str, Any]) -> str:
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


def _case(probe: str, model, data, lr: float, steps: int, subset: str, note: str) -> Case:
    if model["kind"] == "conv4":
        model = {**model, "n_way": data["n_way"]}  # the head has one output per class
    label = f"{_describe(model, data)}, {steps} step(s), lr={lr}"
    label += ", only the head adapted" if subset == "head" else ""
    label += f" ({note})" if note else ""
    kwargs = {"model": model, "data": data, "lr": lr, "steps": steps, "subset": subset}
    return Case(label, kwargs, probe=probe)


def inner_case(model, data, lr: float, steps: int, subset: str = "all", note: str = "") -> Case:
    return _case("inner_loop", model, data, lr, steps, subset, note)


def gradient_case(model, data, lr: float, steps: int, subset: str = "all", note: str = "") -> Case:
    return _case("meta_gradient", model, data, lr, steps, subset, note)


def reptile_case(model: dict[str, Any], n_tasks: int, beta: float, seed: int) -> Case:
    what = "Conv4" if model["kind"] == "conv4" else "MLP"
    return Case(
        f"{what} weights, {n_tasks} task(s), β={beta}, {model.get('dtype', 'float32')}",
        {"model": model, "n_tasks": n_tasks, "beta": beta, "seed": seed},
        probe="reptile_update",
    )


def reptile_raises() -> Case:
    theta = {"w": torch.tensor([1.0, 2.0])}
    good = {"w": torch.tensor([[3.0, 2.0]])}  # one task: (1, 2)
    return raises_case(
        "adapted['w'] of shape (2,) for θ of shape (2,): the task axis is missing",
        [theta, {"w": torch.tensor([3.0, 2.0])}, 0.5],
        [theta, good, 0.5],
    )


HAND = "the hand-derived example"

# q2 and q3 are judged on the same inputs, so a student sees the two gradients side by side
GRADIENT_CASES = (
    gradient_case(LINEAR, linear_data(), lr=0.1, steps=1, note=HAND),
    gradient_case(conv4(0), images(3, 2, 3, seed=0), lr=0.4, steps=2),
    gradient_case(mlp(1), points(5, 10, seed=1), lr=0.05, steps=1),
)

EXERCISE = Exercise(
    "02_maml",
    (
        Question(
            "q1",
            "inner_loop",
            3,
            judge_inner_loop,
            visible=(
                inner_case(LINEAR, linear_data(), lr=0.1, steps=1, note=HAND),
                inner_case(conv4(0), images(3, 2, 2, seed=0), lr=0.4, steps=1),
                inner_case(mlp(1), points(5, 5, seed=1), lr=0.05, steps=3),
                inner_case(conv4(2, dtype="float32"), images(3, 1, 2, seed=2), lr=0.4, steps=2),
            ),
            title="the inner loop, differentiable",
        ),
        Question(
            "q2",
            "maml_meta_gradient",
            3,
            judge_maml_gradient,
            visible=GRADIENT_CASES,
            title="the second-order meta-gradient",
        ),
        Question(
            "q3",
            "fomaml_meta_gradient",
            2,
            judge_fomaml_gradient,
            visible=GRADIENT_CASES,
            title="the first-order meta-gradient",
        ),
        Question(
            "q4",
            "reptile_update",
            2,
            judge_reptile_update,
            visible=(
                reptile_case(mlp(0), n_tasks=3, beta=0.5, seed=0),
                reptile_case(conv4(1, dtype="float32"), n_tasks=4, beta=1.0, seed=1),
                reptile_raises(),
            ),
            title="Reptile's batched update",
        ),
    ),
)


def check(name: str, fn: Callable[..., Any]) -> feedback.Verdict:
    """Run the visible cases of question ``name`` on ``fn`` and print the verdict."""
    return feedback.check(EXERCISE, name, fn)
