"""Which Pythons and torch releases the workbook really installs and passes its unit tests on.

    python3 benchmarks/platforms.py [--python 3.10 3.11 3.12 3.13 3.11+torch2.14.1] [--keep]

A one-off check, run by hand and never in CI; standard library only, so any Python 3.11 runs it.
It clones this repository's HEAD into a scratch folder under /tmp (edits in the working tree do
not leak in), with a ``../shared`` link beside the clone (the Omniglot tests read
``../shared/data/omniglot``), then, for each row, one Python of pyenv
(``~/.pyenv/versions/3.1x.y``):

1. a fresh venv, ``pip install -r requirements.lock`` and ``pip install --no-deps -e .`` (what
   ``make setup`` does; where the lock fails, the editable install is tried too, for its own
   message), with the install's seconds and the venv's size;
2. the fast unit tests, ``python -m pytest tests -m "not slow" -p no:cacheprovider -q -x``, with
   ``METALIB_THREADS=2`` (counts and seconds; ``-x`` stops at the first failure);
3. for the row ``3.11+torch2.14.1`` only: the lock, then ``pip install torch==2.14.1`` (a CUDA
   build, about 5.5 GB in the venv, run on the CPU here), the same tests, and the first chapter
   executed end to end through ``benchmarks/notebook_run.py`` (nbclient).

Each venv is deleted once measured (``--keep`` keeps them), and so is the pip cache of the run.
Writes ``benchmarks/results/platforms.md`` after every row, so partial results survive; rows not
chosen with ``--python`` are kept from the previous file.

Cost: on these machines only Python 3.11 finds the lock's torch (2.13.0, CPU build) and torch
2.14.1 on local disk. Every other Python makes pip download a CUDA build of torch and its NVIDIA
libraries, several GB per row, and the row takes minutes.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "platforms.md"
SHARED = ROOT.parent / "shared"
PYENV = Path.home() / ".pyenv" / "versions"
PIP = ["-m", "pip", "install", "--quiet", "--disable-pip-version-check"]  # as the Makefile
TESTS = ["-m", "pytest", "tests", "-m", "not slow", "-p", "no:cacheprovider", "-q", "-x"]
TORCH = "2.14.1"
# row -> (pyenv version, torch to install over the lock, or None)
ROWS = {
    "3.10": ("3.10.13", None),
    "3.11": ("3.11.7", None),
    "3.12": ("3.12.1", None),
    "3.13": ("3.13.0", None),
    f"3.11+torch{TORCH}": ("3.11.7", TORCH),
}
DATA_TAG = "platforms-data"  # the rows as JSON, in a comment at the end of the Markdown file


def sh(cmd: list[str], cwd: Path, env: dict[str, str], log: Path, timeout: float) -> tuple:
    """Run ``cmd``; append its output to ``log``. Returns (exit code, output, seconds)."""
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd,
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
        )
        code, out = proc.returncode, proc.stdout
    except subprocess.TimeoutExpired as err:
        out = err.stdout.decode(errors="replace") if isinstance(err.stdout, bytes) else ""
        code, out = 124, (out or "") + f"\n(stopped after {timeout:.0f} s)"
    seconds = time.perf_counter() - start
    with log.open("a") as f:
        f.write(f"$ {shlex.join(cmd)}\n{out}\n[exit {code}, {seconds:.1f} s]\n\n")
    return code, out, seconds


def pip_error(out: str) -> str:
    """The line of pip's output that says why it failed."""
    lines = [ln.strip() for ln in out.splitlines() if ln.strip()]
    why = [ln.split("ERROR: ", 1)[-1] for ln in lines if "require a different python" in ln]
    for key in ("No matching distribution found", "requires a different Python"):
        for ln in lines:
            if key in ln:
                return (ln + (f" ({why[0]})" if why else ""))[:500]
    errors = [ln for ln in lines if ln.startswith("ERROR:") and not ln.startswith("ERROR: Ignored")]
    return (errors or lines or ["(no output)"])[0][:400]


def test_counts(out: str) -> dict[str, int]:
    """pytest's closing summary (``3 failed, 400 passed, 9 skipped in 61.2s``) as counts."""
    summary = [ln for ln in out.splitlines() if re.search(r"\d+ (passed|failed|error)", ln)]
    if not summary:
        return {}
    found = re.findall(
        r"(\d+) (passed|failed|skipped|deselected|errors?|xfailed|xpassed)", summary[-1]
    )
    return {("error" if kind.startswith("error") else kind): int(n) for n, kind in found}


def test_failures(out: str) -> list[str]:
    """The ``FAILED``/``ERROR`` lines of pytest's short summary (``-ra``)."""
    return [ln.strip()[:400] for ln in out.splitlines() if re.match(r"(FAILED|ERROR) ", ln)]


