"""Tests of the notebook runner behind benchmarks/seeds.py and benchmarks/gpu.py (make test-gpu):
what it reads back from an executed notebook, its time limit, and the reports it writes."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import nbformat
import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu  # noqa: E402
import notebook_run  # noqa: E402
import seeds  # noqa: E402
from notebook_run import Result, number  # noqa: E402


def _notebook(path: Path, *cells: tuple[str, list[str]]) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3"}
    for source, tags in cells:
        cell = nbformat.v4.new_code_cell(source)
        cell.metadata["tags"] = tags
        nb.cells.append(cell)
    nbformat.write(nb, path)
    return path


def _kernels(tag: str) -> int:
    """Running kernels whose environment holds ``tag`` (this test's, not another test process's:
    an orphaned kernel keeps its environment, but not its parent)."""
    found = 0
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            args = (proc / "cmdline").read_bytes()
            env = (proc / "environ").read_bytes()
        except OSError:  # gone meanwhile, or not ours to read
            continue
        found += b"ipykernel_launcher" in args and tag.encode() in env
    return found


@pytest.mark.slow
def test_execute_reads_errors_and_glued_values(tmp_path):
    path = _notebook(
        tmp_path / "nb.ipynb",
        ("from myst_nb import glue\nglue('acc', '93.6% ± 1.2%', display=False)", []),
        ("glue('ratio', 2.5, display=False)", []),
        ("raise ValueError('shown on purpose')", ["raises-exception"]),
        ("assert 1 > 2, 'a claim that fails'", []),
        ("glue('after', 7, display=False)", []),
    )
    result = notebook_run.execute(path, timeout=60)
    assert result.problem is None and not result.passed
    assert result.errors == [{"cell": 3, "ename": "AssertionError", "evalue": "a claim that fails"}]
    assert {k: number(v) for k, v in result.glued.items()} == {
        "acc": 93.6,
        "ratio": 2.5,
        "after": 7.0,  # every cell runs after a failed one
    }


@pytest.mark.slow
def test_a_notebook_past_its_limit_is_stopped_with_its_kernel(tmp_path):
    path = _notebook(tmp_path / "slow.ipynb", ("import time\ntime.sleep(60)", []))
    tag = f"METALIB_TEST_KERNEL={tmp_path.name}"
    env = {**os.environ, "METALIB_TEST_KERNEL": tmp_path.name}
    result = notebook_run.run_in_process(path, env, timeout=120, limit=8)
    assert result.problem == "stopped at the limit of 8 s" and 8 <= result.seconds < 30
    assert _kernels(tag) == 0


@pytest.mark.parametrize(
    "text, value",
    [("'93.6% ± 1.2%'", 93.6), ("1,234", 1234.0), ("-0.5", -0.5), ("3e-05", 3e-05)]
    + [("'n/a'", None)],
)
def test_number_reads_the_first_number_of_a_glued_value(text, value):
    assert number(text) == value


def test_gpu_report_sections_replace_only_their_own(tmp_path):
    out = tmp_path / "gpu.md"
    gpu.replace_section(out, "cuda, default budget", "first")
    gpu.replace_section(out, "cuda, long budget", "long")
    gpu.replace_section(out, "cuda, default budget", "second")
    text = out.read_text()
    assert text.count("## cuda, default budget") == 1 and "second" in text and "first" not in text
    assert "## cuda, long budget\n\nlong" in text


def test_gpu_verdict_and_headlines():
    ok = Result("a.ipynb", 3.0, glued={"acc_5_1": "'97.1% ± 0.4%'", "mse": "0.41234"})
    assert gpu.verdict(ok) == "pass"
    assert gpu.headline(ok, "acc_5_1") == "97.1% ± 0.4%" and gpu.headline(ok, "mse") == "0.4123"
    assert gpu.headline(ok, "missing") == "—" and gpu.headline(None, "mse") == "—"
    bad = Result("a.ipynb", 3.0, errors=[{"cell": 4, "ename": "AssertionError", "evalue": "a|b"}])
    assert gpu.verdict(bad) == "FAIL: cell 4: AssertionError: a/b"


def test_seeds_report_lists_failures_and_ranges():
    runs = {
        ("chapters/05_x.ipynb", 0): Result("05", 10.0, glued={"gain": "3.0", "note": "'same'"}),
        ("chapters/05_x.ipynb", 1): Result(
            "05", 12.0, errors=[{"cell": 7, "ename": "AssertionError", "evalue": "spikes"}],
            glued={"gain": "0.5", "note": "'same'"},
        ),
    }  # fmt: skip
    text = seeds.report(runs, [0, 1], "# header\n")
    assert "| 1 | 7 | AssertionError: spikes |" in text
    assert "| gain | 3.0 | 0.5 | 0.5 .. 3 |" in text


def test_seeds_update_replaces_only_the_chapters_it_ran():
    old = "# Chapters across seeds\n\nMeasured first.\n\n## 01_a\n\nold a\n\n## 02_b\n\nold b\n"
    new = "# Chapters across seeds\n\nMeasured again.\n\n## 02_b\n\nnew b\n\n## 03_c\n\nnew c\n"
    text = seeds.merge(old, new)
    assert text.index("Measured first.") < text.index("Updated again (these chapters: 02_b, 03_c).")
    assert "old a" in text and "new b" in text and "old b" not in text and "new c" in text
    assert text.index("## 01_a") < text.index("## 02_b") < text.index("## 03_c")


def test_malloc_benchmark_runs_a_workload_in_a_fresh_process_per_setting():
    import malloc

    if not sys.platform.startswith("linux"):
        pytest.skip("GLIBC_TUNABLES is glibc's (Linux)")
    plain, tuned = (malloc.run("forward-80", t) for t in (None, malloc.TUNED))
    assert 0 < plain < 10_000 and 0 < tuned < 10_000  # milliseconds per forward pass
    with pytest.raises(RuntimeError, match="no-such-workload failed"):
        malloc.run("no-such-workload", None)
    # the setting it measures is the one every make command runs with
    makefile = (ROOT / "Makefile").read_text()
    assert f"export GLIBC_TUNABLES ?= {malloc.TUNED}\n" in makefile


def test_maml_speed_measures_memory_under_the_makefiles_malloc_setting():
    """The Makefile's GLIBC_TUNABLES keeps freed memory for reuse; the benchmark's fresh
    process must not inherit it, or the measured iteration reuses its warm-up's pages: peak MB
    read 0-14 instead of 65 for meta-batch 16, and this test's 0-14 instead of about 65."""
    import subprocess

    import malloc  # its TUNED is the Makefile's (the test above checks it)

    if not sys.platform.startswith("linux"):
        pytest.skip("GLIBC_TUNABLES is glibc's, and the peak is read from /proc (Linux)")
    spec = "{'batch': 2, 'steps': 1, 'first_order': False, 'path': 'default'}"
    code = (
        "import sys; sys.path.insert(0, 'benchmarks'); import maml_speed; "
        f"print(maml_speed.memory_in_fresh_process({spec}))"
    )
    peaks = []
    for setting in (None, malloc.TUNED):
        env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
        env["METALIB_THREADS"] = "1"
        if setting:
            env["GLIBC_TUNABLES"] = setting
        done = subprocess.run(
            [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
            check=True, timeout=300,
        )  # fmt: skip
        peaks.append(float(done.stdout.split()[-1]))
    plain, under_make = peaks
    assert plain > 10 and under_make > 0.8 * plain, peaks  # MB


@pytest.mark.parametrize("first_order", [False, True])
def test_maml_speed_times_the_same_meta_gradient_on_every_path(first_order):
    """higher's loop (nn.BatchNorm2d) and metalib's default give the plain loop's meta-gradient
    in float64, so the benchmark's ratios compare like with like (``make bench-deps``)."""
    pytest.importorskip("higher", reason="pip install higher==0.2.1 --no-deps (make bench-deps)")
    import maml_speed
    import torch

    net, params, episode = maml_speed.build(3, torch.float64)
    grads = {}
    for path in ("plain", "higher", "default"):
        model, config = maml_speed.variant(net, path, 2, first_order)
        grads[path] = maml_speed.one_iteration(model, params, episode, config)
    assert set(grads["higher"]) == set(grads["plain"]) == set(params)
    for path in ("higher", "default"):
        assert maml_speed.relative(grads[path], grads["plain"]) < 1e-10, path
