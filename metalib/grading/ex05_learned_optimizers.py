"""Exercise 05_learned_optimizers: gradient preprocessing, one LSTM step, the unrolled meta-loss.

What the questions check. q1 ``preprocess_gradients`` is compared with the reference entry by
entry; p <= 0 must raise ``ValueError``; a non-finite entry (a log of a zero or negative g, a huge
e^p g that leaked through a mask) is named as such. q2 ``lstm_step`` is compared on the update,
the new state and the gradient of the update with respect to the cells' and the head's weights
(meta-training differentiates through it); the step is also run on the coordinates permuted (and
the state's rows with them), and an update that does not permute with them is named as
coordinates influencing each other; a shape error is explained in terms of coordinates. q3
``meta_loss`` is compared on its value and its gradient with respect to the optimizer's weights.
The inputs must not change in place. A wrong answer is matched against the usual mistakes (log
not divided by p, branches swapped, sign dropped; no output scale, the state ignored, the old
state returned; θ0's loss counted, only the last loss, a mean over steps, the second-order or a
truncated meta-gradient) so the message can say which one it is.

How cases are built. A spec is plain data: gradients given by value (zero, the cut-off itself,
huge ones) or seeded, with random signs and magnitudes ``10**u`` on both sides of the cut-off
``e^-p`` (:func:`gradients`); a seeded :class:`~metalib.learned_optim.LSTMOptimizer` (its cells
and head for q2) with a zero or seeded state; batches of seeded quadratics ``||W θ - y||²``
(:func:`quadratics`). Gradients through the outputs are vector-Jacobian products with seeded
directions (:func:`metalib.grading.builders.vjp`).

Tolerances: the engine's (rtol 1e-7, atol 1e-9 in float64; rtol 1e-4, atol 1e-5 in float32).

References: :func:`metalib.learned_optim.preprocess_gradients`,
:meth:`metalib.learned_optim.LSTMOptimizer.forward` (on the cells and head given) and
:func:`metalib.learned_optim.unroll` on the quadratics.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from metalib import learned_optim
from metalib.grading import feedback
from metalib.grading.builders import generator, vjp
from metalib.grading.question import (
    Case,
    Exercise,
    Mistake,
    Question,
    case,
    difference,
    plain,
    raises,
)

Spec = dict[str, Any]
State = list[tuple[torch.Tensor, torch.Tensor]]


def _judged(question: Question, spec: Spec, got: Any, want: Any, otherwise: str = "") -> str | None:
    """The engine's comparison for a ``check`` that looks first at what it cannot see:
    :func:`difference`, then the question's mistakes, then ``otherwise`` or the rule."""
    wrong = difference(got, want, question.what, question.hints(spec) if question.hints else {})
    if wrong is None:
        return None
    for mistake in question.mistakes:
        if mistake.when is None or mistake.when(spec):
            if difference(got, question.expected(mistake.fn, spec)) is None:
                return f"{wrong}: {mistake.says}. {question.rule}."
    return f"{wrong}; {otherwise or question.rule}."


# ------------------------------------------------------------------------- q1: preprocessing


def gradients(
    values: list[float] | float | None = None,
    shape: tuple[int, ...] = (8,),
    seed: int = 0,
    low: float = -8.0,
    high: float = 2.0,
    dtype: str = "float64",
) -> torch.Tensor:
    """The given ``values``, or seeded gradients of ``shape`` with random signs and magnitudes
    ``10**u``, ``u`` uniform in ``[low, high)`` (both sides of the cut-off ``e^-p``)."""
    if values is not None:
        return torch.tensor(values, dtype=getattr(torch, dtype))
    g = generator(seed)
    exponent = low + (high - low) * torch.rand(shape, generator=g, dtype=torch.float64)
    sign = torch.randint(0, 2, shape, generator=g).double() * 2 - 1
    return (sign * 10.0**exponent).to(getattr(torch, dtype))


def preprocess_inputs(grad: Spec, p: float) -> dict[str, Any]:
    """The arguments of ``preprocess_gradients(grad, p)``."""
    return {"grad": gradients(**grad), "p": p}


def reference_preprocess(grad: torch.Tensor, p: float = 10.0) -> torch.Tensor:
    return learned_optim.preprocess_gradients(grad, p)