def du_mb(path: Path) -> float:
    out = subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True).stdout
    return int(out.split()[0]) / 1e6 if out else float("nan")


def first_chapter(repo: Path) -> Path:
    return sorted((repo / "chapters").glob("*.ipynb"))[0].relative_to(repo)


def measure(name: str, repo: Path, work: Path, env: dict[str, str], keep: bool) -> dict:
    """One row: venv, lock, editable install, [torch], unit tests, [chapter]."""
    row_start = time.perf_counter()
    version, torch = ROWS[name]
    python = PYENV / version / "bin" / "python3"
    row: dict = {
        "row": name,
        "python": version,
        "date": f"{datetime.datetime.now():%Y-%m-%d %H:%M}",
    }
    row.update(install=None, failures=[], tests=None, chapter=None)
    if not python.exists():
        row["install"] = "no such Python"
        row["failures"].append(f"{python} not found")
        return row
    slot = work / re.sub(r"[^\w.]+", "-", name)
    shutil.rmtree(slot, ignore_errors=True)
    slot.mkdir(parents=True)
    log, venv = slot / "log.txt", slot / "venv"
    bin_py = str(venv / "bin" / "python")
    env = {**env, "METALIB_CACHE": str(slot / "cache")}  # no dataset rendered by another torch
    print(f"[{name}] {python} -> {venv} (log {log})", flush=True)

    steps = [[str(python), "-m", "venv", str(venv)], [bin_py, *PIP, "-r", "requirements.lock"]]
    steps.append([bin_py, *PIP, "--no-deps", "-e", "."])
    if torch:
        steps.append([bin_py, *PIP, f"torch=={torch}"])
    seconds = 0.0
    for i, cmd in enumerate(steps):
        code, out, took = sh(cmd, repo, env, log, timeout=3600)
        seconds += took
        if code:
            row["install"] = "fails"
            what = shlex.join(cmd[len(PIP) + 1 :]) if i else "venv"
            row["failures"].append(f"`pip install {what}` ({version}): {pip_error(out)}")
            if "requirements.lock" in cmd:  # the editable install's own verdict on this Python
                code2, out2, _ = sh(steps[i + 1], repo, env, log, timeout=600)
                verdict = pip_error(out2) if code2 else "installs (without its dependencies)"
                row["failures"].append(f"`pip install --no-deps -e .` ({version}): {verdict}")
            break
    row["install_s"] = round(seconds)
    row["venv_mb"] = round(du_mb(venv)) if venv.exists() else None
    if row["install"] is None:
        row["install"] = "yes"
        probe = "import sys, torch; print(sys.version.split()[0], torch.__version__)"
        _, out, _ = sh([bin_py, "-c", probe], repo, env, log, timeout=300)
        row["python"], row["torch"] = (out.split() + ["?", "?"])[:2] if out.strip() else ("?", "?")
        print(f"[{name}] installed in {seconds:.0f} s, {row['venv_mb']} MB; unit tests", flush=True)
        code, out, took = sh([bin_py, *TESTS], repo, env, log, timeout=3600)
        counts = test_counts(out)
        row["tests"] = {"exit": code, "seconds": round(took), **counts}
        if code:
            fails = test_failures(out) or [pip_error(out)]
            row["failures"] += [f"unit tests ({version}, torch {row['torch']}): {f}" for f in fails]
        if torch:
            chapter = first_chapter(repo)
            print(f"[{name}] chapter {chapter}", flush=True)
            runner = [bin_py, "benchmarks/notebook_run.py", str(chapter), "--timeout", "600"]
            code, out, took = sh(runner, repo, env, log, timeout=1800)
            try:
                result = json.loads(out.strip().splitlines()[-1])
            except (IndexError, ValueError):
                result = {"problem": f"runner exit {code}: {pip_error(out)}", "errors": []}
            passed = code == 0 and not result.get("problem") and not result.get("errors")
            row["chapter"] = {"notebook": str(chapter), "passed": passed, "seconds": round(took)}
            for e in result.get("errors", []):
                msg = f"{e['ename']}: {e['evalue'][:300]}"
                row["failures"].append(f"{chapter} code cell {e['cell']} (torch {torch}): {msg}")
            if result.get("problem"):
                row["failures"].append(f"{chapter} (torch {torch}): {result['problem']}")
    if not keep:
        shutil.rmtree(venv, ignore_errors=True)
        shutil.rmtree(slot / "cache", ignore_errors=True)
    row["seconds"] = round(time.perf_counter() - row_start)
    print(f"[{name}] {row['install']}; tests {row['tests']}; chapter {row['chapter']}", flush=True)
    return row


