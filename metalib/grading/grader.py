"""Grade submitted notebooks: run each in the sandbox, judge its outputs here, score it.

For each submission the grader (this process, which never runs submitted code):

1. reads the notebook's bytes (the original is opened once, read-only) and tells which exercise
   it is (:func:`metalib.grading.registry.identify`);
2. writes a copy and a request (code cells, every visible and hidden case as plain data) to a
   fresh scratch folder and starts ``python -m metalib.grading.sandbox`` there
   (:mod:`metalib.grading.launch`): scrubbed environment, new session, limits, an unused uid when
   the grader is root, a wall clock;
3. loads each answer with ``torch.load(weights_only=True)``, runs the question's judge on it,
   and scores points x passed / total per question (:mod:`metalib.grading.scores`).

The sandbox is Linux's: on any other system the grader refuses at once (:class:`GraderError`,
saying to use the self-check, :mod:`metalib.grading.check`, or Linux or Gradescope to grade).
:func:`preflight` first checks that the sandbox can run at all (the grader's one reason to fail).
A crash, a timeout, a memory blow-up, ``sys.exit``/``os._exit`` or unreadable answers score the
checks not run 0 with the reason. Nothing here depends on the clock but ``seconds``: the same
submission gets the same :meth:`Grade.results` every time, apart from ``execution_time``.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from metalib.grading import launch, lockdown, registry
from metalib.grading.launch import UNUSED_UID, GraderError, Limits
from metalib.grading.question import Exercise
from metalib.grading.scores import (
    Grade,
    answers_of,
    cases,
    message,
    score_question,
    zero,
)

NEEDED = ("torch", "numpy", "matplotlib", "IPython", "metalib.grading.question")
IMPORT_CHECK = """
import importlib, json
out = {{}}
for m in {modules!r}:
    try:
        importlib.import_module(m)
    except Exception as e:
        out[m] = f"{{type(e).__name__}}: {{e}}"
