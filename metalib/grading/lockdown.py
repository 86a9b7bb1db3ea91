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
  processes. As a user, all capabilities are dropped. Either way ``no_new_privs`` is set.

**The course's Python where the sandbox's uid cannot reach it.** As root, the notebook runs as an
uid that owns nothing, so it can search only folders that every user may search. The course's
Python environment may lie below a private folder (a clone in a ``mktemp -d`` folder, mode 0700;
pyenv's Python under ``/root``), and a notebook needs more than its imports from there: IPython
reads its colour themes, matplotlib its fonts, torch loads libraries lazily, all from files next
to the modules. What the sandbox's uid may read is then, on purpose, *what any other user of the
machine may read, plus the course's Python environment* (its prefixes, import paths, metalib and
the dataset cache), and never the hidden tests, the submissions or the results:

* with a private file system, each private folder above something needed is covered by an empty
  read-only tmpfs and only the needed folders are bound back at their own paths, read-only
  (:func:`private_view`): the rest of that private folder (the hidden tests beside the ``.venv``
  in a clone, everything else under ``/root``) is not there at all;
* without one (root in a container without ``CAP_SYS_ADMIN``), the grader makes a *view*, a tree
  of hard links to the environment's files in a folder every user may search
  (:mod:`metalib.grading.view`), and the sandbox imports everything through it from the start
  (:func:`use_view`). A hard link grants nothing its file's own mode does not, and from the view
  ``..`` leads to ``/tmp``, not to the private folder, so nothing else of that folder is
  reachable.

Not done, on purpose: giving the notebook ``CAP_DAC_READ_SEARCH``, changing the modes or ACLs of
the instructor's folders, or passing it descriptors of the real folders (``/proc/self/fd/N/..``
climbs from any of them to its parents, the clone's ``hidden_tests/`` included).

Always: resource limits (address space, CPU seconds, file size, no core dumps), soft = hard. Where
the kernel refuses a namespace (a Docker container without ``CAP_SYS_ADMIN``, a kernel without
unprivileged user namespaces) the step is skipped and a note says so; :func:`lock_in` returns
these notes for the instructor's log.

Linux only: :func:`lock_in` refuses elsewhere (the grader refuses before, saying what to do
instead). The module itself imports anywhere: ``resource`` is imported where it is used.
"""

from __future__ import annotations

import ctypes
import os
import re
import signal
import stat
import sys
from pathlib import Path

UID_RANGE = (2_000_000_000, 2_100_000_000)  # far above any account's uid
UNUSED_UID = UID_RANGE[0]  # "the sandbox's uid" when asking what it may reach (gid = uid)


class GraderError(RuntimeError):
    """The grader cannot run: no sandbox here, a missing dependency, a broken tests folder."""


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
COVER_KB = 64  # the tmpfs over a private folder holds only the empty folders leading to binds
_libc_handle: list = []


def linux() -> bool:
    return sys.platform.startswith("linux")


def _libc():
    if not _libc_handle:
        _libc_handle.append(ctypes.CDLL(None, use_errno=True))
    return _libc_handle[0]


def lock_in(request: dict) -> list[str]:
    """Apply the request's isolation and limits to this process; return notes on what was done.

    ``request["uid"]`` is the uid to become (the grader is root) or ``None`` (it is not).
    """
    if not linux():
        raise RuntimeError(f"the sandbox needs Linux; this is {sys.platform}")
    uid = request.get("uid")
    if uid is not None and os.geteuid() != 0:
        raise RuntimeError("the grader asked for a uid switch, but the sandbox is not root")
    notes = []
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
    import resource  # Unix only: imported where used, so that the package imports anywhere

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
            if linux():
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
    if _libc().unshare(flags) != 0:
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
    _libc().unshare(CLONE_NEWNET | CLONE_NEWIPC)  # best effort: the note says whether it worked
    offline = os.readlink("/proc/self/ns/net") != network
    return True, ["no network" if offline else "network as the grader's"]


def needed_paths() -> list[str]:
    """The folders the notebook's Python reads after the lock: its prefixes, import paths,
    metalib's package and the dataset cache (``METALIB_CACHE``)."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    paths = [sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix, package]
    paths += [*sys.path, os.environ.get("METALIB_CACHE", "")]
    return [p for p in paths if p and os.path.isdir(p)]


def covers(needed: list[str], uid: int) -> dict[str, list[str]]:
    """``{folder to cover: [needed folders in it to bind back]}``.

    The folders covered are ``/tmp`` (always: it becomes the notebook's private ``/tmp``) and,
    for each needed folder that ``uid`` cannot reach, the first folder above it that ``uid`` may
    not search (a 0700 clone folder, ``/root``). Only the outermost covers and, in each, the
    outermost needed folders are kept.
    """
    found = {"/tmp"}
    for path in needed:
        blocked = first_unsearchable(path, uid)
        if blocked not in (None, "/", os.path.realpath(path)):  # itself private: cannot help
            found.add(blocked)
    outer: list[str] = []
    for folder in sorted(found, key=len):
        if not any(_within(folder, o) for o in outer):
            outer.append(folder)
    return {folder: _outermost(needed, folder) for folder in outer}


