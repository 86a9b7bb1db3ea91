"""Exercise 02_maml: wrong answers name their mistake; other right answers pass."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.func import functional_call

from conftest import (
    exercise_tests,
    solution,
)
from metalib import maml, reptile

NAME = "02_maml"


def _split(params):
    body = {k: w for k, w in params.items() if not k.startswith("head.")}
    return body, {k: w for k, w in params.items() if k.startswith("head.")}


# ------------------------------------------------------------------------- q1: ANIL


def _anil(variant: str):
    """ANIL's inner loop with one mistake a student makes."""

    def anil_inner_loop(model, params, x, y, loss_fn, lr, steps):
        body, head = _split(params)
        if variant == "every weight":
            body, head = {}, dict(params)
        seen = {k: w.detach() for k, w in body.items()} if variant == "features detached" else body
        for _ in range(steps):
            used = head if variant == "model's body" else {**seen, **head}
            loss = loss_fn(functional_call(model, used, (x,)), y)
            grads = torch.autograd.grad(
                loss, list(head.values()), create_graph=variant != "no create_graph"
            )
            head = {k: w - lr * g for (k, w), g in zip(head.items(), grads, strict=True)}
        if variant == "body copied":
            body = {k: w.detach().clone() for k, w in body.items()}
        return head if variant == "head only" else {**body, **head}

    return anil_inner_loop


def _anil_in_place(model, params, x, y, loss_fn, lr, steps):
    for _ in range(steps):
        loss = loss_fn(model(x), y)
        grads = torch.autograd.grad(loss, list(model.head.parameters()))
        with torch.no_grad():
            for p, g in zip(model.head.parameters(), grads, strict=True):
                p -= lr * g
    return {k: p for k, p in model.named_parameters()}


# ------------------------------------------------------------------------- q2: LSLR


def _lslr(variant: str):
    def lslr_meta_gradient(model, params, lrs, sx, sy, qx, qy, loss_fn):
        if variant != "no ValueError" and (
            set(lrs) != set(params) or len({a.shape for a in lrs.values()}) != 1
        ):
            raise ValueError("lrs must match params")
        fast = dict(params)
        for s in range(len(next(iter(lrs.values())))):
            loss = loss_fn(functional_call(model, fast, (sx,)), sy)
            grads = torch.autograd.grad(
                loss, list(fast.values()), create_graph=variant != "no create_graph"
            )
            rate = {k: lrs[k][0 if variant == "first step size" else s] for k in fast}
            if variant == "item":
                rate = {k: a.item() for k, a in rate.items()}
            fast = {k: w - rate[k] * g for (k, w), g in zip(fast.items(), grads, strict=True)}
        loss = loss_fn(functional_call(model, fast, (qx,)), qy)
        leaves = [*params.values(), *(lrs[k] for k in params)]
        found = torch.autograd.grad(loss, leaves, allow_unused=True)
        found = [
            torch.zeros_like(v) if g is None else g for v, g in zip(leaves, found, strict=True)
        ]
        n = len(params)
        return dict(zip(params, found[:n], strict=True)), dict(zip(params, found[n:], strict=True))

    return lslr_meta_gradient


# ------------------------------------------------------------------------- q3: Reptile, Adam


def _reptile(variant: str):
    """Reptile with a hand-written Adam and one mistake a student makes."""

    def reptile_adam(model, params, x, y, loss_fn, steps, lr, betas, beta):
        if variant != "no ValueError" and len(x) != len(y):
            raise ValueError("x and y hold different numbers of tasks")
        b1, b2 = betas
        start, adapted = dict(params), []
        m = {k: torch.zeros_like(t) for k, t in params.items()}
        v = {k: torch.zeros_like(t) for k, t in params.items()}
        t = 0
        for xi, yi in zip(x, y, strict=False):
            w = {k: a.clone().requires_grad_() for k, a in start.items()}
            if variant != "shared moments":
                m = {k: torch.zeros_like(a) for k, a in params.items()}
                v = {k: torch.zeros_like(a) for k, a in params.items()}
                t = 0
            for _ in range(steps):
                loss = loss_fn(functional_call(model, w, (xi,)), yi)
                grads = dict(zip(w, torch.autograd.grad(loss, list(w.values())), strict=True))
                t += 1
                with torch.no_grad():
                    for k in w:
                        m[k] = b1 * m[k] + (1 - b1) * grads[k]
                        v[k] = b2 * v[k] + (1 - b2) * grads[k] ** 2
                        step = (m[k] / (1 - b1**t)) / ((v[k] / (1 - b2**t)).sqrt() + 1e-8)
                        step = grads[k] if variant == "sgd" else step
                        w[k] = (w[k] - lr * step).requires_grad_()
            adapted.append({k: a.detach() for k, a in w.items()})
            if variant == "serial":
                start = adapted[-1]
        mean = {k: torch.stack([a[k] for a in adapted]).mean(0) for k in params}
        total = len(adapted) if variant == "sum" else 1
        return {k: t + beta * total * (mean[k] - t) for k, t in params.items()}

    return reptile_adam


