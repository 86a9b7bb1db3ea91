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

from metalib.grading.question import Case, Question

MESSAGE_CHARS = 400
MESSAGES_SHOWN = 6
ADDRESS = re.compile(r"0x[0-9a-fA-F]{6,}")  # object addresses differ from run to run


@dataclass(frozen=True)
class QuestionScore:
    """One question's result: the score and what went wrong, for its visible and hidden cases.

    ``passed``/``total`` count all cases; ``hidden_passed``/``hidden_total`` the hidden ones.
    ``mistakes`` are the known mistakes its failed cases matched; ``unanswered`` whether it
    still raised ``NotImplementedError``.
    """

    name: str
    title: str
    score: float
    max_score: float
    passed: int
    total: int
    messages: tuple[str, ...]
    hidden_passed: int = 0
    hidden_total: int = 0
    hidden_messages: tuple[str, ...] = ()
    mistakes: tuple[str, ...] = ()
    unanswered: bool = False

    def feedback(self, hidden: bool | None = None) -> str:
        """The lines a student reads: all cases, or only the visible or the hidden ones."""
        if hidden is None:
            passed, total = self.passed, self.total
            messages = tuple(dict.fromkeys(self.messages + self.hidden_messages))
        elif hidden:
            passed, total, messages = self.hidden_passed, self.hidden_total, self.hidden_messages
        else:
            passed = self.passed - self.hidden_passed
            total, messages = self.total - self.hidden_total, self.messages
        lines = [f"{passed} of {total} {'hidden ' if hidden else ''}checks passed."]
        lines += [f"- {m}" for m in messages[:MESSAGES_SHOWN]]
        if len(messages) > MESSAGES_SHOWN:
            lines.append(f"- ... and {len(messages) - MESSAGES_SHOWN} more")
        return "\n".join(lines)

    def tests(self, visibility: str = "after_due_date") -> list[dict[str, Any]]:
        """Gradescope tests: one for the visible cases, one for the hidden ones (if any), whose
        ``visibility`` is ``after_due_date`` by default. Their scores add up to :attr:`score`."""
        name = f"{self.name}: {self.title}" if self.title else self.name
        share = (self.total - self.hidden_total) / self.total if self.total else 1.0
        seen_max = round(self.max_score * share, 4)
        seen = round(self.max_score * (self.passed - self.hidden_passed) / self.total, 4)
        parts = [(name, seen, seen_max, False, "visible")]
        if self.hidden_total:
            parts.append(
                (
                    f"{name} (hidden checks)",
                    round(self.score - seen, 4),
                    round(self.max_score - seen_max, 4),
                    True,
                    visibility,
                )
            )
        return [
            {
                "name": label,
                "score": score,
                "max_score": top,
                "status": "passed" if score >= top else "failed",
                "output": self.feedback(hidden),
                "output_format": "text",
                "visibility": shown,
            }
            for label, score, top, hidden, shown in parts
        ]


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

    def results(self, hidden_visibility: str = "after_due_date") -> dict[str, Any]:
        """Gradescope's ``results.json`` content; ``extra_data`` feeds the class report."""
        questions = {
            q.name: {
                "score": q.score,
                "max_score": q.max_score,
                "mistakes": list(q.mistakes),
                "unanswered": q.unanswered,
            }
            for q in self.questions
        }
        return {
            "score": self.score,
            "max_score": self.max_score,
            "output": "\n".join(self.notes),
            "tests": [t for q in self.questions for t in q.tests(hidden_visibility)],
            "execution_time": round(self.seconds, 2),
            "extra_data": {"exercise": self.exercise, "questions": questions},
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


def collapsed(failures: list[tuple[str, bool, str]]) -> list[str]:
    """One line per distinct explanation: ``[(label, hidden, text)]`` sharing a ``text`` become
    ``"text (in 3 checks: label 1; label 2; label 3)"``, in the order they first failed."""
    groups: dict[str, list[str]] = {}
    for label, hidden, text in failures:
        groups.setdefault(text, []).append(f"{label}{' (hidden check)' if hidden else ''}")
    lines = []
    for text, labels in groups.items():
        if len(labels) == 1:
            lines.append(message(labels[0], False, text))
            continue
        where = f" (in {len(labels)} checks: {'; '.join(labels)})"
        body = ADDRESS.sub("0x...", text)[: MESSAGE_CHARS - 60]
        line = body + where
        lines.append(line if len(line) <= MESSAGE_CHARS else line[: MESSAGE_CHARS - 4] + "...)")
    return lines


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
    passed, mistakes = [0, 0], []
    failures: dict[bool, list[tuple[str, bool, str]]] = {False: [], True: []}
    not_run, hidden_failed, skipped = {False: 0, True: 0}, 0, {}
    for index, (case, hidden) in enumerate(todo):
        if index not in answers:
            not_run[hidden] += 1
            continue
        status, value = answers[index]
        if status == "skipped":  # after a timeout; said once for all of them
            skipped.setdefault(str(value), [0, 0])[hidden] += 1
            continue
        if status == "unanswered":
            hint = f" ({value})" if value else ""
            return zero(question, len(todo), f"not answered yet{hint}", unanswered=True)
        if status == "missing":
            return zero(question, len(todo), str(value))
        mistake = None
        if status == "ok":
            try:
                problem, mistake = question.diagnose(case, value)
            except Exception as err:  # a malformed output the judge choked on
                problem = f"the output could not be checked ({type(err).__name__}: {err})"
        else:
            problem = f"raised {value}" if status == "error" else str(value)
        if problem is None:
            passed[hidden] += 1
            continue
        if mistake is not None:
            mistakes.append(mistake)
        if hidden and not hidden_details:
            hidden_failed += 1
        else:
            failures[hidden].append((case.label, hidden, ADDRESS.sub("0x...", str(problem))))
    texts = {hidden: collapsed(failures[hidden]) for hidden in (False, True)}
    if hidden_failed:
        texts[True].append(f"{hidden_failed} hidden check{'s' * (hidden_failed > 1)} failed")
    for reason, counts in skipped.items():
        for hidden in (False, True):
            if counts[hidden]:
                n = counts[hidden]
                texts[hidden].append(
                    f"{n} more check{'s' * (n > 1)} not run: {reason[:MESSAGE_CHARS]}"
                )
    for hidden in (False, True):
        if not_run[hidden]:
            n = not_run[hidden]
            texts[hidden].append(f"{n} check{'s' * (n > 1)} not run: {why}")
    n_hidden = sum(hidden for _, hidden in todo)
    points = round(question.points * sum(passed) / len(todo), 4)
    return QuestionScore(
        question.name,
        question.title,
        points,
        float(question.points),
        sum(passed),
        len(todo),
        tuple(texts[False]),
        passed[True],
        n_hidden,
        tuple(texts[True]),
        tuple(dict.fromkeys(mistakes)),
    )


def zero(question: Question, total: int, text: str, unanswered: bool = False) -> QuestionScore:
    """``question`` scored 0 of ``total`` checks, for the one reason ``text``."""
    text = ADDRESS.sub("0x...", text)[:MESSAGE_CHARS]
    hidden = len(question.hidden)
    return QuestionScore(
        question.name,
        question.title,
        0.0,
        float(question.points),
        0,
        total,
        (text,),
        0,
        hidden,
        (text,) if hidden else (),
        unanswered=unanswered,
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