def _preprocess(grad: torch.Tensor, p: float = 10.0, variant: str = "") -> torch.Tensor:
    """The preprocessing with one known mistake."""
    if variant in ("p = 10", "flipped"):
        out = learned_optim.preprocess_gradients(grad, 10.0 if variant == "p = 10" else p)
        return out.flip(-1) if variant == "flipped" else out
    big = grad.abs() >= math.exp(p if variant == "cut e^p" else -p)
    big = ~big if variant == "swapped" else big
    log = {"log10": grad.abs().log10(), "log g": grad.log()}.get(variant, grad.abs().log())
    first = torch.where(big, log if variant == "no /p" else log / p, -torch.ones_like(grad))
    first = torch.where(big, first, torch.zeros_like(grad)) if variant == "small 0" else first
    sign = {"no sign": torch.ones_like(grad), "g for sign": grad}.get(variant, grad.sign())
    small = grad if variant == "small g" else grad * math.exp(p)
    return torch.stack([first, torch.where(big, sign, small)], dim=-1)


def preprocess_hints(spec: Spec) -> dict[tuple[int, ...], str]:
    shape = tuple(gradients(**spec["grad"]).shape)
    return {
        (2, *shape): "the two numbers are on the first axis; stack them on the last (dim=-1)",
        shape: "one number per coordinate; each coordinate gives two, on a new last axis",
    }


def check_preprocess(spec: Spec, got: Any, want: torch.Tensor) -> str | None:
    """The comparison, with non-finite entries named when no known mistake explains them."""
    leak = ""
    if isinstance(got, torch.Tensor) and got.shape == want.shape and got.is_floating_point():
        if not torch.isfinite(got).all():
            index = tuple(int(i) for i in (~torch.isfinite(got)).nonzero()[0])
            g = float(gradients(**spec["grad"])[index[:-1]])
            leak = (
                f"got {float(got[index])} for g = {g:.3g}: log|g| of a zero or negative g, or a "
                "huge e^p g, leaked into the answer; compute |g| before the log and pick each "
                "branch with torch.where"
            )
    return _judged(Q1, spec, got, want, leak)


def grad_spec(
    shape: tuple[int, ...] = (8,),
    seed: int = 0,
    low: float = -8.0,
    high: float = 2.0,
    dtype: str = "float64",
    values: list[float] | float | None = None,
) -> Spec:
    if values is not None:
        return {"values": values, "dtype": dtype}
    return {"shape": shape, "seed": seed, "low": low, "high": high, "dtype": dtype}


def _grad_label(grad: Spec) -> str:
    if "values" in grad:
        if isinstance(grad["values"], float):
            return f"g = {grad['values']:g} (0-d)"
        values = torch.tensor(grad["values"]).flatten().tolist()
        shown = ", ".join(f"{v:g}" for v in values[:6])
        return f"g = [{shown}{', ...' if len(values) > 6 else ''}]"
    low, high, seed = grad["low"], grad["high"], grad["seed"]
    return f"{tuple(grad['shape'])} gradients of magnitude 1e{low:g}..1e{high:g}, seed {seed}"


def preprocess_case(grad: Spec, p: float = 10.0, note: str = "") -> Case:
    label = f"{_grad_label(grad)}, p = {p:g}, {grad['dtype']}" + (f" ({note})" if note else "")
    return case(label, grad=grad, p=p)


def bad_p_case(p: float) -> Case:
    grad = grad_spec(values=[0.5, -1e-7], dtype="float32")
    return raises(
        f"p = {p:g} (p must be positive)", {"grad": grad, "p": p}, {"grad": grad, "p": 10.0}
    )


_HAND = [1.0, -2.0, 0.0, 1e-6, -1e-6, 1e-3, 100.0, -3e-5, math.exp(-10)]
_pre = lambda variant: partial(_preprocess, variant=variant)  # noqa: E731

