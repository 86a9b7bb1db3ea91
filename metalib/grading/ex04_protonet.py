"""Exercise 04_protonet: prototypes, squared distances, the episode loss, cosine logits.

Every case is rebuilt from a seed on both sides (see the 04_protonet section of
:mod:`metalib.grading.probes`): features whose rows have different norms, support labels shuffled
per task (some with unequal shots per class), and for the loss a tiny encoder (a Conv4 body with
batch statistics, or a perceptron on the pixels) with a batch of template-plus-noise image tasks.
The judges compare with :mod:`metalib.protonet` (``prototypes``, ``logits``) and
:func:`metalib.train.episode_loss` of a :class:`~metalib.protonet.ProtoNet` to 1e-9 in float64
and 1e-5 in float32, and the loss's gradient with respect to the encoder as well. A wrong answer
is matched against the usual mistakes (a sum for a mean, a support assumed sorted by class, tasks
mixed, the distance not squared, +distance as logits, no normalisation for the cosine, the
temperature dropped) so the message can say which one it is.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from metalib import protonet
from metalib.grading import feedback
from metalib.grading.ex00_tasks import judge_raises, raises_case
from metalib.grading.probes import (
    proto_features,
    proto_support,
    protonet_encoder,
    protonet_episode,
)
from metalib.grading.spec import Case, Exercise, Question
from metalib.nets import embed_tasks
from metalib.train import episode_loss

Guesses = Sequence[tuple[torch.Tensor, str]]


def _tolerance(dtype: str | torch.dtype) -> dict[str, float]:
    wide = dtype in ("float64", torch.float64)
    return {"rtol": 1e-7, "atol": 1e-9} if wide else {"rtol": 1e-4, "atol": 1e-5}


def show(t: torch.Tensor, limit: int = 4) -> str:
    """The first ``limit`` values of ``t``, for a message."""
    values = [f"{v:.6g}" for v in t.detach().double().flatten()[:limit].tolist()]
    return f"[{', '.join(values)}{', ...' if t.numel() > limit else ''}]"


def close(got: torch.Tensor, want: torch.Tensor) -> bool:
    """Same shape and values within the tolerance of ``want``'s dtype."""
    return got.shape == want.shape and torch.allclose(
        got.to(want.dtype), want, **_tolerance(want.dtype)
    )


def first_difference(got: torch.Tensor, want: torch.Tensor) -> str:
    """Where ``got`` first leaves ``want``'s tolerance (same shapes), and by how much overall."""
    g, w = got.detach().to(want.dtype), want.detach()
    tol = _tolerance(want.dtype)
    bad = ~torch.isclose(g, w, **tol)
    index = tuple(int(i) for i in bad.nonzero()[0]) if bad.any() else ()
    off = float((g - w).abs().max())
    return (
        f"at index {list(index)} expected {float(w[index]):.6g}, got {float(g[index]):.6g} "
        f"(off by up to {off:.2g} overall)"
    )


def compare(
    got: Any,
    want: torch.Tensor,
    what: str,
    shape_hints: dict[tuple[int, ...], str],
    guesses: Guesses | Callable[[], Guesses],
    formula: str,
) -> str | None:
    """``None`` when ``got`` is close to ``want``; else what is wrong, naming a guessed mistake.

    ``guesses`` are ``(output of a known mistake, what the mistake is)``, or a function that
    computes them (only needed when the answer is wrong).
    """
    if not isinstance(got, torch.Tensor):
        return f"{what}: expected a tensor, got a {type(got).__name__}"
    if got.shape != want.shape:
        hint = shape_hints.get(tuple(got.shape), "")
        shapes = f"{what}: got shape {tuple(got.shape)}, expected {tuple(want.shape)}"
        return f"{shapes}: {hint}" if hint else shapes
    if got.dtype != want.dtype:
        return f"{what}: got dtype {got.dtype}; keep the dtype of the features ({want.dtype})"
    if close(got, want):
        return None
    wrong = first_difference(got, want)
    for candidate, why in guesses() if callable(guesses) else guesses:
        if close(got, candidate):
            return f"{wrong}: {why}. {formula}"
    return f"{wrong}; {formula}"


# ---------------------------------------------------------------------------------- q1

_PROTOTYPE = "The prototype of class n is the mean of the task's support features labelled n"


