"""Shared fixtures: pinned threads, seeds, a tiny synthetic dataset, the Omniglot zips."""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
from pathlib import Path

import pytest
import torch

from metalib.data.base import ImageClasses
from metalib.runtime import seed_everything

ROOT = Path(__file__).resolve().parents[1]
OMNIGLOT_DIR = ROOT.parent / "shared" / "data" / "omniglot"


@pytest.fixture(autouse=True)
def _pinned_threads_and_seed():
    """Every test starts from the same global seed with one intra-op thread."""
    torch.set_num_threads(1)
    seed_everything(1234)
    yield


@pytest.fixture
def generator() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def make_tiny_classes(n_classes: int = 12, per_class: int = 6, size: int = 8) -> ImageClasses:
    """A synthetic split whose every image encodes (class, sample) in two pixels."""
    images = torch.zeros(n_classes, per_class, size, size, dtype=torch.uint8)
    for c in range(n_classes):
        for m in range(per_class):
            images[c, m, 0, 0] = c  # class id
            images[c, m, 0, 1] = m  # sample id
            images[c, m, 1:, :] = (c * 17 + m * 5) % 251
    return ImageClasses(
        name="tiny/train",
        images=images,
        class_names=tuple(f"class{c}" for c in range(n_classes)),
        groups=tuple(f"script{c % 3}" for c in range(n_classes)),
    )


def linear_model(w: float, b: float):
    """A float64 ``MLP`` with no hidden layer: y = w x + b (MAML and Meta-SGD by hand)."""
    from metalib.nets import MLP

    net = MLP(in_features=1, out_features=1, hidden=()).double()
    with torch.no_grad():
        net.head.weight.fill_(w)
        net.head.bias.fill_(b)
    return net


def one_point_episode():
    """One regression task in float64: support (x=2, y=1), query (x=-1, y=0.5)."""
    from metalib.tasks import Episode

    t = lambda v: torch.tensor([[[v]]], dtype=torch.float64)  # noqa: E731  (T=1, n=1, 1)
    return Episode(t(2.0), t(1.0), t(-1.0), t(0.5))


def count_training(monkeypatch: pytest.MonkeyPatch, recipe) -> list[int]:
    """Wrap a learner module's ``train`` so that each call appends to the list returned."""
    calls, train = [], recipe.train

    def counted(*args):
        calls.append(1)
        return train(*args)

    monkeypatch.setattr(recipe, "train", counted)
    return calls


def tiny_learners() -> dict[str, dict]:
    """``compare``'s overrides that make every learner of the registry train in a second or so
    (the shared backbone: ``"backbone"``), on 16 x 16 images with 16 per class."""
    from metalib import maml
    from metalib.finetune import FinetuneConfig, PretrainConfig

    tiny_maml = {"steps": 1, "hidden": 8, "tasks": 2}
    return {
        "backbone": {"hidden": 8, "pretrain": PretrainConfig(steps=2, batch_size=32, lr=2e-3)},
        "fine-tuning (last layer)": {"tune": FinetuneConfig(steps=2, lr=1e-2, body_lr=0.0)},
        "MAML": tiny_maml,
        "first-order MAML": tiny_maml,
        "Meta-SGD": {"base": maml.Config(**tiny_maml)},
        "Reptile": {"steps": 1, "hidden": 8, "tasks": 2, "test_steps": 2},
        "LSTM learner": {"steps": 1, "feature_dim": 8},
        "attention learner": {"steps": 1, "feature_dim": 8},
        "weight predictor": {"steps": 1, "feature_dim": 8},
        "ProtoNet": {"steps": 1, "hidden": 8, "train_way": 5},
    }


@pytest.fixture
def tiny_classes() -> ImageClasses:
    """12 classes x 6 images of 8 x 8; pixel (0, 0) holds the class id, pixel (0, 1) the sample."""
    return make_tiny_classes()


@pytest.fixture
def omniglot_dir() -> Path:
    """The folder with the two 'background small' Omniglot zips; skips the test where absent."""
    if not any(OMNIGLOT_DIR.glob("images_background_small*.zip")):
        pytest.skip(f"Omniglot zips not found in {OMNIGLOT_DIR}")
    return OMNIGLOT_DIR


