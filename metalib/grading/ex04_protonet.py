"""Exercise 04_protonet: soft k-means prototypes, a diagonal Mahalanobis metric, the loss of a
semi-supervised ProtoNet, and an experiment against pixel nearest neighbour.

The chapter shows :func:`metalib.protonet.prototypes`, :func:`~metalib.protonet.logits` and
:class:`~metalib.protonet.ProtoNet`; every question asks for what it does not show:

* q1 ``refine_prototypes``: one soft k-means step that moves each prototype towards the
  unlabelled examples it explains (Ren et al., 2018, "Meta-Learning for Semi-Supervised Few-Shot
  Classification");
* q2 ``mahalanobis_logits``: −(q − c_n)ᵀ Q_n⁻¹ (q − c_n) with diagonal Q_n, each class's
  variances shrunk towards the task's (Bateni et al., 2020, Simple CNAPS);
* q3 ``semi_supervised_loss``: the episode loss with q1's prototypes, support, queries and
  unlabelled images of a task embedded in one batch;
* q4 ``shots_experiment``: meta-train a copy of a small encoder, then compare pixel nearest
  neighbour, ProtoNet and ProtoNet with refined prototypes from 1 to 10 shots on fixed episodes.

How cases are built. q1 and q2: features drawn around seeded class centres (so that soft
assignments are soft, and features of different scales, so that the variances matter), labels
shuffled per task, some classes with more shots than others. q3: a tiny encoder (a Conv4 body
with batch statistics, so that batching matters, or a perceptron) and template-plus-noise images
with extra unlabelled ones. q4: seeded synthetic splits of thin strokes under random affine maps
(:func:`stroke_classes`, disjoint train and test classes) and a seeded tiny Conv4 body.

Tolerances: 1e-9 (absolute) and 1e-7 (relative) in float64, 1e-5 and 1e-4 otherwise
(:func:`~metalib.grading.question.difference`); q4's accuracies within :data:`EXACT_TOLERANCE`
where nothing is trained and :data:`SHOTS_TOLERANCE` for the trained curves (measured: see
there). Gradients are taken along seeded directions
(:func:`~metalib.grading.builders.vjp`): q2's with respect to its inputs, q3's with respect to
every encoder weight (see :func:`~.builders.relative_vjp`), so that detached variances or soft
assignments show.

References: module-level functions below built on :mod:`metalib.protonet` and
:mod:`metalib.train`; the known mistakes of each question are declared with it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from metalib import protonet
from metalib.data.base import ImageClasses
from metalib.grading import builders, feedback
from metalib.grading.question import (
    Case,
    Exercise,
    Mistake,
    Question,
    case,
    plain,
    raises,
)
from metalib.nets import embed_tasks
from metalib.tasks import Episode, FixedEpisodes, sample_episodes
from metalib.train import accuracy, episode_loss

Spec = dict[str, Any]


def clustered(
    tasks: int, counts: list[int], extra: int, dim: int, seed: int, dtype: str = "float64"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Support features ``(T, M, D)`` with shuffled labels ``(T, M)`` (``counts[n]`` of class n)
    and ``extra`` unlabelled features ``(T, extra, D)`` of random classes: each a seeded class
    centre plus noise, feature d scaled by a seeded factor in [0.3, 3)."""
    g = builders.generator(seed)
    f64, n, rows = torch.float64, len(counts), torch.arange(tasks)[:, None]
    centres = 2 * torch.randn((tasks, n, dim), generator=g, dtype=f64) / dim**0.5
    y = builders.shuffled_labels(tasks, counts, seed + 1)
    hidden_y = torch.randint(n, (tasks, extra), generator=g)
    noise = lambda m: 0.8 * torch.randn((tasks, m, dim), generator=g, dtype=f64) / dim**0.5
    scale = 0.3 + 2.7 * torch.rand((tasks, 1, dim), generator=g, dtype=f64)
    support = (centres[rows, y] + noise(y.shape[1])) * scale
    extra_f = (centres[rows, hidden_y] + noise(extra)) * scale
    return support.to(builders.dtype(dtype)), y, extra_f.to(builders.dtype(dtype))


def _shots(counts: list[int]) -> str:
    return f"{counts[0]}-shot" if len(set(counts)) == 1 else f"shots {counts}"


# ---------------------------------------------------------------------------------- q1


def refine_inputs(
    tasks: int,
    counts: list[int],
    unlabelled: int,
    dim: int,
    seed: int,
    dtype: str = "float64",
    n_way: int = 0,
) -> dict[str, Any]:
    """Support features and labels, ``unlabelled`` unlabelled features per task, and ``n_way``
    (``len(counts)`` unless given: more leaves the last class without a labelled example)."""
    f, y, u = clustered(tasks, counts, unlabelled, dim, seed, dtype)
    n_way = n_way or len(counts)
    return {"support_features": f, "support_y": y, "unlabelled_features": u, "n_way": n_way}


