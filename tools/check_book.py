"""Open every page of the built book in headless Chromium and check what a reader would see.

    .venv/bin/python tools/check_book.py [--html _build/html] [--toc _toc.yml] [--table PATH]

Drives Debian's Chromium with Playwright (one browser, one tab reused). For each page of the
table of contents: the page exists and loads; math is typeset by the book's own MathJax (no raw
TeX left); widgets are drawn from their embedded state; every image is present and decoded
(non-zero natural width); no cell output shows an error traceback (cells tagged
``raises-exception`` show one on purpose); no JavaScript error in the console; no file the page
needs is missing. Offline by construction: every request that is not ``file://`` is blocked and
reported. Following links from the landing page must reach every page of the table of contents.
A full-page screenshot of each chapter goes to ``_build/screenshots/``.

Layout at a 1280-px window (the theme's column is 684 px; a code block shows 77 characters):
every ``<details>`` fold is opened first, so folded code is measured too, and closed again
before the screenshot. A code block (``pre``: cell input, cell output, Markdown) whose content
is wider than its box (``scrollWidth > clientWidth``) is a problem naming the block and its
widest line; an image shown below 80% of its natural width is a problem. Reported per page,
not judged: code blocks, the cell-input lines a reader sees without opening a fold, figures;
``main`` ends with these as a Markdown table (``--table PATH`` also writes it to a file).
Overlapping labels inside a figure cannot be seen here (figures are PNGs), so they are left to
a matplotlib-side check rather than guessed from pixels.

Exits 1 naming each failure (``FAIL page: what``); exits 2 when Playwright or Chromium is missing
or no book was built.
"""

from __future__ import annotations

import argparse
import shutil
import struct
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path
from urllib.parse import unquote, urlsplit

import yaml