def _meta_reads_as_zeros(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let meta tensors be read back to the host as zeros, as a GPU tensor is read back.

    The meta device holds shapes and no values. It already refuses what a GPU refuses — an
    operation mixing it with CPU tensors ("... is not on the expected device meta") and
    ``.numpy()`` ("can't convert meta device type tensor to numpy") — but it also refuses what a
    GPU allows: copying to the CPU, ``.item()``, ``.tolist()``, ``float()``, ``bool()``. Patched
    here, those return zeros of the right shape and type, so a helper runs on to the end and any
    place where it skips the copy to the CPU, or builds CPU tensors for a model elsewhere,
    raises as it would on a GPU.
    """

    def zeros(t: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        return torch.zeros(t.shape, dtype=dtype or t.dtype)

    def patch(name: str, wrap):
        original = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, wrap(original))

    def to_cpu(original):  # t.cpu()
        def method(self, *args, **kwargs):
            return zeros(self) if self.is_meta else original(self, *args, **kwargs)

        return method

    def to_device(original):  # t.to(...), reading back when the target is the CPU
        def method(self, *args, **kwargs):
            if self.is_meta:
                parse = {k: v for k, v in kwargs.items() if k != "copy"}
                dev, dtype, *_ = torch._C._nn._parse_to(*args, **parse)
                if dev is not None and dev.type == "cpu":
                    return zeros(self, dtype)
            return original(self, *args, **kwargs)

        return method

    def as_value(original):  # item(), tolist(), float(), int(), bool(), index(), format()
        def method(self, *args, **kwargs):
            if self.is_meta:
                return original(zeros(self), *args, **kwargs)
            return original(self, *args, **kwargs)

        return method

    patch("cpu", to_cpu)
    patch("to", to_device)
    for name in ("item", "tolist", "__float__", "__int__", "__bool__", "__index__", "__format__"):
        patch(name, as_value)


@pytest.fixture(params=["meta", "accelerator"])
def device_under_test(request, monkeypatch) -> torch.device:
    """A device other than the CPU, for tests that metalib's helpers follow their inputs' device.

    ``meta`` always (values read back as zeros, see :func:`_meta_reads_as_zeros`); and the real
    accelerator when ``METALIB_DEVICE`` names one (``make test-gpu`` sets ``METALIB_DEVICE=cuda``),
    where the same tests run on real values.
    """
    if request.param == "meta":
        _meta_reads_as_zeros(monkeypatch)
        # a boolean mask selects every element (the meta device cannot count them)
        with torch.fx.experimental._config.patch(meta_nonzero_assume_all_nonzero=True):
            yield torch.device("meta")
        return
    forced = os.environ.get("METALIB_DEVICE", "").strip()
    if not forced or torch.device(forced).type == "cpu":
        pytest.skip("no accelerator named by METALIB_DEVICE (make test-gpu sets it)")
    from metalib.runtime import device

    yield device()


# ------------------------------------------------------------------ exercises and their judges


@functools.cache
def exercise(name: str):
    """The built-in exercise ``name`` (its visible cases; hidden ones: :func:`hidden_cases`)."""
    from metalib.grading import registry

    return registry.builtin_exercises()[name]


@functools.cache
def solution(name: str) -> dict:
    """The namespace of ``solutions/<name>.ipynb`` after running its code cells (shared)."""
    return fresh_solution(name)


def fresh_solution(name: str) -> dict:
    """A new namespace of ``solutions/<name>.ipynb`` after running its code cells."""
    nb = json.loads((ROOT / "solutions" / f"{name}.ipynb").read_text())
    assert nb["metadata"]["workbook"]["exercise"] == name
    namespace: dict = {"__name__": f"solution_{name}"}
    # run as a notebook runs, whatever the caller's grad mode (a first call from inside an answer's
    # torch.no_grad() block would otherwise run the solution's experiments without autograd)
    with contextlib.redirect_stdout(io.StringIO()), torch.enable_grad():
        for i, cell in enumerate(nb["cells"]):
            if cell["cell_type"] == "code":
                exec(compile("".join(cell["source"]), f"{name} cell {i}", "exec"), namespace)
    return namespace


@functools.cache
def hidden_cases(name: str) -> dict:
    """``{question: [Case]}`` of ``hidden_tests/ex<name>.py``."""
    from metalib.grading import registry

    return registry.load_tests(ROOT / "hidden_tests")[1][name]


def all_cases(name: str, question) -> list:
    return [*question.visible, *hidden_cases(name)[question.name]]


def wrong_answer_fails(name: str, variant: str, qname: str, fn, says: str) -> None:
    """``fn`` fails a visible case with a message containing ``says`` (so it fails overall: the
    grader runs the visible cases too)."""
    from metalib.grading.feedback import evaluate_cases

    question = exercise(name).question(qname)
    references = exercise(name).references(qname)
    verdict = evaluate_cases(question, question.visible, fn, references)
    assert not verdict, f"{variant}: passed the visible checks"
    assert any(says in f for f in verdict.failures), f"{variant}: {verdict}"
    assert not any("could not be checked" in f for f in verdict.failures), str(verdict)


def right_answer_passes(name: str, qname: str, fn) -> None:
    """``fn``, another right answer than the solution's, passes every case."""
    from metalib.grading.feedback import evaluate_cases

    question = exercise(name).question(qname)
    references = exercise(name).references(qname)
    verdict = evaluate_cases(question, all_cases(name, question), fn, references)
    assert verdict, str(verdict)


def exercise_tests(name: str, wrong: dict, other: dict | list, other_ids: list | None = None):
    """The three tests of every ``tests/test_exercise_NN.py``, made from its tables.

    ``wrong``: ``{variant: (question, fn, words)}``: each known wrong answer fails a visible case
    with a message containing ``words``; every question has one. ``other``: other right answers,
    ``{id: (question, fn)}`` or ``[(question, fn)]`` with ``other_ids``: each passes every case.
    Assign the result to the module's three test names so that pytest collects them.
    """
    if isinstance(other, dict):
        other_ids, other = list(other), list(other.values())
    rows = [(k, *v) for k, v in wrong.items()]

    @pytest.mark.parametrize(("variant", "qname", "fn", "says"), rows, ids=list(wrong))
    def test_a_wrong_answer_fails_with_a_helpful_message(variant, qname, fn, says):
        wrong_answer_fails(name, variant, qname, fn, says)

    def test_every_question_has_a_wrong_answer():
        assert {q for q, _, _ in wrong.values()} == {q.name for q in exercise(name).questions}

    @pytest.mark.parametrize(("qname", "fn"), other, ids=other_ids)
    def test_other_right_answers_pass_every_case(qname, fn):
        right_answer_passes(name, qname, fn)

    return (
        test_a_wrong_answer_fails_with_a_helpful_message,
        test_every_question_has_a_wrong_answer,
        test_other_right_answers_pass_every_case,
    )
