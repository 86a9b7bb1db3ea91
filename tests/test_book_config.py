"""tools/book_config.py: the launch-button configuration Jupyter Book reads."""

from __future__ import annotations

import re
import sys

import pytest
import yaml
from jupyter_book.config import get_final_config

from conftest import ROOT

sys.path.insert(0, str(ROOT / "tools"))
import book_config  # noqa: E402


def test_plain_config_has_no_repository_so_no_launch_buttons():
    """Without a repository Jupyter Book would point the buttons at its own repository."""
    base = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert "repository" not in base
    assert not base.get("launch_buttons", {}).get("binderhub_url")
    assert not base.get("launch_buttons", {}).get("colab_url")


def test_generated_config_gives_sphinx_the_repository_and_binder(tmp_path):
    out = tmp_path / "config.yml"
    args = ["--repository", "https://github.com/o/workbook/", "--out", str(out)]
    assert book_config.main(args) == 0
    final, _ = get_final_config(
        user_yaml=out, cli_config={"latex_individualpages": False}, sourcedir=ROOT
    )
    theme = final["html_theme_options"]
    assert theme["repository_url"] == "https://github.com/o/workbook"
    assert theme["repository_branch"] == "main" and theme["path_to_docs"] == ""
    assert theme["launch_buttons"]["binderhub_url"] == book_config.BINDERHUB
    assert theme["launch_buttons"]["notebook_interface"] == "jupyterlab"
    assert theme["launch_buttons"]["colab_url"] == book_config.COLAB
    # everything else of _config.yml is kept
    base = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert yaml.safe_load(out.read_text())["execute"] == base["execute"]


@pytest.mark.parametrize(
    ("repository", "branch", "match"),
    [
        ("github.com/o/r", "main", "https://host/owner/name"),
        ("https://github.com/o/r.git", "main", "no .git"),
        ("https://github.com/o", "main", "https://host/owner/name"),
        ("https://github.com/o/r", " ", "BRANCH must name"),
    ],
)
def test_bad_repository_or_branch_is_refused(repository, branch, match):
    with pytest.raises(ValueError, match=match):
        book_config.launch_config({}, repository, branch)


def test_binder_environment_is_the_lock_with_the_cpu_torch():
    requirements = (ROOT / "binder/requirements.txt").read_text().splitlines()
    assert "-r ../requirements.lock" in requirements
    # PyPI's Linux torch is a CUDA build of several GB; PyTorch's CPU index serves the same
    # version as 2.13.0+cpu, which pip prefers for the lock's torch==2.13.0
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in requirements
    assert "pip install --no-deps -e ." in (ROOT / "binder/postBuild").read_text()


def test_binder_python_is_the_oldest_supported_one():
    """repo2docker picks its own default Python without runtime.txt; the lock needs 3.11+."""
    runtime = (ROOT / "binder/runtime.txt").read_text().strip()
    floor = re.search(r'requires-python = ">=(\d+\.\d+)"', (ROOT / "pyproject.toml").read_text())
    assert floor, "pyproject.toml states requires-python as >=X.Y"
    assert runtime == f"python-{floor.group(1)}"
    makefile = (ROOT / "Makefile").read_text()
    major, minor = floor.group(1).split(".")
    assert f"sys.version_info >= ({major}, {minor})" in makefile
    assert f"Python {floor.group(1)}" in (ROOT / "README.md").read_text()
