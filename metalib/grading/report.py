"""The class report: what a graded folder says about the class, for the next lecture.

``python -m metalib.grading.report OUT`` (and the grader itself, after grading into ``OUT``)
reads every ``OUT/*/results.json`` and writes ``OUT/report.md`` with one figure per exercise
(``OUT/report_<exercise>.png``):

* per question, the distribution of scores (figure) and the share of full marks and zeros;
* the most frequent known mistakes, e.g. "q2: it is first order, ...: 14 of 60", counted once per
  submission (the grader records which known mistake each failed check matched);
* the questions most often left unanswered (still raising ``NotImplementedError``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

SHOWN = 10  # mistakes listed per exercise


def read(out: Path) -> dict[str, list[dict[str, Any]]]:
    """``{exercise: [per-question records of each submission]}`` from ``out/*/results.json``."""
    found: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(Path(out).glob("*/results.json")):
        extra = json.loads(path.read_text()).get("extra_data") or {}
        if extra.get("exercise"):
            found.setdefault(extra["exercise"], []).append(extra["questions"])
    return found


def _figure(name: str, submissions: list[dict[str, Any]], titles: Mapping[str, str], path: Path):
    from matplotlib.figure import Figure  # no pyplot: no backend, no global state

    questions = list(submissions[0])
    fig = Figure(figsize=(2.2 * len(questions) + 0.6, 2.6), layout="constrained")
    axes = fig.subplots(1, len(questions), sharey=True, squeeze=False)[0]
    for ax, q in zip(axes, questions, strict=True):
        top = submissions[0][q]["max_score"]
        scores = [s[q]["score"] for s in submissions if q in s]
        ax.hist(scores, bins=[i * top / 5 for i in range(6)], color="#4c72b0", edgecolor="white")
        ax.set_title(f"{q}: {titles.get(q, '')}"[:28], fontsize=9)
        ax.set_xlabel(f"score (of {top:g})", fontsize=8)
        ax.set_xlim(0, top)
    axes[0].set_ylabel("submissions", fontsize=8)
    fig.suptitle(f"Exercise {name}: score per question", fontsize=10)
    fig.savefig(path, dpi=110)


def markdown(name: str, submissions: list[dict[str, Any]], titles: Mapping[str, str]) -> str:
    """The report's section on one exercise (the figure is ``report_<name>.png``)."""
    n = len(submissions)
    questions = list(dict.fromkeys(q for s in submissions for q in s))
    lines = [f"## Exercise {name}: {n} submission{'s' * (n != 1)}", ""]
    lines += [f"![score distribution per question](report_{name}.png)", ""]
    lines += [
        "| question | points | mean | full marks | zero | unanswered |",
        "|---|--:|--:|--:|--:|--:|",
    ]
    for q in questions:
        got = [s[q] for s in submissions if q in s]
        top = got[0]["max_score"]
        mean = sum(g["score"] for g in got) / len(got)
        full = sum(g["score"] >= top for g in got)
        zero = sum(g["score"] == 0 for g in got)
        blank = sum(g["unanswered"] for g in got)
        title = f"{q} ({titles[q]})" if titles.get(q) else q
        lines.append(f"| {title} | {top:g} | {mean:.2f} | {full} | {zero} | {blank} |")
    mistakes = Counter((q, m) for s in submissions for q, g in s.items() for m in g["mistakes"])
    lines += ["", "**Most frequent known mistakes** (submissions that made each one):", ""]
    if mistakes:
        for (q, m), count in mistakes.most_common(SHOWN):
            lines.append(f"- {q}: {m}: **{count} of {n}**")
    else:
        lines.append("- none matched a known mistake")
    blanks = Counter(q for s in submissions for q, g in s.items() if g["unanswered"])
    lines += ["", "**Most often left unanswered:**", ""]
    if blanks:
        lines += [f"- {q}: {count} of {n}" for q, count in blanks.most_common()]
    else:
        lines.append("- every question was attempted by everyone")
    return "\n".join(lines) + "\n"


def write(out: Path, exercises: Mapping[str, Any] | None = None) -> Path:
    """Write ``out/report.md`` and its figures from the graded folder ``out``; its path.

    ``exercises`` (``{name: Exercise}``) gives the questions' titles, when known.
    """
    out = Path(out)
    sections = ["# Class report", ""]
    graded = read(out)
    if not graded:
        sections.append("No graded submission of a known exercise in this folder.")
    for name, submissions in sorted(graded.items()):
        exercise = (exercises or {}).get(name)
        titles = {q.name: q.title for q in exercise.questions} if exercise else {}
        _figure(name, submissions, titles, out / f"report_{name}.png")
        sections.append(markdown(name, submissions, titles))
    path = out / "report.md"
    path.write_text("\n".join(sections))
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m metalib.grading.report",
        description="Write OUT/report.md, the class report, from a folder the grader wrote.",
    )
    p.add_argument("out", type=Path, help="the grader's --out folder")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    if not args.out.is_dir():
        print(f"error: {args.out} is not a folder the grader wrote", file=sys.stderr)
        return 2
    from metalib.grading import registry

    print(f"wrote {write(args.out, registry.builtin_exercises())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
