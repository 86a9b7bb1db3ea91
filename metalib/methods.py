"""The learners of the book as one registry: how each is meta-trained and how it labels a task.

Each entry of :data:`REGISTRY` is a :class:`Method`: its family, its settings at a run budget,
``train(settings, inputs, generator) -> nn.Module`` (the meta-trained learner), ``build`` (the
same architecture, untrained, to load cached weights into) and ``predict(model, settings,
episode) -> (T, N*Q, N) logits``. Everything calls metalib's own functions (pre-training,
fine-tuning, MAML's inner loop, the episodic classifiers); the settings are the chapters',
tuned for the CPU budget. :mod:`metalib.compare` runs the registry on one set of test episodes.

Fine-tuning, the two black-box learners and the weight predictor share one pre-trained
``Conv4`` (chapter 3's backbone); the black-box learners and the weight predictor read its
embeddings of every image, computed once per split (:func:`metalib.features.embed_classes`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from metalib import maml, meta_sgd
from metalib.blackbox import BlackBoxClassifier, SequenceLearner, spread_labels
from metalib.data.base import ImageClasses
from metalib.features import FeatureClasses
from metalib.finetune import FinetuneConfig, PretrainConfig, finetune, pretrain
from metalib.nets import Conv4
from metalib.protonet import ProtoNet, pixel_nearest_neighbour
from metalib.runtime import Budget
from metalib.tasks import Episode, sample_episodes
from metalib.train import accuracy, episode_loss, fit
from metalib.weight_predictor import WeightPredictor

FAMILIES = ("fine-tuning", "optimization-based", "black-box", "non-parametric")
Settings = dict[str, Any]


@dataclass
class Inputs:
    """What meta-training reads: the images, and (lazily) the shared backbone and its embeddings.

    Attributes:
        train: the meta-training split.
        device: where the learners live.
        backbone: ``() -> Conv4``, the shared pre-trained network (never modified by a method).
        train_features: ``() -> FeatureClasses``, the training split embedded by the backbone.
    """

    train: ImageClasses
    device: torch.device
    backbone: Callable[[], nn.Module]
    train_features: Callable[[], FeatureClasses]


@dataclass(frozen=True)
class Method:
    """One learner of the comparison (see the module docstring for the four functions)."""

    name: str
    family: str
    settings: Callable[[Budget], Settings]
    build: Callable[[Settings, Inputs], nn.Module]
    predict: Callable[[nn.Module, Settings, Episode], torch.Tensor]
    train: Callable[[Settings, Inputs, torch.Generator], nn.Module] | None = None
    """``None``: nothing to meta-train (``build`` gives the learner: pixel NN, fine-tuning)."""
    uses_backbone: bool = False
    reads_features: bool = False


def backbone_settings(budget: Budget) -> Settings:
    """Chapter 3's pre-training: Conv4-64 on all meta-training classes, Adam, batches of 128."""
    return {"hidden": 64, "steps": budget.pick(default=300, long=3_000), "lr": 2e-3}


def build_backbone(settings: Settings, data: ImageClasses, device: torch.device) -> nn.Module:
    """An untrained backbone of the shared shape, built for speed on a CPU: channels-last memory
    and the fused batch-norm kernel (it never runs under ``vmap``)."""
    size = data.image_size
    net = Conv4(
        n_classes=data.n_classes, hidden=settings["hidden"], image_size=size, fused_norm=True
    )
    return net.to(device, memory_format=torch.channels_last)


def train_backbone(
    settings: Settings, data: ImageClasses, device: torch.device, generator: torch.Generator
) -> nn.Module:
    """Pre-train the shared backbone (:func:`metalib.finetune.pretrain`) on ``device``."""
    net = build_backbone(settings, data, device)
    config = PretrainConfig(steps=settings["steps"], batch_size=128, lr=settings["lr"])
    pretrain(net, data, config, generator)
    return net


def _conv4(settings: Settings, inputs: Inputs) -> nn.Module:
    """MAML's network; its inner loop picks the batch-norm kernels it needs per phase."""
    size = inputs.train.image_size
    net = Conv4(settings["n_way"], hidden=settings["hidden"], image_size=size, fused_norm=True)
    return net.to(inputs.device, memory_format=torch.channels_last)


# --- non-parametric -----------------------------------------------------------------------------


