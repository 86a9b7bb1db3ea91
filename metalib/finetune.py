"""Transfer learning: pre-train on meta-training classes, then fine-tune on a new task's support.

The baseline every meta-learner must beat (Yosinski et al., 2014; Chen et al., 2019; Tian et al.,
2020). Pre-training is ordinary classification over all meta-training classes at once; fine-tuning
gives the network a new head for the task's N classes and takes a few gradient steps on its K
support images per class. The knobs a chapter compares are the fields of :class:`FinetuneConfig`:
which layers learn (all, only the head, all but the first blocks), how fast the body learns
relative to the head, and whether the head is fitted first on frozen features before the whole
network moves ("LP-FT", Kumar et al., 2022).

Nothing is mutated: :func:`finetune` returns a new network and leaves the pre-trained one as it was.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from metalib.data.base import ImageClasses
from metalib.nets import Conv4, fast_conv4, with_new_head
from metalib.runtime import Budget
from metalib.tasks import Episode
from metalib.train import History, accuracy, fit
from metalib.trained import Run


@dataclass(frozen=True)
class PretrainConfig:
    """Supervised pre-training: Adam on mini-batches drawn uniformly from every training image."""

    steps: int = 1000
    batch_size: int = 128
    lr: float = 2e-3


def pretrain(
    model: nn.Module,
    data: ImageClasses,
    config: PretrainConfig,
    generator: torch.Generator,
) -> History:
    """Train ``model`` in place to classify all ``data.n_classes`` classes; return its history.

    Args:
        model: a network whose head has ``data.n_classes`` outputs (e.g. ``Conv4(n_classes=C)``);
            its inputs are ``(B, 1, H, W)`` images on the model's device.
        data: the meta-training split.
        config: steps, batch size, learning rate.
        generator: draws the mini-batches.

    Returns:
        History with ``loss`` and ``accuracy`` (training batch) per step.
    """
    out = getattr(model, "head", None)
    if not isinstance(out, nn.Linear) or out.out_features != data.n_classes:
        raise ValueError(
            f"pre-training on {data.name} needs a head with "
            f"{data.n_classes} outputs; build the model with "
            f"n_classes={data.n_classes}",
        )
    device = next(model.parameters()).device
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    model.train()

    def step(_: int) -> dict[str, float]:
        c = torch.randint(
            data.n_classes,
            (config.batch_size,),
            generator=generator,
        )
        m = torch.randint(
            data.per_class,
            (config.batch_size,),
            generator=generator,
        )
        x, y = data.get(c, m).to(device), c.to(device)  # (B, 1, H, W), (B,)
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return {
            "loss": loss.item(),
            "accuracy": (logits.argmax(-1) == y).float().mean().item(),
        }

    return fit(step, config.steps, desc=f"pre-training on {data.name}")


@dataclass(frozen=True)
class FinetuneConfig:
    """How to fine-tune on one task's support set (full-batch Adam steps).

    Attributes:
        steps: gradient steps on the support set.
        lr: the head's learning rate.
        body_lr: the body's learning rate; ``None`` means the same as ``lr``, ``0`` freezes the
            whole body (only the last layer learns: a "linear probe").
        frozen_blocks: how many of the first body blocks never change (0 = none).
        probe_steps: steps that fit the new head alone on frozen features before the whole network
            is fine-tuned for ``steps`` more (LP-FT); 0 = start from the random head.
    """

    steps: int = 50
    lr: float = 1e-2
    body_lr: float | None = 1e-3
    frozen_blocks: int = 0
    probe_steps: int = 0

    def __post_init__(self) -> None:
        if self.steps < 0 or self.probe_steps < 0:
            raise ValueError("steps and probe_steps must be non-negative")
        if self.lr <= 0 or (self.body_lr is not None and self.body_lr < 0):
            raise ValueError(
                "learning rates must be positive (body_lr may be 0), "
                f"got {self}"
            )  # fmt: skip
        if self.frozen_blocks < 0:
            raise ValueError(
                "frozen_blocks must be non-negative, "
                f"got {self.frozen_blocks}"
            )  # fmt: skip


def _fit_head_on_features(
    head: nn.Linear, feats: torch.Tensor, y: torch.Tensor, steps: int, lr: float
) -> None:
    """Train ``head`` in place on fixed ``(B, D)`` features: a linear probe, full-batch Adam.

    The same steps as ``torch.optim.Adam`` (betas 0.9 and 0.999, eps 1e-8) on the mean cross
    entropy, with its gradient written out (softmax minus one-hot, times the features) instead of
    taken by autograd: for a 64 x 5 head the per-step overhead of autograd and the optimizer is
    most of the cost, and this is several times faster on a CPU. Weight and bias are fitted as
    one ``(N, D + 1)`` matrix on the features with a column of ones.
    """
    b1, b2, eps = 0.9, 0.999, 1e-8
    with torch.no_grad():
        x = torch.cat([feats, feats.new_ones(len(feats), 1)], dim=1)  # (B, D + 1)
        w = torch.cat([head.weight, head.bias[:, None]], dim=1)  # (N, D + 1)
        target = F.one_hot(y, w.shape[0]).to(x.dtype)
        m, v = torch.zeros_like(w), torch.zeros_like(w)
        for t in range(1, steps + 1):
            g = (torch.softmax(x @ w.T, dim=1) - target).T @ x / len(x)  # d mean CE / d w
            m.lerp_(g, 1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            denom = (v.sqrt() / (1 - b2**t) ** 0.5).add_(eps)
            w.addcdiv_(m, denom, value=-lr / (1 - b1**t))
        head.weight.copy_(w[:, :-1])
        head.bias.copy_(w[:, -1])


def finetune(
    model: nn.Module,
    support_x: torch.Tensor,
    support_y: torch.Tensor,
    n_way: int,
    config: FinetuneConfig,
    generator: torch.Generator | None = None,
) -> nn.Module:
    """A copy of ``model`` with a new ``n_way`` head, fine-tuned on one support set.

    Args:
        model: a pre-trained (or random) network with ``body``, ``head`` and ``feature_dim``.
        support_x: ``(N*K, 1, H, W)`` support images of one task.
        support_y: ``(N*K,)`` labels in ``0..n_way-1``.
        n_way: classes of the task (outputs of the new head).
        config: which layers learn, how fast, for how many steps.
        generator: initialises the new head.

    Returns:
        The fine-tuned copy; ``model`` is unchanged.
    """
    if support_x.dim() != 4 or support_y.shape != support_x.shape[:1]:
        raise ValueError(
            "finetune takes one task: support_x (N*K, C, H, W) and "
            f"support_y (N*K,); got {tuple(support_x.shape)} and "
            f"{tuple(support_y.shape)} (use episode.task(i) and index [0])",
        )
    blocks = len(model.body) - 1  # the last entry flattens
    if config.frozen_blocks > blocks:
        raise ValueError(
            f"frozen_blocks={config.frozen_blocks}, "
            f"but the body has {blocks} blocks"
        )  # fmt: skip
    net = with_new_head(model, n_way, generator)
    net.train()
    body_lr = config.lr if config.body_lr is None else config.body_lr
    if config.probe_steps or body_lr == 0:
        with torch.no_grad():
            # features (N*K, D), fixed while only the head learns
            feats = net.features(support_x)
        probe = config.probe_steps if body_lr > 0 else config.steps
        _fit_head_on_features(net.head, feats, support_y, probe, config.lr)
        if body_lr == 0:
            return net
    trainable = []
    for i, blk in enumerate(net.body):
        blk.requires_grad_(i >= config.frozen_blocks)
        if i >= config.frozen_blocks:
            trainable += list(blk.parameters())
    opt = torch.optim.Adam(
        [
            {"params": net.head.parameters(), "lr": config.lr},
            {"params": trainable, "lr": body_lr},
        ],
    )
    for _ in range(config.steps):
        loss = F.cross_entropy(net(support_x), support_y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return net


def finetune_accuracy(
    model: nn.Module, episode: Episode, config: FinetuneConfig, seed: int = 0
) -> torch.Tensor:
    """Fine-tune a copy of ``model`` on each task's support set; score it on that task's queries.

    Args:
        model: the starting network (pre-trained or random), never modified.
        episode: T tasks (``support_x`` ``(T, N*K, 1, H, W)``, ``query_x`` ``(T, N*Q, 1, H, W)``).
        config: the fine-tuning recipe.
        seed: seeds the new head: every task and every recipe starts from the same random head.

    Returns:
        ``(T,)`` query accuracy of each task.
    """
    device = next(model.parameters()).device
    episode = episode.to(device)
    accs = []
    for t in range(episode.n_tasks):
        g = torch.Generator().manual_seed(seed)
        net = finetune(model, episode.support_x[t], episode.support_y[t], episode.n_way, config, g)
        with torch.no_grad():
            logits = net(episode.query_x[t])  # (N*Q, N)
        accs.append(accuracy(logits.unsqueeze(0), episode.query_y[t].unsqueeze(0)))
    return torch.cat(accs)


@dataclass(frozen=True)
class Config:
    """The book's fine-tuning learner and shared backbone (chapters 3 and 7): Conv4 pre-trained on
    every training class, then for each task a new head fitted on the support's features.

    Attributes:
        hidden: channels of the Conv4 (64: the backbone the black-box learners read).
        pretrain: the pre-training (:func:`pretrain`).
        tune: the fine-tuning of each task (:func:`finetune`; last layer only by default).
    """

    hidden: int = 64
    pretrain: PretrainConfig = field(default_factory=lambda: PretrainConfig(300, 128, 2e-3))
    tune: FinetuneConfig = field(default_factory=lambda: FinetuneConfig(100, 1e-2, body_lr=0.0))

    @classmethod
    def preset(cls, budget: Budget, **changes) -> Config:
        """The book's recipe at ``budget``: 300 pre-training steps, or 3,000 for ``long``."""
        steps = budget.pick(default=300, long=3_000)
        return cls(**{"pretrain": PretrainConfig(steps, 128, 2e-3), **changes})


def build(config: Config, data: ImageClasses) -> Conv4:
    """The untrained backbone, one output per class of ``data`` (``nets.fast_conv4``)."""
    return fast_conv4(data.n_classes, config.hidden, data.image_size)


def train(
    config: Config, data: ImageClasses, generator: torch.Generator, device: torch.device
) -> Run:
    """Pre-train :func:`build`'s network on ``data`` (:func:`pretrain`)."""
    net = build(config, data).to(device)
    return Run(net, pretrain(net, data, config.pretrain, generator))


def predict(config: Config, model: nn.Module, episode: Episode) -> torch.Tensor:
    """Logits ``(T, N*Q, N)``: a new head fine-tuned on each task's support (seeded like
    :func:`finetune_accuracy`, so every task starts from the same random head)."""
    out = []
    for t in range(episode.n_tasks):
        g = torch.Generator().manual_seed(0)
        sx, sy = episode.support_x[t], episode.support_y[t]
        net = finetune(model, sx, sy, episode.n_way, config.tune, g)
        with torch.no_grad():
            out.append(net(episode.query_x[t]))
    return torch.stack(out)
