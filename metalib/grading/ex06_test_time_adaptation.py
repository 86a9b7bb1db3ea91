"""Exercise 06_test_time_adaptation: entropy, the BN parameters, a TENT step, the rotation loss.

Every case is rebuilt from a seed on both sides (see the 06 section of
:mod:`metalib.grading.probes_0506`): logits of every scale (up to 1000, where a softmax rounds
to exact zeros), small classifiers whose normalisation layers (BatchNorm1d/2d, some without
affine parameters, next to GroupNorm and LayerNorm) have moved off their initial values, shifted
test batches, and encoders with batch-statistics norm. The judges compare with
:mod:`metalib.tta` (``entropy``, ``bn_affine_parameters``, ``configure_tent`` + ``tent_step``,
``rotation_loss``) to 1e-9 in float64 and about 1e-5 in float32, and check gradients where the
method follows them. A wrong answer is matched against the usual mistakes (no minus sign, a
softmax then a log, a sum over the batch; running statistics or other layers collected, nothing
frozen; the running statistics used, all parameters updated, the logits after the update; the
rotations turned the other way, labels misaligned, rotations embedded apart) so the message can
say which one it is.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from metalib import tta
from metalib.grading import feedback
from metalib.grading.probes_0506 import (
    param_grads,
    tent_model,
    tta_encoder,
    tta_images,
    tta_logits,
    tta_model,
    tta_rotation_images,
)
from metalib.grading.spec import Case, Exercise, Question


def _tolerance(dtype: torch.dtype) -> dict[str, float]:
    if dtype == torch.float64:
        return {"rtol": 1e-7, "atol": 1e-9}
    return {"rtol": 1e-4, "atol": 1e-5}


def close(got: Any, want: torch.Tensor, atol: float | None = None) -> bool:
    """Same shape, floating point, values within the tolerance of ``want``'s dtype."""
    if not isinstance(got, torch.Tensor) or got.shape != want.shape or not got.is_floating_point():
        return False
    tol = _tolerance(want.dtype)
    if atol is not None:
        tol["atol"] = atol
    return torch.allclose(got.to(want.dtype), want, **tol)


def show(t: torch.Tensor, limit: int = 4) -> str:
    """The first ``limit`` values of ``t``, for a message."""
    values = [f"{v:.6g}" for v in t.detach().double().flatten()[:limit].tolist()]
    return f"[{', '.join(values)}{', ...' if t.numel() > limit else ''}]"


# ---------------------------------------------------------------------------------- q1

_ENTROPY = "H = -Σ_c p_c log p_c per row, with log p = logits.log_softmax(-1) and p = log p.exp()"
_ENTROPY_ATOL = 1e-6  # an eps in log(p + eps) is fine; nothing else is


def judge_entropy(case: Case, out: Any) -> str | None:
    """``entropy(logits) -> (B,)``."""
    kw = case.kwargs
    if out["inputs_changed"]:
        return "the logits changed in place; leave the input as it is"
    z = tta_logits(kw["B"], kw["C"], kw["seed"], kw["scale"], kw["dtype"])
    want, got = tta.entropy(z), out["out"]
    b, c = z.shape
    if not isinstance(got, torch.Tensor):
        return f"expected a tensor of shape ({b},), got a {type(got).__name__}"
    if got.shape != want.shape:
        hints = {
            (): "one number for the whole batch; return one entropy per row (sum over dim=-1 only)",
            (c,): "this sums over the batch axis; sum over the classes (dim=-1)",
            (b, c): "the terms -p log p were not summed over the classes",
        }
        hint = hints.get(tuple(got.shape), "")
        return f"got shape {tuple(got.shape)}, expected ({b},)" + (f": {hint}" if hint else "")
    if got.dtype != want.dtype:
        return f"got dtype {got.dtype}; keep the dtype of the logits ({want.dtype})"
    if not torch.isfinite(got).all():
        row = int((~torch.isfinite(got)).nonzero()[0])
        return (
            f"row {row} gave {float(got[row])} (logits up to {float(z[row].abs().max()):.4g}): "
            "softmax rounds tiny probabilities to 0 and log(0) = -inf, so 0 * log 0 is nan; "
            "take log p from logits.log_softmax(dim=-1)"
        )
    if not close(got, want, _ENTROPY_ATOL):
        wrong = f"expected {show(want)}, got {show(got)}"
        for guess, why in (
            (-want, "the minus sign is missing: an entropy is never negative"),
            (want / c, f"this is the mean over the {c} classes; take the sum"),
            (want / math.log(2), "this is in bits (log2); use the natural logarithm (nats)"),
            (want.sum().expand(b), "this is the sum over the batch"),
        ):
            if close(got, guess, _ENTROPY_ATOL):
                return f"{wrong}: {why}"
        return f"{wrong}. {_ENTROPY}."
    if not kw["learnable"]:
        return None
    if out["grad"] is None:
        return (
            "the values are right but carry no gradient back to the logits (detached, or "
            "computed outside torch); TENT minimises the entropy by following its gradient"
        )
    zz = z.clone().requires_grad_(True)
    g = torch.Generator().manual_seed(kw["seed"] + 1)
    v = torch.randn(want.shape, generator=g, dtype=torch.float64).to(want.dtype)
    (want_grad,) = torch.autograd.grad((tta.entropy(zz) * v).sum(), [zz])
    if not close(out["grad"], want_grad, _ENTROPY_ATOL):
        return (
            f"the values are right but the gradient is not: expected {show(want_grad)}, got "
            f"{show(out['grad'])}; compute the entropy with differentiable operations"
        )
    return None


