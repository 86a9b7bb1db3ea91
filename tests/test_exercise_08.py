"""Exercise 08_meta_knowledge: wrong answers name their mistake; other right answers pass."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import (
    exercise,
    right_answer_passes,
    solution,
    wrong_answer_fails,
)
from metalib import maml
from metalib.nets import forward_with

NAME = "08_meta_knowledge"


def _weighted_step(variant: str):
    def weighted_step(model, params, x, y, weights, lr):
        losses = F.cross_entropy(forward_with(model, params, x), y, reduction="none")
        w = weights.detach() if variant == "detached" else weights
        loss = {
            "mean": (w * losses).mean(),
            "unweighted": losses.mean(),
            "unweighted sum": losses.sum(),
        }.get(variant, (w * losses).sum())
        second = variant != "no create_graph"
        grads = torch.autograd.grad(loss, list(params.values()), create_graph=second)
        sign = -1.0 if variant == "ascent" else 1.0
        return {k: p - sign * lr * g for (k, p), g in zip(params.items(), grads, strict=True)}

    return weighted_step


def _example_weights(variant: str):
    step = solution("08_meta_knowledge")["weighted_step"]

    def example_weights(model, params, x, y, val_x, val_y, lr):
        start = 1.0 / len(y) if variant == "uniform start" else 0.0
        eps = torch.full((len(y),), start, dtype=x.dtype, requires_grad=True)
        fast = step(model, params, x, y, eps, lr)
        vx, vy = (x, y) if variant == "train as val" else (val_x, val_y)
        val_loss = F.cross_entropy(forward_with(model, fast, vx), vy)
        (g,) = torch.autograd.grad(val_loss, eps, create_graph=variant == "graph kept")
        if variant == "sign":
            g = -g
        if variant == "no clamp":
            return -g / (-g).sum()
        w = (-g).clamp(min=0)
        if variant == "not normalised":
            return w
        if variant == "nan":
            return w / w.sum()
        w = w / w.sum() if w.sum() > 0 else w
        return w if variant == "graph kept" else w.detach()

    return example_weights


def _inner_update(variant: str):
    def inner_update(params, grads, lrs):
        if variant != "no ValueError":
            solution("08_meta_knowledge")["inner_update"](params, grads, lrs)  # its checks
        if variant == "by position":
            return {
                k: p - a * g
                for (k, p), g, a in zip(params.items(), grads.values(), lrs.values(), strict=True)
            }
        if variant == "scalar":
            alpha = torch.cat([a.flatten() for a in lrs.values()]).mean()
            return {k: p - alpha * grads[k] for k, p in params.items()}
        if variant == "in place":
            for k, p in params.items():
                p.sub_(lrs[k] * grads[k])
            return params
        sign = -1.0 if variant == "added" else 1.0
        return {
            k: p - sign * (lrs[k].detach() if variant == "detached" else lrs[k]) * grads[k]
            for k, p in params.items()
        }

    return inner_update


WRONG = {
    "a mean of the weighted losses": ("q1", _weighted_step("mean"), "times too short"),
    "weights ignored (mean)": ("q1", _weighted_step("unweighted"), "weights were ignored"),
    "weights ignored (sum)": ("q1", _weighted_step("unweighted sum"), "weights were ignored"),
    "gradient ascent": ("q1", _weighted_step("ascent"), "gradient ascent"),
    "weights detached": ("q1", _weighted_step("detached"), "the weights were detached"),
    "no create_graph": ("q1", _weighted_step("no create_graph"), "create_graph=True"),
    "sign of g flipped": ("q2", _example_weights("sign"), "the sign is flipped"),
    "no clamp": ("q2", _example_weights("no clamp"), "without the clamp"),
    "not normalised": ("q2", _example_weights("not normalised"), "not normalised"),
    "0/0 when no example helps": ("q2", _example_weights("nan"), "return the zeros"),
    "ε at 1/n": ("q2", _example_weights("uniform start"), "take it at ε = 0"),
    "validation loss on the training batch": (
        "q2",
        _example_weights("train as val"),
        "use (val_x, val_y)",
    ),
    "weights not detached": ("q2", _example_weights("graph kept"), "return them detached"),
    "one scalar step size": ("q3", _inner_update("scalar"), "one step size"),
    "α·g added": ("q3", _inner_update("added"), "was added"),
    "dicts paired by position": ("q3", _inner_update("by position"), "by its name"),
    "step sizes detached": ("q3", _inner_update("detached"), "back to the step sizes"),
    "θ updated in place": ("q3", _inner_update("in place"), "in place"),
    "no ValueError": ("q3", _inner_update("no ValueError"), "expected a ValueError"),
}


@pytest.mark.parametrize(
    ("variant", "qname", "fn", "says"), [(k, *v) for k, v in WRONG.items()], ids=str
)
def test_a_wrong_answer_fails_with_a_helpful_message(variant, qname, fn, says):
    wrong_answer_fails(NAME, variant, qname, fn, says)


def test_every_question_has_a_wrong_answer():
    assert {q for q, _, _ in WRONG.values()} == {q.name for q in exercise(NAME).questions}


def _weighted_step_func(model, params, x, y, weights, lr):
    def loss(p):
        return weights @ F.cross_entropy(
            torch.func.functional_call(model, p, (x,)), y, reduction="none"
        )

    grads = torch.func.grad(loss)(params)
    new = {}
    for k in reversed(params):  # any order of the names will do
        new[k] = params[k] - lr * grads[k]
    return new


def _example_weights_by_dot_products(model, params, x, y, val_x, val_y, lr):
    """At ε = 0, g_i = −lr ∇L_val(θ)·∇ℓ_i(θ): no look-ahead step needed."""
    names = list(params)
    val_loss = F.cross_entropy(forward_with(model, params, val_x), val_y)
    val_grad = torch.autograd.grad(val_loss, [params[k] for k in names])
    losses = F.cross_entropy(forward_with(model, params, x), y, reduction="none")
    g = []
    for i in range(len(y)):
        grad_i = torch.autograd.grad(losses[i], [params[k] for k in names], retain_graph=True)
        g.append(-lr * sum((a * b).sum() for a, b in zip(val_grad, grad_i, strict=True)))
    w = torch.stack(g).neg().clamp(min=0).detach()
    return w / w.sum() if w.sum() > 0 else w


def _example_weights_summed_by_backward(model, params, x, y, val_x, val_y, lr):
    """The validation loss summed (g scales, the normalised weights do not), and backward."""
    eps = torch.zeros_like(y, dtype=next(iter(params.values())).dtype).requires_grad_()
    fast = solution("08_meta_knowledge")["weighted_step"](model, params, x, y, eps, lr)
    F.cross_entropy(forward_with(model, fast, val_x), val_y, reduction="sum").backward()
    w = torch.relu(-eps.grad)
    for p in params.values():
        p.grad = None
    return torch.nan_to_num(w / w.sum())


def _inner_update_addcmul(params, grads, lrs):
    maml.check_step_sizes(params, lrs)
    if set(grads) != set(params) or any(grads[k].shape != p.shape for k, p in params.items()):
        raise ValueError("grads must match params")
    return {k: torch.addcmul(params[k], lrs[k], grads[k], value=-1) for k in lrs}  # lrs' order


OTHER = [
    ("q1", _weighted_step_func),
    ("q2", _example_weights_by_dot_products),
    ("q2", _example_weights_summed_by_backward),
    ("q3", _inner_update_addcmul),
]
OTHER_IDS = ["torch.func.grad and a loop", "dot products", "summed loss and backward", "addcmul"]


@pytest.mark.parametrize(("qname", "fn"), OTHER, ids=OTHER_IDS)
def test_other_right_answers_pass_every_case(qname, fn):
    right_answer_passes(NAME, qname, fn)
