"""Which exercises the grader knows, their hidden cases, and which exercise a notebook is.

* Built-in exercises are the modules ``metalib.grading.exNN_topic``, each with an ``EXERCISE``.
* Hidden cases come from a tests folder: the repository's ``hidden_tests/`` by default, or an
  instructor's own folder (``--tests DIR``), which then replaces it. Each ``*.py`` file there
  holds ``HIDDEN = {"q1": [Case, ...], ...}`` for the exercise its name says (``ex00_tasks.py``
  for ``00_tasks``), and may define its own ``EXERCISE`` to replace the whole spec or to add an
  exercise metalib does not have. Files starting with ``_`` are skipped.
* A notebook says which exercise it is in its metadata (``workbook.exercise``); failing that, the
  grader's ``--exercise`` option; failing that, its file name, when it names a known exercise.

These files are the instructor's: the grader imports them in its own process, never in the
sandbox.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import io
import pkgutil
import re
import sys
from collections.abc import Mapping
from pathlib import Path

import torch

import metalib.grading
from metalib.grading.question import Case, Exercise

MODULE_NAME = re.compile(r"^ex(\d\d_\w+)$")


def builtin_exercises() -> dict[str, Exercise]:
    """``{name: Exercise}`` from the ``metalib.grading.exNN_topic`` modules."""
    found = {}
    for module in pkgutil.iter_modules(metalib.grading.__path__):
        if MODULE_NAME.match(module.name):
            loaded = importlib.import_module(f"metalib.grading.{module.name}")
            exercise = getattr(loaded, "EXERCISE", None)
            if not isinstance(exercise, Exercise):
                raise ValueError(
                    f"metalib.grading.{module.name} defines no EXERCISE = Exercise(...)"
                )
            found[exercise.name] = exercise
    return found


def default_tests_dir() -> Path | None:
    """The repository's ``hidden_tests/`` folder (beside the ``metalib`` package), if present."""
    folder = Path(metalib.grading.__file__).resolve().parents[2] / "hidden_tests"
    return folder if folder.is_dir() else None


def load_tests(folder: Path) -> tuple[dict[str, Exercise], dict[str, Mapping[str, list[Case]]]]:
    """The exercises a tests folder defines and its hidden cases, both keyed by exercise name.

    Raises:
        ValueError: the folder is missing, or a file in it is not in the format above.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"tests folder {folder} does not exist; pass an existing folder")
    exercises, hidden = {}, {}
    for path in sorted(folder.glob("*.py")):
        if path.name.startswith("_"):
            continue
        module = _import_file(path)
        exercise = getattr(module, "EXERCISE", None)
        if exercise is not None and not isinstance(exercise, Exercise):
            raise ValueError(f"{path}: EXERCISE must be an Exercise, got {type(exercise).__name__}")
        match = MODULE_NAME.match(path.stem)
        if exercise is None and match is None:
            raise ValueError(
                f"{path}: name the file exNN_topic.py after its exercise, or define EXERCISE"
            )
        name = exercise.name if exercise is not None else match.group(1)
        if exercise is not None:
            exercises[name] = exercise
        cases = getattr(module, "HIDDEN", {})
        if not isinstance(cases, Mapping):
            raise ValueError(f"{path}: HIDDEN must be a dict of question name -> list of Case")
        hidden[name] = cases
    return exercises, hidden


def load_exercises(tests: Path | None = None) -> dict[str, Exercise]:
    """Every exercise the grader knows, each question's hidden cases merged in.

    Args:
        tests: the tests folder; ``None`` uses :func:`default_tests_dir` (none if absent).

    Raises:
        ValueError: hidden cases name an unknown exercise or question, or are not plain data.
    """
    exercises = builtin_exercises()
    folder = default_tests_dir() if tests is None else tests
    extra, hidden = load_tests(folder) if folder is not None else ({}, {})
    exercises.update(extra)
    for name, cases in hidden.items():
        if name not in exercises:
            known = ", ".join(sorted(exercises)) or "none"
            raise ValueError(f"hidden tests for unknown exercise {name!r} (known: {known})")
        exercises[name] = merge_hidden(exercises[name], cases)
    for exercise in exercises.values():
        check_plain(exercise)
    return exercises


def merge_hidden(exercise: Exercise, hidden: Mapping[str, list[Case]]) -> Exercise:
    """``exercise`` with ``hidden[q]`` appended to question ``q``'s hidden cases."""
    for qname, cases in hidden.items():
        exercise.question(qname)  # raises ValueError naming the known questions
        if not all(isinstance(c, Case) for c in cases):
            raise ValueError(f"exercise {exercise.name}: HIDDEN[{qname!r}] must be a list of Case")
    questions = tuple(
        dataclasses.replace(q, hidden=(*q.hidden, *hidden.get(q.name, ())))
        for q in exercise.questions
    )
    return dataclasses.replace(exercise, questions=questions)


def check_plain(exercise: Exercise) -> None:
    """Raise ``ValueError`` unless every case's kwargs survive ``torch.load(weights_only=True)``."""
    for q in exercise.questions:
        for case in (*q.visible, *q.hidden):
            buffer = io.BytesIO()
            try:
                torch.save(case.kwargs, buffer)
                buffer.seek(0)
                torch.load(buffer, weights_only=True)
            except Exception as err:  # pickling or unpickling refused: say which case
                raise ValueError(
                    f"exercise {exercise.name}, {q.name}, case {case.label!r}: kwargs must be "
                    f"plain data (tensors, numbers, str, lists, tuples, dicts): {err}"
                ) from err


def identify(
    declared: str | None, stem: str, exercises: Mapping[str, Exercise], fallback: str | None = None
) -> tuple[Exercise | None, str]:
    """Which exercise a notebook is: ``(exercise, how it was decided)`` or ``(None, why not)``.

    Args:
        declared: the notebook's ``workbook.exercise`` metadata, if any.
        stem: its file name without ``.ipynb``.
        fallback: the grader's ``--exercise`` option, if given.
    """
    known = ", ".join(sorted(exercises)) or "none"
    if declared is not None:
        if declared in exercises:
            return exercises[declared], "from the notebook's metadata"
        return None, f"the notebook says it is exercise {declared!r}, which is not known ({known})"
    if fallback is not None:
        return exercises[fallback], "from the grader's --exercise option"
    named = [name for name in exercises if name in stem]
    if len(named) == 1:
        return exercises[named[0]], "from the file name"
    return None, (
        "could not tell which exercise this notebook is: its metadata has no workbook.exercise "
        f"and its file name names no single known exercise ({known}); grade it with --exercise"
    )


def _import_file(path: Path):
    name = f"metalib_hidden_tests.{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look modules up by name
    spec.loader.exec_module(module)
    return module
