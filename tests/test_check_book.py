"""tools/check_book.py on a tiny synthetic site: each kind of problem is caught, a clean page passes

The site is opened once in headless Chromium (module fixture); the tests read its problems.
"""

from __future__ import annotations

import importlib.util
import io

import pytest
from PIL import Image

from conftest import ROOT

pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (book extra)")
_spec = importlib.util.spec_from_file_location("check_book", ROOT / "tools" / "check_book.py")
cb = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cb)
if cb.find_chromium() is None:
    pytest.skip("no Chromium on PATH (Debian: apt-get install chromium)", allow_module_level=True)

TYPESET = '<span class="math"><mjx-container class="MathJax">x</mjx-container></span>'
TRACEBACK = (
    '<div class="cell_output docutils container"><div class="output traceback '
    'highlight-ipythontb notranslate"><div class="highlight"><pre>'
    "---------------------------------------------------------------------------\n"
    "ZeroDivisionError                         Traceback (most recent call last)\n"
    "ZeroDivisionError: division by zero</pre></div></div></div>"
)
PAGES = {
    # landing page: typeset math, a decoded image, a link off-site (a link is never fetched)
    "intro": f"""<p>{TYPESET} and a <a href="https://example.com/paper">paper</a>.</p>
        <img src="_images/good.png" alt="good"/>
        <a href="ch/math.html">math</a> <a href="ch/images.html#top">images</a>
        <a href="ch/traceback.html">tb</a> <a href="ch/offline.html">offline</a>
        <a href="ch/widget.html">widget</a> <a href="ch/console.html">console</a>
        <a href="ch/intended.html">intended</a>""",
    "ch/math": '<p><span class="math">$x$</span> and raw \\(y\\) in prose.</p>'
    "<pre>print(r'$\\alpha$ in code is fine')</pre>",
    "ch/images": '<img src="../_images/corrupt.png"/><img src="../_images/missing.png"/>'
    '<a href="../nowhere.html">dead link</a>',
    "ch/traceback": f'<div class="cell docutils container">{TRACEBACK}</div>',
    "ch/intended": f'<div class="cell tag_raises-exception docutils container">{TRACEBACK}</div>'
    '<a href="../intro.html">back</a>',
    "ch/offline": '<script src="http://example.invalid/tracker.js"></script><p>text</p>',
    "ch/widget": '<div class="cell_output"><script type="application/vnd.jupyter.widget-view+json">'
    '{"model_id": "abc", "version_major": 2, "version_minor": 0}</script></div>',
    "ch/console": "<script>console.error('something broke'); undefinedThing();</script>",
    "orphan": "<p>No page links here.</p>",
}
TOC = ["intro", *[p for p in PAGES if p != "intro"], "ch/unbuilt"]


