"""Fetch the JavaScript the book needs to show widgets offline, into _build/offline_static.

The HTML book embeds each widget's state; to draw it, a page needs require.js and the ipywidgets
embedder (``@jupyter-widgets/html-manager``), which myst-nb would otherwise load from a CDN. We take
both from the npm registry with ``npm pack`` (versions pinned below) and serve them from the book.
MathJax comes from the ``sphinx-mathjax-offline`` Python package. Run by ``make book``; does
nothing when the files are already there.

The embedder loads its icon fonts from a folder named after its module
(``@jupyter-widgets/html-manager/dist/``) beside the *page*, where nothing is; ``widget_paths.js``,
loaded between require.js and the embedder (see ``_config.yml``), maps that module name to the
book's static folder, wherever the page sits.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

PACKAGES = {
    # npm spec: {file inside the package: file name in the static folder}
    "requirejs@2.3.7": {"package/require.js": "require.js"},
    "@jupyter-widgets/html-manager@1.0.6": {"package/dist/": ""},
}
OUT = Path(__file__).resolve().parents[1] / "_build" / "offline_static"
WIDGET_PATHS = """// Written by tools/book_assets.py. The ipywidgets embedder finds its fonts
// next to its own module URL, which require.js resolves against the page's folder:
// point that module's folder here, at the book's static files.
(function () {
  var src = document.currentScript.src;
  require.config({
    paths: { "@jupyter-widgets/html-manager/dist": src.slice(0, src.lastIndexOf("/")) },
  });
})();
"""


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "widget_paths.js").write_text(WIDGET_PATHS)
    if (OUT / "require.js").exists() and (OUT / "embed-amd.js").exists():
        return 0
    if shutil.which("npm") is None:
        print(
            "tools/book_assets.py: npm is not installed; install Node.js (which brings npm) to "
            "serve widgets offline, e.g. `apt-get install nodejs npm`",
            file=sys.stderr,
        )
        return 1
    OUT.mkdir(parents=True, exist_ok=True)
    for spec, files in PACKAGES.items():
        with tempfile.TemporaryDirectory() as tmp:  # one package per folder: its only tarball
            subprocess.run(
                ["npm", "pack", "--silent", spec], cwd=tmp, check=True, stdout=subprocess.DEVNULL
            )
            (tgz,) = Path(tmp).glob("*.tgz")
            with tarfile.open(tgz) as tar:
                for member in tar.getmembers():
                    for src, dst in files.items():
                        if not member.isfile() or not member.name.startswith(src):
                            continue
                        rel = dst or member.name[len(src) :]
                        if rel.endswith(".map"):
                            continue
                        target = OUT / rel
                        target.parent.mkdir(parents=True, exist_ok=True)
                        target.write_bytes(tar.extractfile(member).read())
    missing = [f for f in ("require.js", "embed-amd.js") if not (OUT / f).exists()]
    if missing:
        print(f"tools/book_assets.py: {missing} not found in the npm packages", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
