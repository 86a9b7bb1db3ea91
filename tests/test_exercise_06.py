"""Exercise 06_test_time_adaptation: wrong answers name their mistake; other right answers pass."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import (
    exercise_tests,
    solution,
)
from metalib import tta

NAME = "06_test_time_adaptation"
# the unbiased-variance wrong answer meets a batch of one image, with one value per channel
pytestmark = pytest.mark.filterwarnings("ignore:.*degrees of freedom is <= 0:UserWarning")


_BN = nn.modules.batchnorm._BatchNorm
_NORMS = (_BN, nn.GroupNorm, nn.LayerNorm)


def _eata_loss(variant: str):
    def eata_loss(logits, margin):
        if variant == "softmax log":
            p = logits.softmax(-1)
            h = -(p * p.log()).sum(-1)
        else:
            h = tta.entropy(logits)
        keep = h > margin if variant == "unsure" else h < margin
        if variant == "empty mean":
            pass
        elif not keep.any():
            return (
                torch.tensor(0.0, dtype=logits.dtype) if variant == "no graph" else 0 * h.sum()
            ), 0
        weight = torch.exp(margin - h[keep])
        if variant != "attached":
            weight = weight.detach()
        if variant == "inverted":
            weight = 1 / weight
        if variant == "unweighted":
            weight = torch.ones_like(weight)
        loss = (weight * h[keep]).sum() / (len(h) if variant == "batch mean" else keep.sum())
        return loss if variant == "loss only" else (loss, keep.sum())

    return eata_loss


def _norm_parameters(variant: str):
    def norm_parameters(model, layers):
        kinds = _BN if variant == "BatchNorm only" else _NORMS
        norms = [
            m
            for m in model.modules()
            if isinstance(m, kinds) and (m.weight is not None or variant == "affine=False counted")
        ]
        if variant == "IndexError":
            picked = [norms[i] for i in layers]
        else:
            if not layers or any(not -len(norms) <= i < len(norms) for i in layers):
                raise ValueError(f"layers out of range: {layers}")
            picked = [norms[i] for i in layers]
        if variant == "all modules":  # numbered over model.modules(), not the norm layers
            model.requires_grad_(False)
            every = list(model.modules())
            out = [p for i in layers for p in every[i].parameters(recurse=False)]
            return [p.requires_grad_(True) for p in out]
        if variant != "nothing frozen":
            model.requires_grad_(False)
        out = []
        for m in norms:
            if any(m is p for p in picked) and m.weight is not None:
                m.requires_grad_(True)
                out += [m.weight] if variant == "weights only" else [m.weight, m.bias]
                if variant == "running":
                    out += [m.running_mean, m.running_var]
        return out

    return norm_parameters


def _prior_bn_logits(variant: str):
    def prior_bn_logits(model, x, prior_strength):
        N, n = prior_strength, len(x)
        if variant == "train mode":  # the running statistics move, in the model itself
            for m in model.modules():
                if isinstance(m, _BN):
                    m.train()
                    m.momentum = n / (N + n)
            with torch.no_grad():
                model(x)
            model.eval()
            with torch.no_grad():
                return model(x)
        w = {"swapped": n / (N + n), "ignored": 0.0}.get(variant, N / (N + n))

        def hook(m, inputs, output):
            z = inputs[0]
            dims = [0, *range(2, z.dim())]
            a = w
            if variant == "values":
                a = N / (N + z.numel() // z.shape[1])
            mean = a * m.running_mean + (1 - a) * z.mean(dims)
            var = a * m.running_var + (1 - a) * z.var(dims, unbiased=variant == "unbiased")
            if variant == "std":
                var = (a * m.running_var.sqrt() + (1 - a) * z.var(dims, unbiased=False).sqrt()) ** 2
            return F.batch_norm(z, mean, var, m.weight, m.bias, False, 0.0, m.eps)

        handles = (
            []
            if variant == "source"
            else [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, _BN)]
        )
        with torch.no_grad():
            out = model(x)
        for h in handles:
            h.remove()
        return out

    return prior_bn_logits


def _dihedral_loss(variant: str):
    def dihedral_loss(encoder, head, x):
        dims = (3, 2) if variant == "clockwise" else (2, 3)
        axis = -2 if variant == "vertical" else -1
        images, labels = [], []
        for f in (0,) if variant == "rotations only" else (0, 1):
            for k in range(4):
                if variant == "flip after":
                    img = torch.rot90(x, k, dims=dims)
                    img = img.flip(axis) if f else img
                else:
                    img = torch.rot90(x.flip(axis) if f else x, k, dims=dims)
                images.append(img)
                labels += [2 * k + f if variant == "interleaved" else k + 4 * f] * len(x)
        if variant == "apart":
            logits = torch.cat([head(encoder(i)) for i in images])
        else:
            logits = head(encoder(torch.cat(images)))
        if variant == "detached":
            logits = logits.detach()
        reduction = "sum" if variant == "sum" else "mean"
        return F.cross_entropy(logits, torch.tensor(labels), reduction=reduction)

    return dihedral_loss


def _prior_sweep(variant: str):
    def prior_sweep(model, x, y, batch_sizes, strengths):
        prior = solution(NAME)["prior_bn_logits"]
        out = {}
        for N in strengths:
            out[N] = []
            for b in [len(x)] * len(batch_sizes) if variant == "one batch" else batch_sizes:
                wrong = 0
                for i in range(0, len(x), b):
                    if variant == "source":
                        with torch.no_grad():
                            logits = model(x[i : i + b])
                    else:
                        logits = prior(model, x[i : i + b], 0 if variant == "N = 0" else N)
                    wrong += (logits.argmax(-1) != y[i : i + b]).sum().item()
                rate = {"count": wrong, "accuracy": 1 - wrong / len(x)}.get(variant, wrong / len(x))
                out[N].append(rate)
        if variant == "transposed":
            return {b: [out[N][j] for N in strengths] for j, b in enumerate(batch_sizes)}
        return out

    return prior_sweep


WRONG = {
    "unsure samples kept": ("q1", _eata_loss("unsure"), "kept the unsure samples"),
    "weight not detached": ("q1", _eata_loss("attached"), "detach it"),
    "weight inverted": ("q1", _eata_loss("inverted"), "the weight is inverted"),
    "no weights": ("q1", _eata_loss("unweighted"), "not weighted"),
    "divided by the batch": ("q1", _eata_loss("batch mean"), "divides by the batch size"),
    "softmax then log": ("q1", _eata_loss("softmax log"), "log_softmax"),
    "mean over no sample": ("q1", _eata_loss("empty mean"), "a mean over nothing is nan"),
    "zero without a graph": ("q1", _eata_loss("no graph"), "has no graph back to the logits"),
    "the loss alone": ("q1", _eata_loss("loss only"), "return a pair (loss, used)"),
    "batch norm layers only": ("q2", _norm_parameters("BatchNorm only"), "only batch norm layers"),
    "affine=False counted": ("q2", _norm_parameters("affine=False counted"), "was counted"),
    "running statistics returned": ("q2", _norm_parameters("running"), "a running statistic"),
    "nothing frozen": ("q2", _norm_parameters("nothing frozen"), "still requires gradients"),
    "scales only": ("q2", _norm_parameters("weights only"), "the shift β is bias"),
    "IndexError": ("q2", _norm_parameters("IndexError"), "expected a ValueError, got IndexError"),
    "every module numbered": ("q2", _norm_parameters("all modules"), "not a normalisation layer"),
    "source statistics": ("q3", _prior_bn_logits("source"), "the source model's logits"),
    "prior ignored": ("q3", _prior_bn_logits("ignored"), "plain BN adaptation"),
    "weights swapped": ("q3", _prior_bn_logits("swapped"), "the weights are swapped"),
    "unbiased variance": ("q3", _prior_bn_logits("unbiased"), "var(unbiased=False)"),
    "standard deviations mixed": ("q3", _prior_bn_logits("std"), "mixes standard deviations"),
    "n counts values": ("q3", _prior_bn_logits("values"), "n counts the values per channel"),
    "running statistics updated": ("q3", _prior_bn_logits("train mode"), "it changed"),
    "flipped after rotating": ("q4", _dihedral_loss("flip after"), "flip first, then rotate"),
    "mirrored top to bottom": ("q4", _dihedral_loss("vertical"), "mirrored top to bottom"),
    "turned clockwise": ("q4", _dihedral_loss("clockwise"), "turn clockwise"),
    "labels 2k + f": ("q4", _dihedral_loss("interleaved"), "the labels are 2k + f"),
    "rotations only": ("q4", _dihedral_loss("rotations only"), "only the four rotations"),
    "transformed apart": ("q4", _dihedral_loss("apart"), "separate batches"),
    "summed cross-entropy": ("q4", _dihedral_loss("sum"), "sum of the 8B"),
    "loss detached": ("q4", _dihedral_loss("detached"), "no graph back to the encoder"),
    "accuracies": ("q5", _prior_sweep("accuracy"), "these are accuracies"),
    "counts": ("q5", _prior_sweep("count"), "counts of errors"),
    "one batch for all": ("q5", _prior_sweep("one batch"), "consecutive batches"),
    "batch sizes as keys": ("q5", _prior_sweep("transposed"), "map each prior strength"),
    "strength not passed": ("q5", _prior_sweep("N = 0"), "pass N to prior_bn_logits"),
    "source model": ("q5", _prior_sweep("source"), "source model's errors"),
}


def _eata_with_where(logits, margin):
    h = -(logits.softmax(1) * logits.log_softmax(1)).sum(1)
    with torch.no_grad():
        weight = torch.where(h < margin, torch.exp(margin - h), torch.zeros_like(h))
    used = int((h < margin).sum())
    return (weight * h).sum() / max(used, 1), used


def _norm_parameters_by_name(model, layers):
    names = [
        name
        for name, m in model.named_modules()
        if type(m).__name__
        in ("BatchNorm1d", "BatchNorm2d", "BatchStatNorm2d", "GroupNorm", "LayerNorm")
        and getattr(m, "weight", None) is not None
    ]
    try:
        chosen = {names[i] for i in layers}
    except IndexError as err:
        raise ValueError(f"no normalisation layer {layers}") from err
    if not chosen:
        raise ValueError("choose at least one layer")
    out = []
    for name, p in model.named_parameters():
        keep = name.rpartition(".")[0] in chosen
        p.requires_grad_(keep)
        out += [p] if keep else []
    return out


class _Mixed(nn.Module):
    """A batch norm layer's replacement: source and test statistics mixed, from E[z²] - μ²."""

    def __init__(self, bn: nn.Module, a: float):
        super().__init__()
        self.bn, self.a = bn, a

    def forward(self, z):
        shape = [1, -1] + [1] * (z.dim() - 2)
        dims = [0, *range(2, z.dim())]
        mean_t = z.mean(dims)
        var_t = (z * z).mean(dims) - mean_t**2
        mean = (1 - self.a) * self.bn.running_mean + self.a * mean_t
        var = (1 - self.a) * self.bn.running_var + self.a * var_t
        out = (z - mean.view(shape)) / (var.view(shape) + self.bn.eps).sqrt()
        if self.bn.weight is not None:
            out = out * self.bn.weight.view(shape) + self.bn.bias.view(shape)
        return out