# ---------------------------------------------------------------------------------- q2


def _affine_names(net: nn.Module) -> list[str]:
    names = {id(p): name for name, p in net.named_parameters()}
    return [names[id(p)] for p in tta.bn_affine_parameters(net)]


def _owner(net: nn.Module, name: str) -> str:
    """The class name of the module that holds parameter or buffer ``name``."""
    path = name.rsplit(".", 1)[0] if "." in name else ""
    return type(net.get_submodule(path)).__name__


def judge_tent_parameters(case: Case, out: Any) -> str | None:
    """``tent_parameters(model) -> list``: the BN affine parameters, everything else frozen."""
    net = tta_model(**case.kwargs["model"])
    if out["changed"]:
        return "values of the model changed; only the requires_grad flags should"
    if "problem" in out:
        return out["problem"]
    want = _affine_names(net)
    items = out["items"]
    for item in items:
        kind, name = item.split(":", 1)
        if kind == "buffer":
            return (
                f"it returned {name}, a buffer of a {_owner(net, name)} (a running statistic): "
                "it is not learned; return only the layers' weight and bias"
            )
        if kind == "other":
            return f"it returned {name}; return the model's parameters themselves"
    names = [item.split(":", 1)[1] for item in items]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        return f"{twice[0]} appears more than once in the list; return each parameter once"
    extra = [n for n in names if n not in want]
    if extra:
        owner = _owner(net, extra[0])
        why = (
            f"a {owner} is not batch norm; TENT adapts only the batch norm layers"
            if "Norm" in owner
            else f"it is a {owner}'s; TENT updates only the batch norm layers' scale and shift"
        )
        return f"it returned {extra[0]}: {why}"
    missing = [n for n in want if n not in names]
    if missing:
        owner = _owner(net, missing[0])
        hint = (
            "; the scale γ is weight, the shift β is bias: return both"
            if all(n.endswith(".bias") for n in missing)
            else f"; catch every kind of batch norm (a {owner} here) with isinstance(module, "
            "nn.modules.batchnorm._BatchNorm)"
        )
        return f"{len(missing)} of the {len(want)} BN affine parameters are missing, e.g. " + (
            f"{missing[0]} (of a {owner}){hint}"
        )
    flags = out["requires_grad"]
    frozen = [n for n in want if not flags[n]]
    if frozen:
        return (
            f"{frozen[0]} does not require gradients: the BN scale and shift must "
            "(requires_grad_(True)), even where the model came frozen"
        )
    free = [n for n, f in flags.items() if f and n not in want]
    if free:
        return (
            f"{free[0]} (of a {_owner(net, free[0])}) still requires gradients: freeze every "
            "parameter except the BN scale and shift"
        )
    return None


# ---------------------------------------------------------------------------------- q3


