"""Run notebooks in JupyterLab, driven by headless Chromium, and check what a student would see.

    .venv/bin/python tools/lab_check.py [--json FILE] [--screenshots DIR] [--workdir DIR]
                                        [NOTEBOOK ...]

Copies the notebooks (outputs stripped) into a temporary folder, starts the venv's JupyterLab
there (localhost, a random free port, a known token, no browser, offline: no news, no update
check, the read-only extension manager, settings and workspaces of its own), and for each
notebook opens it in a new tab of Debian's Chromium through Playwright (the flags of
``tools/check_book.py``; every request off the server is blocked), waits for its kernel, runs
**Run > Run All Cells** from the menu bar, waits until every queued cell has replied, the kernel
is idle and the cells have stopped changing, saves it (Ctrl+S), reads back what JupyterLab shows
and what it saved, then closes the tab and shuts the kernel down. It requires:

- every code cell ran (a number in its prompt, an ``execution_count`` in the saved file);
- no error output, neither in the saved file (``output_type: error``) nor on screen (a
  traceback), except in cells that are meant to raise: tagged ``raises-exception`` (any
  exception; such a cell must raise), or, in an exercise, a cell whose top-level code is a
  ``raise NotImplementedError`` stub written by ``tools/make_exercises.py`` (that exception only;
  stubs inside a function are caught by the check cells and never show a traceback);
- in an exercise (``workbook.role == "exercise"``), each check cell ``check("qN", fn)`` shows its
  verdict, ``qN: passed (...)`` or ``qN: not yet (...)``, on screen and in the saved output;
- every ipywidget output is drawn (controls on screen, not "Loading widget..." nor "Error
  displaying widget"); every image decodes;
- no JavaScript error or warning in the console, no request off the server, no request for the
  news feed or the update check, no toast or dialog, no error in the server's log.

A screenshot of each whole notebook goes to ``_build/screenshots/lab_<folder>-<name>.png``.
Without arguments: the smallest exercise and chapter 0 (its episode explorer widget), as
``tests/test_jupyterlab.py`` runs it. ``--json FILE`` writes each run's findings (what the test
reads). Exits 1 naming each problem, 2 when Playwright or Chromium is missing; the server, the
kernels and the browser are stopped whatever happens (the server also gets SIGTERM if this
process dies).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

# `python tools/lab_check.py` puts tools/ on sys.path; importing this file by path does not.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from check_book import browser_missing, find_chromium  # noqa: E402
from strip_notebooks import clean  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOTS = ROOT / "_build" / "screenshots"
# The flags of tools/check_book.py, plus the background networking ones of the command line in
# TOOLING.md: the machine is offline, and Chromium's own connections must not be attempted.
CHROMIUM_ARGS = [
    "--disable-quic",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# Server side: never fetch the news feed nor PyPI (neither the update check nor the extension
# manager's listing). Read from JUPYTER_CONFIG_DIR, a temporary folder.
SERVER_CONFIG = {
    "LabApp": {
        "news_url": None,
        "check_for_updates_class": "jupyterlab.NeverCheckForUpdate",
        "extension_manager": "readonly",
    },
}
# Front end (user settings of a fresh, temporary settings folder): no news, no update check (and
# no toast asking about them); every cell attached to the page, so that all can be read and the
# screenshot holds the whole notebook; no autosave racing the explicit save.
LAB_SETTINGS = {
    "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
    "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
    "@jupyterlab/docmanager-extension/plugin": {"autosave": False},
}
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
NOT_DRAWN = ("Loading widget...", "Error displaying widget")
TRACEBACK = "Traceback (most recent call last)"
CHECK_CALL = re.compile(r"^\s*check\(\s*[\"'](\w+)[\"']", re.MULTILINE)
STUB = re.compile(r"^raise NotImplementedError\(", re.MULTILINE)  # a top-level stub only
PROMPT_DONE = re.compile(r"^\[\d+\]:$")
MAX_SHOT_HEIGHT = 15000  # px; Chromium draws no taller page


def verdict_line(question: str) -> re.Pattern[str]:
    """The first line ``metalib.grading.feedback.Verdict`` prints for ``question``."""
    return re.compile(rf"^{re.escape(question)}: (passed|not yet) \((\d+) of (\d+) checks\)$", re.M)


def expected_errors(nb: nbformat.NotebookNode) -> dict[int, str | None]:
    """Cells meant to raise: index -> the exception's name, or None for any exception.

    ``raises-exception`` tags allow any exception. In an exercise, a cell whose top-level code is
    a ``raise NotImplementedError(...)`` stub (``tools/make_exercises.py`` writes one where a
    solution block was not indented) raises that exception and only that one. Stubs inside a
    function raise only when called, and the check cells turn that into a verdict.
    """
    exercise = nb.metadata.get("workbook", {}).get("role") == "exercise"
    allowed: dict[int, str | None] = {}
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        if "raises-exception" in cell.metadata.get("tags", []):
            allowed[i] = None
        elif exercise and STUB.search(cell.source):
            allowed[i] = "NotImplementedError"
    return allowed


def check_cells(nb: nbformat.NotebookNode) -> dict[int, str]:
    """Check cells of an exercise: index -> question name (``check("q1", ...)``)."""
    if nb.metadata.get("workbook", {}).get("role") != "exercise":
        return {}
    return {
        i: m.group(1)
        for i, cell in enumerate(nb.cells)
        if cell.cell_type == "code" and (m := CHECK_CALL.search(cell.source))
    }


def prepare_root(notebooks: list[Path], root: Path, repo: Path = ROOT) -> list[str]:
    """Copy ``notebooks`` (paths inside ``repo``) under ``root``, stripped; return their paths.

    The relative layout is kept (``chapters/00_tasks.ipynb``), so links between notebooks work;
    metalib is installed (editable) in the venv, so the copies import it from anywhere.
    """
    names = []
    for path in notebooks:
        rel = Path(path).resolve().relative_to(repo.resolve())
        nb = clean(nbformat.read(repo / rel, as_version=4))
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, target)
        names.append(rel.as_posix())
    return names


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """Linux: the server gets SIGTERM if the process that started it dies (a killed pytest)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class LabServer:
    """The venv's JupyterLab on localhost, offline, in a state folder of its own; a context manager.

    On exit (always) it asks the server to shut down, which stops every kernel, then kills
    whatever of the server's process tree is left.
    """

    def __init__(self, root: Path, state: Path | None = None, start_timeout_s: float = 60):
        self.root = Path(root).resolve()
        self._own_state = state is None
        self.state = Path(tempfile.mkdtemp(prefix="lab-state-")) if state is None else Path(state)
        self.start_timeout_s = start_timeout_s
        self.token = secrets.token_hex(16)
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.log_path = self.state / "server.log"
        self.killed: list[str] = []

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, notebook: str) -> str:
        return f"{self.base}/lab/tree/{notebook}?token={self.token}&reset"

    def api(self, method: str, path: str, timeout: float = 10) -> object:
        request = urllib.request.Request(
            f"{self.base}{path}",
            method=method,
            headers={"Authorization": f"token {self.token}"},
            data=b"" if method in ("POST", "PUT") else None,
        )
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            body = reply.read()
        return json.loads(body) if body.strip() else None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_problems(self, since: int = 0) -> list[str]:
        """Errors in the server's log (from character ``since`` on), and any sign that it tried
        to reach the network (news, update checks, PyPI)."""
        bad = re.compile(r"^\[E |Traceback|Failed to (get|check|fetch)|jupyter\.org|pypi\.org")
        problems, block = [], None

        def report(block: list[str]) -> None:
            # the browser closed a websocket while the server still wrote to it (a tab moving on
            # or closing): tornado logs the traceback, nothing of the notebook went wrong
            last = [line.strip() for line in block if line.strip()][-1]
            if last != "tornado.websocket.WebSocketClosedError":
                problems.append("server log: " + "\n    ".join(block)[:3000])

        for line in self.log()[since:].splitlines():
            if block is not None and not line.startswith("["):
                block.append(line)  # the rest of a traceback or message
                continue
            if block:
                report(block)
            block = [line.strip()] if bad.search(line) else None
        if block:
            report(block)
        return problems

    def start(self) -> LabServer:
        for sub in ("config", "settings", "workspaces", "runtime", "data", "ipython"):
            (self.state / sub).mkdir(parents=True, exist_ok=True)
        (self.state / "config" / "jupyter_server_config.json").write_text(json.dumps(SERVER_CONFIG))
        for plugin, values in LAB_SETTINGS.items():
            file = self.state / "settings" / f"{plugin}.jupyterlab-settings"
            file.parent.mkdir(parents=True, exist_ok=True)
            file.write_text(json.dumps(values))
        env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}  # the inline backend
        env.update(
            JUPYTER_CONFIG_DIR=str(self.state / "config"),
            JUPYTER_RUNTIME_DIR=str(self.state / "runtime"),
            JUPYTER_DATA_DIR=str(self.state / "data"),  # no user kernelspec shadows the venv's
            IPYTHONDIR=str(self.state / "ipython"),  # no user startup files
            PYTHONUNBUFFERED="1",
        )
        self.port = _free_port()
        command = [
            sys.executable, "-m", "jupyterlab",
            "--no-browser", "--allow-root",
            "--ip=127.0.0.1", f"--port={self.port}", "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={self.token}",
            f"--ServerApp.root_dir={self.root}",
            f"--LabApp.user_settings_dir={self.state / 'settings'}",
            f"--LabApp.workspaces_dir={self.state / 'workspaces'}",
        ]  # fmt: skip
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                command,
                cwd=self.root,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
            )
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"JupyterLab exited with status {self.proc.returncode}:\n{self.log()[-3000:]}"
                )
            try:
                self.api("GET", "/api/status", timeout=2)
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"JupyterLab did not answer within {self.start_timeout_s:.0f} s:\n"
                        f"{self.log()[-3000:]}"
                    ) from None
                time.sleep(0.2)
        # Offline by configuration. A failed fetch of the news is only logged at debug level,
        # so what shows that SERVER_CONFIG was read is the extension manager it names.
        if "Extension Manager is 'readonly'" not in self.log():
            raise RuntimeError(
                f"JupyterLab did not read {self.state / 'config'} (news and update checks may be "
                f"on):\n{self.log()[-3000:]}"
            )
        return self

    def shut_down_session(self, notebook: str) -> None:
        """Stop the kernel of ``notebook`` (frees the CPU for the next one)."""
        for session in self.api("GET", "/api/sessions") or []:
            if session.get("path") == notebook:
                self.api("DELETE", f"/api/sessions/{session['id']}")

    def wait_for_kernel(self, notebook: str, timeout_s: float, pause=time.sleep) -> None:
        """Wait until the page has a kernel for ``notebook``: its session exists, the kernel is
        idle and a websocket is connected to it.

        JupyterLab draws the notebook (idle indicator included) before it asks for a session;
        a Run All Cells in that gap finds no kernel, starts one of its own and runs nothing.
        ``pause(seconds)`` waits between polls: with Playwright, pass the page's own wait, which
        keeps serving the browser's intercepted requests (``time.sleep`` would hold them).
        """
        deadline = time.monotonic() + timeout_s
        while True:
            for session in self.api("GET", "/api/sessions") or []:
                kernel = session.get("kernel") or {}
                if (
                    session.get("path") == notebook
                    and kernel.get("execution_state") == "idle"
                    and kernel.get("connections", 0) >= 1
                ):
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"no idle, connected kernel for {notebook} after {timeout_s:.0f} s: "
                    f"{self.api('GET', '/api/sessions')}"
                )
            pause(0.2)

    def stop(self) -> None:
        """Shut the server and its kernels down; kill what is left after 15 s. Safe to repeat."""
        if self.proc is None:
            return
        import psutil  # ipykernel's dependency, in the lock

        try:
            tree = [psutil.Process(self.proc.pid)]
            tree += tree[0].children(recursive=True)  # the kernels, in sessions of their own
        except psutil.Error:
            tree = []
        if self.proc.poll() is None:
            try:
                self.api("POST", "/api/shutdown", timeout=5)
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pass
        _, alive = psutil.wait_procs(tree, timeout=5)
        for p in alive:
            try:
                self.killed.append(" ".join(p.cmdline())[:200])
                p.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(alive, timeout=5)
        self.proc = None

    def __enter__(self) -> LabServer:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()
        if self._own_state:
            shutil.rmtree(self.state, ignore_errors=True)


