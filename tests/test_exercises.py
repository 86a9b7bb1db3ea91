"""The judges of the exercises: the solutions pass every case, wrong answers fail helpfully.

The reference answers are the functions of ``solutions/NN_topic.ipynb`` themselves (its code
cells executed here), run through the same path as the notebook's check cells and the grader:
probe -> plain output -> ``torch.save``/``torch.load(weights_only=True)`` -> judge.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib.util
import io
import json
import math
import time
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import ROOT
from metalib import maml
from metalib.grading import (
    ex00_tasks,
    ex01_finetuning,
    ex02_maml,
    ex03_blackbox,
    ex04_protonet,
    ex05_learned_optimizers,
    ex06_test_time_adaptation,
    ex08_meta_knowledge,
    probes,
)
from metalib.grading.feedback import evaluate_cases, run_case
from metalib.grading.spec import Case, Exercise, Question
from metalib.nets import forward_with

EXERCISES: dict[str, Exercise] = {
    "00_tasks": ex00_tasks.EXERCISE,
    "01_finetuning": ex01_finetuning.EXERCISE,
    "02_maml": ex02_maml.EXERCISE,
}


@functools.cache
def solution(name: str) -> dict[str, Any]:
    """The namespace of ``solutions/<name>.ipynb`` after running its code cells."""
    nb = json.loads((ROOT / "solutions" / f"{name}.ipynb").read_text())
    assert nb["metadata"]["workbook"]["exercise"] == name
    namespace: dict[str, Any] = {"__name__": f"solution_{name}"}
    with contextlib.redirect_stdout(io.StringIO()):
        for i, cell in enumerate(nb["cells"]):
            if cell["cell_type"] == "code":
                exec(compile("".join(cell["source"]), f"{name} cell {i}", "exec"), namespace)
    return namespace


@functools.cache
def hidden(name: str) -> dict[str, list[Case]]:
    path = ROOT / "hidden_tests" / f"ex{name}.py"
    spec = importlib.util.spec_from_file_location(f"hidden_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.HIDDEN


def all_cases(name: str, question: Question) -> list[Case]:
    return [*question.visible, *hidden(name)[question.name]]


QUESTIONS = [(name, q.name) for name, ex in EXERCISES.items() for q in ex.questions]


@pytest.mark.parametrize(("name", "qname"), QUESTIONS)
def test_solution_passes_every_case(name, qname):
    question = EXERCISES[name].question(qname)
    verdict = evaluate_cases(question, all_cases(name, question), solution(name)[question.function])
    assert verdict, str(verdict)
    assert verdict.total >= 4, f"{name} {qname}: too few cases ({verdict.total})"


@pytest.mark.parametrize("name", EXERCISES)
def test_hidden_cases_name_existing_questions_and_probes(name):
    exercise = EXERCISES[name]
    assert sorted(hidden(name)) == sorted(q.name for q in exercise.questions)
    for question in exercise.questions:
        cases = all_cases(name, question)
        assert len({c.label for c in cases}) == len(cases), f"{question.name}: labels repeat"
        for case in cases:
            assert callable(getattr(probes, case.probe, None)), case.probe


def _round_trip(value: Any) -> Any:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize(("name", "qname"), QUESTIONS)
def test_cases_and_outputs_survive_the_grader_file_format(name, qname):
    """Case kwargs go to the sandbox and outputs come back through ``weights_only`` files."""
    question = EXERCISES[name].question(qname)
    fn = solution(name)[question.function]
    for case in all_cases(name, question):
        kwargs = _round_trip(copy.deepcopy(case.kwargs))
        output = _round_trip(getattr(probes, case.probe)(fn, **kwargs))
        assert question.judge(case, output) is None, case.label


@pytest.mark.parametrize("name", EXERCISES)
def test_every_case_of_an_exercise_runs_quickly(name):
    exercise, namespace = EXERCISES[name], solution(name)
    start = time.perf_counter()
    for question in exercise.questions:
        evaluate_cases(question, all_cases(name, question), namespace[question.function])
    assert time.perf_counter() - start < 10.0, "the grader runs every case within its budget"


@pytest.mark.parametrize(("name", "qname"), QUESTIONS)
def test_a_stub_is_not_answered_yet(name, qname):
    question = EXERCISES[name].question(qname)

    def stub(*args, **kwargs):
        raise NotImplementedError("write your answer here")

    verdict = evaluate_cases(question, all_cases(name, question), stub)
    assert verdict.passed == 0
    assert verdict.failures == ("not answered yet (write your answer here)",)


@pytest.mark.parametrize(("name", "qname"), QUESTIONS)
def test_refusing_every_input_scores_nothing(name, qname):
    """A ValueError case passes only if the function also works on valid input."""
    question = EXERCISES[name].question(qname)

    def refuse(*args, **kwargs):
        raise ValueError("no")

    verdict = evaluate_cases(question, all_cases(name, question), refuse)
    assert verdict.passed == 0, str(verdict)
    raising = [c for c in question.visible if c.probe == "raises"]
    if raising:
        message = run_case(question, raising[0], refuse)
        assert "on valid input" in message and "raised ValueError: no" in message, message


def test_check_prints_one_line_per_question(capsys):
    verdict = ex00_tasks.check("q3", solution("00_tasks")["relabel"])
    assert verdict and capsys.readouterr().out == "q3: passed (3 of 3 checks)\n"
    verdict = ex01_finetuning.check("q5", lambda model, x, y: 2.0)
    assert not verdict and "expected accuracy" in capsys.readouterr().out


# ------------------------------------------------------------------------ wrong answers, 00


def _classes_checked(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    def wrapped(n_classes, n_way, generator):
        if n_way > n_classes:
            raise ValueError("too many ways")
        return fn(n_classes, n_way, generator)

    return wrapped


def _support_query_checked(fn):
    def wrapped(per_class, k_shot, q_queries, generator):
        if k_shot + q_queries > per_class:
            raise ValueError("too many images")
        return fn(per_class, k_shot, q_queries, generator)

    return wrapped


def _episode(variant: str):
    """The solution's make_episode with one thing done wrong."""
    ns = solution("00_tasks")
    sample_classes, relabel = ns["sample_classes"], ns["relabel"]

    def make_episode(data, n_way, k_shot, q_queries, generator):
        if k_shot + q_queries > data.per_class or n_way > data.n_classes:
            raise ValueError("impossible episode")
        classes = sample_classes(data.n_classes, n_way, generator)
        out = {"classes": classes}
        for part, per, offset in (("support", k_shot, 0), ("query", q_queries, k_shot)):
            c = classes.repeat_interleave(per)
            m = torch.stack(
                [torch.randperm(data.per_class, generator=generator) for _ in range(n_way)]
            )
            m = m[:, offset : offset + per].flatten()  # a fresh permutation per set: overlaps
            if variant != "overlap":
                m = torch.arange(offset, offset + per).repeat(n_way)
            if variant != "grouped":
                order = torch.randperm(len(c), generator=generator)
                c, m = c[order], m[order]
            out[f"{part}_x"] = data.get(c, m)
            out[f"{part}_y"] = c if variant == "class labels" else relabel(c, classes)
            if variant == "uint8":
                out[f"{part}_x"] = data.images[c, m].unsqueeze(1)
        return tuple(out.values()) if variant == "tuple" else out

    return make_episode


