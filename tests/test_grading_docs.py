"""GRADING.md's worked example, "Add a question in 10 minutes", works as written."""

from __future__ import annotations

import re
import sys
import types

import torch
import torch.nn.functional as F

from conftest import ROOT
from metalib import protonet
from metalib.grading import builders
from metalib.grading.feedback import evaluate_cases
from metalib.grading.question import Exercise, Mistake, Question, case


def _example(monkeypatch) -> dict:
    """The example's code run as a module of metalib (the sandbox imports builders by name)."""
    text = (ROOT / "GRADING.md").read_text()
    section = text.split("## Add a question in 10 minutes", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    module = types.ModuleType("metalib.grading_doc_example")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    namespace = module.__dict__
    namespace.update(F=F, protonet=protonet, builders=builders)
    namespace.update(Question=Question, Mistake=Mistake, case=case)
    exec(compile(code, "GRADING.md", "exec"), namespace)
    return namespace


def test_the_worked_example_grades_as_the_page_says(monkeypatch):
    namespace = _example(monkeypatch)
    q5 = namespace["Q5"]
    Exercise("04_example", (q5,))
    right = evaluate_cases(
        q5,
        q5.visible,
        lambda f, y, n: torch.stack(
            [torch.stack([f[t][y[t] == c].sum(0) for c in range(n)]) for t in range(len(f))]
        ),
    )
    assert right, str(right)
    mean = evaluate_cases(q5, q5.visible, protonet.prototypes)
    text = (ROOT / "GRADING.md").read_text()
    shown = re.search(r"A wrong answer that matches a mistake reads\n`(.*?)`", text, re.S)
    assert shown is not None
    expected = " ".join(shown.group(1).split()).removesuffix("...")
    assert mean.failures[0].startswith(expected), (mean.failures[0], expected)