# Reads what JupyterLab shows of the notebook in the visible panel, cell by cell.
INSPECT = """() => {
  const panel = [...document.querySelectorAll('.jp-NotebookPanel')]
    .find(p => !p.classList.contains('lm-mod-hidden'));
  if (!panel) return null;
  const widgetClasses = el => [...new Set([...el.querySelectorAll('[class*="widget-"]')]
    .flatMap(e => [...e.classList]).filter(c => /^widget-/.test(c)))].sort();
  const cells = [...panel.querySelectorAll('.jp-Notebook .jp-Cell')].map(c => {
    const area = c.querySelector('.jp-Cell-outputArea');
    const outs = area ? [...area.querySelectorAll(
      ':scope > .jp-OutputArea-child > .jp-OutputArea-output')] : [];
    return {
      kind: c.classList.contains('jp-CodeCell') ? 'code'
        : c.classList.contains('jp-MarkdownCell') ? 'markdown' : 'raw',
      prompt: ((c.querySelector('.jp-InputPrompt') || {}).textContent || '').trim(),
      outputs: outs.map(o => ({
        mime: o.dataset.mimeType || null,
        text: o.innerText.slice(0, 4000),
        height: o.getBoundingClientRect().height,
        widgets: widgetClasses(o),
        images: [...o.querySelectorAll('img')].map(i => i.complete ? i.naturalWidth : -1),
      })),
    };
  });
  const indicator = panel.querySelector('.jp-Notebook-ExecutionIndicator');
  return {
    cells,
    status: indicator ? indicator.dataset.status : null,
    toasts: [...document.querySelectorAll('.Toastify__toast')].map(t => t.innerText.trim()),
    dialogs: [...document.querySelectorAll('.jp-Dialog')].map(d => d.innerText.trim()),
    text: panel.innerText,
  };
}"""
# True once Run All has replied for every cell: a number in each prompt that shows one (an
# aborted cell shows none), none still queued ([*]), and the kernel idle.
SETTLED = """() => {
  const panel = [...document.querySelectorAll('.jp-NotebookPanel')]
    .find(p => !p.classList.contains('lm-mod-hidden'));
  const prompts = [...panel.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputPrompt')]
    .map(e => e.textContent.trim());
  const indicator = panel.querySelector('.jp-Notebook-ExecutionIndicator');
  return prompts.some(p => /^\\[\\d+\\]:$/.test(p)) && !prompts.some(p => p.includes('*'))
    && indicator && indicator.dataset.status === 'idle';
}"""
# True once Run All has queued or run a cell.
STARTED = """() => [...document.querySelectorAll(
    '.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook .jp-CodeCell .jp-InputPrompt')]
  .some(e => /^\\[(\\*|\\d+)\\]:$/.test(e.textContent.trim()))"""