WRONG_00 = {
    "sorted classes": (
        "q1",
        _classes_checked(lambda n, k, g: torch.randperm(n, generator=g)[:k].sort().values),
        "random order",
    ),
    "global generator": (
        "q1",
        _classes_checked(lambda n, k, g: torch.randperm(n)[:k]),
        "torch's global generator",
    ),
    "classes with repeats": (
        "q1",
        _classes_checked(lambda n, k, g: torch.randint(n, (k,), generator=g)),
        "must be distinct",
    ),
    "one class short": (
        "q1",
        _classes_checked(lambda n, k, g: torch.randperm(n - 1, generator=g)[:k]),
        "should have shape (5,)",
    ),
    "no ValueError": (
        "q1",
        lambda n, k, g: torch.randperm(n, generator=g)[:k],
        "expected a ValueError",
    ),
    "float classes": (
        "q1",
        _classes_checked(lambda n, k, g: torch.randperm(n, generator=g)[:k].float()),
        "integer indices",
    ),
    "support and query drawn apart": (
        "q2",
        _support_query_checked(
            lambda m, k, q, g: (
                torch.randperm(m, generator=g)[:k],
                torch.randperm(m, generator=g)[:q],
            )
        ),
        "share images",
    ),
    "always the first images": (
        "q2",
        _support_query_checked(lambda m, k, q, g: (torch.arange(k), torch.arange(k, k + q))),
        "every image must be possible",
    ),
    "labels by sorted class": (
        "q3",
        lambda sample_classes, episode_classes: torch.searchsorted(
            episode_classes.sort().values, sample_classes
        ),
        "so its label is",
    ),
    "class numbers as labels": (
        "q3",
        lambda sample_classes, episode_classes: sample_classes,
        "expected labels",
    ),
    "grouped, not shuffled": ("q4", _episode("grouped"), "no position tells the label"),
    "class numbers in y": ("q4", _episode("class labels"), "should hold labels 0.."),
    "support and query overlap": ("q4", _episode("overlap"), "must be distinct"),
    "uint8 images": ("q4", _episode("uint8"), "float32 images"),
    "a tuple, not a dict": ("q4", _episode("tuple"), "should return a dict"),
}


# ------------------------------------------------------------------------ wrong answers, 01


def _freeze(variant: str):
    def freeze_blocks(model, k):
        if not 0 <= k <= 4:
            raise ValueError("k must be 0..4")
        for i, block in enumerate(list(model.body)[:4]):
            if variant == "one too few":
                block.requires_grad_(i >= k - 1)
            elif variant == "rest untouched":
                if i < k:
                    block.requires_grad_(False)
            else:
                block.requires_grad_(i >= k)
        if variant != "rest untouched":
            model.head.requires_grad_(True)
        return None if variant == "returns None" else model

    return freeze_blocks


def _head(variant: str):
    def new_head(model, n_way, generator):
        new = {"in place": model, "shallow": copy.copy(model)}.get(variant) or copy.deepcopy(model)
        d = model.feature_dim
        head = nn.Linear(d, n_way, dtype=model.head.weight.dtype)  # global generator
        with torch.no_grad():
            if variant == "zeros":
                head.weight.zero_()
                head.bias.zero_()
            elif variant != "global generator":
                head.weight.uniform_(-(d**-0.5), d**-0.5, generator=generator)
                head.bias.uniform_(-(d**-0.5), d**-0.5, generator=generator)
        new.head = head
        return new

    return new_head


def _step(variant: str):
    def sgd_step(model, x, y, lr):
        loss = F.cross_entropy(model(x), y)
        loss.backward()  # gradients pile up in p.grad unless cleared
        with torch.no_grad():
            for p in model.parameters():
                if p.grad is not None:
                    p += lr * p.grad if variant == "wrong sign" else -lr * p.grad
                    if variant != "grads pile up":
                        p.grad = None
        if variant == "loss after":
            return F.cross_entropy(model(x), y).item()
        return loss.item()

    return sgd_step


def _finetune(variant: str):
    ns = solution("01_finetuning")

    def finetune(model, support_x, support_y, steps, lr, frozen_blocks):
        net = model if variant == "no copy" else copy.deepcopy(model)
        ns["freeze_blocks"](net, frozen_blocks)
        if variant == "adam":
            opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=lr)
            for _ in range(steps):
                opt.zero_grad()
                F.cross_entropy(net(support_x), support_y).backward()
                opt.step()
            return net
        for _ in range(steps):
            ns["sgd_step"](net, support_x, support_y, lr)
        return net

    return finetune


def _accuracy_one_at_a_time(model, x, y):
    with torch.no_grad():
        predicted = torch.cat([model(x[i : i + 1]).argmax(dim=-1) for i in range(len(x))])
    return (predicted == y).float().mean().item()


WRONG_01 = {
    "one block too few": ("q1", _freeze("one too few"), "should be frozen"),
    "the rest left as it was": ("q1", _freeze("rest untouched"), "should be trainable"),
    "returns None": ("q1", _freeze("returns None"), "same object"),
    "no ValueError": ("q1", lambda model, k: model, "expected a ValueError"),
    "head replaced in place": ("q2", _head("in place"), "the original network itself"),
    "a shallow copy": ("q2", _head("shallow"), "the original network changed"),
    "a zero head": ("q2", _head("zeros"), "standard deviation"),
    "the global generator": ("q2", _head("global generator"), "seeded alike"),
    "gradients pile up": ("q3", _step("grads pile up"), "off by up to"),
    "gradient ascent": ("q3", _step("wrong sign"), "off by up to"),
    "the loss after the step": ("q3", _step("loss after"), "before the step"),
    "the original fine-tuned": ("q4", _finetune("no copy"), "the original network changed"),
    "Adam": ("q4", _finetune("adam"), "gradient descent"),
    "the number right": ("q5", lambda model, x, y: _count_right(model, x, y), "the number right"),
    "one query at a time": ("q5", _accuracy_one_at_a_time, "one batch"),
}


def _count_right(model, x, y):
    with torch.no_grad():
        return int((model(x).argmax(dim=-1) == y).sum())


# ------------------------------------------------------------------------ wrong answers, 02


def _inner(variant: str):
    """An inner loop that takes the right steps but keeps too little of their graph."""

    def inner_loop(model, params, x, y, loss_fn, lr, steps):
        fast = dict(params)
        for _ in range(steps):
            if variant == "no graph":
                fast = {k: w.detach().requires_grad_() for k, w in fast.items()}
            loss = loss_fn(torch.func.functional_call(model, fast, (x,)), y)
            grads = torch.autograd.grad(loss, list(fast.values()))  # no create_graph
            fast = {k: w - lr * g for (k, w), g in zip(fast.items(), grads, strict=True)}
            if variant == "no graph":
                fast = {k: w.detach() for k, w in fast.items()}
        return fast

    return inner_loop


def _inner_in_place(model, params, x, y, loss_fn, lr, steps):
    for _ in range(steps):
        loss = loss_fn(model(x), y)
        grads = torch.autograd.grad(loss, list(model.parameters()))
        with torch.no_grad():
            for p, g in zip(model.parameters(), grads, strict=True):
                p -= lr * g
    return {k: p for k, p in model.named_parameters() if k in params}


def _inner_ascent(model, params, x, y, loss_fn, lr, steps):
    return solution("02_maml")["inner_loop"](model, params, x, y, loss_fn, -lr, steps)


def _maml(variant: str):
    ns = solution("02_maml")

    def maml_meta_gradient(model, params, sx, sy, qx, qy, loss_fn, lr, steps):
        inner = _inner("detached") if variant == "detached inner loop" else ns["inner_loop"]
        fast = inner(model, params, sx, sy, loss_fn, lr, 0 if variant == "no adaptation" else steps)
        loss = loss_fn(torch.func.functional_call(model, fast, (qx,)), qy)
        wrt = fast if variant == "wrt adapted" else params
        return dict(zip(params, torch.autograd.grad(loss, list(wrt.values())), strict=True))

    return maml_meta_gradient


def _fomaml(variant: str):
    ns = solution("02_maml")

    def fomaml_meta_gradient(model, params, sx, sy, qx, qy, loss_fn, lr, steps):
        if variant == "second order":
            return ns["maml_meta_gradient"](model, params, sx, sy, qx, qy, loss_fn, lr, steps)
        return ns["fomaml_meta_gradient"](model, params, sx, sy, qx, qy, loss_fn, lr, 0)

    return fomaml_meta_gradient