def refine_case(
    tasks: int, counts: list[int], unlabelled: int, dim: int, seed: int, dtype="float64", note=""
) -> Case:
    label = (
        f"{tasks} task(s), {len(counts)}-way {_shots(counts)}, {unlabelled} unlabelled, {dim} "
        f"features, {dtype}, seed {seed}" + (f" ({note})" if note else "")
    )
    spec = dict(tasks=tasks, counts=counts, unlabelled=unlabelled, dim=dim, seed=seed)
    return case(label, **spec, dtype=dtype, n_way=len(counts))


def empty_refine_case(counts: list[int], unlabelled: int, dim: int, seed: int) -> Case:
    """Class ``len(counts)`` (the last of ``n_way``) has no labelled example, only unlabelled
    ones may come near it: it has no first prototype to refine."""
    n = len(counts)
    valid = dict(tasks=1, counts=counts, unlabelled=unlabelled, dim=dim, seed=seed, n_way=n)
    label = f"{n + 1}-way, but class {n} has no labelled example ({n}-way shots {counts} given)"
    return raises(label, {**valid, "n_way": n + 1}, valid)


def reference_refine_prototypes(support_features, support_y, unlabelled_features, n_way):
    protos = protonet.prototypes(support_features, support_y, n_way)  # refuses an empty class
    z = protonet.logits(unlabelled_features, protos).softmax(-1)  # (T, U, N) soft assignments
    one_hot = F.one_hot(support_y, n_way).to(support_features.dtype)
    sums = one_hot.transpose(1, 2) @ support_features + z.transpose(1, 2) @ unlabelled_features
    return sums / (one_hot.sum(1) + z.sum(1)).unsqueeze(-1)


def _refine(variant: str) -> Callable[..., torch.Tensor]:
    """q1's answer with one known mistake."""

    def refine_prototypes(f, y, u, n):
        c = protonet.prototypes(f, y, n)
        if variant == "first":
            return c
        d = -protonet.logits(u, c)  # (T, U, N) squared distances
        scores = {"plus": d, "sqrt": -d.sqrt()}.get(variant, -d)
        z = scores.softmax(1 if variant == "axis" else -1)
        if variant == "hard":
            z = F.one_hot(z.argmax(-1), n).to(f.dtype)
        one_hot = F.one_hot(y, n).to(f.dtype)
        labelled, soft = one_hot.transpose(1, 2) @ f, z.transpose(1, 2) @ u
        if variant == "counts only":
            return (labelled + soft) / one_hot.sum(1).unsqueeze(-1)
        if variant == "unlabelled only":
            return soft / z.sum(1).unsqueeze(-1)
        if variant == "average":
            return (c + soft / z.sum(1).unsqueeze(-1)) / 2
        return (labelled + soft) / (one_hot.sum(1) + z.sum(1)).unsqueeze(-1)

    return refine_prototypes


_REFINE_MISTAKES = {
    "axis": "the soft assignments were normalised over the unlabelled examples; each example's "
    "weights z[t, j, :] sum to 1 over the classes (softmax over the last axis)",
    "plus": "the assignments favour far prototypes: the softmax is of −‖u − c‖²",
    "sqrt": "the distances in the softmax are not squared",
    "hard": "these are hard assignments (argmax); weight each example by its softmax",
    "counts only": "the denominator counts the labelled examples only; add each class's soft "
    "weights Σ_j z[j, n] to it",
    "unlabelled only": "the labelled examples were left out of the refined mean",
    "average": "this averages the first prototype and the unlabelled mean; weight every example "
    "once (1 for a labelled one, z for an unlabelled one) in one mean",
    "first": "these are the first prototypes, not refined",
}

Q1 = Question(
    "q1",
    "refine_prototypes",
    2,
    refine_inputs,
    title="one soft k-means step on the prototypes",
    reference=reference_refine_prototypes,
    what="the refined prototypes",
    mistakes=tuple(Mistake(says, _refine(name)) for name, says in _REFINE_MISTAKES.items()),
    hints=lambda s: {(s["tasks"], s["dim"], len(s["counts"])): "the last two axes are swapped"},
    rule="c̃_n = (Σ_k 1[y_k = n] f_k + Σ_j z_jn u_j) / (Σ_k 1[y_k = n] + Σ_j z_jn), with "
    "z_j = softmax_n(−‖u_j − c_n‖²) and c_n the mean of class n's labelled features",
    visible=(
        refine_case(1, [2, 2, 2], 4, 3, seed=0),
        refine_case(2, [1] * 5, 10, 8, seed=1),
        refine_case(3, [3, 1, 2, 4], 6, 5, seed=2, dtype="float32"),
        empty_refine_case([2, 2], 3, 3, seed=3),
    ),
)

