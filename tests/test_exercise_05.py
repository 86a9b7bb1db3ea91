"""Exercise 05_learned_optimizers: wrong answers name their mistake; other right answers pass."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import (
    exercise,
    right_answer_passes,
    solution,
    wrong_answer_fails,
)

NAME = "05_learned_optimizers"


def _preprocess(variant: str):
    def preprocess_gradients(grad, p=10.0):
        if p <= 0 and variant != "no ValueError":
            raise ValueError("p must be positive")
        big = grad.abs() >= math.exp(-p)
        if variant == "swapped":
            big = ~big
        log = grad.log() if variant == "no abs" else grad.abs().log()
        first = torch.where(big, log if variant == "no /p" else log / p, -torch.ones_like(grad))
        sign = torch.ones_like(grad) if variant == "no sign" else grad.sign()
        small = grad if variant == "small g" else grad * math.exp(p)
        return torch.stack([first, torch.where(big, sign, small)], 0 if variant == "dim 0" else -1)

    return preprocess_gradients


def _lstm_step(variant: str):
    def lstm_step(cells, head, grad, state, p=10.0, output_scale=0.1):
        x = solution("05_learned_optimizers")["preprocess_gradients"](grad, p)
        if variant == "one input":
            x = x.reshape(1, -1)  # the whole gradient as one row
        elif variant == "interleaved":
            x = x.reshape(2, -1).T  # (n, 2), but each row mixes two coordinates
        elif variant == "raw":
            x = grad[:, None]
        if variant == "zero state":
            state = [(torch.zeros_like(h), torch.zeros_like(c)) for h, c in state]
        new = []
        for i, (cell, (h, c)) in enumerate(zip(cells, state, strict=True)):
            h, c = cell(x, (h, c))
            new.append((c, h) if variant == "c, h" else (h, c))
            if variant == "in place":
                state[i] = (h, c)
            x = h
        update = head(x).squeeze(-1) * (1.0 if variant == "no scale" else output_scale)
        if variant == "detached":
            update = update.detach()
        if variant == "no state":
            return update
        return update, state if variant == "old state" else new

    return lstm_step


def _meta_loss(variant: str):
    def meta_loss(optimizer, W, y, theta0, steps):
        def f(theta):
            return ((W @ theta.unsqueeze(-1)).squeeze(-1) - y).square().sum(-1)

        theta = theta0.detach().requires_grad_()
        state = optimizer.initial_state(theta.numel(), theta)
        losses = [f(theta)]
        for _ in range(steps):
            if variant == "theta detached":  # a leaf at every step cuts the path through θ
                theta = theta.detach().requires_grad_()
                losses[-1] = f(theta)
            total = losses[-1].mean() if variant == "grad of mean" else losses[-1].sum()
            second = variant == "second order"
            (g,) = torch.autograd.grad(total, theta, retain_graph=True, create_graph=second)
            if variant == "fresh state":
                state = optimizer.initial_state(theta.numel(), theta)
            update, state = optimizer(g.flatten(), state)
            theta = (
                theta - update.view_as(theta)
                if variant == "minus"
                else theta + update.view(theta.shape)
            )
            losses.append(f(theta))
        L = torch.stack(losses)  # (T + 1, B)
        out = {
            "with theta0": L.sum(0).mean(),
            "up to T-1": L[:-1].sum(0).mean(),
            "final": L[-1].mean(),
            "mean over steps": L[1:].mean(0).mean(),
            "sum over problems": L[1:].sum(),
        }.get(variant, L[1:].sum(0).mean())
        return torch.tensor(out.item(), dtype=out.dtype) if variant == "item" else out

    return meta_loss


WRONG = {
    "log not divided by p": ("q1", _preprocess("no /p"), "not divided by p"),
    "branches swapped": ("q1", _preprocess("swapped"), "branches are swapped"),
    "sign dropped": ("q1", _preprocess("no sign"), "sign was dropped"),
    "tiny gradients not scaled": ("q1", _preprocess("small g"), "scaled up"),
    "log of g, not |g|": ("q1", _preprocess("no abs"), "compute |g| before the log"),
    "stacked on the first axis": ("q1", _preprocess("dim 0"), "stack them on the last"),
    "no ValueError for p = 0": ("q1", _preprocess("no ValueError"), "expected a ValueError"),
    "the gradient as one input": ("q2", _lstm_step("one input"), "applied coordinate-wise"),
    "coordinates mixed": ("q2", _lstm_step("interleaved"), "coordinates influence each other"),
    "the raw gradient": ("q2", _lstm_step("raw"), "not the raw gradient"),
    "no output scale": ("q2", _lstm_step("no scale"), "not multiplied by output_scale"),
    "the state ignored": ("q2", _lstm_step("zero state"), "state passed in was ignored"),
    "state not returned": ("q2", _lstm_step("no state"), "return a pair (update, new_state)"),
    "old state returned": ("q2", _lstm_step("old state"), "is the old state"),
    "(c, h) returned": ("q2", _lstm_step("c, h"), "is (c, h)"),
    "state changed in place": ("q2", _lstm_step("in place"), "changed in place"),
    "update detached": ("q2", _lstm_step("detached"), "no graph back to the cells"),
    "θ0's loss counted": ("q3", _meta_loss("with theta0"), "f(θ_0) was counted"),
    "losses of θ0..θ_{T-1}": ("q3", _meta_loss("up to T-1"), "the losses after each update"),
    "only the final loss": ("q3", _meta_loss("final"), "only the last loss"),
    "mean over steps": ("q3", _meta_loss("mean over steps"), "mean over the T steps"),
    "sum over problems": ("q3", _meta_loss("sum over problems"), "sum over the B problems"),
    "second-order meta-gradient": ("q3", _meta_loss("second order"), "second-order meta-grad"),
    "θ detached every step": ("q3", _meta_loss("theta detached"), "θ_t was detached"),
    "gradient of the mean loss": ("q3", _meta_loss("grad of mean"), "gradient of the mean"),
    "update subtracted": ("q3", _meta_loss("minus"), "update was subtracted"),
    "state reset every step": ("q3", _meta_loss("fresh state"), "zero state at every step"),
    "meta-loss from .item()": ("q3", _meta_loss("item"), "no graph back to the optimizer"),
}


@pytest.mark.parametrize(
    ("variant", "qname", "fn", "says"), [(k, *v) for k, v in WRONG.items()], ids=str
)
def test_a_wrong_answer_fails_with_a_helpful_message(variant, qname, fn, says):
    wrong_answer_fails(NAME, variant, qname, fn, says)


def test_every_question_has_a_wrong_answer():
    assert {q for q, _, _ in WRONG.values()} == {q.name for q in exercise(NAME).questions}


def _preprocess_by_masks(grad, p=10.0):
    if p <= 0:
        raise ValueError("p must be positive")
    out = torch.stack([-torch.ones_like(grad), grad * math.exp(p)], dim=-1)
    big = grad.abs() >= math.exp(-p)
    out[big] = torch.stack([grad[big].abs().log() / p, grad[big].sign()], dim=-1)
    return out


def _step_coordinate_by_coordinate(cells, head, grad, state, p=10.0, output_scale=0.1):
    preprocess = solution("05_learned_optimizers")["preprocess_gradients"]
    updates, rows = [], []
    for i in range(len(grad)):
        x, row = preprocess(grad[i : i + 1], p), []
        for cell, (h, c) in zip(cells, state, strict=True):
            h, c = cell(x, (h[i : i + 1], c[i : i + 1]))
            row.append((h, c))
            x = h
        updates.append(output_scale * head(x)[:, 0])
        rows.append(row)
    new_state = [
        tuple(torch.cat([row[layer][k] for row in rows]) for k in (0, 1))
        for layer in range(len(cells))
    ]
    return torch.cat(updates), new_state


def _meta_loss_fresh_leaves(optimizer, W, y, theta0, steps):
    def f(theta):
        return (torch.einsum("bmd,bd->bm", W, theta) - y).pow(2).sum(-1)

    theta, state, total = theta0, optimizer.initial_state(theta0.numel(), theta0), 0.0
    for _ in range(steps):
        leaf = theta.detach().requires_grad_()
        (g,) = torch.autograd.grad(f(leaf).sum(), leaf)
        update, state = optimizer(g.flatten(), state)
        theta = theta + update.view_as(theta)
        total = total + f(theta).mean()
    return total


def _meta_loss_gradient_by_hand(optimizer, W, y, theta0, steps):
    theta, state, losses = theta0, optimizer.initial_state(theta0.numel(), theta0), []
    for _ in range(steps):
        residual = (W @ theta[..., None])[..., 0] - y  # (B, M)
        g = 2 * (W.transpose(1, 2) @ residual[..., None])[..., 0]  # ∇ ||Wθ − y||²
        update, state = optimizer(g.detach().flatten(), state)
        theta = theta + update.view_as(theta)
        losses.append(((W @ theta[..., None])[..., 0] - y).square().sum(-1))
    return torch.stack(losses).sum(0).mean()


OTHER = [
    ("q1", _preprocess_by_masks),
    ("q2", _step_coordinate_by_coordinate),
    ("q3", _meta_loss_fresh_leaves),
    ("q3", _meta_loss_gradient_by_hand),
]
OTHER_IDS = ["masks", "coordinate by coordinate", "a fresh leaf per gradient", "gradient by hand"]


@pytest.mark.parametrize(("qname", "fn"), OTHER, ids=OTHER_IDS)
def test_other_right_answers_pass_every_case(qname, fn):
    right_answer_passes(NAME, qname, fn)
