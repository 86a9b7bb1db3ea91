"""How the sandboxed process locks itself in before it runs any submitted code.

Called by :mod:`metalib.grading.sandbox` once its trusted imports are done. On Linux, where the
kernel allows it (as root, or as a user where unprivileged user namespaces are enabled):

* a private mount namespace where every mount is read-only, ``/tmp``, ``/var/tmp`` and
  ``/dev/shm`` are one small private tmpfs (the notebook writes nowhere else and cannot fill a
  disk), and the folders the grader names (hidden tests, submissions, results) are covered by an
  empty tmpfs; no network (an empty network namespace) and no shared System V IPC;
* a private PID namespace: the notebook runs as its PID 1, sees only its own processes, and
  everything it starts dies with it (and with the process that started it);
* as root, an unused uid and gid (one per submission), no supplementary groups, a cap on
  processes; import paths the new uid could not reach (a Python installed under ``/root``) are
  rerouted through directory descriptors opened before the switch. As a user, all capabilities
  are dropped. Either way ``no_new_privs`` is set.

Always: resource limits (address space, CPU seconds, file size, no core dumps), soft = hard. Where
the kernel refuses a namespace (a Docker container without ``CAP_SYS_ADMIN``, a kernel without
unprivileged user namespaces) the step is skipped and a note says so; :func:`lock_in` returns
these notes for the instructor's log.
"""

from __future__ import annotations

import ctypes
import os
import re
import resource
import signal
import stat
import sys
from pathlib import Path

CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWPID = 0x00020000, 0x10000000, 0x20000000
CLONE_NEWNET, CLONE_NEWIPC = 0x40000000, 0x08000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_NOATIME, MS_NODIRATIME, MS_BIND = 32, 1024, 2048, 4096
MS_REC, MS_PRIVATE, MS_RELATIME, MS_STRICTATIME = 16384, 1 << 18, 1 << 21, 1 << 24
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 1, 38
KEPT_FLAGS = {  # per-mount flags a read-only remount must keep (the kernel refuses to drop some)
    "nosuid": MS_NOSUID,
    "nodev": MS_NODEV,
    "noexec": MS_NOEXEC,
    "noatime": MS_NOATIME,
    "nodiratime": MS_NODIRATIME,
    "relatime": MS_RELATIME,
    "strictatime": MS_STRICTATIME,
}
MAX_PROCESSES = 64  # threads count too; one notebook needs a handful
LINUX = sys.platform.startswith("linux")
_libc = ctypes.CDLL(None, use_errno=True) if LINUX else None


def lock_in(request: dict) -> list[str]:
    """Apply the request's isolation and limits to this process; return notes on what was done.

    ``request["uid"]`` is the uid to become (the grader is root) or ``None`` (it is not).
    """
    uid = request.get("uid")
    if uid is not None and os.geteuid() != 0:
        raise RuntimeError("the grader asked for a uid switch, but the sandbox is not root")
    notes, private = [], False
    if LINUX:
        private, said = enter_namespaces(as_root=uid is not None)
        notes += said
        if private:
            owner = os.getuid() if uid is None else uid
            notes += private_view(request.get("hide", ()), request["tmp_mb"], owner)
            notes += own_pids()
    if uid is not None:
        notes += become(uid)
    elif private:
        drop_capabilities()
        notes.append(f"runs as the grader's user (uid {os.getuid()}) without capabilities")
    else:
        notes.append(f"runs as the grader's user (uid {os.getuid()}): it can change their files")
    if LINUX:
        _prctl(PR_SET_NO_NEW_PRIVS, 1)
        if private:
            _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # after the uid switch, which clears it
    notes += set_limits(request["memory_mb"], request["cpu_seconds"], request["file_mb"])
    notes.append(
        f"limits: {request['memory_mb']} MB address space, {request['cpu_seconds']} s CPU, "
        f"{request['file_mb']} MB per file"
    )
    return notes


def set_limits(memory_mb: int, cpu_seconds: int, file_mb: int) -> list[str]:
    """Soft = hard limits on this process and whatever it starts; notes for any refused."""
    refused = []
    for name, value in (
        ("RLIMIT_AS", memory_mb << 20),
        ("RLIMIT_CPU", cpu_seconds),
        ("RLIMIT_FSIZE", file_mb << 20),
        ("RLIMIT_CORE", 0),
    ):
        try:
            resource.setrlimit(getattr(resource, name), (value, value))
        except (OSError, ValueError) as err:  # macOS refuses some; Linux never does
            if LINUX:
                raise
            refused.append(f"{name} refused ({err})")
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
    return refused


