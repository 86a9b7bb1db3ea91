"""Exercise 00_tasks: sampling N-way K-shot episodes (chapter 0, "Tasks").

What the questions check. They fix *what* a sampler must guarantee, not how it draws, so the
samplers (q1 ``sample_classes``, q2 ``sample_support_query``, q4 ``make_episode``) are judged by
their properties (each question's ``check``), never by equality with a reference: valid and
distinct indices, disjoint support and query sets, labels consistent with the classes, every
label K (or Q) times, the same output for the same generator seed whatever the global random
state, and — over many draws from one generator — every class and image possible in every
position (checked only where a correct sampler misses one with a chance below 1e-6). q3
``relabel`` is deterministic: its labels are compared with the reference's exactly, and the
first wrong one is explained. Impossible sizes must raise ``ValueError``. q5
``nearest_neighbour_table``, the experiment (pixel nearest-neighbour accuracy and its 95%
half-width across ways and shots), is compared with the reference on the same data within
:data:`TABLE_TOLERANCE`, and its claims (:func:`table_claims`) are checked.

How cases are built. A spec is plain data: sizes, a seed, the number of draws, and for q4 the
spec of a synthetic split (:func:`metalib.grading.builders.tiny_image_classes`, whose pixels
``(0, 0)`` and ``(0, 1)`` tell each image's class and index, so the judge knows which image it
got); for q5, :func:`~.builders.shape_classes`. :func:`draws` calls the sampler twice with
generators seeded alike (torch's global generator reseeded differently before each), then
``draws`` times from one generator.

Tolerances: none for q1-q4; indices, labels and images are compared exactly.

References (what a later question calls instead of the student's earlier answers): samplers drawn
the way :func:`metalib.tasks.sample_indices` draws (argsort of uniform keys), and
:func:`metalib.tasks.sample_episodes` for a whole episode.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import torch

from metalib import tasks
from metalib.grading import feedback
from metalib.grading.builders import generator, numbers, shape_classes, tiny_image_classes
from metalib.grading.question import Case, Exercise, Mistake, Question, case, plain, raises

# A coverage check ("every class appears at every position") is made only when a correct
# sampler fails it with probability below this.
_MISS = 1e-6
KEYS = ("support_x", "support_y", "query_x", "query_y", "classes")
Spec = dict[str, Any]


# ------------------------------------------------------------------------- builders, observing


def classes_inputs(n_classes: int, n_way: int, seed: int, draws: int = 0) -> dict[str, Any]:
    """The arguments of ``sample_classes(n_classes, n_way, generator)``."""
    return {"n_classes": n_classes, "n_way": n_way, "generator": generator(seed)}


def support_query_inputs(
    per_class: int, k_shot: int, q_queries: int, seed: int, draws: int = 0
) -> dict[str, Any]:
    """The arguments of ``sample_support_query(per_class, k_shot, q_queries, generator)``."""
    return {
        "per_class": per_class,
        "k_shot": k_shot,
        "q_queries": q_queries,
        "generator": generator(seed),
    }


def relabel_inputs(sample_classes: list[int], episode_classes: list[int]) -> dict[str, Any]:
    """The arguments of ``relabel(sample_classes, episode_classes)``: long tensors."""
    return {
        "sample_classes": torch.tensor(sample_classes),
        "episode_classes": torch.tensor(episode_classes),
    }


def episode_inputs(
    data: dict[str, int], n_way: int, k_shot: int, q_queries: int, seed: int, draws: int = 0
) -> dict[str, Any]:
    """The arguments of ``make_episode(data, n_way, k_shot, q_queries, generator)``."""
    return {
        "data": tiny_image_classes(**data),
        "n_way": n_way,
        "k_shot": k_shot,
        "q_queries": q_queries,
        "generator": generator(seed),
    }


def draws(fn: Callable[..., Any], args: Mapping[str, Any], spec: Spec) -> dict[str, Any]:
    """``fn(*args)`` twice with a generator seeded ``spec["seed"]``, then ``spec["draws"]`` times
    from one generator seeded ``seed + 1`` (the generator is the last argument).

    torch's global generator is reseeded differently before each of the first two calls, so a
    sampler that draws from it gives two different results; it is restored after, so a check in
    a notebook leaves the student's random state as it was.
    """
    *rest, _ = args.values()
    seed = spec["seed"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(10_000 + seed)
        first = plain(fn(*rest, generator(seed)))
        torch.manual_seed(20_000 + seed)
        again = plain(fn(*rest, generator(seed)))
        g = generator(seed + 1)
        many = [plain(fn(*rest, g)) for _ in range(spec["draws"])]
    return {"first": first, "again": again, "many": many}


# ------------------------------------------------------------------------- shared properties


def _show(t: torch.Tensor, limit: int = 12) -> str:
    values = t.flatten().tolist()
    text = ", ".join(str(v) for v in values[:limit])
    return f"[{text}{', ...' if len(values) > limit else ''}]"


def _indices(value: Any, what: str, length: int) -> tuple[torch.Tensor | None, str | None]:
    """``value`` as a ``(length,)`` long tensor, or a message saying why it is not one."""
    if isinstance(value, (list, tuple)) and all(isinstance(v, int) for v in value):
        value = torch.tensor(list(value), dtype=torch.long)
    if not isinstance(value, torch.Tensor):
        return None, f"{what} should be a tensor, got a {type(value).__name__}"
    if value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
        return None, f"{what} should hold integer indices (torch.long), got dtype {value.dtype}"
    if tuple(value.shape) != (length,):
        return None, f"{what} should have shape ({length},), got {tuple(value.shape)}"
    return value.long(), None


def _range_and_distinct(t: torch.Tensor, what: str, upper: int) -> str | None:
    if len(t) and (t.min() < 0 or t.max() >= upper):
        return f"{what} {_show(t)} should lie in 0..{upper - 1}"
    if len(set(t.tolist())) != len(t):
        return f"{what} {_show(t)} contain a repeated index; they must be distinct"
    return None


def _reproducible(first: Any, again: Any, equal: Callable[[Any, Any], bool]) -> str | None:
    if not equal(first, again):
        return (
            "two calls with generators seeded alike gave different results; draw every random "
            "number from `generator` (e.g. torch.randperm(n, generator=generator)), never from "
            "torch's global generator"
        )
    return None


def _coverage(
    seen: torch.Tensor, upper: int, draws: int, p_each: float, what: str, fix: str
) -> str | None:
    """Check that every value 0..upper-1 occurs in ``seen``, when a correct sampler would."""
    if upper * (1 - p_each) ** draws > _MISS:
        return None  # too few draws for the check to be fair
    missing = sorted(set(range(upper)) - set(seen.tolist()))
    if missing:
        never = _show(torch.tensor(missing))
        return f"in {draws} draws from one generator, {what} never held {never}; {fix}"
    return None


def _each_draw(
    got: dict[str, Any], read: Callable[[Any], tuple[Any, str | None]], name: str = "draw"
) -> Any:
    """``read`` every draw (first, again, many...): ``(values, None)`` or ``(None, message)``."""
    values = []
    for i, value in enumerate([got["first"], got["again"], *got["many"]]):
        read_value, problem = read(value)
        if problem:
            return None, problem if i == 0 else f"{name} {i + 1}: {problem}"
        values.append(read_value)
    return values, None


# ------------------------------------------------------------------------- q1


def reference_sample_classes(
    n_classes: int, n_way: int, generator: torch.Generator
) -> torch.Tensor:
    """N distinct classes in random order, drawn like :func:`metalib.tasks.sample_indices`."""
    if n_way > n_classes:
        raise ValueError(f"cannot draw {n_way} distinct classes from {n_classes}")
    return torch.rand(n_classes, generator=generator).argsort()[:n_way]


def check_sample_classes(spec: Spec, got: dict[str, Any], want: Any) -> str | None:
    """Distinct classes in 0..C-1, reproducible, uniform, every class possible at every position."""
    n_classes, n_way = spec["n_classes"], spec["n_way"]

    def read(value: Any) -> tuple[Any, str | None]:
        t, problem = _indices(value, "the result", n_way)
        return t, problem or _range_and_distinct(t, "the classes", n_classes)

    rows, problem = _each_draw(got, read)
    problem = problem or _reproducible(rows[0], rows[1], torch.equal)
    if problem:
        return problem
    many = torch.stack(rows[2:])  # (draws, n_way)
    d, p = len(many), n_way / n_classes
    fix = "every class must be possible"
    if problem := _coverage(many.flatten(), n_classes, d, p, "the classes", fix):
        return problem
    counts = torch.bincount(many.flatten(), minlength=n_classes).double()
    if d * p >= 50 and (counts / (d * p) - 1).abs().max() > 0.5:
        return (
            f"in {d} draws the classes were picked {counts.long().tolist()} times; a uniform "
            f"sampler picks each about {d * p:.0f} times"
        )
    fix = (
        "the classes must come in random order (label j stands for the j-th class drawn), "
        "not sorted"
    )
    for j in range(n_way):
        if problem := _coverage(many[:, j], n_classes, d, 1 / n_classes, f"position {j}", fix):
            return problem
    return None


def sample_classes_case(n_classes: int, n_way: int, seed: int, draws: int) -> Case:
    label = f"{n_way}-way from {n_classes} classes, seed {seed}"
    return case(label, n_classes=n_classes, n_way=n_way, seed=seed, draws=draws)


def classes_raises(n_classes: int, n_way: int, valid_way: int, seed: int) -> Case:
    label = f"{n_way}-way from {n_classes} classes (impossible)"
    bad = {"n_classes": n_classes, "n_way": n_way, "seed": seed}
    return raises(label, bad, {**bad, "n_way": valid_way})


Q1 = Question(
    "q1",
    "sample_classes",
    2,
    classes_inputs,
    title="N distinct classes in random order",
    reference=reference_sample_classes,
    observe=draws,
    check=check_sample_classes,
    visible=(
        sample_classes_case(10, 3, seed=0, draws=300),
        sample_classes_case(5, 5, seed=1, draws=200),
        classes_raises(5, 6, valid_way=5, seed=0),
    ),
)


# ------------------------------------------------------------------------- q2


def reference_sample_support_query(
    per_class: int, k_shot: int, q_queries: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """K + Q distinct images of a class, drawn like :func:`metalib.tasks.sample_indices`."""
    if k_shot + q_queries > per_class:
        raise ValueError(f"{k_shot} shots + {q_queries} queries from {per_class} images")
    order = torch.rand(per_class, generator=generator).argsort()
    return order[:k_shot], order[k_shot : k_shot + q_queries]


def check_sample_support_query(spec: Spec, got: dict[str, Any], want: Any) -> str | None:
    """Disjoint (K,) and (Q,) indices in 0..M-1, reproducible, every image possible in each."""
    m, k, q = spec["per_class"], spec["k_shot"], spec["q_queries"]

    def read(value: Any) -> tuple[Any, str | None]:
        if not isinstance(value, (tuple, list)) or len(value) != 2:
            return None, f"should return a pair (support, query), got {type(value).__name__}"
        s, problem = _indices(value[0], "support", k)
        qq, problem = (None, problem) if problem else _indices(value[1], "query", q)
        if problem:
            return None, problem
        if problem := _range_and_distinct(torch.cat([s, qq]), "support + query", m):
            if overlap := sorted(set(s.tolist()) & set(qq.tolist())):
                problem = (
                    f"support {_show(s)} and query {_show(qq)} share images {overlap}; no image "
                    "may be in both (take K + Q distinct images, then split them)"
                )
        return (s, qq), problem

    pairs, problem = _each_draw(got, read)
    same = lambda a, b: torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])  # noqa: E731
    if problem := problem or _reproducible(pairs[0], pairs[1], same):
        return problem
    many, fix = pairs[2:], "every image must be possible in the support set and in the query set"
    for i, (name, p) in enumerate((("the support set", k / m), ("the query set", q / m))):
        seen = torch.cat([pair[i] for pair in many])
        if problem := _coverage(seen, m, len(many), p, name, fix):
            return problem
    return None


def support_query_case(per_class: int, k: int, q: int, seed: int, draws: int) -> Case:
    label = f"{k}-shot, {q} queries from {per_class} images, seed {seed}"
    return case(label, per_class=per_class, k_shot=k, q_queries=q, seed=seed, draws=draws)


def support_query_raises(per_class: int, k: int, q: int, valid_q: int, seed: int) -> Case:
    label = f"{k} shots + {q} queries from {per_class} images (impossible)"
    bad = {"per_class": per_class, "k_shot": k, "q_queries": q, "seed": seed}
    return raises(label, bad, {**bad, "q_queries": valid_q})


Q2 = Question(
    "q2",
    "sample_support_query",
    2,
    support_query_inputs,
    title="disjoint support and query images of one class",
    reference=reference_sample_support_query,
    observe=draws,
    check=check_sample_support_query,
    visible=(
        support_query_case(6, 2, 3, seed=0, draws=200),
        support_query_case(5, 1, 4, seed=1, draws=200),
        support_query_raises(4, 3, 2, valid_q=1, seed=0),
    ),
)


# ------------------------------------------------------------------------- q3


def reference_relabel(sample_classes: torch.Tensor, episode_classes: torch.Tensor) -> torch.Tensor:
    """Label ``j`` for every sample whose class is ``episode_classes[j]``."""
    match = sample_classes[:, None] == episode_classes[None, :]  # (S, N)
    if not match.any(dim=1).all():
        raise ValueError("a sample's class is not among the episode's classes")
    return match.long().argmax(dim=1)


def check_relabel(spec: Spec, got: Any, want: torch.Tensor) -> str | None:
    """The reference's labels exactly (any integer dtype); the first wrong one explained."""
    labels, problem = _indices(got, "the labels", len(want))
    if problem:
        return problem
    wrong = (labels != want).nonzero().flatten()
    if not len(wrong):
        return None
    i = int(wrong[0])
    c, j = spec["sample_classes"][i], int(want[i])
    return (
        f"expected labels {_show(want)}, got {_show(labels)}: sample {i} is of class {c}, "
        f"which is episode_classes[{j}], so its label is {j}, not {int(labels[i])}"
    )


