"""Drop the book's execution cache when metalib's source has changed since the last build.

Jupyter Book's cache (``_build/.jupyter_cache``) is keyed on each notebook's own code, so a change
to the library the chapters import would otherwise leave stale outputs in the book. Run by
``make book`` before building; prints what it did.

:func:`executed_by_book` answers the converse question for the test command: which notebooks has
the last book build executed, without an error, exactly as they are now (same code cells, same
metalib)? nbval need not execute those a second time (see the repository's ``conftest.py``).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "_build" / ".jupyter_cache"
STAMP = ROOT / "_build" / ".metalib-source-hash"


def source_hash() -> str:
    """A digest of every metalib source file (any of them can change what a notebook prints)."""
    from metalib.data.cache import digest

    return digest(*sorted((ROOT / "metalib").rglob("*.py")))


def executed_by_book(
    notebooks: Iterable[Path], cache: Path = CACHE, stamp: Path = STAMP
) -> set[Path]:
    """The notebooks whose current code the book's execution cache holds, metalib unchanged since.

    myst-nb stores a notebook in the cache only after it executed with no cell raising (the book
    runs with ``allow_errors: false``), and a cache record matches only a notebook with the same
    code cells and kernel. ``stamp`` holds :func:`source_hash` as it was when the cached notebooks
    were executed; when metalib has changed since, nothing counts as executed.

    Args:
        notebooks: ``.ipynb`` paths to look up.
        cache: the jupyter-cache folder of the book build.
        stamp: the file :func:`main` writes before each build.

    Returns:
        The subset of ``notebooks`` (as given) that need not be executed again.
    """
    if not cache.is_dir() or not stamp.is_file() or stamp.read_text().strip() != source_hash():
        return set()
    import nbformat  # the book's and the tests' dependency; not needed by main()
    from jupyter_cache import get_cache

    book = get_cache(str(cache))
    found = set()
    for path in notebooks:
        try:
            book.match_cache_notebook(nbformat.read(path, as_version=4))
        except KeyError:  # jupyter-cache's answer for "no record with this code"
            continue
        found.add(path)
    return found


def main() -> int:
    now = source_hash()
    before = STAMP.read_text().strip() if STAMP.exists() else None
    if before != now:
        if CACHE.exists():
            shutil.rmtree(CACHE)
            print("book_cache: metalib changed since the last build; chapters will be re-executed")
        STAMP.parent.mkdir(parents=True, exist_ok=True)
        STAMP.write_text(now + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
