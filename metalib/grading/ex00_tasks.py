"""Exercise 00_tasks: sampling N-way K-shot episodes (chapter 0, "Tasks").

The questions fix *what* a sampler must guarantee, not how it draws, so the judges check
properties rather than equality with :mod:`metalib.tasks`: valid and distinct indices, disjoint
support and query sets, labels consistent with the classes, every label K (or Q) times, the
same output for the same generator seed whatever the global random state, and — over many
draws from one generator — every class and image possible in every position (the chance that a
correct sampler misses one is below 1e-6 in every case where that is checked).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from metalib.grading import feedback
from metalib.grading.probes import tiny_image_classes
from metalib.grading.spec import Case, Exercise, Question

# A coverage check ("every class appears at every position") is made only when a correct
# sampler fails it with probability below this.
_MISS = 1e-6
KEYS = ("support_x", "support_y", "query_x", "query_y", "classes")


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


def judge_raises(case: Case, out: Any) -> str | None:
    """A case of input the function must refuse with a ``ValueError`` (after a valid one)."""
    if "valid_error" in out:
        valid = ", ".join(_describe(a) for a in case.kwargs["valid"])
        return f"on valid input ({valid}) it raised {out['valid_error']}"[:400]
    if out["error"] is None:
        return "expected a ValueError (this input is impossible), but the function returned"
    if out["error"] != "ValueError":
        return (
            f"expected a ValueError, got {out['error']}: {out['message']}; check the input "
            "first and raise ValueError with a message that says what to change"
        )
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


# ---------------------------------------------------------------------------------- q1


def judge_sample_classes(case: Case, out: Any) -> str | None:
    """``sample_classes(n_classes, n_way, generator) -> (n_way,)`` distinct, in random order."""
    if case.probe == "raises":
        return judge_raises(case, out)
    n_classes, n_way = case.kwargs["n_classes"], case.kwargs["n_way"]
    draws = [out["first"], out["again"], *out["many"]]
    rows = []
    for i, value in enumerate(draws):
        t, problem = _indices(value, "the result", n_way)
        problem = problem or _range_and_distinct(t, "the classes", n_classes)
        if problem:
            return problem if i == 0 else f"draw {i + 1}: {problem}"
        rows.append(t)
    problem = _reproducible(rows[0], rows[1], torch.equal)
    if problem:
        return problem
    many = torch.stack(rows[2:])  # (draws, n_way)
    d = len(many)
    p = n_way / n_classes
    problem = _coverage(
        many.flatten(), n_classes, d, p, "the classes", "every class must be possible"
    )
    if problem:
        return problem
    counts = torch.bincount(many.flatten(), minlength=n_classes).double()
    if d * p >= 50 and (counts / (d * p) - 1).abs().max() > 0.5:
        return (
            f"in {d} draws the classes were picked {counts.long().tolist()} times; a uniform "
            f"sampler picks each about {d * p:.0f} times"
        )
    for j in range(n_way):
        fix = (
            "the classes must come in random order (label j stands for the j-th class drawn), "
            "not sorted"
        )
        problem = _coverage(many[:, j], n_classes, d, 1 / n_classes, f"position {j}", fix)
        if problem:
            return problem
    return None


# ---------------------------------------------------------------------------------- q2


def judge_sample_support_query(case: Case, out: Any) -> str | None:
    """``sample_support_query(per_class, k_shot, q_queries, generator) -> (support, query)``."""
    if case.probe == "raises":
        return judge_raises(case, out)
    m, k, q = case.kwargs["per_class"], case.kwargs["k_shot"], case.kwargs["q_queries"]
    draws = [out["first"], out["again"], *out["many"]]
    pairs = []
    for i, value in enumerate(draws):
        where = "" if i == 0 else f"draw {i + 1}: "
        if not isinstance(value, (tuple, list)) or len(value) != 2:
            return f"{where}should return a pair (support, query), got {type(value).__name__}"
        s, problem = _indices(value[0], "support", k)
        if problem:
            return where + problem
        qq, problem = _indices(value[1], "query", q)
        if problem:
            return where + problem
        both = torch.cat([s, qq])
        problem = _range_and_distinct(both, "support + query", m)
        if problem:
            overlap = sorted(set(s.tolist()) & set(qq.tolist()))
            if overlap:
                problem = (
                    f"support {_show(s)} and query {_show(qq)} share images {overlap}; no image "
                    "may be in both (take K + Q distinct images, then split them)"
                )
            return where + problem
        pairs.append((s, qq))
    problem = _reproducible(
        pairs[0], pairs[1], lambda a, b: torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    )
    if problem:
        return problem
    many = pairs[2:]
    d = len(many)
    fix = "every image must be possible in the support set and in the query set"
    for name, seen, p in (
        ("the support set", torch.cat([s for s, _ in many]), k / m),
        ("the query set", torch.cat([qq for _, qq in many]), q / m),
    ):
        problem = _coverage(seen, m, d, p, name, fix)
        if problem:
            return problem
    return None


# ---------------------------------------------------------------------------------- q3


def relabel_reference(sample_classes: torch.Tensor, episode_classes: torch.Tensor) -> torch.Tensor:
    """Label ``j`` for every sample whose class is ``episode_classes[j]``."""
    match = sample_classes[:, None] == episode_classes[None, :]  # (S, N)
    if not match.any(dim=1).all():
        raise ValueError("a sample's class is not among the episode's classes")
    return match.long().argmax(dim=1)


def judge_relabel(case: Case, out: Any) -> str | None:
    """``relabel(sample_classes (S,), episode_classes (N,)) -> (S,)`` labels in 0..N-1."""
    if case.probe == "raises":
        return judge_raises(case, out)
    sample_classes = case.kwargs["sample_classes"]
    episode_classes = case.kwargs["episode_classes"]
    labels, problem = _indices(out, "the labels", len(sample_classes))
    if problem:
        return problem
    expected = relabel_reference(sample_classes, episode_classes)
    wrong = (labels != expected).nonzero().flatten()
    if len(wrong):
        i = int(wrong[0])
        c, j = int(sample_classes[i]), int(expected[i])
        return (
            f"expected labels {_show(expected)}, got {_show(labels)}: sample {i} is of class {c}, "
            f"which is episode_classes[{j}], so its label is {j}, not {int(labels[i])}"
        )
    return None


# ---------------------------------------------------------------------------------- q4


def _episode_problem(
    ep: Any, data: Any, n_way: int, k: int, q: int
) -> tuple[dict[str, torch.Tensor] | None, str | None]:
    """Check one episode; return it as tensors, or a message saying what is wrong."""
    if not isinstance(ep, dict):
        return None, f"should return a dict with keys {', '.join(KEYS)}, got {type(ep).__name__}"
    missing = [key for key in KEYS if key not in ep]
    if missing:
        return None, f"the dict has no {', '.join(missing)} (it needs {', '.join(KEYS)})"
    size = data.image_size
    classes, problem = _indices(ep["classes"], "classes", n_way)
    problem = problem or _range_and_distinct(classes, "classes", data.n_classes)
    if problem:
        return None, problem
    taken: dict[tuple[int, int], str] = {}
    for part, per in (("support", k), ("query", q)):
        x, y = ep[f"{part}_x"], ep[f"{part}_y"]
        shape = (n_way * per, 1, size, size)
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
        for i in range(len(y)):
            label = int(y[i])
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


def judge_make_episode(case: Case, out: Any) -> str | None:
    """``make_episode(data, n_way, k_shot, q_queries, generator) -> dict`` of one episode."""
    if case.probe == "raises":
        return judge_raises(case, out)
    kw = case.kwargs
    data = tiny_image_classes(**kw["data"])
    n_way, k, q = kw["n_way"], kw["k_shot"], kw["q_queries"]
    episodes = []
    for i, value in enumerate([out["first"], out["again"], *out["many"]]):
        ep, problem = _episode_problem(value, data, n_way, k, q)
        if problem:
            return problem if i == 0 else f"episode {i + 1}: {problem}"
        episodes.append(ep)

    def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
        return all(torch.equal(torch.as_tensor(a[key]), torch.as_tensor(b[key])) for key in KEYS)

    problem = _reproducible(episodes[0], episodes[1], same)
    if problem:
        return problem
    many = episodes[2:]
    d = len(many)
    classes = torch.stack([ep["classes"] for ep in many])  # (d, N)
    problem = _coverage(
        classes.flatten(),
        data.n_classes,
        d,
        n_way / data.n_classes,
        "the classes",
        "every class of the split must be possible",
    )
    if problem:
        return problem
    for j in range(n_way):
        problem = _coverage(
            classes[:, j],
            data.n_classes,
            d,
            1 / data.n_classes,
            f"classes[{j}]",
            "label j must stand for a random class (not the smallest, not always the same)",
        )
        if problem:
            return problem
    for part, per in (("support", k), ("query", q)):
        ys = torch.stack([ep[f"{part}_y"] for ep in many])  # (d, N*per)
        for pos in range(n_way * per):
            problem = _coverage(
                ys[:, pos],
                n_way,
                d,
                1 / n_way,
                f"position {pos} of {part}_y",
                f"shuffle the {part} set so that no position tells the label",
            )
            if problem:
                return problem
        images = torch.cat([(ep[f"{part}_x"][:, 0, 0, 1] * 255).round().long() for ep in many])
        problem = _coverage(
            images,
            data.per_class,
            d,
            per / data.per_class,
            f"the {part} set's images",
            "every image of a class must be possible in either set",
        )
        if problem:
            return problem
    return None


def _split(n_classes: int, per_class: int, size: int = 8, seed: int = 0) -> dict[str, int]:
    return {"n_classes": n_classes, "per_class": per_class, "size": size, "seed": seed}


def _gen(seed: int) -> dict[str, int]:
    return {"generator": seed}


def sample_classes_case(n_classes: int, n_way: int, seed: int, draws: int) -> Case:
    return Case(
        f"{n_way}-way from {n_classes} classes, seed {seed}",
        {"n_classes": n_classes, "n_way": n_way, "seed": seed, "draws": draws},
        probe="sample_classes",
    )


def support_query_case(per_class: int, k: int, q: int, seed: int, draws: int) -> Case:
    return Case(
        f"{k}-shot, {q} queries from {per_class} images, seed {seed}",
        {"per_class": per_class, "k_shot": k, "q_queries": q, "seed": seed, "draws": draws},
        probe="sample_support_query",
    )


def relabel_case(sample_classes: list[int], episode_classes: list[int]) -> Case:
    return Case(
        f"sample_classes={sample_classes}, episode_classes={episode_classes}",
        {
            "sample_classes": torch.tensor(sample_classes),
            "episode_classes": torch.tensor(episode_classes),
        },
    )


def episode_case(split: dict[str, int], n_way: int, k: int, q: int, seed: int, draws: int) -> Case:
    return Case(
        f"{n_way}-way {k}-shot {q}-query from {split['n_classes']} classes of "
        f"{split['per_class']} images, seed {seed}",
        {"data": split, "n_way": n_way, "k_shot": k, "q_queries": q, "seed": seed, "draws": draws},
        probe="make_episode",
    )


def _describe(arg: Any) -> str:
    """A case argument as a student would recognise it."""
    if isinstance(arg, torch.Tensor):
        return _show(arg)
    if isinstance(arg, dict) and len(arg) == 1:
        ((kind, spec),) = arg.items()
        if kind == "generator":
            return f"a generator seeded {spec}"
        if kind == "image_classes":
            return f"a split of {spec['n_classes']} classes x {spec['per_class']} images"
        if kind == "conv4":
            return f"a Conv4 with {spec.get('hidden', 8)} channels"
    return repr(arg)


def raises_case(label: str, bad: list[Any], valid: list[Any]) -> Case:
    """A case where ``fn(*bad)`` must raise ``ValueError`` and ``fn(*valid)`` must not."""
    return Case(label, {"args": bad, "valid": valid}, probe="raises")


EXERCISE = Exercise(
    "00_tasks",
    (
        Question(
            "q1",
            "sample_classes",
            2,
            judge_sample_classes,
            visible=(
                sample_classes_case(10, 3, seed=0, draws=300),
                sample_classes_case(5, 5, seed=1, draws=200),
                raises_case("6-way from 5 classes (impossible)", [5, 6, _gen(0)], [5, 5, _gen(0)]),
            ),
            title="N distinct classes in random order",
        ),
        Question(
            "q2",
            "sample_support_query",
            2,
            judge_sample_support_query,
            visible=(
                support_query_case(6, 2, 3, seed=0, draws=200),
                support_query_case(5, 1, 4, seed=1, draws=200),
                raises_case(
                    "3 shots + 2 queries from 4 images (impossible)",
                    [4, 3, 2, _gen(0)],
                    [4, 3, 1, _gen(0)],
                ),
            ),
            title="disjoint support and query images of one class",
        ),
        Question(
            "q3",
            "relabel",
            2,
            judge_relabel,
            visible=(
                relabel_case([7, 2, 7, 9], [9, 7, 2]),
                relabel_case([4, 0, 11, 0, 4, 11], [0, 11, 4]),
                raises_case(
                    "class 3 is not in the episode",
                    [torch.tensor([5, 3]), torch.tensor([5, 4])],
                    [torch.tensor([5, 4]), torch.tensor([5, 4])],
                ),
            ),
            title="labels 0..N-1 from classes",
        ),
        Question(
            "q4",
            "make_episode",
            4,
            judge_make_episode,
            visible=(
                episode_case(_split(8, 6), 3, 2, 3, seed=0, draws=200),
                episode_case(_split(5, 4, seed=1), 5, 1, 3, seed=1, draws=150),
                raises_case(
                    "2 shots + 5 queries from classes of 6 images (impossible)",
                    [{"image_classes": _split(8, 6)}, 3, 2, 5, _gen(0)],
                    [{"image_classes": _split(8, 6)}, 3, 2, 4, _gen(0)],
                ),
            ),
            title="a whole episode",
        ),
    ),
)


def check(name: str, fn: Callable[..., Any]) -> feedback.Verdict:
    """Run the visible cases of question ``name`` on ``fn`` and print the verdict."""
    return feedback.check(EXERCISE, name, fn)