def _tent_run(kw: dict[str, Any], variant: str = "") -> tuple[list, dict, dict, nn.Module]:
    """Each batch's logits, then the parameters and buffers, of TENT run right or with a known
    mistake; and the model at the start (for what must not change)."""
    net, opt = tent_model(kw["model"], kw["optim"])
    start = tent_model(kw["model"], kw["optim"])[0]
    size, dtype = kw["model"].get("image_size", 16), kw["model"].get("dtype", "float32")
    outs = []
    for i, b in enumerate(kw["batches"]):
        x = tta_images(b, kw["seed"] + i, size, dtype)
        if not variant:
            outs.append(tta.tent_step(net, x, opt))
            continue
        if variant == "eval":
            net.eval()
        logits = net(x)
        if variant == "pseudo-labels":
            loss = F.cross_entropy(logits, logits.argmax(-1))
        else:
            h = tta.entropy(logits)
            loss = {"sum": h.sum(), "maximise": -h.mean()}.get(variant, h.mean())
        if variant != "no zero_grad":
            opt.zero_grad()
        loss.backward()
        if variant != "no step":
            opt.step()
        if variant == "after":
            with torch.no_grad():
                logits = net(x)
        outs.append(logits.softmax(-1).detach() if variant == "softmax" else logits.detach())
    params = {k: p.detach().clone() for k, p in net.named_parameters()}
    buffers = {k: b.detach().clone() for k, b in net.named_buffers()}
    return outs, params, buffers, start


_TENT_LOGITS = {
    "eval": (
        "these are the logits with the running statistics (model.eval()); TENT normalises with "
        "the test batch's statistics: keep the model as configure_tent left it"
    ),
    "after": (
        "these are the logits after the update (a second forward pass); return those of the "
        "forward pass used for the update"
    ),
    "softmax": "these are probabilities (a softmax); return the logits",
}
_TENT_PARAMS = {
    "sum": "the loss was the sum of the entropies over the batch; TENT takes their mean",
    "maximise": "the entropy was maximised (the sign of the loss is flipped); minimise it",
    "pseudo-labels": (
        "this minimised the cross-entropy with the predicted labels (hard pseudo-labels), not "
        "the entropy of the predictions"
    ),
    "no zero_grad": (
        "the gradients of earlier batches were added to this one's: call optimizer.zero_grad() "
        "before backward"
    ),
    "no step": "the BN parameters did not move: the optimizer took no step (optimizer.step())",
}


def judge_tent_step(case: Case, out: Any) -> str | None:
    """``tent_step(model, x, optimizer) -> (B, C)``, called once per test batch."""
    kw = case.kwargs
    outs, params, buffers, start = _tent_run(kw)
    got = out["logits"]
    for i, (g, w) in enumerate(zip(got, outs, strict=True)):
        which = f"batch {i + 1} of {len(outs)}"
        if not isinstance(g, torch.Tensor):
            return f"{which}: expected logits, a tensor {tuple(w.shape)}, got a {type(g).__name__}"
        if g.shape != w.shape:
            return f"{which}: got logits of shape {tuple(g.shape)}, expected {tuple(w.shape)}"
        if close(g, w):
            continue
        wrong = f"{which}: expected logits {show(w)}, got {show(g)}"
        for variant, why in _TENT_LOGITS.items():
            if close(g, _tent_run(kw, variant)[0][i]):
                return f"{wrong}: {why}"
        if i == 0:
            return f"{wrong}; return model(x) of the forward pass that computes the loss"
        break  # a later batch differs: the update before it was wrong, judged below
    names = {n for n, _ in start.named_parameters()}
    affine = set(_affine_names(start))
    for name in sorted(names - affine):
        if not torch.equal(out["params"][name], dict(start.named_parameters())[name].detach()):
            return (
                f"{name} (not a BN scale or shift) changed: TENT updates only the parameters the "
                "optimizer holds; take the step with the optimizer given"
            )
    for name, b in buffers.items():
        if not torch.equal(out["buffers"][name], b):
            return f"the buffer {name} changed; the running statistics must stay as they are"
    wrong = [n for n in sorted(affine) if not close(out["params"][n], params[n])]
    if not wrong and len(got) == len(outs):
        return None
    name = wrong[0] if wrong else sorted(affine)[0]
    message = (
        f"after {len(outs)} call(s), {name} is {show(out['params'][name])}, expected "
        f"{show(params[name])}"
    )
    for variant, why in _TENT_PARAMS.items():
        _, p, _, _ = _tent_run(kw, variant)
        if all(close(out["params"][n], p[n]) for n in affine):
            return f"{message}: {why}"
    return (
        f"{message}; one TENT step: loss = entropy(model(x)).mean(), optimizer.zero_grad(), "
        "loss.backward(), optimizer.step()"
    )


