"""``python -m metalib.grading.check NOTEBOOK [...]``: check your own notebook, on any system.

The students' self-check. It runs a notebook the way the grader does — every code cell in order
in a fresh Python process, seeded, on one CPU thread, each cell and each check under a time limit,
the check cells skipped — then runs the **visible** checks of each question (those of the
notebook's check cells) and prints a table of the points they give.

Unlike the grader (``python -m metalib.grading``, Linux only) it has

* **no sandbox**: the notebook runs as you, with your files, like in Jupyter (it is your own
  code), so it works on Linux, macOS and Windows alike;
* **no hidden checks**: it needs no ``hidden_tests/`` (the course's release has none), and the
  points it shows are those of the visible checks only. The grade comes from the instructor's
  grader, which also runs hidden checks (other sizes, seeds and edge cases) in its sandbox:
  ``make grade`` on Linux, or Gradescope.

Usage::

    python -m metalib.grading.check NOTEBOOK [NOTEBOOK ...] [--exercise NAME]
        [--timeout S] [--cell-timeout S] [--case-timeout S] [--show-output]

Exit status: 0 when every notebook was checked, whatever its points; 1 when one could not be
(not a notebook, an unknown exercise, Python could not start it); 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from metalib.grading import registry
from metalib.grading.__main__ import add_run_options, find_notebooks
from metalib.grading.grader import _cell_errors, _read, read_notebook
from metalib.grading.launch import Limits, decode
from metalib.grading.question import Exercise, Question
from metalib.grading.scores import QuestionScore, answers_of, score_question

TITLE_CHARS = 60
OUTPUT_LINES = 25  # of the notebook's output, shown when it did not finish
OUTPUT_KB = 64  # of the notebook's output kept, at its start and at its end
HIDDEN_NOTE = (
    "These are the visible checks only, run without a sandbox. Your grade comes from the\n"
    "instructor's grader, which also runs hidden checks (other sizes, seeds and edge cases) and\n"
    "isolates each notebook: it needs Linux (make grade) or Gradescope, so the final points may\n"
    "be lower than these."
)


@dataclasses.dataclass(frozen=True)
class Report:
    """The self-check of one notebook."""

    notebook: str
    exercise: str | None
    how: str  # how the exercise was told, or why it could not be
    questions: tuple[QuestionScore, ...] = ()
    notes: tuple[str, ...] = ()  # cells that failed, what stopped the notebook
    output: str = ""  # what the notebook printed
    problem: str | None = None  # why the notebook did not finish, if it did not
    seconds: float = 0.0
    started: bool = False  # whether Python started running the notebook

    @property
    def checked(self) -> bool:
        return self.exercise is not None

    @property
    def score(self) -> float:
        return round(sum(q.score for q in self.questions), 4)

    @property
    def max_score(self) -> float:
        return round(sum(q.max_score for q in self.questions), 4)

    def table(self) -> str:
        """The per-question table with the messages of failed checks under each question."""
        if not self.checked:
            return f"{self.notebook}: not checked: {self.how}"
        titles = [f"{q.name}: {q.title}" if q.title else q.name for q in self.questions]
        titles = [t if len(t) <= TITLE_CHARS else t[: TITLE_CHARS - 3] + "..." for t in titles]
        width = max([len("total on the visible checks"), *map(len, titles)])
        lines = [f"{self.notebook}: exercise {self.exercise} ({self.how})", ""]
        lines.append(f"{'question':<{width}}  {'visible checks':>14}  points")
        for title, q in zip(titles, self.questions, strict=True):
            checks = f"{q.passed} of {q.total}"
            lines.append(f"{title:<{width}}  {checks:>14}  {_points(q.score, q.max_score)}")
            lines += [f"    - {m}" for m in q.messages]
        total = _points(self.score, self.max_score)
        lines.append(f"{'total on the visible checks':<{width}}  {'':>14}  {total}")
        if self.notes:
            lines += ["", *self.notes]
        return "\n".join(lines)


def _points(score: float, max_score: float) -> str:
    return f"{score:>4g} / {max_score:g}"


def parse_args(argv: list[str]) -> argparse.Namespace:
    limits = Limits()
    p = argparse.ArgumentParser(
        prog="python -m metalib.grading.check",
        description="Check your own exercise notebook on any system: run it, then the visible "
        "checks of each question, and print the points they give. No sandbox and no hidden "
        "checks: the grade comes from the instructor's grader (Linux or Gradescope).",
    )
    p.add_argument("paths", nargs="+", type=Path, help="notebooks, or folders of notebooks")
    add_run_options(p, limits)
    p.add_argument(
        "--show-output", action="store_true", help="print what the notebook printed, after it"
    )
    p.add_argument("--python", default=sys.executable, help="Python that runs the notebook")
    args = p.parse_args(argv)
    try:
        args.limits = Limits(
            timeout=args.timeout, cell_timeout=args.cell_timeout, case_timeout=args.case_timeout
        )
    except ValueError as err:
        p.error(str(err))
    return args


def visible_only(exercise: Exercise) -> tuple[Question, ...]:
    """The exercise's questions without their hidden cases (none are loaded here anyway)."""
    return tuple(dataclasses.replace(q, hidden=()) for q in exercise.questions)


