"""Run a notebook's code cells and a question's cases in this process: the sandbox's machinery.

Used by :mod:`metalib.grading.sandbox` (the grader's isolated process, Linux) and by
:mod:`metalib.grading.check` (the students' self-check, any system). Each outcome goes out as a
*frame* on a :class:`Channel`: ``torch.save`` bytes behind a 4-byte length, which the other side
reads with ``torch.load(weights_only=True)`` (:func:`metalib.grading.launch.decode`).

* :func:`run_cells` runs each code cell in an IPython shell under a time limit: an error is
  recorded and the next cell still runs; check cells are skipped (the cases are run here anyway);
* :func:`answer` seeds the generators for each case, looks the student's function up by name,
  runs the probe under a time limit and sends back the output (plain data) or the error message;
  after a check that runs out of time, the question's remaining checks are not run.

Time limits (:func:`time_limit`) use ``SIGALRM`` where the system has it (Linux, macOS), which
also stops a ``time.sleep``; on Windows a timer thread raises the exception in the running code
instead, which stops Python code but not one long call into C (the caller's overall time limit,
a killed process, is the backstop there).
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import os
import re
import signal
import struct
import sys
import threading
import traceback
from collections.abc import Iterator
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before pyplot is imported by anything: no window, no display needed

import torch  # noqa: E402
from IPython.core.interactiveshell import InteractiveShell  # noqa: E402
from traitlets.config import Config  # noqa: E402

from metalib.grading.question import find_probe, references  # noqa: E402
from metalib.runtime import seed_everything  # noqa: E402

MESSAGE_CHARS = 600
WALL_FACTOR = 4  # wall-clock backstop of a CPU-time limit, as a multiple of it
# A cell made only of check(...) calls runs visible cases the grader runs anyway: skip it.
CHECK_LINE = re.compile(r"^\s*(?:_\s*=\s*)?check\(.*\)\s*;?\s*(?:#.*)?$")

# Kept at import time so that a notebook replacing torch.save or os.write cannot break the channel.
_save = torch.save
_write = os.write


class TimeLimit(BaseException):
    """Raised inside the notebook's code when a cell or a case runs past its time limit.

    A ``BaseException`` so that a notebook's ``except Exception`` does not swallow it.
    """


def _on_alarm(signum: int, frame: Any) -> None:
    raise TimeLimit


def _set_async_exc(thread_id: int, exc: type[BaseException] | None) -> None:
    """Raise ``exc`` in thread ``thread_id`` at its next bytecode; ``None`` cancels one pending."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread_id), ctypes.py_object(exc) if exc is not None else None
    )


@contextlib.contextmanager
def time_limit(seconds: float, use_signal: bool | None = None) -> Iterator[None]:
    """Raise :class:`TimeLimit` in the running code after ``seconds`` of this process's CPU time.

    CPU time does not grow while other processes hold the cores, so a busy machine does not make
    a correct answer run out of time. Wall-clock time is the backstop, at ``WALL_FACTOR`` times
    the limit (a ``time.sleep`` uses no CPU). On Windows (no ``setitimer``) and off the main
    thread the limit is wall-clock time.

    Args:
        use_signal: ``SIGPROF``/``SIGALRM`` (``True``) or a timer thread (``False``); by default
            the signals where the system has them and this is the main thread.
    """
    if use_signal is None:
        use_signal = (
            hasattr(signal, "setitimer")
            and hasattr(signal, "SIGALRM")
            and threading.current_thread() is threading.main_thread()
        )
    if use_signal:
        for sig in (signal.SIGALRM, signal.SIGPROF):  # each time: the notebook may replace them
            signal.signal(sig, _on_alarm)
        signal.setitimer(signal.ITIMER_PROF, seconds)
        signal.setitimer(signal.ITIMER_REAL, seconds * WALL_FACTOR)
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.setitimer(signal.ITIMER_PROF, 0)
        return
    target, lock, active = threading.get_ident(), threading.Lock(), [True]

    def fire() -> None:
        with lock:
            if active[0]:
                _set_async_exc(target, TimeLimit)

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        with lock:
            active[0] = False
            _set_async_exc(target, None)  # one that fired but was not raised yet
        timer.cancel()


