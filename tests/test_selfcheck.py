"""The students' self-check (``python -m metalib.grading.check``): visible checks, no sandbox.

On the smallest real exercise (00_tasks): its solution scores the full visible points, its
generated exercise (stubs) reports each question not answered; without touching the hidden tests.
Then what a notebook can do to it (endless cells, a dying process) and the time limit without
signals that Windows uses. Runs on other systems are simulated in ``test_platforms.py``.
"""

from __future__ import annotations

import time
from pathlib import Path

import nbformat
import pytest

from conftest import ROOT
from metalib.grading import check, registry, runner
from metalib.grading.launch import Limits

SOLUTION = ROOT / "solutions" / "00_tasks.ipynb"
EXERCISE = ROOT / "exercises" / "00_tasks.ipynb"
needs_notebooks = pytest.mark.skipif(
    not (SOLUTION.exists() and EXERCISE.exists()), reason="no 00_tasks solution or exercise"
)


@pytest.fixture
def no_hidden_tests(monkeypatch):
    """Fail if anything reads the hidden tests: students have none."""

    def refuse(*args, **kwargs):
        raise AssertionError("the self-check must not load the hidden tests")

    monkeypatch.setattr(registry, "load_tests", refuse)
    monkeypatch.setattr(registry, "load_exercises", refuse)
    monkeypatch.setattr(registry, "default_tests_dir", refuse)


def total(text: str) -> list[str]:
    """``["7.5", "/", "10"]`` from the table's total line."""
    line = next(ln for ln in text.splitlines() if ln.startswith("total on the visible checks"))
    return line.split()[-3:]


@needs_notebooks
def test_solution_full_and_exercise_not_answered(no_hidden_tests, capsys):
    code = check.main([str(SOLUTION), str(EXERCISE)])
    out = capsys.readouterr().out
    assert code == 0, out
    solution, exercise = out.split(f"running {EXERCISE} ...")
    assert total(solution) == ["10", "/", "10"], solution
    assert "3 of 3" in solution and "not answered" not in solution
    assert total(exercise) == ["0", "/", "10"], exercise
    questions = registry.builtin_exercises()["00_tasks"].questions
    assert exercise.count("- not answered yet") == len(questions), exercise
    assert "exercise 00_tasks (from the notebook's metadata)" in exercise
    assert "hidden checks" in out and "Linux (make grade) or Gradescope" in out


def solution_with(tmp_path: Path, *extra: str, name: str = "mine.ipynb") -> Path:
    """The 00_tasks solution with ``extra`` code cells appended."""
    nb = nbformat.read(SOLUTION, as_version=4)
    nb.cells += [nbformat.v4.new_code_cell(code) for code in extra]
    path = tmp_path / name
    nbformat.write(nb, path)
    return path


@needs_notebooks
def test_an_endless_cell_costs_that_cell_and_output_is_capped(no_hidden_tests, tmp_path):
    flood = "for _ in range(50):\n    print('x' * 1_000_000)"
    path = solution_with(tmp_path, "while True:\n    pass", flood, "print('after the loop')")
    report = check.check_notebook(
        path, registry.builtin_exercises(), Limits(timeout=60, cell_timeout=2)
    )
    assert report.started and report.problem is None, report
    assert report.score == report.max_score == 10
    assert any("stopped after 2 s" in note for note in report.notes), report.notes
    assert report.output.rstrip().endswith("after the loop")
    assert len(report.output) < 3 * check.OUTPUT_KB << 10
    assert "bytes of output left out" in report.output


@needs_notebooks
def test_a_dying_or_sleeping_notebook_is_reported(no_hidden_tests, tmp_path):
    exercises = registry.builtin_exercises()
    dying = solution_with(tmp_path, "import os\nos._exit(3)", name="dying.ipynb")
    report = check.check_notebook(dying, exercises, Limits(timeout=60))
    assert report.score == 0 and "process ended while running cell" in report.problem
    assert "exit 3" in report.problem and "checks not run" in report.table()
    sleeping = solution_with(tmp_path, "import time\ntime.sleep(600)", name="sleeping.ipynb")
    start = time.monotonic()
    report = check.check_notebook(sleeping, exercises, Limits(timeout=8, cell_timeout=600))
    assert time.monotonic() - start < 60
    assert "did not finish within 8 s" in report.problem, report.problem


def test_unknown_notebooks_and_bad_arguments(no_hidden_tests, tmp_path, capsys):
    mystery = tmp_path / "mystery.ipynb"
    mystery.write_text(nbformat.writes(nbformat.v4.new_notebook()))
    assert check.main([str(mystery)]) == 1
    assert "not checked: could not tell which exercise" in capsys.readouterr().out
    (tmp_path / "broken.ipynb").write_text("{not json")
    assert check.main([str(tmp_path / "broken.ipynb")]) == 1
    assert "not a notebook" in capsys.readouterr().out
    assert check.main([str(tmp_path / "missing.ipynb")]) == 2
    assert check.main([str(mystery), "--exercise", "nope"]) == 2
    assert "not a known exercise" in capsys.readouterr().err


@pytest.mark.parametrize("use_signal", [True, False])
def test_time_limit_with_and_without_signals(use_signal):
    """SIGALRM (Linux, macOS) or a timer thread raising in the running code (Windows)."""
    start = time.monotonic()
    with pytest.raises(runner.TimeLimit):
        with runner.time_limit(0.3, use_signal=use_signal):
            while True:
                time.sleep(0.01)
    assert time.monotonic() - start < 5
    with runner.time_limit(0.3, use_signal=use_signal):  # ends in time: nothing raised later
        pass
    time.sleep(0.5)
