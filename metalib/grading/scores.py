"""Scores and feedback: judge the sandbox's answers, score each question, write Gradescope's format.

Runs in the grader's process only. A question scores ``points x passed / total`` over its visible
and hidden cases; each failed case gets a short message (its label, "(hidden check)" for hidden
ones, and what the judge or the sandbox said), cut to a readable length, with object addresses
masked so that the same submission gets the same feedback every time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from metalib.grading.spec import Case, Question

MESSAGE_CHARS = 400
MESSAGES_SHOWN = 6
ADDRESS = re.compile(r"0x[0-9a-fA-F]{6,}")  # object addresses differ from run to run


@dataclass(frozen=True)
class QuestionScore:
    """One question's result: the score and what went wrong, case by case."""

    name: str
    title: str
    score: float
    max_score: float
    passed: int
    total: int
    messages: tuple[str, ...]

    def feedback(self) -> str:
        lines = [f"{self.passed} of {self.total} checks passed."]
        lines += [f"- {m}" for m in self.messages[:MESSAGES_SHOWN]]
        if len(self.messages) > MESSAGES_SHOWN:
            lines.append(f"- ... and {len(self.messages) - MESSAGES_SHOWN} more")
        return "\n".join(lines)


@dataclass(frozen=True)
class Grade:
    """The grade of one submission: per-question scores, general feedback, the sandbox's log."""

    submission: str
    exercise: str | None
    questions: tuple[QuestionScore, ...]
    notes: tuple[str, ...]
    seconds: float
    log: str = ""
    problem: str | None = None  # what stopped the grading of this notebook, if anything

    @property
    def score(self) -> float:
        return round(sum(q.score for q in self.questions), 4)

    @property
    def max_score(self) -> float:
        return round(sum(q.max_score for q in self.questions), 4)

    def results(self) -> dict[str, Any]:
        """Gradescope's ``results.json`` content."""
        tests = [
            {
                "name": f"{q.name}: {q.title}" if q.title else q.name,
                "score": q.score,
                "max_score": q.max_score,
                "output": q.feedback(),
                "visibility": "visible",
            }
            for q in self.questions
        ]
        return {
            "score": self.score,
            "max_score": self.max_score,
            "output": "\n".join(self.notes),
            "tests": tests,
            "execution_time": round(self.seconds, 2),
        }

    def summary(self) -> str:
        """One line: file, exercise, total, per-question scores, the main problem if any."""
        parts = ", ".join(f"{q.name} {q.score:g}/{q.max_score:g}" for q in self.questions)
        line = f"{self.submission}: {self.exercise or '?'} {self.score:g}/{self.max_score:g}"
        line += f" ({parts})" if parts else ""
        line += f" -- {self.problem}" if self.problem else ""
        return line + f" [{self.seconds:.1f} s]"


def cases(question: Question) -> list[tuple[Case, bool]]:
    """``[(case, hidden)]``: the visible cases, then the hidden ones."""
    return [(c, False) for c in question.visible] + [(c, True) for c in question.hidden]


def message(label: str, hidden: bool, text: str) -> str:
    text = ADDRESS.sub("0x...", f"{label}{' (hidden check)' if hidden else ''}: {text}")
    return text if len(text) <= MESSAGE_CHARS else text[: MESSAGE_CHARS - 3] + "..."


def score_question(
    question: Question, answers: dict[int, tuple[str, Any]], why: str, hidden_details: bool = True
) -> QuestionScore:
    """Judge ``answers`` (case index -> (status, output or message)) of one question.

    Args:
        answers: what the sandbox sent back for the cases it ran.
        why: the reason given for the cases it did not run.
        hidden_details: each failed hidden case's label and message, or only how many failed.
    """
    todo = cases(question)
    passed, messages, not_run, hidden_failed, skipped = 0, [], 0, 0, {}
    for index, (case, hidden) in enumerate(todo):
        if index not in answers:
            not_run += 1
            continue
        status, value = answers[index]
        if status == "skipped":  # after a timeout; said once for all of them
            skipped[str(value)] = skipped.get(str(value), 0) + 1
            continue
        if status == "unanswered":
            hint = f" ({value})" if value else ""
            return zero(question, len(todo), f"not answered yet{hint}")
        if status == "missing":
            return zero(question, len(todo), str(value))
        if status == "ok":
            try:
                problem = question.judge(case, value)
            except Exception as err:  # a malformed output the judge choked on
                problem = f"the output could not be checked ({type(err).__name__}: {err})"
        else:
            problem = f"raised {value}" if status == "error" else str(value)
        if problem is None:
            passed += 1
        elif hidden and not hidden_details:
            hidden_failed += 1
        else:
            messages.append(message(case.label, hidden, str(problem)))
    if hidden_failed:
        messages.append(f"{hidden_failed} hidden check{'s' * (hidden_failed > 1)} failed")
    for reason, count in skipped.items():
        messages.append(f"{count} more check{'s' * (count > 1)} not run: {reason[:MESSAGE_CHARS]}")
    if not_run:
        messages.append(f"{not_run} check{'s' * (not_run > 1)} not run: {why}")
    points = round(question.points * passed / len(todo), 4)
    return QuestionScore(
        question.name,
        question.title,
        points,
        float(question.points),
        passed,
        len(todo),
        tuple(messages),
    )


def zero(question: Question, total: int, text: str) -> QuestionScore:
    """``question`` scored 0 of ``total`` checks, for the one reason ``text``."""
    text = ADDRESS.sub("0x...", text)[:MESSAGE_CHARS]
    return QuestionScore(
        question.name, question.title, 0.0, float(question.points), 0, total, (text,)
    )


def answers_of(frames: list[dict], name: str) -> dict[int, tuple[str, Any]]:
    """The case frames of question ``name`` (forged or malformed frames are ignored)."""
    found = {}
    for f in frames:
        if f.get("kind") == "case" and f.get("question") == name:
            index, status = f.get("index"), f.get("status")
            if isinstance(index, int) and isinstance(status, str) and index not in found:
                found[index] = (status, f.get("value"))
    return found