class Channel:
    """Frames on a file descriptor: 4-byte big-endian length, then ``torch.save`` bytes."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def send(self, **frame: Any) -> None:
        buffer = io.BytesIO()
        try:
            _save(frame, buffer)
        except Exception as err:  # an output torch cannot save: tell the grader instead
            if frame.get("kind") != "case":
                raise
            buffer = io.BytesIO()
            message = f"the function returned something that cannot be graded ({describe(err)})"
            _save({**frame, "status": "error", "value": message}, buffer)
        data = buffer.getvalue()
        view = memoryview(struct.pack(">I", len(data)) + data)
        while view:
            view = view[_write(self.fd, view) :]


def describe(err: BaseException) -> str:
    """``"TypeName: message (line N of function)"``, cut to a readable length."""
    text = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
    frames = [f for f in traceback.extract_tb(err.__traceback__) if "ipython-input" in f.filename]
    if frames:
        text += f" (line {frames[-1].lineno}, in {frames[-1].name})"
    return text if len(text) <= MESSAGE_CHARS else text[: MESSAGE_CHARS - 3] + "..."


def is_check_cell(source: str) -> bool:
    """True when every line of ``source`` is a ``check(...)`` call, a comment or blank."""
    lines = [ln for ln in source.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    return bool(lines) and all(CHECK_LINE.match(ln) for ln in lines)


def make_shell() -> InteractiveShell:
    """An IPython shell with no history file and plain tracebacks (they go to the grader's log)."""
    config = Config()
    config.HistoryManager.enabled = False
    config.InteractiveShell.colors = "nocolor"
    return InteractiveShell(config=config)


def run_cells(shell: InteractiveShell, cells: list, seconds: float, channel: Channel) -> None:
    """Run each ``(number, source)`` code cell in order, each within ``seconds``."""
    seed_everything(0)
    for number, source in cells:
        if is_check_cell(source):
            channel.send(kind="cell", number=number, error=None, skipped=True)
            continue
        channel.send(kind="running", what=f"cell {number}")
        try:
            with time_limit(seconds):
                result = shell.run_cell(source, store_history=False)
            error = result.error_before_exec or result.error_in_exec
        except TimeLimit as err:  # fired outside IPython's own handler
            error = err
        if isinstance(error, TimeLimit):
            message = f"stopped after {seconds:g} s"
        else:
            message = None if error is None else describe(error)
        flush()
        channel.send(kind="cell", number=number, error=message, skipped=False)


def run_case(fn: Any, case: dict, seconds: float) -> tuple[str, Any]:
    """Run one case's probe on ``fn``: ``(status, output or message)``.

    Status is ``"ok"``, ``"error"``, ``"timeout"`` or ``"unanswered"`` (NotImplementedError).
    A case that runs out of time is run once more before its timeout counts.
    """
    try:
        probe = find_probe(case["probe"])
    except (ValueError, ImportError, AttributeError) as err:
        return "error", str(err)
    for attempt in range(2):
        seed_everything(0)
        try:
            with time_limit(seconds):
                output = probe(fn, **case["kwargs"])
        except TimeLimit:
            if attempt == 0:
                continue
            return "timeout", f"did not finish within {seconds:g} s (tried twice)"
        except NotImplementedError as err:
            return "unanswered", str(err)
        except BaseException as err:  # the student's error (even SystemExit) is feedback
            return "error", describe(err)
        finally:
            flush()
        return "ok", output
    raise AssertionError("unreachable")


def warm_up() -> None:
    """Pay torch's one-off costs (``torch.func``'s first import, the first double backward
    through a convolution) before any case's clock runs, so no case pays them."""
    x = torch.ones(1, 1, 4, 4, requires_grad=True)
    w = torch.ones(1, 1, 3, 3, requires_grad=True)
    (g,) = torch.autograd.grad(
        torch.nn.functional.conv2d(x, w).square().sum(), w, create_graph=True
    )
    g.sum().backward()
    torch.func.grad(lambda v: (v * v).sum())(torch.ones(2))


def answer(shell: InteractiveShell, questions: list, seconds: float, channel: Channel) -> None:
    """Run every requested case and send one ``case`` frame per case."""
    if questions:
        seed_everything(0)
        # Only a speed-up: where the notebook left torch unable to do it (grad disabled, torch
        # patched), the cases themselves run into the same and report it, question by question.
        with contextlib.suppress(Exception):
            warm_up()
    for question in questions:
        name, function = question["name"], question["function"]
        fn = shell.user_ns.get(function)
        missing = None
        if fn is None:
            missing = f"the notebook defines no {function} (did the cell that defines it fail?)"
        elif not callable(fn):
            missing = f"{function} is a {type(fn).__name__}, not a function"
        with references(shell.user_ns, question.get("references", {})):
            for index, case in enumerate(question["cases"]):
                if missing is not None:
                    status = "missing" if fn is None or not callable(fn) else "skipped"
                    channel.send(
                        kind="case", question=name, index=index, status=status, value=missing
                    )
                    continue
                channel.send(kind="running", what=f"{name}, check {index + 1}")
                status, value = run_case(fn, case, case.get("seconds", seconds))
                channel.send(kind="case", question=name, index=index, status=status, value=value)
                if status == "unanswered":
                    break  # the rest of the question's cases would raise the same
                if status == "timeout":  # one endless loop costs this question, not the notebook
                    missing = f"an earlier check of {function} did not finish within {seconds:g} s"


def run_notebook(request: dict, channel: Channel) -> None:
    """Run the request's cells, then its cases; ``done`` when both finished."""
    shell = make_shell()
    run_cells(shell, request["cells"], request["cell_timeout"], channel)
    answer(shell, request["questions"], request["case_timeout"], channel)
    channel.send(kind="done")
    flush()


def flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # the notebook may have closed or replaced them
            stream.flush()