def _reptile(variant: str):
    def reptile_update(params, adapted, beta):
        new = {}
        for k, theta in params.items():
            w = adapted[k]
            if variant != "no ValueError" and w.shape[1:] != theta.shape:
                raise ValueError("adapted needs a task axis")
            if variant == "sum":
                new[k] = theta + beta * (w - theta).sum(dim=0)
            elif variant == "wrong sign":
                new[k] = theta - beta * (w - theta).mean(dim=0)
            elif variant == "in place":
                new[k] = theta.add_(beta * (w - theta).mean(dim=0))
            else:
                new[k] = theta + beta * (w - theta).mean(dim=0)
        return new

    return reptile_update


SECOND_ORDER_MISSING = "the second-order term is missing"
WRONG_02 = {
    "inner gradients without create_graph": ("q1", _inner("detached"), "it is first order"),
    "inner loop under no graph": ("q1", _inner("no graph"), "carry no graph back to params"),
    "the model trained in place": ("q1", _inner_in_place, "the network's own weights changed"),
    "gradient ascent inside": ("q1", _inner_ascent, "this is gradient ascent"),
    "a detached inner loop": ("q2", _maml("detached inner loop"), SECOND_ORDER_MISSING),
    "gradient wrt the adapted weights": ("q2", _maml("wrt adapted"), SECOND_ORDER_MISSING),
    "no adaptation": ("q2", _maml("no adaptation"), "before any inner step"),
    "the Hessian term kept": ("q3", _fomaml("second order"), "this is the second-order"),
    "the query gradient at θ": ("q3", _fomaml("at theta"), "before any inner step"),
    "a sum, not a mean": ("q4", _reptile("sum"), "times too far"),
    "away from the tasks": ("q4", _reptile("wrong sign"), "wrong sign"),
    "θ changed in place": ("q4", _reptile("in place"), "changed in place"),
    "no ValueError without the task axis": (
        "q4",
        _reptile("no ValueError"),
        "expected a ValueError",
    ),
}


WRONG = (
    [("00_tasks", k, *v) for k, v in WRONG_00.items()]
    + [("01_finetuning", k, *v) for k, v in WRONG_01.items()]
    + [("02_maml", k, *v) for k, v in WRONG_02.items()]
)


@pytest.mark.parametrize(("name", "variant", "qname", "fn", "says"), WRONG, ids=lambda v: v)
def test_a_wrong_answer_fails_with_a_helpful_message(name, variant, qname, fn, says):
    question = EXERCISES[name].question(qname)
    verdict = evaluate_cases(question, question.visible, fn)
    assert not verdict, f"{variant}: passed the visible checks"
    assert any(says in f for f in verdict.failures), f"{variant}: {verdict}"
    assert not any("could not be checked" in f for f in verdict.failures), str(verdict)
    everything = evaluate_cases(question, all_cases(name, question), fn)
    assert everything.passed < everything.total


def test_every_question_has_a_wrong_answer():
    assert {(n, q) for n, _, q, _, _ in WRONG} == set(QUESTIONS)


# ------------------------------------------------------------ other right answers, 02


def _inner_with_func_grad(model, params, x, y, loss_fn, lr, steps):
    def loss(p):
        return loss_fn(torch.func.functional_call(model, p, (x,)), y)

    fast = params
    for _ in range(steps):
        grads = torch.func.grad(loss)(fast)
        fast = {k: w - lr * grads[k] for k, w in fast.items()}
    return fast


def _maml_with_backward(model, params, sx, sy, qx, qy, loss_fn, lr, steps):
    fast = _inner_with_func_grad(model, params, sx, sy, loss_fn, lr, steps)
    loss_fn(torch.func.functional_call(model, fast, (qx,)), qy).backward()
    return {k: p.grad for k, p in params.items()}


def _fomaml_by_detaching(model, params, sx, sy, qx, qy, loss_fn, lr, steps):
    fast = solution("02_maml")["inner_loop"](model, params, sx, sy, loss_fn, lr, steps)
    fast = {k: w.detach().requires_grad_() for k, w in fast.items()}
    loss = loss_fn(torch.func.functional_call(model, fast, (qx,)), qy)
    return dict(zip(fast, torch.autograd.grad(loss, list(fast.values())), strict=True))


def _reptile_interpolating(params, adapted, beta):
    if any(adapted[k].shape[1:] != t.shape for k, t in params.items()):
        raise ValueError("adapted needs a leading task axis")
    return {k: torch.lerp(t, adapted[k].mean(dim=0), beta) for k, t in params.items()}


@pytest.mark.parametrize(
    ("qname", "fn"),
    [
        ("q1", _inner_with_func_grad),
        ("q2", _maml_with_backward),
        ("q3", _fomaml_by_detaching),
        ("q4", _reptile_interpolating),
    ],
    ids=["torch.func.grad", "backward", "detached after", "lerp"],
)
def test_other_right_answers_to_02_pass_every_case(qname, fn):
    """The judges compare values, not one way of computing them (float32 within tolerance)."""
    question = ex02_maml.EXERCISE.question(qname)
    verdict = evaluate_cases(question, all_cases("02_maml", question), fn)
    assert verdict, str(verdict)


def test_a_float32_head_on_a_float64_model_fails_a_hidden_case():
    new_head = solution("01_finetuning")["new_head"]
    question = ex01_finetuning.EXERCISE.question("q2")
    case = next(c for c in hidden("01_finetuning")["q2"] if "float64" in c.label)
    assert run_case(question, case, new_head) is None

    def keeps_float32(model, n_way, generator):
        net = copy.deepcopy(model)
        net.head = nn.Linear(model.feature_dim, n_way)
        bound = 1 / math.sqrt(model.feature_dim)
        with torch.no_grad():
            net.head.weight.uniform_(-bound, bound, generator=generator)
            net.head.bias.uniform_(-bound, bound, generator=generator)
        return net

    message = run_case(question, case, keeps_float32)
    assert message is not None and "dtype torch.float64" in message


def test_a_raised_error_is_feedback_not_a_crash():
    question = ex00_tasks.EXERCISE.question("q4")

    def broken(data, n_way, k_shot, q_queries, generator):
        return data.get(torch.zeros(3), torch.zeros(4))

    message = run_case(question, question.visible[0], broken)
    assert message is not None and "raised ValueError" in message


# ------------------------------------------------------------------------ 03 and 04
# Later exercises join the registry only while their own tests run (monkeypatch), so the generic
# tests above, parametrized at collection, keep their cases; these wrappers run them on the new
# exercises.

NEW_EXERCISES: dict[str, Exercise] = {
    "03_blackbox": ex03_blackbox.EXERCISE,
    "04_protonet": ex04_protonet.EXERCISE,
    "05_learned_optimizers": ex05_learned_optimizers.EXERCISE,
    "06_test_time_adaptation": ex06_test_time_adaptation.EXERCISE,
    "08_meta_knowledge": ex08_meta_knowledge.EXERCISE,
}
NEW_QUESTIONS = [(name, q.name) for name, ex in NEW_EXERCISES.items() for q in ex.questions]


@pytest.fixture
def registered(monkeypatch):
    for name, exercise in NEW_EXERCISES.items():
        monkeypatch.setitem(EXERCISES, name, exercise)


@pytest.mark.usefixtures("registered")
@pytest.mark.parametrize(("name", "qname"), NEW_QUESTIONS)
def test_new_solution_passes_every_case_through_the_file_format(name, qname):
    test_solution_passes_every_case(name, qname)
    test_cases_and_outputs_survive_the_grader_file_format(name, qname)


@pytest.mark.usefixtures("registered")
@pytest.mark.parametrize(("name", "qname"), NEW_QUESTIONS)
def test_new_stub_and_refusal_score_nothing(name, qname):
    test_a_stub_is_not_answered_yet(name, qname)
    test_refusing_every_input_scores_nothing(name, qname)


@pytest.mark.usefixtures("registered")
@pytest.mark.parametrize("name", list(NEW_EXERCISES))
def test_new_hidden_cases_and_speed(name):
    test_hidden_cases_name_existing_questions_and_probes(name)
    test_every_case_of_an_exercise_runs_quickly(name)