# ---------------------------------------------------------------------------------- q2


def mahalanobis_inputs(
    tasks: int,
    counts: list[int],
    queries: int,
    dim: int,
    seed: int,
    beta: float = 1.0,
    dtype: str = "float64",
    grad: bool = False,
) -> dict[str, Any]:
    """Query features, support features and labels, ``n_way`` and β; with ``grad`` the features
    are leaves that require gradients."""
    f, y, q = clustered(tasks, counts, queries, dim, seed, dtype)
    if grad:
        f, q = f.requires_grad_(), q.requires_grad_()
    return dict(query_features=q, support_features=f, support_y=y, n_way=len(counts), beta=beta)


def observe_mahalanobis(fn: Callable[..., Any], args: dict[str, Any], spec: Spec) -> Any:
    """The logits; with ``grad`` also their gradient with respect to both feature tensors."""
    out = fn(*args.values())
    if not spec["grad"]:
        return {"logits": plain(out)}
    wrt = {k: args[k] for k in ("query_features", "support_features")}
    return {"logits": plain(out), "gradient": builders.vjp(out, wrt)}


def mahalanobis_case(*args: Any, **kwargs: Any) -> Case:
    s = builders.spec_of(mahalanobis_inputs, *args, **kwargs)
    label = (
        f"{s['tasks']} task(s), {len(s['counts'])}-way {_shots(s['counts'])}, {s['queries']} "
        f"queries, {s['dim']} features, β = {s['beta']:g}, {s['dtype']}, seed {s['seed']}"
    )
    return case(label + (" (features that require grad)" if s["grad"] else ""), **s)


def _variances(f, y, n, variant: str = "") -> tuple[torch.Tensor, torch.Tensor]:
    """The prototypes ``(T, N, D)`` and the shrunk variances ``(T, N, D)`` (before β)."""
    protos = protonet.prototypes(f, y, n)
    one_hot = F.one_hot(y, n).to(f.dtype)
    counts = one_hot.sum(1).unsqueeze(-1)  # (T, N, 1)
    squares = one_hot.transpose(1, 2) @ (f - one_hot @ protos).square()
    unbiased = variant == "unbiased"
    class_var = squares / (counts - 1 if unbiased else counts)
    task_var = f.var(dim=1, keepdim=True, unbiased=unbiased)  # (T, 1, D)
    if variant == "pooled":
        task_var = f.flatten(0, 1).var(0, unbiased=False).expand_as(task_var)
    lam = 1 / (counts + 1) if variant == "swapped" else counts / (counts + 1)
    if variant == "detached":
        class_var, task_var = class_var.detach(), task_var.detach()
    return protos, {"task only": task_var.expand_as(class_var), "class only": class_var}.get(
        variant, lam * class_var + (1 - lam) * task_var
    )


def reference_mahalanobis_logits(query_features, support_features, support_y, n_way, beta):
    protos, var = _variances(support_features, support_y, n_way)
    diff = query_features.unsqueeze(2) - protos.unsqueeze(1)  # (T, P, N, D)
    return -(diff.square() / (var + beta).unsqueeze(1)).sum(-1)


def _mahalanobis(variant: str) -> Callable[..., torch.Tensor]:
    """q2's answer with one known mistake."""

    def mahalanobis_logits(q, f, y, n, beta):
        protos, var = _variances(f, y, n, variant)
        var = {"no β": var, "std": (var + beta).sqrt()}.get(variant, var + beta)
        d = ((q.unsqueeze(2) - protos.unsqueeze(1)).square() / var.unsqueeze(1)).sum(-1)
        return d if variant == "sign" else -d

    return mahalanobis_logits


_MAHALANOBIS_MISTAKES = {  # variant: (what to say, the cases where it differs)
    "unbiased": (
        "the variances divide by K − 1 (unbiased); use the mean of the squared deviations "
        "(unbiased=False), which is defined for one shot",
        lambda s: min(s["counts"]) > 1,
    ),
    "swapped": ("λ and 1 − λ are swapped: the class's own variances get λ_n = K_n/(K_n+1)", None),
    "no β": ("β is missing from the variances", None),
    "std": ("this divides by the standard deviations; divide by the variances σ²", None),
    "task only": ("this uses the task's variances only; mix in each class's own (λ_n)", None),
    "class only": ("this uses each class's variances only; mix in the task's (1 − λ_n)", None),
    "pooled": ("the task variances pool all tasks; compute each task's", lambda s: s["tasks"] > 1),
    "sign": ("the sign is flipped: the logits are minus the distances", None),
    "detached": (
        "the values are right, but the variances carry no gradient (detached or computed under "
        "no_grad); the loss differentiates through them",
        lambda s: s["grad"],
    ),
}