def relabel_case(sample_classes: list[int], episode_classes: list[int]) -> Case:
    label = f"sample_classes={sample_classes}, episode_classes={episode_classes}"
    return case(label, sample_classes=sample_classes, episode_classes=episode_classes)


def relabel_raises(label: str, bad: list[int], valid: list[int], episode: list[int]) -> Case:
    """``bad`` samples have a class outside ``episode``; ``valid`` ones do not."""
    return raises(
        label,
        {"sample_classes": bad, "episode_classes": episode},
        {"sample_classes": valid, "episode_classes": episode},
    )


Q3 = Question(
    "q3",
    "relabel",
    1,
    relabel_inputs,
    title="labels 0..N-1 from classes",
    reference=reference_relabel,
    check=check_relabel,
    visible=(
        relabel_case([7, 2, 7, 9], [9, 7, 2]),
        relabel_case([4, 0, 11, 0, 4, 11], [0, 11, 4]),
        relabel_raises("class 3 is not in the episode", [5, 3], [5, 4], [5, 4]),
    ),
)


# ------------------------------------------------------------------------- q4


def reference_make_episode(
    data: Any, n_way: int, k_shot: int, q_queries: int, generator: torch.Generator
) -> dict[str, torch.Tensor]:
    """One task of :func:`metalib.tasks.sample_episodes`, as the dict the question asks for."""
    episode = tasks.sample_episodes(data, n_way, k_shot, q_queries, 1, generator)
    return {key: getattr(episode, key)[0] for key in KEYS}