def _prior_by_replacing_layers(model, x, prior_strength):
    net = copy.deepcopy(model)
    a = len(x) / (prior_strength + len(x))
    for name, m in list(net.named_modules()):
        if isinstance(m, _BN):
            parent, _, child = name.rpartition(".")
            setattr(net.get_submodule(parent), child, _Mixed(m, a))
    with torch.no_grad():
        return net(x)


def _dihedral_by_transposes(encoder, head, x):
    mirrored = x.flip(3)
    images, labels = [], []
    for f, img in enumerate((x, mirrored)):  # rot90 by transposes: (x^T) flipped top to bottom
        turns = [img, img.transpose(2, 3).flip(2), img.flip(2, 3), img.transpose(2, 3).flip(3)]
        images += turns
        labels += [torch.full((len(x),), k + 4 * f) for k in range(4)]
    return F.cross_entropy(head(encoder(torch.cat(images))), torch.cat(labels))


def _sweep_with_tta_error(model, x, y, batch_sizes, strengths):
    prior = solution(NAME)["prior_bn_logits"]
    return {
        N: [tta.error(lambda xb, N=N: prior(model, xb, N), x, y, b) for b in batch_sizes]
        for N in strengths
    }


OTHER = [
    ("q1", _eata_with_where),
    ("q2", _norm_parameters_by_name),
    ("q3", _prior_by_replacing_layers),
    ("q4", _dihedral_by_transposes),
    ("q5", _sweep_with_tta_error),
]
OTHER_IDS = [
    "weights by torch.where",
    "layers by class name",
    "layers replaced, E[z²] - μ²",
    "rotations by transposes",
    "tta.error per strength",
]


(
    test_a_wrong_answer_fails_with_a_helpful_message,
    test_every_question_has_a_wrong_answer,
    test_other_right_answers_pass_every_case,
) = exercise_tests(NAME, WRONG, OTHER, OTHER_IDS)


def test_the_experiment_claims_hold_on_every_seed_of_every_case():
    """The reference's numbers satisfy the claims the check states, on seeds 0-4."""
    from metalib.grading.ex06_test_time_adaptation import Q5, claims, seed_spread

    spec = Q5.visible[0].kwargs
    errors = seed_spread(range(5), **spec)
    for run in errors:
        got = {str(N): row.tolist() for N, row in zip(spec["strengths"], run, strict=True)}
        assert claims(spec, got) is None, got
