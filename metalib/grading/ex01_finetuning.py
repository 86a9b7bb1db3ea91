"""Exercise 01_finetuning: freezing blocks, a new head, gradient steps on a support set.

Every case runs on a tiny :class:`~metalib.nets.Conv4` (4 or 8 channels, 16 x 16 to 48 x 48
images) rebuilt from a seed on both sides: the probe hands it to the student's function, and the
judge rebuilds it to compute the reference. Gradient steps are compared with a float64 reference
(plain gradient descent, ``p <- p - lr * grad`` on the mean cross-entropy) to 1e-9; the new head
is judged by its properties (shape, dtype, range, spread, reproducible from the generator), since
the question does not fix the order of the random draws.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from metalib.grading import feedback
from metalib.grading.ex00_tasks import judge_raises, raises_case
from metalib.grading.probes import tiny_conv4, tiny_support
from metalib.grading.spec import Case, Exercise, Question

N_BLOCKS = 4  # Conv4's body: four blocks, then a Flatten


def _tolerance(dtype: str) -> dict[str, float]:
    return {"float64": {"rtol": 1e-7, "atol": 1e-9}}.get(dtype, {"rtol": 1e-4, "atol": 1e-5})


def _block(name: str) -> int | None:
    """The body block a parameter belongs to (``body.2.0.weight`` -> 2), ``None`` for the head."""
    parts = name.split(".")
    return int(parts[1]) if parts[0] == "body" else None


def _differences(
    got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], tol: dict[str, float]
) -> list[str]:
    """Names of the parameters of ``got`` that are not close to ``expected`` (or missing)."""
    wrong = []
    for name, want in expected.items():
        have = got.get(name)
        if not isinstance(have, torch.Tensor) or have.shape != want.shape:
            wrong.append(name)
        elif not torch.allclose(have.to(want.dtype), want, **tol):
            wrong.append(name)
    return wrong


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    if not isinstance(a, torch.Tensor) or a.shape != b.shape:
        return math.inf
    return float((a.to(b.dtype) - b).abs().max())


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, torch.Tensor) and value.numel() == 1 and value.is_floating_point():
        return float(value)
    return None


def _params(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in net.named_parameters()}


def _gradient_steps(
    net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, lr: float, steps: int
) -> list[float]:
    """The reference: ``steps`` full-batch gradient-descent steps on the trainable parameters."""
    losses = []
    for _ in range(steps):
        trainable = [p for p in net.parameters() if p.requires_grad]
        loss = F.cross_entropy(net(x), y)
        grads = torch.autograd.grad(loss, trainable)
        with torch.no_grad():
            for p, g in zip(trainable, grads, strict=True):
                p.sub_(lr * g)
        losses.append(float(loss.detach()))
    return losses


_STEP_HINT = (
    "one step is p <- p - lr * grad of the mean cross-entropy over the whole batch, for the "
    "parameters with requires_grad only, with gradients cleared between steps"
)


# ---------------------------------------------------------------------------------- q1


def judge_freeze_blocks(case: Case, out: Any) -> str | None:
    """``freeze_blocks(model, k) -> model``: first k body blocks frozen, the rest trainable."""
    if case.probe == "raises":
        return judge_raises(case, out)
    k = case.kwargs["k"]
    if not out["returned_model"]:
        return "should return the model it was given (the same object), frozen in place"
    flags = out["requires_grad"]
    wrong = []
    for name, flag in flags.items():
        block = _block(name)
        trainable = block is None or block >= k
        if flag != trainable:
            wrong.append(f"{name} should be {'trainable' if trainable else 'frozen'}")
    if wrong:
        more = f" (and {len(wrong) - 3} more)" if len(wrong) > 3 else ""
        return (
            f"with k={k}: {'; '.join(wrong[:3])}{more}; the first k blocks model.body[:k] get "
            "requires_grad False, every other parameter True"
        )
    original = _params(tiny_conv4(**case.kwargs["model"]))
    changed = _differences(out["params"], original, {"rtol": 0.0, "atol": 0.0})
    if changed:
        return f"the values of {changed[0]} changed; freezing only sets requires_grad"
    return None


# ---------------------------------------------------------------------------------- q2


def judge_new_head(case: Case, out: Any) -> str | None:
    """``new_head(model, n_way, generator)``: a copy with a fresh head, the original untouched."""
    if case.probe == "raises":
        return judge_raises(case, out)
    if "problem" in out:
        return out["problem"] + "; return a new network (copy.deepcopy the model first)"
    spec, n_way = case.kwargs["model"], case.kwargs["n_way"]
    net = tiny_conv4(**spec)
    original = _params(net)
    changed = _differences(out["after"], original, {"rtol": 0.0, "atol": 0.0})
    if changed:
        return (
            f"the original network changed ({changed[0]}); leave it as it was and change a copy "
            "made with copy.deepcopy (copy.copy shares the layers)"
        )
    new = out["new"]
    body = {name: t for name, t in original.items() if not name.startswith("head.")}
    extra = sorted(set(new) - set(original))
    if extra:
        return f"the copy has parameters the model does not have: {extra[:3]}"
    diff = _differences(new, body, {"rtol": 0.0, "atol": 0.0})
    if diff:
        return f"the copy's {diff[0]} differs from the original's; the body must be kept as it is"
    d, dtype = net.feature_dim, net.head.weight.dtype
    for name, shape in (("head.weight", (n_way, d)), ("head.bias", (n_way,))):
        t = new.get(name)
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
    heads = ("head.weight", "head.bias")
    if _differences(out["again"], {h: new[h] for h in heads}, {"rtol": 0.0, "atol": 0.0}):
        return (
            "two calls with generators seeded alike gave different heads; draw the head from "
            "`generator` (e.g. tensor.uniform_(-b, b, generator=generator)), not from torch's "
            "global generator"
        )
    if not _differences(out["other"], {h: new[h] for h in heads}, {"rtol": 0.0, "atol": 0.0}):
        return "generators with different seeds gave the same head; draw it from `generator`"
    if _differences(out["after_editing_copy"], original, {"rtol": 0.0, "atol": 0.0}):
        return (
            "changing the copy's weights changed the original's too: the copy shares tensors "
            "with the original; copy the whole model with copy.deepcopy"
        )
    return None


# ---------------------------------------------------------------------------------- q3


def _reference_model(kwargs: dict[str, Any], frozen: int) -> torch.nn.Module:
    net = tiny_conv4(**kwargs["model"])
    for block in list(net.body)[:frozen]:
        block.requires_grad_(False)
    return net


def judge_sgd_step(case: Case, out: Any) -> str | None:
    """``sgd_step(model, x, y, lr) -> loss``: one gradient-descent step in place."""
    kw = case.kwargs
    net = _reference_model(kw, kw["frozen"])
    start = _params(net)
    x, y = tiny_support(**kw["support"])
    losses = _gradient_steps(net, x, y, kw["lr"], kw["calls"])
    tol = _tolerance(kw["model"].get("dtype", "float32"))
    for i, (got, want) in enumerate(zip(out["losses"], losses, strict=True)):
        value = _number(got)
        if value is None:
            return f"should return the loss as a float, got a {type(got).__name__} (call {i + 1})"
        if not math.isclose(value, want, rel_tol=tol["rtol"], abs_tol=tol["atol"]):
            return (
                f"call {i + 1} returned loss {value:.6f}, expected {want:.6f}: the mean "
                "cross-entropy of model(x) and y before the step"
            )
    expected = _params(net)
    wrong = _differences(out["params"], expected, tol)
    if wrong:
        name = wrong[0]
        calls = f"after {kw['calls']} calls" if kw["calls"] > 1 else "after one call"
        moved = _max_diff(out["params"].get(name), start[name])
        if start[name].shape == expected[name].shape and torch.equal(start[name], expected[name]):
            return (
                f"{name} is frozen (requires_grad False) and must not change; it moved {moved:.2g}"
            )
        if moved == 0.0:
            return f"{name} did not change {calls}; it should have: {_STEP_HINT}"
        off = _max_diff(out["params"].get(name), expected[name])
        return f"{name} is off by up to {off:.2g} {calls} (lr={kw['lr']}); {_STEP_HINT}"
    return None


# ---------------------------------------------------------------------------------- q4


def judge_finetune(case: Case, out: Any) -> str | None:
    """``finetune(model, x, y, steps, lr, frozen_blocks) -> new model`` (original untouched)."""
    kw = case.kwargs
    original = tiny_conv4(**kw["model"])
    start = _params(original)
    if _differences(out["original_after"], start, {"rtol": 0.0, "atol": 0.0}):
        return "the original network changed; fine-tune a copy (copy.deepcopy) and return it"
    if not all(out["original_flags"].values()):
        frozen = [n for n, f in out["original_flags"].items() if not f]
        return f"the original's {frozen[0]} was frozen; freeze the copy, not the original"
    if "problem" in out:
        return out["problem"]
    net = copy.deepcopy(original)
    for block in list(net.body)[: kw["frozen"]]:
        block.requires_grad_(False)
    x, y = tiny_support(**kw["support"])
    _gradient_steps(net, x, y, kw["lr"], kw["steps"])
    expected = _params(net)
    wrong = _differences(out["result"], expected, _tolerance(kw["model"].get("dtype", "float32")))
    if wrong:
        name = wrong[0]
        block = _block(name)
        if block is not None and block < kw["frozen"]:
            return f"{name} is in a frozen block (frozen_blocks={kw['frozen']}) but changed"
        off = _max_diff(out["result"].get(name), expected[name])
        return (
            f"the fine-tuned {name} is off by up to {off:.2g} from {kw['steps']} steps of "
            f"gradient descent with lr={kw['lr']}; {_STEP_HINT}"
        )
    return None


# ---------------------------------------------------------------------------------- q5


def judge_query_accuracy(case: Case, out: Any) -> str | None:
    """``query_accuracy(model, x, y) -> float``: the fraction of queries predicted right."""
    n, n_right = case.kwargs["n"], case.kwargs["n_right"]
    value = _number(out)
    if value is None:
        return f"should return the accuracy as a float, got {type(out).__name__} {out!r}"[:200]
    want = n_right / n
    if math.isclose(value, want, abs_tol=1e-6):
        return None
    if math.isclose(value, n_right) and n_right != 0 and n != 1:
        return f"returned {value:g}, the number right; return the fraction {want:.4f}"
    return (
        f"expected accuracy {want:.4f} ({n_right} of {n} right), got {value:.4f}; compare "
        "argmax of the logits with y, running all the queries through the model as one batch"
    )


# ---------------------------------------------------------------------------------- cases


def _model(seed: int, n_way: int = 5, hidden: int = 4, size: int = 16, dtype: str = "float64"):
    return {"seed": seed, "n_way": n_way, "hidden": hidden, "image_size": size, "dtype": dtype}


def _support(n_way: int, k_shot: int, seed: int, dtype: str = "float64", size: int = 16):
    return {"n_way": n_way, "k_shot": k_shot, "seed": seed, "image_size": size, "dtype": dtype}


def freeze_case(k: int, seed: int = 0, start_frozen: bool = False) -> Case:
    label = f"k={k}" + (" on a network frozen entirely before" if start_frozen else "")
    return Case(
        label,
        {"model": _model(seed, hidden=8, dtype="float32"), "k": k, "start_frozen": start_frozen},
        probe="freeze_blocks",
    )


def freeze_raises(k: int) -> Case:
    model = {"conv4": _model(0, dtype="float32")}
    return raises_case(f"k={k} (Conv4 has {N_BLOCKS} blocks)", [model, k], [model, 2])


def head_case(n_way: int, seed: int, hidden: int, size: int, dtype: str = "float32") -> Case:
    model = _model(seed + 100, hidden=hidden, size=size, dtype=dtype)
    d = hidden * (size // 16) ** 2
    return Case(
        f"{n_way}-way head on features of size {d} ({dtype}), seed {seed}",
        {"model": model, "n_way": n_way, "seed": seed},
        probe="new_head",
    )


def step_case(
    n_way: int, k: int, lr: float, frozen: int, calls: int, seed: int, dtype: str = "float64"
) -> Case:
    return Case(
        f"{n_way}-way {k}-shot, lr={lr}, {frozen} frozen blocks, {calls} call(s), {dtype}",
        {
            "model": _model(seed, n_way=n_way, dtype=dtype),
            "support": _support(n_way, k, seed + 1, dtype),
            "lr": lr,
            "frozen": frozen,
            "calls": calls,
        },
        probe="sgd_step",
    )


def finetune_case(
    n_way: int, k: int, steps: int, lr: float, frozen: int, seed: int, dtype: str = "float64"
) -> Case:
    return Case(
        f"{n_way}-way {k}-shot, {steps} steps, lr={lr}, {frozen} frozen blocks, {dtype}",
        {
            "model": _model(seed, n_way=n_way, dtype=dtype),
            "support": _support(n_way, k, seed + 1, dtype),
            "steps": steps,
            "lr": lr,
            "frozen": frozen,
        },
        probe="finetune",
    )


def accuracy_case(n_way: int, n: int, n_right: int, seed: int) -> Case:
    return Case(
        f"{n} queries, {n_way}-way, {n_right} right",
        {
            "model": _model(seed, n_way=n_way, hidden=8, dtype="float32"),
            "n_way": n_way,
            "n": n,
            "n_right": n_right,
            "seed": seed,
        },
        probe="query_accuracy",
    )


EXERCISE = Exercise(
    "01_finetuning",
    (
        Question(
            "q1",
            "freeze_blocks",
            2,
            judge_freeze_blocks,
            visible=(
                freeze_case(2),
                freeze_case(4, seed=1),
                freeze_case(0, seed=2, start_frozen=True),
                freeze_raises(5),
            ),
            title="freeze the first k blocks",
        ),
        Question(
            "q2",
            "new_head",
            2,
            judge_new_head,
            visible=(
                head_case(10, seed=0, hidden=8, size=32),
                head_case(5, seed=1, hidden=8, size=16),
            ),
            title="a copy with a fresh head",
        ),
        Question(
            "q3",
            "sgd_step",
            2,
            judge_sgd_step,
            visible=(
                step_case(5, 2, lr=0.1, frozen=0, calls=1, seed=0),
                step_case(5, 2, lr=0.5, frozen=2, calls=2, seed=1),
            ),
            title="one gradient step on the support set",
        ),
        Question(
            "q4",
            "finetune",
            3,
            judge_finetune,
            visible=(
                finetune_case(5, 2, steps=3, lr=0.2, frozen=0, seed=0),
                finetune_case(3, 2, steps=5, lr=0.5, frozen=2, seed=1),
            ),
            title="fine-tune a copy on the support set",
        ),
        Question(
            "q5",
            "query_accuracy",
            1,
            judge_query_accuracy,
            visible=(
                accuracy_case(5, n=20, n_right=7, seed=0),
                accuracy_case(3, n=9, n_right=9, seed=1),
            ),
            title="accuracy on the query set",
        ),
    ),
)


def check(name: str, fn: Callable[..., Any]) -> feedback.Verdict:
    """Run the visible cases of question ``name`` on ``fn`` and print the verdict."""
    return feedback.check(EXERCISE, name, fn)
