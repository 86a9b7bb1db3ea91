"""Exercise 02_maml: wrong answers name their mistake; other right answers pass."""

from __future__ import annotations

import pytest
import torch

from conftest import (
    exercise,
    right_answer_passes,
    solution,
    wrong_answer_fails,
)

NAME = "02_maml"


def _inner(variant: str):
    """An inner loop that takes the right steps but keeps too little of their graph."""

    def inner_loop(model, params, x, y, loss_fn, lr, steps):
        fast = dict(params)
        for _ in range(steps):
            if variant == "no graph":
                fast = {k: w.detach().requires_grad_() for k, w in fast.items()}
            loss = loss_fn(torch.func.functional_call(model, fast, (x,)), y)
            grads = torch.autograd.grad(loss, list(fast.values()))  # no create_graph
            fast = {k: w - lr * g for (k, w), g in zip(fast.items(), grads, strict=True)}
            if variant == "no graph":
                fast = {k: w.detach() for k, w in fast.items()}
        return fast

    return inner_loop


def _inner_in_place(model, params, x, y, loss_fn, lr, steps):
    for _ in range(steps):
        loss = loss_fn(model(x), y)
        grads = torch.autograd.grad(loss, list(model.parameters()))
        with torch.no_grad():
            for p, g in zip(model.parameters(), grads, strict=True):
                p -= lr * g
    return {k: p for k, p in model.named_parameters() if k in params}


def _inner_ascent(model, params, x, y, loss_fn, lr, steps):
    return solution("02_maml")["inner_loop"](model, params, x, y, loss_fn, -lr, steps)


def _maml(variant: str):
    ns = solution("02_maml")

    def maml_meta_gradient(model, params, sx, sy, qx, qy, loss_fn, lr, steps):
        inner = _inner("detached") if variant == "detached inner loop" else ns["inner_loop"]
        fast = inner(model, params, sx, sy, loss_fn, lr, 0 if variant == "no adaptation" else steps)
        loss = loss_fn(torch.func.functional_call(model, fast, (qx,)), qy)
        wrt = fast if variant == "wrt adapted" else params
        return dict(zip(params, torch.autograd.grad(loss, list(wrt.values())), strict=True))

    return maml_meta_gradient


def _fomaml(variant: str):
    ns = solution("02_maml")

    def fomaml_meta_gradient(model, params, sx, sy, qx, qy, loss_fn, lr, steps):
        if variant == "second order":
            return ns["maml_meta_gradient"](model, params, sx, sy, qx, qy, loss_fn, lr, steps)
        return ns["fomaml_meta_gradient"](model, params, sx, sy, qx, qy, loss_fn, lr, 0)

    return fomaml_meta_gradient


def _reptile(variant: str):
    def reptile_update(params, adapted, beta):
        new = {}
        for k, theta in params.items():
            w = adapted[k]
            if variant != "no ValueError" and w.shape[1:] != theta.shape:
                raise ValueError("adapted needs a task axis")
            if variant == "sum":
                new[k] = theta + beta * (w - theta).sum(dim=0)
            elif variant == "wrong sign":
                new[k] = theta - beta * (w - theta).mean(dim=0)
            elif variant == "in place":
                new[k] = theta.add_(beta * (w - theta).mean(dim=0))
            else:
                new[k] = theta + beta * (w - theta).mean(dim=0)
        return new

    return reptile_update


SECOND_ORDER_MISSING = "the second-order term is missing"
WRONG = {
    "inner gradients without create_graph": ("q1", _inner("detached"), "it is first order"),
    "inner loop under no graph": ("q1", _inner("no graph"), "carry no graph back to params"),
    "the model trained in place": ("q1", _inner_in_place, "model changed in place"),
    "gradient ascent inside": ("q1", _inner_ascent, "this is gradient ascent"),
    "a detached inner loop": ("q2", _maml("detached inner loop"), SECOND_ORDER_MISSING),
    "gradient wrt the adapted weights": ("q2", _maml("wrt adapted"), SECOND_ORDER_MISSING),
    "no adaptation": ("q2", _maml("no adaptation"), "before any inner step"),
    "the Hessian term kept": ("q3", _fomaml("second order"), "this is the second-order"),
    "the query gradient at θ": ("q3", _fomaml("at theta"), "before any inner step"),
    "a sum, not a mean": ("q4", _reptile("sum"), "times too far"),
    "away from the tasks": ("q4", _reptile("wrong sign"), "wrong sign"),
    "θ changed in place": ("q4", _reptile("in place"), "changed in place"),
    "no ValueError without the task axis": (
        "q4",
        _reptile("no ValueError"),
        "expected a ValueError",
    ),
}


@pytest.mark.parametrize(
    ("variant", "qname", "fn", "says"), [(k, *v) for k, v in WRONG.items()], ids=str
)
def test_a_wrong_answer_fails_with_a_helpful_message(variant, qname, fn, says):
    wrong_answer_fails(NAME, variant, qname, fn, says)


def test_every_question_has_a_wrong_answer():
    assert {q for q, _, _ in WRONG.values()} == {q.name for q in exercise(NAME).questions}


def _inner_with_func_grad(model, params, x, y, loss_fn, lr, steps):
    def loss(p):
        return loss_fn(torch.func.functional_call(model, p, (x,)), y)

    fast = params
    for _ in range(steps):
        grads = torch.func.grad(loss)(fast)
        fast = {k: w - lr * grads[k] for k, w in fast.items()}
    return fast


def _maml_with_backward(model, params, sx, sy, qx, qy, loss_fn, lr, steps):
    fast = _inner_with_func_grad(model, params, sx, sy, loss_fn, lr, steps)
    loss_fn(torch.func.functional_call(model, fast, (qx,)), qy).backward()
    return {k: p.grad for k, p in params.items()}


def _fomaml_by_detaching(model, params, sx, sy, qx, qy, loss_fn, lr, steps):
    fast = solution("02_maml")["inner_loop"](model, params, sx, sy, loss_fn, lr, steps)
    fast = {k: w.detach().requires_grad_() for k, w in fast.items()}
    loss = loss_fn(torch.func.functional_call(model, fast, (qx,)), qy)
    return dict(zip(fast, torch.autograd.grad(loss, list(fast.values())), strict=True))


def _reptile_interpolating(params, adapted, beta):
    if any(adapted[k].shape[1:] != t.shape for k, t in params.items()):
        raise ValueError("adapted needs a leading task axis")
    return {k: torch.lerp(t, adapted[k].mean(dim=0), beta) for k, t in params.items()}


OTHER = [
    ("q1", _inner_with_func_grad),
    ("q2", _maml_with_backward),
    ("q3", _fomaml_by_detaching),
    ("q4", _reptile_interpolating),
]
OTHER_IDS = ["torch.func.grad", "backward", "detached after", "lerp"]


@pytest.mark.parametrize(("qname", "fn"), OTHER, ids=OTHER_IDS)
def test_other_right_answers_pass_every_case(qname, fn):
    right_answer_passes(NAME, qname, fn)
