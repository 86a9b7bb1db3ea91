"""Instant feedback in the exercise notebooks: run a question's visible cases, print a verdict.

``check("q1", sample_classes)`` prints one line per question — passed, or what was expected,
what came back and for which input — instead of a traceback wall. It returns a
:class:`Verdict` (truthy when every case passed) so a notebook or a test can use the result.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from metalib.grading.question import Case, Exercise, Question
from metalib.grading.question import references as runner_references


@dataclass(frozen=True)
class Verdict:
    """Outcome of a question's cases: how many passed, and a message per failed case."""

    question: str
    passed: int
    total: int
    failures: tuple[str, ...]

    def __bool__(self) -> bool:
        return self.passed == self.total

    def __str__(self) -> str:
        mark = "passed" if self else "not yet"
        lines = [f"{self.question}: {mark} ({self.passed} of {self.total} checks)"]
        lines += [f"  - {f}" for f in self.failures]
        return "\n".join(lines)


def run_case(question: Question, case: Case, fn: Callable[..., Any]) -> str | None:
    """Run one case in this process; ``None`` when it passes, else a message for the student."""
    try:
        output = question.run(fn, case)
    except NotImplementedError as err:
        return f"not answered yet ({err})" if str(err) else "not answered yet"
    except Exception as err:  # a student's error is feedback, not a crash of the check
        return f"{case.label}: raised {type(err).__name__}: {err}"
    try:
        message = question.judge(case, output)
    except Exception as err:  # a malformed output (wrong type or shape) the judge choked on
        return f"{case.label}: the output could not be checked ({type(err).__name__}: {err})"
    return None if message is None else f"{case.label}: {message}"


def evaluate_cases(
    question: Question,
    cases: Sequence[Case],
    fn: Callable[..., Any],
    references: dict[str, str] | None = None,
) -> Verdict:
    """Run ``cases`` of ``question`` against ``fn`` and collect the verdict.

    Args:
        references: ``{function: "module:name"}`` of earlier questions, put in ``fn``'s globals
            while the cases run (:meth:`metalib.grading.spec.Exercise.references`).
    """
    failures = []
    namespace = getattr(fn, "__globals__", None)
    names = references if namespace is not None and references else {}
    with runner_references(namespace, names) if names else contextlib.nullcontext():
        for case in cases:
            message = run_case(question, case, fn)
            if message is not None:
                failures.append(message)
                if message.startswith("not answered yet"):
                    return Verdict(question.name, 0, len(cases), (message,))
    return Verdict(question.name, len(cases) - len(failures), len(cases), tuple(failures))


def check(exercise: Exercise, name: str, fn: Callable[..., Any]) -> Verdict:
    """Run the visible cases of question ``name`` on ``fn``, print the verdict and return it."""
    question = exercise.question(name)
    if not callable(fn):
        raise ValueError(f"check({name!r}, ...) needs the function {question.function}, got {fn!r}")
    verdict = evaluate_cases(question, question.visible, fn, exercise.references(name))
    print(verdict)
    return verdict
