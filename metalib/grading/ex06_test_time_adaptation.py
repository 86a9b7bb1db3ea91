"""Exercise 06_test_time_adaptation: entropy, the BN parameters, a TENT step, the rotation loss.

What the questions check. q1 ``entropy`` is compared with the reference row by row and, where the
logits require gradients, on its gradient with respect to them (TENT follows it); a non-finite
entropy (a softmax rounded to 0, then a log) is named as such. q2 ``tent_parameters`` is judged
by properties: the list holds each batch norm layer's affine weight and bias, once, in any order,
and nothing else (no running statistic, no other layer's parameter, no other norm's); afterwards
exactly those require gradients, and no value changed. q3 ``tent_step`` is called once per test
batch of a stream on a model prepared by :func:`metalib.tta.configure_tent` and an optimizer over
its BN affine parameters: each call's logits and the parameters after the stream are compared,
and a parameter outside the optimizer or a running statistic that changed is named. q4
``rotation_loss`` is compared on its value and its gradient with respect to the encoder's and
the head's weights; a shape error is explained as rotating over the wrong axes. A wrong answer is
matched against the usual mistakes (no minus sign, a mean over classes, a sum over the batch;
the running statistics used, the logits after the update, the entropy summed or maximised, no
``zero_grad``, no step; the rotations turned the other way, labels misaligned, rotations embedded
apart, a summed cross-entropy, no graph) so the message can say which one it is.

How cases are built. A spec is plain data: seeded logits of every scale (up to 1000, where a
softmax rounds to exact zeros); small seeded classifiers (:func:`classifier`) whose normalisation
layers (BatchNorm1d/2d, some without affine parameters, next to GroupNorm and LayerNorm) have
moved off their initial values; shifted seeded test batches; encoders with batch-statistics norm
and a linear rotation head. Gradients through the outputs are vector-Jacobian products with
seeded directions (:func:`metalib.grading.builders.vjp`).

Tolerances: the engine's (rtol 1e-7, atol 1e-9 in float64; rtol 1e-4, atol 1e-5 in float32),
except for q1, where the absolute tolerance is 1e-6 (an eps in log(p + eps) is fine; nothing else
is).

References: :func:`metalib.tta.entropy`, :func:`metalib.tta.bn_affine_parameters` (and the
freezing of :func:`metalib.tta.configure_tent`), :func:`metalib.tta.tent_step`,
:func:`metalib.tta.rotation_loss`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from metalib import tta
from metalib.grading import feedback
from metalib.grading.builders import generator, vjp
from metalib.grading.question import Mistake, Question, case, difference, plain, tolerance
from metalib.grading.spec import Case, Exercise
from metalib.nets import Conv4

Spec = dict[str, Any]


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


def _owner(net: nn.Module, name: str) -> str:
    """The class name of the module that holds parameter or buffer ``name``."""
    return type(net.get_submodule(name.rpartition(".")[0])).__name__


# ------------------------------------------------------------------------- q1: entropy


def logits(B: int, C: int, seed: int, scale: float = 3.0, dtype: str = "float64") -> torch.Tensor:
    """Seeded logits ``(B, C)``: ``scale`` times standard normal (huge for ``scale`` 1000)."""
    z = scale * torch.randn(B, C, generator=generator(seed), dtype=torch.float64)
    return z.to(getattr(torch, dtype))


def entropy_inputs(
    B: int, C: int, seed: int, scale: float = 3.0, dtype: str = "float64", learnable: bool = False
) -> dict[str, torch.Tensor]:
    """The argument of ``entropy(logits)``, requiring gradients if ``learnable``."""
    return {"logits": logits(B, C, seed, scale, dtype).requires_grad_(learnable)}


def observe_entropy(fn: Callable[..., Any], args: dict[str, Any], spec: Spec) -> Any:
    """The entropies; with ``learnable``, also their gradient with respect to the logits (a
    seeded VJP; ``None`` without a graph)."""
    out = fn(args["logits"])
    if not spec["learnable"]:
        return plain(out)
    return {"values": plain(out), "gradient": vjp(out, args, spec["seed"] + 1)}


def _near(got: Any, want: Any) -> bool:
    """Within the tolerance of ``want``'s dtype, but with an absolute tolerance of 1e-6."""
    if isinstance(want, dict):
        return (
            isinstance(got, dict)
            and got.keys() == want.keys()
            and all(_near(got[k], want[k]) for k in want)
        )
    return (
        isinstance(got, torch.Tensor)
        and got.shape == want.shape
        and got.dtype == want.dtype
        and torch.allclose(got, want, rtol=tolerance(want.dtype)["rtol"], atol=1e-6)
    )