def tests_cell(row: dict) -> str:
    t = row.get("tests")
    if not t:
        return "not run"
    parts = [f"{t[k]} {k}" for k in ("passed", "failed", "error", "skipped") if t.get(k)]
    verdict = (
        "pass" if t["exit"] == 0 else ("**fail**" if t["exit"] == 1 else f"**exit {t['exit']}**")
    )
    return f"{verdict}: {', '.join(parts) or 'no summary'} ({t['seconds']} s)"


def chapter_cell(row: dict) -> str:
    c = row.get("chapter")
    if not c:
        return "-"
    return (
        f"{'pass' if c['passed'] else '**fail**'}: `{Path(c['notebook']).name}` ({c['seconds']} s)"
    )


def render(rows: dict[str, dict], meta: dict) -> str:
    order = [r for r in ROWS if r in rows]
    lines = [
        "# Platforms: Pythons and torch releases the workbook installs and tests on",
        "",
        "A one-off check (not run in CI) by `benchmarks/platforms.py`: a clone of HEAD, a fresh "
        "venv per row from pyenv's Python, `pip install -r requirements.lock` then "
        "`pip install --no-deps -e .` (as `make setup`), then "
        '`python -m pytest tests -m "not slow" -p no:cacheprovider -q -x` with '
        "`METALIB_THREADS=2` (`-x`: a failing row stops at its first failure). The torch row "
        f"installs `torch=={TORCH}` over the lock and also executes the first chapter "
        "(`benchmarks/notebook_run.py`, nbclient). Seconds are wall-clock on a shared machine.",
        "",
        f"- Measured: {meta['date']}, commit `{meta['commit']}`; each row (start, minutes): "
        + ", ".join(f"{n} {rows[n]['date']} ({rows[n]['seconds'] / 60:.1f})" for n in order),
        f"- Machine: `{meta['uname']}`, {meta['cores']} cores, {meta['cpu']}",
        f"- Command: `{meta['command']}` ({meta['minutes']:.0f} min in all)",
        "",
        "| row | Python | torch | lock installs? | install | venv size | unit tests | chapter |",
        "| --- | --- | --- | --- | ---: | ---: | --- | --- |",
    ]
    for name in order:
        r = rows[name]
        size = f"{r['venv_mb'] / 1000:.2f} GB" if r.get("venv_mb") else "-"
        lines.append(
            f"| {name} | {r['python']} | {r.get('torch') or '-'} | {r['install']} | "
            f"{r.get('install_s', '-')} s | {size} | {tests_cell(r)} | {chapter_cell(r)} |"
        )
    failures = [(n, f) for n in order for f in rows[n].get("failures", [])]
    lines += ["", "## Failures", ""]
    lines += [f"- **{n}**: {f}" for n, f in failures] or ["None."]
    lines += ["", f"<!-- {DATA_TAG}: {json.dumps(rows)} -->", ""]
    return "\n".join(lines)


def previous_rows(path: Path) -> dict[str, dict]:
    if not path.exists():
        return {}
    match = re.search(rf"<!-- {DATA_TAG}: (.*) -->", path.read_text())
    try:
        return json.loads(match.group(1)) if match else {}
    except ValueError:
        return {}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", nargs="+", choices=list(ROWS), default=list(ROWS))
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder and venvs")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    start = time.perf_counter()

    work = Path(tempfile.mkdtemp(prefix="platforms-"))
    repo = work / "repo"
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(repo)], check=True)
    subprocess.run(["git", "-C", str(repo), "checkout", "--quiet", commit], check=True)
    (work / "shared").symlink_to(SHARED)
    print(f"scratch {work}, commit {commit[:10]}", flush=True)

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(METALIB_THREADS="2", METALIB_PROGRESS="0", PIP_CACHE_DIR=str(work / "pip-cache"))
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        platform.processor() or "?",
    )
    meta = {
        "date": f"{datetime.datetime.now():%Y-%m-%d %H:%M}",
        "commit": commit[:10],
        "uname": " ".join(platform.uname()[i] for i in (0, 2, 4)),
        "cores": os.cpu_count(),
        "cpu": cpu,
        "command": shlex.join(["python3", "benchmarks/platforms.py", *sys.argv[1:]]),
    }
    rows = previous_rows(args.out)
    for name in args.python:
        rows[name] = measure(name, repo, work, env, args.keep)
        meta["minutes"] = (time.perf_counter() - start) / 60
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(render(rows, meta))
    shutil.rmtree(work / "pip-cache", ignore_errors=True)
    if not args.keep:
        shutil.rmtree(repo, ignore_errors=True)
    print(f"wrote {args.out}; logs in {work} ({(time.perf_counter() - start) / 60:.0f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