def _protos(variant: str):
    def prototypes(support_features, support_y, n_way):
        one_hot = F.one_hot(support_y, n_way).to(support_features.dtype)
        counts = one_hot.sum(dim=1)
        if variant != "no ValueError" and (counts == 0).any():
            raise ValueError("a class has no example")
        sums = one_hot.transpose(1, 2) @ support_features
        t, m, d = support_features.shape
        if variant == "sum":
            return sums
        if variant == "sorted":
            return support_features.view(t, n_way, m // n_way, d).mean(2)
        if variant == "M/N":
            return sums / (m / n_way)
        if variant == "pooled":
            return torch.stack([support_features[support_y == n].mean(0) for n in range(n_way)])
        return sums / counts.unsqueeze(-1)

    return prototypes


def _distances(variant: str):
    def squared_distances(query_features, protos):
        d = (query_features.unsqueeze(2) - protos.unsqueeze(1)).square()
        if variant == "mean":
            return d.mean(-1)
        if variant == "swapped":
            return d.sum(-1).transpose(1, 2)
        return torch.cdist(query_features, protos)  # the distance, not its square

    return squared_distances


def _proto_loss(variant: str):
    ns = solution("04_protonet")

    def protonet_loss(encoder, episode):
        if variant == "apart":
            sf = torch.stack([encoder(x) for x in episode.support_x])
            qf = torch.stack([encoder(x) for x in episode.query_x])
        elif variant == "one batch":
            t, m = episode.support_x.shape[:2]
            f = encoder(torch.cat([episode.support_x.flatten(0, 1), episode.query_x.flatten(0, 1)]))
            sf, qf = f[: t * m].view(t, m, -1), f[t * m :].view(t, -1, f.shape[-1])
        else:
            sf, qf = ns["embed_tasks"](encoder, episode.support_x, episode.query_x)
        if variant == "no graph":
            sf, qf = sf.detach(), qf.detach()
        protos = ns["prototypes"](sf, episode.support_y, episode.n_way)
        d = ns["squared_distances"](qf, protos)
        logits = {"plus": d, "sqrt": -d.sqrt()}.get(variant, -d)
        reduction = "sum" if variant == "summed" else "mean"
        loss = F.cross_entropy(logits.flatten(0, 1), episode.query_y.flatten(), reduction=reduction)
        right = (logits.argmax(-1) == episode.query_y).float()
        return loss, right.sum(-1) if variant == "count" else right.mean(-1)

    return protonet_loss


def _cosine(variant: str):
    def cosine_logits(query_features, protos, temperature):
        q, c = F.normalize(query_features, dim=-1), F.normalize(protos, dim=-1)
        cos = q @ c.transpose(1, 2)
        if variant == "unnormalised":
            return temperature * query_features @ protos.transpose(1, 2)
        if variant == "no temperature":
            return cos
        if variant == "divided":
            return cos / temperature
        if variant == "float":  # a Python number: no gradient reaches the temperature
            return (temperature.item() if torch.is_tensor(temperature) else temperature) * cos
        return temperature * (1 - cos)  # a cosine distance

    return cosine_logits


WRONG_04 = {
    "prototype = sum": ("q1", _protos("sum"), "not their mean"),
    "support assumed sorted by class": ("q1", _protos("sorted"), "sorted by class"),
    "divided by M/N": ("q1", _protos("M/N"), "its own class's count"),
    "tasks pooled": ("q1", _protos("pooled"), "the task axis is missing"),
    "nan for an empty class": ("q1", _protos("no ValueError"), "expected a ValueError"),
    "distance not squared": ("q2", _distances("sqrt"), "not its square"),
    "mean over features": ("q2", _distances("mean"), "mean over the"),
    "axes swapped": ("q2", _distances("swapped"), "swapped"),
    "+distance as logits": ("q3", _proto_loss("plus"), "+distance"),
    "distance not squared in the loss": ("q3", _proto_loss("sqrt"), "not squared"),
    "summed cross-entropy": ("q3", _proto_loss("summed"), "sum of the queries"),
    "support and query embedded apart": ("q3", _proto_loss("apart"), "separate batches"),
    "tasks embedded in one batch": ("q3", _proto_loss("one batch"), "mixed them"),
    "features detached": ("q3", _proto_loss("no graph"), "no graph back to the encoder"),
    "accuracy as a count": ("q3", _proto_loss("count"), "numbers of right queries"),
    "cosine unnormalised": ("q4", _cosine("unnormalised"), "not normalised"),
    "no temperature": ("q4", _cosine("no temperature"), "is missing"),
    "divided by τ": ("q4", _cosine("divided"), "divided by τ"),
    "temperature as a float": ("q4", _cosine("float"), "cut it"),
    "cosine distance": ("q4", _cosine("distance"), "cosine distance"),
}


def _tokens(variant: str):
    def make_tokens(support_features, support_y, query_features, n_slots):
        if variant != "no ValueError" and support_y.max() >= n_slots:
            raise ValueError("label without a slot")
        code = F.one_hot(support_y, n_slots).to(support_features.dtype)
        zeros = query_features.new_zeros(*query_features.shape[:2], n_slots)
        support = torch.cat([support_features, code], -1)
        query = torch.cat([query_features, zeros], -1)
        if variant == "number":
            support = torch.cat([support_features, support_y.unsqueeze(-1).to(code.dtype)], -1)
        elif variant == "task width":
            support = torch.cat([support_features, F.one_hot(support_y).to(code.dtype)], -1)
        elif variant == "code first":
            support = torch.cat([code, support_features], -1)
        elif variant == "ones":
            query = torch.cat([query_features, zeros + 1], -1)
        elif variant == "no zeros":
            query = query_features
        return support, query

    return make_tokens


def _lstm(variant: str):
    def lstm_forward(lstm, head, support_tokens, query_tokens):
        t, p = query_tokens.shape[:2]
        _, (h, c) = lstm(support_tokens)
        if variant == "sequence":
            return head(lstm(query_tokens, (h, c))[0])
        if variant == "state only":
            return head(h[-1]).unsqueeze(1).expand(t, p, -1)
        if variant == "zero state":
            h, c = torch.zeros_like(h), torch.zeros_like(c)
        if variant == "no cell":
            c = torch.zeros_like(c)
        state = (h.repeat_interleave(p, 1), c.repeat_interleave(p, 1))
        with torch.set_grad_enabled(variant != "no grad"):
            out, _ = lstm(query_tokens.reshape(t * p, 1, -1), state)
            return head(out.reshape(t, p, -1))

    return lstm_forward


def _mask(variant: str):
    def attention_mask(n_support, n_query):
        n = n_support + n_query
        blocked = torch.ones(n, n, dtype=torch.bool)
        blocked[:, :n_support] = False
        if variant == "queries see queries":
            blocked[n_support:, n_support:] = False
        elif variant != "no self":
            blocked[range(n_support, n), range(n_support, n)] = False
        if variant == "causal":
            return torch.ones(n, n, dtype=torch.bool).triu(1)
        if variant == "float":
            return torch.zeros(n, n).masked_fill(blocked, float("-inf"))
        return ~blocked if variant == "inverted" else blocked

    return attention_mask


def _qiao(variant: str):
    def predicted_weight_logits(phi, support_features, support_y, query_features, n_way, scale):
        a = F.normalize(support_features, dim=-1)
        if variant == "raw mean":
            a = support_features
        one_hot = F.one_hot(support_y, n_way).to(a.dtype)
        if variant == "phi first":
            a = phi(a)
        mean = one_hot.transpose(1, 2) @ a / one_hot.sum(1).unsqueeze(-1)
        w = mean if variant in ("no phi", "phi first") else phi(mean)
        if variant == "detached":
            w = w.detach()
        if variant != "unnormalised weights":
            w = F.normalize(w, dim=-1)
        q = F.normalize(query_features, dim=-1)
        if variant == "phi on queries":
            q = F.normalize(phi(q), dim=-1)
        logits = q @ w.transpose(1, 2)
        return logits if variant == "no scale" else scale * logits

    return predicted_weight_logits


WRONG_03 = {
    "the label as a number": ("q1", _tokens("number"), "appended as one number"),
    "a one-hot as wide as the task": ("q1", _tokens("task width"), "number of classes of this"),
    "the code first": ("q1", _tokens("code first"), "the code comes first"),
    "ones for the query's label": ("q1", _tokens("ones"), "hold ones"),
    "queries without label slots": ("q1", _tokens("no zeros"), "needs n_slots zeros"),
    "no ValueError for a label without slot": (
        "q1",
        _tokens("no ValueError"),
        "expected a ValueError",
    ),
    "queries read as one sequence": ("q2", _lstm("sequence"), "one sequence after the support"),
    "queries from a zero state": ("q2", _lstm("zero state"), "support was ignored"),
    "the cell state dropped": ("q2", _lstm("no cell"), "cell state c was dropped"),
    "the support's state as the answer": ("q2", _lstm("state only"), "never read"),
    "queries under no_grad": ("q2", _lstm("no grad"), "carry no graph back to the LSTM"),
    "True for allowed": ("q3", _mask("inverted"), "True and False are swapped"),
    "queries see each other": ("q3", _mask("queries see queries"), "attend to each other"),
    "a causal mask": ("q3", _mask("causal"), "causal mask"),
    "a float mask": ("q3", _mask("float"), "return a bool tensor"),
    "a query blind to itself": ("q3", _mask("no self"), "cannot attend to itself"),
    "raw activations averaged": ("q4", _qiao("raw mean"), "averaged before being normalised"),
    "weights not normalised": ("q4", _qiao("unnormalised weights"), "weights were not normal"),
    "φ on the queries": ("q4", _qiao("phi on queries"), "applied to the queries too"),
    "φ before the mean": ("q4", _qiao("phi first"), "before the mean"),
    "no φ": ("q4", _qiao("no phi"), "cosine prototypes"),
    "no scale": ("q4", _qiao("no scale"), "is missing"),
    "weights detached": ("q4", _qiao("detached"), "no graph back to φ"),
}

WRONG_NEW = [("03_blackbox", k, *v) for k, v in WRONG_03.items()] + [
    ("04_protonet", k, *v) for k, v in WRONG_04.items()
]


@pytest.mark.usefixtures("registered")
@pytest.mark.parametrize(("name", "variant", "qname", "fn", "says"), WRONG_NEW, ids=lambda v: v)
def test_new_wrong_answer_fails_with_a_helpful_message(name, variant, qname, fn, says):
    test_a_wrong_answer_fails_with_a_helpful_message(name, variant, qname, fn, says)


def test_every_new_question_has_a_wrong_answer():
    questions_0304 = {(n, q) for n, q in NEW_QUESTIONS if n.startswith(("03_", "04_"))}
    assert {(n, q) for n, _, q, _, _ in WRONG_NEW} == questions_0304


def _prototypes_by_masks(support_features, support_y, n_way):
    out = []
    for f, y in zip(support_features, support_y, strict=True):
        if any((y == n).sum() == 0 for n in range(n_way)):
            raise ValueError("every class needs an example")
        out.append(torch.stack([f[y == n].mean(0) for n in range(n_way)]))
    return torch.stack(out)


def _loss_by_log_softmax(encoder, episode):
    losses, accs = [], []
    for t in range(episode.n_tasks):
        f = encoder(torch.cat([episode.support_x[t], episode.query_x[t]]))
        sf, qf = f[: episode.support_x.shape[1]], f[episode.support_x.shape[1] :]
        protos = _prototypes_by_masks(sf[None], episode.support_y[t : t + 1], episode.n_way)[0]
        logp = (-(torch.cdist(qf, protos) ** 2)).log_softmax(-1)
        losses.append(-logp.gather(1, episode.query_y[t][:, None]).squeeze(1))
        accs.append((logp.argmax(-1) == episode.query_y[t]).double().mean())
    return torch.cat(losses).mean(), torch.stack(accs)


@pytest.mark.parametrize(
    ("qname", "fn"),
    [
        ("q1", _prototypes_by_masks),
        ("q2", lambda q, c: torch.cdist(q, c) ** 2),
        (
            "q2",
            lambda q, c: (
                q.square().sum(-1, keepdim=True)
                - 2 * q @ c.transpose(1, 2)
                + c.square().sum(-1)[:, None]
            ),
        ),
        ("q3", _loss_by_log_softmax),
        (
            "q4",
            lambda q, c, t: t * F.cosine_similarity(q.unsqueeze(2), c.unsqueeze(1), dim=-1),
        ),
    ],
    ids=["masks", "cdist", "expanded", "log_softmax per task", "cosine_similarity"],
)
def test_other_right_answers_to_04_pass_every_case(qname, fn):
    question = ex04_protonet.EXERCISE.question(qname)
    verdict = evaluate_cases(question, all_cases("04_protonet", question), fn)
    assert verdict, str(verdict)


def _lstm_query_by_query(lstm, head, support_tokens, query_tokens):
    rows = []
    for s, q in zip(support_tokens, query_tokens, strict=True):
        _, state = lstm(s[None])
        rows.append(torch.cat([lstm(x[None, None], state)[0][0] for x in q]))
    return head(torch.stack(rows))


def _mask_by_blocks(n_support, n_query):
    eye = torch.eye(n_query, dtype=torch.bool)
    top = torch.cat([torch.zeros(n_support, n_support), torch.ones(n_support, n_query)], 1)
    bottom = torch.cat([torch.zeros(n_query, n_support), ~eye], 1)
    return torch.cat([top, bottom]).bool()


def _qiao_by_loops(phi, support_features, support_y, query_features, n_way, scale):
    out = []
    for f, y, q in zip(support_features, support_y, query_features, strict=True):
        a = f / f.norm(dim=-1, keepdim=True)
        w = torch.stack([phi(a[y == n].mean(0)) for n in range(n_way)])
        w = w / w.norm(dim=-1, keepdim=True)
        out.append(scale * F.cosine_similarity(q[:, None], w[None], dim=-1))
    return torch.stack(out)


def _tokens_by_eye(support_features, support_y, query_features, n_slots):
    if support_y.max() >= n_slots:
        raise ValueError("one slot per label")
    eye = torch.eye(n_slots, dtype=support_features.dtype)
    pad = torch.zeros(*query_features.shape[:-1], n_slots, dtype=query_features.dtype)
    return (
        torch.cat([support_features, eye[support_y]], -1),
        torch.cat([query_features, pad], -1),
    )


@pytest.mark.parametrize(
    ("qname", "fn"),
    [
        ("q1", _tokens_by_eye),
        ("q2", _lstm_query_by_query),
        ("q3", _mask_by_blocks),
        ("q4", _qiao_by_loops),
    ],
    ids=["eye rows", "query by query", "blocks", "loops"],
)
def test_other_right_answers_to_03_pass_every_case(qname, fn):
    question = ex03_blackbox.EXERCISE.question(qname)
    verdict = evaluate_cases(question, all_cases("03_blackbox", question), fn)
    assert verdict, str(verdict)


# ------------------------------------------------------------------------ 05 and 06
# Registered with 03 and 04 above (NEW_EXERCISES), whose wrappers run the generic tests on them.

QUESTIONS_0506 = [(name, q) for name, q in NEW_QUESTIONS if name.startswith(("05_", "06_"))]


def _preprocess(variant: str):
    def preprocess_gradients(grad, p=10.0):
        if p <= 0 and variant != "no ValueError":
            raise ValueError("p must be positive")
        big = grad.abs() >= math.exp(-p)
        if variant == "swapped":
            big = ~big
        log = grad.log() if variant == "no abs" else grad.abs().log()
        first = torch.where(big, log if variant == "no /p" else log / p, -torch.ones_like(grad))
        sign = torch.ones_like(grad) if variant == "no sign" else grad.sign()
        small = grad if variant == "small g" else grad * math.exp(p)
        return torch.stack([first, torch.where(big, sign, small)], 0 if variant == "dim 0" else -1)

    return preprocess_gradients


def _lstm_step(variant: str):
    def lstm_step(cells, head, grad, state, p=10.0, output_scale=0.1):
        x = solution("05_learned_optimizers")["preprocess_gradients"](grad, p)
        if variant == "one input":
            x = x.reshape(1, -1)  # the whole gradient as one row
        elif variant == "interleaved":
            x = x.reshape(2, -1).T  # (n, 2), but each row mixes two coordinates
        elif variant == "raw":
            x = grad[:, None]
        if variant == "zero state":
            state = [(torch.zeros_like(h), torch.zeros_like(c)) for h, c in state]
        new = []
        for i, (cell, (h, c)) in enumerate(zip(cells, state, strict=True)):
            h, c = cell(x, (h, c))
            new.append((c, h) if variant == "c, h" else (h, c))
            if variant == "in place":
                state[i] = (h, c)
            x = h
        update = head(x).squeeze(-1) * (1.0 if variant == "no scale" else output_scale)
        if variant == "detached":
            update = update.detach()
        if variant == "no state":
            return update
        return update, state if variant == "old state" else new

    return lstm_step


def _meta_loss(variant: str):
    def meta_loss(optimizer, W, y, theta0, steps):
        def f(theta):
            return ((W @ theta.unsqueeze(-1)).squeeze(-1) - y).square().sum(-1)

        theta = theta0.detach().requires_grad_()
        state = optimizer.initial_state(theta.numel(), theta)
        losses = [f(theta)]
        for _ in range(steps):
            if variant == "theta detached":  # a leaf at every step cuts the path through θ
                theta = theta.detach().requires_grad_()
                losses[-1] = f(theta)
            total = losses[-1].mean() if variant == "grad of mean" else losses[-1].sum()
            second = variant == "second order"
            (g,) = torch.autograd.grad(total, theta, retain_graph=True, create_graph=second)
            if variant == "fresh state":
                state = optimizer.initial_state(theta.numel(), theta)
            update, state = optimizer(g.flatten(), state)
            theta = (
                theta - update.view_as(theta)
                if variant == "minus"
                else theta + update.view(theta.shape)
            )
            losses.append(f(theta))
        L = torch.stack(losses)  # (T + 1, B)
        out = {
            "with theta0": L.sum(0).mean(),
            "up to T-1": L[:-1].sum(0).mean(),
            "final": L[-1].mean(),
            "mean over steps": L[1:].mean(0).mean(),
            "sum over problems": L[1:].sum(),
        }.get(variant, L[1:].sum(0).mean())
        return torch.tensor(out.item(), dtype=out.dtype) if variant == "item" else out

    return meta_loss


WRONG_05 = {
    "log not divided by p": ("q1", _preprocess("no /p"), "not divided by p"),
    "branches swapped": ("q1", _preprocess("swapped"), "branches are swapped"),
    "sign dropped": ("q1", _preprocess("no sign"), "sign was dropped"),
    "tiny gradients not scaled": ("q1", _preprocess("small g"), "scaled up"),
    "log of g, not |g|": ("q1", _preprocess("no abs"), "compute |g| before the log"),
    "stacked on the first axis": ("q1", _preprocess("dim 0"), "stack them on the last"),
    "no ValueError for p = 0": ("q1", _preprocess("no ValueError"), "expected a ValueError"),
    "the gradient as one input": ("q2", _lstm_step("one input"), "applied coordinate-wise"),
    "coordinates mixed": ("q2", _lstm_step("interleaved"), "coordinates influence each other"),
    "the raw gradient": ("q2", _lstm_step("raw"), "not the raw gradient"),
    "no output scale": ("q2", _lstm_step("no scale"), "not multiplied by output_scale"),
    "the state ignored": ("q2", _lstm_step("zero state"), "state passed in was ignored"),
    "state not returned": ("q2", _lstm_step("no state"), "return a pair (update, new_state)"),
    "old state returned": ("q2", _lstm_step("old state"), "is the old state"),
    "(c, h) returned": ("q2", _lstm_step("c, h"), "is (c, h)"),
    "state changed in place": ("q2", _lstm_step("in place"), "changed in place"),
    "update detached": ("q2", _lstm_step("detached"), "no graph back to the cells"),
    "θ0's loss counted": ("q3", _meta_loss("with theta0"), "f(θ_0) was counted"),
    "losses of θ0..θ_{T-1}": ("q3", _meta_loss("up to T-1"), "the losses after each update"),
    "only the final loss": ("q3", _meta_loss("final"), "only the last loss"),
    "mean over steps": ("q3", _meta_loss("mean over steps"), "mean over the T steps"),
    "sum over problems": ("q3", _meta_loss("sum over problems"), "sum over the B problems"),
    "second-order meta-gradient": ("q3", _meta_loss("second order"), "second-order meta-grad"),
    "θ detached every step": ("q3", _meta_loss("theta detached"), "θ_t was detached"),
    "gradient of the mean loss": ("q3", _meta_loss("grad of mean"), "gradient of the mean"),
    "update subtracted": ("q3", _meta_loss("minus"), "update was subtracted"),
    "state reset every step": ("q3", _meta_loss("fresh state"), "zero state at every step"),
    "meta-loss from .item()": ("q3", _meta_loss("item"), "no graph back to the optimizer"),
}

_BN = nn.modules.batchnorm._BatchNorm


def _entropy(variant: str):
    def entropy(logits):
        if variant == "softmax log":
            p = logits.softmax(-1)
            return -(p * p.log()).sum(-1)
        log_p = logits.log_softmax(-1)
        terms = log_p.exp() * log_p
        out = {"no minus": terms.sum(-1), "batch sum": -terms.sum(), "mean": -terms.mean(-1)}
        result = out.get(variant, -terms.sum(-1))
        return result.detach() if variant == "detached" else result

    return entropy


def _tent_parameters(variant: str):
    def tent_parameters(model):
        if variant == "by name":  # Conv4 names its norms body.0.1, not bn
            return [p for n, p in model.named_parameters() if "bn" in n]
        if variant != "no freeze":
            model.requires_grad_(False)
        out = []
        for m in model.modules():
            if variant == "norms" and isinstance(m, (nn.LayerNorm, nn.GroupNorm)):
                out += [m.weight, m.bias]
            if variant == "conv" and isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.requires_grad_(True)
                out.append(m.weight)
            kind = nn.BatchNorm2d if variant == "2d only" else _BN
            if isinstance(m, kind) and m.affine:
                if variant != "no unfreeze":
                    m.requires_grad_(True)
                out += [m.weight] if variant == "weight only" else [m.weight, m.bias]
                if variant == "running":
                    out += [m.running_mean, m.running_var]
        return out

    return tent_parameters


def _tent_step(variant: str):
    def tent_step(model, x, optimizer):
        if variant == "eval":
            model.eval()
        if variant == "all params":  # its own optimizer, over every parameter
            model.requires_grad_(True)
            params = list(model.parameters())
            optimizer = torch.optim.SGD(params, lr=optimizer.param_groups[0]["lr"])
        logits = model(x)
        h = solution("06_test_time_adaptation")["entropy"](logits)
        loss = {"sum": h.sum(), "maximise": -h.mean()}.get(variant, h.mean())
        if variant == "pseudo":
            loss = F.cross_entropy(logits, logits.argmax(-1))
        if variant != "no zero_grad":
            optimizer.zero_grad()
        loss.backward()
        if variant != "no step":
            optimizer.step()
        return model(x).detach() if variant == "after" else logits.detach()

    return tent_step


def _rotation_loss(variant: str):
    def rotation_loss(encoder, rotation_head, x):
        dims = {"clockwise": (3, 2), "wrong axes": (1, 2)}.get(variant, (2, 3))
        rotated = [torch.rot90(x, k, dims=dims) for k in range(4)]
        labels = torch.arange(4).repeat_interleave(len(x))
        if variant == "misaligned":
            labels = torch.arange(4).repeat(len(x))
        if variant == "apart":
            logits = torch.cat([rotation_head(encoder(r)) for r in rotated])
        else:
            logits = rotation_head(encoder(torch.cat(rotated)))
        if variant == "detached":
            logits = logits.detach()
        return F.cross_entropy(logits, labels, reduction="sum" if variant == "sum" else "mean")

    return rotation_loss


WRONG_06 = {
    "no minus sign": ("q1", _entropy("no minus"), "minus sign is missing"),
    "softmax then log": ("q1", _entropy("softmax log"), "log_softmax"),
    "sum over the batch": ("q1", _entropy("batch sum"), "one entropy per row"),
    "mean over classes": ("q1", _entropy("mean"), "mean over the"),
    "entropy detached": ("q1", _entropy("detached"), "no gradient back to the logits"),
    "running statistics returned": ("q2", _tent_parameters("running"), "a running statistic"),
    "conv and linear weights": ("q2", _tent_parameters("conv"), "updates only the batch norm"),
    "nothing frozen": ("q2", _tent_parameters("no freeze"), "still requires gradients"),
    "BN left frozen": ("q2", _tent_parameters("no unfreeze"), "does not require gradients"),
    "BatchNorm2d only": ("q2", _tent_parameters("2d only"), "nn.modules.batchnorm._BatchNorm"),
    "LayerNorm and GroupNorm too": ("q2", _tent_parameters("norms"), "is not batch norm"),
    "scales only": ("q2", _tent_parameters("weight only"), "the shift β is bias"),
    "parameters found by name": ("q2", _tent_parameters("by name"), "are missing"),
    "running statistics used": ("q3", _tent_step("eval"), "running statistics (model.eval())"),
    "logits after the update": ("q3", _tent_step("after"), "logits after the update"),
    "every parameter updated": ("q3", _tent_step("all params"), "not a BN scale or shift"),
    "entropies summed": ("q3", _tent_step("sum"), "sum of the entropies"),
    "entropy maximised": ("q3", _tent_step("maximise"), "maximised"),
    "hard pseudo-labels": ("q3", _tent_step("pseudo"), "pseudo-labels"),
    "no zero_grad": ("q3", _tent_step("no zero_grad"), "optimizer.zero_grad()"),
    "no step": ("q3", _tent_step("no step"), "optimizer.step()"),
    "rotated clockwise": ("q4", _rotation_loss("clockwise"), "turn clockwise"),
    "rotated over the wrong axes": ("q4", _rotation_loss("wrong axes"), "two spatial axes"),
    "labels misaligned": ("q4", _rotation_loss("misaligned"), "misaligned"),
    "rotations embedded apart": ("q4", _rotation_loss("apart"), "separate batches"),
    "summed cross-entropy": ("q4", _rotation_loss("sum"), "sum of the 4B"),
    "loss detached": ("q4", _rotation_loss("detached"), "no graph back to the encoder"),
}

WRONG_0506 = [("05_learned_optimizers", k, *v) for k, v in WRONG_05.items()] + [
    ("06_test_time_adaptation", k, *v) for k, v in WRONG_06.items()
]


@pytest.mark.usefixtures("registered")
@pytest.mark.parametrize(("name", "variant", "qname", "fn", "says"), WRONG_0506, ids=lambda v: v)
def test_0506_wrong_answer_fails_with_a_helpful_message(name, variant, qname, fn, says):
    test_a_wrong_answer_fails_with_a_helpful_message(name, variant, qname, fn, says)


def test_every_0506_question_has_a_wrong_answer():
    assert {(n, q) for n, _, q, _, _ in WRONG_0506} == set(QUESTIONS_0506)


def _preprocess_by_masks(grad, p=10.0):
    if p <= 0:
        raise ValueError("p must be positive")
    out = torch.stack([-torch.ones_like(grad), grad * math.exp(p)], dim=-1)
    big = grad.abs() >= math.exp(-p)
    out[big] = torch.stack([grad[big].abs().log() / p, grad[big].sign()], dim=-1)
    return out


def _step_coordinate_by_coordinate(cells, head, grad, state, p=10.0, output_scale=0.1):
    preprocess = solution("05_learned_optimizers")["preprocess_gradients"]
    updates, rows = [], []
    for i in range(len(grad)):
        x, row = preprocess(grad[i : i + 1], p), []
        for cell, (h, c) in zip(cells, state, strict=True):
            h, c = cell(x, (h[i : i + 1], c[i : i + 1]))
            row.append((h, c))
            x = h
        updates.append(output_scale * head(x)[:, 0])
        rows.append(row)
    new_state = [
        tuple(torch.cat([row[layer][k] for row in rows]) for k in (0, 1))
        for layer in range(len(cells))
    ]
    return torch.cat(updates), new_state


def _meta_loss_fresh_leaves(optimizer, W, y, theta0, steps):
    def f(theta):
        return (torch.einsum("bmd,bd->bm", W, theta) - y).pow(2).sum(-1)

    theta, state, total = theta0, optimizer.initial_state(theta0.numel(), theta0), 0.0
    for _ in range(steps):
        leaf = theta.detach().requires_grad_()
        (g,) = torch.autograd.grad(f(leaf).sum(), leaf)
        update, state = optimizer(g.flatten(), state)
        theta = theta + update.view_as(theta)
        total = total + f(theta).mean()
    return total


def _meta_loss_gradient_by_hand(optimizer, W, y, theta0, steps):
    theta, state, losses = theta0, optimizer.initial_state(theta0.numel(), theta0), []
    for _ in range(steps):
        residual = (W @ theta[..., None])[..., 0] - y  # (B, M)
        g = 2 * (W.transpose(1, 2) @ residual[..., None])[..., 0]  # ∇ ||Wθ − y||²
        update, state = optimizer(g.detach().flatten(), state)
        theta = theta + update.view_as(theta)
        losses.append(((W @ theta[..., None])[..., 0] - y).square().sum(-1))
    return torch.stack(losses).sum(0).mean()


def _rotations_by_flips(encoder, rotation_head, x):
    turned = x.transpose(2, 3)
    rotated = torch.cat([x, turned.flip(2), x.flip(2, 3), turned.flip(3)])
    labels = torch.arange(4).repeat_interleave(len(x))
    return F.cross_entropy(rotation_head(encoder(rotated)), labels)


def _rotations_image_major(encoder, rotation_head, x):
    rotated = torch.stack([torch.rot90(x, k, dims=(2, 3)) for k in range(4)], dim=1)  # (B, 4, ..)
    labels = torch.arange(4).repeat(len(x))
    return F.cross_entropy(rotation_head(encoder(rotated.flatten(0, 1))), labels)


def _tent_parameters_by_owner(model):
    norms = {name for name, m in model.named_modules() if isinstance(m, _BN)}
    out = []
    for name, p in model.named_parameters():
        keep = name.rpartition(".")[0] in norms
        p.requires_grad_(keep)
        out += [p] if keep else []
    return out


def _tent_step_zeroing_after(model, x, optimizer):
    logits = model(x)
    (-(logits.softmax(1) * logits.log_softmax(1)).sum(1)).mean().backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=False)
    return logits


