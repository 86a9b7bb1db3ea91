"""``make release``: the repository as students get it — no answers, no links to them, its own
tests passing, its book building."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT

sys.path.insert(0, str(ROOT / "tools"))
import book_cache  # noqa: E402
import colab  # noqa: E402
import release  # noqa: E402

LINK_TO_SOLUTIONS = re.compile(r"\]\([^)]*solutions/")


@pytest.fixture(scope="module")
def student_repo(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("release") / "workbook"
    assert release.main([str(out), "--repository", "https://github.com/o/course"]) == 0
    return out


def test_the_answers_and_the_instructors_material_are_left_out(student_repo):
    for path in release.LEFT_OUT:
        assert not (student_repo / path).exists(), path
    assert sorted(p.name for p in (student_repo / "exercises").glob("*.ipynb")) == sorted(
        p.name for p in (ROOT / "exercises").glob("*.ipynb")
    )
    for path in student_repo.rglob("*"):
        if path.suffix in (".md", ".ipynb", ".yml") and ".git" not in path.parts:
            text = path.read_text()
            if path.name == "README.md" and path.parent == student_repo:
                continue  # the README describes the instructors' repository too, linking nothing
            assert not LINK_TO_SOLUTIONS.search(text), f"{path}: links to solutions/"


def test_no_line_of_an_answer_is_in_the_release(student_repo, tmp_path):
    secret = release.solution_only_lines()
    assert len(secret) > 50, "the answer blocks of the solutions should give many lines"
    assert release.leaks(student_repo, secret) == []
    # and the check finds a line that is there: plant one in a copy
    copy = tmp_path / "copy"
    shutil.copytree(student_repo / "exercises", copy / "exercises")
    line = sorted(secret)[0]
    (copy / "exercises" / "notes.py").write_text(f"    {line}\n")
    assert release.leaks(copy, secret) == [f"exercises/notes.py: {line}"]


def test_the_exercises_are_the_generated_ones_and_install_from_the_repository(student_repo):
    for path in sorted((student_repo / "exercises").glob("*.ipynb")):
        released = yaml.safe_load(path.read_text())["cells"]
        ours = yaml.safe_load((ROOT / "exercises" / path.name).read_text())["cells"]
        assert len(released) == len(ours), path.name
        for mine, theirs in zip(released, ours, strict=True):
            if colab.is_setup_cell(theirs):
                assert (
                    colab.cell_source(mine) == "metalib @ git+https://github.com/o/course.git@main"
                )
            else:
                assert mine["source"] == theirs["source"], path.name


def test_the_release_is_a_git_repository_whose_toc_names_only_its_files(student_repo):
    log = subprocess.run(
        ["git", "log", "--oneline"], cwd=student_repo, capture_output=True, text=True, check=True
    )
    assert len(log.stdout.splitlines()) == 1 and "Students' release of" in log.stdout
    toc = yaml.safe_load((student_repo / "_toc.yml").read_text())
    files = [c["file"] for part in toc["parts"] for c in part["chapters"]]
    assert files and not any(f.startswith("solutions/") or f == "course" for f in files)
    for f in files:
        assert any((student_repo / f"{f}{ext}").exists() for ext in (".md", ".ipynb")), f
    assert release.dangling_links(student_repo) == []


def test_a_link_to_a_left_out_page_is_found(tmp_path):
    (tmp_path / "chapters").mkdir()
    (tmp_path / "intro.md").write_text("[ok](chapters/x) [gone](course) [web](https://a.b/c)")
    (tmp_path / "chapters" / "x.md").write_text("[up](../intro.md#map) [no](../solutions/x.ipynb)")
    assert release.dangling_links(tmp_path) == [
        "chapters/x.md: ../solutions/x.ipynb",
        "intro.md: course",
    ]


def test_instructors_commands_say_what_is_missing(student_repo):
    out = subprocess.run(
        ["make", "-o", ".venv/.installed-stamp", "exercises"],  # -o: no venv needed
        cwd=student_repo,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2 and "students' release leaves out" in out.stdout, out


def test_a_release_needs_an_empty_folder_outside_the_repository(tmp_path, capsys):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    assert release.main([str(tmp_path / "full")]) == 2
    assert release.main([str(ROOT / "_build" / "inside")]) == 2
    assert "outside the repository" in capsys.readouterr().err


def _release_env(student_repo: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(student_repo)  # its own metalib, not the checkout's editable one
    env["METALIB_PROGRESS"] = "0"
    return env


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_release_passes_its_own_unit_tests(student_repo):
    probe = subprocess.run(
        [sys.executable, "-c", "import metalib; print(metalib.__file__)"],
        cwd=student_repo,
        env=_release_env(student_repo),
        capture_output=True,
        text=True,
        check=True,
    )
    assert probe.stdout.startswith(str(student_repo)), probe.stdout
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "tests", "-m", "not slow", "-q", "-p", "no:cacheprovider"],
        cwd=student_repo,
        env=_release_env(student_repo),
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_release_builds_its_book(tmp_path):
    """With the chapters' executed outputs from the last `make book` (a release without
    REPOSITORY has the same code cells), the release's book builds with warnings as errors."""
    chapters = sorted((ROOT / "chapters").glob("*.ipynb"))
    if book_cache.executed_by_book(chapters) != set(chapters):
        pytest.skip("needs `make book` first: the release reuses its executed chapters")
    student_repo = tmp_path / "workbook"
    assert release.main([str(student_repo)]) == 0
    build = student_repo / "_build"
    shutil.copytree(ROOT / "_build" / ".jupyter_cache", build / ".jupyter_cache")
    if (ROOT / "_build" / "offline_static").exists():
        shutil.copytree(ROOT / "_build" / "offline_static", build / "offline_static")
    run = subprocess.run(
        [str(Path(sys.executable).parent / "jupyter-book"), "build", "--all", "-W", "-n", "."],
        cwd=student_repo,
        env=_release_env(student_repo),
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    pages = {p.relative_to(build / "html").as_posix() for p in (build / "html").rglob("*.html")}
    assert "chapters/02_maml.html" in pages and "exercises/02_maml.html" in pages
    assert not any(p.startswith("solutions/") or p == "course.html" for p in pages)
    assert "solutions/" not in (build / "html" / "chapters" / "00_tasks.html").read_text()
