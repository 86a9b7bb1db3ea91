"""Start the sandbox on one request, read what it says, stop it: the grader's side of the sandbox.

:func:`run` writes the request to a scratch folder, starts ``python -m metalib.grading.sandbox``
there (scrubbed environment, new session; as root, told to become an unused uid; the sandbox
locks itself in further, see :mod:`metalib.grading.lockdown`), and reads two
pipes until the process ends or the wall clock runs out: the notebook's output (the first
``log_kb`` kept for the instructor's log, the rest read and dropped, so no amount of printing
fills a disk or blocks the notebook) and the answer frames (at most ``answers_mb``). Then it kills
the process group and, as root, every process left with the uid, so nothing a notebook started
outlives its grading. As root, where that uid cannot reach the course's Python and the sandbox
gets no private file system, it is given a view of it (:mod:`metalib.grading.view`).

The sandbox exists on Linux only; elsewhere :func:`require_linux` (called by :func:`run` and by
the grader) refuses with a message that says what to do instead: the students' self-check
(:mod:`metalib.grading.check`), or grading on Linux or Gradescope.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import selectors
import signal
import struct
import subprocess
import sys
import threading
import time
import warnings
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from metalib import runtime
from metalib.grading.lockdown import UID_RANGE, UNUSED_UID, GraderError  # noqa: F401 (API)

SYSTEMS = {"darwin": "macOS", "win32": "Windows", "cygwin": "Cygwin"}
_uid_lock = threading.Lock()
_uids_in_use: set[int] = set()


def unsandboxed_message() -> str:
    """Why this system cannot grade, and what to do instead."""
    system = SYSTEMS.get(sys.platform, sys.platform)
    return (
        f"grading needs Linux, and this is {system}. The grader runs each notebook in a sandbox "
        "made of Linux's namespaces and user ids (so that a submission cannot read the hidden "
        "tests or change your files), and it does not grade without one. To check your own "
        "notebook here, run the self-check: `python -m metalib.grading.check NOTEBOOK` (the "
        "visible checks of each question, no sandbox, no hidden checks). To grade submissions, "
        "run `make grade` on Linux (a virtual machine or a Docker container will do) or use "
        "the Gradescope autograder (instructors: GRADING.md)."
    )


def require_linux() -> None:
    """Raise :class:`GraderError` unless this system has the sandbox (Linux)."""
    if not sys.platform.startswith("linux"):
        raise GraderError(unsandboxed_message())


@dataclass(frozen=True)
class Limits:
    """What one submission may use.

    Attributes:
        timeout: wall-clock seconds for the whole notebook, cells and checks (the backstop).
        cell_timeout: seconds for each code cell; past it, the cell is stopped, the next runs.
        case_timeout: seconds for each check; past it, that check and the question's remaining
            ones fail (one endless loop costs a question, not the notebook's whole time).
        memory_mb: address space of the sandbox (torch needs about 800 MB just to import).
        file_mb: the largest file the notebook may write.
        tmp_mb: its private ``/tmp``, where it gets a private file system (Linux namespaces).
        log_kb: how much of its output the instructor's log keeps.
        answers_mb: how much answer data the grader reads.
    """

    timeout: float = 120.0
    cell_timeout: float = 60.0
    case_timeout: float = 10.0
    memory_mb: int = 4096
    file_mb: int = 64
    tmp_mb: int = 256
    log_kb: int = 64
    answers_mb: int = 64

    def __post_init__(self) -> None:
        for f in fields(self):
            if not getattr(self, f.name) > 0:
                raise ValueError(f"{f.name} must be positive, got {getattr(self, f.name)!r}")


@dataclass(frozen=True)
class Run:
    """What came back from one sandbox process."""

    frames: list[dict[str, Any]]
    log: str
    problem: str | None  # why the notebook did not finish, for the student; None if it did
    notes: list[str]  # how the sandbox isolated it, for the instructor


def sandbox_env(work: Path) -> dict[str, str]:
    """The sandbox's whole environment: nothing inherited but what the notebook needs."""
    w = str(work)
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": w,
        "TMPDIR": w,
        "MPLCONFIGDIR": w,
        "IPYTHONDIR": w,
        "MPLBACKEND": "Agg",
        "METALIB_PROGRESS": "0",
        "METALIB_THREADS": "1",
        "METALIB_DEVICE": "cpu",
        "METALIB_CACHE": str(runtime.cache_dir()),
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "CUDA_VISIBLE_DEVICES": "",
        "PYTHONHASHSEED": "0",  # set and dict orders in the notebook's code repeat from run to run
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONNOUSERSITE": "1",
        "PYTHONIOENCODING": "utf-8",
        "LANG": "C.UTF-8",
        "USER": "student",
        "LOGNAME": "student",
        "TERM": "dumb",
    }


