"""Write the repository as students get it (``make release OUT=dir [REPOSITORY=url]``).

The instructors' repository holds the answers: ``solutions/`` (the exercises' single source),
``hidden_tests/`` (the grader's further cases) and the instructors' pages.
A student release is the committed repository without them:

- no ``solutions/``, ``hidden_tests/``, ``course.md``, ``GRADING.md``,
  nor the tests and benchmarks that read them (:data:`LEFT_OUT`, each with its reason);
- no links to solutions: the chapters' "(solution)" links and the book's Solutions and
  instructors' parts of ``_toc.yml`` go, and the pages that mention them say what a student does;
- the exercises exactly as ``make exercises`` generates them (this refuses to release exercises
  that have drifted from their solutions);
- with ``REPOSITORY``, every notebook's Colab setup cell installs from that address
  (``tools/colab.py``), so the released notebooks run on Colab.

Last, it checks that nothing of the solutions leaked: no line that occurs only in the solutions'
answer blocks (``# BEGIN SOLUTION`` ... ``# END SOLUTION``) appears in any released file. The
release builds its book (``make book``) and passes its tests (``make test``) on its own.

``OUT`` becomes a git repository of one commit, ready to push where students clone from.

Usage: ``python tools/release.py OUT [--repository URL] [--branch NAME]``. ``OUT`` must not exist
or be an empty folder.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import colab  # noqa: E402
import make_exercises  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

# What a student release leaves out, and why (a folder drops everything under it).
LEFT_OUT = {
    "solutions": "the answers",
    "hidden_tests": "the grader's unseen cases",
    "course.md": "the instructors' page (building, handing out, grading)",
    "GRADING.md": "the instructors' grading guide",
    "benchmarks/grading.py": "times the grader on the solutions",
    "tests/test_exercises.py": "checks the judges against the solutions",
    **{
        f"tests/{path.name}": "checks the judges of one exercise against its solution"
        for path in sorted((ROOT / "tests").glob("test_exercise_*.py"))
    },
    "tests/test_grading_docs.py": "runs the grading guide's example",
    "tools/check_tests.py": "grades the solutions under a tests folder",
    "benchmarks/grading_load.py": "grades the solutions under load",
    "tests/test_make_exercises.py": "checks that the exercises are generated from the solutions",
    "tests/test_colab.py": "runs a solution as a student's answer",
    "tests/test_release.py": "makes a release from the instructors' repository",
}

# Text that points at what the release leaves out, replaced by what a student does instead.
# Each pattern must match (a release from a changed repository fails instead of leaking a link).
SOLUTION_LINK = re.compile(r"\s*\(\[solution\]\(\.\./solutions/[^)]*\)\)")
EDITS = {
    "intro.md": [
        (
            r"Solutions are in `solutions/`; instructors grade a folder of\s+submitted notebooks "
            r"with one command \(see `GRADING.md` in the repository\)\.",
            "Before you hand a notebook in, `make check NB=exercises/NN_topic.ipynb` scores it\n"
            "  on the visible cases, on any system.",
        ),
        (r";\s+instructors, see\s+\[using this book in a course\]\(course\)\.", "."),
    ],
    "exercises/README.md": [
        (
            r"They are generated from `solutions/` by\s+`make exercises` — never edit them by "
            r"hand; a test fails when they drift from the solutions\.\s+Instructors grade "
            r"submitted copies with `make grade SUB=folder OUT=results` \(see `GRADING.md`\)\.",
            "Fill the blanks, run each check\ncell, and before you hand a notebook in, "
            "`make check NB=exercises/NN_topic.ipynb`\nscores it on the visible cases (your "
            "instructor's grader also runs unseen ones).",
        ),
    ],
}


def tracked_files(root: Path = ROOT) -> list[str]:
    """The repository's committed paths (their working-tree contents are what is released)."""
    out = subprocess.run(
        ["git", "ls-files", "-z"], cwd=root, capture_output=True, text=True, check=True
    ).stdout
    return sorted(p for p in out.split("\0") if p)


def left_out(path: str) -> bool:
    return any(path == d or path.startswith(d + "/") for d in LEFT_OUT)


def solution_only_lines(root: Path = ROOT) -> set[str]:
    """Lines of the solutions' answer blocks that occur in no file a student may see.

    Stripped lines of at least 20 characters, so that ``return x`` and the like, which any code
    may contain, are not counted.
    """
    lines: set[str] = set()
    for path in sorted((root / "solutions").glob("*.ipynb")):
        for cell in nbformat.read(path, as_version=4).cells:
            if cell.cell_type != "code":
                continue
            inside = False
            for line in cell.source.splitlines():
                if make_exercises.BEGIN.match(line):
                    inside = True
                elif make_exercises.END.match(line):
                    inside = False
                elif inside and len(line.strip()) >= 20 and not line.strip().startswith("#"):
                    lines.add(line.strip())
    shared = set()
    for path in tracked_files(root):
        if left_out(path) or not (root / path).is_file():
            continue
        text = (root / path).read_text(errors="replace")
        shared |= {line for line in lines if line in text}
    return lines - shared