def enter_namespaces(as_root: bool) -> tuple[bool, list[str]]:
    """New mount (and, as a user, user) namespace, plus network and IPC where allowed.

    Returns ``(entered, notes)``; nothing is changed when the mount namespace is refused.
    """
    before = os.readlink("/proc/self/ns/mnt")
    network = os.readlink("/proc/self/ns/net")
    uid, gid = os.getuid(), os.getgid()
    flags = CLONE_NEWNS if as_root else CLONE_NEWUSER | CLONE_NEWNS
    if _libc.unshare(flags) != 0:
        return False, [f"no private file system (unshare: {os.strerror(ctypes.get_errno())})"]
    if os.readlink("/proc/self/ns/mnt") == before:
        raise RuntimeError("unshare(CLONE_NEWNS) returned success but the namespace is the same")
    try:
        if not as_root:  # keep our own ids inside the new user namespace
            Path("/proc/self/setgroups").write_text("deny")
            Path("/proc/self/uid_map").write_text(f"{uid} {uid} 1")
            Path("/proc/self/gid_map").write_text(f"{gid} {gid} 1")
        # Private first, so that nothing mounted below propagates to the grader's namespace.
        _mount(b"none", "/", None, MS_REC | MS_PRIVATE)
    except OSError as err:  # e.g. AppArmor allows the namespace but no mounts in it
        return False, [f"no private file system ({err.strerror})"]
    _libc.unshare(CLONE_NEWNET | CLONE_NEWIPC)  # best effort: the note says whether it worked
    offline = os.readlink("/proc/self/ns/net") != network
    return True, ["no network" if offline else "network as the grader's"]


