"""tools/check_book.py on a tiny synthetic site: each kind of problem is caught, a clean page passes

The site is opened once in headless Chromium (module fixture); the tests read its problems.
"""

from __future__ import annotations

import importlib.util
import io
import re

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
# The synthetic site does not load the theme's CSS; this reproduces the box that matters at a
# 1280-px window: a 684-px column, code blocks with 1rem padding in the theme's 14-px monospace
# (77 characters fit, as measured in the real book), images no wider than the column.
CSS = """<style>
body { margin: 8px; }
main { width: 684px; }
pre { padding: 1rem; margin: 0; overflow: auto; font-size: 14px;
      font-family: SFMono-Regular, Menlo, Consolas, Monaco, Liberation Mono, monospace; }
img { max-width: 100%; }
</style>"""


def code(text: str, lexer: str = "ipython3") -> str:
    """A code block as Sphinx/Pygments write it."""
    return (
        f'<div class="highlight-{lexer} notranslate"><div class="highlight"><pre><span></span>'
        f"{text}\n</pre></div></div>"
    )


def cell(source: str, output: str = "", hide_input: bool = False) -> str:
    """A code cell as Jupyter Book 1 / myst-nb 1.4 renders it (``hide-input`` tag: a fold)."""
    cell_input = f'<div class="cell_input docutils container">\n{code(source)}</div>'
    if hide_input:
        cell_input = (
            '<details class="admonition hide above-input">\n'
            '<summary aria-label="Toggle hidden content">\n'
            '<p class="collapsed admonition-title">Show code cell source</p>\n'
            '<p class="expanded admonition-title">Hide code cell source</p>\n'
            f"</summary>\n{cell_input}</details>"
        )
    if output:
        output = f'<div class="cell_output docutils container">{output}</div>'
    tag = " tag_hide-input" if hide_input else ""
    return f'<div class="cell{tag} docutils container">{cell_input}{output}</div>'


def text_output(text: str) -> str:
    return code(text, "myst-ansi").replace('class="', 'class="output text_plain ', 1)


LONG = "x = " + "1 + " * 49  # 200 characters
PAGES = {
    # landing page: typeset math, a decoded image, a link off-site (a link is never fetched)
    "intro": f"""<p>{TYPESET} and a <a href="https://example.com/paper">paper</a>.</p>
        <img src="_images/good.png" alt="good"/>
        <a href="ch/math.html">math</a> <a href="ch/images.html#top">images</a>
        <a href="ch/traceback.html">tb</a> <a href="ch/offline.html">offline</a>
        <a href="ch/widget.html">widget</a> <a href="ch/console.html">console</a>
        <a href="ch/intended.html">intended</a> <a href="ch/wide.html">wide</a>
        <a href="ch/folded.html">folded</a> <a href="ch/bigfig.html">bigfig</a>
        <a href="ch/fits.html">fits</a> <a href="ch/edge.html">edge</a>""",
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
    # layout: a 200-character line in a cell input; the same folded; a 1,600-px figure
    "ch/wide": cell("import math\nprint(math.pi)", text_output("3.14"))
    + cell(LONG, text_output("ok")),
    "ch/folded": cell("a = 1\nb = 2\nc = 3")
    + cell(f"import matplotlib\n{LONG}", hide_input=True)
    + '<div class="cell docutils container"><div class="cell_input docutils container"'
    f' style="display: none">{code("hidden = 1")}</div></div>',
    "ch/bigfig": cell("plot()", '<img alt="big" src="../_images/big.png"/>'),
    # a 60-character line, a 500-px figure, a 77-character line in Markdown: all fit
    "ch/fits": f"<p>Prose.</p>{code('y = ' + '2' * 56, 'python')}"
    + cell("x" * 60 + "\nx = 2", '<img alt="fine" src="../_images/fine.png"/>')
    + cell("z" * 77, text_output("o" * 77), hide_input=True),
    # the 78th character scrolls (1-5 px): no tolerance
    "ch/edge": cell("e" * 78),
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
            f"<!DOCTYPE html><html><head><title>{name}</title>{CSS}</head><body>"
            f'<main id="main-content">{body}</main></body></html>'
        )
    (html / "_images").mkdir()
    (html / "_images" / "good.png").write_bytes(png(12, 7))
    (html / "_images" / "corrupt.png").write_bytes(png(12, 7)[:40])  # truncated after IHDR
    (html / "_images" / "big.png").write_bytes(png(1600, 400))
    (html / "_images" / "fine.png").write_bytes(png(500, 300))
    lines: list[str] = []
    measures: dict[str, dict] = {}
    problems = cb.check_site(
        html,
        TOC,
        screenshots=root / "shots",
        shoot=lambda p: p in ("intro", "ch/math"),
        settle_s=1.0,
        report=lines.append,
        measures=measures,
    )
    by_page: dict[str, list[str]] = {}
    for p in problems:
        page, what = p.split(": ", 1)
        by_page.setdefault(page, []).append(what)
    return html, root / "shots", by_page, lines, measures