Q2 = Question(
    "q2",
    "mahalanobis_logits",
    2,
    mahalanobis_inputs,
    title="a diagonal Mahalanobis distance with shrunk variances",
    reference=reference_mahalanobis_logits,
    observe=observe_mahalanobis,
    what="the output",
    mistakes=tuple(
        Mistake(says, _mahalanobis(name), when)
        for name, (says, when) in _MAHALANOBIS_MISTAKES.items()
    ),
    rule="logit[t, p, n] = −Σ_d (q_pd − c_nd)² / σ²_nd with σ²_n = λ_n v_n + (1 − λ_n) v + β, "
    "λ_n = K_n / (K_n + 1), v_n class n's and v the task's variances (mean squared deviations)",
    visible=(
        mahalanobis_case(1, [2, 2, 2], 4, 3, seed=0),
        mahalanobis_case(2, [1] * 5, 6, 8, seed=1, beta=0.5),
        mahalanobis_case(2, [3, 1, 2, 4], 5, 4, seed=2, dtype="float32"),
        mahalanobis_case(2, [2, 3, 2], 4, 6, seed=3, grad=True),
    ),
)

# ---------------------------------------------------------------------------------- q3


def tiny_encoder(
    kind: str, seed: int, hidden: int = 8, image_size: int = 16, dtype: str = "float64"
) -> nn.Module:
    """``(B, 1, S, S) -> (B, D)``: a tiny Conv4 body (batch-statistics norm, so that batching
    matters) or a two-layer perceptron on the pixels (each image on its own)."""
    if kind == "conv4":
        return builders.tiny_conv4(seed, 1, hidden, image_size, dtype).body
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(image_size * image_size, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
        )
    return net.to(builders.dtype(dtype))


def semi_episode(
    tasks: int,
    n_way: int,
    k_shot: int,
    q_queries: int,
    unlabelled: int,
    seed: int,
    image_size: int = 16,
    dtype: str = "float64",
) -> tuple[Episode, torch.Tensor]:
    """A seeded batch of image tasks (each class a random template plus noise, labels shuffled)
    and ``unlabelled`` more images per class, shuffled, without their labels."""
    g = builders.generator(seed)
    size = (1, image_size, image_size)
    templates = torch.rand((tasks, n_way, *size), generator=g, dtype=torch.float64)
    parts = []
    for i, per in enumerate((k_shot, q_queries, unlabelled)):
        y = builders.shuffled_labels(tasks, [per] * n_way, seed + i + 1)
        x = templates[torch.arange(tasks)[:, None], y]  # (T, N*per, 1, S, S)
        x = x + 0.3 * torch.randn(x.shape, generator=g, dtype=torch.float64)
        parts += [x.to(builders.dtype(dtype)), y]
    classes = torch.stack([torch.randperm(50, generator=g)[:n_way] for _ in range(tasks)])
    return Episode(*parts[:4], classes=classes), parts[4]


def semi_inputs(encoder: dict[str, Any], episode: dict[str, Any]) -> dict[str, Any]:
    """A :func:`tiny_encoder`, and a :func:`semi_episode` with its unlabelled images."""
    ep, unlabelled_x = semi_episode(**episode)
    return {"encoder": tiny_encoder(**encoder), "episode": ep, "unlabelled_x": unlabelled_x}


def observe_loss(fn: Callable[..., Any], args: dict[str, Any], spec: dict) -> dict[str, Any]:
    """The loss, the accuracies in float32 (any float dtype is right), and the loss's
    :func:`~.builders.relative_vjp` with respect to the encoder's weights."""
    out = fn(*args.values())
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        length = f" of length {len(out)}" if isinstance(out, (tuple, list)) else ""
        what = f"a {type(out).__name__}{length}"
        raise TypeError(f"semi_supervised_loss returned {what}; return a pair (loss, acc)")
    loss, acc = out
    return {
        "loss": plain(loss),
        "acc": plain(acc.float() if isinstance(acc, torch.Tensor) else acc),
        **builders.relative_vjp(loss, dict(args["encoder"].named_parameters())),
    }


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
    unlabelled: int,
    seed: int,
    dtype: str = "float64",
) -> Case:
    encoder = {**encoder, "dtype": dtype}
    size = encoder["image_size"]
    episode = dict(tasks=tasks, n_way=n_way, k_shot=k_shot, q_queries=q_queries, seed=seed)
    net = (
        f"a Conv4 body ({encoder['hidden']} channels, batch-statistics norm)"
        if encoder["kind"] == "conv4"
        else f"a perceptron ({encoder['hidden']} features)"
    )
    label = (
        f"{net}, {tasks} task(s) of {n_way}-way {k_shot}-shot {size}x{size} images, {q_queries} "
        f"queries and {unlabelled} unlabelled images per class, {dtype}, seed {seed}"
    )
    episode = {**episode, "unlabelled": unlabelled, "image_size": size, "dtype": dtype}
    return case(label, encoder=encoder, episode=episode)


