"""Notebooks under nbval: a chapter the book build has just executed, unchanged, is not run twice.

``make book`` executes every chapter (myst-nb, any cell error fails the build) and keeps the
executed notebooks in ``_build/.jupyter_cache``. When ``make test`` follows it — as in CI —
executing each chapter again under nbval would double the run time and test nothing new, so
chapters whose code cells the cache holds exactly, with metalib unchanged since that build
(``tools/book_cache.executed_by_book``), are reported as skipped, with the reason. Any edit to a
chapter's code or to metalib makes nbval execute it again. ``METALIB_NBVAL_FRESH=1`` executes
every notebook regardless. Solutions are always executed (a few seconds each).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent


def _book_cache_tool():
    spec = importlib.util.spec_from_file_location("book_cache", ROOT / "tools" / "book_cache.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    chapters = {Path(str(item.path)) for item in items if item.path.suffix == ".ipynb"}
    chapters = {p for p in chapters if p.parent == ROOT / "chapters"}
    if not chapters or os.environ.get("METALIB_NBVAL_FRESH") == "1":
        return
    done = _book_cache_tool().executed_by_book(sorted(chapters))
    skip = pytest.mark.skip(
        reason="executed without error by the last `make book` with this exact code and metalib "
        "(set METALIB_NBVAL_FRESH=1 to execute it again)"
    )
    for item in items:
        if Path(str(item.path)) in done:
            item.add_marker(skip)
