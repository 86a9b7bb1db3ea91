"""Exercise 05_learned_optimizers: gradient preprocessing, one LSTM step, the unrolled meta-loss.

Every case is rebuilt from a seed on both sides (see the 05 section of
:mod:`metalib.grading.probes_0506`): gradients with random signs and magnitudes on both sides of
the cut-off ``e^-p`` (or hand-picked values: zero, the cut-off itself, huge ones), a seeded
:class:`~metalib.learned_optim.LSTMOptimizer` with a zero or random state, and batches of random
quadratics ``||W theta - y||^2``. The judges compare with :mod:`metalib.learned_optim`
(``preprocess_gradients``, ``LSTMOptimizer.forward``, ``unroll``) to 1e-9 in float64 and about
1e-5 in float32, and check the gradients that meta-training needs (of the update and of the
meta-loss with respect to the LSTM's weights). A wrong answer is matched against the usual
mistakes (log not divided by p, branches swapped, sign dropped; the whole gradient as one input,
no output scale, the state ignored; θ0's loss counted, only the last loss, a mean over steps,
the second-order or a truncated meta-gradient) so the message can say which one it is.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from metalib import learned_optim
from metalib.grading import feedback
from metalib.grading.ex00_tasks import judge_raises, raises_case
from metalib.grading.probes_0506 import (
    lopt_gradients,
    lopt_problems,
    lstm_optimizer,
    lstm_state,
    param_grads,
)
from metalib.grading.spec import Case, Exercise, Question


def _tolerance(dtype: torch.dtype, loose: bool = False) -> dict[str, float]:
    if dtype == torch.float64:
        return {"rtol": 1e-7, "atol": 1e-9}
    return {"rtol": 1e-3, "atol": 1e-4} if loose else {"rtol": 1e-4, "atol": 1e-5}


def close(got: Any, want: torch.Tensor, loose: bool = False) -> bool:
    """Same shape and values (nan nowhere) within the tolerance of ``want``'s dtype."""
    return (
        isinstance(got, torch.Tensor)
        and got.shape == want.shape
        and got.is_floating_point()
        and torch.allclose(got.to(want.dtype), want, **_tolerance(want.dtype, loose))
    )


def show(t: torch.Tensor, limit: int = 4) -> str:
    """The first ``limit`` values of ``t``, for a message."""
    values = [f"{v:.6g}" for v in t.detach().double().flatten()[:limit].tolist()]
    return f"[{', '.join(values)}{', ...' if t.numel() > limit else ''}]"


def _where(got: torch.Tensor, want: torch.Tensor) -> tuple[int, ...]:
    bad = ~torch.isclose(got.to(want.dtype), want, **_tolerance(want.dtype))
    return tuple(int(i) for i in bad.nonzero()[0]) if bad.any() else ()


def _tensor_problem(got: Any, want: torch.Tensor, what: str, hints: dict) -> str | None:
    """A message when ``got`` is not a tensor of ``want``'s shape and dtype."""
    if not isinstance(got, torch.Tensor):
        return f"{what}: expected a tensor, got a {type(got).__name__}"
    if got.shape != want.shape:
        shapes = f"{what}: got shape {tuple(got.shape)}, expected {tuple(want.shape)}"
        hint = hints.get(tuple(got.shape), "")
        return f"{shapes}: {hint}" if hint else shapes
    if got.dtype != want.dtype:
        return f"{what}: got dtype {got.dtype}; keep the dtype of the inputs ({want.dtype})"
    return None


# ---------------------------------------------------------------------------------- q1


def _same(got: torch.Tensor, guess: torch.Tensor) -> bool:
    """``got`` equals a guessed mistake's output, infinities and nans included."""
    tol = _tolerance(guess.dtype)
    return torch.allclose(got.to(guess.dtype), guess, equal_nan=True, **tol)


_PREPROCESS = (
    "Each g becomes (log|g| / p, sign g) when |g| >= e^-p, and (-1, e^p g) otherwise, "
    "stacked on a new last axis"
)