def _predict_pixel_nn(model: nn.Module, settings: Settings, episode: Episode) -> torch.Tensor:
    return F.one_hot(pixel_nearest_neighbour(episode), episode.n_way).float()


def _build_protonet(settings: Settings, inputs: Inputs) -> nn.Module:
    size = inputs.train.image_size
    encoder = Conv4(hidden=settings["hidden"], image_size=size, fused_norm=True).body
    return ProtoNet(encoder, "euclidean").to(inputs.device, memory_format=torch.channels_last)


def _train_protonet(settings: Settings, inputs: Inputs, generator: torch.Generator) -> nn.Module:
    """Chapter 4: 20-way 1-shot episodes, 5 queries per class, Adam with a cosine schedule."""
    net = _build_protonet(settings, inputs)
    steps = settings["steps"]
    opt = torch.optim.Adam(net.parameters(), lr=settings["lr"])
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)

    def step(_: int) -> dict[str, float]:
        ep = sample_episodes(inputs.train, settings["train_way"], 1, 5, 1, generator)
        loss, _acc = episode_loss(net, ep.to(inputs.device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        return {"loss": loss.item()}

    fit(step, steps, desc="ProtoNet", log_every=50)
    return net


def _predict_episodic(model: nn.Module, settings: Settings, episode: Episode) -> torch.Tensor:
    with torch.no_grad():
        return model(episode.support_x, episode.support_y, episode.query_x, episode.n_way)


# --- fine-tuning --------------------------------------------------------------------------------


def _finetune_config(settings: Settings) -> FinetuneConfig:
    return FinetuneConfig(steps=settings["ft_steps"], lr=settings["ft_lr"], body_lr=0.0)


def _predict_finetune(model: nn.Module, settings: Settings, episode: Episode) -> torch.Tensor:
    """A new head fitted on each task's support (seeded like ``finetune_accuracy``)."""
    out = []
    for t in range(episode.n_tasks):
        g = torch.Generator().manual_seed(0)
        sx, sy = episode.support_x[t], episode.support_y[t]
        net = finetune(model, sx, sy, episode.n_way, _finetune_config(settings), g)
        with torch.no_grad():
            out.append(net(episode.query_x[t]))
    return torch.stack(out)


# --- optimization-based -------------------------------------------------------------------------


def _train_maml(settings: Settings, inputs: Inputs, generator: torch.Generator) -> nn.Module:
    """Chapter 2: Conv4-32, 5-way 1-shot, 15 queries, 8 tasks per meta-batch, Adam 3e-3."""
    net = _conv4(settings, inputs)
    opt = torch.optim.Adam(net.parameters(), lr=settings["outer_lr"])
    config = maml.MAMLConfig(settings["inner_steps"], settings["inner_lr"], settings["first_order"])

    def step(_: int) -> dict[str, float]:
        ep = sample_episodes(inputs.train, settings["n_way"], 1, 15, settings["tasks"], generator)
        return maml.meta_step(net, opt, ep.to(inputs.device), F.cross_entropy, config)

    fit(step, settings["steps"], desc=settings["desc"], log_every=10)
    return net


def _train_reptile(settings: Settings, inputs: Inputs, generator: torch.Generator) -> nn.Module:
    """Reptile (Nichol et al., 2018): SGD on each task's data, then a step towards its weights.

    The outer step falls linearly from 1 to 0, as in the paper and chapter 2's sinusoids. The
    tasks run one after another through :func:`metalib.maml.adapt` (the network's fused batch
    norm), then :func:`metalib.maml.reptile_update`: on a CPU this is several times faster than
    :func:`metalib.maml.reptile_step`, which vectorises over the tasks (``torch.func.vmap``).
    """
    net = _conv4(settings, inputs)
    steps = settings["steps"]

    def step(i: int) -> dict[str, float]:
        ep = sample_episodes(inputs.train, settings["n_way"], 1, 4, settings["tasks"], generator)
        ep = ep.to(inputs.device)
        x = torch.cat([ep.support_x, ep.query_x], dim=1)  # Reptile uses all of a task's data
        y = torch.cat([ep.support_y, ep.query_y], dim=1)
        theta = {k: v.detach() for k, v in net.named_parameters()}
        adapted = [
            maml.adapt(
                net,
                theta,
                xi,
                yi,
                F.cross_entropy,
                settings["inner_steps"],
                settings["inner_lr"],
                first_order=True,
            )
            for xi, yi in zip(x, y, strict=True)
        ]
        stacked = {k: torch.stack([a[k] for a in adapted]) for k in theta}
        new = maml.reptile_update(theta, stacked, outer_lr=1.0 - i / steps)
        moved = sum((new[k] - theta[k]).square().sum() for k in theta).sqrt().item()
        with torch.no_grad():  # theta shares the parameters' memory: measured before this
            for k, p in net.named_parameters():
                p.copy_(new[k])
        return {"step_norm": moved}

    fit(step, steps, desc="Reptile", log_every=10)
    return net


def _predict_maml(model: nn.Module, settings: Settings, episode: Episode) -> torch.Tensor:
    """The learned initialisation adapted to each task by ``test_steps`` gradient steps."""
    config = maml.MAMLConfig(settings["test_steps"], settings["inner_lr"], first_order=True)
    params = {k: v.detach() for k, v in model.named_parameters()}
    return maml.episode_outputs(model, params, episode, F.cross_entropy, config).detach()


def _build_meta_sgd(settings: Settings, inputs: Inputs) -> nn.Module:
    return meta_sgd.MetaSGD(_conv4(settings, inputs), init=settings["inner_lr"])


def _train_meta_sgd(settings: Settings, inputs: Inputs, generator: torch.Generator) -> nn.Module:
    """Meta-SGD (Li et al., 2017) with MAML's settings: the step sizes start at MAML's tuned one
    and learn at a tenth of its outer rate (chapter 8)."""
    model = _build_meta_sgd(settings, inputs)
    opt = torch.optim.Adam(
        [
            {"params": model.net.parameters()},
            {"params": model.lrs.parameters(), "lr": settings["lr_lr"]},
        ],
        lr=settings["outer_lr"],
    )
    config = maml.MAMLConfig(settings["inner_steps"], settings["inner_lr"], settings["first_order"])

    def step(_: int) -> dict[str, float]:
        ep = sample_episodes(inputs.train, settings["n_way"], 1, 15, settings["tasks"], generator)
        return meta_sgd.meta_step(model, opt, ep.to(inputs.device), F.cross_entropy, config)

    fit(step, settings["steps"], desc=settings["desc"], log_every=10)
    return model


def _predict_meta_sgd(model: nn.Module, settings: Settings, episode: Episode) -> torch.Tensor:
    """The learned initialisation adapted by ``test_steps`` steps of the learned sizes."""
    config = maml.MAMLConfig(settings["test_steps"], settings["inner_lr"], first_order=True)
    return meta_sgd.episode_outputs(model, episode, F.cross_entropy, config).detach()


# --- black-box and the weight predictor (on the backbone's embeddings) --------------------------


def _build_sequence(settings: Settings, inputs: Inputs) -> nn.Module:
    learner = SequenceLearner(settings["hidden"], settings["slots"], settings["kind"])
    return BlackBoxClassifier(nn.Identity(), learner).to(inputs.device)


def _build_weight_predictor(settings: Settings, inputs: Inputs) -> nn.Module:
    return WeightPredictor(nn.Identity(), settings["hidden"]).to(inputs.device)


def _train_on_features(build: Callable[[Settings, Inputs], nn.Module]):
    """Chapter 3's loop: 5-way 1-shot tasks of embeddings, 5 queries, 16 tasks per step, Adam."""

    def train(settings: Settings, inputs: Inputs, generator: torch.Generator) -> nn.Module:
        model, data = build(settings, inputs), inputs.train_features()
        opt = torch.optim.Adam(model.parameters(), lr=settings["lr"])
        slots = settings.get("slots")  # spread the labels over all slots (black-box learners)

        def step(_: int) -> dict[str, float]:
            ep = sample_episodes(data, 5, 1, 5, 16, generator).to(inputs.device)
            sy, qy, n_out = ep.support_y, ep.query_y, 5
            if slots:
                sy, qy = spread_labels(sy, qy, 5, slots, generator)
                n_out = slots
            out = model(ep.support_x, sy, ep.query_x, n_out)
            loss = F.cross_entropy(out.flatten(0, 1), qy.flatten())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return {"loss": loss.item(), "accuracy": accuracy(out.detach(), qy).mean().item()}

        fit(step, settings["steps"], desc=settings["desc"], log_every=10)
        return model

    return train


# --- the registry -------------------------------------------------------------------------------


def _maml_settings(first_order: bool, desc: str) -> Callable[[Budget], Settings]:
    """Chapter 2's Glyphs MAML. First order gets 3 inner steps of 0.1 instead of 1 of 0.4: with
    one step it barely learns in 160 iterations (44.9% against 79.5% at 5-way 1-shot, measured
    by benchmarks/compare.py), and extra first-order steps cost little."""
    steps, lr = (3, 0.1) if first_order else (1, 0.4)

    def settings(b: Budget) -> Settings:
        return {
            "n_way": 5, "hidden": 32, "steps": b.pick(default=160, long=5_000), "tasks": 8,
            "inner_steps": steps, "inner_lr": lr, "test_steps": 3, "outer_lr": 3e-3,
            "first_order": first_order, "desc": desc,
        }  # fmt: skip

    return settings


def _with_backbone(extra: Callable[[Budget], Settings]) -> Callable[[Budget], Settings]:
    return lambda b: {**extra(b), "backbone": backbone_settings(b)}


def _sequence_settings(kind: str, default: int, long: int, lr: float):
    return _with_backbone(
        lambda b: {
            "hidden": 64,
            "slots": 10,
            "kind": kind,
            "lr": lr,
            "desc": f"{kind} learner",
            "steps": b.pick(default=default, long=long),
        }
    )


REGISTRY: dict[str, Method] = {
    m.name: m
    for m in (
        Method(
            "pixel nearest neighbour", "non-parametric",
            settings=lambda b: {}, build=lambda s, i: nn.Module(), predict=_predict_pixel_nn,
        ),
        Method(
            "fine-tuning (last layer)", "fine-tuning",
            settings=_with_backbone(lambda b: {"ft_steps": 100, "ft_lr": 1e-2}),
            build=lambda s, i: i.backbone(), predict=_predict_finetune, uses_backbone=True,
        ),
        Method(
            "MAML", "optimization-based", settings=_maml_settings(False, "MAML"),
            build=_conv4, predict=_predict_maml, train=_train_maml,
        ),
        Method(
            "first-order MAML", "optimization-based", settings=_maml_settings(True, "FO-MAML"),
            build=_conv4, predict=_predict_maml, train=_train_maml,
        ),
        Method(
            "Meta-SGD", "optimization-based",
            settings=lambda b: {**_maml_settings(False, "Meta-SGD")(b), "lr_lr": 0.04},
            build=_build_meta_sgd, predict=_predict_meta_sgd, train=_train_meta_sgd,
        ),
        Method(
            "Reptile", "optimization-based",
            settings=lambda b: {
                "n_way": 5, "hidden": 32, "steps": b.pick(default=200, long=5_000), "tasks": 5,
                "inner_steps": 5, "inner_lr": 0.1, "test_steps": 10,
            },
            build=_conv4, predict=_predict_maml, train=_train_reptile,
        ),
        Method(
            "LSTM learner", "black-box",
            settings=_sequence_settings("lstm", 3_000, 20_000, 3e-3), build=_build_sequence,
            predict=_predict_episodic, train=_train_on_features(_build_sequence),
            uses_backbone=True, reads_features=True,
        ),
        Method(
            "attention learner", "black-box",
            settings=_sequence_settings("attention", 2_000, 10_000, 1e-3), build=_build_sequence,
            predict=_predict_episodic, train=_train_on_features(_build_sequence),
            uses_backbone=True, reads_features=True,
        ),
        Method(
            "weight predictor", "black-box",
            settings=_with_backbone(
                lambda b: {"hidden": 64, "lr": 1e-3, "desc": "weight predictor",
                           "steps": b.pick(default=1_000, long=5_000)}  # fmt: skip
            ),
            build=_build_weight_predictor, predict=_predict_episodic,
            train=_train_on_features(_build_weight_predictor),
            uses_backbone=True, reads_features=True,
        ),
        Method(
            "ProtoNet", "non-parametric",
            settings=lambda b: {"hidden": 32, "train_way": 20, "lr": 2e-3,
                                "steps": b.pick(default=2_000, long=20_000)},  # fmt: skip
            build=_build_protonet, predict=_predict_episodic, train=_train_protonet,
        ),
    )
}  # fmt: skip