def _episode_problem(
    ep: Any, data: Any, n_way: int, k: int, q: int
) -> tuple[dict[str, torch.Tensor] | None, str | None]:
    """Check one episode; return it as tensors, or a message saying what is wrong."""
    if not isinstance(ep, dict):
        return None, f"should return a dict with keys {', '.join(KEYS)}, got {type(ep).__name__}"
    if missing := [key for key in KEYS if key not in ep]:
        return None, f"the dict has no {', '.join(missing)} (it needs {', '.join(KEYS)})"
    classes, problem = _indices(ep["classes"], "classes", n_way)
    if problem := problem or _range_and_distinct(classes, "classes", data.n_classes):
        return None, problem
    taken: dict[tuple[int, int], str] = {}
    for part, per in (("support", k), ("query", q)):
        x, y = ep[f"{part}_x"], ep[f"{part}_y"]
        shape = (n_way * per, 1, data.image_size, data.image_size)
        if not isinstance(x, torch.Tensor) or tuple(x.shape) != shape:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            return (
                None,
                f"{part}_x should have shape {shape} (N*{part[0].upper()}, 1, H, W), got {got}",
            )
        if x.dtype != torch.float32:
            return None, (
                f"{part}_x should be float32 images in [0, 1] as data.get(classes, samples) "
                f"gives them, got dtype {x.dtype}"
            )
        y, problem = _indices(y, f"{part}_y", n_way * per)
        if problem:
            return None, problem
        if y.min() < 0 or y.max() >= n_way:
            return None, f"{part}_y {_show(y)} should hold labels 0..{n_way - 1}"
        counts = torch.bincount(y, minlength=n_way)
        if (counts != per).any():
            return None, (
                f"{part}_y {_show(y)} has labels 0..{n_way - 1} {counts.tolist()} times; each "
                f"must appear exactly {per} times"
            )
        c = (x[:, 0, 0, 0] * 255).round().long()  # which class and which image each is
        m = (x[:, 0, 0, 1] * 255).round().long()
        valid = (c >= 0) & (c < data.n_classes) & (m >= 0) & (m < data.per_class)
        if not valid.all() or not torch.equal(
            x, data.get(c.clamp(0, data.n_classes - 1), m.clamp(0, data.per_class - 1))
        ):
            return None, f"{part}_x holds images that are not the split's; take them with data.get"
        for i, label in enumerate(y.tolist()):
            if int(c[i]) != int(classes[label]):
                return None, (
                    f"{part} image {i} is of class {int(c[i])} but has label {label}, which "
                    f"stands for classes[{label}] = {int(classes[label])}"
                )
            key = (int(c[i]), int(m[i]))
            if key in taken:
                return None, (
                    f"image {key[1]} of class {key[0]} is in the {taken[key]} set and again in "
                    f"the {part} set; the K + Q images of a class must be distinct"
                )
            taken[key] = part
        ep = {**ep, f"{part}_y": y}
    return {**ep, "classes": classes}, None