def _preprocess(g: torch.Tensor, p: float, variant: str = "") -> torch.Tensor:
    """The preprocessing, right or with one known mistake."""
    cut = math.exp(p if variant == "cut e^p" else -p)
    big = g.abs() >= cut
    if variant == "swapped":
        big = ~big
    log = g.abs().log10() if variant == "log10" else g.abs().log()
    first = torch.where(big, log if variant == "no /p" else log / p, -torch.ones_like(g))
    if variant == "small first 0":
        first = torch.where(big, first, torch.zeros_like(g))
    sign = (
        torch.ones_like(g) if variant == "no sign" else g if variant == "g for sign" else g.sign()
    )
    small = g if variant == "small g" else g * math.exp(p)
    return torch.stack([first, torch.where(big, sign, small)], dim=-1)


_PREPROCESS_GUESSES = {
    "no /p": "log|g| was not divided by p",
    "log10": "this is log10|g| / p; use the natural logarithm (torch.log)",
    "swapped": (
        "the two branches are swapped: the log-magnitude is for |g| >= e^-p, the scaled "
        "gradient for the tiny ones"
    ),
    "cut e^p": "the cut-off is e^p; it is e^-p (math.exp(-p))",
    "no sign": "the sign was dropped: the second number of a large gradient is sign(g), ±1",
    "g for sign": "the second number of a large gradient is the gradient itself; use sign(g)",
    "small g": "tiny gradients should be scaled up: their second number is e^p g, not g",
    "small first 0": "the first number of a tiny gradient is -1, not 0",
}


def judge_preprocess(case: Case, out: Any) -> str | None:
    """``preprocess_gradients(grad, p) -> (..., 2)``."""
    if case.probe == "raises":
        return judge_raises(case, out)
    kw = case.kwargs
    if out["inputs_changed"]:
        return "grad changed in place; leave the input as it is"
    g, p = lopt_gradients(**kw["grad"]), kw["p"]
    want = learned_optim.preprocess_gradients(g, p)
    got = out["out"]
    if isinstance(got, (tuple, list)) and len(got) == 2:
        return "it returned two tensors; stack them into one (..., 2) tensor: torch.stack(.., -1)"
    hints = {
        (2, *g.shape): "the two numbers are on the first axis; stack them on the last (dim=-1)",
        tuple(g.shape): "one number per coordinate; each coordinate gives two, on a new last axis",
    }
    problem = _tensor_problem(got, want, "the preprocessed gradients", hints)
    if problem:
        return problem
    if close(got, want):
        return None
    if close(got, want.flip(-1)):
        return "the two numbers are in the wrong order; [..., 0] is the log part, [..., 1] the sign"
    for variant, why in _PREPROCESS_GUESSES.items():
        if _same(got, _preprocess(g, p, variant)):
            return f"{why}. {_PREPROCESS}."
    if not torch.isfinite(got).all():
        index = tuple(int(i) for i in (~torch.isfinite(got)).nonzero()[0])
        return (
            f"got {float(got[index])} for g = {float(g[index[:-1]]):.3g}: log|g| of a zero or "
            "negative g, or a huge e^p g, leaked into the answer; compute |g| before the log "
            "and pick each branch with torch.where"
        )
    if p != 10.0 and close(got, _preprocess(g, 10.0)):
        return f"this is the preprocessing for p = 10; use the p given ({p:g})"
    index = _where(got, want)
    value = float(g[index[:-1]])
    side = "|g| >= e^-p" if abs(value) >= math.exp(-p) else "|g| < e^-p"
    pair = f"({float(want[index[:-1]][0]):.6g}, {float(want[index[:-1]][1]):.6g})"
    return (
        f"for g = {value:.6g} ({side}, p = {p:g}) expected {pair}, got "
        f"({float(got[index[:-1]][0]):.6g}, {float(got[index[:-1]][1]):.6g}). {_PREPROCESS}."
    )


# ---------------------------------------------------------------------------------- q2

_STEP = (
    "x = preprocess_gradients(grad, p) (n, 2); each cell maps (x, (h, c)) to its new (h, c) and "
    "passes h on; update = output_scale * head(last h).squeeze(-1)"
)