ROOT = Path(__file__).resolve().parents[1]
# Console messages of the theme itself that say nothing about the book's content.
# The widget embedder logs a schema warning and an uncaught "reading 'Queue'" error whose cause
# we have not traced; every widget, the output area's figure included, is drawn all the same
# (checked below, and seen in screenshots). A failed file load is reported with its URL instead.
KNOWN_NOISE = (
    "THEBE_JS_URL",
    "[PST]",
    "togglebutton",
    "Got invalid theme mode",
    "allowUnionTypes",
    "reading 'Queue'",
    "Failed to load resource",
)
# A figure shown narrower than this share of its natural width is too small to read.
SMALLEST = 0.8
MAIN = "#main-content, main, article, [role=main]"
# Waits for the page's own MathJax and widget embedder, then reads what a reader would see.
INSPECT = """async ([main, settleMs]) => {
  const sleep = ms => new Promise(r => setTimeout(r, ms));
  const until = (p, ms) => Promise.race([p, sleep(ms)]);
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
    await until(MathJax.startup.promise, settleMs);
  }
  const views = () => [...document.querySelectorAll(
    'script[type="application/vnd.jupyter.widget-view+json"]')];
  const drawn = () => views().filter(
    s => s.parentElement && s.parentElement.querySelector('.jupyter-widgets')).length;
  const t0 = performance.now();
  while (drawn() < views().length && performance.now() - t0 < settleMs) await sleep(100);
  const root = document.querySelector(main) || document.body;
  const imgs = [...root.querySelectorAll('img')];
  imgs.forEach(img => { if (img.loading === 'lazy') img.loading = 'eager'; });
  await until(Promise.all(imgs.map(img => img.decode().catch(() => null))), settleMs);
  const maths = [...root.querySelectorAll('.math')];
  const code = 'pre, code, script, style, textarea, mjx-container, .math';
  const rawTex = /\\\\\\(|\\\\\\[|\\$\\$|\\\\begin\\{|\\$[^$\\s][^$]*\\\\[a-zA-Z]+[^$]*\\$/;
  const texts = [];
  const walker = document.createTreeWalker(root, NodeFilter.SHOW_TEXT);
  while (walker.nextNode()) {
    const n = walker.currentNode;
    if (!n.parentElement.closest(code) && rawTex.test(n.textContent)) texts.push(n.textContent);
  }
  const tbSel = '.traceback, [class*="highlight-ipythontb"], [class*="highlight-pytb"]';
  const outputs = [...document.querySelectorAll('.cell_output, div.output')].filter(
    el => el.matches(tbSel) || el.querySelector(tbSel)
      || el.textContent.includes('Traceback (most recent call last)'));
  const tracebacks = outputs.filter(el => !outputs.some(o => o !== el && o.contains(el)));
  const lastLine = el => el.textContent.trim().split('\\n').pop().trim().slice(0, 160);
  // Layout. Input lines a reader sees are counted with every fold as the page opens; then
  // every <details> is opened, code blocks and figures are measured, and the folds closed.
  const shown = el => el.getClientRects().length > 0;
  const lineCount = pre => {
    const text = pre.textContent.replace(/\\n$/, '');
    return text ? text.split('\\n').length : 0;
  };
  const inputLines = [...root.querySelectorAll('.cell_input pre')]
    .filter(pre => shown(pre) && !pre.closest('details'))
    .reduce((n, pre) => n + lineCount(pre), 0);
  const folds = [...root.querySelectorAll('details:not([open])')];
  folds.forEach(d => { d.open = true; });
  const cells = [...root.querySelectorAll('div.cell')];
  const pen = document.createElement('canvas').getContext('2d');
  const blocks = [...root.querySelectorAll('pre')].filter(shown).map((pre, k) => {
    const cell = pre.closest('div.cell');
    const part = pre.closest('.cell_input') ? 'input' : pre.closest('.cell_output') ? 'output'
      : 'code';
    const where = cell ? `cell ${cells.indexOf(cell) + 1} ${part}` : 'markdown';
    const style = getComputedStyle(pre);
    pen.font = `${style.fontStyle} ${style.fontWeight} ${style.fontSize} ${style.fontFamily}`;
    const lines = pre.textContent.split('\\n');
    const widths = lines.map(line => pen.measureText(line).width);
    const widest = lines[widths.indexOf(Math.max(...widths))];
    return {
      where: `block ${k + 1} (${where})`,
      overflow: pre.scrollWidth - pre.clientWidth,
      widest: widest.slice(0, 60),
    };
  });
  const figures = [...root.querySelectorAll('img')]
    .filter(img => img.naturalWidth > 0 && shown(img))
    .map(img => ({
      src: (img.getAttribute('src') || img.currentSrc).slice(0, 100),
      natural: img.naturalWidth,
      width: Math.round(img.getBoundingClientRect().width),
    }))
    .filter(f => f.width > 0);
  folds.forEach(d => { d.open = false; });
  return {
    cells: cells.length,
    inputLines,
    blocks,
    figures,
    title: document.title,
    hasMain: !!document.querySelector(main),
    math: maths.length,
    typeset: maths.filter(m => m.querySelector('mjx-container')).length,
    rawTex: texts.map(t => t.trim().slice(0, 80)),
    views: views().length,
    drawn: drawn(),
    images: imgs.length,
    broken: imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.getAttribute('src')),
    tracebacks: tracebacks.filter(el => !el.closest('.tag_raises-exception')).map(lastLine),
    intended: tracebacks.filter(el => el.closest('.tag_raises-exception')).length,
    links: [...document.querySelectorAll('a[href]')].map(a => a.href),
  };
}"""


def toc_pages(toc: Path) -> list[str]:
    """The pages of a jb-book ``_toc.yml``: its root, then every ``file:`` entry, in order."""
    spec = yaml.safe_load(toc.read_text())
    if not isinstance(spec, dict) or "root" not in spec:
        raise ValueError(f"{toc}: no `root:` entry; is this a Jupyter Book _toc.yml?")
    pages = [str(spec["root"])]

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if "file" in node:
                pages.append(str(node["file"]))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk({k: v for k, v in spec.items() if k != "root"})
    return [p.removesuffix(".md").removesuffix(".ipynb") for p in pages]


def find_chromium() -> str | None:
    """Path of an installed Chromium (Debian's package first), or None."""
    names = ("chromium", "chromium-browser", "google-chrome")
    return next((p for p in map(shutil.which, names) if p), None)


def browser_missing() -> str | None:
    """What is missing to drive a browser (Playwright, Chromium), with what to do; None if none."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright is missing; run `make setup`"
    if find_chromium() is None:
        return "no Chromium found; apt-get install chromium"
    return None


def site_page(url: str, html: Path) -> str | None:
    """The page (``chapters/00_tasks``) a ``file://`` URL names inside ``html``, else None."""
    parts = urlsplit(url)
    if parts.scheme != "file" or not parts.path.endswith(".html"):
        return None
    path = Path(unquote(parts.path))
    if not path.is_relative_to(html):
        return None
    return path.relative_to(html).with_suffix("").as_posix()