def leaks(out: Path, lines: set[str]) -> list[str]:
    """``path: line`` for every solution-only line found in a file under ``out``."""
    found = []
    for path in sorted(p for p in out.rglob("*") if p.is_file() and ".git" not in p.parts):
        text = path.read_text(errors="replace")
        found += [f"{path.relative_to(out)}: {line}" for line in sorted(lines) if line in text]
    return found


LINK = re.compile(r"\]\(([^)\s]+)\)")


def dangling_links(out: Path) -> list[str]:
    """``file: target`` for each relative Markdown link under ``out`` to a file that is not there
    (a page of the book may be linked without its extension)."""
    found = []
    for path in sorted(out.rglob("*")):
        if path.suffix not in (".md", ".ipynb") or ".git" in path.parts or "_build" in path.parts:
            continue
        if path.suffix == ".ipynb":
            cells = nbformat.read(path, as_version=4).cells
            text = "\n".join(c.source for c in cells if c.cell_type == "markdown")
        else:
            text = path.read_text()
        for target in LINK.findall(text):
            target = target.split("#")[0]
            if not target or re.match(r"^[a-z]+:", target):
                continue
            base = (path.parent / target).resolve()
            if not any(Path(f"{base}{ext}").exists() for ext in ("", ".md", ".ipynb")):
                found.append(f"{path.relative_to(out)}: {target}")
    return found


def _edit(text: str, pattern: str, replacement: str, where: str) -> str:
    new, n = re.subn(pattern, lambda _: replacement, text)
    if n == 0:
        raise RuntimeError(f"{where}: the text to replace for the release is gone: {pattern!r}")
    return new


def _student_toc(text: str) -> str:
    toc = yaml.safe_load(text)
    parts = []
    for part in toc["parts"]:
        files = [c for c in part["chapters"] if not left_out(c["file"] + ".md")]
        files = [c for c in files if not left_out(c["file"].split("/")[0])]
        if files:
            parts.append({**part, "chapters": files})
    toc["parts"] = parts
    header = "# Table of contents of the students' release: chapters, then exercises.\n"
    return header + yaml.safe_dump(toc, sort_keys=False)


def release(out: Path, repository: str | None = None, branch: str = "main") -> list[str]:
    """Write the students' repository into ``out``; return the released paths."""
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty: give a new or empty folder as OUT")
    if out.resolve().is_relative_to(ROOT.resolve()):
        raise ValueError(f"OUT must lie outside the repository, got {out}")
    if make_exercises.main(["--check"]) != 0:
        raise RuntimeError("exercises/ has drifted from solutions/: run `make exercises` first")
    source = colab.pip_source(repository, branch) if repository else None
    secret = solution_only_lines()
    out.mkdir(parents=True, exist_ok=True)
    released = []
    for path in tracked_files():
        if left_out(path) or not (ROOT / path).exists():
            continue
        (out / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / path, out / path)
        released.append(path)
    for path, edits in EDITS.items():
        text = (out / path).read_text()
        for pattern, replacement in edits:
            text = _edit(text, pattern, replacement, path)
        (out / path).write_text(text)
    (out / "_toc.yml").write_text(_student_toc((out / "_toc.yml").read_text()))
    for path in sorted((out / "chapters").glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "markdown":
                cell.source = SOLUTION_LINK.sub("", cell.source)
        nbformat.write(nb, path)
    if source is not None:
        for folder in ("chapters", "exercises"):
            for path in sorted((out / folder).glob("*.ipynb")):
                nb = nbformat.read(path, as_version=4)
                if colab.stamp(nb, source):
                    nbformat.write(nb, path)
    broken = dangling_links(out)
    if broken:
        raise RuntimeError("links to what the release leaves out:\n" + "\n".join(broken))
    found = leaks(out, secret)
    if found:
        raise RuntimeError("solution code leaked into the release:\n" + "\n".join(found[:20]))
    _commit(out)
    return released


def _commit(out: Path) -> None:
    """Make ``out`` a git repository of one commit, ready to push where students clone from."""
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    ).stdout.strip()
    who = ["-c", "user.name=metalib release", "-c", "user.email=release@localhost"]
    git = ["git", *who, "-C", str(out)]
    subprocess.run([*git, "init", "-q", "-b", "main"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    message = f"Students' release of {head}{' (with uncommitted changes)' if dirty else ''}"
    subprocess.run([*git, "commit", "-q", "-m", message], check=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="a new or empty folder outside the repository")
    parser.add_argument("--repository", help="https://host/owner/name, for the Colab cells")
    parser.add_argument("--branch", default="main")
    args = parser.parse_args(argv)
    try:
        released = release(args.out, args.repository, args.branch)
    except (ValueError, FileExistsError, RuntimeError) as err:
        print(f"release.py: {err}", file=sys.stderr)
        return 2
    print(f"wrote the students' release to {args.out}: {len(released)} files")
    for path, why in LEFT_OUT.items():
        print(f"  left out {path}: {why}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
