"""Make this Python pass for another system's, to test what a student there imports and runs.

Put this folder on ``PYTHONPATH`` and set ``METALIB_FAKE_PLATFORM`` to ``win32`` or ``darwin``:
every Python started so (the self-check's own child process too) then, before its main module,

1. imports every module of metalib with the real platform, so that what metalib imports (torch,
   IPython, matplotlib, the standard library) is loaded the way it is on any system: those
   packages choose their own code by platform, which this test is not about; then forgets metalib
   (its modules are imported again, fresh, under the fake platform);
2. blocks the modules that system lacks: ``sys.modules[name] = None``, so that ``import pwd``
   raises ``ModuleNotFoundError`` as it does on Windows (already imported copies stay usable by
   whoever holds them, as on that system they would not exist at all: the point is metalib's
   own imports); on ``win32`` it also removes ``signal.SIGALRM``/``setitimer`` and the Unix-only
   ``os`` functions metalib might call (``geteuid``, ``getuid``, ``killpg``, ``setsid``);
3. sets ``sys.platform``.

``METALIB_FAKE_PLATFORM_REPORT`` names a file where step 1's failures are written (a module that
does not import even on the real platform).
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import signal
import sys

UNIX_ONLY = (
    "pwd",
    "grp",
    "resource",
    "fcntl",
    "termios",
    "tty",
    "pty",
    "posix",
    "_posixsubprocess",
    "_posixshmem",
    "syslog",
    "crypt",
    "spwd",
    "nis",
    "readline",
    "curses",
    "_curses",
)
LINUX_ONLY = ("spwd", "ossaudiodev")
WINDOWS_LACKS = {
    signal: ("SIGALRM", "setitimer", "getitimer", "ITIMER_REAL"),
    os: ("geteuid", "getuid", "killpg", "setsid"),
}


def _preload() -> list[str]:
    import metalib

    failures = []
    names = ["metalib"]
    for info in pkgutil.walk_packages(metalib.__path__, "metalib."):
        names.append(info.name)
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as err:  # reported by the test, which imports each module again
            failures.append(f"{name}: {type(err).__name__}: {err}")
    for name in [n for n in sys.modules if n == "metalib" or n.startswith("metalib.")]:
        del sys.modules[name]
    return failures


def _fake(target: str) -> None:
    failures = _preload()
    report = os.environ.get("METALIB_FAKE_PLATFORM_REPORT")
    if report:
        with open(report, "w") as f:
            f.write("\n".join(failures))
    for name in UNIX_ONLY if target == "win32" else LINUX_ONLY:
        sys.modules[name] = None
    if target == "win32":
        for module, names in WINDOWS_LACKS.items():
            for name in names:
                if hasattr(module, name):
                    delattr(module, name)
    sys.platform = target


_target = os.environ.get("METALIB_FAKE_PLATFORM")
if _target:
    _fake(_target)