def reached(links: dict[str, set[str]], start: str) -> set[str]:
    """Pages reached from ``start`` by following ``links`` (page -> pages it links to)."""
    seen, queue = {start}, deque([start])
    while queue:
        for nxt in links.get(queue.popleft(), ()):
            if nxt not in seen:
                seen.add(nxt)
                queue.append(nxt)
    return seen


def check_site(
    html: Path,
    pages: Iterable[str],
    *,
    chromium: str | None = None,
    screenshots: Path | None = None,
    shoot: Callable[[str], bool] = lambda page: page.startswith("chapters/"),
    settle_s: float = 10.0,
    report: Callable[[str], None] = print,
    measures: dict[str, dict] | None = None,
) -> list[str]:
    """Open each page of ``pages`` under ``html`` in headless Chromium; return the problems.

    Args:
        html: the built site (``_build/html``).
        pages: table-of-contents pages without suffix; the first is the landing page.
        chromium: browser executable (default: ``find_chromium()``).
        screenshots: directory for full-page screenshots of the pages ``shoot`` selects.
        settle_s: the longest wait for MathJax, widgets and images on one page.
        report: receives one summary line per page.
        measures: if given, filled with ``measure(seen)`` of each page that loaded.
    Returns:
        One ``"page: what"`` string per problem, empty when every page is as a reader expects.
    """
    html = Path(html).resolve()
    pages = list(pages)
    if not pages:
        raise ValueError("no pages to check; pass the table of contents' pages")
    if settle_s <= 0:
        raise ValueError(f"settle_s must be positive, got {settle_s}")
    from playwright.sync_api import Error, sync_playwright

    exe = chromium or find_chromium()
    if exe is None:
        raise ValueError("no Chromium found; install it (Debian: apt-get install chromium)")
    problems: list[str] = []
    links: dict[str, set[str]] = {}
    current = [pages[0]]
    events: list[str] = []

    def block(route) -> None:
        events.append(f"blocked request to {route.request.url[:200]} (the book must work offline)")
        route.abort()

    def failed(request) -> None:
        if request.url.startswith("file:"):
            path = unquote(urlsplit(request.url).path)
            events.append(f"could not load {path} ({request.failure})")

    def console(msg) -> None:
        if msg.type in ("error", "warning") and not any(n in msg.text for n in KNOWN_NOISE):
            events.append(f"console {msg.type}: {msg.text[:300]}")

    def page_error(err) -> None:
        if not any(n in str(err) for n in KNOWN_NOISE):
            events.append(f"uncaught JavaScript error: {str(err)[:300]}")

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=exe, headless=True, args=["--disable-quic", "--disable-gpu"]
        )
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        context.route(lambda url: not url.startswith("file:"), block)
        tab = context.new_page()
        tab.on("requestfailed", failed)
        tab.on("console", console)
        tab.on("pageerror", page_error)
        for name in pages:
            current[0] = name
            file = html / f"{name}.html"
            if not file.exists():
                problems.append(f"{name}: in the table of contents but {file} was not built")
                continue
            start = time.perf_counter()
            events.clear()
            try:
                tab.goto(file.as_uri(), wait_until="load", timeout=settle_s * 3000)
                seen = tab.evaluate(INSPECT, [MAIN, settle_s * 1000])
            except Error as err:
                problems.append(f"{name}: does not load: {str(err).splitlines()[0]}")
                continue
            if screenshots is not None and shoot(name):
                screenshots.mkdir(parents=True, exist_ok=True)
                out = screenshots / f"{name.replace('/', '-')}.png"
                tab.screenshot(path=out, full_page=True)
            page_problems = list(events) + judge(seen)
            links[name] = {p for p in (site_page(u, html) for u in seen["links"]) if p}
            for target in sorted(links[name]):
                if not (html / f"{target}.html").exists():
                    page_problems.append(f"links to {target}.html, which does not exist")
            problems += [f"{name}: {p}" for p in page_problems]
            m = measure(seen)
            if measures is not None:
                measures[name] = m
            report(
                f"{name}: {seen['typeset']}/{seen['math']} formulas typeset, "
                f"{seen['drawn']}/{seen['views']} widgets drawn, "
                f"{seen['images'] - len(seen['broken'])}/{seen['images']} images decoded, "
                f"{len(seen['tracebacks'])} tracebacks ({seen['intended']} intended), "
                f"code blocks {m['blocks']} ({m['overflowing']} overflowing), "
                f"input lines shown {m['input_lines']}, "
                f"figures {m['figures']} ({len(m['small'])} below 80%), "
                f"{len(events)} console/network problems, {time.perf_counter() - start:.1f} s"
            )
        browser.close()
    if pages[0] in links:
        found = reached(links, pages[0])
        problems += [
            f"{p}: not reached by following links from {pages[0]}.html"
            for p in pages
            if p not in found and (html / f"{p}.html").exists()
        ]
    return problems