# Notes the time of the last change to the notebook's cells (outputs drawn late: widgets, the
# figures inside them).
WATCH = """() => {
  const panel = [...document.querySelectorAll('.jp-NotebookPanel')]
    .find(p => !p.classList.contains('lm-mod-hidden'));
  window.__labChanged = performance.now();
  new MutationObserver(() => { window.__labChanged = performance.now(); }).observe(
    panel.querySelector('.jp-Notebook'),
    {childList: true, subtree: true, attributes: true, characterData: true});
}"""
# True once no widget output shows "Loading widget...", every image has decoded, and the cells
# have not changed for ``quietMs``.
DRAWN = """(quietMs) => {
  const panel = [...document.querySelectorAll('.jp-NotebookPanel')]
    .find(p => !p.classList.contains('lm-mod-hidden'));
  const loading = [...panel.querySelectorAll('.jp-OutputArea-output')]
    .some(o => o.textContent.startsWith('Loading widget...'));
  const images = [...panel.querySelectorAll('.jp-OutputArea-output img')];
  return !loading && images.every(i => i.complete)
    && performance.now() - window.__labChanged > quietMs;
}"""


@dataclass
class LabRun:
    """What one notebook showed in JupyterLab after Run All Cells, and the problems found."""

    notebook: str
    source: nbformat.NotebookNode
    saved: nbformat.NotebookNode | None = None
    seen: dict | None = None
    console: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    screenshot: Path | None = None
    server_log: Path | None = None

    def dom_cell(self, index: int) -> dict:
        return self.seen["cells"][index] if self.seen else {"outputs": [], "prompt": ""}

    def shown_text(self, index: int) -> str:
        return "\n".join(o["text"] for o in self.dom_cell(index)["outputs"])

    def widgets(self) -> dict[int, tuple[int, list[dict]]]:
        """Cells with widget views in their saved outputs: index -> (how many, those drawn).

        Drawn: an output on screen with ipywidgets' controls (``widget-*`` elements), a
        height, and neither "Loading widget..." nor "Error displaying widget". On-screen
        outputs are not matched to saved ones by position: JupyterLab draws nothing for
        outputs it has no renderer for (myst-nb's ``glue`` records).
        """
        found: dict[int, tuple[int, list[dict]]] = {}
        if self.saved is None or self.seen is None:
            return found
        for i, cell in enumerate(self.saved.cells):
            outputs = cell.get("outputs", []) if cell.cell_type == "code" else []
            views = sum(WIDGET_VIEW in o.get("data", {}) for o in outputs)
            if views and i < len(self.seen["cells"]):
                drawn = [
                    o
                    for o in self.dom_cell(i)["outputs"]
                    if o["widgets"]
                    and o["height"] > 0
                    and not any(o["text"].startswith(t) for t in NOT_DRAWN)
                ]
                found[i] = (views, drawn)
        return found

    def to_json(self) -> dict:
        """What the tests read: problems, the report, and what each cell showed."""
        return {
            "notebook": self.notebook,
            "problems": self.problems,
            "report": self.describe(),
            "seconds": self.seconds,
            "screenshot": str(self.screenshot) if self.screenshot else None,
            "cells": self.seen["cells"] if self.seen else None,
            "widgets": {str(i): [n, drawn] for i, (n, drawn) in self.widgets().items()},
        }

    def summary(self) -> str:
        times = ", ".join(f"{k} {v:.1f} s" for k, v in self.seconds.items())
        widgets = self.widgets().values()
        views, drawn = sum(n for n, _ in widgets), sum(len(d) for _, d in widgets)
        return (
            f"{self.notebook}: {len(self.problems)} problems, {drawn}/{views} widgets "
            f"drawn, {len(self.console)} console messages; {times}"
        )

    def describe(self, text_chars: int = 6000) -> str:
        """Problems, then the console and the notebook's visible text (for assertion messages)."""
        lines = [self.summary(), *(f"  PROBLEM {p}" for p in self.problems)]
        lines += ["console (errors and warnings):", *(f"  {m}" for m in self.console or ["-"])]
        if self.seen:
            text = self.seen["text"]
            if len(text) > text_chars:
                half = text_chars // 2
                text = (
                    f"{text[:half]}\n[... {len(text) - text_chars} characters ...]\n" + text[-half:]
                )
            lines += [f"visible text of {self.notebook} in JupyterLab:", text]
            lines += [f"toast: {t}" for t in self.seen["toasts"]]
            lines += [f"dialog: {d}" for d in self.seen["dialogs"]]
        if self.screenshot:
            lines.append(f"screenshot: {self.screenshot}")
        if self.server_log:
            lines.append(f"server log: {self.server_log}")
        return "\n".join(lines)


