"""Import every module of metalib, then run the grader's command line; print what failed, as JSON.

Run by ``tests/test_platforms.py`` in a Python that passes for another system (``sitecustomize``
beside this file). Usage: ``python walk.py NOTEBOOK SCRATCH``. Prints one JSON object:

* ``problems``: each module that did not import, naming the metalib module and line that imported
  a module this system lacks (``metalib.grading.launch, line 18, imports pwd``), or the error;
* ``help``, ``help_code``: ``python -m metalib.grading --help``'s output and exit status;
* ``grade_code``, ``grade_err``: grading ``NOTEBOOK`` into ``SCRATCH`` (refused off Linux).
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import pkgutil
import runpy
import sys
import traceback

BLOCKED = {name for name, module in sys.modules.items() if module is None}


def culprit(err: BaseException) -> str:
    """``"metalib.x, line N"`` for the innermost metalib frame of ``err``'s traceback."""
    for frame in reversed(traceback.extract_tb(err.__traceback__)):
        parts = os.path.normpath(frame.filename).split(os.sep)
        if "metalib" in parts:
            tail = parts[len(parts) - 1 - parts[::-1].index("metalib") :]
            module = ".".join(tail)[: -len(".py")].removesuffix(".__init__")
            return f"{module}, line {frame.lineno}"
    return "outside metalib"


def problem(name: str, err: BaseException) -> str:
    missing = getattr(err, "name", None)
    if isinstance(err, ImportError) and missing in BLOCKED:
        return f"{name}: {culprit(err)}, imports {missing}, which {sys.platform} does not have"
    return f"{name}: {type(err).__name__}: {err} ({culprit(err)})"


def walk() -> list[str]:
    problems: list[str] = []
    try:
        import metalib
    except BaseException as err:
        return [problem("metalib", err)]
    names = ["metalib"]

    def failed(name: str) -> None:
        problems.append(problem(name, sys.exc_info()[1]))

    names += [m.name for m in pkgutil.walk_packages(metalib.__path__, "metalib.", onerror=failed)]
    for name in names:
        try:
            importlib.import_module(name)
        except BaseException as err:  # SystemExit too: a module must import quietly
            problems.append(problem(name, err))
    return problems


def command(argv: list[str], module: str = "metalib.grading") -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    sys.argv = [module, *argv]
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
        except BaseException as error:
            code = -1
            err.write(problem(f"python -m {module}", error))
    return code, out.getvalue(), err.getvalue()


def main() -> None:
    notebook, scratch = sys.argv[1], sys.argv[2]
    problems = walk()
    help_code, help_text, help_err = command(["--help"])
    grade_code, _, grade_err = command([notebook, "--out", os.path.join(scratch, "out")])
    report = {
        "platform": sys.platform,
        "problems": problems,
        "help_code": help_code,
        "help": help_text + help_err,
        "grade_code": grade_code,
        "grade_err": grade_err,
    }
    sys.stdout.write(json.dumps(report) + "\n")


if __name__ == "__main__":
    main()
