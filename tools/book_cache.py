"""Drop the book's execution cache when metalib's source has changed since the last build.

Jupyter Book's cache (``_build/.jupyter_cache``) is keyed on each notebook's own code, so a change
to the library the chapters import would otherwise leave stale outputs in the book. Run by
``make book`` before building; prints what it did.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "_build" / ".jupyter_cache"
STAMP = ROOT / "_build" / ".metalib-source-hash"


def source_hash() -> str:
    h = hashlib.sha256()
    for path in sorted((ROOT / "metalib").rglob("*.py")):
        h.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


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