def _reptile_torch(variant: str):
    """Reptile with torch.optim.Adam and one mistake a student makes."""

    def reptile_adam(model, params, x, y, loss_fn, steps, lr, betas, beta):
        if len(x) != len(y):
            raise ValueError("x and y hold different numbers of tasks")
        adapted = []
        for xi, yi in zip(x, y, strict=True):
            w = params if variant == "in place" else {k: t.clone() for k, t in params.items()}
            w = {k: t.requires_grad_() for k, t in w.items()}
            kwargs = {} if variant == "default betas" else {"betas": betas}
            optimiser = torch.optim.Adam(w.values(), lr=lr, **kwargs)
            for _ in range(steps):
                optimiser.zero_grad()
                loss_fn(functional_call(model, w, (xi,)), yi).backward()
                optimiser.step()
            adapted.append({k: t.detach().clone() for k, t in w.items()})
        stacked = {k: torch.stack([a[k] for a in adapted]) for k in params}
        return reptile.update({k: t.detach() for k, t in params.items()}, stacked, beta)

    return reptile_adam


# ------------------------------------------------------------------------- q4: the experiment


def anil_inner_loop(*args):
    """The solution's; while a case of q4 runs, the grader puts the reference in its place."""
    return solution(NAME)["anil_inner_loop"](*args)


def _every_weight(model, params, x, y, loss_fn, lr, n):
    return maml.adapt(model, params, x, y, loss_fn, n, lr, first_order=True)


def _sweep(variant: str = ""):
    """The experiment, each setting started afresh from θ; with ``variant``, a mistake."""

    def inner_lr_sweep(model, support_x, support_y, query_x, query_y, loss_fn, lrs, steps):
        theta = {k: w.detach().requires_grad_() for k, w in model.named_parameters()}
        modes = {"all": _every_weight, "head": anil_inner_loop}
        if variant == "swapped":
            modes = {"all": anil_inner_loop, "head": _every_weight}
        result = {}
        for mode, inner in modes.items():
            loss = torch.empty(len(steps), len(lrs), dtype=torch.float64)
            for i, n in enumerate(steps):
                for j, lr in enumerate(lrs):
                    found = []
                    for sx, sy, qx, qy in zip(support_x, support_y, query_x, query_y, strict=True):
                        x, y = (qx, qy) if variant == "query" else (sx, sy)
                        fast = inner(model, theta, x, y, loss_fn, lr, n)
                        found.append(loss_fn(functional_call(model, fast, (qx,)), qy).item())
                    mean = sum(found) / (1 if variant == "sum" else len(found))
                    ok = variant == "no inf" or (math.isfinite(mean) and mean <= 1e6)
                    loss[i, j] = mean if ok else math.inf
            i, j = divmod(int(torch.nan_to_num(loss, nan=math.inf).argmin()), len(lrs))
            grid = loss.T if variant == "transposed" else loss
            result[mode] = {"loss": grid, "best_lr": lrs[j], "best_steps": steps[i]}
        return result

    return inner_lr_sweep


def _sweep_vectorised(model, support_x, support_y, query_x, query_y, loss_fn, lrs, steps):
    """Another right answer: the tasks under torch.func.vmap, one trajectory per step size."""
    theta = {k: w.detach() for k, w in model.named_parameters()}
    result = {}
    for mode in ("all", "head"):
        columns = []
        for lr in lrs:

            def losses(sx, sy, qx, qy, lr=lr, mode=mode):
                fast, done, found = theta, 0, []
                for n in steps:
                    if mode == "all":
                        fast = _every_weight(model, fast, sx, sy, loss_fn, lr, n - done)
                    else:
                        fast = anil_inner_loop(model, fast, sx, sy, loss_fn, lr, n - done)
                    done = n
                    found.append(loss_fn(functional_call(model, fast, (qx,)), qy))
                return torch.stack(found)

            columns.append(torch.func.vmap(losses)(support_x, support_y, query_x, query_y).mean(0))
        loss = torch.stack(columns, dim=1)
        loss = torch.where(torch.isfinite(loss) & (loss <= 1e6), loss, torch.inf)
        i, j = divmod(int(loss.argmin()), len(lrs))
        result[mode] = {
            "loss": loss,
            "best_lr": torch.tensor(lrs[j]),
            "best_steps": float(steps[i]),
        }
    return result