Q1 = Question(
    "q1",
    "preprocess_gradients",
    2,
    preprocess_inputs,
    title="the paper's gradient preprocessing",
    reference=reference_preprocess,
    check=check_preprocess,
    what="the preprocessed gradients",
    hints=preprocess_hints,
    rule="Each g becomes (log|g| / p, sign g) when |g| >= e^-p, and (-1, e^p g) otherwise, "
    "stacked on a new last axis",
    mistakes=(
        Mistake("log|g| was not divided by p", _pre("no /p")),
        Mistake("this is log10|g| / p; use the natural logarithm (torch.log)", _pre("log10")),
        Mistake("the two branches are swapped: the log part is for |g| >= e^-p", _pre("swapped")),
        Mistake("the cut-off is e^p; it is e^-p (math.exp(-p))", _pre("cut e^p")),
        Mistake("the sign was dropped: a large g's second number is sign(g), ±1", _pre("no sign")),
        Mistake("a large g's second number is g itself; use sign(g)", _pre("g for sign")),
        Mistake(
            "tiny gradients should be scaled up: their second number is e^p g", _pre("small g")
        ),
        Mistake("the first number of a tiny gradient is -1, not 0", _pre("small 0")),
        Mistake("log g of a negative g is nan; compute |g| before the log", _pre("log g")),
        Mistake("the two numbers are in the wrong order: (log part, sign)", _pre("flipped")),
        Mistake("this is the preprocessing for p = 10; use the p given", _pre("p = 10")),
    ),
    visible=(
        preprocess_case(grad_spec(values=_HAND), note="zero, tiny, large, the cut-off"),
        preprocess_case(grad_spec((3, 4), seed=1, dtype="float32")),
        preprocess_case(grad_spec((7,), seed=2, low=-4, high=1), p=5.0),
        bad_p_case(0.0),
    ),
)


# ------------------------------------------------------------------------- q2: one LSTM step