def reference_semi_supervised_loss(encoder, episode, unlabelled_x):
    p = episode.query_x.shape[1]
    rest = torch.cat([episode.query_x, unlabelled_x], dim=1)
    sf, rf = embed_tasks(encoder, episode.support_x, rest)  # one batch per task
    protos = reference_refine_prototypes(sf, episode.support_y, rf[:, p:], episode.n_way)
    logits = protonet.logits(rf[:, :p], protos)
    loss = F.cross_entropy(logits.flatten(0, 1), episode.query_y.flatten())
    return loss, accuracy(logits.detach(), episode.query_y)


def _semi(variant: str) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    """q3's answer with one known mistake, still differentiable."""

    def semi_supervised_loss(encoder, episode, unlabelled_x):
        sx, qx, y = episode.support_x, episode.query_x, episode.query_y
        if variant == "apart":
            sf, qf = embed_tasks(encoder, sx, qx)
            uf = torch.stack([encoder(x) for x in unlabelled_x])
        elif variant == "one batch":
            t, s, p = sx.shape[0], sx.shape[1], qx.shape[1]
            x = torch.cat([sx, qx, unlabelled_x], 1)
            f = encoder(x.flatten(0, 1)).view(t, x.shape[1], -1)
            sf, qf, uf = f[:, :s], f[:, s : s + p], f[:, s + p :]
        else:
            sf, rf = embed_tasks(encoder, sx, torch.cat([qx, unlabelled_x], 1))
            qf, uf = rf[:, : qx.shape[1]], rf[:, qx.shape[1] :]
        if variant == "transductive":
            uf = qf
        protos = reference_refine_prototypes(sf, episode.support_y, uf, episode.n_way)
        if variant == "unrefined":
            protos = protonet.prototypes(sf, episode.support_y, episode.n_way)
        if variant == "detached":
            protos = _refine_detached(sf, episode.support_y, uf, episode.n_way)
        logits = protonet.logits(qf, protos)
        if variant == "plus":
            logits = -logits
        reduction = "sum" if variant == "summed" else "mean"
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction=reduction)
        return loss, accuracy(logits.detach(), y)

    return semi_supervised_loss


def _refine_detached(f, y, u, n):
    """Refined prototypes whose soft assignments carry no gradient."""
    with torch.no_grad():
        z = protonet.logits(u, protonet.prototypes(f, y, n)).softmax(-1)
    one_hot = F.one_hot(y, n).to(f.dtype)
    sums = one_hot.transpose(1, 2) @ f + z.transpose(1, 2) @ u
    return sums / (one_hot.sum(1) + z.sum(1)).unsqueeze(-1)


def _counts(encoder, episode, unlabelled_x):
    loss, acc = reference_semi_supervised_loss(encoder, episode, unlabelled_x)
    return loss, acc * episode.query_y.shape[1]


_BATCHES = "(embed_tasks(encoder, support_x, torch.cat([query_x, unlabelled_x], dim=1)))"
_SEMI_MISTAKES = {
    "unrefined": "the prototypes were not refined with the unlabelled images (refine_prototypes)",
    "transductive": "the queries were used as the unlabelled set; refine with unlabelled_x",
    "plus": "the logits are +distance, so the nearest prototype gets the lowest score",
    "summed": "this is the sum of the queries' cross-entropies; take their mean",
    "apart": "the unlabelled images went through the encoder in a batch of their own; its "
    f"batch-statistics norm must see each task's images together {_BATCHES}",
    "one batch": "all tasks went through the encoder in one batch, so its batch-statistics norm "
    f"mixed them; embed one task at a time {_BATCHES}",
    "detached": "the values are right, but the soft assignments carry no gradient (computed under "
    "no_grad or detached); the loss differentiates through the refinement",
}