def run(request: dict, scratch: Path, limits: Limits, python: str, hide: list[str]) -> Run:
    """Run one request in a sandbox started in ``scratch`` (an empty folder of the grader's).

    Raises:
        GraderError: not on Linux, or the course's Python cannot be shown to the sandbox.
    """
    require_linux()
    view = None
    if _as_root():
        from metalib.grading.view import view_for  # only where a view is needed

        view = view_for(python, sandbox_env(scratch), hide)
    uid = _claim_uid() if _as_root() else None
    try:
        return _run(request, scratch, limits, python, hide, uid, view)
    finally:
        if uid is not None:
            _kill_uid(uid)
            with _uid_lock:
                _uids_in_use.discard(uid)


def _run(request, scratch, limits, python, hide, uid, view) -> Run:
    work = scratch / "work"
    work.mkdir()
    request = {
        **request,
        "cell_timeout": float(min(limits.cell_timeout, limits.timeout)),
        "case_timeout": float(min(limits.case_timeout, limits.timeout)),
        "memory_mb": int(limits.memory_mb),
        "cpu_seconds": int(limits.timeout) + 10,
        "file_mb": int(limits.file_mb),
        "tmp_mb": int(limits.tmp_mb),
        "uid": uid,
        "hide": list(hide),
    }
    if uid is not None:
        scratch.chmod(0o711)  # the uid may pass through to work/, not list or read the request
        os.chown(work, uid, uid)
        work.chmod(0o700)
    request_path = scratch / "request.pt"
    torch.save(request, request_path)
    request_path.chmod(0o600)
    read_fd, write_fd = os.pipe()
    command = [python, "-s", "-m", "metalib.grading.sandbox", str(write_fd)]
    if view:
        command.append(json.dumps(view))
    try:
        with open(request_path, "rb") as stdin:
            proc = subprocess.Popen(
                command,
                stdin=stdin,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                cwd=work,
                env=sandbox_env(work),
                pass_fds=(write_fd,),
                start_new_session=True,
            )
    finally:
        os.close(write_fd)
    deadline = time.monotonic() + limits.timeout
    try:
        log, answers, timed_out, overflow = _collect(proc, read_fd, deadline, limits)
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        os.close(read_fd)
    frames, unreadable = decode(answers)
    ready = next((f for f in frames if f.get("kind") == "ready"), {})
    notes = [str(n) for n in ready.get("notes", [])] if isinstance(ready, dict) else []
    text = log.decode("utf-8", "replace")
    return Run(
        frames,
        text,
        _problem(frames, proc.returncode, timed_out, overflow, unreadable, limits),
        notes,
    )