@pytest.mark.parametrize(
    ("name", "qname", "fn"),
    [
        ("05_learned_optimizers", "q1", _preprocess_by_masks),
        ("05_learned_optimizers", "q2", _step_coordinate_by_coordinate),
        ("05_learned_optimizers", "q3", _meta_loss_fresh_leaves),
        ("05_learned_optimizers", "q3", _meta_loss_gradient_by_hand),
        (
            "06_test_time_adaptation",
            "q1",
            lambda z: torch.distributions.Categorical(logits=z).entropy(),
        ),
        ("06_test_time_adaptation", "q1", lambda z: -(z.softmax(1) * z.log_softmax(1)).sum(1)),
        ("06_test_time_adaptation", "q2", _tent_parameters_by_owner),
        ("06_test_time_adaptation", "q3", _tent_step_zeroing_after),
        ("06_test_time_adaptation", "q4", _rotations_by_flips),
        ("06_test_time_adaptation", "q4", _rotations_image_major),
    ],
    ids=[
        "masks",
        "coordinate by coordinate",
        "a fresh leaf per gradient",
        "gradient by hand",
        "Categorical",
        "TENT's code",
        "by owner's name",
        "zero_grad after the step",
        "flips",
        "image-major",
    ],
)
def test_other_right_answers_to_05_and_06_pass_every_case(name, qname, fn):
    question = NEW_EXERCISES[name].question(qname)
    verdict = evaluate_cases(question, all_cases(name, question), fn)
    assert verdict, str(verdict)