def _step(kw: dict[str, Any], variant: str = "") -> tuple[torch.Tensor, list, Any]:
    """The reference step ``(update, new_state, optimizer)``, with a graph to the optimizer's
    weights, or the update of a known mistake."""
    spec = dict(kw["optimizer"])
    opt, g = lstm_optimizer(**spec), lopt_gradients(**kw["grad"])
    state = lstm_state(opt, g.numel(), kw["state"], kw["seed"])
    p, scale = spec.get("p", 10.0), spec.get("scale", 0.1)
    if variant == "zero state":
        state = opt.initial_state(g.numel(), g)
    x = learned_optim.preprocess_gradients(g, 10.0 if variant == "p = 10" else p)
    new_state, first_h = [], None
    for cell, (h, c) in zip(opt.cells, state, strict=True):
        h, c = cell(x, (h, c))
        new_state.append((h, c))
        x = h
        first_h = h if first_h is None else first_h
    read = first_h if variant == "first h" else x
    factor = {"no scale": 1.0, "scale 0.1": 0.1, "minus": -scale}.get(variant, scale)
    return factor * opt.head(read).squeeze(-1), new_state, opt


_STEP_GUESSES = {
    "no scale": "the head's output was not multiplied by output_scale",
    "minus": "the sign is flipped: the update is +output_scale * head(h), added to θ",
    "zero state": "the state passed in was ignored (this is the step from a zero state)",
    "first h": "the head read the first cell's h; it reads the last cell's",
    "p = 10": "the preprocessing used p = 10, not the p given",
    "scale 0.1": "the update was scaled by 0.1, not by the output_scale given",
}

_SHAPE_ERRORS = ("input_size", "batch size", "shapes cannot be multiplied", "size mismatch")


def _judge_raised(text: str) -> str:
    message = f"raised {text}"
    if "got 1 expected 2" in text:
        return (
            f"{message}: the first cell reads two numbers per coordinate, the preprocessed "
            "gradient (n, 2) of question 1, not the raw gradient"
        )
    if any(s in text for s in _SHAPE_ERRORS):
        return (
            f"{message}: the LSTM is applied coordinate-wise, with one row per coordinate "
            "(x (n, 2), h and c (n, hidden)); the whole gradient is not one input"
        )
    return message


def _judge_new_state(kw: dict[str, Any], got: Any, want: list) -> str | None:
    layers = len(want)
    if not isinstance(got, (list, tuple)) or len(got) != layers:
        kind = type(got).__name__ + (f" of length {len(got)}" if hasattr(got, "__len__") else "")
        return f"new_state should be a list of {layers} pairs (h, c), one per cell, got a {kind}"
    spec = kw["optimizer"]
    old = lstm_state(lstm_optimizer(**spec), want[0][0].shape[0], kw["state"], kw["seed"])
    for i, (pair, (h, c)) in enumerate(zip(got, want, strict=True)):
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            return f"new_state[{i}] should be a pair (h, c) as the cell returns it"
        if close(pair[0], c.detach()) and close(pair[1], h.detach()):
            return f"new_state[{i}] is (c, h); keep the cell's order (h, c)"
        if close(pair[0], old[i][0]) and close(pair[1], old[i][1]):
            return f"new_state[{i}] is the old state; return the cells' new (h, c)"
        for part, name, w in ((pair[0], "h", h), (pair[1], "c", c)):
            if not close(part, w.detach()):
                got_part = show(part) if isinstance(part, torch.Tensor) else type(part).__name__
                return (
                    f"new_state[{i}]'s {name}: expected {show(w)}, got {got_part}; the new "
                    "state is what each cell returns"
                )
    return None


