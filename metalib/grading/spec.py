"""What a graded question is: the function a student writes, the cases it is run on, the judge.

One format serves the instant checks in the exercise notebooks and the grader:

* a :class:`Case` is plain data — keyword arguments made only of tensors, numbers, strings, lists,
  tuples and dicts (what ``torch.save``/``torch.load(weights_only=True)`` carry safely) — plus the
  name of a *probe* in :mod:`metalib.grading.probes` that calls the student's function on them
  and reduces what comes back to plain data again;
* a :class:`Question`'s ``judge(case, output)`` compares that output with metalib's reference
  implementation or checks its properties, and returns ``None`` (pass) or a short message that
  says what was expected, what came back and for which input.

The grader runs probes in a sandboxed process that holds the submission, and judges in its own
process, which never runs submitted code: whatever a submission patches, it patches only in the
sandbox, and it never sees a judge or an expected value.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

Judge = Callable[["Case", Any], "str | None"]


@dataclass(frozen=True)
class Case:
    """One input of a question.

    Attributes:
        label: what a student reads in feedback, e.g. ``"12 classes, 5-way, seed 3"``.
        kwargs: keyword arguments for the probe (plain data only, see the module docstring).
        probe: name of the function in :mod:`metalib.grading.probes` that calls the student's
            function: ``probe(fn, **kwargs) -> plain data``. ``"call"`` calls ``fn(**kwargs)``.
    """

    label: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    probe: str = "call"


@dataclass(frozen=True)
class Question:
    """A graded question: the function to write, its points, its cases and its judge.

    Attributes:
        name: ``"q1"``, ``"q2"``, ... as in the notebook's check cells.
        function: the name the student's function has in the notebook.
        points: what a full answer scores; a partial one scores the fraction of cases passed.
        judge: ``judge(case, output) -> None | message``.
        visible: cases the notebook's check cell runs (instant feedback).
        hidden: further cases only the grader runs.
        title: a short description for feedback.
    """

    name: str
    function: str
    points: float
    judge: Judge
    visible: Sequence[Case]
    hidden: Sequence[Case] = ()
    title: str = ""

    def __post_init__(self) -> None:
        if self.points <= 0:
            raise ValueError(f"{self.name}: points must be positive, got {self.points}")
        if not self.visible:
            raise ValueError(f"{self.name}: a question needs at least one visible case")

    def request(self, case: Case) -> dict[str, Any]:
        """What the sandbox runs for ``case``: a probe's name and its plain-data arguments."""
        return {"probe": case.probe, "kwargs": case.kwargs}

    def run(self, fn: Callable[..., Any], case: Case) -> Any:
        """Probe ``fn`` on ``case`` in this process (the notebook's instant check)."""
        from metalib.grading.question import find_probe

        return find_probe(case.probe)(fn, **copy.deepcopy(case.kwargs))

    def diagnose(self, case: Case, output: Any) -> tuple[str | None, str | None]:
        """``(message or None, None)``: old-style judges name no known mistakes."""
        return self.judge(case, output), None


@dataclass(frozen=True)
class Exercise:
    """The questions of one exercise notebook, e.g. ``Exercise("00_tasks", (q1, q2, q3))``."""

    name: str
    questions: Sequence[Question]

    def __post_init__(self) -> None:
        names = [q.name for q in self.questions]
        if len(set(names)) != len(names):
            raise ValueError(f"exercise {self.name}: question names repeat: {names}")

    def references(self, name: str) -> dict[str, str]:
        """``{function: "module:name" of its reference}`` of the questions before ``name``.

        A later question that calls an earlier one's function gets the reference instead of the
        student's own, so that each question is graded on its own.
        """
        from metalib.grading.question import importable

        found = {}
        for q in self.questions:
            if q.name == name:
                return found
            where = importable(getattr(q, "reference", None))
            if where is not None:  # what the sandbox can import
                found[q.function] = where
        raise ValueError(f"exercise {self.name} has no question {name!r}")

    def request(self, hidden: bool = True) -> list[dict[str, Any]]:
        """The questions as the sandbox runs them (plain data): function, cases, references."""
        return [
            {
                "name": q.name,
                "function": q.function,
                "cases": [q.request(c) for c in (*q.visible, *(q.hidden if hidden else ()))],
                "references": self.references(q.name),
            }
            for q in self.questions
        ]

    def question(self, name: str) -> Question:
        for q in self.questions:
            if q.name == name:
                return q
        known = ", ".join(q.name for q in self.questions)
        raise ValueError(f"exercise {self.name} has no question {name!r}; it has {known}")