def judge(run: LabRun) -> list[str]:
    """Problems in what JupyterLab showed (``run.seen``) and saved (``run.saved``)."""
    nb, seen, saved = run.source, run.seen, run.saved
    if seen is None:
        return ["the notebook panel was not found on the page"]
    problems: list[str] = []
    shown = seen["cells"]
    kinds = [c.cell_type for c in nb.cells]
    if [c["kind"] for c in shown] != kinds:
        return [f"JupyterLab shows {len(shown)} cells, the file has {len(kinds)} (or other kinds)"]
    if saved is None or len(saved.cells) != len(nb.cells):
        problems.append("the notebook saved from JupyterLab has other cells than the file")
        saved = None
    allowed = expected_errors(nb)
    checks = check_cells(nb)

    def name(i: int) -> str:
        first = nb.cells[i].source.strip().splitlines()
        return f"cell {i} ({first[0][:60] if first else 'empty'!r})"

    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        dom = shown[i]
        texts = [o["text"] for o in dom["outputs"]]
        outputs = saved.cells[i].get("outputs", []) if saved else []
        ran = PROMPT_DONE.match(dom["prompt"]) and (
            saved is None or saved.cells[i].get("execution_count") is not None
        )
        if not ran:
            problems.append(f"{name(i)} was not executed (prompt {dom['prompt']!r})")
        errors = [o for o in outputs if o.get("output_type") == "error"]
        on_screen = [t for t in texts if TRACEBACK in t]
        if i in allowed:
            if ran and not errors and saved is not None:
                problems.append(f"{name(i)} is meant to raise but raised nothing")
            wanted = allowed[i]
            problems += [
                f"{name(i)} raised {e['ename']}: {e['evalue'][:200]} (only {wanted} is expected)"
                for e in errors
                if wanted is not None and e["ename"] != wanted
            ]
        else:
            problems += [f"{name(i)} raised {e['ename']}: {e['evalue'][:200]}" for e in errors]
            if on_screen and not errors:
                last = on_screen[0].strip().splitlines()[-1][:200]
                problems.append(f"{name(i)} shows a traceback in JupyterLab: {last}")
        if i in checks:
            pattern = verdict_line(checks[i])
            printed = "".join(
                o.get("text", "") for o in outputs if o.get("output_type") == "stream"
            )
            if not pattern.search("\n".join(texts)):
                problems.append(
                    f"{name(i)} shows no verdict for {checks[i]} "
                    f"(expected '{checks[i]}: passed|not yet (n of m checks)'; "
                    f"shows {' | '.join(texts)[:300]!r})"
                )
            elif saved is not None and not pattern.search(printed):
                problems.append(f"{name(i)}: the saved output has no verdict for {checks[i]}")
        for o in dom["outputs"]:
            if any(o["text"].startswith(s) for s in NOT_DRAWN):
                problems.append(f"{name(i)}: a widget is not drawn: {o['text'][:120]!r}")
            broken = [w for w in o["images"] if w <= 0]
            if broken:
                problems.append(f"{name(i)}: {len(broken)} image(s) do not decode")
    for i, (views, drawn) in run.widgets().items():
        if len(drawn) < views:
            texts = " | ".join(o["text"][:100] for o in shown[i]["outputs"])
            problems.append(
                f"{name(i)}: {views} widget(s) in its output, {len(drawn)} drawn (shows {texts!r})"
            )
    problems += [f"notification: {t[:300]}" for t in seen["toasts"]]
    problems += [f"dialog: {d[:300]}" for d in seen["dialogs"]]
    return problems