def test_clean_page_passes_and_is_summarised(site):
    _, _, problems, lines, _ = site
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
    html, _, problems, _, _ = site
    assert problems["orphan"] == ["not reached by following links from intro.html"]
    assert problems["ch/unbuilt"] == [
        f"in the table of contents but {html.resolve() / 'ch/unbuilt.html'} was not built"
    ]


def line_of(site, page: str) -> str:
    (line,) = [ln for ln in site[3] if ln.startswith(f"{page}:")]
    return line


def overflow(problem: str) -> int:
    """The px of a "code block wider than the column by N px: ..." problem."""
    found = re.fullmatch(r"code block wider than the column by (\d+) px: .*", problem)
    assert found, problem
    return int(found[1])


def test_code_block_wider_than_the_column_is_caught(site):
    (found,) = site[2]["ch/wide"]
    assert found.endswith(f" px: block 3 (cell 2 input), widest line '{LONG[:60]}'")
    assert 900 < overflow(found) < 1150  # 123 characters of ~8.4 px beyond the column
    assert "code blocks 4 (1 overflowing), input lines shown 3" in line_of(site, "ch/wide")


def test_folded_code_is_measured_but_not_counted_as_shown(site):
    (found,) = site[2]["ch/folded"]
    assert overflow(found) > 900
    assert found.endswith(f"block 2 (cell 2 input), widest line '{LONG[:60]}'")
    # 3 visible lines; the folded cell's 2 and the undisplayed cell's 1 are not shown
    assert "code blocks 2 (1 overflowing), input lines shown 3," in line_of(site, "ch/folded")
    assert site[4]["ch/folded"]["input_lines"] == 3


def test_shrunk_figure_is_caught(site):
    assert site[2]["ch/bigfig"] == [
        "figure ../_images/big.png shown at 684 of its 1600 px (42% of its natural width, "
        "below 80%)"
    ]
    assert "figures 1 (1 below 80%)" in line_of(site, "ch/bigfig")


def test_code_and_figures_that_fit_pass(site):
    assert "ch/fits" not in site[2]
    line = line_of(site, "ch/fits")
    assert "code blocks 4 (0 overflowing), input lines shown 2, figures 1 (0 below 80%)" in line
    (edge,) = site[2]["ch/edge"]
    assert 1 <= overflow(edge) <= 5


def test_table_of_pages_with_code_cells(site):
    lines = cb.table(site[4]).splitlines()
    assert lines[0] == (
        "| page | code blocks | overflowing | input lines shown | figures | below 80% |"
    )
    assert [ln.split(" | ")[0].strip("| ") for ln in lines[2:]] == [
        "ch/traceback",
        "ch/intended",
        "ch/wide",
        "ch/folded",
        "ch/bigfig",
        "ch/fits",
        "ch/edge",
    ]
    assert "| ch/bigfig | 1 | 0 | 1 | 1 | 1 (42%) |" in lines
    assert "| ch/fits | 4 | 0 | 2 | 1 | 0 |" in lines


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


def test_main_prints_and_writes_the_table(tmp_path, capsys):
    html, toc = tmp_path / "html", tmp_path / "_toc.yml"
    (html / "_images").mkdir(parents=True)
    (html / "_images" / "big.png").write_bytes(png(1600, 400))
    (html / "_images" / "small.png").write_bytes(png(900, 300))
    body = {
        "intro": '<p>No code here.</p><a href="a.html">a</a> <a href="b.html">b</a>',
        "a": cell("a = 1\nb = 2", text_output("1")) + cell("import os", hide_input=True),
        "b": cell(LONG, '<img src="_images/big.png"/>')
        + cell("c = 3", '<img src="_images/small.png"/>'),
    }
    for name, text in body.items():
        (html / f"{name}.html").write_text(
            f"<html><head>{CSS}</head><body><main>{text}</main></body></html>"
        )
    toc.write_text("format: jb-book\nroot: intro\nchapters:\n  - file: a\n  - file: b\n")
    out = tmp_path / "report" / "table.md"
    args = ["--html", str(html), "--toc", str(toc), "--screenshots", str(tmp_path / "s")]
    assert cb.main([*args, "--table", str(out)]) == 1
    printed = capsys.readouterr().out
    expected = (
        "| page | code blocks | overflowing | input lines shown | figures | below 80% |\n"
        "|---|---:|---:|---:|---:|---|\n"
        "| a | 3 | 0 | 2 | 0 | 0 |\n"
        "| b | 2 | 1 | 2 | 2 | 2 (42%, 76%) |\n"
    )
    assert expected in printed
    assert out.read_text() == expected
    assert "FAIL b: figure _images/small.png shown at 684 of its 900 px (76% of" in printed
