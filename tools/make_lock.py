"""Print a pinned lock of the current environment (``make lock > requirements.lock``).

``pip freeze`` of the venv, minus metalib itself, with torch written as ``torch==2.13.0``: the
local build tag (``+cpu``) would not resolve on another machine, and the exact pin keeps pip from
pulling a multi-GB CUDA build where the CPU wheel is at hand.
"""

import subprocess
import sys

TORCH = "torch==2.13.0"


def main() -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "freeze",
            "--exclude-editable",
            "--disable-pip-version-check",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.splitlines()
    print("# Pinned environment of the workbook: `make lock` writes it; `make setup` installs it.")
    print(
        "# torch stays at 2.13.0: with Python 3.11 the course machines take its CPU build from"
        " local disk;\n# elsewhere pip takes PyPI's (a CUDA build on Linux, several GB: see the"
        " README for the CPU one)."
    )
    for line in sorted(out, key=str.lower):
        name = line.split("==")[0].strip().lower()
        if not line or line.startswith("#") or name == "metalib" or line.startswith("-e "):
            continue
        print(TORCH if name == "torch" else line)


if __name__ == "__main__":
    main()