def _visible_panel(page):
    return page.locator(".jp-NotebookPanel:not(.lm-mod-hidden)")


def run_notebook(
    context,
    server: LabServer,
    notebook: str,
    *,
    screenshots: Path | None = SCREENSHOTS,
    load_timeout_s: float = 60,
    run_timeout_s: float = 150,
    settle_timeout_s: float = 20,
    progress=None,
) -> LabRun:
    """Open ``notebook`` (a path under the server's root) in a new tab, Run All Cells, judge it.

    The tab is closed and the notebook's kernel shut down before returning, whatever happens.
    ``progress(line)``, when given, hears of each step as it starts.
    """
    from playwright.sync_api import Error as PlaywrightError

    run = LabRun(notebook, nbformat.read(server.root / notebook, as_version=4))
    page = context.new_page()

    def console(msg) -> None:
        if msg.type in ("error", "warning"):
            run.console.append(f"console {msg.type}: {msg.text[:400]}")

    page.on("console", console)
    page.on("pageerror", lambda err: run.console.append(f"uncaught JavaScript error: {err}"[:400]))
    start = time.perf_counter()

    def lap(label: str) -> None:
        nonlocal start
        run.seconds[label] = time.perf_counter() - start
        start = time.perf_counter()

    def at(what: str) -> str:
        if progress is not None:
            progress(f"... {notebook}: {what}")
        return what

    step = at("opening the notebook")
    try:
        page.goto(server.url(notebook), wait_until="load", timeout=load_timeout_s * 1000)
        idle = _visible_panel(page).locator('.jp-Notebook-ExecutionIndicator[data-status="idle"]')
        idle.wait_for(timeout=load_timeout_s * 1000)
        _visible_panel(page).locator(".jp-Notebook .jp-Cell").first.wait_for(
            timeout=load_timeout_s * 1000
        )
        step = at("waiting for the kernel")
        server.wait_for_kernel(notebook, load_timeout_s, lambda s: page.wait_for_timeout(s * 1e3))
        idle.wait_for(timeout=load_timeout_s * 1000)
        lap("open")
        step = at("Run > Run All Cells")
        page.evaluate(WATCH)
        page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
        page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()
        step = at("Run All Cells: waiting for the cells to be queued")
        page.wait_for_function(STARTED, timeout=30_000, polling=100)
        step = at("waiting for every cell to run")
        page.wait_for_function(SETTLED, timeout=run_timeout_s * 1000, polling=250)
        lap("run")
        step = at("waiting for widgets and images")
        try:
            page.wait_for_function(DRAWN, arg=1000, timeout=settle_timeout_s * 1e3, polling=250)
        except PlaywrightError:
            pass  # judged below: what is still loading is named
        lap("settle")
        step = at("saving (Ctrl+S)")
        _visible_panel(page).locator(".jp-Notebook").click(position={"x": 5, "y": 5})
        with page.expect_response(
            lambda r: r.request.method == "PUT" and "/api/contents/" in r.url,
            timeout=30_000,
        ) as saving:
            page.keyboard.press("Control+s")
        if not saving.value.ok:
            run.problems.append(f"saving failed: HTTP {saving.value.status}")
        run.saved = nbformat.read(server.root / notebook, as_version=4)
        run.seen = page.evaluate(INSPECT)
        lap("save")
        if screenshots is not None:
            step = at("taking the screenshot")
            run.screenshot = screenshot(page, screenshots, notebook)
            lap("screenshot")
    except (PlaywrightError, TimeoutError) as err:
        run.problems.append(f"{step}: {str(err).splitlines()[0]}")
        try:
            run.seen = run.seen or page.evaluate(INSPECT)
            if screenshots is not None and run.screenshot is None:
                run.screenshot = screenshot(page, screenshots, notebook)
        except PlaywrightError:
            pass
    finally:
        page.close()
        try:
            server.shut_down_session(notebook)
        except (urllib.error.URLError, OSError) as err:
            run.problems.append(f"could not shut the kernel down: {err}")
    if run.seen is not None or not run.problems:
        run.problems += judge(run)
    run.problems += run.console
    return run