def png(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("L", (width, height), 128).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """(html dir, screenshots dir, problems by page, summary lines) of one checker run."""
    root = tmp_path_factory.mktemp("site")
    html = root / "html"
    for name, body in PAGES.items():
        page = html / f"{name}.html"
        page.parent.mkdir(parents=True, exist_ok=True)
        page.write_text(
            f"<!DOCTYPE html><html><head><title>{name}</title></head><body>"
            f'<main id="main-content">{body}</main></body></html>'
        )
    (html / "_images").mkdir()
    (html / "_images" / "good.png").write_bytes(png(12, 7))
    (html / "_images" / "corrupt.png").write_bytes(png(12, 7)[:40])  # truncated after IHDR
    lines: list[str] = []
    problems = cb.check_site(
        html,
        TOC,
        screenshots=root / "shots",
        shoot=lambda p: p in ("intro", "ch/math"),
        settle_s=1.0,
        report=lines.append,
    )
    by_page: dict[str, list[str]] = {}
    for p in problems:
        page, what = p.split(": ", 1)
        by_page.setdefault(page, []).append(what)
    return html, root / "shots", by_page, lines


def test_clean_page_passes_and_is_summarised(site):
    _, _, problems, lines = site
    assert "intro" not in problems
    (line,) = [ln for ln in lines if ln.startswith("intro:")]
    assert "1/1 formulas typeset" in line and "1/1 images decoded" in line


def test_untypeset_math_and_raw_tex_are_caught(site):
    found = site[2]["ch/math"]
    assert "1 formulas but only 0 typeset by MathJax" in found
    assert [f for f in found if f.startswith("raw TeX") and "\\(y\\)" in f]
    assert not [f for f in found if "alpha" in f]  # code blocks may hold TeX


def test_corrupt_and_missing_images_are_caught(site):
    found = site[2]["ch/images"]
    assert "image ../_images/corrupt.png is missing or does not decode" in found
    assert "image ../_images/missing.png is missing or does not decode" in found
    assert "links to nowhere.html, which does not exist" in found


def test_traceback_is_caught_unless_the_cell_expects_it(site):
    assert site[2]["ch/traceback"] == [
        "shows an error traceback: ZeroDivisionError: division by zero"
    ]
    assert "ch/intended" not in site[2]
    (line,) = [ln for ln in site[3] if ln.startswith("ch/intended:")]
    assert "0 tracebacks (1 intended)" in line


def test_external_request_is_blocked_and_reported(site):
    found = site[2]["ch/offline"]
    assert any(f.startswith("blocked request to http://example.invalid/tracker.js") for f in found)


def test_undrawn_widget_and_console_errors_are_caught(site):
    assert site[2]["ch/widget"] == ["1 widgets embedded but only 0 drawn"]
    found = site[2]["ch/console"]
    assert "console error: something broke" in found
    assert [f for f in found if f.startswith("uncaught JavaScript error") and "undefinedThing" in f]


def test_unbuilt_and_unreached_pages_are_caught(site):
    html, _, problems, _ = site
    assert problems["orphan"] == ["not reached by following links from intro.html"]
    assert problems["ch/unbuilt"] == [
        f"in the table of contents but {html.resolve() / 'ch/unbuilt.html'} was not built"
    ]


def test_screenshots_of_the_selected_pages(site):
    shots = sorted(p.name for p in site[1].glob("*.png"))
    assert shots == ["ch-math.png", "intro.png"]
    assert Image.open(site[1] / "intro.png").size[0] == 1280


def test_toc_pages_reads_root_and_every_file(tmp_path):
    toc = tmp_path / "_toc.yml"
    toc.write_text(
        "format: jb-book\nroot: intro\nparts:\n  - caption: A\n    chapters:\n"
        "      - file: ch/a\n        sections:\n          - file: ch/a1.md\n"
        "  - caption: B\n    chapters:\n      - file: ch/b.ipynb\n"
    )
    assert cb.toc_pages(toc) == ["intro", "ch/a", "ch/a1", "ch/b"]
    toc.write_text("format: jb-book\nchapters: []\n")
    with pytest.raises(ValueError, match="no `root:` entry"):
        cb.toc_pages(toc)


def test_site_page_and_reached(tmp_path):
    assert cb.site_page((tmp_path / "ch" / "a.html").as_uri() + "#sec", tmp_path) == "ch/a"
    assert cb.site_page("https://example.com/a.html", tmp_path) is None
    assert cb.site_page((tmp_path / "_sources" / "a.ipynb").as_uri(), tmp_path) is None
    assert cb.site_page((tmp_path.parent / "x.html").as_uri(), tmp_path) is None
    graph = {"a": {"b"}, "b": {"c", "a"}, "d": {"a"}}
    assert cb.reached(graph, "a") == {"a", "b", "c"}


def test_bad_arguments_raise(tmp_path):
    with pytest.raises(ValueError, match="no pages to check"):
        cb.check_site(tmp_path, [])
    with pytest.raises(ValueError, match="settle_s must be positive"):
        cb.check_site(tmp_path, ["intro"], settle_s=0)


def test_main_exit_codes(tmp_path, monkeypatch, capsys):
    assert cb.main(["--html", str(tmp_path / "nothing")]) == 2  # no book built
    html, toc = tmp_path / "html", tmp_path / "_toc.yml"
    html.mkdir()
    (html / "intro.html").write_text('<main><a href="a.html">a</a></main>')
    (html / "a.html").write_text("<main><p>A page.</p></main>")
    toc.write_text("format: jb-book\nroot: intro\nchapters:\n  - file: a\n")
    args = ["--html", str(html), "--toc", str(toc), "--screenshots", str(tmp_path / "shots")]
    assert cb.main(args) == 0
    assert "check_book: 2 pages, 0 problems" in capsys.readouterr().out
    (html / "a.html").write_text('<main><img src="gone.png"/></main>')
    assert cb.main(args) == 1
    assert "FAIL a: image gone.png is missing or does not decode" in capsys.readouterr().out
    monkeypatch.setattr(cb, "find_chromium", lambda: None)
    assert cb.main(args) == 2