# ---------------------------------------------------------------------------------- q4


def _rotation(kw: dict[str, Any], variant: str = "") -> tuple[torch.Tensor, nn.Module]:
    """The rotation loss (with its graph) right or with a known mistake, and the weights."""
    enc, head = tta_encoder(**kw["encoder"])
    spec = kw["encoder"]
    x = tta_rotation_images(kw["B"], kw["seed"], spec.get("image_size", 16), spec.get("dtype"))
    if variant == "":
        loss = tta.rotation_loss(enc, head, x)
    else:
        dims = (3, 2) if variant == "clockwise" else (2, 3)
        rotated = [torch.rot90(x, k, dims=dims) for k in range(4)]
        labels = torch.arange(4).repeat_interleave(len(x))
        if variant == "misaligned":
            labels = torch.arange(4).repeat(len(x))
        if variant == "apart":
            logits = torch.cat([head(enc(r)) for r in rotated])
        else:
            logits = head(enc(torch.cat(rotated)))
        loss = F.cross_entropy(logits, labels, reduction="sum" if variant == "sum" else "mean")
    return loss, nn.ModuleDict({"encoder": enc, "head": head})


_ROTATION_GUESSES = {
    "clockwise": (
        "the rotations turn clockwise (90° and 270° swapped): label k is torch.rot90(x, k, "
        "dims=(2, 3)), k quarter-turns counter-clockwise"
    ),
    "misaligned": (
        "the labels are misaligned with the images: the rotated images are grouped by rotation "
        "but the labels cycle 0, 1, 2, 3 per image (or the other way round); give each rotated "
        "image its own k"
    ),
    "apart": (
        "the four rotations went through the encoder in separate batches; its batch-statistics "
        "norm must see all 4B images together, in one batch"
    ),
    "sum": "this is the sum of the 4B cross-entropies; take their mean",
}
_ROTATION = (
    "The loss is the mean cross-entropy of rotation_head(encoder(all 4B rotated images)) "
    "against their labels k"
)


def judge_rotation_loss(case: Case, out: Any) -> str | None:
    """``rotation_loss(encoder, rotation_head, x) -> ()``, with a graph to both."""
    kw = case.kwargs
    if "raised" in out:
        text = out["raised"]
        if any(s in text for s in ("channels", "shape", "size", "must match")):
            return (
                f"raised {text}: rotate over the two spatial axes, torch.rot90(x, k, dims=(2, 3)),"
                " which keeps the images (B, 1, H, H)"
            )
        return f"raised {text}"
    if "problem" in out:
        return out["problem"]
    if out["model_changed"]:
        return "the encoder's or the head's weights changed; computing the loss must leave them"
    want, both = _rotation(kw)
    got = out["loss"]
    if got.dtype != want.dtype:
        return f"the loss has dtype {got.dtype}; keep the dtype of the images ({want.dtype})"
    if not close(got, want.detach()):
        wrong = f"expected loss {float(want.detach()):.6g}, got {float(got):.6g}"
        for variant, why in _ROTATION_GUESSES.items():
            if close(got, _rotation(kw, variant)[0].detach()):
                return f"{wrong}: {why}"
        return f"{wrong}. {_ROTATION}."
    if out["grads"] is None:
        return (
            "the loss is right but carries no graph back to the encoder and the head; test-time "
            "training follows its gradient"
        )
    for name, w in param_grads(want, both, 0).items():
        if not close(out["grads"][name], w):
            return (
                f"the loss is right but its gradient with respect to {name} is not: expected "
                f"{show(w)}, got {show(out['grads'][name])}"
            )
    return None


# ---------------------------------------------------------------------------------- cases


def entropy_case(
    B: int, C: int, seed: int, scale: float = 3.0, dtype: str = "float64", learnable: bool = False
) -> Case:
    kwargs = {"B": B, "C": C, "seed": seed, "scale": scale, "dtype": dtype, "learnable": learnable}
    grad = ", requires grad" if learnable else ""
    label = f"{B} x {C} logits of scale {scale:g}, {dtype}{grad}, seed {seed}"
    return Case(label, kwargs, probe="tta_entropy")


_MODELS = {
    "conv4": "a Conv4 with BatchNorm2d",
    "conv4-batch": "a Conv4 with batch-statistics norm",
    "mlp": "a perceptron with BatchNorm1d (one without affine parameters)",
    "mixed": "a network with BatchNorm2d (one without affine parameters), GroupNorm, LayerNorm "
    "and BatchNorm1d",
}


