"""Every notebook and the unit tests on a GPU, at either budget, as one command: ``make test-gpu``.

    python benchmarks/gpu.py                  # chapters, solutions, unit tests (default budget)
    python benchmarks/gpu.py --budget long    # every chapter at the long budget, compare.py too
    python benchmarks/gpu.py --device cpu     # the same checks on the CPU (to try the script)

Each notebook runs in a process of its own, ``--jobs`` at a time, with ``METALIB_DEVICE`` set,
every cell even after an error (``benchmarks/notebook_run.py``: the kernel execution that nbval
and the book build do, and it also reads back the glued numbers). The unit tests run with
``METALIB_DEVICE`` set too, so ``tests/test_devices.py`` drives metalib's helpers on the real
device as well as on the meta device. The long budget reports, per chapter, its time against the
10 minutes a chapter may take on one GPU, and its headline numbers (:data:`HEADLINES`) against the
default budget's and the papers'; ``benchmarks/compare.py --budget long`` is timed against its 15.

Writes a Markdown table (notebook, result, seconds, budget, device, torch) to ``--out``
(``benchmarks/results/gpu.md``), replacing the section of the device and budget it ran, and keeps
every notebook's latest result in a JSON record beside it (``gpu.json``), which the long run reads
the default budget's numbers from.

On a machine without this project's ``.venv`` (a GPU box with its own torch and no registry),
carry the lock's other packages as wheels (``../shared/tools/gpu_check/fetch_wheels.sh``, copied
into the ignored ``.gpu/``, downloads them), then on the GPU machine::

    pip install -q --no-index --no-deps --target /tmp/site .gpu/whl/*.whl
    PYTHONPATH=/tmp/site:$PWD python3 benchmarks/gpu.py --out $OUT/gpu.md --limit 480

``--limit`` stops a notebook (and its kernel) after that many seconds, and the report is
rewritten after every notebook, so a run cut short by its host keeps what finished.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from notebook_run import ROOT, Result, number, run_in_process  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "gpu.md"
CHAPTER_LIMIT_S = 600  # DESIGN.md: at the long budget each chapter finishes on one GPU in 10 min
COMPARE_LIMIT_S = 900  # and benchmarks/compare.py --budget long in 15

# The numbers that say how close a chapter comes to its paper: (glued name, what it is, paper).
HEADLINES: dict[str, list[tuple[str, str, str]]] = {
    "01_finetuning": [
        ("pre_1", "pre-trained, fine-tuned: 5-way 1-shot", "—"),
        ("pre_20", "pre-trained, fine-tuned: 5-way 20-shot", "—"),
    ],
    "02_maml": [
        ("maml_mse_1", "sinusoid MSE, 1 step", "0.67"),
        ("maml_mse_10", "sinusoid MSE, 10 steps", "0.35"),
        ("maml_acc_1", "Glyphs 5-way 1-shot, 1 step", "98.7% (Omniglot)"),
    ],
    "03_blackbox": [
        ("attention_acc", "attention learner, 5-way 1-shot", "—"),
        ("lstm_acc", "LSTM learner, 5-way 1-shot", "—"),
        ("wp_acc", "weight predictor, 5-way 1-shot", "—"),
    ],
    "04_protonet": [
        ("euclid_5w1s", "ProtoNet 5-way 1-shot", "98.8% (Omniglot)"),
        ("euclid_20w1s", "ProtoNet 20-way 1-shot", "96.0% (Omniglot)"),
    ],
    "05_learned_optimizers": [
        ("q_LSTM_mean", "quadratics, LSTM mean loss 1-100", "—"),
        ("q_Adam_mean", "quadratics, Adam mean loss 1-100", "—"),
        ("m_LSTM_mean", "MLPs, LSTM mean loss 1-100", "—"),
        ("m_Adam_mean", "MLPs, Adam mean loss 1-100", "—"),
    ],
    "06_test_time_adaptation": [
        ("mean5_source", "source error, severity 5 (%)", "40.8 (CIFAR-10-C)"),
        ("mean5_bn", "BN adapt error, severity 5 (%)", "17.3 (CIFAR-10-C)"),
        ("mean5_tent", "TENT error, severity 5 (%)", "14.3 (CIFAR-10-C)"),
    ],
    "07_comparison": [
        ("proto1", "ProtoNet 5-way 1-shot", "98.8% (Omniglot)"),
        ("maml1", "MAML 5-way 1-shot", "98.7% (Omniglot)"),
        ("maml5", "MAML 5-way 5-shot", "99.9% (Omniglot)"),
    ],
    "08_meta_knowledge": [
        ("rw_gain_top", "reweighting gain at the top noise rate (points)", "—"),
        ("msgd_glyph_gain", "Meta-SGD over MAML, Glyphs 5-way 1-shot (points)", "—"),
        ("hn_mse_k5", "hypernetwork MSE, K = 5", "—"),
    ],
}


def notebooks(budget: str, names: list[str]) -> list[Path]:
    """The notebooks a run covers: chapters and solutions (default), chapters (long)."""
    folders = ("chapters", "solutions") if budget == "default" else ("chapters",)
    paths = [p for f in folders for p in sorted((ROOT / f).glob("*.ipynb"))]
    if names:
        paths = [p for p in paths if any(n in str(p.relative_to(ROOT)) for n in names)]
        if not paths:
            raise SystemExit(f"no notebook matches {names}")
    return paths


def describe(device: str) -> tuple[str, str]:
    """(the device in words, torch's version), from a fresh process with the device forced."""
    code = "import metalib.runtime as r; print(r.describe())"
    env = {**os.environ, "METALIB_DEVICE": device}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if proc.returncode:
        raise SystemExit(f"METALIB_DEVICE={device} does not work here:\n{proc.stderr.strip()}")
    words = proc.stdout.strip().splitlines()[-1]
    return words, words.split("torch ")[1].split(",")[0]


def unit_tests(env: dict[str, str]) -> tuple[str, float, bool]:
    """``pytest tests -m "not slow"`` with the device forced: (summary, seconds, passed)."""
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "tests", "-m", "not slow", "-q", "-p", "no:cacheprovider"],
        cwd=ROOT, env=env, capture_output=True, text=True,
    )  # fmt: skip
    lines = [x for x in proc.stdout.strip().splitlines() if x.strip()]
    summary = re.sub(r"=+", "", lines[-1]).strip() if lines else "no output"
    if proc.returncode:
        failed = [x for x in lines if x.startswith("FAILED")][:5]
        summary += "; " + "; ".join(failed)
    return summary, time.perf_counter() - start, proc.returncode == 0


