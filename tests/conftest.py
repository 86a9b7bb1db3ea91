"""Shared fixtures: pinned threads, seeds, a tiny synthetic dataset, the Omniglot zips."""

from __future__ import annotations

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