def judge_lstm_step(case: Case, out: Any) -> str | None:
    """``lstm_step(cells, head, grad, state, p, output_scale) -> (update, new_state)``."""
    kw = case.kwargs
    if "raised" in out:
        return _judge_raised(out["raised"])
    if "problem" in out:
        return out["problem"]
    if out["model_changed"]:
        return "the cells' or the head's weights changed; a step only computes the update"
    if out["state_changed"]:
        return "the state passed in changed in place; return the new state as a new list"
    update, new_state, opt = _step(kw)
    want = update.detach()
    n = want.shape[0]
    hints = {
        (n, 1): "squeeze the head's last axis: the update is (n,)",
        (1, n): "the update should be (n,), one value per coordinate",
    }
    got = out["update"]
    problem = _tensor_problem(got, want, "the update", hints)
    if problem:
        return problem
    if not close(got, want):
        wrong = f"the update: expected {show(want)}, got {show(got)}"
        for variant, why in _STEP_GUESSES.items():
            if close(got, _step(kw, variant)[0].detach()):
                return f"{wrong}: {why}"
        perm, moved = out["perm"], out["permuted"]
        if moved is not None and not close(moved, got[perm]):
            return (
                f"{wrong}; permuting the coordinates (and the state's rows) does not permute "
                "the updates, so the coordinates influence each other: the LSTM runs on each "
                "coordinate separately, one row per coordinate"
            )
        return f"{wrong}. {_STEP}."
    problem = _judge_new_state(kw, out["state"], new_state)
    if problem:
        return problem
    if out["grads"] is None:
        return (
            "the update is right but carries no graph back to the cells and the head (computed "
            "under torch.no_grad() or detached); meta-training differentiates through it"
        )
    want_grads = param_grads(update, opt, kw["seed"] + 1)
    for name, w in want_grads.items():
        if not close(out["grads"][name], w):
            return (
                f"the update is right but its gradient with respect to {name} is not: expected "
                f"{show(w)}, got {show(out['grads'][name])}; use differentiable operations only"
            )
    return None


# ---------------------------------------------------------------------------------- q3

_META = (
    "The meta-loss is the mean over the B problems of the sum of f(θ_t) for t = 1..T, where "
    "θ_{t+1} = θ_t + update_t and the LSTM reads g_t, the gradient of the sum of the losses at "
    "θ_t, detached"
)


def _quadratic(W: torch.Tensor, y: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    return (torch.einsum("bmd,bd->bm", W, theta) - y).square().sum(-1)  # (B,)


def _trajectory(kw: dict[str, Any], variant: str = "") -> tuple[torch.Tensor, Any]:
    """The losses ``(T + 1, B)`` along the trajectory (with their graph) and the optimizer,
    unrolled right or with a known mistake in the unroll itself."""
    opt = lstm_optimizer(**kw["optimizer"])
    W, y, theta0 = lopt_problems(**kw["problems"])
    theta = theta0.detach().requires_grad_()
    state = opt.initial_state(theta.numel(), theta)
    losses = [_quadratic(W, y, theta)]
    for _ in range(kw["steps"]):
        if variant == "theta detached":
            theta = theta.detach().requires_grad_()
            losses[-1] = _quadratic(W, y, theta)
        total = losses[-1].mean() if variant == "grad of mean" else losses[-1].sum()
        (grad,) = torch.autograd.grad(
            total, theta, retain_graph=True, create_graph=variant == "second order"
        )
        if variant == "fresh state":
            state = opt.initial_state(theta.numel(), theta)
        update, state = opt(grad.flatten(), state)
        theta = (
            theta - update.view_as(theta) if variant == "minus" else theta + update.view_as(theta)
        )
        losses.append(_quadratic(W, y, theta))
    return torch.stack(losses), opt


_SUMS: dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], str]] = {
    "with θ0": (
        lambda L: L.sum(0).mean(),
        "f(θ_0) was counted too; the sum runs over t = 1..T (no update can change f(θ_0))",
    ),
    "up to T-1": (
        lambda L: L[:-1].sum(0).mean(),
        "this sums f(θ_0) .. f(θ_{T-1}); the sum runs over t = 1..T, the losses after each update",
    ),
    "final": (
        lambda L: L[-1].mean(),
        "this is only the last loss f(θ_T); the meta-loss sums the losses along the trajectory",
    ),
    "mean over steps": (
        lambda L: L[1:].mean(0).mean(),
        "this is the mean over the T steps; take their sum",
    ),
    "sum over problems": (
        lambda L: L[1:].sum(),
        "this is the sum over the B problems; take their mean (and the sum over steps)",
    ),
}
_TRAJECTORY_GUESSES = {
    "grad of mean": (
        "the LSTM read the gradient of the mean of the B losses, B times too small; each "
        "problem's gradient is that of its own loss: differentiate the sum of the losses"
    ),
    "minus": "the update was subtracted; θ_{t+1} = θ_t + update (the LSTM learns the sign)",
    "fresh state": (
        "the LSTM started from a zero state at every step; carry the state returned by each "
        "step into the next"
    ),
}


