"""A view of the course's Python environment for the sandbox's uid, where it cannot reach it.

As root, the grader runs each notebook as an unused uid that owns nothing and belongs to no
group: it may search only the folders every user may search. When the course is installed below
a private folder (a clone in a ``mktemp -d`` folder, mode 0700; pyenv's Python under ``/root``),
that uid cannot import the course's packages, nor read the data files they load lazily (IPython's
colour themes, matplotlib's fonts, torch's libraries).

With a private file system the sandbox fixes this itself: it covers the private folder and binds
back only what it needs (:func:`metalib.grading.lockdown.private_view`). Without one (root in a
container without ``CAP_SYS_ADMIN``), this module makes a **view**: for each needed folder the
uid cannot reach (the sandbox Python's import paths, metalib's package, the dataset cache), a
tree of hard links to its files, in a new folder where every user may search (``/tmp`` or
``/var/tmp``, on the same file system). The sandbox reads everything through it from the start
(:func:`metalib.grading.lockdown.use_view`).

What a view gives away, and what it does not:

* its files are the environment's own files (hard links share the inode): the uid can read one
  only where its mode lets every user read it, and write none that the mode does not let every
  user write. Files writable by group or others, and set-id files, are copied instead (without
  those bits), so the notebook can change nothing of the real environment through the view;
* its folders are new, owned by root, with their originals' modes less any write bit for group
  and others; its top folder is 0711. ``..`` from the view leads to ``/tmp``, never into the
  private folder, so the hidden tests, the solutions or anything else beside the ``.venv`` stay
  out of reach (a descriptor of the real folder would not do: ``/proc/self/fd/N/..`` climbs);
* the hidden tests, submissions and results folders (``hide``) are never linked, even when they
  lie inside a needed folder; when the project's root itself is an import path (an old-style
  editable install), only its ``metalib`` package is linked;
* while grading runs, every user of the machine can read the view (as they could read the
  environment were it installed in ``/opt``); it is removed when the grader exits (by a
  process of its own, so that the grader need not wait for the unlinking).

Building one takes a few seconds for a full environment (about 95,000 files, 3 s here); it is
made once per grader process and Python, and only when it is needed.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import stat
import subprocess
import tempfile
import threading

from metalib.grading import lockdown
from metalib.grading.lockdown import UNUSED_UID, GraderError

PROBE = """
import importlib.util, json, os, sys
from metalib.grading import lockdown
spec = importlib.util.find_spec("metalib")
private = os.geteuid() == 0 and lockdown.enter_namespaces(as_root=True)[0]
print(json.dumps({
    "path": [p for p in sys.path[1:] if p],
    "metalib": list(spec.submodule_search_locations or []),
    "cache": os.environ.get("METALIB_CACHE", ""),
    "private": private,
}))
"""
BASES = ("/tmp", "/var/tmp", "/dev/shm")  # after tempfile.gettempdir(): where a view may go
UNSAFE = stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX | stat.S_IWGRP | stat.S_IWOTH

_lock = threading.Lock()
_views: dict[tuple, dict[str, str] | None] = {}
_made: list[str] = []


def view_for(python: str, env: dict[str, str], hide: list[str]) -> dict[str, str] | None:
    """``{needed folder: its view}`` for the sandbox run by ``python``; ``None``: none needed.

    Made once per ``(python, hide)`` in this process. Only meaningful as root on Linux.

    Raises:
        GraderError: a view is needed and cannot be made (saying what to do instead).
    """
    key = (python, tuple(hide))
    with _lock:
        if key not in _views:
            _views[key] = _make(python, env, hide)
        return _views[key]


def needed_by(python: str, env: dict[str, str]) -> tuple[list[str], bool] | None:
    """What the sandbox's ``python`` reads after the uid switch, and whether it gets a private
    file system; ``None`` when that Python cannot tell (the preflight will say why)."""
    with tempfile.TemporaryDirectory(prefix="metalib-probe-") as tmp:
        try:
            done = subprocess.run(
                [python, "-s", "-c", PROBE],
                cwd=tmp,
                env={**env, "HOME": tmp, "TMPDIR": tmp},
                capture_output=True,
                text=True,
                timeout=60,
            )
            found = json.loads(done.stdout.strip().splitlines()[-1])
        except (OSError, subprocess.TimeoutExpired, IndexError, ValueError):
            return None
    folders = [*found["path"], *found["metalib"], found["cache"]]
    return [f for f in folders if f and os.path.isdir(f)], bool(found["private"])


def _make(python: str, env: dict[str, str], hide: list[str]) -> dict[str, str] | None:
    probed = needed_by(python, env)
    if probed is None:
        return None
    folders, private = probed
    missing = [f for f in folders if not lockdown.reachable(f, UNUSED_UID)]
    if not missing or private:  # nothing out of reach, or the sandbox binds what it needs
        return None
    package = next((f for f in folders if os.path.basename(f) == "metalib"), None)
    roots = lockdown._outermost(missing, "/")
    hidden = [os.path.realpath(h) for h in hide]
    view: dict[str, str] = {}
    for root in roots:
        only = None
        if package is not None and os.path.dirname(os.path.realpath(package)) == root:
            only = "metalib"  # the project's root as an import path: its package, nothing else
        view[root] = link_tree(root, _base_for(root), hidden, only)
    return view


def _base_for(root: str) -> str:
    """A new folder every user may search, on ``root``'s file system, removed at exit."""
    blocked = lockdown.first_unsearchable(root, UNUSED_UID)
    if blocked == root:
        raise GraderError(
            f"the course's Python folder {root} is private (mode "
            f"{stat.S_IMODE(os.stat(root).st_mode):o}): the unprivileged user the notebooks run "
            "as cannot read it. Install the course's Python with a umask of 022 (or run "
            f"`chmod -R o+rX {root}`)."
        )
    device = os.stat(root).st_dev
    for base in (tempfile.gettempdir(), *BASES):
        if (
            os.path.isdir(base)
            and os.stat(base).st_dev == device
            and lockdown.reachable(base, UNUSED_UID)
            and os.access(base, os.W_OK)
        ):
            folder = tempfile.mkdtemp(prefix="metalib-view-", dir=base)
            os.chmod(folder, 0o711)
            _made.append(folder)
            return folder
    raise GraderError(
        f"the notebooks run as an unprivileged user, which cannot reach the course's Python in "
        f"{root} (it lies in {blocked}, which only its owner may enter), and this system gives "
        "the sandbox no private file system (no CAP_SYS_ADMIN) in which to show it, nor a folder "
        "every user may enter on the same file system for a view of links. Install the course's "
        "Python where every user may read it (e.g. `python3 -m venv /opt/metalib-venv`, then "
        "install requirements.lock and metalib into it and pass --python), or grant the "
        "container CAP_SYS_ADMIN (GRADING.md, the sandbox)."
    )


