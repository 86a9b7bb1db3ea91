"""Execute one notebook and read back what a benchmark needs: time, errors, the glued numbers.

Used by ``benchmarks/seeds.py`` (a chapter's numbers across seeds) and ``benchmarks/gpu.py`` (the
long budget). Every cell runs even after an error (``allow_errors``), so one failed claim
does not hide the others; the glued values are the ``myst_nb.glue`` records of the executed
notebook, the numbers its prose quotes.

As a script it executes one notebook and prints the result as JSON (what the parallel runners
start in a fresh process, with the environment they choose)::

    python benchmarks/notebook_run.py chapters/05_learned_optimizers.ipynb [--timeout 1800]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GLUE_MIME = "application/papermill.record/text/plain"
NUMBER = re.compile(r"[-+]?\d[\d,]*\.?\d*(?:[eE][-+]?\d+)?")


@dataclass
class Result:
    """One executed notebook: seconds, each failing cell's error, every glued value as text."""

    notebook: str
    seconds: float
    errors: list[dict] = field(default_factory=list)  # {"cell", "ename", "evalue"}
    glued: dict[str, str] = field(default_factory=dict)
    problem: str | None = None  # why it did not run to the end (timeout, dead kernel), if so

    @property
    def passed(self) -> bool:
        return self.problem is None and not self.errors


def number(text: str) -> float | None:
    """The first number in a glued value's text (``"93.6% ± 1.2%"`` -> 93.6), or None."""
    match = NUMBER.search(text.strip("'\""))
    if match is None:
        return None
    try:
        return float(match.group().replace(",", ""))
    except ValueError:
        return None


def execute(path: Path, timeout: int = 1800, kernel_file: Path | None = None) -> Result:
    """Execute ``path`` in this process's environment (kernel ``python3``), every cell.

    ``kernel_file``: where to write the kernel's process group as soon as it starts (the kernel
    runs in a session of its own; :func:`run_in_process` stops it through this file).
    """
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",
        allow_errors=True,
        resources={"metadata": {"path": str(Path(path).parent)}},
    )
    if kernel_file is not None:

        def note_kernel(**_: object) -> None:
            Path(kernel_file).write_text(str(client.km.provisioner.pgid))

        client.on_notebook_start = note_kernel
    start = time.perf_counter()
    problem = None
    try:
        client.execute()
    except (CellTimeoutError, DeadKernelError) as err:
        problem = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
    result = Result(str(path), time.perf_counter() - start, problem=problem)
    code_index = 0
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        # a cell that shows an error on purpose, as nbval and the book build allow it
        expected = "raises-exception" in cell.metadata.get("tags", []) or (
            "NBVAL_RAISES_EXCEPTION" in cell.source
        )
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error" and not expected:
                evalue = out.get("evalue", "").strip().splitlines()
                result.errors.append(
                    {"cell": code_index, "ename": out.get("ename", ""), "evalue": " ".join(evalue)}
                )
            record = out.get("metadata", {}).get("scrapbook", {})
            if record.get("name") and GLUE_MIME in out.get("data", {}):
                result.glued[record["name"]] = out["data"][GLUE_MIME]
        code_index += 1
    return result


def run_in_process(
    path: Path, env: dict[str, str], timeout: int = 1800, limit: float | None = None
) -> Result:
    """Execute ``path`` in a fresh Python process with environment ``env`` (thread-safe: the
    parallel runners call it from a thread pool).

    ``limit``: seconds the whole notebook may take; past it the process and its kernel are
    stopped and the result says so (its glued numbers are lost).
    """
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        kernel_file = Path(tmp) / "kernel"
        proc = subprocess.Popen(
            [sys.executable, __file__, str(path), "--timeout", str(timeout)]
            + ["--kernel-file", str(kernel_file)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            out, err = proc.communicate(timeout=limit)
        except subprocess.TimeoutExpired:
            if kernel_file.exists():  # the kernel first: it runs in a session of its own
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.killpg(int(kernel_file.read_text()), signal.SIGKILL)
            proc.kill()
            proc.communicate()
            seconds = time.perf_counter() - start
            return Result(str(path), seconds, problem=f"stopped at the limit of {limit:.0f} s")
    try:
        return Result(**json.loads(out.strip().splitlines()[-1]))
    except (IndexError, ValueError, TypeError):
        tail = " ".join(err.strip().splitlines()[-3:])[:300]
        return Result(str(path), 0.0, problem=f"the runner failed (exit {proc.returncode}): {tail}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebook", type=Path)
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per cell")
    parser.add_argument("--kernel-file", type=Path, help="write the kernel's process group here")
    args = parser.parse_args()
    print(json.dumps(asdict(execute(args.notebook, args.timeout, args.kernel_file))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
