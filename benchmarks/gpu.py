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

On a machine without this project's ``.venv`` (a GPU box with its own torch), put the lock's other
packages on ``PYTHONPATH`` and run it with that Python, e.g.
``PYTHONPATH=/tmp/site:$PWD python3 benchmarks/gpu.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
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
        ("pre1", "fine-tuned, 5-way 1-shot (%)", "—"),
        ("pre20", "fine-tuned, 5-way 20-shot (%)", "—"),
    ],
    "02_maml": [
        ("maml_mse_1", "sinusoid MSE, 1 step", "0.67"),
        ("maml_mse_10", "sinusoid MSE, 10 steps", "0.35"),
        ("maml_acc_1", "Glyphs 5-way 1-shot, 1 step", "98.7% (Omniglot)"),
    ],
    "03_blackbox": [
        ("acc_attention", "attention learner, 5-way 1-shot", "—"),
        ("acc_lstm", "LSTM learner, 5-way 1-shot", "—"),
    ],
    "04_protonet": [
        ("acc_5_1", "ProtoNet 5-way 1-shot", "98.8% (Omniglot)"),
        ("acc_20_1", "ProtoNet 20-way 1-shot", "96.0% (Omniglot)"),
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="only notebooks whose path contains one of these")
    parser.add_argument("--device", default="cuda", help="METALIB_DEVICE for every run")
    parser.add_argument("--budget", choices=("default", "long"), default="default")
    parser.add_argument("--jobs", type=int, default=0, help="notebooks at once (0: all)")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per cell")
    parser.add_argument("--no-unit", action="store_true", help="skip the unit tests")
    parser.add_argument("--no-compare", action="store_true", help="long: skip compare.py")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()

    where, torch_version = describe(args.device)
    paths = notebooks(args.budget, args.names)
    jobs = args.jobs or len(paths)
    env = {
        **os.environ,
        "METALIB_DEVICE": args.device,
        "METALIB_BUDGET": args.budget,
        "METALIB_PROGRESS": "0",
        "METALIB_NBVAL_FRESH": "1",
        "METALIB_THREADS": os.environ.get("METALIB_THREADS", "1" if jobs > 1 else "2"),
        "PYTHONUNBUFFERED": "1",
    }
    print(f"{len(paths)} notebooks on {where}, budget {args.budget}, {jobs} at once")

    def run(path: Path) -> Result:
        result = run_in_process(path, env, args.timeout)
        print(f"{path.relative_to(ROOT)}: {verdict(result)[:100]} ({result.seconds:.0f} s)")
        return result

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        results = dict(zip(paths, pool.map(run, paths), strict=True))
    unit = None if args.no_unit or args.budget == "long" else unit_tests(env)
    compare_s = None
    if args.budget == "long" and not args.no_compare:
        t0 = time.perf_counter()
        out_dir = args.out.parent / "compare_long"
        subprocess.run(
            [sys.executable, "benchmarks/compare.py", "--budget", "long", "--out", str(out_dir)],
            cwd=ROOT, env=env, check=False,
        )  # fmt: skip
        compare_s = time.perf_counter() - t0
    total = time.perf_counter() - start

    record = args.out.with_suffix(".json")
    runs = json.loads(record.read_text()) if record.exists() else {}
    runs.setdefault(args.budget, {}).update(
        {str(p.relative_to(ROOT)): asdict(r) for p, r in results.items()}
    )
    record.write_text(json.dumps(runs, indent=1) + "\n")

    command = f"python benchmarks/gpu.py --device {args.device} --budget {args.budget}"
    lines = [
        f"Run {time.strftime('%Y-%m-%d %H:%M')} on {where}, Python "
        f"{platform.python_version()}, {jobs} notebook(s) at once, {total / 60:.0f} min in all: "
        f"`{command}`.",
        "",
        "| notebook | result | seconds | budget | device | torch |",
        "| --- | --- | ---: | --- | --- | --- |",
    ]
    for path, r in results.items():
        lines.append(
            f"| {path.relative_to(ROOT)} | {verdict(r)} | {r.seconds:.0f} | {args.budget} | "
            f"{args.device} | {torch_version} |"
        )
    if unit is not None:
        summary, seconds, _ = unit
        lines.append(
            f'| unit tests (`-m "not slow"`) | {summary} | {seconds:.0f} | — | {args.device} | '
            f"{torch_version} |"
        )
    if args.budget == "long":
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
        if compare_s is not None:
            over = " — over" if compare_s > COMPARE_LIMIT_S else ""
            lines += [
                "",
                f"`benchmarks/compare.py --budget long`: {compare_s:.0f} s (limit "
                f"{COMPARE_LIMIT_S // 60} minutes){over}; its table is in "
                f"`{(args.out.parent / 'compare_long').relative_to(ROOT)}/`.",
            ]
    replace_section(args.out, f"{args.device}, {args.budget} budget", "\n".join(lines))
    print(f"wrote {args.out}")
    ok = all(r.passed for r in results.values()) and (unit is None or unit[2])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