def check_entropy(spec: Spec, got: Any, want: Any) -> str | None:
    """The comparison (atol 1e-6), with non-finite entropies named when no mistake explains them."""
    if _near(got, want):
        return None
    values, leak = got.get("values") if isinstance(got, dict) else got, ""
    if isinstance(values, torch.Tensor) and values.is_floating_point() and values.dim() == 1:
        if not torch.isfinite(values).all():
            row = int((~torch.isfinite(values)).nonzero()[0])
            z = entropy_inputs(**spec)["logits"].detach()
            leak = (
                f"row {row} gave {float(values[row])} (logits up to {float(z[row].abs().max()):.4g}"
                "): softmax rounds tiny probabilities to 0 and log(0) = -inf, so 0 * log 0 is nan;"
                " take log p from logits.log_softmax(dim=-1)"
            )
    return _judged(Q1, spec, got, want, leak)


def entropy_case(
    B: int, C: int, seed: int, scale: float = 3.0, dtype: str = "float64", learnable: bool = False
) -> Case:
    grad = ", requires grad" if learnable else ""
    label = f"{B} x {C} logits of scale {scale:g}, {dtype}{grad}, seed {seed}"
    return case(label, B=B, C=C, seed=seed, scale=scale, dtype=dtype, learnable=learnable)


Q1 = Question(
    "q1",
    "entropy",
    2,
    entropy_inputs,
    title="the entropy of the softmax, from logits",
    reference=tta.entropy,
    observe=observe_entropy,
    check=check_entropy,
    what="the entropies",
    hints=lambda s: {
        (): "one number for the whole batch; return one entropy per row (sum over dim=-1 only)",
        (s["C"],): "this sums over the batch axis; sum over the classes (dim=-1)",
        (s["B"], s["C"]): "the terms -p log p were not summed over the classes",
    },
    rule="H = -Σ_c p_c log p_c per row, with log p = logits.log_softmax(-1) and p = log p.exp()",
    mistakes=(
        Mistake(
            "the minus sign is missing: an entropy is never negative", lambda z: -tta.entropy(z)
        ),
        Mistake(
            "this is the mean over the classes; take the sum",
            lambda z: tta.entropy(z) / z.shape[-1],
        ),
        Mistake(
            "this is in bits (log2); use the natural logarithm (nats)",
            lambda z: tta.entropy(z) / math.log(2),
        ),
        Mistake("this is the sum over the batch", lambda z: tta.entropy(z).sum().expand(len(z))),
        Mistake(
            "the values are right but carry no gradient back to the logits (detached, or computed "
            "outside torch); TENT minimises the entropy by following its gradient",
            lambda z: tta.entropy(z).detach(),
        ),
    ),
    visible=(
        entropy_case(3, 4, seed=0),
        entropy_case(5, 10, seed=1, scale=1000.0),
        entropy_case(4, 6, seed=2, dtype="float32", learnable=True),
    ),
)


# ------------------------------------------------------------------------- q2: BN parameters


def _perturb_norms(net: nn.Module, seed: int) -> nn.Module:
    """Move every normalisation layer's affine parameters and running statistics off their
    initial values (as training would), seeded."""
    g = generator(seed)
    norms = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)
    with torch.no_grad():
        for module in net.modules():
            for name in ("weight", "bias", "running_mean", "running_var"):
                t = getattr(module, name, None)
                if t is None or not isinstance(module, norms):
                    continue
                noise = torch.randn(t.shape, generator=g, dtype=torch.float64).to(t.dtype)
                if name == "running_var":
                    t.copy_(0.5 + noise.abs())
                else:
                    t.copy_(1 + 0.3 * noise if name == "weight" else 0.3 * noise)
    return net