print(json.dumps(out))
"""
NOTEBOOK_MB = 64  # a larger file is refused before it is parsed
# Judges build their references with torch's global generator (seeded inside fork_rng): with
# --jobs N, two threads judging at once would draw from it in turn and build other models. The
# sandboxes run in parallel; the judging, which is quick, one submission at a time.
_judging = threading.Lock()


def preflight(python: str, limits: Limits, hide: list[str]) -> list[str]:
    """Check that ``python`` imports what the sandbox needs and runs a trivial notebook in it.

    Returns the sandbox's notes on how it isolates notebooks.

    Raises:
        GraderError: not on Linux (saying what to do instead), or saying what is missing and how
            to install it.
    """
    launch.require_linux()
    python = interpreter(python)
    check = IMPORT_CHECK.format(modules=NEEDED)
    with tempfile.TemporaryDirectory(prefix="metalib-preflight-") as tmp:
        try:
            done = subprocess.run(
                [python, "-s", "-c", check],
                cwd=tmp,
                env=launch.sandbox_env(Path(tmp)),
                capture_output=True,
                text=True,
                timeout=max(60.0, limits.timeout),
            )
        except (OSError, subprocess.TimeoutExpired) as err:
            raise GraderError(f"cannot start the sandbox's Python {python}: {err}") from err
        lines = done.stdout.strip().splitlines()
        try:
            missing = json.loads(lines[-1])
        except (IndexError, json.JSONDecodeError) as err:
            raise GraderError(
                f"the sandbox's Python {python} failed to check its imports:\n{done.stderr[-2000:]}"
            ) from err
    if missing:
        listed = "\n".join(f"  {m}: {e}" for m, e in missing.items())
        raise GraderError(
            f"the sandbox's Python ({python}) cannot import what grading needs:\n{listed}\n"
            f"Install the course's packages into it (from the repository: `{python} -m pip "
            f"install -r requirements.lock && {python} -m pip install -e .`), or point --python "
            "at the Python that has them (the course's .venv/bin/python)."
        )
    request = {"cells": [(1, "import torch\nx = torch.ones(3).sum()")], "questions": []}
    with tempfile.TemporaryDirectory(prefix="metalib-preflight-") as tmp:
        outcome = launch.run(request, Path(tmp), limits, python, hide)
    cell = next((f for f in outcome.frames if f.get("kind") == "cell"), {})
    if outcome.problem or cell.get("error"):
        raise GraderError(
            f"the sandbox cannot run a one-line notebook: {outcome.problem or cell.get('error')}. "
            f"If it ran out of memory, raise --memory-mb (now {limits.memory_mb}; the course's "
            f"exercises need about 800). Its output:\n{outcome.log[-3000:]}"
        )
    return outcome.notes


def interpreter(python: str) -> str:
    """``python`` as an absolute path (a bare name is looked up on ``PATH``), symlinks kept."""
    found = shutil.which(python)
    return os.path.abspath(found) if found else python


def read_notebook(data: bytes) -> tuple[str | None, list[tuple[int, str]]]:
    """``(workbook.exercise or None, [(cell number, source) of each code cell])``.

    Raises:
        ValueError: the bytes are not an nbformat 4 notebook.
    """
    try:
        nb = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"the file is not a notebook (not JSON: {err})") from err
    if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list):
        raise ValueError("the file is not a notebook (no list of cells)")
    if nb.get("nbformat") != 4:
        raise ValueError(f"the notebook is in format {nb.get('nbformat')}; save it as nbformat 4")
    workbook = nb.get("metadata", {}).get("workbook", {})
    declared = workbook.get("exercise") if isinstance(workbook, dict) else None
    cells = []
    for number, cell in enumerate(nb["cells"], start=1):
        if isinstance(cell, dict) and cell.get("cell_type") == "code":
            source = cell.get("source", "")
            cells.append((number, "".join(source) if isinstance(source, list) else str(source)))
    return (declared if isinstance(declared, str) else None), cells


class Grader:
    """Grades notebooks against known exercises, one sandboxed process per notebook.

    Args:
        exercises: ``{name: Exercise}`` with hidden cases merged (:func:`registry.load_exercises`).
        limits: time and memory limits (:class:`metalib.grading.launch.Limits`).
        python: the interpreter the sandbox runs (it needs torch, IPython and metalib).
        exercise: the exercise of notebooks whose metadata names none.
        hide: folders the sandbox must not see (hidden tests, submissions), where it can hide them.
        hidden_details: report each failed hidden case (label and message), or only their count.

    Raises:
        GraderError: not on Linux: grading needs the sandbox; the message names the self-check.
    """

    def __init__(
        self,
        exercises: dict[str, Exercise],
        limits: Limits | None = None,
        python: str = sys.executable,
        exercise: str | None = None,
        hide: Sequence[Path] = (),
        hidden_details: bool = True,
    ) -> None:
        launch.require_linux()
        if exercise is not None and exercise not in exercises:
            known = ", ".join(sorted(exercises)) or "none"
            raise ValueError(f"--exercise {exercise!r} is not a known exercise ({known})")
        self.exercises, self.limits = exercises, limits or Limits()
        self.python, self.exercise = interpreter(python), exercise
        self.hide = [str(Path(p).resolve()) for p in hide]
        self.hidden_details = hidden_details

    def preflight(self) -> list[str]:
        """Check that the sandbox can run at all; return notes on how it isolates notebooks.

        Raises:
            GraderError: saying what is missing and how to install it.
        """
        return preflight(self.python, self.limits, self.hide)

    def grade(self, path: Path) -> Grade:
        """Grade the notebook at ``path`` (never modified); never raises for a bad submission."""
        start = time.monotonic()
        path = Path(path)
        declared, cells, problem = None, None, None
        try:
            declared, cells = read_notebook(_read(path))
        except (OSError, ValueError) as err:
            problem = str(err)
        exercise, how = registry.identify(declared, path.stem, self.exercises, self.exercise)
        if exercise is None:
            return Grade(path.name, None, (), (how,), time.monotonic() - start, problem=how)
        head = f"Graded as exercise {exercise.name} ({how})."
        if cells is None:
            zeros = tuple(zero(q, len(cases(q)), problem) for q in exercise.questions)
            seconds = time.monotonic() - start
            return Grade(path.name, exercise.name, zeros, (head, problem), seconds, problem=problem)
        request = {"cells": cells, "questions": exercise.request()}
        with tempfile.TemporaryDirectory(prefix="metalib-grade-") as scratch:
            outcome = launch.run(request, Path(scratch), self.limits, self.python, self.hide)
        with _judging:
            scores = tuple(
                score_question(
                    q,
                    answers_of(outcome.frames, q.name),
                    outcome.problem or "the notebook stopped before them",
                    self.hidden_details,
                )
                for q in exercise.questions
            )
        notes = [head]
        if outcome.problem:
            notes.append(f"Problem: {outcome.problem}.")
        notes += _cell_errors(outcome.frames, dict(cells))
        log = "\n".join(["sandbox: " + "; ".join(outcome.notes), outcome.log])
        seconds = time.monotonic() - start
        return Grade(path.name, exercise.name, scores, tuple(notes), seconds, log, outcome.problem)


def _cell_errors(frames: list[dict], sources: dict[int, str]) -> list[str]:
    """``"Cell 3 (def add(a, b)): SyntaxError: ..."`` for each cell that failed."""
    notes = []
    for f in frames:
        number = f.get("number")
        if f.get("kind") == "cell" and f.get("error") and number in sources:
            first = next((ln.strip() for ln in sources[number].splitlines() if ln.strip()), "")
            first = first if len(first) <= 40 else first[:37] + "..."
            notes.append(message(f"Cell {number} ({first})", False, str(f["error"])))
    return notes


def exposure(notes: Sequence[str], tests: Path | Sequence[Path] | None) -> list[str]:
    """Warnings for the instructor when the sandbox (its ``notes``) leaves something exposed.

    ``tests``: the hidden tests folder, or several.
    """
    if not any(n.startswith("no private file system") for n in notes):
        return []
    if not any(n.startswith("runs as unused uid") for n in notes):
        return [
            "the notebooks run as your own user with no private file system: a submission can "
            "read and change your files, including the hidden tests. Grade untrusted notebooks "
            "as root in a container, or on Linux with unprivileged user namespaces (GRADING.md)."
        ]
    folders = [] if tests is None else [tests] if isinstance(tests, (str, Path)) else tests
    return [
        f"the hidden tests in {folder} are readable by other users, so by the notebooks "
        f"(no private file system here): run `chmod -R go-rwx {folder}` first"
        for folder in folders
        if readable_by_others(Path(folder))
    ]


def readable_by_others(folder: Path) -> bool:
    """Whether a user who owns nothing here may reach ``folder`` and read a file in it."""
    readable = any(p.stat().st_mode & stat.S_IROTH for p in Path(folder).rglob("*") if p.is_file())
    return readable and lockdown.reachable(str(folder), UNUSED_UID)


def _read(path: Path) -> bytes:
    size = path.stat().st_size
    if size > NOTEBOOK_MB << 20:
        raise ValueError(
            f"the notebook is {size >> 20} MB; clear its outputs (limit {NOTEBOOK_MB} MB)"
        )
    with open(path, "rb") as f:
        return f.read()