def _episode_coverage(spec: Spec, data: Any, many: list[dict[str, torch.Tensor]]) -> str | None:
    """Every class at every label, every label at every position, every image in either set."""
    n_way, d, n_classes = spec["n_way"], len(many), data.n_classes
    classes = torch.stack([ep["classes"] for ep in many])  # (d, N)
    fix = "every class of the split must be possible"
    checks = [(classes.flatten(), n_classes, n_way / n_classes, "the classes", fix)]
    fix = "label j must stand for a random class (not the smallest, not always the same)"
    checks += [
        (classes[:, j], n_classes, 1 / n_classes, f"classes[{j}]", fix) for j in range(n_way)
    ]
    for part, per in (("support", spec["k_shot"]), ("query", spec["q_queries"])):
        ys = torch.stack([ep[f"{part}_y"] for ep in many])  # (d, N*per)
        fix = f"shuffle the {part} set so that no position tells the label"
        checks += [
            (ys[:, pos], n_way, 1 / n_way, f"position {pos} of {part}_y", fix)
            for pos in range(n_way * per)
        ]
        images = torch.cat([(ep[f"{part}_x"][:, 0, 0, 1] * 255).round().long() for ep in many])
        fix = "every image of a class must be possible in either set"
        checks.append(
            (images, data.per_class, per / data.per_class, f"the {part} set's images", fix)
        )
    return next(
        (
            p
            for seen, upper, each, what, fix in checks
            if (p := _coverage(seen, upper, d, each, what, fix))
        ),
        None,
    )


