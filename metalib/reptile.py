"""Reptile (Nichol, Achiam and Schulman, 2018, "On First-Order Meta-Learning Algorithms").

Reptile does not differentiate through adaptation at all: each task runs a few SGD steps on all
its data to weights W_i, and the initialisation θ moves towards them,
θ ← θ + β (1/n) Σ_i (W_i - θ) (:func:`update`; :func:`step` runs one meta-update on an episode,
vectorised over its tasks). At test time it adapts like MAML, by gradient steps on the support
set. Chapter 2 runs it on sinusoids; :class:`Config` and :func:`train` are the book's recipe on
images.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import vmap

from metalib import maml
from metalib.data.base import ImageClasses
from metalib.nets import Conv4, fast_conv4, forward_with, with_batch_norm_kernel
from metalib.runtime import Budget
from metalib.tasks import Episode, sample_episodes
from metalib.train import fit
from metalib.trained import Run


def update(
    params: maml.Params,
    adapted: maml.Params,
    outer_lr: float,
) -> maml.Params:
    """Reptile's batched update: θ + β (1/n) Σ_i (W_i - θ).

    Args:
        params: θ by name, each ``(...)``.
        adapted: each task's weights after its inner loop, stacked: ``(n, ...)`` per name.
        outer_lr: β, the step towards the tasks' weights (1 moves θ onto their mean).

    Returns:
        The new θ, a new dict (detached).
    """
    if set(params) != set(adapted):
        raise ValueError(
            f"adapted weights {sorted(adapted)[:3]} "
            f"do not match params {sorted(params)[:3]}"
        )  # fmt: skip
    out = {}
    for k, theta in params.items():
        w = adapted[k]
        if w.shape[1:] != theta.shape:
            raise ValueError(
                f"adapted[{k!r}] has shape {tuple(w.shape)}; expected "
                f"(n_tasks, {', '.join(map(str, theta.shape))})",
            )
        out[k] = (theta + outer_lr * (w - theta).mean(dim=0)).detach()
    return out


def step(
    model: nn.Module,
    episode: Episode,
    loss_fn: maml.LossFn,
    inner_steps: int,
    inner_lr: float,
    outer_lr: float,
) -> dict[str, float]:
    """One Reptile meta-update of ``model``'s parameters, in place.

    Each task runs ``inner_steps`` of SGD (no graph) on all its data — support and query
    together, as Reptile needs no train/test split inside a task — to weights W_i, vectorised
    over the tasks; then θ ← θ + β (1/n) Σ_i (W_i - θ) (:func:`update`).

    Returns:
        ``{"loss": mean loss of the tasks' data at θ, before the update}``.
    """
    if inner_steps < 1:
        raise ValueError(f"Reptile needs at least one inner step, got {inner_steps}")
    e = episode
    x = torch.cat([e.support_x, e.query_x], dim=1)
    y = torch.cat([e.support_y, e.query_y], dim=1)
    theta = {k: v.detach() for k, v in model.named_parameters()}
    plain = with_batch_norm_kernel(model, fused=False)  # the kernel vmap handles right

    def one(xi: torch.Tensor, yi: torch.Tensor) -> maml.Params:
        return maml.adapt(plain, theta, xi, yi, loss_fn, inner_steps, inner_lr, first_order=True)

    def loss_at_theta(xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        return loss_fn(forward_with(plain, theta, xi), yi)

    with torch.no_grad():
        before = vmap(loss_at_theta)(x, y)
    adapted = vmap(one)(x, y)
    new = update(theta, adapted, outer_lr)
    with torch.no_grad():
        for k, p in model.named_parameters():
            p.copy_(new[k])
    return {"loss": before.mean().item()}


@dataclass(frozen=True)
class Config:
    """Reptile on 5-way tasks of 1 support and 4 query images per class (all used for
    adaptation), 5 tasks per meta-batch, the outer step falling linearly from 1 to 0 (as in the
    paper and chapter 2).

    Attributes:
        n_way, hidden: the tasks' N and the Conv4's channels.
        steps, tasks, queries: meta-iterations, tasks per meta-batch, queries per class.
        inner_steps, inner_lr: the SGD steps on each task's data, and their size.
        test_steps: steps of ``inner_lr`` on a test task's support set.
    """

    n_way: int = 5
    hidden: int = 32
    steps: int = 200
    tasks: int = 5
    queries: int = 4
    inner_steps: int = 5
    inner_lr: float = 0.1
    test_steps: int = 10

    @classmethod
    def preset(cls, budget: Budget, **changes) -> Config:
        """The book's recipe at ``budget``: 200 meta-iterations, or 5,000 for ``long``."""
        return cls(**{"steps": budget.pick(default=200, long=5_000), **changes})


def build(config: Config, data: ImageClasses) -> Conv4:
    """The untrained network (:func:`metalib.nets.fast_conv4`; never run under ``vmap`` here)."""
    return fast_conv4(config.n_way, config.hidden, data.image_size)


def train(
    config: Config, data: ImageClasses, generator: torch.Generator, device: torch.device
) -> Run:
    """Meta-train :func:`build`'s network. The tasks run one after another through
    :func:`metalib.maml.adapt`: on a CPU this is several times faster than
    :func:`step`, which vectorises over the tasks (``torch.func.vmap``)."""
    net = build(config, data).to(device)

    def step(i: int) -> dict[str, float]:
        ep = sample_episodes(data, config.n_way, 1, config.queries, config.tasks, generator)
        ep = ep.to(device)
        x = torch.cat([ep.support_x, ep.query_x], dim=1)  # Reptile uses all of a task's data
        y = torch.cat([ep.support_y, ep.query_y], dim=1)
        theta = {k: v.detach() for k, v in net.named_parameters()}
        adapted = [
            maml.adapt(
                net, theta, xi, yi, F.cross_entropy, config.inner_steps, config.inner_lr, True
            )
            for xi, yi in zip(x, y, strict=True)
        ]
        stacked = {k: torch.stack([a[k] for a in adapted]) for k in theta}
        new = update(theta, stacked, outer_lr=1.0 - i / config.steps)
        moved = sum((new[k] - theta[k]).square().sum() for k in theta).sqrt().item()
        with torch.no_grad():  # theta shares the parameters' memory: measured before this
            for k, p in net.named_parameters():
                p.copy_(new[k])
        return {"step_norm": moved}

    return Run(net, fit(step, config.steps, desc="Reptile", log_every=10))


def predict(config: Config, model: nn.Module, episode: Episode) -> torch.Tensor:
    """Logits ``(T, N*Q, N)``: the initialisation adapted by ``test_steps`` gradient steps."""
    return maml.adapted_logits(model, episode, config.test_steps, config.inner_lr)
