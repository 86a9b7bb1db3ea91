"""Students on any system: what metalib imports, what the grader says, what the self-check does.

Off Linux, nothing a student imports may import a Unix-only module at its top (``pwd``,
``resource``...); the grader must refuse with a message that names the self-check; the self-check
must run. Windows and macOS are simulated here: ``tests/platforms/sitecustomize.py`` makes a
Python block the modules such a system lacks and report its name as ``sys.platform``, after
loading the third-party packages the real way (see its docstring); ``tests/platforms/walk.py``
imports every module of metalib in it and runs the grader's command line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from conftest import ROOT
from metalib.grading import __main__ as cli
from metalib.grading import grader, launch
from metalib.grading.launch import GraderError, Limits

PLATFORMS = ("win32", "darwin")
FAKE = Path(__file__).resolve().parent / "platforms"
SOLUTION = ROOT / "solutions" / "00_tasks.ipynb"


def fake_env(platform: str, tmp_path: Path) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(FAKE), os.environ.get("PYTHONPATH", "")) if p)
    return {
        **os.environ,
        "PYTHONPATH": path,
        "METALIB_FAKE_PLATFORM": platform,
        "METALIB_FAKE_PLATFORM_REPORT": str(tmp_path / "preload.txt"),
    }


def a_notebook(tmp_path: Path) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("x = 1")]
    path = tmp_path / "some_00_tasks.ipynb"
    path.write_text(nbformat.writes(nb))
    return path


@pytest.mark.parametrize("platform", PLATFORMS)
def test_every_module_imports_and_the_grader_refuses_off_linux(platform, tmp_path):
    """Each module of metalib imports where pwd, resource, fcntl... do not exist (Windows) and
    on macOS; ``python -m metalib.grading --help`` works there; grading says what to do instead."""
    done = subprocess.run(
        [sys.executable, str(FAKE / "walk.py"), str(a_notebook(tmp_path)), str(tmp_path)],
        env=fake_env(platform, tmp_path),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.splitlines()[-1])
    assert report["platform"] == platform
    preload = (tmp_path / "preload.txt").read_text()
    assert preload == "", f"modules that do not import even on Linux:\n{preload}"
    assert report["problems"] == [], "\n".join(report["problems"])
    assert report["help_code"] == 0, report["help"]
    assert "usage: python -m metalib.grading" in report["help"]
    assert "python -m metalib.grading.check" in report["help"]
    assert report["grade_code"] == 1, report["grade_err"]
    error = report["grade_err"]
    assert (
        "grading needs Linux" in error
        and {"win32": "Windows", "darwin": "macOS"}[platform] in error
    )
    assert "python -m metalib.grading.check NOTEBOOK" in error
    assert "Gradescope" in error and "make grade" in error


@pytest.mark.skipif(not SOLUTION.exists(), reason="no solutions/00_tasks.ipynb")
@pytest.mark.parametrize("platform", PLATFORMS)
def test_self_check_runs_off_linux(platform, tmp_path):
    """The self-check, and the Python it starts for the notebook, on a simulated system."""
    done = subprocess.run(
        [sys.executable, "-m", "metalib.grading.check", str(SOLUTION)],
        env=fake_env(platform, tmp_path),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    lines = done.stdout.splitlines()
    total = next(ln for ln in lines if ln.startswith("total on the visible checks"))
    assert total.split()[-3:] == ["10", "/", "10"], done.stdout
    assert "hidden checks" in done.stdout and "Linux" in done.stdout


@pytest.mark.parametrize("platform", PLATFORMS)
def test_grader_refuses_to_grade_off_linux(platform, tmp_path, monkeypatch, capsys):
    """No unsandboxed grading off Linux: an error (not a printed warning) naming the way out."""
    monkeypatch.setattr(sys, "platform", platform)
    with pytest.raises(GraderError, match="grading needs Linux") as refused:
        grader.Grader({}, Limits())
    message = str(refused.value)
    assert "python -m metalib.grading.check NOTEBOOK" in message
    assert "make grade" in message and "Gradescope" in message
    with pytest.raises(GraderError, match="grading needs Linux"):
        grader.preflight(sys.executable, Limits(), [])
    with pytest.raises(GraderError, match="grading needs Linux"):
        launch.run({"cells": [], "questions": []}, tmp_path, Limits(), sys.executable, [])
    code = cli.main([str(a_notebook(tmp_path)), "--out", str(tmp_path / "out")])
    assert code == 1
    assert "error: the grader cannot run: grading needs Linux" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