def check_make_episode(spec: Spec, got: dict[str, Any], want: Any) -> str | None:
    """Each episode valid (:func:`_episode_problem`), reproducible, and random where it must be."""
    data = tiny_image_classes(**spec["data"])
    n_way, k, q = spec["n_way"], spec["k_shot"], spec["q_queries"]
    read = lambda ep: _episode_problem(ep, data, n_way, k, q)  # noqa: E731
    episodes, problem = _each_draw(got, read, "episode")
    if problem:
        return problem

    def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
        return all(torch.equal(torch.as_tensor(a[key]), torch.as_tensor(b[key])) for key in KEYS)

    return _reproducible(episodes[0], episodes[1], same) or _episode_coverage(
        spec, data, episodes[2:]
    )


def split(n_classes: int, per_class: int, size: int = 8, seed: int = 0) -> dict[str, int]:
    return {"n_classes": n_classes, "per_class": per_class, "size": size, "seed": seed}


def episode_case(split: dict[str, int], n_way: int, k: int, q: int, seed: int, draws: int) -> Case:
    label = (
        f"{n_way}-way {k}-shot {q}-query from {split['n_classes']} classes of "
        f"{split['per_class']} images, seed {seed}"
    )
    return case(label, data=split, n_way=n_way, k_shot=k, q_queries=q, seed=seed, draws=draws)