def lstm_optimizer(
    hidden: int, layers: int, seed: int, p: float = 10.0, scale: float = 0.1, dtype: str = "float64"
) -> learned_optim.LSTMOptimizer:
    """An :class:`~metalib.learned_optim.LSTMOptimizer` whose weights depend only on ``seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        opt = learned_optim.LSTMOptimizer(hidden, layers, preprocess=True, p=p, output_scale=scale)
    return opt.to(getattr(torch, dtype))


def lstm_state(opt: learned_optim.LSTMOptimizer, n: int, kind: str, seed: int) -> State:
    """The zero state for ``n`` coordinates, or (``kind="random"``) a seeded one."""
    state = opt.initial_state(n, opt.head.weight)
    if kind == "zeros":
        return state
    g, dtype = generator(seed), opt.head.weight.dtype
    return [
        tuple(0.5 * torch.randn(h.shape, generator=g, dtype=torch.float64).to(dtype) for h in hc)
        for hc in state
    ]


def step_inputs(optimizer: Spec, grad: Spec, state: str, seed: int) -> dict[str, Any]:
    """The arguments of ``lstm_step(cells, head, grad, state, p, output_scale)``."""
    opt, g = lstm_optimizer(**optimizer), gradients(**grad)
    return {
        "cells": opt.cells,
        "head": opt.head,
        "grad": g,
        "state": lstm_state(opt, g.numel(), state, seed),
        "p": optimizer.get("p", 10.0),
        "output_scale": optimizer.get("scale", 0.1),
    }


def _permutation(spec: Spec) -> torch.Tensor:
    return torch.randperm(gradients(**spec["grad"]).numel(), generator=generator(spec["seed"] + 2))


def observe_step(fn: Callable[..., Any], args: dict[str, Any], spec: Spec) -> dict[str, Any]:
    """The update, the new state, the gradient of the update with respect to the weights (a
    seeded VJP; ``None`` without a graph) and the update with the coordinates permuted; or the
    error raised (``raised``) or what came back if not a pair (``returned``)."""
    cells, head, grad, state, *rest = args.values()
    keep = [(h.clone(), c.clone()) for h, c in state]
    try:
        out = fn(*args.values())
    except NotImplementedError:
        raise
    except Exception as err:  # the check explains shape errors in terms of coordinates
        return {"raised": f"{type(err).__name__}: {err}"[:500]}
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        n = f" of length {len(out)}" if isinstance(out, (tuple, list)) else ""
        return {"returned": f"a {type(out).__name__}{n}"}
    weights = dict(nn.ModuleDict({"cells": cells, "head": head}).named_parameters())
    perm = _permutation(spec)
    try:
        moved = plain(fn(cells, head, grad[perm], [(h[perm], c[perm]) for h, c in keep], *rest)[0])
    except Exception:  # the unpermuted call worked; the check needs only to know this one failed
        moved = None
    return {
        "update": plain(out[0]),
        "new_state": plain(out[1]),
        "gradient": vjp(out[0], weights, spec["seed"] + 1),
        "permuted": moved,
    }


def reference_step(cells, head, grad, state, p=10.0, output_scale=0.1):
    """:meth:`LSTMOptimizer.forward` itself, on the cells and head given."""
    opt = SimpleNamespace(cells=cells, head=head, preprocess=True, p=p, output_scale=output_scale)
    return learned_optim.LSTMOptimizer.forward(opt, grad, state)


def _step(cells, head, grad, state, p=10.0, output_scale=0.1, variant=""):
    """The step with one known mistake."""
    if variant == "zero state":
        state = [(torch.zeros_like(h), torch.zeros_like(c)) for h, c in state]
    x = learned_optim.preprocess_gradients(grad, 10.0 if variant == "p = 10" else p)
    new_state, first = [], None
    for cell, (h, c) in zip(cells, state, strict=True):
        h, c = cell(x, (h, c))
        new_state.append((c, h) if variant == "c, h" else (h, c))
        x, first = h, h if first is None else first
    factor = {"no scale": 1.0, "scale 0.1": 0.1, "minus": -output_scale}.get(variant, output_scale)
    update = factor * head(first if variant == "first h" else x).squeeze(-1)
    update = update.detach() if variant == "detached" else update
    return update, state if variant == "old state" else new_state


_SHAPE_ERRORS = ("input_size", "batch size", "shapes cannot be multiplied", "size mismatch")


def check_step(spec: Spec, got: dict[str, Any], want: dict[str, Any]) -> str | None:
    """The comparison, after the errors and returns it cannot read; an update that does not
    permute with the coordinates is named as coordinates influencing each other."""
    if "raised" in got:
        text = f"raised {got['raised']}"
        if "got 1 expected 2" in text:
            return (
                f"{text}: the first cell reads two numbers per coordinate, the preprocessed "
                "gradient (n, 2) of question 1, not the raw gradient"
            )
        if any(s in text for s in _SHAPE_ERRORS):
            return (
                f"{text}: the LSTM is applied coordinate-wise, with one row per coordinate "
                "(x (n, 2), h and c (n, hidden)); the whole gradient is not one input"
            )
        return text
    if "returned" in got:
        return f"it returned {got['returned']}; return a pair (update, new_state)"
    update, moved, mixed = got["update"], got["permuted"], ""
    if isinstance(update, torch.Tensor) and update.shape == want["update"].shape:
        if moved is not None and difference(moved, update[_permutation(spec)]):
            mixed = (
                "permuting the coordinates (and the state's rows) does not permute the updates, "
                "so the coordinates influence each other: the LSTM runs on each coordinate "
                "separately, one row per coordinate"
            )
    return _judged(Q2, spec, got, want, mixed)


def optimizer_spec(
    hidden: int, layers: int, seed: int, p: float = 10.0, scale: float = 0.1, dtype: str = "float64"
) -> Spec:
    return {
        "hidden": hidden,
        "layers": layers,
        "seed": seed,
        "p": p,
        "scale": scale,
        "dtype": dtype,
    }


def _optimizer_label(spec: Spec) -> str:
    return (
        f"LSTM optimizer with {spec['layers']} cell(s) of {spec['hidden']} units, p = "
        f"{spec['p']:g}, output_scale {spec['scale']:g}, {spec['dtype']}"
    )


def step_case(optimizer: Spec, grad: Spec, state: str, seed: int) -> Case:
    n = math.prod(grad["shape"]) if "shape" in grad else len(grad["values"])
    start = "a zero" if state == "zeros" else "a random"
    label = f"{_optimizer_label(optimizer)}, {n} coordinates, {start} state, seed {seed}"
    grad = {**grad, "dtype": optimizer["dtype"]}
    return case(label, optimizer=optimizer, grad=grad, state=state, seed=seed)


_bad_step = lambda variant: partial(_step, variant=variant)  # noqa: E731

Q2 = Question(
    "q2",
    "lstm_step",
    4,
    step_inputs,
    title="one step of the coordinate-wise LSTM optimizer",
    reference=reference_step,
    observe=observe_step,
    check=check_step,
    what="the step",
    hints=lambda s: {(len(gradients(**s["grad"])), 1): "squeeze the head's last axis"},
    rule="x = preprocess_gradients(grad, p) (n, 2); each cell maps (x, (h, c)) to its new (h, c) "
    "and passes h on; update = output_scale * head(last h).squeeze(-1)",
    mistakes=(
        Mistake("the head's output was not multiplied by output_scale", _bad_step("no scale")),
        Mistake("the sign is flipped: the update is +output_scale * head(h)", _bad_step("minus")),
        Mistake("the state passed in was ignored (a step from zeros)", _bad_step("zero state")),
        Mistake("the head read the first cell's h; it reads the last's", _bad_step("first h")),
        Mistake("the preprocessing used p = 10, not the p given", _bad_step("p = 10")),
        Mistake("the update was scaled by 0.1, not by output_scale", _bad_step("scale 0.1")),
        Mistake("new_state is the old state; return the cells' new (h, c)", _bad_step("old state")),
        Mistake(
            "each pair of new_state is (c, h); keep the cell's order (h, c)", _bad_step("c, h")
        ),
        Mistake(
            "the update is right but carries no graph back to the cells and the head (computed "
            "under torch.no_grad() or detached); meta-training differentiates through it",
            _bad_step("detached"),
        ),
    ),
    visible=(
        step_case(optimizer_spec(4, 1, seed=0), grad_spec((5,), seed=0), "zeros", 0),
        step_case(optimizer_spec(6, 2, seed=1), grad_spec((8,), seed=1), "random", 1),
        step_case(
            optimizer_spec(5, 2, seed=2, p=5.0, scale=0.5, dtype="float32"),
            grad_spec((12,), seed=2, low=-5),
            "random",
            2,
        ),
    ),
)


# ------------------------------------------------------------------------- q3: the meta-loss


def quadratics(
    B: int, M: int, D: int, seed: int, dtype: str = "float64"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``W (B, M, D)``, ``y (B, M)``, ``theta0 (B, D)``: standard normal, as in the paper, with
    ``W`` scaled by ``1/sqrt(D)`` so the losses stay of order ``M``."""
    g = generator(seed)
    W = torch.randn(B, M, D, generator=g, dtype=torch.float64) / math.sqrt(D)
    y = torch.randn(B, M, generator=g, dtype=torch.float64)
    theta0 = torch.randn(B, D, generator=g, dtype=torch.float64)
    return tuple(t.to(getattr(torch, dtype)) for t in (W, y, theta0))


