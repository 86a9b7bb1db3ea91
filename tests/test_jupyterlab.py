"""The workbook in JupyterLab, as a student uses it: an exercise and a chapter, Run All Cells.

``tools/lab_check.py`` starts the venv's JupyterLab (localhost, a free port, a known token,
offline) on stripped copies of the smallest exercise and of chapter 0, and drives Debian's
Chromium through Playwright (as ``tools/check_book.py`` does): **Run > Run All Cells** from the
menu bar, a wait for every cell and an idle kernel, a save, then it reads what JupyterLab shows
and saved. These tests require: every code cell ran; no error output except in cells meant to
raise; the exercise's check cells show their verdicts; the chapter's episode explorer is drawn
as live controls with its figure; no console error, no request off the machine, no error in
the server's log. Screenshots: ``_build/screenshots/lab_*.png``.

The check runs in a child process, once for both tests: when time runs out, killing it takes
the browser, the server and the kernels with it (a Playwright call interrupted inside pytest
can leave the browser's connection unable to close). Skipped only when Chromium or Playwright
is missing and ``CI`` is unset; in CI it must run.
"""

from __future__ import annotations

import ctypes
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys

import nbformat
import pytest

from conftest import ROOT

_spec = importlib.util.spec_from_file_location("lab_check", ROOT / "tools" / "lab_check.py")
lab_check = sys.modules["lab_check"] = importlib.util.module_from_spec(_spec)  # (dataclasses)
_spec.loader.exec_module(lab_check)

pytestmark = pytest.mark.slow
EXERCISE = sorted((ROOT / "exercises").glob("00_*.ipynb"))[0]  # the smallest, ~3 s to run
CHAPTER = ROOT / "chapters" / "00_tasks.ipynb"  # the episode explorer; the fastest chapter
RUN_TIMEOUT_S = 240  # both notebooks; about 35 s on 2 cores
TEST_TIMEOUT_S = RUN_TIMEOUT_S + 60  # pytest-timeout's backstop, fixture included


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """Linux: the check gets SIGKILL if pytest dies; its server and browser follow it."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _text(out: str | bytes | None) -> str:
    return out.decode(errors="replace") if isinstance(out, bytes) else out or ""


@pytest.fixture(scope="module")
def lab_runs(tmp_path_factory) -> dict[str, dict]:
    """notebook path -> what ``tools/lab_check.py`` found there (its ``LabRun.to_json``)."""
    missing = lab_check.browser_missing()
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"{missing}; CI must run the JupyterLab test (.ci/run installs chromium)")
        pytest.skip(missing)
    work = tmp_path_factory.mktemp("lab")  # copies, server state and log: pytest keeps the last
    out = work / "runs.json"
    command = [sys.executable, "-u", str(ROOT / "tools" / "lab_check.py"), "--json", str(out)]
    command += ["--workdir", str(work)]
    late = None
    try:
        # On a timeout, or pytest-timeout's interrupt, subprocess.run kills the child; its
        # server (SIGTERM on its parent's death: kernels shut down) and browser follow.
        done = subprocess.run(
            [*command, str(EXERCISE), str(CHAPTER)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT_S,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
    except subprocess.TimeoutExpired as err:
        late = f"{_text(err.stdout)}\n{_text(err.stderr)}".strip()
    if late is not None:
        pytest.fail(f"tools/lab_check.py did not finish in {RUN_TIMEOUT_S} s:\n{late}", False)
    output = f"{done.stdout}\n{done.stderr}".strip()
    if not out.exists():
        pytest.fail(f"tools/lab_check.py exited {done.returncode} with no report:\n{output}")
    runs = {run["notebook"]: run for run in json.loads(out.read_text())}
    for run in runs.values():
        run["output"] = output
    return runs


def found(lab_runs: dict, notebook) -> dict:
    """The run of ``notebook``; fails with everything it saw when it has problems."""
    name = notebook.relative_to(ROOT).as_posix()
    assert name in lab_runs, f"no run of {name}:\n{next(iter(lab_runs.values()))['output']}"
    run = lab_runs[name]
    if run["problems"]:
        pytest.fail(run["report"], pytrace=False)
    assert run["screenshot"] and os.path.getsize(run["screenshot"]) > 10_000, run["screenshot"]
    return run


def shown(run: dict, index: int) -> str:
    """The text of cell ``index``'s outputs as JupyterLab shows them."""
    return "\n".join(o["text"] for o in run["cells"][index]["outputs"])


@pytest.mark.timeout(TEST_TIMEOUT_S, method="signal")
def test_exercise_in_jupyterlab_shows_a_verdict_per_question(lab_runs):
    source = nbformat.read(EXERCISE, as_version=4)
    questions = lab_check.check_cells(source)
    assert questions, f"{EXERCISE.name}: no check cell (check('q1', fn)); is it an exercise?"
    # As generated, every answer is a stub inside a function: the checks catch its
    # NotImplementedError, so no cell of the exercise may show an error (lab_check's problems).
    assert lab_check.expected_errors(source) == {}, "a stub raises at top level in the exercise"
    run = found(lab_runs, EXERCISE)
    for i, question in questions.items():
        text = shown(run, i)
        verdict = lab_check.verdict_line(question).search(text)
        assert verdict and verdict.group(1) == "not yet" and verdict.group(2) == "0", (
            f"cell {i}: the blank exercise should score 0 on {question}: shows {text!r}"
        )
        assert "not answered yet" in text, f"cell {i}: {text!r}"


@pytest.mark.timeout(TEST_TIMEOUT_S, method="signal")
def test_chapter_in_jupyterlab_draws_its_widget(lab_runs):
    source = nbformat.read(CHAPTER, as_version=4)
    assert "metalib.widgets" in "".join(c.source for c in source.cells), (
        f"{CHAPTER.name} no longer shows a widget; point this test at a chapter that does"
    )
    run = found(lab_runs, CHAPTER)
    assert run["widgets"], "no widget in the chapter's saved outputs\n" + run["report"]
    for views, drawn in run["widgets"].values():
        assert len(drawn) == views, run["report"]
        for widget in drawn:  # the episode explorer: a dropdown, sliders, and its figure
            assert {"widget-dropdown", "widget-hslider"} <= set(widget["widgets"]), widget
            assert widget["images"] and min(widget["images"]) > 0, widget
    # The intended error is shown, and only there (any other fails lab_check).
    tracebacks = [i for i in range(len(source.cells)) if "Traceback" in shown(run, i)]
    assert tracebacks == sorted(lab_check.expected_errors(source)), tracebacks
    prompts = [c["prompt"] for c in run["cells"] if c["kind"] == "code"]
    assert all(re.match(r"^\[\d+\]:$", p) for p in prompts), prompts
