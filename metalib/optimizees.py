"""Families of problems for learned optimizers, B problems batched along a leading dimension.

Each family holds the parameters ``theta0 (B, P)`` of B independent problems and
``loss(theta (B, P), t) -> (B,)``, their losses at step ``t``; one batched computation serves
all B problems, and the learned optimizer sees the ``B * P`` coordinates as one batch
(:mod:`metalib.learned_optim`). The families follow Andrychowicz et al. (2016), sections 3.1
and 3.2:

* :func:`quadratics`: ``f(theta) = ||W theta - y||^2`` with Gaussian ``W``, ``y`` (10-d);
* :func:`mlp_problems`: a one-hidden-layer MLP classifying images of ``n_way`` random classes,
  a fresh minibatch at every step, drawn in advance so every optimizer sees the same batches.

The hand-designed baselines run on the same batches of problems: :func:`torch_curve` (SGD, Adam,
... from ``torch.optim``) and :func:`tune_lr` (their learning rate by grid search).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from metalib.data.base import ImageClasses

ACTIVATIONS = {"sigmoid": torch.sigmoid, "relu": torch.relu, "tanh": torch.tanh}


@dataclass(frozen=True)
class Quadratics:
    """B random quadratics ``f_b(theta) = ||W_b theta - y_b||^2`` (the same at every step).

    Attributes:
        W: ``(B, D, D)``.
        y: ``(B, D)``.
        theta0: ``(B, D)`` starting points.
    """

    W: Tensor
    y: Tensor
    theta0: Tensor

    def loss(self, theta: Tensor, t: int = 0) -> Tensor:
        """``(B, D)`` parameters -> ``(B,)`` losses (``t`` is ignored: the loss is fixed)."""
        if theta.shape != self.theta0.shape:
            raise ValueError(
                f"theta must be {tuple(self.theta0.shape)}, "
                f"got {tuple(theta.shape)}"
            )  # fmt: skip
        residual = torch.einsum("bij,bj->bi", self.W, theta) - self.y  # (B, D)
        return residual.pow(2).sum(-1)


def quadratics(
    n: int, generator: torch.Generator, dim: int = 10, device: torch.device | str = "cpu"
) -> Quadratics:
    """Draw ``n`` quadratics: ``W`` and ``y`` standard normal as in the paper, and ``theta0`` too
    (the paper does not say where it starts).

    Args:
        n: how many problems (B).
        generator: the randomness (a CPU generator; tensors are then moved to ``device``).
        dim: the dimension D of ``theta`` (10 in the paper).
        device: where the problems live.
    """
    if n < 1 or dim < 1:
        raise ValueError(f"n and dim must be at least 1, got n={n}, dim={dim}")
    W = torch.randn(n, dim, dim, generator=generator)
    y = torch.randn(n, dim, generator=generator)
    theta0 = torch.randn(n, dim, generator=generator)
    return Quadratics(W.to(device), y.to(device), theta0.to(device))


@dataclass(frozen=True)
class MLPProblems:
    """B classification problems, each a one-hidden-layer MLP on its own images and batches.

    ``theta`` packs, per problem, ``W1 (D, H)``, ``b1 (H,)``, ``W2 (H, C)``, ``b2 (C,)`` in that
    order (``P = D*H + H + H*C + C``).

    Attributes:
        x: ``(B, N, D)`` each problem's flattened images.
        y: ``(B, N)`` their labels in ``0..C-1``.
        batches: ``(T, B, S)`` indices into ``N``: the minibatch of step ``t`` is ``batches[t]``.
        theta0: ``(B, P)`` starting parameters.
        hidden: H.
        n_way: C.
        activation: a key of :data:`ACTIVATIONS`.
    """

    x: Tensor
    y: Tensor
    batches: Tensor
    theta0: Tensor
    hidden: int
    n_way: int
    activation: str = "sigmoid"

    def unpack(self, theta: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(B, P)`` -> ``W1 (B, D, H)``, ``b1 (B, H)``, ``W2 (B, H, C)``, ``b2 (B, C)``."""
        if theta.shape != self.theta0.shape:
            raise ValueError(f"theta must be {tuple(self.theta0.shape)}, got {tuple(theta.shape)}")
        n, d, h, c = theta.shape[0], self.x.shape[-1], self.hidden, self.n_way
        w1, b1, w2, b2 = theta.split([d * h, h, h * c, c], dim=1)
        return w1.view(n, d, h), b1, w2.view(n, h, c), b2

    def logits(self, theta: Tensor, x: Tensor) -> Tensor:
        """``(B, P)`` parameters, ``(B, S, D)`` inputs -> ``(B, S, C)`` logits."""
        w1, b1, w2, b2 = self.unpack(theta)
        hidden = ACTIVATIONS[self.activation](torch.baddbmm(b1[:, None], x, w1))  # (B, S, H)
        return torch.baddbmm(b2[:, None], hidden, w2)

    def loss(self, theta: Tensor, t: int) -> Tensor:
        """Mean cross-entropy of each problem on its minibatch of step ``t``: ``(B,)``."""
        if not 0 <= t < len(self.batches):
            raise ValueError(
                f"step {t} has no minibatch: these problems were drawn with "
                f"batches for steps 0..{len(self.batches) - 1}; draw them with "
                f"a longer horizon",
            )
        rows = torch.arange(len(self.x), device=self.x.device)[:, None]
        idx = self.batches[t]  # (B, S)
        out = self.logits(theta, self.x[rows, idx])  # (B, S, C)
        ce = F.cross_entropy(
            out.flatten(0, 1),
            self.y[rows, idx].flatten(),
            reduction="none",
        )
        return ce.view(idx.shape).mean(1)

    def accuracy(self, theta: Tensor) -> Tensor:
        """Each problem's accuracy on all its images: ``(B,)``."""
        return (self.logits(theta, self.x).argmax(-1) == self.y).float().mean(1)