def classifier(
    kind: str,
    seed: int,
    n_classes: int = 5,
    hidden: int = 4,
    image_size: int = 16,
    dtype: str = "float32",
) -> nn.Module:
    """A seeded classifier of ``(B, 1, S, S)`` images, in ``eval()`` mode.

    ``kind``: ``"conv4"`` (a :class:`~metalib.nets.Conv4` with ``nn.BatchNorm2d``, running
    statistics), ``"conv4-batch"`` (batch-statistics norm), ``"mlp"`` (``BatchNorm1d`` layers,
    one of them without affine parameters), ``"mixed"`` (convolutions with ``BatchNorm2d``, a
    ``GroupNorm``, a ``LayerNorm``, a ``BatchNorm2d(affine=False)`` and a ``BatchNorm1d``).
    """
    h, s = hidden, image_size
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if kind in ("conv4", "conv4-batch"):
            norm = "running" if kind == "conv4" else "batch"
            net: nn.Module = Conv4(n_classes, 1, hidden, image_size, norm=norm)
        elif kind == "mlp":
            net = nn.Sequential(
                nn.Flatten(),
                nn.Linear(s * s, 4 * h),
                nn.BatchNorm1d(4 * h),
                nn.ReLU(),
                nn.Linear(4 * h, 2 * h),
                nn.BatchNorm1d(2 * h, affine=False),
                nn.Tanh(),
                nn.Linear(2 * h, n_classes),
            )
        elif kind == "mixed":
            net = nn.Sequential(
                nn.Conv2d(1, h, 3, padding=1),
                nn.BatchNorm2d(h),
                nn.ReLU(),
                nn.Conv2d(h, 2 * h, 3, stride=2, padding=1),
                nn.GroupNorm(2, 2 * h),
                nn.ReLU(),
                nn.Conv2d(2 * h, h, 3, stride=2, padding=1),
                nn.BatchNorm2d(h, affine=False),
                nn.ReLU(),
                nn.Flatten(),
                nn.LayerNorm(h * (s // 4) ** 2),
                nn.Linear(h * (s // 4) ** 2, 4 * h),
                nn.BatchNorm1d(4 * h),
                nn.ReLU(),
                nn.Linear(4 * h, n_classes),
            )
        else:
            raise ValueError(f"unknown model kind {kind!r}; use conv4, conv4-batch, mlp or mixed")
    return _perturb_norms(net, seed + 1).to(getattr(torch, dtype)).eval()


def collect_inputs(model: Spec, start_frozen: bool = False) -> dict[str, nn.Module]:
    """The argument of ``tent_parameters(model)``: every parameter frozen if ``start_frozen``."""
    return {"model": classifier(**model).requires_grad_(not start_frozen)}


def observe_collect(fn: Callable[..., Any], args: dict[str, Any], spec: Spec) -> dict[str, Any]:
    """What came back, each item named (``param:<name>``, ``buffer:<name>`` or ``other:<what>``),
    and the ``requires_grad`` flags after the call; or ``problem`` if not a list."""
    net = args["model"]
    out = fn(net)
    flags = {name: p.requires_grad for name, p in net.named_parameters()}
    if isinstance(out, dict):
        return {"problem": "it returned a dict; return a list of the parameters"}
    try:
        items = list(out)
    except TypeError:
        return {"problem": f"it returned a {type(out).__name__}, not a list"}
    params = {id(p): f"param:{name}" for name, p in net.named_parameters()}
    buffers = {id(b): f"buffer:{name}" for name, b in net.named_buffers()}
    names = [
        params.get(id(item))
        or buffers.get(id(item))
        or (
            f"other:a tensor of shape {tuple(item.shape)} (not one of the model's)"
            if isinstance(item, torch.Tensor)
            else f"other:a {type(item).__name__}"
        )
        for item in items
    ]
    return {"items": names, "requires_grad": flags}


def reference_tent_parameters(model: nn.Module) -> list[nn.Parameter]:
    """:func:`metalib.tta.bn_affine_parameters`, the rest frozen as by ``configure_tent``."""
    params = tta.bn_affine_parameters(model)
    model.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    return params


def check_tent_parameters(spec: Spec, got: dict[str, Any], want: dict[str, Any]) -> str | None:
    """Each BN affine parameter once (any order), nothing else; exactly those require grad."""
    if "problem" in got:
        return got["problem"]
    net = collect_inputs(**spec)["model"]
    for kind, _, name in (item.partition(":") for item in got["items"]):
        if kind == "buffer":
            return (
                f"it returned {name}, a buffer of a {_owner(net, name)} (a running statistic): "
                "it is not learned; return only the layers' weight and bias"
            )
        if kind == "other":
            return f"it returned {name}; return the model's parameters themselves"
    names, expected = [i.partition(":")[2] for i in got["items"]], [i[6:] for i in want["items"]]
    if twice := sorted({n for n in names if names.count(n) > 1}):
        return f"{twice[0]} appears more than once in the list; return each parameter once"
    if extra := [n for n in names if n not in expected]:
        owner = _owner(net, extra[0])
        why = (
            f"a {owner} is not batch norm; TENT adapts only the batch norm layers"
            if "Norm" in owner
            else f"it is a {owner}'s; TENT updates only the batch norm layers' scale and shift"
        )
        return f"it returned {extra[0]}: {why}"
    if missing := [n for n in expected if n not in names]:
        owner = _owner(net, missing[0])
        hint = (
            "the scale γ is weight, the shift β is bias: return both"
            if all(n.endswith(".bias") for n in missing)
            else f"catch every kind of batch norm (a {owner} here) with isinstance(module, "
            "nn.modules.batchnorm._BatchNorm)"
        )
        return (
            f"{len(missing)} of the {len(expected)} BN affine parameters are missing, e.g. "
            f"{missing[0]} (of a {owner}); {hint}"
        )
    flags = got["requires_grad"]
    if frozen := [n for n in expected if not flags[n]]:
        return (
            f"{frozen[0]} does not require gradients: the BN scale and shift must "
            "(requires_grad_(True)), even where the model came frozen"
        )
    if free := [n for n, f in flags.items() if f and n not in expected]:
        return (
            f"{free[0]} (of a {_owner(net, free[0])}) still requires gradients: freeze every "
            "parameter except the BN scale and shift"
        )
    return None


_MODELS = {
    "conv4": "a Conv4 with BatchNorm2d",
    "conv4-batch": "a Conv4 with batch-statistics norm",
    "mlp": "a perceptron with BatchNorm1d (one without affine parameters)",
    "mixed": "a network with BatchNorm2d (one without affine parameters), GroupNorm, LayerNorm "
    "and BatchNorm1d",
}


def model_spec(kind: str, seed: int, hidden: int = 4, dtype: str = "float32", **kw: Any) -> Spec:
    return {"kind": kind, "seed": seed, "hidden": hidden, "dtype": dtype, **kw}


def _model_label(spec: Spec) -> str:
    kind, hidden, dtype, seed = spec["kind"], spec["hidden"], spec["dtype"], spec["seed"]
    return f"{_MODELS[kind]} ({hidden} channels, {dtype}, seed {seed})"


def collect_case(model: Spec, start_frozen: bool = False) -> Case:
    label = _model_label(model) + (", every parameter frozen to start with" if start_frozen else "")
    return case(label, model=model, start_frozen=start_frozen)


Q2 = Question(
    "q2",
    "tent_parameters",
    2,
    collect_inputs,
    title="the BN affine parameters, everything else frozen",
    reference=reference_tent_parameters,
    observe=observe_collect,
    check=check_tent_parameters,
    visible=(
        collect_case(model_spec("conv4", seed=0)),
        collect_case(model_spec("mlp", seed=1)),
        collect_case(model_spec("mixed", seed=2), start_frozen=True),
    ),
)


# ------------------------------------------------------------------------- q3: a TENT step


def images(
    B: int, seed: int, image_size: int = 16, dtype: str = "float32", shift: float = 0.3
) -> torch.Tensor:
    """Seeded test images ``(B, 1, S, S)``: uniform noise, dimmed and shifted by ``shift`` (a
    covariate shift: their statistics are not the running statistics of the models)."""
    x = torch.rand(B, 1, image_size, image_size, generator=generator(seed), dtype=torch.float64)
    return (shift + 0.5 * x).to(getattr(torch, dtype))


def _batch(spec: Spec, i: int) -> torch.Tensor:
    """Test batch ``i`` of a TENT case."""
    model = spec["model"]
    size, dtype = model.get("image_size", 16), model.get("dtype", "float32")
    return images(spec["batches"][i], spec["seed"] + i, size, dtype)


def tent_inputs(model: Spec, optim: Spec, batches: list[int], seed: int) -> dict[str, Any]:
    """The arguments of ``tent_step(model, x, optimizer)`` for the first test batch: the model
    prepared by :func:`metalib.tta.configure_tent`, a ``torch.optim`` optimizer (``optim``:
    ``{"kind": "sgd" | "adam", "lr": .., "momentum": ..}``) over its BN affine parameters."""
    net = tta.configure_tent(classifier(**model))
    settings = dict(optim)
    make = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam}[settings.pop("kind")]
    spec = {"model": model, "batches": batches, "seed": seed}
    return {
        "model": net,
        "x": _batch(spec, 0),
        "optimizer": make(tta.bn_affine_parameters(net), **settings),
    }


def observe_tent(fn: Callable[..., Any], args: dict[str, Any], spec: Spec) -> dict[str, Any]:
    """``fn`` called once per test batch: each call's output, then the model's parameters and
    buffers."""
    net, opt = args["model"], args["optimizer"]
    outs = [
        plain(fn(net, args["x"] if i == 0 else _batch(spec, i), opt))
        for i in range(len(spec["batches"]))
    ]
    params = {name: p.detach().clone() for name, p in net.named_parameters()}
    buffers = {name: b.detach().clone() for name, b in net.named_buffers()}
    return {"logits": outs, "params": params, "buffers": buffers}


def _tent(model, x, optimizer, variant=""):
    """A TENT step with one known mistake."""
    if variant == "eval":
        model.eval()
    logits = model(x)
    h = tta.entropy(logits)
    loss = {"sum": h.sum(), "maximise": -h.mean()}.get(variant, h.mean())
    if variant == "pseudo":
        loss = F.cross_entropy(logits, logits.argmax(-1))
    if variant != "no zero_grad":
        optimizer.zero_grad()
    loss.backward()
    if variant != "no step":
        optimizer.step()
    if variant == "after":
        with torch.no_grad():
            logits = model(x)
    return logits.softmax(-1).detach() if variant == "softmax" else logits.detach()


def check_tent_step(spec: Spec, got: dict[str, Any], want: dict[str, Any]) -> str | None:
    """The comparison, after what must not change: parameters outside the optimizer, buffers."""
    net = tent_inputs(**spec)["model"]
    affine = {name for name, p in net.named_parameters() if p.requires_grad}
    for name in sorted(set(want["params"]) - affine):
        if not torch.equal(got["params"][name], want["params"][name]):
            return (
                f"{name} (not a BN scale or shift) changed: TENT updates only the parameters the "
                "optimizer holds; take the step with the optimizer given"
            )
    for name, b in want["buffers"].items():
        if not torch.equal(got["buffers"][name], b):
            return f"the buffer {name} changed; the running statistics must stay as they are"
    return _judged(Q3, spec, got, want)


def tent_case(model: Spec, optim: Spec, batches: list[int], seed: int) -> Case:
    extra = f", momentum {optim['momentum']:g}" if optim.get("momentum") else ""
    how = f"{optim['kind'].upper() if optim['kind'] == 'sgd' else 'Adam'} lr {optim['lr']:g}{extra}"
    label = f"{_model_label(model)}, {how}, test batches of {batches}, seed {seed}"
    return case(label, model=model, optim=optim, batches=batches, seed=seed)


def sgd(lr: float, momentum: float = 0.0) -> Spec:
    return {"kind": "sgd", "lr": lr, "momentum": momentum}


def adam(lr: float) -> Spec:
    return {"kind": "adam", "lr": lr}


_bad_tent = lambda variant: partial(_tent, variant=variant)  # noqa: E731

Q3 = Question(
    "q3",
    "tent_step",
    3,
    tent_inputs,
    title="one TENT update on a test batch",
    reference=tta.tent_step,
    observe=observe_tent,
    check=check_tent_step,
    pure=False,  # a TENT step updates the model: what it does to it is judged
    what="the TENT run",
    rule="One TENT step: logits = model(x), loss = entropy(logits).mean(), optimizer.zero_grad(), "
    "loss.backward(), optimizer.step(); return the logits of that forward pass",
    mistakes=(
        Mistake(
            "these are the logits with the running statistics (model.eval()); TENT normalises "
            "with the test batch's statistics: keep the model as configure_tent left it",
            _bad_tent("eval"),
        ),
        Mistake(
            "these are the logits after the update (a second forward pass)", _bad_tent("after")
        ),
        Mistake("these are probabilities (a softmax); return the logits", _bad_tent("softmax")),
        Mistake("the loss was the sum of the entropies; TENT takes their mean", _bad_tent("sum")),
        Mistake("the entropy was maximised (the loss's sign is flipped)", _bad_tent("maximise")),
        Mistake("this minimised the cross-entropy with hard pseudo-labels", _bad_tent("pseudo")),
        Mistake(
            "the gradients of earlier batches were added to this one's: call "
            "optimizer.zero_grad() before backward",
            _bad_tent("no zero_grad"),
        ),
        Mistake("the BN parameters did not move: call optimizer.step()", _bad_tent("no step")),
    ),
    visible=(
        tent_case(model_spec("conv4", seed=0), sgd(0.5), [8], seed=0),
        tent_case(model_spec("mlp", seed=1), sgd(0.2), [6, 6, 6], seed=1),
        tent_case(model_spec("conv4", seed=2, dtype="float64"), adam(0.01), [5, 7], seed=2),
    ),
)


# ------------------------------------------------------------------------- q4: rotation loss


def rotation_inputs(encoder: Spec, B: int, seed: int) -> dict[str, Any]:
    """The arguments of ``rotation_loss(encoder, rotation_head, x)``: a seeded encoder
    ``(N, 1, S, S) -> (N, D)`` (a Conv4 body with batch-statistics norm, ``"conv4"``, or a
    perceptron on the pixels, ``"mlp"``), a rotation head ``Linear(D, 4)``, and images with a
    bright top-left corner (no two rotations alike)."""
    kind, hidden, size = encoder["kind"], encoder.get("hidden", 4), encoder.get("image_size", 16)
    dtype = getattr(torch, encoder.get("dtype", "float32"))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(encoder["seed"])
        if kind == "conv4":
            net = Conv4(4, 1, hidden, size, norm="batch")
            body, dim = net.body, net.feature_dim
        elif kind == "mlp":
            dim = 4 * hidden
            body = nn.Sequential(nn.Flatten(), nn.Linear(size**2, dim), nn.Tanh())
        else:
            raise ValueError(f"unknown encoder kind {kind!r}; use conv4 or mlp")
        head = nn.Linear(dim, 4)
    x = images(B, seed, size, encoder.get("dtype", "float32"), shift=0.0)
    x[:, :, : size // 4, : size // 2] += 0.5
    body = _perturb_norms(body, encoder["seed"] + 1).to(dtype)
    return {"encoder": body, "rotation_head": head.to(dtype), "x": x}


def observe_rotation(fn: Callable[..., Any], args: dict[str, Any], spec: Spec) -> dict[str, Any]:
    """The loss and its gradient with respect to the encoder's and the head's weights (a seeded
    VJP; ``None`` without a graph); or the error raised (``raised``), for the check to explain."""
    try:
        out = fn(*args.values())
    except NotImplementedError:
        raise
    except Exception as err:  # the check explains shape errors in terms of rotation axes
        return {"raised": f"{type(err).__name__}: {err}"[:500]}
    both = nn.ModuleDict({"encoder": args["encoder"], "head": args["rotation_head"]})
    return {"value": plain(out), "gradient": vjp(out, dict(both.named_parameters()))}


def _rotation(encoder, rotation_head, x, variant=""):
    """The rotation loss with one known mistake."""
    rotated = [
        torch.rot90(x, k, dims=(3, 2) if variant == "clockwise" else (2, 3)) for k in range(4)
    ]
    labels = (
        torch.arange(4).repeat(len(x))
        if variant == "misaligned"
        else torch.arange(4).repeat_interleave(len(x))
    )
    if variant == "apart":
        out = torch.cat([rotation_head(encoder(r)) for r in rotated])
    else:
        out = rotation_head(encoder(torch.cat(rotated)))
    loss = F.cross_entropy(out, labels, reduction="sum" if variant == "sum" else "mean")
    return loss.detach() if variant == "detached" else loss


def check_rotation(spec: Spec, got: dict[str, Any], want: dict[str, Any]) -> str | None:
    """The comparison, after an error (a shape error: rotations over the wrong axes)."""
    if "raised" in got:
        text = f"raised {got['raised']}"
        if any(s in text for s in ("channels", "shape", "size", "must match")):
            return (
                f"{text}: rotate over the two spatial axes, torch.rot90(x, k, dims=(2, 3)), which "
                "keeps the images (B, 1, H, H)"
            )
        return text
    return _judged(Q4, spec, got, want)


def rotation_case(encoder: Spec, B: int, seed: int) -> Case:
    kind = {"conv4": "a Conv4 body with batch-statistics norm", "mlp": "a perceptron"}
    size = encoder.get("image_size", 16)
    label = (
        f"{kind[encoder['kind']]} ({encoder['hidden']} channels) and a linear rotation head, "
        f"{B} image(s) {size}x{size}, {encoder['dtype']}, seed {seed}"
    )
    return case(label, encoder=encoder, B=B, seed=seed)


def encoder_spec(kind: str, seed: int, hidden: int = 4, dtype: str = "float32", **kw: Any) -> Spec:
    return {"kind": kind, "seed": seed, "hidden": hidden, "dtype": dtype, **kw}


_bad_rotation = lambda variant: partial(_rotation, variant=variant)  # noqa: E731

Q4 = Question(
    "q4",
    "rotation_loss",
    3,
    rotation_inputs,
    title="the rotation-prediction loss of test-time training",
    reference=tta.rotation_loss,
    observe=observe_rotation,
    check=check_rotation,
    what="the loss",
    hints=lambda s: {(4 * s["B"],): "one cross-entropy per rotated image; take their mean"},
    rule="The loss is the mean cross-entropy of rotation_head(encoder(all 4B rotated images)) "
    "against their labels k",
    mistakes=(
        Mistake(
            "the rotations turn clockwise (90° and 270° swapped): label k is torch.rot90(x, k, "
            "dims=(2, 3)), k quarter-turns counter-clockwise",
            _bad_rotation("clockwise"),
        ),
        Mistake(
            "the labels are misaligned with the images: the images are grouped by rotation but "
            "the labels cycle 0, 1, 2, 3 per image (or the other way round)",
            _bad_rotation("misaligned"),
        ),
        Mistake(
            "the four rotations went through the encoder in separate batches; its batch-statistics "
            "norm must see all 4B images together",
            _bad_rotation("apart"),
        ),
        Mistake("this is the sum of the 4B cross-entropies; take their mean", _bad_rotation("sum")),
        Mistake(
            "the loss carries no graph back to the encoder and the head", _bad_rotation("detached")
        ),
    ),
    visible=(
        rotation_case(encoder_spec("mlp", seed=0), 2, seed=0),
        rotation_case(encoder_spec("conv4", seed=1), 3, seed=1),
        rotation_case(encoder_spec("conv4", seed=2, dtype="float64"), 4, seed=2),
    ),
)

EXERCISE = Exercise("06_test_time_adaptation", (Q1, Q2, Q3, Q4))


def check(name: str, fn: Callable[..., Any]) -> feedback.Verdict:
    """Run the visible cases of question ``name`` on ``fn`` and print the verdict."""
    return feedback.check(EXERCISE, name, fn)