def private_view(hide: list[str], tmp_mb: int, owner: int) -> list[str]:
    """Every mount read-only, ``hide`` covered, private folders covered, a private ``/tmp``.

    ``owner`` is the uid the notebook will run as. Ends in ``/tmp/work``, the notebook's folder.
    """
    failed = []
    for point, flags in _mounts():
        try:
            _mount(b"none", point, None, MS_BIND | MS_REMOUNT | MS_RDONLY | flags)
        except OSError:
            failed.append(point)
    needed = needed_paths()
    hidden = []
    for path in hide:
        if os.path.isdir(path) and not any(_within(n, path) for n in needed):
            _mount(b"tmpfs", path, b"tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV, b"size=4k,mode=0")
            hidden.append(path)
    # /tmp, and each private folder above something the notebook's Python needs (the course's
    # clone or .venv may lie under /tmp or in a 0700 folder, pyenv's Python under /root): hold
    # the needed folders open, cover the folder, then bind them back read-only at the same paths,
    # with the covers above carried along (MS_REC), so that imports and data files still resolve.
    plan = covers(needed, owner)
    held = {
        folder: [(p, os.open(p, os.O_PATH | os.O_DIRECTORY)) for p in keep]
        for folder, keep in plan.items()
    }
    mask = os.umask(0o022)  # the folders leading to the binds: searchable by the notebook's uid
    try:
        for folder, keep in held.items():
            if folder == "/tmp":
                options = f"size={tmp_mb}m,mode=1777".encode()
            else:
                options = f"size={COVER_KB}k,mode=0755".encode()
            _mount(b"tmpfs", folder, b"tmpfs", MS_NOSUID | MS_NODEV, options)
            for path, fd in keep:
                os.makedirs(path, exist_ok=True)
                _mount(f"/proc/self/fd/{fd}".encode(), path, None, MS_BIND | MS_REC)
                _mount(b"none", path, None, MS_BIND | MS_REMOUNT | MS_RDONLY)
                os.close(fd)
            if folder != "/tmp":
                _mount(b"none", folder, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
    finally:
        os.umask(mask)
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
    for folder, keep in held.items():
        if keep:
            where = "under /tmp" if folder == "/tmp" else f"of private {folder} (rest covered)"
            notes.append(f"kept read-only {where}: " + ", ".join(p for p, _ in keep))
    if failed:
        notes.append(f"could not make read-only: {', '.join(failed)}")
    return notes


def use_view(view: dict[str, str]) -> None:
    """From now on, read each folder of ``view`` (keys) through its view (values).

    Called by the sandbox before it imports anything large: import paths (``sys.path`` and the
    search paths of the packages imported so far) and the dataset cache are pointed at the view,
    so that modules imported later, and the data files they find next to themselves, are read
    there. See :mod:`metalib.grading.view`.
    """

    def through(entry: str) -> str:
        for candidate in (entry, os.path.realpath(entry)):
            for folder in sorted(view, key=len, reverse=True):
                if candidate == folder or candidate.startswith(folder.rstrip("/") + "/"):
                    return view[folder] + candidate[len(folder) :]
        return entry

    sys.path[:] = [through(entry) if entry else entry for entry in sys.path]
    for module in list(sys.modules.values()):
        search = getattr(module, "__path__", None)
        if isinstance(search, list):  # regular packages; namespace packages recompute theirs
            search[:] = [through(entry) if isinstance(entry, str) else entry for entry in search]
    sys.path_importer_cache.clear()
    cache = os.environ.get("METALIB_CACHE", "")
    if cache:
        os.environ["METALIB_CACHE"] = through(cache)


def own_pids() -> list[str]:
    """Run the rest of the sandbox as PID 1 of a new PID namespace; this process waits for it.

    The waiting process passes the exit status on. Returns notes (in the new process only).
    """
    if _libc().unshare(CLONE_NEWPID) != 0:
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
    import resource

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
    if _libc().capset(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capset failed")


def reachable(path: str, uid: int, alone: bool = False) -> bool:
    """Whether ``uid`` (gid = uid, no groups) may search every directory down to ``path``.

    With ``alone``, whether it may search ``path`` itself (its parents not looked at).
    """
    current = Path(path).resolve()
    for directory in (current,) if alone else (*reversed(current.parents), current):
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


def first_unsearchable(path: str, uid: int) -> str | None:
    """The first folder from ``/`` down to ``path`` (included) that ``uid`` may not search."""
    current = Path(os.path.realpath(path))
    for directory in (*reversed(current.parents), current):
        if not reachable(str(directory), uid, alone=True):
            return str(directory)
    return None


def _outermost(paths: list[str], folder: str) -> list[str]:
    """The existing directories among ``paths`` strictly inside ``folder``, none inside another."""
    found = sorted(
        {os.path.realpath(p) for p in paths if p and os.path.isdir(p) and _within(p, folder)},
        key=len,
    )
    kept: list[str] = []
    for path in found:
        if path != os.path.realpath(folder) and not any(_within(path, k) for k in kept):
            kept.append(path)
    return kept


def _under_tmp(paths: list[str]) -> list[str]:
    """The existing directories among ``paths`` that lie under /tmp, none inside another."""
    return _outermost(paths, "/tmp")


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
    if _libc().mount(source, target, fstype, flags, data) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {target.decode()}: {os.strerror(err)}")


def _prctl(option: int, value: int) -> None:
    if _libc().prctl(option, value, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), f"prctl({option}) failed")
