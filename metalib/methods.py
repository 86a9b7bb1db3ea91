"""The learners of the book as one table: name, family, the module that owns the recipe, preset.

Each learner's module owns its recipe: a frozen ``Config`` dataclass with ``Config.preset(budget)``,
``build(config, data)``, ``train(config, data, generator, device) -> Run`` and
``predict(config, model, episode) -> (T, N*Q, N) logits``. The chapters call exactly these (through
:func:`metalib.trained.train_once`, which trains a recipe once for the whole book), and so does
:mod:`metalib.compare`, which scores every learner of :data:`REGISTRY` on one set of test episodes.

Fine-tuning, the two black-box learners and the weight predictor share one pre-trained ``Conv4``
(:data:`BACKBONE`, chapter 3's): the black-box learners and the weight predictor read its
embeddings of every image (:func:`metalib.trained.embedded`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from types import ModuleType
from typing import Any

import torch
import torch.nn.functional as F

from metalib import blackbox, finetune, maml, meta_sgd, protonet, reptile, weight_predictor
from metalib.protonet import pixel_nearest_neighbour
from metalib.runtime import Budget
from metalib.tasks import Episode

FAMILIES = ("fine-tuning", "optimization-based", "black-box", "non-parametric")
BACKBONE = finetune
"""The module of the shared backbone: fine-tuning's recipe (``finetune.Config.preset``)."""


@dataclass(frozen=True)
class Method:
    """One learner: its name, family, recipe module (``None``: nothing to train) and preset.

    ``reads_features``: trained and scored on the shared backbone's embeddings instead of pixels.
    """

    name: str
    family: str
    learner: ModuleType | None
    preset: Callable[[Budget], Any] | None = None
    reads_features: bool = False


def pixel_logits(episode: Episode) -> torch.Tensor:
    """One-hot logits ``(T, N*Q, N)`` of the pixel nearest neighbour, the learner with no recipe."""
    return F.one_hot(pixel_nearest_neighbour(episode), episode.n_way).float()


REGISTRY: dict[str, Method] = {
    m.name: m
    for m in (
        Method("pixel nearest neighbour", "non-parametric", None),
        Method("fine-tuning (last layer)", "fine-tuning", finetune, finetune.Config.preset),
        Method("MAML", "optimization-based", maml, maml.Config.preset),
        Method(
            "first-order MAML", "optimization-based", maml,
            partial(maml.Config.preset, first_order=True),
        ),
        Method("Meta-SGD", "optimization-based", meta_sgd, meta_sgd.Config.preset),
        Method("Reptile", "optimization-based", reptile, reptile.Config.preset),
        Method(
            "LSTM learner", "black-box", blackbox, partial(blackbox.Config.preset, kind="lstm"),
            reads_features=True,
        ),
        Method(
            "attention learner", "black-box", blackbox,
            partial(blackbox.Config.preset, kind="attention"), reads_features=True,
        ),
        Method(
            "weight predictor", "black-box", weight_predictor, weight_predictor.Config.preset,
            reads_features=True,
        ),
        Method("ProtoNet", "non-parametric", protonet, protonet.Config.preset),
    )
}  # fmt: skip