Q3 = Question(
    "q3",
    "semi_supervised_loss",
    3,
    semi_inputs,
    title="the loss of a semi-supervised prototypical network",
    reference=reference_semi_supervised_loss,
    observe=observe_loss,
    what="the output",
    mistakes=(
        *(Mistake(says, _semi(name)) for name, says in _SEMI_MISTAKES.items()),
        Mistake(
            "the loss carries no graph back to the encoder (computed under torch.no_grad(), "
            "detached, or rebuilt from .item()); meta-training differentiates it",
            lambda e, ep, u: tuple(t.detach() for t in reference_semi_supervised_loss(e, ep, u)),
        ),
        Mistake("these are the numbers of right queries; divide by the queries per task", _counts),
    ),
    hints=lambda s: {
        (): "acc is one accuracy per task, of shape (T,)",
        (s["episode"]["tasks"] * s["episode"]["n_way"] * s["episode"]["q_queries"],): "one "
        "value per query: the loss averages over all queries, acc[t] over task t's",
    },
    rule="The loss is the mean cross-entropy of the query labels under logits −‖f(x) − c̃_n‖², "
    "c̃ the prototypes refined with the unlabelled features (question 1), every image of a task "
    "embedded in one batch; acc[t] is the fraction of task t's queries classified right",
    visible=(
        loss_case(mlp_encoder(0), 1, 3, 2, 2, 2, seed=0),
        loss_case(conv_encoder(1), 1, 3, 1, 3, 2, seed=1),
        loss_case(conv_encoder(2), 2, 5, 1, 2, 3, seed=2),
        loss_case(mlp_encoder(3), 3, 4, 2, 2, 1, seed=3, dtype="float32"),
    ),
)

# ---------------------------------------------------------------------------------- q4

QUERIES = 5  # queries per class, in the training and the test episodes
CURVES = ("pixel_nn", "protonet", "refined")


def stroke_classes(n_classes: int, per_class: int, seed: int, size: int = 16) -> ImageClasses:
    """A seeded synthetic split: class c is three thin strokes between seeded points, and each
    of its images those strokes under a seeded random rotation (±0.5 rad), scale (±20%) and
    shift (±25% of the half-side), plus noise: small moves that a pixel comparison suffers from
    and that a convolutional encoder can learn to ignore, as with Glyphs."""
    g = builders.generator(seed)
    ends = (torch.rand(n_classes, 3, 2, 2, generator=g) * 2 - 1) * 0.7  # (C, strokes, ends, xy)
    lin = (torch.arange(size) + 0.5) / size * 2 - 1
    p = torch.stack(torch.meshgrid(lin, lin, indexing="xy"), -1).view(1, 1, -1, 2)
    a, ab = ends[:, :, None, 0], ends[:, :, None, 1] - ends[:, :, None, 0]  # (C, 3, 1, 2)
    along = (((p - a) * ab).sum(-1) / ab.square().sum(-1).clamp_min(1e-6)).clamp(0, 1)
    d = (p - (a + along[..., None] * ab)).norm(dim=-1)  # (C, 3, pixels): distance to a stroke
    ink = torch.exp(-((d / 0.12) ** 2)).amax(1).view(n_classes, 1, size, size)
    n = n_classes * per_class
    turn = (torch.rand(n, generator=g) * 2 - 1) * 0.5
    scale = 1 + (torch.rand(n, generator=g) - 0.5) * 0.4
    shift = (torch.rand(n, 2, generator=g) * 2 - 1) * 0.25
    cos, sin = scale * turn.cos(), scale * turn.sin()
    theta = torch.stack([cos, -sin, shift[:, 0], sin, cos, shift[:, 1]], 1).view(n, 2, 3)
    grid = F.affine_grid(theta, [n, 1, size, size], align_corners=False)
    x = F.grid_sample(ink.repeat_interleave(per_class, 0), grid, align_corners=False)
    x = x + 0.2 * torch.randn(x.shape, generator=g)
    images = (x.clamp(0, 1) * 255).round().to(torch.uint8).view(n_classes, per_class, size, size)
    names = tuple(f"strokes {seed}/{c}" for c in range(n_classes))
    return ImageClasses(f"strokes/{seed}", images, names, tuple("strokes" for _ in names))


def experiment_inputs(
    encoder: dict[str, Any],
    data: dict[str, Any],
    n_way: int,
    shots: list[int],
    steps: int,
    lr: float,
    n_episodes: int,
    seed: int,
) -> dict[str, Any]:
    """A seeded tiny Conv4 body (float32, 16 x 16 images), :func:`stroke_classes` train and
    test splits (disjoint classes), and the experiment's settings."""
    net = builders.tiny_conv4(encoder["seed"], 1, encoder["hidden"], 16, "float32").body
    per, s = data["per_class"], data["seed"]
    train, test = stroke_classes(data["train"], per, s), stroke_classes(data["test"], per, s + 1)
    return dict(
        encoder=net,
        train=train,
        test=test,
        n_way=n_way,
        shots=shots,
        steps=steps,
        lr=lr,
        n_episodes=n_episodes,
        seed=seed,
    )