# ------------------------------------------------------------------------ 08


def _weighted_step(variant: str):
    def weighted_step(model, params, x, y, weights, lr):
        losses = F.cross_entropy(forward_with(model, params, x), y, reduction="none")
        w = weights.detach() if variant == "detached" else weights
        loss = {
            "mean": (w * losses).mean(),
            "unweighted": losses.mean(),
            "unweighted sum": losses.sum(),
        }.get(variant, (w * losses).sum())
        second = variant != "no create_graph"
        grads = torch.autograd.grad(loss, list(params.values()), create_graph=second)
        sign = -1.0 if variant == "ascent" else 1.0
        return {k: p - sign * lr * g for (k, p), g in zip(params.items(), grads, strict=True)}

    return weighted_step


def _example_weights(variant: str):
    step = solution("08_meta_knowledge")["weighted_step"]

    def example_weights(model, params, x, y, val_x, val_y, lr):
        start = 1.0 / len(y) if variant == "uniform start" else 0.0
        eps = torch.full((len(y),), start, dtype=x.dtype, requires_grad=True)
        fast = step(model, params, x, y, eps, lr)
        vx, vy = (x, y) if variant == "train as val" else (val_x, val_y)
        val_loss = F.cross_entropy(forward_with(model, fast, vx), vy)
        (g,) = torch.autograd.grad(val_loss, eps, create_graph=variant == "graph kept")
        if variant == "sign":
            g = -g
        if variant == "no clamp":
            return -g / (-g).sum()
        w = (-g).clamp(min=0)
        if variant == "not normalised":
            return w
        if variant == "nan":
            return w / w.sum()
        w = w / w.sum() if w.sum() > 0 else w
        return w if variant == "graph kept" else w.detach()

    return example_weights