def check_notebook(
    path: Path,
    exercises: dict[str, Exercise],
    limits: Limits | None = None,
    fallback: str | None = None,
    python: str = sys.executable,
) -> Report:
    """Run the notebook at ``path`` and its visible checks; never raises for a bad notebook."""
    start, limits = time.monotonic(), limits or Limits()
    try:
        declared, cells = read_notebook(_read(path))
    except (OSError, ValueError) as err:
        return Report(str(path), None, str(err), problem=str(err))
    exercise, how = registry.identify(declared, path.stem, exercises, fallback)
    if exercise is None:
        return Report(str(path), None, how, problem=how)
    questions = visible_only(exercise)
    request = {
        "cells": cells,
        "questions": exercise.request(hidden=False),
        "cell_timeout": float(min(limits.cell_timeout, limits.timeout)),
        "case_timeout": float(min(limits.case_timeout, limits.timeout)),
    }
    frames, output, problem = run(request, limits.timeout, python)
    stopped = problem or "the notebook stopped before them"
    scores = tuple(score_question(q, answers_of(frames, q.name), stopped) for q in questions)
    notes = [f"Problem: {problem}."] if problem else []
    notes += _cell_errors(frames, dict(cells))
    return Report(
        str(path),
        exercise.name,
        how,
        scores,
        tuple(notes),
        output,
        problem,
        time.monotonic() - start,
        any(f.get("kind") == "ready" for f in frames),
    )


def run(
    request: dict, timeout: float, python: str = sys.executable
) -> tuple[list, str, str | None]:
    """Run ``request`` in a fresh Python (``--child``): ``(frames, its output, problem or None)``.

    The frames come through a file; the output through a pipe that a thread reads, keeping its
    first and last ``OUTPUT_KB`` (no amount of printing fills a disk or the memory); past
    ``timeout`` the process is killed. Threads and files, no ``select``: the same on every system.
    """
    import torch

    # ignore_cleanup_errors: on Windows a killed process's files may stay locked for a moment
    scratch = tempfile.TemporaryDirectory(prefix="metalib-check-", ignore_cleanup_errors=True)
    with scratch as name:
        folder = Path(name)
        work = folder / "work"
        work.mkdir()
        (folder / "request.pt").write_bytes(_saved(torch, request))
        answers = folder / "answers.bin"
        command = [python, "-m", "metalib.grading.check", "--child", str(answers)]
        timed_out = False
        with open(folder / "request.pt", "rb") as stdin:
            proc = subprocess.Popen(
                command,
                stdin=stdin,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                cwd=work,
                env=child_env(),
            )
        output = Output(proc.stdout)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            proc.kill()  # a no-op when it ended; Ctrl-C ends it too
            proc.wait()
        output.join()
        frames, unreadable = decode(answers.read_bytes() if answers.exists() else b"")
    problem = _problem(frames, proc.returncode, timed_out, unreadable, timeout)
    return frames, output.text(), problem


