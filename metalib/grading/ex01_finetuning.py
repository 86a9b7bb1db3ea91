"""Exercise 01_finetuning: freezing blocks, a new head, gradient steps on a support set.

What the questions check. q1 ``freeze_blocks`` must return the model it was given with the
reference's ``requires_grad`` flags (the first k body blocks frozen, everything else trainable)
and its values untouched. q2 ``new_head`` is judged by properties, since the question does not
fix the order of the random draws: the original untouched and sharing no tensor with the copy,
the copy's body equal to it, a head of the reference's shape and dtype drawn uniform in
``±1/sqrt(feature_dim)`` (range, spread), the same head for the same generator seed whatever the
global random state and another for another seed. q3 ``sgd_step`` must return the loss before
each call and leave the parameters where the reference's calls do; q4 ``finetune`` must leave
the original (values and flags) as it was and return a copy with the reference's parameters;
q5 ``query_accuracy`` must give the fraction of queries whose argmax is the label, the whole
batch at once (Conv4 normalises with batch statistics, so query by query differs). Impossible
``k`` must raise ``ValueError``.

How cases are built. Every case runs on a tiny :class:`~metalib.nets.Conv4`
(:func:`metalib.grading.builders.tiny_conv4`: 4 or 8 channels, 16 x 16 to 48 x 48 images) and a
support set of random images with shuffled labels (:func:`~metalib.grading.builders.tiny_support`),
rebuilt from a seed for the student's function and for the reference alike; q5's labels are the
network's own predictions for exactly ``n_right`` of the ``n`` queries. Each question's
``observe`` reduces what came back to plain data: flags and parameters, several heads, the losses
and the parameters after the calls, the fine-tuned copy and the original after the call.

Tolerances: parameters and losses within 1e-7 relative / 1e-9 absolute in float64 and 1e-4 /
1e-5 in float32 (:func:`metalib.grading.question.difference`); the accuracy within 1e-6; flags,
untouched values and the copy's body exactly.

References: :func:`metalib.nets.with_new_head` (q2), one step of :func:`metalib.maml.adapt` (plain
gradient descent ``p <- p - lr * grad`` of the mean cross-entropy) written back into the model
(q3), and :func:`metalib.train.accuracy` (q5); q1 and q4 are written out (a Conv4's blocks frozen;
a deep copy, frozen, then q3's step repeated).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from metalib import maml, nets, train
from metalib.grading import feedback
from metalib.grading.builders import generator, tiny_conv4, tiny_support
from metalib.grading.question import (
    Case,
    Exercise,
    Mistake,
    Question,
    case,
    difference,
    plain,
    raises,
)

N_BLOCKS = 4  # Conv4's body: four blocks, then a Flatten
STEP_HINT = (
    "one step is p <- p - lr * grad of the mean cross-entropy over the whole batch, for the "
    "parameters with requires_grad only, with gradients cleared between steps"
)
Spec = dict[str, Any]
Tensors = dict[str, torch.Tensor]


# ------------------------------------------------------------------------- shared helpers


def model_spec(
    seed: int, n_way: int = 5, hidden: int = 4, size: int = 16, dtype: str = "float64"
) -> Spec:
    """The spec of :func:`~metalib.grading.builders.tiny_conv4`."""
    return {"seed": seed, "n_way": n_way, "hidden": hidden, "image_size": size, "dtype": dtype}


def support_spec(n_way: int, k_shot: int, seed: int, dtype: str = "float64", size: int = 16):
    """The spec of :func:`~metalib.grading.builders.tiny_support`."""
    return {"n_way": n_way, "k_shot": k_shot, "seed": seed, "image_size": size, "dtype": dtype}


def _params(net: nn.Module) -> Tensors:
    return {name: p.detach().clone() for name, p in net.named_parameters()}


def _flags(net: nn.Module) -> dict[str, bool]:
    return {name: p.requires_grad for name, p in net.named_parameters()}


def _first_change(got: Any, want: Tensors) -> str | None:
    """The first name of ``want`` whose tensor ``got`` lacks or holds with other values."""
    for name, w in want.items():
        g = got.get(name) if isinstance(got, Mapping) else None
        if not isinstance(g, torch.Tensor) or g.shape != w.shape or not torch.equal(g, w):
            return name
    return None


def _block(name: str) -> int | None:
    """The body block a parameter belongs to (``body.2.0.weight`` -> 2), ``None`` for the head."""
    parts = name.split(".")
    return int(parts[1]) if parts[0] == "body" else None


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, torch.Tensor) and value.numel() == 1 and value.is_floating_point():
        return float(value)
    return None


# ------------------------------------------------------------------------- q1


def freeze_inputs(model: Spec, k: int, start_frozen: bool = False) -> dict[str, Any]:
    """``(model, k)``: a tiny Conv4, frozen entirely first if ``start_frozen``."""
    net = tiny_conv4(**model)
    if start_frozen:
        net.requires_grad_(False)
    return {"model": net, "k": k}


def frozen(fn: Callable[..., Any], args: Mapping[str, Any], spec: Spec) -> dict[str, Any]:
    """Whether ``fn`` returned the model itself, and the model's flags and values after."""
    with torch.random.fork_rng(devices=[]):
        out = fn(*args.values())
    net = args["model"]
    return {"returned the model": out is net, "requires_grad": _flags(net), "values": _params(net)}


