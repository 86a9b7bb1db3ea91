"""Learning to reweight examples: per-example weights from a meta-gradient on clean validation data.

Ren, Zeng, Yang and Urtasun (2018), "Learning to Reweight Examples for Robust Deep Learning":
train θ on a weighted loss, look one differentiable SGD step ahead,

    θ'(ε) = θ - α ∇_θ Σ_i ε_i ℓ_i(θ),

and ask how the mean loss of a small *clean* validation set at θ'(ε) changes with each example's
weight ε_i. At ε = 0, g_i = ∂L_val(θ'(ε))/∂ε_i = -α ∇L_val(θ) · ∇ℓ_i(θ): an example whose
gradient points the same way as the validation gradient gets a negative g and is kept, one that
points against it (a flipped label, typically) is dropped. The weights are w = max(-g, 0),
normalised to sum to 1; the real update of θ then descends Σ_i w_i ℓ_i(θ). Since g is linear in
α, the normalised weights do not depend on α.

The look-ahead step is the inner loop of MAML (:mod:`metalib.maml`) with the example weights in
the place of the initialisation: the same functional machinery solves another bilevel problem.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import grad

from metalib.nets import forward_with

Params = dict[str, torch.Tensor]
METHODS = ("plain", "small_loss", "reweight")


def _check_batch(x: torch.Tensor, y: torch.Tensor, what: str = "x, y") -> None:
    if y.dim() != 1 or y.dtype != torch.long:
        raise ValueError(
            f"labels of {what} must be a 1-D long tensor (n,), got {tuple(y.shape)} {y.dtype}; "
            "use y.long() and flatten the batch"
        )
    if x.dim() < 1 or x.shape[0] != y.shape[0]:
        raise ValueError(
            f"{what}: inputs (n, ...) and labels (n,) need the same n, got "
            f"{tuple(x.shape)} and {tuple(y.shape)}"
        )


def _check_rate(rate: float) -> None:
    if not 0 <= rate < 1:
        raise ValueError(f"rate must be a fraction in [0, 1), got {rate}")


def weighted_step(
    model: nn.Module,
    params: Params,
    x: torch.Tensor,
    y: torch.Tensor,
    weights: torch.Tensor,
    lr: float,
) -> Params:
    """One SGD step on the per-example-weighted training loss: θ - lr ∇_θ Σ_i weights_i ℓ_i(θ).

    The gradient comes from ``torch.func.grad``, so the new weights stay differentiable with
    respect to both ``weights`` and ``params`` (a second-order graph, as in MAML).

    Args:
        model: the classifier, run with :func:`metalib.nets.forward_with`; never modified.
        params: θ by parameter name (e.g. ``dict(model.named_parameters())``).
        x: ``(n, ...)`` inputs; y: ``(n,)`` long labels.
        weights: ``(n,)`` per-example weights ε_i (a sum, not a mean: ε = 1/n gives the mean).
        lr: the step size α > 0.

    Returns:
        θ'(weights), a new dict with the same names.
    """
    if not isinstance(params, dict) or not params:
        raise ValueError(
            "params must be a non-empty dict of tensors by parameter name",
        )
    _check_batch(x, y)
    if weights.dim() != 1 or weights.shape[0] != y.shape[0]:
        raise ValueError(
            f"weights must be 1-D with one weight per example, shape "
            f"({y.shape[0]},), got {tuple(weights.shape)}",
        )
    if not lr > 0:
        raise ValueError(
            f"lr (the look-ahead step size α) must be positive, got {lr}",
        )

    def weighted_loss(p: Params) -> torch.Tensor:
        losses = F.cross_entropy(
            forward_with(model, p, x),
            y,
            reduction="none",
        )
        return (weights * losses).sum()

    grads = grad(weighted_loss)(params)
    return {k: w - lr * grads[k] for k, w in params.items()}


def example_weights(
    model: nn.Module,
    params: Params,
    x: torch.Tensor,
    y: torch.Tensor,
    val_x: torch.Tensor,
    val_y: torch.Tensor,
    lr: float,
) -> torch.Tensor:
    """Per-example weights of a training batch from the meta-gradient of a clean validation loss.

    ε = 0 (requiring grad), θ' = :func:`weighted_step` (θ, ε), g = ∂ mean-CE(val; θ') / ∂ε,
    w̃ = max(-g, 0), w = w̃ / Σ w̃ (Ren et al., 2018, algorithm 1).

    Args:
        model, params, x, y, lr: as in :func:`weighted_step`.
        val_x: ``(m, ...)`` clean validation inputs; val_y: ``(m,)`` their long labels.

    Returns:
        ``(n,)`` detached non-negative weights summing to 1, or all zero when no example's
        gradient agrees with the validation gradient.
    """
    _check_batch(val_x, val_y, "val_x, val_y")
    dtype = torch.get_default_dtype()
    if params:
        dtype = next(iter(params.values())).dtype
    eps = torch.zeros(
        y.shape[0],
        dtype=dtype,
        device=y.device,
        requires_grad=True,
    )
    with torch.enable_grad():
        fast = weighted_step(model, params, x, y, eps, lr)
        val_loss = F.cross_entropy(forward_with(model, fast, val_x), val_y)
        (g,) = torch.autograd.grad(val_loss, eps)
    w = torch.clamp(-g, min=0)
    total = w.sum()
    return (w / total if total > 0 else w).detach()


def _descend(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def plain_step(model: nn.Module, optimizer: torch.optim.Optimizer, x, y) -> dict:
    """One ordinary training step on the mean cross-entropy; returns ``{"loss": float}``."""
    _check_batch(x, y)
    loss = F.cross_entropy(model(x), y)
    _descend(optimizer, loss)
    return {"loss": loss.item()}


def small_loss_step(model: nn.Module, optimizer: torch.optim.Optimizer, x, y, rate: float) -> dict:
    """A training step on the ``1 - rate`` fraction of the batch with the smallest losses.

    The "drop the high-loss examples" baseline: noisy labels tend to have high losses, so
    discarding the ``round(rate * n)`` largest losses of each batch drops many of them. It needs
    the noise rate, which this baseline is *given*; reweighting needs clean validation data.

    Returns:
        ``{"loss": mean loss of the kept examples, "kept": (n,) bool mask}``.
    """
    _check_batch(x, y)
    _check_rate(rate)
    losses = F.cross_entropy(model(x), y, reduction="none")
    n_keep = max(1, y.shape[0] - round(rate * y.shape[0]))
    kept = torch.zeros_like(y, dtype=torch.bool)
    kept[losses.detach().argsort()[:n_keep]] = True
    loss = losses[kept].mean()
    _descend(optimizer, loss)
    return {"loss": loss.item(), "kept": kept}


def reweighted_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x,
    y,
    val_x,
    val_y,
    lr: float,
) -> dict:
    """One training step of learning to reweight: weights from :func:`example_weights`, then
    the optimizer's step on Σ_i w_i ℓ_i(θ).

    Args:
        lr: the look-ahead step size α (it only scales g, so it does not change the weights).

    Returns:
        ``{"loss": weighted loss, "mean_weight": mean of w, "weights": (n,) w}``.
    """
    w = example_weights(
        model,
        dict(model.named_parameters()),
        x,
        y,
        val_x,
        val_y,
        lr,
    )
    loss = (w * F.cross_entropy(model(x), y, reduction="none")).sum()
    _descend(optimizer, loss)
    return {
        "loss": loss.item(),
        "mean_weight": w.mean().item(),
        "weights": w,
    }


def flip_labels(
    y: torch.Tensor, n_classes: int, rate: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip ``round(rate * n)`` labels, chosen at random, each to a different class at random.

    Args:
        y: ``(n,)`` long labels in ``0..n_classes-1`` (on the CPU, like ``generator``).
        n_classes: number of classes (at least 2, so that a different class exists).
        rate: the fraction of labels to flip, in [0, 1).
        generator: the source of randomness.

    Returns:
        ``(noisy_y, flipped)``: ``(n,)`` new labels and the ``(n,)`` bool mask of flipped ones.
    """
    _check_rate(rate)
    if n_classes < 2:
        raise ValueError(f"flipping a label needs n_classes >= 2, got {n_classes}")
    _check_batch(y, y, "y")
    if y.numel() and not 0 <= y.min() <= y.max() < n_classes:
        raise ValueError(f"y must be (n,) long labels in 0..{n_classes - 1}")
    n = y.shape[0]
    flipped = torch.zeros(n, dtype=torch.bool)
    flipped[torch.randperm(n, generator=generator)[: round(rate * n)]] = True
    # adding 1..C-1 modulo C lands uniformly on the other C-1 classes
    shift = torch.randint(1, n_classes, (n,), generator=generator)
    noisy = torch.where(flipped, (y + shift) % n_classes, y)
    return noisy, flipped