SECOND_ORDER = "it is first order, as if the inner gradients were constants"
WRONG = {
    "MAML's inner loop": ("q1", _anil("every weight"), "the body moved too"),
    "inner gradients without create_graph": ("q1", _anil("no create_graph"), SECOND_ORDER),
    "features from a detached body": ("q1", _anil("features detached"), "do not depend on params"),
    "the body copied out of the graph": ("q1", _anil("body copied"), "cut from the graph"),
    "the model's own body": ("q1", _anil("model's body"), "on the model's own weights"),
    "the head alone returned": ("q1", _anil("head only"), "has no 'body"),
    "the head trained in place": ("q1", _anil_in_place, "model changed in place"),
    "LSLR without create_graph": ("q2", _lslr("no create_graph"), SECOND_ORDER),
    "one step size for every step": (
        "q2",
        _lslr("first step size"),
        "every step used lrs[name][0]",
    ),
    "step sizes as numbers": ("q2", _lslr("item"), "the step sizes got no gradient"),
    "no ValueError for uneven lrs": ("q2", _lslr("no ValueError"), "expected a ValueError"),
    "SGD inside": ("q3", _reptile("sgd"), "plain SGD"),
    "Adam's moments shared by the tasks": ("q3", _reptile("shared moments"), "carried from one"),
    "tasks one after another": ("q3", _reptile("serial"), "one after another"),
    "a sum, not a mean": ("q3", _reptile("sum"), "summed the tasks' moves"),
    "Adam's default betas": ("q3", _reptile_torch("default betas"), "not the betas given"),
    "θ trained in place": ("q3", _reptile_torch("in place"), "params changed in place"),
    "no ValueError for fewer targets": ("q3", _reptile("no ValueError"), "expected a ValueError"),
    "losses summed over the tasks": ("q4", _sweep("sum"), "summed over the tasks"),
    "diverged runs kept": ("q4", _sweep("no inf"), "diverged runs must count as inf"),
    "modes swapped": ("q4", _sweep("swapped"), "'all' and 'head' are swapped"),
    "adapted on the query set": ("q4", _sweep("query"), "adapted on their query sets"),
    "grid transposed": ("q4", _sweep("transposed"), "one row per number of steps"),
}


def _anil_features_once(model, params, x, y, loss_fn, lr, steps):
    """The body's features computed once (with the graph), the head stepped on them."""
    body, head = _split(params)
    features = functional_call(model.body, {k[len("body.") :]: w for k, w in body.items()}, (x,))

    def support_loss(h):
        return loss_fn(F.linear(features, h["head.weight"], h["head.bias"]), y)

    for _ in range(steps):
        grads = torch.func.grad(support_loss)(head)
        head = {k: w - lr * grads[k] for k, w in head.items()}
    return {**body, **head}


def _lslr_with_func_grad(model, params, lrs, sx, sy, qx, qy, loss_fn):
    if set(lrs) != set(params) or len({len(a) for a in lrs.values()}) != 1:
        raise ValueError("one 1-D tensor of step sizes per name of params, all of one length")

    def support_loss(p):
        return loss_fn(functional_call(model, p, (sx,)), sy)

    fast = params
    for s in range(len(next(iter(lrs.values())))):
        grads = torch.func.grad(support_loss)(fast)
        fast = {k: w - lrs[k][s] * grads[k] for k, w in fast.items()}
    loss = loss_fn(functional_call(model, fast, (qx,)), qy)
    names = list(params)
    leaves = [*params.values(), *(lrs[k] for k in names)]
    found = torch.autograd.grad(loss, leaves, allow_unused=True)
    found = [torch.zeros_like(v) if g is None else g for v, g in zip(leaves, found, strict=True)]
    n = len(names)
    return dict(zip(names, found[:n], strict=True)), dict(zip(names, found[n:], strict=True))


OTHER = [
    ("q1", _anil_features_once),
    ("q2", _lslr_with_func_grad),
    ("q3", _reptile("")),
    ("q4", _sweep()),
    ("q4", _sweep_vectorised),
]
OTHER_IDS = ["features once", "torch.func.grad", "Adam by hand", "afresh per setting", "vmap"]


(
    test_a_wrong_answer_fails_with_a_helpful_message,
    test_every_question_has_a_wrong_answer,
    test_other_right_answers_pass_every_case,
) = exercise_tests(NAME, WRONG, OTHER, OTHER_IDS)
