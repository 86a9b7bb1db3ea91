"""Tests of tools/book_cache.executed_by_book: which chapters nbval may leave to the book build."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import nbformat
from jupyter_cache import get_cache
from jupyter_cache.base import CacheBundleIn
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from conftest import ROOT

_spec = importlib.util.spec_from_file_location("book_cache", ROOT / "tools" / "book_cache.py")
bc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bc)


def _notebook(path: Path, code: str) -> Path:
    nb = new_notebook(cells=[new_markdown_cell("# A chapter"), new_code_cell(code)])
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nbformat.write(nb, path)
    return path


def _book(tmp_path: Path, *executed: Path) -> tuple[Path, Path]:
    """A cache holding the given notebooks as executed, and a stamp of today's metalib."""
    cache = tmp_path / "jupyter_cache"
    book = get_cache(str(cache))
    for path in executed:
        nb = nbformat.read(path, as_version=4)
        book.cache_notebook_bundle(CacheBundleIn(nb, str(path)), check_validity=False)
    stamp = tmp_path / "stamp"
    stamp.write_text(bc.source_hash() + "\n")
    return cache, stamp


def test_cached_unchanged_notebook_counts_as_executed(tmp_path):
    a = _notebook(tmp_path / "a.ipynb", "x = 1")
    b = _notebook(tmp_path / "b.ipynb", "y = 2")
    cache, stamp = _book(tmp_path, a)
    assert bc.executed_by_book([a, b], cache, stamp) == {a}


def test_edited_code_is_executed_again(tmp_path):
    a = _notebook(tmp_path / "a.ipynb", "x = 1")
    cache, stamp = _book(tmp_path, a)
    _notebook(a, "x = 2")
    assert bc.executed_by_book([a], cache, stamp) == set()


def test_edited_prose_alone_keeps_the_record(tmp_path):
    a = _notebook(tmp_path / "a.ipynb", "x = 1")
    cache, stamp = _book(tmp_path, a)
    nb = nbformat.read(a, as_version=4)
    nb.cells[0].source = "# Another title"
    nbformat.write(nb, a)
    assert bc.executed_by_book([a], cache, stamp) == {a}


def test_changed_metalib_or_missing_cache_trusts_nothing(tmp_path):
    a = _notebook(tmp_path / "a.ipynb", "x = 1")
    cache, stamp = _book(tmp_path, a)
    stamp.write_text("0" * 64 + "\n")  # metalib as it was at some other build
    assert bc.executed_by_book([a], cache, stamp) == set()
    assert bc.executed_by_book([a], tmp_path / "no_cache", stamp) == set()
    stamp.unlink()
    assert bc.executed_by_book([a], cache, stamp) == set()