def private_view(hide: list[str], tmp_mb: int, owner: int) -> list[str]:
    """Every mount read-only, ``hide`` covered, a private ``/tmp``; chdir to ``/tmp/work``."""
    failed = []
    for point, flags in _mounts():
        try:
            _mount(b"none", point, None, MS_BIND | MS_REMOUNT | MS_RDONLY | flags)
        except OSError:
            failed.append(point)
    needed = [sys.prefix, os.path.dirname(os.path.dirname(__file__)), *sys.path]
    hidden = []
    for path in hide:
        if os.path.isdir(path) and not any(_within(n, path) for n in needed if n):
            _mount(b"tmpfs", path, b"tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV, b"size=4k,mode=0")
            hidden.append(path)
    # The course's own files may live under /tmp (a clone there, its .venv, the dataset cache):
    # hold them open, cover /tmp, then bind them back read-only at the same paths, with the
    # covers above carried along (MS_REC), so imports that happen later still resolve.
    cache = os.environ.get("METALIB_CACHE", "")
    keep = [(p, os.open(p, os.O_PATH | os.O_DIRECTORY)) for p in _under_tmp([*needed, cache])]
    _mount(b"tmpfs", "/tmp", b"tmpfs", MS_NOSUID | MS_NODEV, f"size={tmp_mb}m,mode=1777".encode())
    for path, fd in keep:
        os.makedirs(path, exist_ok=True)
        _mount(f"/proc/self/fd/{fd}".encode(), path, None, MS_BIND | MS_REC)
        _mount(b"none", path, None, MS_BIND | MS_REMOUNT | MS_RDONLY)
        os.close(fd)
    for other in ("/var/tmp", "/dev/shm"):
        if os.path.isdir(other):
            _mount(b"/tmp", other, None, MS_BIND)
    work = "/tmp/work"
    os.mkdir(work, 0o700)
    os.chown(work, owner, owner)
    os.chdir(work)
    for name in ("HOME", "MPLCONFIGDIR", "IPYTHONDIR"):
        os.environ[name] = work
    os.environ["TMPDIR"] = "/tmp"
    notes = [f"private file system: read-only, /tmp is a private {tmp_mb} MB tmpfs"]
    notes.append("covered: " + (", ".join(hidden) or "nothing"))
    if keep:
        notes.append("kept read-only under /tmp: " + ", ".join(p for p, _ in keep))
    if failed:
        notes.append(f"could not make read-only: {', '.join(failed)}")
    return notes


def own_pids() -> list[str]:
    """Run the rest of the sandbox as PID 1 of a new PID namespace; this process waits for it.

    The waiting process passes the exit status on. Returns notes (in the new process only).
    """
    if _libc.unshare(CLONE_NEWPID) != 0:
        return [f"no private processes ({os.strerror(ctypes.get_errno())})"]
    pid = os.fork()
    if pid:
        _pass_on_exit(pid)
    try:
        _mount(b"proc", "/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    except OSError as err:
        return [f"private processes (PID namespace; the grader's /proc: {err.strerror})"]
    return ["private processes (PID namespace and /proc)"]


def _pass_on_exit(pid: int) -> None:
    """Wait for ``pid``, then end this process the way it ended."""
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        signal.signal(number, signal.SIG_DFL)
        os.kill(os.getpid(), number)
    os._exit(os.waitstatus_to_exitcode(status) if not os.WIFSIGNALED(status) else 1)


def become(uid: int) -> list[str]:
    """Switch this root process to ``uid`` (gid = uid) for good."""
    reroute_imports(uid)
    resource.setrlimit(resource.RLIMIT_NPROC, (MAX_PROCESSES, MAX_PROCESSES))
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
    if os.getresuid() != (uid, uid, uid) or os.getresgid() != (uid, uid, uid) or os.getgroups():
        raise RuntimeError(f"could not switch to uid {uid}")
    try:
        os.setuid(0)
    except PermissionError:
        return [f"runs as unused uid {uid} (no groups, no_new_privs, {MAX_PROCESSES} tasks)"]
    raise RuntimeError("the sandbox could become root again after dropping privileges")


def drop_capabilities() -> None:
    """Empty this process's capability sets (what it holds in its own user namespace)."""

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [(n, ctypes.c_uint32) for n in ("effective", "permitted", "inheritable")]

    header, data = Header(0x20080522, 0), (Data * 2)()  # _LINUX_CAPABILITY_VERSION_3
    if _libc.capset(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capset failed")


def reachable(path: str, uid: int) -> bool:
    """Whether ``uid`` (gid = uid, no groups) may search every directory down to ``path``."""
    current = Path(path).resolve()
    for directory in (*reversed(current.parents), current):
        info = directory.stat()
        if info.st_uid == uid:
            bit = stat.S_IXUSR
        elif info.st_gid == uid:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not info.st_mode & bit:
            return False
    return True


def reroute_imports(uid: int) -> None:
    """Point import paths ``uid`` cannot reach at descriptors opened now, as root.

    ``/proc/self/fd/N`` resolves to the open directory without searching its parents again, so
    a Python installed under ``/root`` (pyenv) keeps importing its standard library. Packages
    imported already keep their own search path (``__path__``): a submodule imported later, such
    as ``ctypes.wintypes`` when the first ``torch.optim`` optimizer loads ``torch._dynamo``, is
    looked up there, so those paths are rerouted too. The dataset cache (``METALIB_CACHE``) is
    rerouted the same way.
    """
    if not os.path.isdir("/proc/self/fd"):
        return
    moved: dict[str, str] = {}  # unreachable directory -> its descriptor's path

    def reroute(entry: str) -> str:
        for folder in sorted(moved, key=len, reverse=True):
            if entry == folder or entry.startswith(folder + "/"):
                return moved[folder] + entry[len(folder) :]
        return entry

    for entry in sys.path:
        if entry and os.path.isdir(entry) and not reachable(entry, uid):
            moved[entry] = f"/proc/self/fd/{os.open(entry, os.O_RDONLY | os.O_DIRECTORY)}"
    sys.path[:] = [reroute(entry) for entry in sys.path]
    for module in list(sys.modules.values()):
        search = getattr(module, "__path__", None)
        if isinstance(search, list):  # regular packages; namespace packages recompute theirs
            search[:] = [reroute(entry) if isinstance(entry, str) else entry for entry in search]
    sys.path_importer_cache.clear()
    cache = os.environ.get("METALIB_CACHE", "")  # rendered datasets, read-only for the notebook
    if cache and os.path.isdir(cache) and not reachable(cache, uid):
        os.environ["METALIB_CACHE"] = f"/proc/self/fd/{os.open(cache, os.O_RDONLY)}"


def _under_tmp(paths: list[str]) -> list[str]:
    """The existing directories among ``paths`` that lie under /tmp, none inside another."""
    found = sorted(
        {os.path.realpath(p) for p in paths if p and os.path.isdir(p) and _within(p, "/tmp")},
        key=len,
    )
    kept: list[str] = []
    for path in found:
        if path != "/tmp" and not any(_within(path, k) for k in kept):
            kept.append(path)
    return kept


def _within(path: str, folder: str) -> bool:
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def _mounts() -> list[tuple[str, int]]:
    """Mount points of this namespace with the per-mount flags to keep."""
    points = []
    with open("/proc/self/mountinfo") as lines:
        for line in lines:
            fields = line.split()
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
            points.append((point, sum(KEPT_FLAGS.get(o, 0) for o in fields[5].split(","))))
    return points


def _mount(source, target, fstype, flags, data=None) -> None:
    target = os.fsencode(target)
    if _libc.mount(source, target, fstype, flags, data) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {target.decode()}: {os.strerror(err)}")


def _prctl(option: int, value: int) -> None:
    if _libc.prctl(option, value, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), f"prctl({option}) failed")