def _meta(L: torch.Tensor) -> torch.Tensor:
    return L[1:].sum(0).mean()


def judge_meta_loss(case: Case, out: Any) -> str | None:
    """``meta_loss(optimizer, W, y, theta0, steps) -> ()``, with a graph to the optimizer."""
    kw = case.kwargs
    if out["model_changed"]:
        return "the optimizer's weights changed; computing the meta-loss must leave them alone"
    if out["inputs_changed"]:
        return "W, y or theta0 changed in place; leave the inputs as they are"
    if "problem" in out:
        return out["problem"]
    L, opt = _trajectory(kw)
    want, got = _meta(L), out["loss"]
    if got.dtype != want.dtype:
        return f"the meta-loss has dtype {got.dtype}; keep the dtype of the inputs ({want.dtype})"
    if not close(got, want.detach(), loose=True):
        wrong = f"expected meta-loss {float(want.detach()):.8g}, got {float(got):.8g}"
        for total, why in _SUMS.values():
            if close(got, total(L).detach(), loose=True):
                return f"{wrong}: {why}"
        for variant, why in _TRAJECTORY_GUESSES.items():
            if close(got, _meta(_trajectory(kw, variant)[0]).detach(), loose=True):
                return f"{wrong}: {why}"
        return f"{wrong}. {_META}."
    if out["grads"] is None:
        return (
            "the meta-loss is right but carries no graph back to the optimizer's weights "
            "(computed under torch.no_grad(), detached, or from .item()); meta-training "
            "follows its gradient"
        )
    want_grads = param_grads(want, opt, 0)
    wrong = [k for k, w in want_grads.items() if not close(out["grads"][k], w, loose=True)]
    if not wrong:
        return None
    name = wrong[0]
    message = (
        f"the meta-loss is right but its gradient with respect to {name} is not: expected "
        f"{show(want_grads[name])}, got {show(out['grads'][name])}"
    )
    for variant, why in (
        (
            "second order",
            "this is the second-order meta-gradient: g_t kept its graph (create_graph=True). "
            "The paper treats g_t as a constant: compute it without create_graph",
        ),
        (
            "theta detached",
            "θ_t was detached at every step, which cuts the path from each update to the later "
            "losses; keep θ_{t+1} = θ_t + update attached (only g_t is a constant)",
        ),
    ):
        L_variant, opt_variant = _trajectory(kw, variant)
        guess = param_grads(_meta(L_variant), opt_variant, 0)
        if all(close(out["grads"][k], w, loose=True) for k, w in guess.items()):
            return f"{message}: {why}"
    return f"{message}; {_META}"


# ---------------------------------------------------------------------------------- cases


def grad_spec(
    shape: tuple[int, ...] = (8,),
    seed: int = 0,
    low: float = -8.0,
    high: float = 2.0,
    dtype: str = "float64",
    values: list[float] | None = None,
) -> dict[str, Any]:
    if values is not None:
        return {"values": values, "dtype": dtype}
    return {"shape": shape, "seed": seed, "low": low, "high": high, "dtype": dtype}


def _grad_label(grad: dict[str, Any]) -> str:
    if "values" in grad:
        values = torch.tensor(grad["values"]).flatten().tolist()
        if isinstance(grad["values"], float):
            return f"g = {grad['values']:g} (0-d)"
        shown = ", ".join(f"{v:g}" for v in values[:6])
        return f"g = [{shown}{', ...' if len(values) > 6 else ''}]"
    low, high = grad["low"], grad["high"]
    return (
        f"{tuple(grad['shape'])} gradients of magnitude 1e{low:g}..1e{high:g}, seed {grad['seed']}"
    )


