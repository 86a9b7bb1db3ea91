"""Exercise 04_protonet: prototypes, squared distances, the episode loss, cosine logits.

Every case is a plain spec, rebuilt from its seed on both sides (:mod:`metalib.grading.builders`):
features whose rows have different norms (so that a missing normalisation shows), support labels
shuffled per task (so that a reshape assuming a class-sorted support shows), some with unequal
shots per class; for the loss a tiny encoder (a Conv4 body with batch statistics, so that
batching matters, or a perceptron on the pixels) and a batch of template-plus-noise image tasks.

The references are metalib's own: :func:`metalib.protonet.prototypes`, :func:`~metalib.protonet.
logits` (``"euclidean"``, negated, for the squared distances; ``"cosine"``) and
:func:`metalib.train.episode_loss` of a :class:`~metalib.protonet.ProtoNet` (Snell et al., 2017).
Outputs match to 1e-9 in float64 and 1e-5 in float32 (:func:`~metalib.grading.question.
difference`). The loss question also compares the accuracies (in float32, whatever float dtype
they come in) and the loss's gradient with respect to every encoder weight (its largest entry,
and every entry relative to it: see :func:`gradient`); the cosine question, with a learnable
temperature, the logits' gradient with respect to it. Gradients are taken along seeded
directions (:func:`~metalib.grading.builders.vjp`). A wrong answer is matched against the usual
mistakes (a sum for a mean, a support assumed sorted by class, tasks pooled, the distance not
squared, +distance as logits, no normalisation, the temperature dropped or cut from the graph)
so that the message can say which one it is.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from metalib import protonet
from metalib.grading import builders, feedback
from metalib.grading.question import Case, Exercise, Mistake, Question, case, plain, raises
from metalib.nets import embed_tasks
from metalib.tasks import Episode
from metalib.train import accuracy, episode_loss


def spec_of(build: Callable[..., Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
    """The spec of a case whose arguments are ``build``'s, defaults included."""
    bound = inspect.signature(build).bind(*args, **kwargs)
    bound.apply_defaults()
    return dict(bound.arguments)


# ---------------------------------------------------------------------------------- q1


def prototype_inputs(
    tasks: int, counts: list[int], dim: int, seed: int, dtype: str = "float64", n_way: int = 0
) -> dict[str, Any]:
    """Shuffled support features ``(T, M, D)`` and labels, ``counts[n]`` shots of class ``n``;
    ``n_way`` is ``len(counts)`` unless given (more leaves the last class without examples)."""
    f, y = builders.support(tasks, counts, dim, seed, dtype)
    return {"support_features": f, "support_y": y, "n_way": n_way or len(counts)}


def prototypes_case(
    tasks: int, counts: list[int], dim: int, seed: int, dtype: str = "float64", note: str = ""
) -> Case:
    shots = f"{counts[0]}-shot" if len(set(counts)) == 1 else f"shots {counts}"
    label = f"{tasks} task(s), {len(counts)}-way {shots}, {dim} features, {dtype}, seed {seed}"
    spec = {"tasks": tasks, "counts": counts, "dim": dim, "seed": seed, "dtype": dtype}
    return case(label + (f" ({note})" if note else ""), **spec)


def empty_class_case(counts: list[int], dim: int, seed: int) -> Case:
    """A support set in which class ``len(counts)`` (the last of ``n_way``) has no example."""
    n, valid = len(counts), {"tasks": 1, "counts": counts, "dim": dim, "seed": seed}
    label = f"{n + 1}-way, but class {n} has no support example ({n}-way shots {counts} given)"
    return raises(label, {**valid, "n_way": n + 1}, valid)


def reference_prototypes(support_features, support_y, n_way):
    return protonet.prototypes(support_features, support_y, n_way)


def _class_sums(f: torch.Tensor, y: torch.Tensor, n: int) -> torch.Tensor:
    return F.one_hot(y, n).to(f.dtype).transpose(1, 2) @ f


def _pooled(f: torch.Tensor, y: torch.Tensor, n: int) -> torch.Tensor:
    pooled = reference_prototypes(f.flatten(0, 1)[None], y.flatten()[None], n)
    return pooled.expand(f.shape[0], -1, -1)