def train(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    method: str,
    steps: int,
    batch_size: int,
    generator: torch.Generator,
    lr: float = 0.1,
    momentum: float = 0.9,
    val: tuple[torch.Tensor, torch.Tensor] | None = None,
    rate: float = 0.0,
) -> dict:
    """Train ``model`` in place by SGD with momentum on random minibatches of ``(x, y)``.

    Args:
        method: ``"plain"``, ``"small_loss"`` (drops the ``rate`` fraction of highest losses)
            or ``"reweight"`` (needs ``val = (val_x, val_y)``, clean).
        steps, batch_size: minibatches drawn without replacement within each epoch.
        lr, momentum: of the SGD optimizer; ``lr`` is also reweighting's look-ahead α.

    Returns:
        ``{"loss": [per step], "mean_weight": (N,)}``, the weight each training example got,
        averaged over the steps that drew it (``"reweight"`` only; NaN otherwise or if never
        drawn).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "reweight" and val is None:
        raise ValueError("reweighting needs clean validation data: pass val=(val_x, val_y)")
    _check_batch(x, y)
    _check_rate(rate)
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be at least 1, got {steps}, {batch_size}")
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    n = y.shape[0]
    batch_size = min(batch_size, n)  # a batch bigger than the data set is the data set
    weight_sum = torch.zeros(n, dtype=torch.float64)
    drawn = torch.zeros(n, dtype=torch.float64)
    losses, order = [], torch.empty(0, dtype=torch.long)
    for _ in range(steps):
        if len(order) < batch_size:
            order = torch.cat([order, torch.randperm(n, generator=generator)])
        idx, order = order[:batch_size], order[batch_size:]
        xb, yb = x[idx.to(x.device)], y[idx.to(y.device)]
        if method == "plain":
            out = plain_step(model, optimizer, xb, yb)
        elif method == "small_loss":
            out = small_loss_step(model, optimizer, xb, yb, rate)
        else:
            out = reweighted_step(model, optimizer, xb, yb, *val, lr=lr)
            weight_sum.index_add_(0, idx, out["weights"].double().cpu())
            drawn.index_add_(0, idx, torch.ones(len(idx), dtype=torch.float64))
        losses.append(out["loss"])
    mean_weight = weight_sum / drawn if method == "reweight" else torch.full((n,), float("nan"))
    return {"loss": losses, "mean_weight": mean_weight}