def model_spec(kind: str, seed: int, hidden: int = 4, dtype: str = "float32", **kw) -> dict:
    return {"kind": kind, "seed": seed, "hidden": hidden, "dtype": dtype, **kw}


def _model_label(spec: dict[str, Any]) -> str:
    return (
        f"{_MODELS[spec['kind']]} ({spec['hidden']} channels, {spec['dtype']}, seed {spec['seed']})"
    )


def collect_case(model: dict[str, Any], start_frozen: bool = False) -> Case:
    label = _model_label(model) + (", every parameter frozen to start with" if start_frozen else "")
    return Case(label, {"model": model, "start_frozen": start_frozen}, probe="tta_collect")


def tent_case(model: dict[str, Any], optim: dict[str, Any], batches: list[int], seed: int) -> Case:
    extra = f", momentum {optim['momentum']:g}" if optim.get("momentum") else ""
    how = f"{optim['kind'].upper() if optim['kind'] == 'sgd' else 'Adam'} lr {optim['lr']:g}{extra}"
    label = f"{_model_label(model)}, {how}, test batches of {batches}, seed {seed}"
    kwargs = {"model": model, "optim": optim, "batches": batches, "seed": seed}
    return Case(label, kwargs, probe="tta_tent")


def rotation_case(encoder: dict[str, Any], B: int, seed: int) -> Case:
    kind = {"conv4": "a Conv4 body with batch-statistics norm", "mlp": "a perceptron"}
    size = encoder.get("image_size", 16)
    label = (
        f"{kind[encoder['kind']]} ({encoder['hidden']} channels) and a linear rotation head, "
        f"{B} image(s) {size}x{size}, {encoder['dtype']}, seed {seed}"
    )
    return Case(label, {"encoder": encoder, "B": B, "seed": seed}, probe="tta_rotation")


def sgd(lr: float, momentum: float = 0.0) -> dict[str, Any]:
    return {"kind": "sgd", "lr": lr, "momentum": momentum}


def adam(lr: float) -> dict[str, Any]:
    return {"kind": "adam", "lr": lr}


def encoder_spec(kind: str, seed: int, hidden: int = 4, dtype: str = "float32", **kw) -> dict:
    return {"kind": kind, "seed": seed, "hidden": hidden, "dtype": dtype, **kw}


EXERCISE = Exercise(
    "06_test_time_adaptation",
    (
        Question(
            "q1",
            "entropy",
            2,
            judge_entropy,
            visible=(
                entropy_case(3, 4, seed=0),
                entropy_case(5, 10, seed=1, scale=1000.0),
                entropy_case(4, 6, seed=2, dtype="float32", learnable=True),
            ),
            title="the entropy of the softmax, from logits",
        ),
        Question(
            "q2",
            "tent_parameters",
            2,
            judge_tent_parameters,
            visible=(
                collect_case(model_spec("conv4", seed=0)),
                collect_case(model_spec("mlp", seed=1)),
                collect_case(model_spec("mixed", seed=2), start_frozen=True),
            ),
            title="the BN affine parameters, everything else frozen",
        ),
        Question(
            "q3",
            "tent_step",
            3,
            judge_tent_step,
            visible=(
                tent_case(model_spec("conv4", seed=0), sgd(0.5), [8], seed=0),
                tent_case(model_spec("mlp", seed=1), sgd(0.2), [6, 6, 6], seed=1),
                tent_case(model_spec("conv4", seed=2, dtype="float64"), adam(0.01), [5, 7], seed=2),
            ),
            title="one TENT update on a test batch",
        ),
        Question(
            "q4",
            "rotation_loss",
            3,
            judge_rotation_loss,
            visible=(
                rotation_case(encoder_spec("mlp", seed=0), 2, seed=0),
                rotation_case(encoder_spec("conv4", seed=1), 3, seed=1),
                rotation_case(encoder_spec("conv4", seed=2, dtype="float64"), 4, seed=2),
            ),
            title="the rotation-prediction loss of test-time training",
        ),
    ),
)


def check(name: str, fn: Callable[..., Any]) -> feedback.Verdict:
    """Run the visible cases of question ``name`` on ``fn`` and print the verdict."""
    return feedback.check(EXERCISE, name, fn)