def judge(seen: dict) -> list[str]:
    """Problems in what ``INSPECT`` read from one page."""
    problems = []
    if not seen["hasMain"]:
        problems.append("no main content (the page did not render as a book page)")
    if seen["typeset"] < seen["math"]:
        problems.append(f"{seen['math']} formulas but only {seen['typeset']} typeset by MathJax")
    problems += [f"raw TeX in the text: '{t}'" for t in seen["rawTex"][:5]]
    if seen["drawn"] < seen["views"]:
        problems.append(f"{seen['views']} widgets embedded but only {seen['drawn']} drawn")
    problems += [f"image {src} is missing or does not decode" for src in seen["broken"]]
    problems += [f"shows an error traceback: {t}" for t in seen["tracebacks"]]
    problems += [
        f"code block wider than the column by {b['overflow']} px: {b['where']}, "
        f"widest line '{b['widest']}'"
        for b in overflowing(seen)
    ]
    problems += [
        f"figure {f['src']} shown at {f['width']} of its {f['natural']} px "
        f"({percent(f)}% of its natural width, below {SMALLEST:.0%})"
        for f in shrunk(seen)
    ]
    return problems


def overflowing(seen: dict) -> list[dict]:
    """The code blocks of one page whose content is wider than their box."""
    return [b for b in seen["blocks"] if b["overflow"] > 0]


def shrunk(seen: dict) -> list[dict]:
    """The figures of one page shown below ``SMALLEST`` of their natural width."""
    return [f for f in seen["figures"] if f["width"] < SMALLEST * f["natural"]]


def percent(figure: dict) -> int:
    """Shown width as a whole percentage of natural width, rounded down (79.9 -> 79)."""
    return 100 * figure["width"] // figure["natural"]


def measure(seen: dict) -> dict:
    """The layout numbers of one page that ``INSPECT`` read: reported, and judged in ``judge``."""
    return {
        "cells": seen["cells"],
        "blocks": len(seen["blocks"]),
        "overflowing": len(overflowing(seen)),
        "input_lines": seen["inputLines"],
        "figures": len(seen["figures"]),
        "small": [percent(f) for f in shrunk(seen)],
    }


def table(measures: dict[str, dict]) -> str:
    """A Markdown table of ``measures``, one row per page that has code cells."""
    rows = [
        "| page | code blocks | overflowing | input lines shown | figures | below 80% |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for page, m in measures.items():
        if m["cells"]:
            small = str(len(m["small"]))
            if m["small"]:
                small += " (" + ", ".join(f"{p}%" for p in m["small"]) + ")"
            rows.append(
                f"| {page} | {m['blocks']} | {m['overflowing']} | {m['input_lines']} "
                f"| {m['figures']} | {small} |"
            )
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--html", type=Path, default=ROOT / "_build" / "html")
    parser.add_argument("--toc", type=Path, default=ROOT / "_toc.yml")
    parser.add_argument(
        "--screenshots", type=Path, help="where chapter screenshots go (default: beside --html)"
    )
    parser.add_argument(
        "--table", type=Path, help="also write the per-page Markdown table to this file"
    )
    args = parser.parse_args(argv)
    missing = browser_missing()
    if missing:
        print(f"check_book: {missing}", file=sys.stderr)
        return 2
    if not any(args.html.glob("*.html")):
        print(f"check_book: no pages in {args.html}; run `make book` first", file=sys.stderr)
        return 2
    shots = args.screenshots or args.html.parent / "screenshots"
    start = time.perf_counter()
    measures: dict[str, dict] = {}
    problems = check_site(args.html, toc_pages(args.toc), screenshots=shots, measures=measures)
    for p in problems:
        print("FAIL", p)
    summary = table(measures)
    print()
    print(summary)
    if args.table:
        args.table.parent.mkdir(parents=True, exist_ok=True)
        args.table.write_text(summary)
    for shot in sorted(shots.glob("*.png")):
        width, height = struct.unpack(">II", shot.read_bytes()[16:24])  # the PNG's IHDR
        print(f"screenshot {shot}: {width}x{height} px, {shot.stat().st_size / 1e3:.0f} kB")
    print(
        f"check_book: {len(toc_pages(args.toc))} pages, {len(problems)} problems, "
        f"{time.perf_counter() - start:.0f} s"
    )
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