def screenshot(page, folder: Path, notebook: str) -> Path:
    """A screenshot of the whole notebook: the window is made as tall as the notebook first."""
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"lab_{notebook.removesuffix('.ipynb').replace('/', '-')}.png"
    size = page.viewport_size
    extra = page.evaluate(
        """() => {
      const panel = [...document.querySelectorAll('.jp-NotebookPanel')]
        .find(p => !p.classList.contains('lm-mod-hidden'));
      const s = panel && panel.querySelector('.jp-WindowedPanel-outer');
      return s ? s.scrollHeight - s.clientHeight : 0;
    }"""
    )
    page.set_viewport_size(
        {"width": size["width"], "height": min(size["height"] + extra, MAX_SHOT_HEIGHT)}
    )
    try:
        page.evaluate(
            """() => new Promise(r => requestAnimationFrame(() => {
          const panel = [...document.querySelectorAll('.jp-NotebookPanel')]
            .find(p => !p.classList.contains('lm-mod-hidden'));
          const s = panel && panel.querySelector('.jp-WindowedPanel-outer');
          if (s) s.scrollTop = 0;
          setTimeout(r, 300);
        }))"""
        )
        box = page.evaluate(
            """() => {
          const panel = [...document.querySelectorAll('.jp-NotebookPanel')]
            .find(p => !p.classList.contains('lm-mod-hidden'));
          const cells = panel.querySelectorAll('.jp-Notebook .jp-Cell');
          const r = panel.getBoundingClientRect();
          const last = cells.length ? cells[cells.length - 1].getBoundingClientRect() : r;
          const height = Math.min(r.height, last.bottom - r.top + 24);
          return {x: r.left, y: r.top, width: r.width, height};
        }"""
        )
        page.screenshot(path=out, clip=box)  # the notebook down to its last cell, no side bars
    finally:
        page.set_viewport_size(size)
    return out