def _experiment(encoder, train, test, n_way, shots, steps, lr, n_episodes, seed, variant=""):
    """q4's experiment, with one known mistake when ``variant`` names it."""
    net = protonet.ProtoNet(copy.deepcopy(encoder))
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    for _ in range(0 if variant == "untrained" else steps):
        loss, _ = episode_loss(net, sample_episodes(train, n_way, 1, QUERIES, 1, g))
        opt.zero_grad()
        loss.backward()
        opt.step()
    out = {name: {} for name in CURVES}
    split = train if variant == "train split" else test
    with torch.no_grad():
        for k in shots:
            ep = next(FixedEpisodes(split, n_way, k, QUERIES, n_episodes, seed).batches(n_episodes))
            sf, qf = embed_tasks(net.encoder, ep.support_x, ep.query_x)
            protos = protonet.prototypes(sf, ep.support_y, n_way)
            refined = reference_refine_prototypes(sf, ep.support_y, qf, n_way)
            if variant == "unrefined":
                refined = protos
            out["protonet"][k] = accuracy(protonet.logits(qf, protos), ep.query_y).mean().item()
            out["refined"][k] = accuracy(protonet.logits(qf, refined), ep.query_y).mean().item()
            if variant == "pixel means":
                means = protonet.prototypes(ep.support_x.flatten(2), ep.support_y, n_way)
                nearest = protonet.logits(ep.query_x.flatten(2), means).argmax(-1)
            else:
                nearest = protonet.pixel_nearest_neighbour(ep)
            out["pixel_nn"][k] = (nearest == ep.query_y).double().mean().item()
    return out


def reference_shots_experiment(encoder, train, test, n_way, shots, steps, lr, n_episodes, seed):
    return _experiment(encoder, train, test, n_way, shots, steps, lr, n_episodes, seed)


def _bad_experiment(variant: str) -> Callable[..., dict]:
    return partial(_experiment, variant=variant)


def observe_experiment(fn: Callable[..., Any], args: dict[str, Any], spec: Spec) -> Any:
    """What came back, as plain data (keys as strings), with numbers and 0-d tensors as floats.

    Torch runs on one thread meanwhile, as in the grader's sandbox and for the reference: an
    answer in a notebook then rounds, and so trains, exactly as the reference does.
    """

    def number(v: Any) -> Any:
        if isinstance(v, torch.Tensor) and v.dim() == 0 or isinstance(v, int | float):
            return v if isinstance(v, bool) else float(v)
        return {k: number(u) for k, u in v.items()} if isinstance(v, dict) else v

    with builders.one_thread():
        return number(plain(fn(*args.values())))


def claims(spec: Spec, got: Any) -> str | None:
    """What holds on every seed of every case (see :data:`SHOTS_TOLERANCE`), checked on
    ``got``; ``None`` when it holds or when ``got`` is not shaped as asked."""
    try:
        acc = {c: [float(got[c][str(k)]) for k in spec["shots"]] for c in CURVES}
    except (KeyError, TypeError, ValueError):
        return None
    if any(not 0 <= a <= 1 for row in acc.values() for a in row):
        return "accuracies are fractions of the queries classified right, from 0 to 1 (not %)"
    shots = spec["shots"]
    few, many = shots.index(min(shots)), shots.index(max(shots))
    for c in ("pixel_nn", "protonet"):
        if acc[c][many] <= acc[c][few]:
            return f"{c} should do better with {max(shots)} shots than with {min(shots)}"
    pairs = zip(acc["protonet"], acc["pixel_nn"], strict=True)
    if spec["steps"] == 0 and any(p >= n for p, n in pairs):
        return "an untrained encoder's space should be worse than the pixels at every K"
    trained = spec["steps"] >= 50 and spec["n_way"] == 5  # at 3-way the pixels can tie
    if trained and acc["protonet"][few] <= acc["pixel_nn"][few]:
        return (
            f"after {spec['steps']} meta-training steps ProtoNet should beat the pixels at 1 shot"
        )
    return None


def tolerance(spec: Spec) -> dict[str, Any]:
    """Trained curves within :data:`SHOTS_TOLERANCE`; the rest (pixel_nn, and every curve when
    nothing is trained) within :data:`EXACT_TOLERANCE`."""
    loose, exact = {"rtol": 0.0, "atol": SHOTS_TOLERANCE}, {"rtol": 0.0, "atol": EXACT_TOLERANCE}
    trained = lambda c: spec["steps"] > 0 and c != "pixel_nn"  # noqa: E731
    return {**loose, **{c: loose if trained(c) else exact for c in CURVES}}