Q1 = Question(
    "q1",
    "prototypes",
    2,
    title="class means per task",
    build=prototype_inputs,
    reference=reference_prototypes,
    what="the prototypes",
    mistakes=(
        Mistake("this is the sum of each class's features, not their mean", _class_sums),
        Mistake("the classes of all tasks were pooled; keep tasks apart", _pooled),
        Mistake(
            "reshaping to (T, N, K, D) assumes the support is sorted by class, but it is "
            "shuffled; select each class's examples by their labels",
            lambda f, y, n: f.view(f.shape[0], n, -1, f.shape[-1]).mean(2),
            when=lambda s: len(set(s["counts"])) == 1,
        ),
        Mistake(
            "every class was divided by M/N, the average number of shots, but the classes have "
            "different counts; divide each sum by its own class's count",
            lambda f, y, n: _class_sums(f, y, n) / (y.shape[1] / n),
            when=lambda s: len(set(s["counts"])) > 1,
        ),
    ),
    hints=lambda s: {
        (len(s["counts"]), s["dim"]): "the task axis is missing (a (T, M) mask as in "
        "f[support_y == n] selects the examples of all tasks at once); compute each task's "
        "prototypes",
        (s["tasks"], s["dim"], len(s["counts"])): "the last two axes are swapped; [t, n] "
        "should be class n's prototype",
    },
    rule="The prototype of class n is the mean of the task's support features labelled n",
    visible=(
        prototypes_case(1, [2, 2, 2], 4, seed=0),
        prototypes_case(2, [1] * 5, 8, seed=1, note="1-shot: the examples themselves"),
        prototypes_case(3, [3, 1, 2, 4], 5, seed=2, dtype="float32"),
        empty_class_case([2, 2], 3, seed=3),
    ),
)

# ---------------------------------------------------------------------------------- q2 and q4


def distance_inputs(
    tasks: int, queries: int, n_way: int, dim: int, seed: int, dtype: str = "float64"
) -> dict[str, torch.Tensor]:
    """Seeded query features ``(T, P, D)`` and prototypes ``(T, N, D)``."""
    return {
        "query_features": builders.features((tasks, queries, dim), seed, dtype),
        "protos": builders.features((tasks, n_way, dim), seed + 1, dtype),
    }


def _features_label(s: dict[str, Any]) -> str:
    return (
        f"{s['tasks']} task(s), {s['queries']} queries, {s['n_way']} prototypes, {s['dim']} "
        f"features, {s['dtype']}, seed {s['seed']}"
    )


def distances_case(*args: Any, **kwargs: Any) -> Case:
    """A case of :func:`distance_inputs`'s arguments."""
    s = spec_of(distance_inputs, *args, **kwargs)
    return case(_features_label(s), **s)


def reference_squared_distances(query_features, protos):
    return -protonet.logits(query_features, protos, "euclidean")