class Output:
    """A thread that reads a stream to its end, keeping its first and last ``OUTPUT_KB``."""

    def __init__(self, stream) -> None:
        self.stream, self.head, self.tail, self.dropped = stream, bytearray(), bytearray(), 0
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        cap = OUTPUT_KB << 10
        with contextlib.suppress(OSError, ValueError):
            while chunk := self.stream.read1(1 << 16):
                room = cap - len(self.head)
                self.head += chunk[:room]
                self.tail += chunk[room:] if room > 0 else chunk
                if len(self.tail) > cap:
                    self.dropped += len(self.tail) - cap
                    del self.tail[: len(self.tail) - cap]

    def join(self) -> None:
        self.thread.join(timeout=5)  # a process the notebook left behind may hold the pipe
        with contextlib.suppress(OSError):
            self.stream.close()

    def text(self) -> str:
        cut = f"\n[... {self.dropped} bytes of output left out ...]\n" if self.dropped else ""
        return (bytes(self.head) + cut.encode() + bytes(self.tail)).decode("utf-8", "replace")


def _saved(torch, request: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save(request, buffer)
    return buffer.getvalue()


def _problem(frames, returncode, timed_out, unreadable, timeout) -> str | None:
    kinds = [f.get("kind") for f in frames]
    running = [f.get("what") for f in frames if f.get("kind") == "running"]
    where = f"while running {running[-1]}" if running else "before running any cell"
    if timed_out:
        return f"the notebook did not finish within {timeout:g} s (stopped {where})"
    if unreadable:
        return f"the check could not read the notebook's answers ({unreadable})"
    if "done" in kinds:
        return None
    if "ready" not in kinds:
        return f"Python could not start the notebook (exit {returncode}; its output is below)"
    return (
        f"the notebook's process ended {where} (exit {returncode}): sys.exit outside a "
        "function, os._exit, a crash or running out of memory do this"
    )


def child_env() -> dict[str, str]:
    """Your environment, with what makes runs repeat as in the grader: CPU, one thread, seeds."""
    return {
        **os.environ,
        "MPLBACKEND": "Agg",
        "METALIB_PROGRESS": "0",
        "METALIB_THREADS": "1",
        "METALIB_DEVICE": "cpu",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "CUDA_VISIBLE_DEVICES": "",
        "PYTHONHASHSEED": "0",
        "PYTHONIOENCODING": "utf-8",
    }


def child(answers: str) -> None:
    """``--child FILE``: run the request on stdin, writing frames to ``FILE`` (this process)."""
    data = sys.stdin.buffer.read()
    import torch

    from metalib.grading import runner

    request = torch.load(io.BytesIO(data), weights_only=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_BINARY", 0)
    channel = runner.Channel(os.open(answers, flags, 0o600))
    torch.set_num_threads(1)
    channel.send(kind="ready", notes=["unsandboxed self-check"])
    runner.run_notebook(request, channel)
    os._exit(0)  # skip atexit hooks and thread joins the notebook may have left behind


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"] and len(argv) == 2:
        child(argv[1])
    args = parse_args(argv)
    try:
        notebooks = find_notebooks(args.paths)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not notebooks:
        print(f"error: no notebook (.ipynb) in {', '.join(map(str, args.paths))}", file=sys.stderr)
        return 2
    exercises = registry.builtin_exercises()
    if args.exercise is not None and args.exercise not in exercises:
        known = ", ".join(sorted(exercises))
        print(
            f"error: --exercise {args.exercise!r} is not a known exercise ({known})",
            file=sys.stderr,
        )
        return 2
    failed = 0
    for path in notebooks:
        print(f"running {path} ...", flush=True)
        try:
            report = check_notebook(path, exercises, args.limits, args.exercise, args.python)
        except KeyboardInterrupt:  # the notebook's process is killed with it
            print("stopped (Ctrl-C)", file=sys.stderr)
            return 130
        failed += not (report.checked and report.started)
        print(report.table())
        shown = report.output.rstrip()
        if shown and (args.show_output or report.problem):
            lines = shown.splitlines()
            if not args.show_output:
                lines = lines[-OUTPUT_LINES:]
            print("\nthe notebook's output" + ("" if args.show_output else " (its end)") + ":")
            print("\n".join(lines))
        print(f"[{report.seconds:.1f} s]\n", flush=True)
    print(HIDDEN_NOTE)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
