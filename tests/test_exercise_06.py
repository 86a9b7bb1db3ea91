"""Exercise 06_test_time_adaptation: wrong answers name their mistake; other right answers pass."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import (
    exercise,
    right_answer_passes,
    solution,
    wrong_answer_fails,
)

NAME = "06_test_time_adaptation"


_BN = nn.modules.batchnorm._BatchNorm


def _entropy(variant: str):
    def entropy(logits):
        if variant == "softmax log":
            p = logits.softmax(-1)
            return -(p * p.log()).sum(-1)
        log_p = logits.log_softmax(-1)
        terms = log_p.exp() * log_p
        out = {"no minus": terms.sum(-1), "batch sum": -terms.sum(), "mean": -terms.mean(-1)}
        result = out.get(variant, -terms.sum(-1))
        return result.detach() if variant == "detached" else result

    return entropy


def _tent_parameters(variant: str):
    def tent_parameters(model):
        if variant == "by name":  # Conv4 names its norms body.0.1, not bn
            return [p for n, p in model.named_parameters() if "bn" in n]
        if variant != "no freeze":
            model.requires_grad_(False)
        out = []
        for m in model.modules():
            if variant == "norms" and isinstance(m, (nn.LayerNorm, nn.GroupNorm)):
                out += [m.weight, m.bias]
            if variant == "conv" and isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.requires_grad_(True)
                out.append(m.weight)
            kind = nn.BatchNorm2d if variant == "2d only" else _BN
            if isinstance(m, kind) and m.affine:
                if variant != "no unfreeze":
                    m.requires_grad_(True)
                out += [m.weight] if variant == "weight only" else [m.weight, m.bias]
                if variant == "running":
                    out += [m.running_mean, m.running_var]
        return out

    return tent_parameters


def _tent_step(variant: str):
    def tent_step(model, x, optimizer):
        if variant == "eval":
            model.eval()
        if variant == "all params":  # its own optimizer, over every parameter
            model.requires_grad_(True)
            params = list(model.parameters())
            optimizer = torch.optim.SGD(params, lr=optimizer.param_groups[0]["lr"])
        logits = model(x)
        h = solution("06_test_time_adaptation")["entropy"](logits)
        loss = {"sum": h.sum(), "maximise": -h.mean()}.get(variant, h.mean())
        if variant == "pseudo":
            loss = F.cross_entropy(logits, logits.argmax(-1))
        if variant != "no zero_grad":
            optimizer.zero_grad()
        loss.backward()
        if variant != "no step":
            optimizer.step()
        return model(x).detach() if variant == "after" else logits.detach()

    return tent_step


def _rotation_loss(variant: str):
    def rotation_loss(encoder, rotation_head, x):
        dims = {"clockwise": (3, 2), "wrong axes": (1, 2)}.get(variant, (2, 3))
        rotated = [torch.rot90(x, k, dims=dims) for k in range(4)]
        labels = torch.arange(4).repeat_interleave(len(x))
        if variant == "misaligned":
            labels = torch.arange(4).repeat(len(x))
        if variant == "apart":
            logits = torch.cat([rotation_head(encoder(r)) for r in rotated])
        else:
            logits = rotation_head(encoder(torch.cat(rotated)))
        if variant == "detached":
            logits = logits.detach()
        return F.cross_entropy(logits, labels, reduction="sum" if variant == "sum" else "mean")

    return rotation_loss


WRONG = {
    "no minus sign": ("q1", _entropy("no minus"), "minus sign is missing"),
    "softmax then log": ("q1", _entropy("softmax log"), "log_softmax"),
    "sum over the batch": ("q1", _entropy("batch sum"), "one entropy per row"),
    "mean over classes": ("q1", _entropy("mean"), "mean over the"),
    "entropy detached": ("q1", _entropy("detached"), "no gradient back to the logits"),
    "running statistics returned": ("q2", _tent_parameters("running"), "a running statistic"),
    "conv and linear weights": ("q2", _tent_parameters("conv"), "updates only the batch norm"),
    "nothing frozen": ("q2", _tent_parameters("no freeze"), "still requires gradients"),
    "BN left frozen": ("q2", _tent_parameters("no unfreeze"), "does not require gradients"),
    "BatchNorm2d only": ("q2", _tent_parameters("2d only"), "nn.modules.batchnorm._BatchNorm"),
    "LayerNorm and GroupNorm too": ("q2", _tent_parameters("norms"), "is not batch norm"),
    "scales only": ("q2", _tent_parameters("weight only"), "the shift β is bias"),
    "parameters found by name": ("q2", _tent_parameters("by name"), "are missing"),
    "running statistics used": ("q3", _tent_step("eval"), "running statistics (model.eval())"),
    "logits after the update": ("q3", _tent_step("after"), "logits after the update"),
    "every parameter updated": ("q3", _tent_step("all params"), "not a BN scale or shift"),
    "entropies summed": ("q3", _tent_step("sum"), "sum of the entropies"),
    "entropy maximised": ("q3", _tent_step("maximise"), "maximised"),
    "hard pseudo-labels": ("q3", _tent_step("pseudo"), "pseudo-labels"),
    "no zero_grad": ("q3", _tent_step("no zero_grad"), "optimizer.zero_grad()"),
    "no step": ("q3", _tent_step("no step"), "optimizer.step()"),
    "rotated clockwise": ("q4", _rotation_loss("clockwise"), "turn clockwise"),
    "rotated over the wrong axes": ("q4", _rotation_loss("wrong axes"), "two spatial axes"),
    "labels misaligned": ("q4", _rotation_loss("misaligned"), "misaligned"),
    "rotations embedded apart": ("q4", _rotation_loss("apart"), "separate batches"),
    "summed cross-entropy": ("q4", _rotation_loss("sum"), "sum of the 4B"),
    "loss detached": ("q4", _rotation_loss("detached"), "no graph back to the encoder"),
}


@pytest.mark.parametrize(
    ("variant", "qname", "fn", "says"), [(k, *v) for k, v in WRONG.items()], ids=str
)
def test_a_wrong_answer_fails_with_a_helpful_message(variant, qname, fn, says):
    wrong_answer_fails(NAME, variant, qname, fn, says)


def test_every_question_has_a_wrong_answer():
    assert {q for q, _, _ in WRONG.values()} == {q.name for q in exercise(NAME).questions}


def _rotations_by_flips(encoder, rotation_head, x):
    turned = x.transpose(2, 3)
    rotated = torch.cat([x, turned.flip(2), x.flip(2, 3), turned.flip(3)])
    labels = torch.arange(4).repeat_interleave(len(x))
    return F.cross_entropy(rotation_head(encoder(rotated)), labels)


def _rotations_image_major(encoder, rotation_head, x):
    rotated = torch.stack([torch.rot90(x, k, dims=(2, 3)) for k in range(4)], dim=1)  # (B, 4, ..)
    labels = torch.arange(4).repeat(len(x))
    return F.cross_entropy(rotation_head(encoder(rotated.flatten(0, 1))), labels)


def _tent_parameters_by_owner(model):
    norms = {name for name, m in model.named_modules() if isinstance(m, _BN)}
    out = []
    for name, p in model.named_parameters():
        keep = name.rpartition(".")[0] in norms
        p.requires_grad_(keep)
        out += [p] if keep else []
    return out


def _tent_step_zeroing_after(model, x, optimizer):
    logits = model(x)
    (-(logits.softmax(1) * logits.log_softmax(1)).sum(1)).mean().backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=False)
    return logits


OTHER = [
    ("q1", lambda z: torch.distributions.Categorical(logits=z).entropy()),
    ("q1", lambda z: -(z.softmax(1) * z.log_softmax(1)).sum(1)),
    ("q2", _tent_parameters_by_owner),
    ("q3", _tent_step_zeroing_after),
    ("q4", _rotations_by_flips),
    ("q4", _rotations_image_major),
]
OTHER_IDS = [
    "Categorical",
    "TENT's code",
    "by owner's name",
    "zero_grad after the step",
    "flips",
    "image-major",
]


@pytest.mark.parametrize(("qname", "fn"), OTHER, ids=OTHER_IDS)
def test_other_right_answers_pass_every_case(qname, fn):
    right_answer_passes(NAME, qname, fn)
