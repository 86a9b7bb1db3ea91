"""The judges of every exercise: the solutions pass every case, stubs and refusals score nothing.

The reference answers are the functions of ``solutions/NN_topic.ipynb`` themselves (its code
cells executed here), run through the same path as the notebook's check cells and the grader:
probe -> plain output -> ``torch.save``/``torch.load(weights_only=True)`` -> judge. Wrong answers
and other right answers of each exercise are in ``tests/test_exercise_NN.py``.
"""

from __future__ import annotations

import copy
import io
import time
from typing import Any

import pytest
import torch

from conftest import all_cases, exercise, fresh_solution, hidden_cases, solution
from metalib.grading import ex00_tasks, ex01_finetuning, registry
from metalib.grading.feedback import evaluate_cases, run_case
from metalib.grading.question import difference, find_probe

NAMES = sorted(registry.builtin_exercises())
QUESTIONS = [(name, q.name) for name in NAMES for q in exercise(name).questions]


def _verdict(name: str, qname: str, fn: Any, cases=None):
    question = exercise(name).question(qname)
    cases = all_cases(name, question) if cases is None else cases
    return evaluate_cases(question, cases, fn, exercise(name).references(qname))


@pytest.mark.parametrize(("name", "qname"), QUESTIONS)
def test_solution_passes_every_case(name, qname):
    question = exercise(name).question(qname)
    verdict = _verdict(name, qname, solution(name)[question.function])
    assert verdict, str(verdict)
    assert verdict.total >= 4, f"{name} {qname}: too few cases ({verdict.total})"


@pytest.mark.parametrize("name", NAMES)
def test_hidden_cases_name_existing_questions_and_probes(name):
    assert sorted(hidden_cases(name)) == sorted(q.name for q in exercise(name).questions)
    for question in exercise(name).questions:
        cases = all_cases(name, question)
        assert len({c.label for c in cases}) == len(cases), f"{question.name}: labels repeat"
        for case in cases:
            assert callable(find_probe(question.request(case)["probe"])), case.label


def _round_trip(value: Any) -> Any:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize(("name", "qname"), QUESTIONS)
def test_cases_and_outputs_survive_the_grader_file_format(name, qname):
    """Case kwargs go to the sandbox and outputs come back through ``weights_only`` files."""
    question = exercise(name).question(qname)
    fn = solution(name)[question.function]
    for case in all_cases(name, question):
        request = _round_trip(copy.deepcopy(question.request(case)))
        output = _round_trip(find_probe(request["probe"])(fn, **request["kwargs"]))
        assert question.judge(case, output) is None, case.label


@pytest.mark.parametrize("name", NAMES)
def test_every_case_of_an_exercise_runs_quickly(name):
    start = time.process_time()
    for question in exercise(name).questions:
        _verdict(name, question.name, solution(name)[question.function])
    assert time.process_time() - start < 20.0, "the grader runs every case within its budget"


@pytest.mark.parametrize(("name", "qname"), QUESTIONS)
def test_a_stub_is_not_answered_yet(name, qname):
    def stub(*args, **kwargs):
        raise NotImplementedError("write your answer here")

    verdict = _verdict(name, qname, stub)
    assert verdict.passed == 0
    assert verdict.failures == ("not answered yet (write your answer here)",)


@pytest.mark.parametrize(("name", "qname"), QUESTIONS)
def test_refusing_every_input_scores_nothing(name, qname):
    """A ValueError case passes only if the function also works on valid input."""

    def refuse(*args, **kwargs):
        raise ValueError("no")

    verdict = _verdict(name, qname, refuse)
    assert verdict.passed == 0, str(verdict)
    question = exercise(name).question(qname)
    raising = [c for c in question.visible if c.probe == "raises"]
    if raising:
        message = run_case(question, raising[0], refuse)
        assert "on valid input" in message and "raised ValueError: no" in message, message


def test_check_prints_one_line_per_question(capsys):
    verdict = ex00_tasks.check("q3", solution("00_tasks")["relabel"])
    assert verdict and capsys.readouterr().out == "q3: passed (3 of 3 checks)\n"
    verdict = ex01_finetuning.check("q5", lambda model, x, y: 2.0)
    assert not verdict and "expected accuracy" in capsys.readouterr().out


def test_each_question_is_graded_on_its_own():
    """A stub in q1 and a bug in q2 cost q1 and q2 only: q4, which calls both, runs with their
    references, and its feedback never shows q1's hint."""
    namespace = fresh_solution("00_tasks")

    def stub(*args, **kwargs):
        raise NotImplementedError("q1's hint")

    namespace["sample_classes"] = stub
    namespace["sample_support_query"] = lambda m, k, q, g: (torch.arange(k), torch.arange(q))
    make_episode = namespace["make_episode"]
    verdict = _verdict("00_tasks", "q4", make_episode)
    assert verdict, str(verdict)
    question = exercise("00_tasks").question("q4")
    alone = evaluate_cases(question, question.visible, make_episode)  # no references given
    assert not alone and "q1's hint" in alone.failures[0]
    assert namespace["sample_classes"] is stub  # the student's own function is put back


def test_a_dict_part_can_have_its_own_tolerance():
    want = {"pixels": [0.5, 0.25], "trained": [0.75]}
    got = {"pixels": [0.51, 0.25], "trained": [0.79]}
    loose = {"rtol": 0.0, "atol": 0.05}
    assert difference(got, want, "acc", {}, loose) is None
    tight = {**loose, "pixels": {"rtol": 0.0, "atol": 0.005}}
    assert difference(got, want, "acc", {}, tight) == "acc['pixels'][0]: expected 0.5, got 0.51"
    assert difference({**got, "pixels": [0.5, 0.25]}, want, "acc", {}, tight) is None