def reference_freeze_blocks(model: nn.Module, k: int) -> nn.Module:
    """The first ``k`` blocks of the body frozen, every other parameter trainable; in place."""
    if not 0 <= k <= len(model.body) - 1:  # the body's last entry only flattens
        raise ValueError(f"k must be between 0 and {len(model.body) - 1}, got {k}")
    for i, block in enumerate(model.body):
        block.requires_grad_(i >= k)
    model.head.requires_grad_(True)
    return model


def check_freeze_blocks(spec: Spec, got: dict[str, Any], want: dict[str, Any]) -> str | None:
    """The model itself returned, the reference's flags, the values untouched."""
    if not got["returned the model"]:
        return "should return the model it was given (the same object), frozen in place"
    flags = got["requires_grad"]
    wrong = [
        f"{name} should be {'trainable' if flag else 'frozen'}"
        for name, flag in want["requires_grad"].items()
        if flags.get(name) != flag
    ]
    if wrong:
        more = f" (and {len(wrong) - 3} more)" if len(wrong) > 3 else ""
        return (
            f"with k={spec['k']}: {'; '.join(wrong[:3])}{more}; the first k blocks "
            "model.body[:k] get requires_grad False, every other parameter True"
        )
    if changed := _first_change(got["values"], want["values"]):
        return f"the values of {changed} changed; freezing only sets requires_grad"
    return None


def freeze_case(k: int, seed: int = 0, start_frozen: bool = False) -> Case:
    label = f"k={k}" + (" on a network frozen entirely before" if start_frozen else "")
    model = model_spec(seed, hidden=8, dtype="float32")
    return case(label, model=model, k=k, start_frozen=start_frozen)


def freeze_raises(k: int) -> Case:
    model = model_spec(0, dtype="float32")
    label = f"k={k} (Conv4 has {N_BLOCKS} blocks)"
    return raises(label, {"model": model, "k": k}, {"model": model, "k": 2})


Q1 = Question(
    "q1",
    "freeze_blocks",
    2,
    freeze_inputs,
    title="freeze the first k blocks",
    reference=reference_freeze_blocks,
    observe=frozen,
    check=check_freeze_blocks,
    pure=False,  # freezing in place is the point; check_freeze_blocks checks the values
    visible=(
        freeze_case(2),
        freeze_case(4, seed=1),
        freeze_case(0, seed=2, start_frozen=True),
        freeze_raises(5),
    ),
)


# ------------------------------------------------------------------------- q2


def head_inputs(model: Spec, n_way: int, seed: int) -> dict[str, Any]:
    """``(model, n_way, generator)``."""
    return {"model": tiny_conv4(**model), "n_way": n_way, "generator": generator(seed)}