def episode_raises(
    label: str, split: dict[str, int], bad: tuple[int, ...], valid: tuple[int, ...]
) -> Case:
    """``bad`` and ``valid`` are ``(n_way, k_shot, q_queries)`` on ``split``, seed 0."""
    spec = lambda n, k, q: {"data": split, "n_way": n, "k_shot": k, "q_queries": q, "seed": 0}  # noqa: E731
    return raises(label, spec(*bad), spec(*valid))


Q4 = Question(
    "q4",
    "make_episode",
    3,
    episode_inputs,
    title="a whole episode",
    reference=reference_make_episode,
    observe=draws,
    check=check_make_episode,
    visible=(
        episode_case(split(8, 6), 3, 2, 3, seed=0, draws=200),
        episode_case(split(5, 4, seed=1), 5, 1, 3, seed=1, draws=150),
        episode_raises(
            "2 shots + 5 queries from classes of 6 images (impossible)",
            split(8, 6),
            bad=(3, 2, 5),
            valid=(3, 2, 4),
        ),
    ),
)


# ------------------------------------------------------------------------- q5: the experiment


def table_inputs(
    seed: int, classes: int, ways: list[int], shots: list[int], q_queries: int, n_episodes: int
) -> dict[str, Any]:
    """``nearest_neighbour_table(data, ways, shots, q_queries, n_episodes)``'s arguments:
    ``classes`` classes of 20 synthetic shapes (:func:`~.builders.shape_classes` of ``seed``)."""
    data = shape_classes(seed, classes, 20)
    return dict(data=data, ways=ways, shots=shots, q_queries=q_queries, n_episodes=n_episodes)


def _table(data, ways, shots, q_queries, n_episodes, variant=""):
    """The experiment, with one known mistake when ``variant`` names it."""
    accuracy, half_width = [], []
    for n_way in ways:
        accuracy.append([])
        half_width.append([])
        for k in [1] * len(shots) if variant == "one shot" else shots:
            episodes = tasks.FixedEpisodes(data, n_way, k, q_queries, n_episodes, seed=0)
            ep = next(episodes.batches(n_episodes))
            queries = ep.support_x if variant == "support" else ep.query_x
            truth = ep.support_y if variant == "support" else ep.query_y
            d = torch.cdist(queries.flatten(2), ep.support_x.flatten(2))  # (T, queries, support)
            nearest = d.argmax(-1) if variant == "farthest" else d.argmin(-1)
            hits = (ep.support_y.gather(1, nearest) == truth).double()  # (T, queries)
            per_episode = hits.mean(1)
            if variant == "pooled":  # every query a sample, not every episode
                spread = hits.flatten().std() / hits.numel() ** 0.5
            else:
                spread = per_episode.std() / n_episodes**0.5
            z = {"no z": 1.0, "std": 1.96 * n_episodes**0.5}.get(variant, 1.96)
            scale = 100.0 if variant == "percent" else 1.0
            accuracy[-1].append(scale * float(per_episode.mean()))
            half_width[-1].append(scale * z * float(spread))
    if variant == "transposed":
        accuracy = [list(r) for r in zip(*accuracy, strict=True)]
        half_width = [list(r) for r in zip(*half_width, strict=True)]
    return {"accuracy": accuracy, "half_width": half_width}


def reference_nearest_neighbour_table(data, ways, shots, q_queries, n_episodes):
    """``{"accuracy": A, "half_width": H}``, ``A[i][j]`` the mean query accuracy of the
    1-nearest-neighbour classifier in pixel space (Euclidean) over the ``n_episodes`` episodes
    of ``FixedEpisodes(data, ways[i], shots[j], q_queries, n_episodes, seed=0)`` and ``H[i][j]``
    its 95% half-width, 1.96 times the episodes' accuracies' standard deviation over the square
    root of ``n_episodes``."""
    return _table(data, ways, shots, q_queries, n_episodes)


def table_claims(spec: Spec, got: Any) -> str | None:
    """What holds on every seed (see :data:`TABLE_TOLERANCE`), checked on ``got``; ``None`` when
    it holds, or when ``got`` is not shaped as asked (the comparison says so)."""
    ways, shots = spec["ways"], spec["shots"]
    try:
        acc = [[float(a) for a in got["accuracy"][i]] for i in range(len(ways))]
    except (KeyError, TypeError, ValueError, IndexError):
        return None
    if any(len(row) != len(shots) for row in acc):
        return None
    for i, n_way in enumerate(ways):
        if any(a <= 1 / n_way for a in acc[i]):
            return f"{n_way}-way accuracies should be above chance, 1/{n_way}"
        if any(b <= a for a, b in zip(acc[i], acc[i][1:], strict=False)):
            return f"{n_way}-way accuracy should rise with every added shot: more examples to match"
    if any(acc[i + 1][j] >= acc[i][j] for i in range(len(ways) - 1) for j in range(len(shots))):
        return "accuracy should fall as the ways grow: more classes to confuse"
    return None