def seed_spread(case: int = 0, seeds=range(5), **spec: Any) -> torch.Tensor:
    """The reference's accuracies ``(seeds, curves, shots)`` for the spec of q4's visible case
    ``case`` (``spec`` overrides it), with the encoder and the episodes drawn from each seed in
    ``seeds``: the measure of the tolerance."""
    spec = {**Q4.visible[case].kwargs, **spec}
    runs = [
        reference_shots_experiment(
            **experiment_inputs(**{**spec, "seed": s, "encoder": {**spec["encoder"], "seed": s}})
        )
        for s in seeds
    ]
    return torch.tensor([[[run[c][k] for k in spec["shots"]] for c in CURVES] for run in runs])


# Measured with `.venv/bin/python -c "from metalib.grading.ex04_protonet import seed_spread as
# s; print(s(0).std(0), s(1).std(0))"` (and the hidden cases' specs, with data seeds 0-4): over
# seeds 0-4 (the encoder's weights, the training and the test episodes) an accuracy's standard
# deviation is 0.007 to 0.035 for pixel_nn and 0.01 to 0.09 for protonet and refined. Right
# answers agree exactly where nothing is trained (pixel_nn; every curve with steps = 0): a
# near-tie's argmax flipped by rounding moves one query, 0.001 to 0.002. Trained curves drift:
# Adam turns rounding differences into different weights, so a right answer that computes the
# squared distances with torch.cdist (‖q‖² − 2 q·c + ‖c‖²) instead of (q − c)² ends 0 to 0.04
# away (24 runs of the trained cases, seeds 0-7). Hence 0.005 and 0.05: every known mistake
# still fails the untrained visible case, and most fail the trained one. The claims held on all
# 25 seeds and data seeds of every case (the one at 1 shot: with 5-way tasks only).
EXACT_TOLERANCE = 0.005
SHOTS_TOLERANCE = 0.05


def experiment_case(
    seed: int,
    n_way: int,
    shots: list[int],
    steps: int,
    hidden: int = 8,
    n_episodes: int = 40,
    lr: float = 0.01,
    data_seed: int = 0,
) -> Case:
    net = f"a Conv4 body ({hidden} channels)"
    net = f"{net} meta-trained for {steps} Adam steps (lr {lr:g})" if steps else f"untrained {net}"
    label = (
        f"{net}, {n_way}-way tasks of 16x16 strokes, shots {shots}, {n_episodes} test episodes, "
        f"seed {seed}"
    )
    encoder = {"seed": seed, "hidden": hidden}
    data = {"train": 30, "test": 20, "per_class": 16, "seed": 100 + data_seed}
    spec = dict(n_way=n_way, shots=shots, steps=steps, lr=lr, n_episodes=n_episodes, seed=seed)
    return case(label, encoder=encoder, data=data, **spec)


Q4 = Question(
    "q4",
    "shots_experiment",
    3,
    experiment_inputs,
    title="experiment: pixels, ProtoNet and refined prototypes from 1 to 10 shots",
    reference=reference_shots_experiment,
    observe=observe_experiment,
    claims=claims,
    what="the accuracies",
    rule="acc[curve][K] is the mean query accuracy over FixedEpisodes(test, n_way, K, 5, "
    "n_episodes, seed) after meta-training a copy of the encoder for `steps` 1-shot episodes "
    "drawn by sample_episodes(train, n_way, 1, 5, 1, torch.Generator().manual_seed(seed))",
    tolerance=tolerance,
    seconds=20,
    changed={"encoder": "meta-train a copy of it (copy.deepcopy(encoder)), not the caller's own"},
    mistakes=(
        Mistake(
            "the encoder was not meta-trained (steps were ignored)",
            _bad_experiment("untrained"),
            when=lambda s: s["steps"] > 0,
        ),
        Mistake("these test episodes come from the training split", _bad_experiment("train split")),
        Mistake(
            "pixel_nn compares each query with class means of pixels; pixel nearest neighbour "
            "takes the label of the single nearest support image",
            _bad_experiment("pixel means"),
            when=lambda s: max(s["shots"]) > 1,
        ),
        Mistake(
            "refined equals protonet: refine the prototypes with the task's query features as "
            "the unlabelled set (refine_prototypes(sf, support_y, qf, n_way))",
            _bad_experiment("unrefined"),
        ),
    ),
    visible=(
        experiment_case(0, 5, [1, 5, 10], steps=0, hidden=8),
        experiment_case(1, 5, [1, 2, 5, 10], steps=50, hidden=16),
    ),
)

EXERCISE = Exercise("04_protonet", (Q1, Q2, Q3, Q4))


def check(name: str, fn: Callable[..., Any]) -> feedback.Verdict:
    """Run the visible cases of question ``name`` on ``fn`` and print the verdict."""
    return feedback.check(EXERCISE, name, fn)
