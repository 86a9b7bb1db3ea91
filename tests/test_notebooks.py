"""Notebooks are committed clean: valid nbformat 4, no outputs, no execution counts, one kernel."""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from conftest import ROOT

FOLDERS = ("chapters", "exercises", "solutions")


def tracked_notebooks() -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "--", *(f"{d}/*.ipynb" for d in FOLDERS)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return sorted(out)


NOTEBOOKS = tracked_notebooks()


def test_chapters_exist():
    names = [p.split("/")[-1] for p in NOTEBOOKS if p.startswith("chapters/")]
    assert "00_tasks.ipynb" in names and "01_finetuning.ipynb" in names, names


@pytest.mark.parametrize("path", NOTEBOOKS)
def test_committed_without_outputs(path):
    nb = json.loads((ROOT / path).read_text())
    assert nb["nbformat"] == 4
    dirty = [
        i
        for i, cell in enumerate(nb["cells"])
        if cell["cell_type"] == "code" and (cell.get("outputs") or cell.get("execution_count"))
    ]
    assert not dirty, f"{path}: cells {dirty} carry outputs; run `make strip` before committing"
    assert nb["metadata"].get("kernelspec", {}).get("name") == "python3", (
        f"{path}: the kernel must be 'python3' so the book build and nbval use the venv's Python"
    )


SHOW_WITH_ARGUMENT = re.compile(r"plt\.show\(\s*[^)\s]")


@pytest.mark.parametrize("path", NOTEBOOKS)
def test_plt_show_is_called_without_a_figure(path):
    """``pyplot.show`` takes no figure: handing it one works only because the inline backend
    reads the figure as its ``close`` argument; a script or another front end raises."""
    nb = json.loads((ROOT / path).read_text())
    for i, cell in enumerate(nb["cells"]):
        source = "".join(cell["source"])
        if cell["cell_type"] == "code" and SHOW_WITH_ARGUMENT.search(source):
            raise AssertionError(f"{path}, cell {i}: call plt.show() without arguments")


@pytest.mark.parametrize("path", [p for p in NOTEBOOKS if p.startswith("chapters/")])
def test_chapter_shape(path):
    """Each chapter seeds itself, uses metalib, and asserts the claims it teaches."""
    nb = json.loads((ROOT / path).read_text())
    code = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    text = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
    assert "seed_everything(" in code, f"{path}: open with metalib.runtime.seed_everything"
    assert "book_style()" in code, f"{path}: call metalib.plots.book_style() in the setup cell"
    assert "assert " in code, f"{path}: assert the claims the chapter teaches"
    assert "pip install" not in code, f"{path}: dependencies belong in pyproject.toml"
    assert not SHOW_WITH_ARGUMENT.search(code), (
        f"{path}: plt.show() takes no figure; call plt.show() (a figure argument works only "
        "under the inline backend, and raises under others)"
    )
    assert "{glue:" in text, f"{path}: numbers in the prose come from the code (myst-nb glue)"


@pytest.mark.parametrize("path", NOTEBOOKS)
def test_every_folded_cell_says_what_it_hides(path):
    """A `hide-input` cell carries a label ("Show the code for this figure"), not the default."""
    nb = json.loads((ROOT / path).read_text())
    unlabelled = [
        i
        for i, cell in enumerate(nb["cells"])
        if "hide-input" in cell.get("metadata", {}).get("tags", [])
        and not (
            cell["metadata"].get("mystnb", {}).get("code_prompt_show", "").startswith("Show the ")
            and cell["metadata"]["mystnb"].get("code_prompt_hide", "").startswith("Hide the ")
        )
    ]
    assert not unlabelled, (
        f"{path}: folded cells {unlabelled} need a label: set the cell metadata "
        '{"mystnb": {"code_prompt_show": "Show the code for this figure", '
        '"code_prompt_hide": "Hide the code for this figure"}}'
    )