def judge_prototypes(case: Case, out: Any) -> str | None:
    """``prototypes(support_features, support_y, n_way) -> (T, N, D)``: class means per task."""
    if case.probe == "raises":
        return judge_raises(case, out)
    kw = case.kwargs
    if out["inputs_changed"]:
        return "the support features or labels changed in place; leave the inputs as they are"
    f, y = proto_support(kw["tasks"], kw["counts"], kw["dim"], kw["seed"], kw["dtype"])
    (t, m, d), n = f.shape, len(kw["counts"])
    want = protonet.prototypes(f, y, n)
    one_hot = F.one_hot(y, n).to(f.dtype)  # (T, M, N)
    sums = one_hot.transpose(1, 2) @ f
    pooled = (one_hot.flatten(0, 1).T @ f.flatten(0, 1)) / one_hot.sum((0, 1))[:, None]
    guesses = [
        (sums, "this is the sum of each class's features, not their mean"),
        (pooled.expand(t, n, d), "the classes of all tasks were pooled; keep tasks apart"),
    ]
    if len(set(kw["counts"])) == 1:
        guesses.append(
            (
                f.view(t, n, m // n, d).mean(2),
                "reshaping to (T, N, K, D) assumes the support is sorted by class, but it is "
                "shuffled; select each class's examples by their labels",
            )
        )
    else:
        guesses.append(
            (
                sums / (m / n),
                f"every class was divided by M/N = {m / n:g}, but the classes have "
                f"{kw['counts']} examples; divide each sum by its own class's count",
            )
        )
    hints = {
        (n, d): "the task axis is missing (a (T, M) mask as in f[support_y == n] selects the "
        "examples of all tasks at once); compute each task's prototypes",
        (t, d, n): "the last two axes are swapped; [t, n] should be class n's prototype",
    }
    return compare(out["protos"], want, "the prototypes", hints, guesses, _PROTOTYPE + ".")


# ---------------------------------------------------------------------------------- q2

_DISTANCE = (
    "Entry [t, p, n] is ‖q_p − c_n‖² = Σ_d (q_pd − c_nd)², for the queries and prototypes of task t"
)


def _distance_inputs(kw: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    q = proto_features((kw["tasks"], kw["queries"], kw["dim"]), kw["seed"], kw["dtype"])
    c = proto_features((kw["tasks"], kw["n_way"], kw["dim"]), kw["seed"] + 1, kw["dtype"])
    return q, c


def judge_squared_distances(case: Case, out: Any) -> str | None:
    """``squared_distances(query_features, protos) -> (T, P, N)``."""
    kw = case.kwargs
    q, c = _distance_inputs(kw)
    want = -protonet.logits(q, c, "euclidean")
    t, p, n, d = kw["tasks"], kw["queries"], kw["n_way"], kw["dim"]
    guesses = [
        (want.sqrt(), "this is the distance ‖q − c‖, not its square (ProtoNet uses the square)"),
        (-want, "the sign is flipped: a distance is never negative"),
        (want / d, f"this is the mean over the {d} features, not the sum"),
    ]
    hints = {
        (t, n, p): "the last two axes are swapped; [t, p, n] is query p against prototype n",
        (t, p, n, d): "the differences were not summed over the feature axis",
    }
    return compare(out, want, "the distances", hints, guesses, _DISTANCE + ".")


# ---------------------------------------------------------------------------------- q3


def _variant_loss(kw: dict[str, Any], variant: str = "") -> tuple[torch.Tensor, torch.Tensor]:
    """The episode's loss and per-task accuracy, computed right or with one known mistake."""
    net, ep = protonet_encoder(**kw["encoder"]), protonet_episode(**kw["episode"])
    if not variant:
        return episode_loss(protonet.ProtoNet(net), ep)
    with torch.no_grad():
        if variant == "apart":
            sf = torch.stack([net(x) for x in ep.support_x])
            qf = torch.stack([net(x) for x in ep.query_x])
        elif variant == "one batch":
            s, p = ep.support_x.shape[:2], ep.query_x.shape[:2]
            out = net(torch.cat([ep.support_x.flatten(0, 1), ep.query_x.flatten(0, 1)]))
            sf, qf = out[: s[0] * s[1]].view(*s, -1), out[s[0] * s[1] :].view(*p, -1)
        else:
            sf, qf = embed_tasks(net, ep.support_x, ep.query_x)
        protos = protonet.prototypes(sf, ep.support_y, ep.n_way)
        if variant == "sum":
            protos = F.one_hot(ep.support_y, ep.n_way).to(sf.dtype).transpose(1, 2) @ sf
        queries, labels = (sf, ep.support_y) if variant == "support" else (qf, ep.query_y)
        d = -protonet.logits(queries, protos)
        logits = {"plus": d, "sqrt": -d.sqrt()}.get(variant, -d)
        reduction = "sum" if variant == "summed" else "mean"
        loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction=reduction)
        return loss, (logits.argmax(-1) == labels).to(sf.dtype).mean(-1)


_LOSS_GUESSES = {
    "plus": (
        "the logits are +distance, so the nearest prototype gets the lowest score; use −distance"
    ),
    "sqrt": "the distance is not squared; ProtoNet's logits are −‖q − c‖²",
    "summed": "this is the sum of the queries' cross-entropies; take their mean",
    "sum": "the prototypes are sums of the class features, not means",
    "support": "this is the loss on the support set; score the query set",
    "apart": (
        "the support and query images went through the encoder in separate batches; its "
        "batch-statistics norm must see each task's support and queries together "
        "(embed_tasks(encoder, support_x, query_x))"
    ),
    "one batch": (
        "all tasks went through the encoder in one batch, so its batch-statistics norm mixed "
        "them; embed one task at a time (embed_tasks(encoder, support_x, query_x))"
    ),
}
_LOSS = (
    "The loss is the mean cross-entropy of the query labels under logits −‖f(x) − c_n‖², "
    "over all queries of all tasks"
)


def _judge_accuracy(kw: dict[str, Any], got: Any, want: torch.Tensor) -> str | None:
    t = kw["episode"]["tasks"]
    if not isinstance(got, torch.Tensor):
        kind = type(got).__name__
        return f"acc should be a tensor of shape ({t},), one accuracy per task, got a {kind}"
    if got.shape != want.shape:
        return f"acc has shape {tuple(got.shape)}, expected ({t},): one accuracy per task"
    if not got.is_floating_point():
        return f"acc should be a fraction of queries per task, got dtype {got.dtype}"
    if torch.allclose(got.double(), want.double(), atol=1e-6):
        return None
    per_task = kw["episode"]["n_way"] * kw["episode"]["q_queries"]
    wrong = f"expected accuracies {show(want)}, got {show(got)}"
    if torch.allclose(got.double(), want.double() * per_task, atol=1e-6):
        return f"{wrong}: these are the numbers of right queries; divide by {per_task}"
    return (
        f"{wrong}; acc[t] is the fraction of task t's queries whose nearest prototype is their "
        "class"
    )


def judge_protonet_loss(case: Case, out: Any) -> str | None:
    """``protonet_loss(encoder, episode) -> (loss, acc)``, with a graph to the encoder."""
    kw = case.kwargs
    if "problem" in out:
        return out["problem"]
    if out["model_changed"]:
        return "the encoder's weights changed; computing the loss must leave them as they are"
    want_loss, want_acc = (t.detach() for t in _variant_loss(kw))
    got = out["loss"]
    if not close(got, want_loss):
        wrong = f"expected loss {float(want_loss):.6g}, got {float(got):.6g}"
        for variant, why in _LOSS_GUESSES.items():
            if close(got, _variant_loss(kw, variant)[0]):
                return f"{wrong}: {why}"
        return f"{wrong}. {_LOSS}"
    problem = _judge_accuracy(kw, out["acc"], want_acc)
    if problem:
        return problem
    if out["grads"] is None:
        return (
            "the loss is right but carries no graph back to the encoder (computed under "
            "torch.no_grad(), detached, or rebuilt from .item()); meta-training differentiates it"
        )
    net = protonet_encoder(**kw["encoder"])
    named = dict(net.named_parameters())
    loss, _ = episode_loss(protonet.ProtoNet(net), protonet_episode(**kw["episode"]))
    grads = dict(zip(named, torch.autograd.grad(loss, list(named.values())), strict=True))
    for name, want in grads.items():
        if not close(out["grads"][name], want):
            return (
                f"the loss is right but its gradient with respect to the encoder's {name} is "
                f"not: expected {show(want)}, got {show(out['grads'][name])}; compute the "
                "loss from the encoder's outputs with differentiable operations only"
            )
    return None


# ---------------------------------------------------------------------------------- q4

_COSINE = "Entry [t, p, n] is τ·cos(q_p, c_n) = τ·(q_p · c_n) / (‖q_p‖ ‖c_n‖)"


def judge_cosine_logits(case: Case, out: Any) -> str | None:
    """``cosine_logits(query_features, protos, temperature) -> (T, P, N)``."""
    kw = case.kwargs
    q, c = _distance_inputs(kw)
    tau = kw["temperature"]
    want = protonet.logits(q, c, "cosine", tau)
    t, p, n = kw["tasks"], kw["queries"], kw["n_way"]
    qn, cn = F.normalize(q, dim=-1), F.normalize(c, dim=-1)
    unit = qn @ cn.transpose(1, 2)
    guesses = [
        (tau * q @ c.transpose(1, 2), "the features were not normalised: this is τ·(q · c)"),
        (tau * qn @ c.transpose(1, 2), "only the queries were normalised, not the prototypes"),
        (tau * q @ cn.transpose(1, 2), "only the prototypes were normalised, not the queries"),
        (
            tau * F.normalize(q, dim=1) @ F.normalize(c, dim=1).transpose(1, 2),
            "the features were normalised along the wrong axis; normalise each vector (dim=-1)",
        ),
        (unit, f"the temperature τ = {tau:g} is missing"),
        (unit / tau, f"the cosine was divided by τ = {tau:g}; multiply by it"),
        (-want, "the sign is flipped: the most similar prototype should get the highest score"),
        (tau * (unit - 1), "this is τ·(cos − 1): the question asks for τ·cos, no shift"),
        (tau * (1 - unit), "this is a cosine distance τ·(1 − cos); the logits are τ·cos"),
    ]
    hints = {(t, n, p): "the last two axes are swapped; [t, p, n] is query p against class n"}
    problem = compare(out["logits"], want, "the logits", hints, guesses, _COSINE + ".")
    if problem or not kw["learnable"]:
        return problem
    if out["temperature_grad"] is None:
        return (
            "the values are right, but the logits do not depend on the temperature tensor "
            "through autograd (float(temperature) or .item() cut it); keep it a tensor so that "
            "a learnable temperature can be trained"
        )
    v = proto_features(tuple(want.shape), kw["seed"] + 2, kw["dtype"])
    want_grad = (unit * v).sum()
    if not close(out["temperature_grad"], want_grad):
        return (
            f"the gradient with respect to the temperature is {float(out['temperature_grad']):.6g}"
            f", expected {float(want_grad):.6g}; the logits should be τ times the cosines"
        )
    return None


# ---------------------------------------------------------------------------------- cases


def prototypes_case(
    tasks: int, counts: list[int], dim: int, seed: int, dtype: str = "float64", note: str = ""
) -> Case:
    shots = f"{counts[0]}-shot" if len(set(counts)) == 1 else f"shots {counts}"
    label = f"{tasks} task(s), {len(counts)}-way {shots}, {dim} features, {dtype}, seed {seed}"
    kwargs = {"tasks": tasks, "counts": counts, "dim": dim, "seed": seed, "dtype": dtype}
    return Case(label + (f" ({note})" if note else ""), kwargs, probe="protonet_prototypes")


def empty_class_case(counts: list[int], dim: int, seed: int) -> Case:
    """A support set in which class ``len(counts)`` (the last of ``n_way``) has no example."""
    f, y = proto_support(1, counts, dim, seed)
    n = len(counts)
    return raises_case(
        f"{n + 1}-way, but class {n} has no support example ({n}-way shots {counts} given)",
        [f, y, n + 1],
        [f, y, n],
    )


def _features_label(kw: dict[str, Any]) -> str:
    return (
        f"{kw['tasks']} task(s), {kw['queries']} queries, {kw['n_way']} prototypes, "
        f"{kw['dim']} features, {kw['dtype']}, seed {kw['seed']}"
    )


def distances_case(
    tasks: int, queries: int, n_way: int, dim: int, seed: int, dtype: str = "float64"
) -> Case:
    kwargs = {
        "tasks": tasks,
        "queries": queries,
        "n_way": n_way,
        "dim": dim,
        "seed": seed,
        "dtype": dtype,
    }
    return Case(_features_label(kwargs), kwargs, probe="protonet_distances")


def cosine_case(
    tasks: int,
    queries: int,
    n_way: int,
    dim: int,
    seed: int,
    temperature: float,
    dtype: str = "float64",
    learnable: bool = False,
) -> Case:
    kwargs = {
        "tasks": tasks,
        "queries": queries,
        "n_way": n_way,
        "dim": dim,
        "seed": seed,
        "dtype": dtype,
        "temperature": temperature,
        "learnable": learnable,
    }
    tau = f"τ = {temperature:g}" + (" (a tensor that requires grad)" if learnable else "")
    return Case(f"{_features_label(kwargs)}, {tau}", kwargs, probe="protonet_cosine")


def conv_encoder(seed: int, hidden: int = 4, image_size: int = 16) -> dict[str, Any]:
    return {"kind": "conv4", "seed": seed, "hidden": hidden, "image_size": image_size}


def mlp_encoder(seed: int, hidden: int = 8, image_size: int = 16) -> dict[str, Any]:
    return {"kind": "mlp", "seed": seed, "hidden": hidden, "image_size": image_size}


def loss_case(
    encoder: dict[str, Any],
    tasks: int,
    n_way: int,
    k_shot: int,
    q_queries: int,
    seed: int,
    dtype: str = "float64",
) -> Case:
    encoder = {**encoder, "dtype": dtype}
    episode = {
        "tasks": tasks,
        "n_way": n_way,
        "k_shot": k_shot,
        "q_queries": q_queries,
        "seed": seed,
        "image_size": encoder["image_size"],
        "dtype": dtype,
    }
    size = f"{encoder['image_size']}x{encoder['image_size']}"
    net = (
        f"a Conv4 body ({encoder['hidden']} channels, batch-statistics norm)"
        if encoder["kind"] == "conv4"
        else f"a perceptron ({encoder['hidden']} features)"
    )
    label = (
        f"{net}, {tasks} task(s) of {n_way}-way {k_shot}-shot {size} images, {q_queries} "
        f"queries per class, {dtype}, seed {seed}"
    )
    return Case(label, {"encoder": encoder, "episode": episode}, probe="protonet_loss")


EXERCISE = Exercise(
    "04_protonet",
    (
        Question(
            "q1",
            "prototypes",
            2,
            judge_prototypes,
            visible=(
                prototypes_case(1, [2, 2, 2], 4, seed=0),
                prototypes_case(2, [1] * 5, 8, seed=1, note="1-shot: the examples themselves"),
                prototypes_case(3, [3, 1, 2, 4], 5, seed=2, dtype="float32"),
                empty_class_case([2, 2], 3, seed=3),
            ),
            title="class means per task",
        ),
        Question(
            "q2",
            "squared_distances",
            2,
            judge_squared_distances,
            visible=(
                distances_case(1, 4, 3, 2, seed=0),
                distances_case(2, 6, 5, 8, seed=1),
                distances_case(3, 5, 4, 16, seed=2, dtype="float32"),
            ),
            title="squared Euclidean distances to the prototypes",
        ),
        Question(
            "q3",
            "protonet_loss",
            4,
            judge_protonet_loss,
            visible=(
                loss_case(mlp_encoder(0), 1, 3, 2, 2, seed=0),
                loss_case(conv_encoder(1), 1, 3, 1, 3, seed=1),
                loss_case(conv_encoder(2), 2, 5, 1, 2, seed=2),
                loss_case(mlp_encoder(3), 3, 4, 2, 2, seed=3, dtype="float32"),
            ),
            title="the prototypical-network loss of an episode",
        ),
        Question(
            "q4",
            "cosine_logits",
            2,
            judge_cosine_logits,
            visible=(
                cosine_case(1, 4, 3, 5, seed=0, temperature=1.0),
                cosine_case(2, 6, 5, 8, seed=1, temperature=10.0),
                cosine_case(2, 3, 4, 6, seed=2, temperature=5.0, learnable=True),
            ),
            title="cosine logits with a temperature",
        ),
    ),
)


def check(name: str, fn: Callable[..., Any]) -> feedback.Verdict:
    """Run the visible cases of question ``name`` on ``fn`` and print the verdict."""
    return feedback.check(EXERCISE, name, fn)