def preprocess_case(grad: dict[str, Any], p: float = 10.0, note: str = "") -> Case:
    label = f"{_grad_label(grad)}, p = {p:g}, {grad['dtype']}" + (f" ({note})" if note else "")
    return Case(label, {"grad": grad, "p": p}, probe="lopt_preprocess")


def bad_p_case(p: float) -> Case:
    g = torch.tensor([0.5, -1e-7])
    return raises_case(f"p = {p:g} (p must be positive)", [g, p], [g, 10.0])


def optimizer_spec(
    hidden: int, layers: int, seed: int, p: float = 10.0, scale: float = 0.1, dtype: str = "float64"
) -> dict[str, Any]:
    return {
        "hidden": hidden,
        "layers": layers,
        "seed": seed,
        "p": p,
        "scale": scale,
        "dtype": dtype,
    }


def _optimizer_label(spec: dict[str, Any]) -> str:
    return (
        f"LSTM optimizer with {spec['layers']} cell(s) of {spec['hidden']} units, p = "
        f"{spec['p']:g}, output_scale {spec['scale']:g}, {spec['dtype']}"
    )


def step_case(optimizer: dict[str, Any], grad: dict[str, Any], state: str, seed: int) -> Case:
    n = math.prod(grad["shape"]) if "shape" in grad else len(grad["values"])
    start = "a zero" if state == "zeros" else "a random"
    label = f"{_optimizer_label(optimizer)}, {n} coordinates, {start} state, seed {seed}"
    kwargs = {"optimizer": optimizer, "grad": {**grad, "dtype": optimizer["dtype"]}}
    return Case(label, {**kwargs, "state": state, "seed": seed}, probe="lopt_step")


def meta_case(optimizer: dict[str, Any], B: int, M: int, D: int, steps: int, seed: int) -> Case:
    problems = {"B": B, "M": M, "D": D, "seed": seed, "dtype": optimizer["dtype"]}
    label = (
        f"{_optimizer_label(optimizer)}, {B} quadratic(s) with W {M}x{D}, T = {steps}, seed {seed}"
    )
    return Case(
        label, {"optimizer": optimizer, "problems": problems, "steps": steps}, "lopt_meta_loss"
    )


_HAND = [1.0, -2.0, 0.0, 1e-6, -1e-6, 1e-3, 100.0, -3e-5, math.exp(-10)]

EXERCISE = Exercise(
    "05_learned_optimizers",
    (
        Question(
            "q1",
            "preprocess_gradients",
            2,
            judge_preprocess,
            visible=(
                preprocess_case(grad_spec(values=_HAND), note="zero, tiny, large, the cut-off"),
                preprocess_case(grad_spec((3, 4), seed=1, dtype="float32")),
                preprocess_case(grad_spec((7,), seed=2, low=-4, high=1), p=5.0),
                bad_p_case(0.0),
            ),
            title="the paper's gradient preprocessing",
        ),
        Question(
            "q2",
            "lstm_step",
            4,
            judge_lstm_step,
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
            title="one step of the coordinate-wise LSTM optimizer",
        ),
        Question(
            "q3",
            "meta_loss",
            4,
            judge_meta_loss,
            visible=(
                meta_case(optimizer_spec(4, 1, seed=0), 1, 2, 2, steps=2, seed=0),
                meta_case(optimizer_spec(6, 2, seed=1, scale=0.3), 3, 4, 4, steps=3, seed=1),
                meta_case(optimizer_spec(8, 2, seed=2, dtype="float32"), 2, 5, 3, steps=5, seed=2),
            ),
            title="the unrolled meta-loss on quadratics",
        ),
    ),
)


def check(name: str, fn: Callable[..., Any]) -> feedback.Verdict:
    """Run the visible cases of question ``name`` on ``fn`` and print the verdict."""
    return feedback.check(EXERCISE, name, fn)
