"""Colab: every chapter and exercise opens with one setup cell that installs metalib where it is
missing, and with it a notebook runs alone in an environment that has only torch (and a kernel).

The simulation copies one chapter and one exercise into an empty folder outside the checkout and
runs them, with nbclient, on a kernel of a fresh venv holding torch and ipykernel only, as Colab
has them. The setup cell then installs the project — from a copy of its source here
(``METALIB_SOURCE``), from its git URL on Colab — and the notebooks run, the exercise's checks
answering. That venv's other packages (numpy, matplotlib, ipywidgets, ...) come from pip's index,
as they would on a new machine.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "tools"))
import colab  # noqa: E402

NOTEBOOKS = sorted(
    str(p.relative_to(ROOT))
    for folder in ("chapters", "solutions", "exercises")
    for p in (ROOT / folder).glob("*.ipynb")
)


def _code_cells(path: Path) -> list[dict]:
    return [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]


@pytest.mark.parametrize("path", NOTEBOOKS)
def test_the_first_code_cell_is_the_setup_cell_and_the_only_one_that_installs(path):
    cells = _code_cells(ROOT / path)
    source = colab.cell_source(cells[0])
    assert source is not None, (
        f"{path}: the first code cell must be tools/colab.py's setup cell, exactly; "
        "run `python tools/colab.py` (then `make exercises`)"
    )
    assert "remove-cell" in cells[0].get("metadata", {}).get("tags", []), path
    for i, cell in enumerate(cells[1:], start=1):
        text = "".join(cell["source"])
        assert not colab.is_setup_cell(cell), f"{path}: a second setup cell (code cell {i})"
        assert "pip" not in text.replace("pipeline", ""), (
            f"{path}, code cell {i}: only the setup cell installs; dependencies belong in "
            "pyproject.toml"
        )


def test_committed_notebooks_name_one_repository_and_are_in_sync():
    sources = {colab.cell_source(_code_cells(ROOT / p)[0]) for p in NOTEBOOKS}
    assert len(sources) == 1, f"the setup cells install different things: {sources}"
    check = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "colab.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.parametrize(
    "repository, branch, says",
    [
        ("https://github.com/o/n.git", "main", "no .git"),
        ("github.com/o/n", "main", "https://host/owner/name"),
        ("https://github.com/o", "main", "https://host/owner/name"),
        ("https://github.com/o/n", "", "BRANCH"),
        ("https://github.com/o/n", 'ma"in', "BRANCH"),
    ],
)
def test_a_bad_repository_or_branch_says_what_to_write(repository, branch, says):
    with pytest.raises(ValueError, match=says):
        colab.pip_source(repository, branch)


def test_stamping_writes_the_address_once_and_is_idempotent(tmp_path):
    for folder in colab.FOLDERS:
        (tmp_path / folder).mkdir()
        shutil.copy(ROOT / folder / "00_tasks.ipynb", tmp_path / folder)
    run = [sys.executable, str(ROOT / "tools" / "colab.py"), "--root", str(tmp_path)]
    out = subprocess.run(
        [*run, "--repository", "https://github.com/o/n", "--branch", "v1"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    for folder in colab.FOLDERS:
        nb = nbformat.read(tmp_path / folder / "00_tasks.ipynb", as_version=4)
        setup = [c for c in nb.cells if colab.is_setup_cell(c)]
        assert len(setup) == 1
        assert colab.cell_source(setup[0]) == "metalib @ git+https://github.com/o/n.git@v1"
        before = len(nb.cells)
        original = nbformat.read(ROOT / folder / "00_tasks.ipynb", as_version=4)
        assert before == len(original.cells), "stamping replaces the cell, it does not add one"
    again = subprocess.run([*run, "--check"], capture_output=True, text=True)
    assert again.returncode == 0, again.stdout  # the address is kept when none is given
    bad = subprocess.run([*run, "--repository", "nope"], capture_output=True, text=True)
    assert bad.returncode == 2 and "REPOSITORY" in bad.stderr


def test_without_an_address_the_cell_stops_with_what_to_do(tmp_path):
    """Where metalib is missing and no repository is named, the cell raises, saying what to do."""
    code = colab.setup_cell("")
    env = {k: v for k, v in os.environ.items() if k != "METALIB_SOURCE"}
    out = subprocess.run(
        [sys.executable, "-S", "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env
    )
    assert out.returncode != 0
    assert "ModuleNotFoundError" in out.stderr and "METALIB_SOURCE" in out.stderr, out.stderr


def _project_source(dest: Path) -> Path:
    """A copy of what pip needs to build metalib (the checkout stays free of build folders)."""
    dest.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, dest / name)
    shutil.copytree(
        ROOT / "metalib",
        dest / "metalib",
        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"),
    )
    return dest


def _kernel_spec(tmp: Path, python: Path) -> Path:
    spec = tmp / "kernels" / "colab-sim"
    spec.mkdir(parents=True)
    argv = [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": "colab-sim", "language": "python"})
    )
    return spec.parent


def _outputs_text(nb: nbformat.NotebookNode) -> list[str]:
    texts = []
    for cell in nb.cells:
        if cell.cell_type == "code":
            texts.append("".join(o.get("text", "") for o in cell.get("outputs", [])))
    return texts


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_chapter_and_an_exercise_run_alone_with_only_torch_installed(tmp_path):
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager
    from nbclient import NotebookClient

    venv = tmp_path / "colab-venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    torch_pin = next(
        line.strip()
        for line in (ROOT / "requirements.lock").read_text().splitlines()
        if line.startswith("torch==")
    )
    install = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*install, torch_pin, "ipykernel"], check=True)
    probe = subprocess.run(
        [str(python), "-c", "import importlib.util as u; print(u.find_spec('metalib'))"],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,  # not the checkout, whose metalib/ would import from the working folder
    )
    assert probe.stdout.strip() == "None", "the simulated Colab must start without metalib"

    work = tmp_path / "notebooks"  # an empty folder outside the checkout, as Colab's
    work.mkdir()
    shutil.copy(ROOT / "chapters" / "00_tasks.ipynb", work / "chapter.ipynb")
    shutil.copy(ROOT / "exercises" / "00_tasks.ipynb", work / "exercise.ipynb")
    # A student's answers: the solution's question cells in the exercise's place.
    shutil.copy(ROOT / "solutions" / "00_tasks.ipynb", work / "answered.ipynb")

    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["METALIB_SOURCE"] = str(_project_source(tmp_path / "src"))
    env["METALIB_PROGRESS"] = "0"
    env.setdefault("METALIB_THREADS", "2")
    specs = KernelSpecManager(kernel_dirs=[str(_kernel_spec(tmp_path, python))])

    results = {}
    for name in ("chapter", "exercise", "answered"):
        nb = nbformat.read(work / f"{name}.ipynb", as_version=4)
        km = KernelManager(kernel_name="colab-sim", kernel_spec_manager=specs)
        client = NotebookClient(nb, km=km, timeout=600, resources={"metadata": {"path": str(work)}})
        client.execute(env=env)  # any cell error raises CellExecutionError here
        results[name] = _outputs_text(nb)
        if name == "chapter":
            installed = subprocess.run(
                [str(python), "-c", "import metalib, sys; print(metalib.__file__)"],
                capture_output=True,
                text=True,
                check=True,
                cwd=tmp_path,
            )
            assert str(venv) in installed.stdout, "the setup cell installed metalib in the venv"

    exercise = "\n".join(results["exercise"])
    answered = "\n".join(results["answered"])
    for q in ("q1", "q2", "q3", "q4"):
        assert f"{q}: not yet" in exercise, exercise
        assert f"{q}: passed" in answered, answered


def test_a_cell_of_the_old_wording_is_replaced_and_every_line_fits_the_column():
    old = nbformat.v4.new_code_cell(colab.OLD_FIRST_LINES[0] + "\nimport os\n")
    nb = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_markdown_cell("# A"), old, nbformat.v4.new_code_cell("x = 1")]
    )
    assert colab.stamp(nb, "")
    setup = [c for c in nb.cells if colab.is_setup_cell(c)]
    assert len(setup) == 1 and setup[0].source == colab.setup_cell("")
    assert [c.source for c in nb.cells][2] == "x = 1"
    assert max(map(len, colab.setup_cell("").splitlines())) <= 77  # the book's code column