def heads(fn: Callable[..., Any], args: Mapping[str, Any], spec: Spec) -> dict[str, Any]:
    """``fn`` with the seed, the seed again (global generator reseeded), and seed + 1; then the
    first copy edited, to see whether the original moves with it."""
    net, n_way, seed = args["model"], args["n_way"], spec["seed"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(10_000 + seed)
        new = fn(net, n_way, args["generator"])
        after = _params(net)
        if not isinstance(new, nn.Module):
            return {"problem": f"it returned a {type(new).__name__}, not a network (nn.Module)"}
        if new is net:
            return {"problem": "it returned the original network itself, not a copy"}
        copy_state = _params(new)
        torch.manual_seed(20_000 + seed)
        again = _params(fn(net, n_way, generator(seed)))
        other = _params(fn(net, n_way, generator(seed + 1)))
    with torch.no_grad():
        for p in new.parameters():
            p.add_(1.0)
    return {
        "after": after,
        "new": copy_state,
        "again": again,
        "other": other,
        "after editing the copy": _params(net),
    }


def reference_new_head(model: nn.Module, n_way: int, generator: torch.Generator) -> nn.Module:
    """:func:`metalib.nets.with_new_head`."""
    return nets.with_new_head(model, n_way, generator)


def _head_values(new: Tensors, ref: Tensors) -> str | None:
    """The head's shapes and dtype as the reference's; uniform in ±1/sqrt(feature_dim)."""
    (n_way, d), dtype = ref["head.weight"].shape, ref["head.weight"].dtype
    for name in ("head.weight", "head.bias"):
        t, shape = new.get(name), tuple(ref[name].shape)
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != shape:
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else "nothing"
            return (
                f"{name} should have shape {shape} (n_way={n_way} outputs from "
                f"feature_dim={d} features), got {got}"
            )
        if t.dtype != dtype:
            return f"{name} should have the model's dtype {dtype}, got {t.dtype}"
    bound = 1 / math.sqrt(d)
    w, b = new["head.weight"].double(), new["head.bias"].double()
    for name, t in (("head.weight", w), ("head.bias", b)):
        if t.abs().max() > bound * (1 + 1e-6):
            return (
                f"{name} has values up to {float(t.abs().max()):.3f}; draw them uniform in "
                f"[-1/sqrt(feature_dim), 1/sqrt(feature_dim)] = +-{bound:.3f}"
            )
    spread = bound / math.sqrt(3)  # the standard deviation of U(-bound, bound)
    low = 0.75 if w.numel() >= 200 else 0.3
    if not low * spread <= float(w.std()) <= 1.25 * spread:
        return (
            f"head.weight has standard deviation {float(w.std()):.3f}; uniform values in "
            f"+-{bound:.3f} have {spread:.3f}"
        )
    if n_way >= 5 and float(b.std()) == 0.0:
        return "head.bias is constant; draw it uniform in +-1/sqrt(feature_dim) like the weights"
    return None


def check_new_head(spec: Spec, got: dict[str, Any], want: dict[str, Any]) -> str | None:
    """A copy, the original untouched, the body kept, a fresh head drawn from ``generator``."""
    if "problem" in got:
        return got["problem"] + "; return a new network (copy.deepcopy the model first)"
    original, new = want["after"], got["new"]  # the reference leaves the model as it was built
    if changed := _first_change(got["after"], original):
        return (
            f"the original network changed ({changed}); leave it as it was and change a copy "
            "made with copy.deepcopy (copy.copy shares the layers)"
        )
    if extra := sorted(set(new) - set(want["new"])):
        return f"the copy has parameters the model does not have: {extra[:3]}"
    body = {name: t for name, t in original.items() if not name.startswith("head.")}
    if changed := _first_change(new, body):
        return f"the copy's {changed} differs from the original's; the body must be kept as it is"
    if problem := _head_values(new, want["new"]):
        return problem
    head = {name: new[name] for name in ("head.weight", "head.bias")}
    if _first_change(got["again"], head):
        return (
            "two calls with generators seeded alike gave different heads; draw the head from "
            "`generator` (e.g. tensor.uniform_(-b, b, generator=generator)), not from torch's "
            "global generator"
        )
    if not _first_change(got["other"], head):
        return "generators with different seeds gave the same head; draw it from `generator`"
    if _first_change(got["after editing the copy"], original):
        return (
            "changing the copy's weights changed the original's too: the copy shares tensors "
            "with the original; copy the whole model with copy.deepcopy"
        )
    return None


def head_case(n_way: int, seed: int, hidden: int, size: int, dtype: str = "float32") -> Case:
    d = hidden * (size // 16) ** 2
    label = f"{n_way}-way head on features of size {d} ({dtype}), seed {seed}"
    model = model_spec(seed + 100, hidden=hidden, size=size, dtype=dtype)
    return case(label, model=model, n_way=n_way, seed=seed)


Q2 = Question(
    "q2",
    "new_head",
    2,
    head_inputs,
    title="a copy with a fresh head",
    reference=reference_new_head,
    observe=heads,
    check=check_new_head,
    pure=False,  # heads() edits the copy on purpose; check_new_head says what the original did
    visible=(
        head_case(10, seed=0, hidden=8, size=32),
        head_case(5, seed=1, hidden=8, size=16),
    ),
)


# ------------------------------------------------------------------------- q3


def step_inputs(model: Spec, support: Spec, lr: float, frozen: int, calls: int) -> dict[str, Any]:
    """``(model, x, y, lr)``: a tiny Conv4 whose first ``frozen`` blocks do not learn."""
    net = tiny_conv4(**model)
    for block in list(net.body)[:frozen]:
        block.requires_grad_(False)
    x, y = tiny_support(**support)
    return {"model": net, "x": x, "y": y, "lr": lr}


def stepped(fn: Callable[..., Any], args: Mapping[str, Any], spec: Spec) -> dict[str, Any]:
    """The losses of ``spec["calls"]`` calls in a row (a 1-element tensor read as a float), then
    the model's parameters."""
    with torch.random.fork_rng(devices=[]):
        out = [fn(*args.values()) for _ in range(spec["calls"])]
    losses = [plain(v) if _number(v) is None else _number(v) for v in out]
    return {"losses": losses, "parameters": _params(args["model"])}


def reference_sgd_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, lr: float) -> float:
    """One step of :func:`metalib.maml.adapt` on the trainable parameters, written into them."""
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    with torch.no_grad():
        loss = F.cross_entropy(model(x), y)
    new = maml.adapt(model, trainable, x, y, F.cross_entropy, 1, lr, first_order=True)
    with torch.no_grad():
        for name, p in trainable.items():
            p.copy_(new[name])
    return loss.item()


def _step_variant(model, x, y, lr, sign: float = -1.0, clear: bool = True, after: bool = False):
    """``sgd_step`` with ``loss.backward()``: ascent (``sign=1``), gradients left to pile up
    (``clear=False``), or the loss after the step returned (``after``)."""
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:
                p += sign * lr * p.grad
                if clear:
                    p.grad = None
    return F.cross_entropy(model(x), y).item() if after else loss.item()


def step_case(
    n_way: int, k: int, lr: float, frozen: int, calls: int, seed: int, dtype: str = "float64"
) -> Case:
    return case(
        f"{n_way}-way {k}-shot, lr={lr}, {frozen} frozen blocks, {calls} call(s), {dtype}",
        model=model_spec(seed, n_way=n_way, dtype=dtype),
        support=support_spec(n_way, k, seed + 1, dtype),
        lr=lr,
        frozen=frozen,
        calls=calls,
    )


Q3 = Question(
    "q3",
    "sgd_step",
    2,
    step_inputs,
    title="one gradient step on the support set",
    reference=reference_sgd_step,
    observe=stepped,
    pure=False,  # the step is taken in place
    rule=STEP_HINT[0].upper() + STEP_HINT[1:],
    mistakes=(
        Mistake(
            "the gradients pile up in p.grad over the calls; clear them after each step "
            "(p.grad = None), or take them with torch.autograd.grad",
            lambda model, x, y, lr: _step_variant(model, x, y, lr, clear=False),
            when=lambda spec: spec["calls"] > 1,
        ),
        Mistake(
            "the step goes up the gradient; subtract lr * grad",
            lambda model, x, y, lr: _step_variant(model, x, y, lr, sign=1.0),
        ),
        Mistake(
            "this is the loss after the step; return the loss before the step",
            lambda model, x, y, lr: _step_variant(model, x, y, lr, after=True),
        ),
    ),
    visible=(
        step_case(5, 2, lr=0.1, frozen=0, calls=1, seed=0),
        step_case(5, 2, lr=0.5, frozen=2, calls=2, seed=1),
    ),
)


# ------------------------------------------------------------------------- q4


def finetune_inputs(
    model: Spec, support: Spec, steps: int, lr: float, frozen: int
) -> dict[str, Any]:
    """``(model, support_x, support_y, steps, lr, frozen_blocks)``."""
    x, y = tiny_support(**support)
    return {
        "model": tiny_conv4(**model),
        "support_x": x,
        "support_y": y,
        "steps": steps,
        "lr": lr,
        "frozen_blocks": frozen,
    }


def finetuned(fn: Callable[..., Any], args: Mapping[str, Any], spec: Spec) -> dict[str, Any]:
    """The original's values and flags after the call, and the parameters of what came back (or
    what is wrong with it)."""
    net = args["model"]
    with torch.random.fork_rng(devices=[]):
        out = fn(*args.values())
    result: dict[str, Any] = {"original": _params(net), "original's flags": _flags(net)}
    if not isinstance(out, nn.Module):
        result["problem"] = f"it returned a {type(out).__name__}, not a network (nn.Module)"
    elif out is net:
        result["problem"] = "it returned the original network itself, not a fine-tuned copy"
    else:
        result["parameters"] = _params(out)
    return result


def reference_finetune(
    model: nn.Module,
    support_x: torch.Tensor,
    support_y: torch.Tensor,
    steps: int,
    lr: float,
    frozen_blocks: int,
) -> nn.Module:
    """A deep copy, its first blocks frozen, then ``steps`` of :func:`reference_sgd_step`."""
    net = reference_freeze_blocks(copy.deepcopy(model), frozen_blocks)
    for _ in range(steps):
        reference_sgd_step(net, support_x, support_y, lr)
    return net


def check_finetune(spec: Spec, got: dict[str, Any], want: dict[str, Any]) -> str | None:
    """The original untouched (values and flags), a copy with the reference's parameters."""
    if _first_change(got["original"], want["original"]):
        return "the original network changed; fine-tune a copy (copy.deepcopy) and return it"
    if frozen := [name for name, flag in got["original's flags"].items() if not flag]:
        return f"the original's {frozen[0]} was frozen; freeze the copy, not the original"
    if "problem" in got:
        return got["problem"]
    for name, w in want["parameters"].items():
        if wrong := difference(got["parameters"].get(name), w, f"the fine-tuned {name}"):
            block = _block(name)
            if block is not None and block < spec["frozen"]:
                return f"{name} is in a frozen block (frozen_blocks={spec['frozen']}) but changed"
            return (
                f"{wrong}, after {spec['steps']} steps of gradient descent with "
                f"lr={spec['lr']}; {STEP_HINT}"
            )
    return None


def finetune_case(
    n_way: int, k: int, steps: int, lr: float, frozen: int, seed: int, dtype: str = "float64"
) -> Case:
    return case(
        f"{n_way}-way {k}-shot, {steps} steps, lr={lr}, {frozen} frozen blocks, {dtype}",
        model=model_spec(seed, n_way=n_way, dtype=dtype),
        support=support_spec(n_way, k, seed + 1, dtype),
        steps=steps,
        lr=lr,
        frozen=frozen,
    )


Q4 = Question(
    "q4",
    "finetune",
    3,
    finetune_inputs,
    title="fine-tune a copy on the support set",
    reference=reference_finetune,
    observe=finetuned,
    check=check_finetune,
    pure=False,  # check_finetune says what to do when the original changed
    visible=(
        finetune_case(5, 2, steps=3, lr=0.2, frozen=0, seed=0),
        finetune_case(3, 2, steps=5, lr=0.5, frozen=2, seed=1),
    ),
)


# ------------------------------------------------------------------------- q5


def accuracy_inputs(model: Spec, n_way: int, n: int, n_right: int, seed: int) -> dict[str, Any]:
    """``(model, x, y)`` where exactly ``n_right`` of the ``n`` labels are the network's
    predictions (the whole batch at once) and the others are not."""
    net = tiny_conv4(**model)
    g = generator(seed)
    x = torch.rand(n, 1, net.image_size, net.image_size, generator=g)
    with torch.no_grad():
        predicted = net(x).argmax(dim=-1)
    y = (predicted + 1) % n_way
    right = torch.randperm(n, generator=g)[:n_right]
    y[right] = predicted[right]
    return {"model": net, "x": x, "y": y}


def reference_query_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """:func:`metalib.train.accuracy` of the whole batch's logits."""
    with torch.no_grad():
        return float(train.accuracy(model(x)[None], y[None])[0])


def check_query_accuracy(spec: Spec, got: Any, want: float) -> str | None:
    """A number within 1e-6 of the reference's; the count of right answers named as such."""
    n, n_right = spec["n"], spec["n_right"]
    value = _number(got)
    if value is None:
        return f"should return the accuracy as a float, got {type(got).__name__} {got!r}"[:200]
    if math.isclose(value, want, abs_tol=1e-6):
        return None
    if math.isclose(value, n_right) and n_right != 0 and n != 1:
        return f"returned {value:g}, the number right; return the fraction {want:.4f}"
    return (
        f"expected accuracy {want:.4f} ({n_right} of {n} right), got {value:.4f}; compare "
        "argmax of the logits with y, running all the queries through the model as one batch"
    )


def accuracy_case(n_way: int, n: int, n_right: int, seed: int) -> Case:
    return case(
        f"{n} queries, {n_way}-way, {n_right} right",
        model=model_spec(seed, n_way=n_way, hidden=8, dtype="float32"),
        n_way=n_way,
        n=n,
        n_right=n_right,
        seed=seed,
    )


Q5 = Question(
    "q5",
    "query_accuracy",
    1,
    accuracy_inputs,
    title="accuracy on the query set",
    reference=reference_query_accuracy,
    check=check_query_accuracy,
    visible=(
        accuracy_case(5, n=20, n_right=7, seed=0),
        accuracy_case(3, n=9, n_right=9, seed=1),
    ),
)


EXERCISE = Exercise("01_finetuning", (Q1, Q2, Q3, Q4, Q5))


def check(name: str, fn: Callable[..., Any]) -> feedback.Verdict:
    """Run the visible cases of question ``name`` on ``fn`` and print the verdict."""
    return feedback.check(EXERCISE, name, fn)