def _inner_update(variant: str):
    def inner_update(params, grads, lrs):
        if variant != "no ValueError":
            solution("08_meta_knowledge")["inner_update"](params, grads, lrs)  # its checks
        if variant == "by position":
            return {
                k: p - a * g
                for (k, p), g, a in zip(params.items(), grads.values(), lrs.values(), strict=True)
            }
        if variant == "scalar":
            alpha = torch.cat([a.flatten() for a in lrs.values()]).mean()
            return {k: p - alpha * grads[k] for k, p in params.items()}
        if variant == "in place":
            for k, p in params.items():
                p.sub_(lrs[k] * grads[k])
            return params
        sign = -1.0 if variant == "added" else 1.0
        return {
            k: p - sign * (lrs[k].detach() if variant == "detached" else lrs[k]) * grads[k]
            for k, p in params.items()
        }

    return inner_update


WRONG_08 = {
    "a mean of the weighted losses": ("q1", _weighted_step("mean"), "times too short"),
    "weights ignored (mean)": ("q1", _weighted_step("unweighted"), "weights were ignored"),
    "weights ignored (sum)": ("q1", _weighted_step("unweighted sum"), "weights were ignored"),
    "gradient ascent": ("q1", _weighted_step("ascent"), "gradient ascent"),
    "weights detached": ("q1", _weighted_step("detached"), "the weights were detached"),
    "no create_graph": ("q1", _weighted_step("no create_graph"), "create_graph=True"),
    "sign of g flipped": ("q2", _example_weights("sign"), "the sign is flipped"),
    "no clamp": ("q2", _example_weights("no clamp"), "without the clamp"),
    "not normalised": ("q2", _example_weights("not normalised"), "not normalised"),
    "0/0 when no example helps": ("q2", _example_weights("nan"), "return the zeros"),
    "ε at 1/n": ("q2", _example_weights("uniform start"), "take it at ε = 0"),
    "validation loss on the training batch": (
        "q2",
        _example_weights("train as val"),
        "use (val_x, val_y)",
    ),
    "weights not detached": ("q2", _example_weights("graph kept"), "return them detached"),
    "one scalar step size": ("q3", _inner_update("scalar"), "one step size"),
    "α·g added": ("q3", _inner_update("added"), "was added"),
    "dicts paired by position": ("q3", _inner_update("by position"), "by its name"),
    "step sizes detached": ("q3", _inner_update("detached"), "back to the step sizes"),
    "θ updated in place": ("q3", _inner_update("in place"), "in place"),
    "no ValueError": ("q3", _inner_update("no ValueError"), "expected a ValueError"),
}
WRONG_08_CASES = [("08_meta_knowledge", k, *v) for k, v in WRONG_08.items()]