def mlp_problems(
    data: ImageClasses,
    n: int,
    generator: torch.Generator,
    horizon: int,
    n_way: int = 10,
    hidden: int = 20,
    activation: str = "sigmoid",
    batch_size: int = 128,
    device: torch.device | str = "cpu",
) -> MLPProblems:
    """Draw ``n`` MLP problems: ``n_way`` random classes of ``data`` each, every image of them.

    The minibatches of steps ``0..horizon`` (``batch_size`` images without replacement, fresh
    at every step) are drawn here, so that every optimizer compared sees the same ones. The
    weights start at ``N(0, 1/fan_in)``, the biases at zero.

    Args:
        data: the classes to draw from (e.g. ``glyphs.load("train")``).
        n: how many problems (B).
        generator: the randomness.
        horizon: the last step that needs a minibatch (the number of updates to run).
        n_way: classes per problem (C).
        hidden: hidden units (H; 20 in the paper).
        activation: ``"sigmoid"`` (the paper), ``"relu"`` or ``"tanh"``.
        batch_size: images per minibatch (S; 128 in the paper), at most ``n_way * per_class``.
        device: where the problems live.
    """
    if n < 1 or hidden < 1 or horizon < 0:
        raise ValueError(f"need n >= 1, hidden >= 1, horizon >= 0; got {n}, {hidden}, {horizon}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; choose one of {tuple(ACTIVATIONS)}")
    if not 2 <= n_way <= data.n_classes:
        raise ValueError(f"n_way must be from 2 to the {data.n_classes} classes, got {n_way}")
    pool = n_way * data.per_class
    if not 1 <= batch_size <= pool:
        raise ValueError(f"batch_size must be from 1 to the {pool} images of a problem")
    classes = torch.rand(n, data.n_classes, generator=generator).argsort(1)[:, :n_way]  # (B, C)
    classes = classes[:, :, None].expand(n, n_way, data.per_class)
    samples = torch.arange(data.per_class).expand(n, n_way, -1)
    x = data.get(classes, samples).flatten(1, 2).flatten(2)  # (B, N, D)
    y = torch.arange(n_way).repeat_interleave(data.per_class).expand(n, -1)  # (B, N)
    batches = torch.rand(horizon + 1, n, pool, generator=generator).argsort(-1)[..., :batch_size]
    d = x.shape[-1]
    w1 = torch.randn(n, d * hidden, generator=generator) / d**0.5
    w2 = torch.randn(n, hidden * n_way, generator=generator) / hidden**0.5
    theta0 = torch.cat([w1, torch.zeros(n, hidden), w2, torch.zeros(n, n_way)], 1)
    return MLPProblems(
        x.to(device),
        y.contiguous().to(device),
        batches.to(device),
        theta0.to(device),
        hidden,
        n_way,
        activation,
    )


def torch_curve(
    optim_class: type[torch.optim.Optimizer],
    lr: float,
    loss_fn: Callable[[Tensor, int], Tensor],
    theta0: Tensor,
    steps: int,
    **optim_kwargs: object,
) -> Tensor:
    """The losses of B problems optimized by a ``torch.optim`` optimizer (SGD, Adam, ...).

    The B problems share one parameter tensor and the summed loss; SGD and Adam act on each
    coordinate separately, so each problem is optimized as if alone.

    Returns:
        ``(steps + 1, B)`` losses on the CPU (a measurement): row t is ``loss_fn(theta_t, t)``,
        as in :func:`metalib.learned_optim.learned_curve`.
    """
    if theta0.dim() != 2 or steps < 1:
        raise ValueError(f"need theta0 (B, P) and steps >= 1, got {tuple(theta0.shape)}, {steps}")
    if lr <= 0:
        raise ValueError(f"lr must be positive, got {lr}")
    theta = theta0.detach().clone().requires_grad_(True)
    opt = optim_class([theta], lr=lr, **optim_kwargs)
    losses = []
    for t in range(steps + 1):
        loss = loss_fn(theta, t)
        if loss.shape != theta.shape[:1]:
            raise ValueError(f"loss_fn must return ({len(theta)},) losses, got {tuple(loss.shape)}")
        losses.append(loss.detach())
        if t == steps:
            break
        opt.zero_grad()
        loss.sum().backward()
        opt.step()
    return torch.stack(losses).cpu()


def tune_lr(
    optim_class: type[torch.optim.Optimizer],
    loss_fn: Callable[[Tensor, int], Tensor],
    theta0: Tensor,
    steps: int,
    lrs: Sequence[float],
) -> tuple[float, Tensor]:
    """Grid-search a ``torch.optim`` optimizer's learning rate on a batch of problems.

    The score of a learning rate is the mean loss over steps 1..steps and the B problems (the
    quantity the learned optimizer is meta-trained to minimise); a run that diverges scores
    infinity.

    Returns:
        ``(best_lr, scores)``: the learning rate with the lowest score, and ``(len(lrs),)``
        scores.
    """
    if len(lrs) == 0:
        raise ValueError(
            "lrs is empty; give the grid of learning rates to try",
        )
    scores = torch.empty(len(lrs), dtype=torch.float64)
    for i, lr in enumerate(lrs):
        curve = torch_curve(optim_class, lr, loss_fn, theta0, steps)
        score = curve[1:].double().mean().item()
        scores[i] = score if math.isfinite(score) else math.inf
    return float(lrs[int(scores.argmin())]), scores