def link_tree(root: str, base: str, hide: list[str], only: str | None = None) -> str:
    """Mirror ``root`` into a new folder in ``base`` with hard links; return that folder.

    ``hide`` folders are left out; with ``only``, just that entry of ``root`` is mirrored.

    Raises:
        GraderError: a file could not be linked or copied.
    """
    target = os.path.join(base, "view")
    os.mkdir(target, _folder_mode(os.stat(root).st_mode))
    stack = [(root, target)]
    try:
        while stack:
            source, copy = stack.pop()
            with os.scandir(source) as entries:
                for entry in entries:
                    if source == root and only is not None and entry.name != only:
                        continue
                    if any(lockdown._within(entry.path, h) for h in hide):
                        continue
                    _mirror(entry, os.path.join(copy, entry.name), stack)
    except OSError as err:
        raise GraderError(
            f"could not make a view of {root} for the sandbox in {base}: {err}"
        ) from err
    return target


def _mirror(entry: os.DirEntry, path: str, stack: list) -> None:
    info = entry.stat(follow_symlinks=False)
    if entry.is_symlink():
        os.symlink(os.readlink(entry.path), path)
    elif stat.S_ISDIR(info.st_mode):
        os.mkdir(path, _folder_mode(info.st_mode))
        os.chmod(path, _folder_mode(info.st_mode))  # past the umask
        stack.append((entry.path, path))
    elif stat.S_ISREG(info.st_mode):
        if info.st_mode & UNSAFE:  # writable by others through the view, or set-id: a copy
            shutil.copyfile(entry.path, path)
            os.chmod(path, stat.S_IMODE(info.st_mode) & 0o755)
        else:
            os.link(entry.path, path, follow_symlinks=False)


def _folder_mode(mode: int) -> int:
    return stat.S_IMODE(mode) & 0o755


@atexit.register
def remove_views(wait: bool = False) -> None:
    """Remove the views this process made: by a process of their own unless ``wait``.

    Unlinking some 95,000 hard links takes 2 to 30 s on a busy disk; the grader need not wait.
    """
    while _made:
        folder = _made.pop()
        if wait or shutil.which("rm") is None:
            shutil.rmtree(folder, ignore_errors=True)
            continue
        subprocess.Popen(
            ["rm", "-rf", "--", folder],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
