"""Exercise 01_finetuning: wrong answers fail with a message naming the mistake."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import (
    exercise,
    hidden_cases,
    right_answer_passes,
    solution,
    wrong_answer_fails,
)
from metalib.grading.feedback import run_case

NAME = "01_finetuning"


def _freeze(variant: str):
    def freeze_blocks(model, k):
        if not 0 <= k <= 4:
            raise ValueError("k must be 0..4")
        for i, block in enumerate(list(model.body)[:4]):
            if variant == "one too few":
                block.requires_grad_(i >= k - 1)
            elif variant == "rest untouched":
                if i < k:
                    block.requires_grad_(False)
            else:
                block.requires_grad_(i >= k)
        if variant != "rest untouched":
            model.head.requires_grad_(True)
        return None if variant == "returns None" else model

    return freeze_blocks


def _head(variant: str):
    def new_head(model, n_way, generator):
        new = {"in place": model, "shallow": copy.copy(model)}.get(variant) or copy.deepcopy(model)
        d = model.feature_dim
        head = nn.Linear(d, n_way, dtype=model.head.weight.dtype)  # global generator
        with torch.no_grad():
            if variant == "zeros":
                head.weight.zero_()
                head.bias.zero_()
            elif variant != "global generator":
                head.weight.uniform_(-(d**-0.5), d**-0.5, generator=generator)
                head.bias.uniform_(-(d**-0.5), d**-0.5, generator=generator)
        new.head = head
        return new

    return new_head


def _step(variant: str):
    def sgd_step(model, x, y, lr):
        loss = F.cross_entropy(model(x), y)
        loss.backward()  # gradients pile up in p.grad unless cleared
        with torch.no_grad():
            for p in model.parameters():
                if p.grad is not None:
                    p += lr * p.grad if variant == "wrong sign" else -lr * p.grad
                    if variant != "grads pile up":
                        p.grad = None
        if variant == "loss after":
            return F.cross_entropy(model(x), y).item()
        return loss.item()

    return sgd_step


def _finetune(variant: str):
    ns = solution("01_finetuning")

    def finetune(model, support_x, support_y, steps, lr, frozen_blocks):
        net = model if variant == "no copy" else copy.deepcopy(model)
        ns["freeze_blocks"](net, frozen_blocks)
        if variant == "adam":
            opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=lr)
            for _ in range(steps):
                opt.zero_grad()
                F.cross_entropy(net(support_x), support_y).backward()
                opt.step()
            return net
        for _ in range(steps):
            ns["sgd_step"](net, support_x, support_y, lr)
        return net

    return finetune


def _accuracy_one_at_a_time(model, x, y):
    with torch.no_grad():
        predicted = torch.cat([model(x[i : i + 1]).argmax(dim=-1) for i in range(len(x))])
    return (predicted == y).float().mean().item()


WRONG = {
    "one block too few": ("q1", _freeze("one too few"), "should be frozen"),
    "the rest left as it was": ("q1", _freeze("rest untouched"), "should be trainable"),
    "returns None": ("q1", _freeze("returns None"), "same object"),
    "no ValueError": ("q1", lambda model, k: model, "expected a ValueError"),
    "head replaced in place": ("q2", _head("in place"), "the original network itself"),
    "a shallow copy": ("q2", _head("shallow"), "the original network changed"),
    "a zero head": ("q2", _head("zeros"), "standard deviation"),
    "the global generator": ("q2", _head("global generator"), "seeded alike"),
    "gradients pile up": ("q3", _step("grads pile up"), "off by up to"),
    "gradient ascent": ("q3", _step("wrong sign"), "off by up to"),
    "the loss after the step": ("q3", _step("loss after"), "before the step"),
    "the original fine-tuned": ("q4", _finetune("no copy"), "the original network changed"),
    "Adam": ("q4", _finetune("adam"), "gradient descent"),
    "the number right": ("q5", lambda model, x, y: _count_right(model, x, y), "the number right"),
    "one query at a time": ("q5", _accuracy_one_at_a_time, "one batch"),
}


def _count_right(model, x, y):
    with torch.no_grad():
        return int((model(x).argmax(dim=-1) == y).sum())


@pytest.mark.parametrize(
    ("variant", "qname", "fn", "says"), [(k, *v) for k, v in WRONG.items()], ids=str
)
def test_a_wrong_answer_fails_with_a_helpful_message(variant, qname, fn, says):
    wrong_answer_fails(NAME, variant, qname, fn, says)


def test_every_question_has_a_wrong_answer():
    assert {q for q, _, _ in WRONG.values()} == {q.name for q in exercise(NAME).questions}


def _head_bias_first(model, n_way, generator):
    """Another right new_head: the bias drawn before the weights, by hand."""
    net, d = copy.deepcopy(model), model.feature_dim
    bound, dtype = 1 / math.sqrt(d), model.head.weight.dtype
    bias = (2 * torch.rand(n_way, generator=generator, dtype=dtype) - 1) * bound
    weight = (2 * torch.rand(n_way, d, generator=generator, dtype=dtype) - 1) * bound
    net.head = nn.Linear(d, n_way, dtype=dtype)
    with torch.no_grad():
        net.head.weight.copy_(weight)
        net.head.bias.copy_(bias)
    return net


def _step_by_backward(model, x, y, lr):
    """Another right sgd_step: backward() with the gradients cleared, the loss a 0-d tensor."""
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:
                p -= lr * p.grad
                p.grad = None
    return loss.detach()


OTHER = {
    "the bias drawn first": ("q2", _head_bias_first),
    "backward() and a 0-d loss": ("q3", _step_by_backward),
}


@pytest.mark.parametrize(("variant", "qname", "fn"), [(k, *v) for k, v in OTHER.items()], ids=str)
def test_another_right_answer_passes(variant, qname, fn):
    right_answer_passes(NAME, qname, fn)


def test_a_float32_head_on_a_float64_model_fails_a_hidden_case():
    new_head = solution("01_finetuning")["new_head"]
    question = exercise(NAME).question("q2")
    case = next(c for c in hidden_cases(NAME)["q2"] if "float64" in c.label)
    assert run_case(question, case, new_head) is None

    def keeps_float32(model, n_way, generator):
        net = copy.deepcopy(model)
        net.head = nn.Linear(model.feature_dim, n_way)
        bound = 1 / math.sqrt(model.feature_dim)
        with torch.no_grad():
            net.head.weight.uniform_(-bound, bound, generator=generator)
            net.head.bias.uniform_(-bound, bound, generator=generator)
        return net

    message = run_case(question, case, keeps_float32)
    assert message is not None and "dtype torch.float64" in message