def meta_inputs(optimizer: Spec, problems: Spec, steps: int) -> dict[str, Any]:
    """The arguments of ``meta_loss(optimizer, W, y, theta0, steps)``."""
    W, y, theta0 = quadratics(**problems)
    opt = lstm_optimizer(**optimizer)
    return {"optimizer": opt, "W": W, "y": y, "theta0": theta0, "steps": steps}


def observe_meta(fn: Callable[..., Any], args: dict[str, Any], spec: Spec) -> dict[str, Any]:
    """The meta-loss and its gradient with respect to the optimizer's weights (a seeded VJP;
    ``None`` without a graph)."""
    out = fn(*args.values())
    return {"value": plain(out), "gradient": vjp(out, dict(args["optimizer"].named_parameters()))}


def _quadratic(W: torch.Tensor, y: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    return (torch.einsum("bmd,bd->bm", W, theta) - y).square().sum(-1)  # (B,)


def reference_meta_loss(optimizer, W, y, theta0, steps):
    """:func:`metalib.learned_optim.unroll` on the quadratics, its meta-loss."""
    meta, _, _ = learned_optim.unroll(optimizer, lambda th, t: _quadratic(W, y, th), theta0, steps)
    return meta


def _meta(optimizer, W, y, theta0, steps, variant=""):
    """The meta-loss with one known mistake, in the unroll or in the total of the losses."""
    theta = theta0.detach().requires_grad_()
    state = optimizer.initial_state(theta.numel(), theta)
    losses = [_quadratic(W, y, theta)]
    for _ in range(steps):
        if variant == "theta detached":
            theta = theta.detach().requires_grad_()
            losses[-1] = _quadratic(W, y, theta)
        loss = losses[-1].mean() if variant == "grad of mean" else losses[-1].sum()
        second = variant == "second order"
        (grad,) = torch.autograd.grad(loss, theta, retain_graph=True, create_graph=second)
        if variant == "fresh state":
            state = optimizer.initial_state(theta.numel(), theta)
        update, state = optimizer(grad.flatten(), state)
        theta = theta + (-1 if variant == "minus" else 1) * update.view_as(theta)
        losses.append(_quadratic(W, y, theta))
    L = torch.stack(losses)  # (T + 1, B): the losses of θ_0 .. θ_T
    total = {
        "θ_0 too": lambda: L.sum(0).mean(),
        "to T-1": lambda: L[:-1].sum(0).mean(),
        "last": lambda: L[-1].mean(),
        "step mean": lambda: L[1:].mean(0).mean(),
        "problem sum": lambda: L[1:].sum(),
    }.get(variant, lambda: L[1:].sum(0).mean())()
    return total.detach() if variant == "detached" else total


def meta_case(optimizer: Spec, B: int, M: int, D: int, steps: int, seed: int) -> Case:
    problems = {"B": B, "M": M, "D": D, "seed": seed, "dtype": optimizer["dtype"]}
    label = (
        f"{_optimizer_label(optimizer)}, {B} quadratic(s) with W {M}x{D}, T = {steps}, seed {seed}"
    )
    return case(label, optimizer=optimizer, problems=problems, steps=steps)


_bad_meta = lambda variant: partial(_meta, variant=variant)  # noqa: E731

Q3 = Question(
    "q3",
    "meta_loss",
    4,
    meta_inputs,
    title="the unrolled meta-loss on quadratics",
    reference=reference_meta_loss,
    observe=observe_meta,
    what="the meta-loss",
    hints=lambda s: {(s["problems"]["B"],): "one meta-loss per problem; take their mean"},
    rule="The meta-loss is the mean over the B problems of the sum of f(θ_t) for t = 1..T, where "
    "θ_{t+1} = θ_t + update_t and the LSTM reads g_t, the gradient of the sum of the losses at "
    "θ_t, detached",
    mistakes=(
        Mistake("f(θ_0) was counted too; the sum runs over t = 1..T", _bad_meta("θ_0 too")),
        Mistake(
            "this sums f(θ_0) .. f(θ_{T-1}), not the losses after each update", _bad_meta("to T-1")
        ),
        Mistake("this is only the last loss f(θ_T); sum those of every step", _bad_meta("last")),
        Mistake("this is the mean over the T steps; take their sum", _bad_meta("step mean")),
        Mistake("this is the sum over the B problems; take their mean", _bad_meta("problem sum")),
        Mistake(
            "the LSTM read the gradient of the mean of the B losses, B times too small; "
            "differentiate their sum",
            _bad_meta("grad of mean"),
        ),
        Mistake("the update was subtracted; θ_{t+1} = θ_t + update_t", _bad_meta("minus")),
        Mistake(
            "the LSTM started from a zero state at every step; carry the state from step to step",
            _bad_meta("fresh state"),
        ),
        Mistake(
            "this is the second-order meta-gradient: g_t kept its graph (create_graph=True); the "
            "paper treats g_t as a constant",
            _bad_meta("second order"),
        ),
        Mistake(
            "θ_t was detached at every step, which cuts the path from each update to the later "
            "losses; keep θ_{t+1} = θ_t + update_t attached",
            _bad_meta("theta detached"),
        ),
        Mistake(
            "the meta-loss carries no graph back to the optimizer's weights (computed under "
            "torch.no_grad(), detached, or from .item())",
            _bad_meta("detached"),
        ),
    ),
    visible=(
        meta_case(optimizer_spec(4, 1, seed=0), 1, 2, 2, steps=2, seed=0),
        meta_case(optimizer_spec(6, 2, seed=1, scale=0.3), 3, 4, 4, steps=3, seed=1),
        meta_case(optimizer_spec(8, 2, seed=2, dtype="float32"), 2, 5, 3, steps=5, seed=2),
    ),
)

EXERCISE = Exercise("05_learned_optimizers", (Q1, Q2, Q3))


def check(name: str, fn: Callable[..., Any]) -> feedback.Verdict:
    """Run the visible cases of question ``name`` on ``fn`` and print the verdict."""
    return feedback.check(EXERCISE, name, fn)