def verdict(result: Result) -> str:
    if result.passed:
        return "pass"
    parts = [f"cell {e['cell']}: {e['ename']}: {e['evalue'][:160]}" for e in result.errors[:3]]
    if result.problem:
        parts.append(result.problem)
    return "FAIL: " + "; ".join(parts).replace("|", "/")


def headline(result: Result | None, name: str) -> str:
    if result is None or name not in result.glued:
        return "—"
    text = result.glued[name].strip("'\"")
    value = number(text)
    return text if value is None or "%" in text else f"{value:.4g}"


def replace_section(path: Path, title: str, body: str) -> None:
    """Write ``body`` under ``## title`` in ``path``, replacing that section if it is there."""
    text = path.read_text() if path.exists() else "# Notebooks on a GPU\n"
    sections = re.split(r"(?m)^(?=## )", text)
    kept = [s for s in sections if not s.startswith(f"## {title}\n")]
    path.write_text("".join(kept).rstrip("\n") + f"\n\n## {title}\n\n{body.strip()}\n")


def render(args, where: str, torch_version: str, jobs: int, state: dict) -> str:
    """The Markdown section of this run, from what has finished so far."""
    results, runs = state["results"], state["runs"]
    command = f"python benchmarks/gpu.py --device {args.device} --budget {args.budget}"
    done = "" if state["finished"] else " (still running: the rows so far)"
    lines = [
        f"Run {state['date']} on {where}, Python {platform.python_version()}, {jobs} "
        f"notebook(s) at once, {state['minutes']:.0f} min in all{done}: `{command}`.",
        "",
        "| notebook | result | seconds | budget | device | torch |",
        "| --- | --- | ---: | --- | --- | --- |",
    ]
    for path, r in results.items():
        lines.append(
            f"| {path.relative_to(ROOT)} | {verdict(r)} | {r.seconds:.0f} | {args.budget} | "
            f"{args.device} | {torch_version} |"
        )
    if state["unit"] is not None:
        summary, seconds, _ = state["unit"]
        lines.append(
            f'| unit tests (`-m "not slow"`) | {summary} | {seconds:.0f} | — | {args.device} | '
            f"{torch_version} |"
        )
    if args.budget == "long" and results:
        default = {k: Result(**v) for k, v in runs.get("default", {}).items()}
        lines += [
            "",
            f"Each chapter's limit on one GPU is {CHAPTER_LIMIT_S // 60} minutes.",
            "",
            "| chapter | seconds, long | seconds, default | headline | long | default | paper |",
            "| --- | ---: | ---: | --- | ---: | ---: | --- |",
        ]
        for path, r in results.items():
            d = default.get(str(path.relative_to(ROOT)))
            over = " (over)" if r.seconds > CHAPTER_LIMIT_S else ""
            rows = HEADLINES.get(path.stem) or [(None, "—", "—")]
            for i, (name, label, paper) in enumerate(rows):
                first = i == 0
                lines.append(
                    f"| {path.stem if first else ''} | "
                    f"{f'{r.seconds:.0f}{over}' if first else ''} | "
                    f"{(f'{d.seconds:.0f}' if d else '—') if first else ''} | {label} | "
                    f"{headline(r, name) if name else '—'} | "
                    f"{headline(d, name) if name else '—'} | {paper} |"
                )
    if state["compare"] is not None:
        seconds, rc = state["compare"]
        over = " — over" if seconds > COMPARE_LIMIT_S else ""
        failed = "" if rc == 0 else f", and it FAILED (exit {rc})"
        lines += [
            "",
            f"`benchmarks/compare.py --budget long --no-cache`: {seconds:.0f} s (limit "
            f"{COMPARE_LIMIT_S // 60} minutes){over}{failed}; its table is in "
            f"`compare_long/` beside this file.",
        ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="only notebooks whose path contains one of these")
    parser.add_argument("--device", default="cuda", help="METALIB_DEVICE for every run")
    parser.add_argument("--budget", choices=("default", "long"), default="default")
    parser.add_argument("--jobs", type=int, default=0, help="notebooks at once (0: all)")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per cell")
    parser.add_argument("--limit", type=float, default=None, help="seconds per notebook")
    parser.add_argument("--no-unit", action="store_true", help="skip the unit tests")
    parser.add_argument("--no-compare", action="store_true", help="long: skip compare.py")
    parser.add_argument("--compare-only", action="store_true", help="long: only compare.py")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()

    where, torch_version = describe(args.device)
    paths = [] if args.compare_only else notebooks(args.budget, args.names)
    jobs = args.jobs or max(len(paths), 1)
    env = {
        **os.environ,
        "METALIB_DEVICE": args.device,
        "METALIB_BUDGET": args.budget,
        "METALIB_PROGRESS": "0",
        "METALIB_NBVAL_FRESH": "1",
        "METALIB_THREADS": os.environ.get("METALIB_THREADS", "1" if jobs > 1 else "2"),
        "PYTHONUNBUFFERED": "1",
    }
    print(f"{len(paths)} notebooks on {where}, budget {args.budget}, {jobs} at once", flush=True)
    record = args.out.with_suffix(".json")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "results": {},
        "unit": None,
        "compare": None,
        "finished": False,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "minutes": 0.0,
        "runs": json.loads(record.read_text()) if record.exists() else {},
    }
    start = time.perf_counter()
    lock = threading.Lock()

    def save() -> None:  # after every notebook: a run stopped from outside keeps what finished
        with lock:
            state["minutes"] = (time.perf_counter() - start) / 60
            state["runs"].setdefault(args.budget, {}).update(
                {str(p.relative_to(ROOT)): asdict(r) for p, r in state["results"].items()}
            )
            record.write_text(json.dumps(state["runs"], indent=1) + "\n")
            title = f"{args.device}, {args.budget} budget"
            replace_section(args.out, title, render(args, where, torch_version, jobs, state))

    def run(path: Path) -> Result:
        result = run_in_process(path, env, args.timeout, args.limit)
        print(f"{path.relative_to(ROOT)}: {verdict(result)[:100]} ({result.seconds:.0f} s)")
        state["results"][path] = result
        save()
        return result

    with ThreadPoolExecutor(max_workers=jobs + 1) as pool:
        # the unit tests run beside the notebooks (a GPU box has the cores)
        unit = None
        if args.budget == "default" and not args.no_unit:
            unit = pool.submit(unit_tests, env)
        list(pool.map(run, paths))
        state["unit"] = unit.result() if unit else None
    state["results"] = {p: state["results"][p] for p in paths}  # in the notebooks' order
    if args.budget == "long" and (args.compare_only or not args.no_compare):
        t0 = time.perf_counter()
        out_dir = args.out.parent / "compare_long"
        proc = subprocess.run(
            [sys.executable, "benchmarks/compare.py", "--budget", "long", "--no-cache"]
            + ["--out", str(out_dir)],
            cwd=ROOT, env=env, check=False,
        )  # fmt: skip
        state["compare"] = (time.perf_counter() - t0, proc.returncode)
    state["finished"] = True
    save()
    print(f"wrote {args.out}")
    ok = all(r.passed for r in state["results"].values())
    ok = ok and (state["unit"] is None or state["unit"][2])
    ok = ok and (state["compare"] is None or state["compare"][1] == 0)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