@pytest.mark.usefixtures("registered")
@pytest.mark.parametrize(("name", "variant", "qname", "fn", "says"), WRONG_08_CASES, ids=str)
def test_08_wrong_answer_fails_with_a_helpful_message(name, variant, qname, fn, says):
    test_a_wrong_answer_fails_with_a_helpful_message(name, variant, qname, fn, says)


def test_every_08_question_has_a_wrong_answer():
    assert {q for q, _, _ in WRONG_08.values()} == {
        q.name for q in ex08_meta_knowledge.EXERCISE.questions
    }


def _weighted_step_func(model, params, x, y, weights, lr):
    def loss(p):
        return weights @ F.cross_entropy(
            torch.func.functional_call(model, p, (x,)), y, reduction="none"
        )

    grads = torch.func.grad(loss)(params)
    new = {}
    for k in reversed(params):  # any order of the names will do
        new[k] = params[k] - lr * grads[k]
    return new


def _example_weights_by_dot_products(model, params, x, y, val_x, val_y, lr):
    """At ε = 0, g_i = −lr ∇L_val(θ)·∇ℓ_i(θ): no look-ahead step needed."""
    names = list(params)
    val_loss = F.cross_entropy(forward_with(model, params, val_x), val_y)
    val_grad = torch.autograd.grad(val_loss, [params[k] for k in names])
    losses = F.cross_entropy(forward_with(model, params, x), y, reduction="none")
    g = []
    for i in range(len(y)):
        grad_i = torch.autograd.grad(losses[i], [params[k] for k in names], retain_graph=True)
        g.append(-lr * sum((a * b).sum() for a, b in zip(val_grad, grad_i, strict=True)))
    w = torch.stack(g).neg().clamp(min=0).detach()
    return w / w.sum() if w.sum() > 0 else w


def _example_weights_summed_by_backward(model, params, x, y, val_x, val_y, lr):
    """The validation loss summed (g scales, the normalised weights do not), and backward."""
    eps = torch.zeros_like(y, dtype=next(iter(params.values())).dtype).requires_grad_()
    fast = solution("08_meta_knowledge")["weighted_step"](model, params, x, y, eps, lr)
    F.cross_entropy(forward_with(model, fast, val_x), val_y, reduction="sum").backward()
    w = torch.relu(-eps.grad)
    for p in params.values():
        p.grad = None
    return torch.nan_to_num(w / w.sum())


def _inner_update_addcmul(params, grads, lrs):
    maml.check_step_sizes(params, lrs)
    if set(grads) != set(params) or any(grads[k].shape != p.shape for k, p in params.items()):
        raise ValueError("grads must match params")
    return {k: torch.addcmul(params[k], lrs[k], grads[k], value=-1) for k in lrs}  # lrs' order


@pytest.mark.parametrize(
    ("qname", "fn"),
    [
        ("q1", _weighted_step_func),
        ("q2", _example_weights_by_dot_products),
        ("q2", _example_weights_summed_by_backward),
        ("q3", _inner_update_addcmul),
    ],
    ids=["torch.func.grad and a loop", "dot products", "summed loss and backward", "addcmul"],
)
def test_other_right_answers_to_08_pass_every_case(qname, fn):
    question = ex08_meta_knowledge.EXERCISE.question(qname)
    verdict = evaluate_cases(question, all_cases("08_meta_knowledge", question), fn)
    assert verdict, str(verdict)