def _problem(frames, returncode, timed_out, overflow, unreadable, limits) -> str | None:
    kinds = [f.get("kind") for f in frames]
    running = [f.get("what") for f in frames if f.get("kind") == "running"]
    where = f"while running {running[-1]}" if running else "before running any cell"
    if timed_out:
        return f"the notebook did not finish within {limits.timeout:g} s (stopped {where})"
    if overflow:
        return f"the notebook sent more than {limits.answers_mb} MB of answers"
    if unreadable:
        return f"the grader could not read the notebook's answers ({unreadable})"
    if "done" in kinds:
        return None
    if "ready" not in kinds:
        return "the sandbox did not start (the grader's log has its output)"
    how = f"signal {signal.Signals(-returncode).name}" if returncode < 0 else f"exit {returncode}"
    return (
        f"the notebook's process ended {where} ({how}): os._exit, a crash or running out of "
        f"memory (limit {limits.memory_mb} MB) do this"
    )


def _collect(proc, answers_fd: int, deadline: float, limits: Limits):
    """Read output and answers until both pipes close, the process ends or the deadline."""
    log, answers = bytearray(), bytearray()
    log_cap, answers_cap = limits.log_kb << 10, limits.answers_mb << 20
    overflow, ended = False, None
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout.fileno(), selectors.EVENT_READ, log)
        selector.register(answers_fd, selectors.EVENT_READ, answers)
        while selector.get_map():
            now = time.monotonic()
            if now >= deadline:
                return bytes(log), bytes(answers), True, overflow
            if ended is None and proc.poll() is not None:
                ended = now
            if ended is not None and now - ended > 1.0:
                break  # a process the notebook started still holds the pipes open
            for key, _ in selector.select(timeout=min(deadline - now, 0.2)):
                chunk = os.read(key.fd, 1 << 16)
                if not chunk:
                    selector.unregister(key.fd)
                elif key.data is log:
                    log += chunk[: max(0, log_cap - len(log))]
                elif len(answers) + len(chunk) <= answers_cap:
                    answers += chunk
                else:
                    overflow = True
    return bytes(log), bytes(answers), False, overflow


def decode(data: bytes) -> tuple[list[dict[str, Any]], str | None]:
    """Frames from the sandbox's answer pipe, and why reading stopped early (``None`` if not)."""
    frames, pos = [], 0
    while pos < len(data):
        if pos + 4 > len(data):
            return frames, "the answers end in the middle of a frame"
        (size,) = struct.unpack(">I", data[pos : pos + 4])
        chunk = data[pos + 4 : pos + 4 + size]
        if len(chunk) < size:
            return frames, "the answers end in the middle of a frame"
        try:
            frame = torch.load(io.BytesIO(chunk), weights_only=True)
        except Exception as err:  # anything torch refuses to load is refused here
            return frames, f"an answer is not plain data: {type(err).__name__}"
        if not isinstance(frame, dict) or not isinstance(frame.get("kind"), str):
            return frames, "an answer is not a frame"
        frames.append(frame)
        pos += 4 + size
    return frames, None


def _as_root() -> bool:
    return sys.platform.startswith("linux") and os.geteuid() == 0


def _claim_uid() -> int:
    """An uid no account and no process has (gid: the same number)."""
    import pwd  # Unix only: imported where used, so that the package imports anywhere

    with _uid_lock:
        for _ in range(1000):
            uid = random.SystemRandom().randrange(*UID_RANGE)
            if uid in _uids_in_use or _processes_of(uid):
                continue
            try:
                pwd.getpwuid(uid)
            except KeyError:
                _uids_in_use.add(uid)
                return uid
    raise RuntimeError("found no unused uid for the sandbox")


def _processes_of(uid: int) -> list[int]:
    """Live (not zombie) processes whose real uid is ``uid``."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as f:
                status = dict(line.split(":", 1) for line in f if ":" in line)
        except OSError:  # the process ended while we looked
            continue
        if int(status["Uid"].split()[0]) == uid and not status["State"].strip().startswith("Z"):
            pids.append(int(entry))
    return pids


def _kill_uid(uid: int) -> None:
    """SIGKILL every process of ``uid`` (those a notebook started and detached), until none."""
    for _ in range(50):
        pids = _processes_of(uid)
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.02)
    warnings.warn(f"processes of uid {uid} survived SIGKILL: {_processes_of(uid)}", stacklevel=2)