# Measured with `.venv/bin/python -c "from metalib.grading.ex00_tasks import seed_spread as s;
# print(s())"`: over seeds 0-4 of the first visible case the accuracies' standard deviation is
# 0.016-0.030 per entry and the half-widths' 0.0005-0.0027. Right answers on the same seed agree
# but for a near-tie's nearest neighbour (one query moves an accuracy by 1/(episodes N Q), at
# most 0.001 in these cases; a biased standard deviation moves a half-width by 0.0002). 0.002
# admits that; on every visible and hidden case each known mistake is 0.003 or more away (the
# closest, half-widths over pooled queries, 0.0031-0.0054), and the claims of
# :func:`table_claims` held on seeds 0-99 of every case's configuration.
TABLE_TOLERANCE = 0.002


def seed_spread(seeds=range(5), **spec: Any) -> dict[str, torch.Tensor]:
    """The reference experiment's standard deviation over ``seeds``, per entry, for the spec of
    the first visible case (``spec`` overrides it): the measure of the tolerance."""
    spec = {**Q5.visible[0].kwargs, **spec}
    runs = [reference_nearest_neighbour_table(**table_inputs(**{**spec, "seed": s})) for s in seeds]
    return {key: torch.tensor([run[key] for run in runs]).std(0) for key in runs[0]}


def table_case(seed: int, classes: int, ways: list[int], shots: list[int], n_episodes: int) -> Case:
    label = (
        f"{classes} classes of 20 shapes, ways {ways}, shots {shots}, 5 queries per class, "
        f"{n_episodes} episodes, seed {seed}"
    )
    spec = dict(classes=classes, ways=ways, shots=shots, q_queries=5, n_episodes=n_episodes)
    return case(label, seed=seed, **spec)


def _bad_table(says: str, variant: str) -> Mistake:
    return Mistake(says, partial(_table, variant=variant))


Q5 = Question(
    "q5",
    "nearest_neighbour_table",
    2,
    table_inputs,
    title="experiment: how hard is an N-way K-shot task?",
    reference=reference_nearest_neighbour_table,
    observe=numbers,
    claims=table_claims,
    what="the table",
    rule=(
        "accuracy[i][j] is the mean over the episodes of FixedEpisodes(data, ways[i], shots[j], "
        "q_queries, n_episodes, seed=0) of each episode's query accuracy, a query taking the "
        "label of its nearest support image (Euclidean, in pixels); half_width[i][j] is 1.96 * "
        "(the episodes' accuracies' standard deviation) / sqrt(n_episodes)"
    ),
    tolerance={"rtol": 0.0, "atol": TABLE_TOLERANCE},
    mistakes=(
        _bad_table("these are percentages; return accuracies in [0, 1]", "percent"),
        _bad_table("the table is transposed: row i is ways[i], column j is shots[j]", "transposed"),
        _bad_table("every column is the 1-shot accuracy: draw with k_shot = shots[j]", "one shot"),
        _bad_table("these classify the support images, which match themselves", "support"),
        _bad_table("each query took its farthest support image's label", "farthest"),
        _bad_table(
            "the half-widths are 1.96 standard deviations: divide by sqrt(n_episodes)", "std"
        ),
        _bad_table("the half-widths lack the factor 1.96 (95% of a normal)", "no z"),
        _bad_table(
            "the half-widths treat every query as independent; the episodes are the samples: "
            "take the standard deviation of the per-episode accuracies",
            "pooled",
        ),
    ),
    visible=(
        table_case(0, 30, [2, 5, 10], [1, 3, 5], 100),
        table_case(1, 30, [2, 5, 10], [1, 3, 5], 100),
    ),
)


EXERCISE = Exercise("00_tasks", (Q1, Q2, Q3, Q4, Q5))


def check(name: str, fn: Callable[..., Any]) -> feedback.Verdict:
    """Run the visible cases of question ``name`` on ``fn`` and print the verdict."""
    return feedback.check(EXERCISE, name, fn)