Q2 = Question(
    "q2",
    "squared_distances",
    2,
    title="squared Euclidean distances to the prototypes",
    build=distance_inputs,
    reference=reference_squared_distances,
    what="the distances",
    mistakes=(
        Mistake(
            "this is the distance ‖q − c‖, not its square (ProtoNet uses the square)",
            lambda q, c: reference_squared_distances(q, c).sqrt(),
        ),
        Mistake(
            "the sign is flipped: a distance is never negative",
            lambda q, c: -reference_squared_distances(q, c),
        ),
        Mistake(
            "this is the mean over the features, not the sum",
            lambda q, c: reference_squared_distances(q, c) / q.shape[-1],
        ),
        Mistake(
            "the last two axes are swapped; [t, p, n] is query p against prototype n",
            lambda q, c: reference_squared_distances(q, c).transpose(1, 2),
            when=lambda s: s["queries"] == s["n_way"],
        ),
    ),
    hints=lambda s: {
        (s["tasks"], s["n_way"], s["queries"]): "the last two axes are swapped; [t, p, n] is "
        "query p against prototype n",
        (s["tasks"], s["queries"], s["n_way"], s["dim"]): "the differences were not summed over "
        "the feature axis",
    },
    rule=(
        "Entry [t, p, n] is ‖q_p − c_n‖² = Σ_d (q_pd − c_nd)², for the queries and prototypes "
        "of task t"
    ),
    visible=(
        distances_case(1, 4, 3, 2, seed=0),
        distances_case(2, 6, 5, 8, seed=1),
        distances_case(3, 5, 4, 16, seed=2, dtype="float32"),
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


def image_episode(
    tasks: int,
    n_way: int,
    k_shot: int,
    q_queries: int,
    seed: int,
    image_size: int = 16,
    dtype: str = "float64",
) -> Episode:
    """A seeded batch of image tasks: each class a random template plus noise, labels shuffled."""
    g = builders.generator(seed)
    size = (1, image_size, image_size)
    templates = torch.rand((tasks, n_way, *size), generator=g, dtype=torch.float64)
    parts = []
    for per in (k_shot, q_queries):
        y = builders.shuffled_labels(tasks, [per] * n_way, seed + len(parts) + 1)
        x = templates[torch.arange(tasks)[:, None], y]  # (T, N*per, 1, S, S)
        x = x + 0.3 * torch.randn(x.shape, generator=g, dtype=torch.float64)
        parts += [x.to(builders.dtype(dtype)), y]
    classes = torch.stack([torch.randperm(50, generator=g)[:n_way] for _ in range(tasks)])
    return Episode(*parts, classes=classes)


def loss_inputs(encoder: dict[str, Any], episode: dict[str, Any]) -> dict[str, Any]:
    """A :func:`tiny_encoder` and an :func:`image_episode`, from their specs."""
    return {"encoder": tiny_encoder(**encoder), "episode": image_episode(**episode)}


def gradient(out: Any, params: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The gradient of ``out`` along seeded directions (:func:`~metalib.grading.builders.vjp`)
    with respect to ``params``: its scale (its largest entry in absolute value), and every entry
    divided by it (``None`` both when ``out`` carries no graph).

    Relative, because the gradient of a bias before a batch norm is zero up to float32 rounding,
    about 1e-6 of the largest entry, which the absolute tolerance (1e-5) cannot absorb when that
    entry is about 10; the rounding differs between the sandbox and the judge's process.
    """
    grad = builders.vjp(out, params)
    if grad is None:
        return {"gradient scale": None, "gradient / scale": None}
    top = torch.stack([g.abs().max() for g in grad.values()]).max()
    relative = {k: g / top.clamp_min(1e-30) for k, g in grad.items()}
    return {"gradient scale": top, "gradient / scale": relative}


def observe_loss(fn: Callable[..., Any], args: dict[str, Any], spec: dict) -> dict[str, Any]:
    """The loss, the accuracies in float32 (any float dtype is right), and the loss's
    :func:`gradient` with respect to the encoder's weights."""
    out = fn(*args.values())
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        length = f" of length {len(out)}" if isinstance(out, (tuple, list)) else ""
        what = f"a {type(out).__name__}{length}"
        raise TypeError(f"protonet_loss returned {what}; return a pair (loss, acc)")
    loss, acc = out
    return {
        "loss": plain(loss),
        "acc": plain(acc.float() if isinstance(acc, torch.Tensor) else acc),
        **gradient(loss, dict(args["encoder"].named_parameters())),
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
        f"queries per class, {dtype}, seed {seed}"
    )
    return case(label, encoder=encoder, episode={**episode, "image_size": size, "dtype": dtype})


def reference_protonet_loss(encoder, episode):
    return episode_loss(protonet.ProtoNet(encoder), episode)


def _loss_variant(encoder: nn.Module, episode: Episode, variant: str) -> tuple[torch.Tensor, ...]:
    """The loss and accuracies with one known mistake, still differentiable."""
    sx, qx = episode.support_x, episode.query_x
    if variant == "apart":
        sf, qf = torch.stack([encoder(x) for x in sx]), torch.stack([encoder(x) for x in qx])
    elif variant == "one batch":
        t, s = sx.shape[:2]
        out = encoder(torch.cat([sx.flatten(0, 1), qx.flatten(0, 1)]))
        sf, qf = out[: t * s].view(t, s, -1), out[t * s :].view(t, qx.shape[1], -1)
    else:
        sf, qf = embed_tasks(encoder, sx, qx)
    protos = protonet.prototypes(sf, episode.support_y, episode.n_way)
    if variant == "sum":
        protos = _class_sums(sf, episode.support_y, episode.n_way)
    queries, y = (sf, episode.support_y) if variant == "support" else (qf, episode.query_y)
    d = reference_squared_distances(queries, protos)
    logits = {"plus": d, "sqrt": -d.sqrt()}.get(variant, -d)
    reduction = "sum" if variant == "summed" else "mean"
    loss = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction=reduction)
    return loss, accuracy(logits.detach(), y)


def _wrong_loss(name: str) -> Callable[[nn.Module, Episode], tuple[torch.Tensor, ...]]:
    return lambda encoder, episode: _loss_variant(encoder, episode, name)


def _right_counts(encoder: nn.Module, episode: Episode) -> tuple[torch.Tensor, torch.Tensor]:
    loss, acc = reference_protonet_loss(encoder, episode)
    return loss, acc * episode.query_y.shape[1]


_LOSS_MISTAKES = {
    "plus": "the logits are +distance, so the nearest prototype gets the lowest score; use "
    "−distance",
    "sqrt": "the distance is not squared; ProtoNet's logits are −‖q − c‖²",
    "summed": "this is the sum of the queries' cross-entropies; take their mean",
    "sum": "the prototypes are sums of the class features, not means",
    "support": "this is the loss on the support set; score the query set",
    "apart": "the support and query images went through the encoder in separate batches; its "
    "batch-statistics norm must see each task's support and queries together "
    "(embed_tasks(encoder, support_x, query_x))",
    "one batch": "all tasks went through the encoder in one batch, so its batch-statistics norm "
    "mixed them; embed one task at a time (embed_tasks(encoder, support_x, query_x))",
}

Q3 = Question(
    "q3",
    "protonet_loss",
    4,
    title="the prototypical-network loss of an episode",
    build=loss_inputs,
    reference=reference_protonet_loss,
    observe=observe_loss,
    what="the output",
    mistakes=(
        *(Mistake(says, _wrong_loss(name)) for name, says in _LOSS_MISTAKES.items()),
        Mistake(
            "the loss carries no graph back to the encoder (computed under torch.no_grad(), "
            "detached, or rebuilt from .item()); meta-training differentiates it",
            lambda e, ep: tuple(t.detach() for t in reference_protonet_loss(e, ep)),
        ),
        Mistake(
            "these are the numbers of right queries; divide by the number of queries per task",
            _right_counts,
        ),
    ),
    hints=lambda s: {
        (s["episode"]["tasks"] * s["episode"]["n_way"] * s["episode"]["q_queries"],): "one "
        "value per query: the loss averages over all queries, acc[t] over task t's",
        (): "acc is one accuracy per task, of shape (T,)",
    },
    rule=(
        "The loss is the mean cross-entropy of the query labels under logits −‖f(x) − c_n‖², "
        "over all queries of all tasks, differentiable in the encoder's weights; acc[t] is the "
        "fraction of task t's queries whose nearest prototype is their class"
    ),
    visible=(
        loss_case(mlp_encoder(0), 1, 3, 2, 2, seed=0),
        loss_case(conv_encoder(1), 1, 3, 1, 3, seed=1),
        loss_case(conv_encoder(2), 2, 5, 1, 2, seed=2),
        loss_case(mlp_encoder(3), 3, 4, 2, 2, seed=3, dtype="float32"),
    ),
)

# ---------------------------------------------------------------------------------- q4


def cosine_inputs(
    tasks: int,
    queries: int,
    n_way: int,
    dim: int,
    seed: int,
    temperature: float,
    dtype: str = "float64",
    learnable: bool = False,
) -> dict[str, Any]:
    """Features as for the distances; with ``learnable`` the temperature is a 0-d tensor that
    requires gradients."""
    inputs = distance_inputs(tasks, queries, n_way, dim, seed, dtype)
    if learnable:
        temperature = torch.tensor(temperature, dtype=builders.dtype(dtype), requires_grad=True)
    return {**inputs, "temperature": temperature}


def observe_cosine(fn: Callable[..., Any], args: dict[str, Any], spec: dict) -> Any:
    """The logits; with a learnable temperature also their gradient with respect to it."""
    out = fn(*args.values())
    if not spec["learnable"]:
        return {"logits": plain(out)}
    grad = builders.vjp(out, {"temperature": args["temperature"]})
    return {"logits": plain(out), "gradient": None if grad is None else grad["temperature"]}


def cosine_case(*args: Any, **kwargs: Any) -> Case:
    """A case of :func:`cosine_inputs`'s arguments."""
    s = spec_of(cosine_inputs, *args, **kwargs)
    grad = " (a tensor that requires grad)" if s["learnable"] else ""
    return case(f"{_features_label(s)}, τ = {s['temperature']:g}{grad}", **s)


def reference_cosine_logits(query_features, protos, temperature):
    return protonet.logits(query_features, protos, "cosine", temperature)


def _cosine(variant: str) -> Callable[..., torch.Tensor]:
    """The logits with one known mistake."""

    def cosine_logits(q, c, t):
        unit = lambda x: F.normalize(x, dim=1 if variant == "axis" else -1)
        a = q if variant in ("raw", "protos only") else unit(q)
        b = c if variant in ("raw", "queries only") else unit(c)
        cos = a @ b.transpose(1, 2)
        if variant == "no τ":
            return cos
        if variant == "divided":
            return cos / t
        tau = -t if variant == "sign" else torch.as_tensor(t).detach() if variant == "cut" else t
        return tau * {"shifted": cos - 1, "distance": 1 - cos}.get(variant, cos)

    return cosine_logits


Q4 = Question(
    "q4",
    "cosine_logits",
    2,
    title="cosine logits with a temperature",
    build=cosine_inputs,
    reference=reference_cosine_logits,
    observe=observe_cosine,
    what="the output",
    mistakes=(
        Mistake("the features were not normalised: this is τ·(q · c)", _cosine("raw")),
        Mistake("only the queries were normalised, not the prototypes", _cosine("queries only")),
        Mistake("only the prototypes were normalised, not the queries", _cosine("protos only")),
        Mistake(
            "the features were normalised along the wrong axis; normalise each vector (dim=-1)",
            _cosine("axis"),
        ),
        Mistake("the temperature τ is missing", _cosine("no τ")),
        Mistake("the cosine was divided by τ; multiply by it", _cosine("divided")),
        Mistake(
            "the sign is flipped: the most similar prototype should get the highest score",
            _cosine("sign"),
        ),
        Mistake("this is τ·(cos − 1): the question asks for τ·cos, no shift", _cosine("shifted")),
        Mistake("this is a cosine distance τ·(1 − cos); the logits are τ·cos", _cosine("distance")),
        Mistake(
            "the values are right, but the logits do not depend on the temperature tensor "
            "through autograd (float(temperature) or .item() cut it); keep it a tensor so that "
            "a learnable temperature can be trained",
            _cosine("cut"),
            when=lambda s: s["learnable"],
        ),
    ),
    hints=lambda s: {
        (s["tasks"], s["n_way"], s["queries"]): "the last two axes are swapped; [t, p, n] is "
        "query p against class n"
    },
    rule="Entry [t, p, n] is τ·cos(q_p, c_n) = τ·(q_p · c_n) / (‖q_p‖ ‖c_n‖)",
    visible=(
        cosine_case(1, 4, 3, 5, seed=0, temperature=1.0),
        cosine_case(2, 6, 5, 8, seed=1, temperature=10.0),
        cosine_case(2, 3, 4, 6, seed=2, temperature=5.0, learnable=True),
    ),
)

EXERCISE = Exercise("04_protonet", (Q1, Q2, Q3, Q4))


def check(name: str, fn: Callable[..., Any]) -> feedback.Verdict:
    """Run the visible cases of question ``name`` on ``fn`` and print the verdict."""
    return feedback.check(EXERCISE, name, fn)