def block_outside(context, base: str, blocked: list[str]) -> None:
    """Abort every request that is not to the server at ``base``, noting it in ``blocked``.

    Requests for the news feed or the update check, which the server would fetch from the
    internet, are noted too: LAB_SETTINGS turns them off in the page.
    """

    def asked(request) -> None:
        if re.search(r"/lab/api/(news|update)\b", request.url):
            blocked.append(f"the page asked the server for {request.url.split('?')[0]}")

    context.on("request", asked)

    def block(route) -> None:
        blocked.append(f"blocked request to {route.request.url[:200]} (JupyterLab must be offline)")
        route.abort()

    # A pattern, not a Python predicate: the browser then asks Python about these requests only,
    # instead of holding every request until the next Playwright call.
    context.route(re.compile(rf"^(?!{re.escape(base)}/)"), block)


def check_notebooks(
    notebooks: list[Path],
    *,
    screenshots: Path | None = SCREENSHOTS,
    workdir: Path | None = None,
    report=print,
    progress=None,
) -> list[LabRun]:
    """Serve copies of ``notebooks`` from one JupyterLab, run each in Chromium; the runs.

    The copies, the server's state and its log go to ``workdir`` (kept), else to a temporary
    folder removed at the end.
    """
    from playwright.sync_api import sync_playwright

    exe = find_chromium()
    if exe is None:
        raise ValueError("no Chromium found; install it (Debian: apt-get install chromium)")
    runs = []
    with contextlib.ExitStack() as stack:
        if workdir is None:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="lab-check-")))
        else:
            tmp = Path(workdir)
        names = prepare_root(notebooks, tmp / "root")
        with LabServer(tmp / "root", tmp / "state") as server, sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=exe, headless=True, args=CHROMIUM_ARGS)
            try:
                context = browser.new_context(viewport={"width": 1280, "height": 900})
                blocked: list[str] = []
                block_outside(context, server.base, blocked)
                for name in names:
                    log_start = len(server.log())
                    run = run_notebook(
                        context, server, name, screenshots=screenshots, progress=progress
                    )
                    run.problems += blocked + server.log_problems(since=log_start)
                    blocked.clear()
                    run.server_log = server.log_path if workdir is not None else None
                    report(run.summary())
                    runs.append(run)
            finally:
                browser.close()
        if server.killed:  # kernels or the server that did not stop when asked
            runs[-1].problems += [f"had to kill: {k}" for k in server.killed]
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "notebooks", nargs="*", type=Path, help="default: the smallest exercise and chapter 0"
    )
    parser.add_argument("--json", type=Path, help="also write every run's findings here")
    parser.add_argument("--screenshots", type=Path, default=SCREENSHOTS)
    parser.add_argument(
        "--workdir", type=Path, help="keep the copies and the server's state and log here"
    )
    args = parser.parse_args(argv)
    missing = browser_missing()
    if missing:
        print(f"lab_check: {missing}", file=sys.stderr)
        return 2
    paths = [p.resolve() for p in args.notebooks] or [
        sorted((ROOT / "exercises").glob("00_*.ipynb"))[0],
        ROOT / "chapters" / "00_tasks.ipynb",
    ]
    start = time.perf_counter()
    runs = check_notebooks(
        paths, screenshots=args.screenshots, workdir=args.workdir, progress=print
    )
    if args.json:
        args.json.write_text(json.dumps([run.to_json() for run in runs], indent=1))
    for run in runs:
        if run.screenshot:
            print(f"screenshot {run.screenshot}")
    for run in runs:
        if run.problems:
            print(run.describe())
    failed = sum(bool(r.problems) for r in runs)
    print(f"lab_check: {len(runs)} notebooks, {failed} with problems, "
          f"{time.perf_counter() - start:.0f} s")  # fmt: skip
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
