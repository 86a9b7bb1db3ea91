"""Build Gradescope's autograder upload (``make gradescope``): ``_build/gradescope/autograder.zip``.

Usage: ``python tools/gradescope/build.py [--out PATH] [--tests DIR] [--grader-args "..."]``.

The zip holds, at its top level as Gradescope expects: ``setup.sh`` and ``run_autograder`` (from
this folder), ``requirements.lock``, ``pyproject.toml`` and ``README.md`` (pip needs both to
install metalib), the ``metalib`` package source and ``hidden_tests/`` (or the ``--tests``
folder, stored as ``hidden_tests/``). ``--grader-args`` become the zipped ``run_autograder``'s
default options for the grader (``--exercise 00_tasks`` makes one zip per assignment that ignores
the notebooks' metadata; ``--timeout 300`` gives notebooks more time). Entries are sorted and
dated 1980-01-01, so the same sources give the same bytes.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
SKIP_PARTS = {"__pycache__", ".ipynb_checkpoints"}
EPOCH = (1980, 1, 1, 0, 0, 0)


def entries(tests: Path) -> list[tuple[str, Path]]:
    """``[(name in the zip, file on disk)]``, sorted by name."""
    if not tests.is_dir():
        raise ValueError(f"hidden tests folder {tests} does not exist; pass --tests DIR")
    files = [
        ("setup.sh", HERE / "setup.sh"),
        ("run_autograder", HERE / "run_autograder"),
        ("requirements.lock", ROOT / "requirements.lock"),
        ("pyproject.toml", ROOT / "pyproject.toml"),
        ("README.md", ROOT / "README.md"),
    ]
    for folder, name in ((ROOT / "metalib", "metalib"), (tests, "hidden_tests")):
        for path in sorted(folder.rglob("*")):
            relative = path.relative_to(folder)
            if path.is_file() and not SKIP_PARTS & set(relative.parts) and path.suffix != ".pyc":
                files.append((f"{name}/{relative.as_posix()}", path))
    return sorted(files)


def run_autograder(grader_args: str) -> bytes:
    """``run_autograder`` with ``grader_args`` as its default options for the grader."""
    text = (HERE / "run_autograder").read_text()
    if grader_args:
        text = text.replace('BUILT_GRADER_ARGS=""', f"BUILT_GRADER_ARGS={shlex.quote(grader_args)}")
    return text.encode()


def build(out: Path, tests: Path, grader_args: str = "") -> list[str]:
    """Write the zip to ``out``; return the names it holds."""
    out.parent.mkdir(parents=True, exist_ok=True)
    items = entries(tests)
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, path in items:
            info = zipfile.ZipInfo(name, EPOCH)
            mode = 0o755 if name in ("setup.sh", "run_autograder") else 0o644
            info.external_attr = (0o100000 | mode) << 16  # a regular file with these permissions
            info.compress_type = zipfile.ZIP_DEFLATED
            data = run_autograder(grader_args) if name == "run_autograder" else path.read_bytes()
            archive.writestr(info, data)
    return [name for name, _ in items]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=ROOT / "_build" / "gradescope" / "autograder.zip"
    )
    parser.add_argument("--tests", type=Path, default=ROOT / "hidden_tests")
    parser.add_argument(
        "--grader-args",
        default="",
        help='options the zipped run_autograder passes to the grader, e.g. "--exercise 00_tasks"',
    )
    args = parser.parse_args(argv)
    try:
        names = build(args.out, args.tests, args.grader_args)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.out} ({len(names)} files); upload it as the autograder on Gradescope")
    return 0


if __name__ == "__main__":
    sys.exit(main())
