"""MAML, first-order MAML and Reptile: one functional inner loop, per task or vectorised over tasks.

Model-agnostic meta-learning (Finn, Abbeel and Levine, 2017, "Model-Agnostic Meta-Learning for
Fast Adaptation of Deep Networks") learns an initialisation θ from which a few gradient steps on a
task's support set D_i^tr give low loss on its query set D_i^ts:

    min_θ  Σ_i L(θ - α ∇_θ L(θ, D_i^tr), D_i^ts).

Differentiating through the inner step brings in second derivatives (a Hessian-vector product per
inner step); first-order MAML drops them by treating the inner gradients as constants. Reptile
(Nichol, Achiam and Schulman, 2018, "On First-Order Meta-Learning Algorithms") does not
differentiate at all: it runs SGD on each task to weights W_i and moves θ towards them,
θ ← θ + β (1/n) Σ_i (W_i - θ).

Everything here is a pure function of a parameter dict (:func:`metalib.nets.forward_with`, i.e.
``torch.func.functional_call``) and the inner gradients come from ``torch.func.grad``. Whether the
outer graph runs through them (second order) is the only difference between the two MAMLs, and
the same :func:`query_outputs` runs one task at a time or under ``torch.func.vmap`` over the task
axis of an :class:`~metalib.tasks.Episode`.

The inner step size is a number (MAML's α) or one tensor of step sizes per parameter: the inner
loop of Meta-SGD (:mod:`metalib.meta_sgd`), which meta-learns those tensors with θ.

BatchNorm: the backbones normalise every batch with its own statistics
(:class:`~metalib.nets.BatchStatNorm2d`), MAML's convention. Inside the inner loop the support set
is normalised by the support's statistics, and the query set by the statistics of the whole query
batch, so predictions are *transductive*: a query's label depends on the other queries it is
scored with. No running statistics are kept, so nothing learned on one task leaks into the next
and the inner loop stays a pure function (a running-average buffer updated in place would break
``vmap`` and the second-order graph).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import grad, vmap

from metalib.nets import forward_with, with_batch_norm_kernel
from metalib.tasks import Episode
from metalib.train import accuracy

Params = dict[str, torch.Tensor]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``loss_fn(outputs, targets) -> scalar``, e.g. ``F.cross_entropy`` or ``F.mse_loss``."""


@dataclass(frozen=True)
class MAMLConfig:
    """The inner loop of MAML and how the outer loop runs it.

    Attributes:
        inner_steps: gradient steps on the support set (1 to 10 in the papers).
        inner_lr: the inner step size α (0.01 for sinusoids, 0.4 for Omniglot in Finn et al.).
        first_order: drop the second derivatives (first-order MAML).
        vectorise: run the tasks of an episode under ``torch.func.vmap`` instead of one after
            another. ``None`` picks the faster path for the device: vectorised on a GPU, a
            per-task loop on a CPU (``benchmarks/maml_speed.py`` measures both).
        fast_loop: on the per-task path, arrange each task to run faster on a CPU, at equal
            values and gradients: channels-last memory layout, the fused batch-norm kernel
            wherever no second derivative passes through it (:func:`_fast_query_outputs`).
            ``False`` runs the plain loop of :func:`query_outputs`, the reference the benchmark
            times against. The vectorised path ignores it.
    """

    inner_steps: int = 1
    inner_lr: float = 0.4
    first_order: bool = False
    vectorise: bool | None = None
    fast_loop: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.inner_steps, bool) or not isinstance(self.inner_steps, int):
            raise ValueError(f"inner_steps must be an int, got {self.inner_steps!r}")
        if self.inner_steps < 0:
            raise ValueError(f"inner_steps must be 0 or more, got {self.inner_steps}")
        if not self.inner_lr > 0:
            raise ValueError(f"inner_lr must be positive, got {self.inner_lr}")
        if not isinstance(self.fast_loop, bool):
            raise ValueError(f"fast_loop must be True or False, got {self.fast_loop!r}")


def _check_params(params: Params) -> None:
    if not isinstance(params, dict) or not params:
        raise ValueError(
            "params must be a non-empty dict of tensors by parameter name, e.g. "
            "dict(model.named_parameters())"
        )


def check_step_sizes(params: Params, lr: Params) -> None:
    """Raise ``ValueError`` unless ``lr`` has one step-size tensor per name of ``params``.

    Each ``lr[k]`` must have ``params[k]``'s shape or broadcast to it (a 0-d tensor is one step
    size for the whole tensor, as in MAML; the full shape is one per weight, as in Meta-SGD).
    """
    if not isinstance(lr, dict) or set(lr) != set(params):
        got = sorted(lr)[:3] if isinstance(lr, dict) else type(lr).__name__
        raise ValueError(
            f"per-parameter step sizes must be a dict with exactly the names of params "
            f"({sorted(params)[:3]}...), got {got}"
        )
    for k, w in params.items():
        a = lr[k]
        if not isinstance(a, torch.Tensor):
            raise ValueError(f"step size {k!r} must be a tensor, got {type(a).__name__}")
        try:
            fits = torch.broadcast_shapes(a.shape, w.shape) == w.shape
        except RuntimeError:
            fits = False
        if not fits:
            raise ValueError(
                f"step size {k!r} has shape {tuple(a.shape)}, which does not broadcast to the "
                f"parameter's shape {tuple(w.shape)}; use torch.full_like(params[{k!r}], lr)"
            )


def adapt(
    model: nn.Module,
    params: Params,
    x: torch.Tensor,
    y: torch.Tensor,
    loss_fn: LossFn,
    steps: int,
    lr: float | Params,
    first_order: bool = False,
) -> Params:
    """The inner loop: ``steps`` gradient steps of size ``lr`` on one task's support set.

    θ_0 = params, θ_{k+1} = θ_k - lr ∇ L(θ_k; x, y). The gradients are computed with
    ``torch.func.grad``, so they stay differentiable for an outer ``backward`` (second order);
    with ``first_order`` they are detached, and the outer gradient flows only through the
    identity path θ_k -> θ_{k+1} (and, for step-size tensors, through ``lr``).

    ``lr`` is MAML's scalar α, or one tensor of step sizes per parameter, multiplied element by
    element (θ_{k+1} = θ_k - α ∘ ∇ L): Meta-SGD's inner loop (:mod:`metalib.meta_sgd`), whose
    outer gradient reaches α as well.

    Args:
        model: the network; never modified.
        params: the starting weights θ by name (any subset of the model's parameters; the
            rest stay the model's own and are not adapted).
        x: support inputs of one task, ``(n, ...)`` as ``model`` expects them.
        y: support targets, ``(n,)`` labels or ``(n, d)`` regression targets.
        loss_fn: ``loss_fn(model_outputs, y) -> scalar``.
        steps: number of inner steps (0 returns ``params`` unchanged).
        lr: inner step size α: a number, or a dict with a tensor per name of ``params``
            (:func:`check_step_sizes`).
        first_order: detach the inner gradients.

    Returns:
        The adapted weights θ_steps, a new dict with the same names.
    """
    _check_params(params)
    if isinstance(lr, dict):
        check_step_sizes(params, lr)
    # a float stays a Python scalar: MAML's update and speed are unchanged
    step = lr if isinstance(lr, dict) else dict.fromkeys(params, lr)

    def support_loss(p: Params) -> torch.Tensor:
        return loss_fn(forward_with(model, p, x), y)

    fast = params
    for _ in range(steps):
        grads = grad(support_loss)(fast)
        if first_order:
            grads = {k: g.detach() for k, g in grads.items()}
        fast = {k: w - step[k] * grads[k] for k, w in fast.items()}
    return fast


def query_outputs(
    model: nn.Module,
    params: Params,
    support_x: torch.Tensor,
    support_y: torch.Tensor,
    query_x: torch.Tensor,
    loss_fn: LossFn,
    config: MAMLConfig,
    lr: Params | None = None,
) -> torch.Tensor:
    """Adapt to one task's support set, then run the adapted network on its queries.

    Shapes are of one task (no task axis): support ``(n_s, ...)``, queries ``(n_q, ...)``.
    ``lr``: per-parameter step sizes used instead of ``config.inner_lr`` (Meta-SGD).
    Returns the model's outputs on the queries, ``(n_q, ...)`` (logits or predictions).
    """
    steps, lr = config.inner_steps, config.inner_lr if lr is None else lr
    fast = adapt(model, params, support_x, support_y, loss_fn, steps, lr, config.first_order)
    return forward_with(model, fast, query_x)


def _fast_query_outputs(
    model: nn.Module,
    params: Params,
    support_x: torch.Tensor,
    support_y: torch.Tensor,
    query_x: torch.Tensor,
    loss_fn: LossFn,
    config: MAMLConfig,
    lr: Params | None = None,
) -> torch.Tensor:
    """:func:`query_outputs` for one task outside ``vmap``, arranged to run faster on a CPU.

    The same values and gradients up to float rounding; two changes, measured in
    ``benchmarks/maml_speed.py``: images and convolution weights go in channels-last memory,
    where oneDNN's convolutions and max-pooling are several times faster than on the default
    layout (and no weight is converted back and forth on every call), and the batch norm uses
    PyTorch's fused kernel wherever no second derivative passes through it -- the query forward,
    and the support forwards of first-order MAML. Second-order support forwards keep the plain
    operations: the fused kernel's double backward is slower. The kernels are chosen here,
    whatever ``model`` was built with (:func:`metalib.nets.with_batch_norm_kernel`).
    """
    support_x, query_x = _channels_last(support_x), _channels_last(query_x)
    params = {k: _channels_last(v) for k, v in params.items()}  # differentiable copies
    steps, lr = config.inner_steps, config.inner_lr if lr is None else lr
    if isinstance(lr, dict):  # step sizes in the layout of their weights
        lr = {k: _channels_last(v) for k, v in lr.items()}
    inner = with_batch_norm_kernel(model, fused=config.first_order)
    fast = adapt(inner, params, support_x, support_y, loss_fn, steps, lr, config.first_order)
    return forward_with(with_batch_norm_kernel(model, fused=True), fast, query_x)


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    """4-D tensors (images, conv weights) copied into channels-last memory; others unchanged."""
    if x.dim() != 4:
        return x
    # empty_like gives channels-last strides even for C = 1, where .contiguous(memory_format=...)
    # sees nothing to do and leaves the default layout
    return torch.empty_like(x, memory_format=torch.channels_last).copy_(x)


def _vectorise(config: MAMLConfig, episode: Episode) -> bool:
    if config.vectorise is not None:
        return config.vectorise
    return episode.support_x.device.type == "cuda"


def episode_outputs(
    model: nn.Module,
    params: Params,
    episode: Episode,
    loss_fn: LossFn,
    config: MAMLConfig,
    lr: Params | None = None,
) -> torch.Tensor:
    """Query outputs of every task of ``episode``, each adapted on its own support set.

    Runs :func:`query_outputs` per task, or once under ``torch.func.vmap`` over the task axis
    (``config.vectorise``); both give the same values and gradients. The per-task loop runs its
    faster arrangement :func:`_fast_query_outputs` unless ``config.fast_loop`` is off. ``lr``
    (per-parameter step sizes, shared by all tasks) replaces ``config.inner_lr`` (Meta-SGD).

    Returns:
        ``(T, n_q, ...)``, e.g. logits ``(T, N*Q, N)``.
    """
    _check_params(params)
    e = episode
    if config.fast_loop and not _vectorise(config, e):
        per_task = _fast_query_outputs
    else:  # vmap needs the plain batch-norm kernel; so does the plain loop, the reference
        model, per_task = with_batch_norm_kernel(model, fused=False), query_outputs

    def one(sx: torch.Tensor, sy: torch.Tensor, qx: torch.Tensor) -> torch.Tensor:
        return query_outputs(model, params, sx, sy, qx, loss_fn, config, lr)

    if _vectorise(config, e):
        return vmap(one)(e.support_x, e.support_y, e.query_x)
    return torch.stack(
        [
            per_task(
                model, params, e.support_x[t], e.support_y[t], e.query_x[t], loss_fn, config, lr
            )
            for t in range(len(e))
        ]
    )


def task_losses(
    model: nn.Module,
    params: Params,
    episode: Episode,
    loss_fn: LossFn,
    config: MAMLConfig,
    lr: Params | None = None,
) -> torch.Tensor:
    """The query loss after adaptation, one per task: ``(T,)``; their mean is MAML's objective.

    ``lr``: per-parameter step sizes in place of ``config.inner_lr`` (:func:`episode_outputs`).
    """
    outputs = episode_outputs(model, params, episode, loss_fn, config, lr)
    if _vectorise(config, episode):
        return vmap(loss_fn)(outputs, episode.query_y)
    return torch.stack([loss_fn(o, y) for o, y in zip(outputs, episode.query_y, strict=True)])


def meta_gradient(
    model: nn.Module, params: Params, episode: Episode, loss_fn: LossFn, config: MAMLConfig
) -> tuple[Params, torch.Tensor]:
    """The gradient of the mean adapted query loss with respect to the initial weights.

    On the per-task path each task's graph is built, differentiated and freed before the next
    (memory of one task at a time); the vectorised path differentiates all tasks at once.

    Args:
        params: the initial weights θ; they must require gradients.

    Returns:
        ``(grads, losses)``: ∇_θ (1/T) Σ_i L_i by name, and the per-task query losses ``(T,)``
        (detached).
    """
    _check_params(params)
    missing = [k for k, v in params.items() if not v.requires_grad]
    if missing:
        raise ValueError(
            f"params {missing[:3]} do not require gradients; pass "
            "{k: v.detach().requires_grad_() ...} or the model's own parameters"
        )
    names, leaves = list(params), list(params.values())
    grads, losses = mean_task_gradients(
        leaves, episode, config, lambda ep: task_losses(model, params, ep, loss_fn, config)
    )
    return dict(zip(names, grads, strict=True)), losses


def mean_task_gradients(
    leaves: list[torch.Tensor],
    episode: Episode,
    config: MAMLConfig,
    losses_of: Callable[[Episode], torch.Tensor],
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """∇ (1/T) Σ_i L_i with respect to ``leaves`` (zeros for unused ones), and the losses.

    ``losses_of(episode) -> (T,)`` adapted query losses. On the per-task path each task's graph
    is built, differentiated and freed before the next (memory of one task at a time); the
    vectorised path (:data:`MAMLConfig.vectorise`) differentiates all tasks at once. Shared by
    MAML's and Meta-SGD's meta-gradients.

    Returns:
        ``(grads, losses)``: one gradient per leaf, in order, and the losses ``(T,)`` detached.
    """
    if _vectorise(config, episode):
        losses = losses_of(episode)
        grads = torch.autograd.grad(losses.mean(), leaves, allow_unused=True)
        grads = [
            torch.zeros_like(v) if g is None else g for v, g in zip(leaves, grads, strict=True)
        ]
        return grads, losses.detach()
    total = [torch.zeros_like(v) for v in leaves]
    losses = []
    for t in range(len(episode)):
        loss = losses_of(episode.task(t))[0]
        grads = torch.autograd.grad(loss / len(episode), leaves, allow_unused=True)
        total = [a if g is None else a + g for a, g in zip(total, grads, strict=True)]
        losses.append(loss.detach())
    return total, torch.stack(losses)


def meta_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    episode: Episode,
    loss_fn: LossFn,
    config: MAMLConfig,
) -> dict[str, float]:
    """One MAML meta-update of ``model``'s parameters with ``optimizer`` (e.g. Adam).

    Returns:
        ``{"loss": mean query loss after adaptation}`` (before the update).
    """
    params = dict(model.named_parameters())
    grads, losses = meta_gradient(model, params, episode, loss_fn, config)
    optimizer.zero_grad(set_to_none=True)
    for k, p in params.items():
        p.grad = grads[k]
    optimizer.step()
    return {"loss": losses.mean().item()}


def reptile_update(params: Params, adapted: Params, outer_lr: float) -> Params:
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
            f"adapted weights {sorted(adapted)[:3]} do not match params {sorted(params)[:3]}"
        )
    out = {}
    for k, theta in params.items():
        w = adapted[k]
        if w.shape[1:] != theta.shape:
            raise ValueError(
                f"adapted[{k!r}] has shape {tuple(w.shape)}; expected (n_tasks, "
                f"{', '.join(map(str, theta.shape))})"
            )
        out[k] = (theta + outer_lr * (w - theta).mean(dim=0)).detach()
    return out


def reptile_step(
    model: nn.Module,
    episode: Episode,
    loss_fn: LossFn,
    inner_steps: int,
    inner_lr: float,
    outer_lr: float,
) -> dict[str, float]:
    """One Reptile meta-update of ``model``'s parameters, in place.

    Each task runs ``inner_steps`` of SGD (no graph) on all its data — support and query
    together, as Reptile needs no train/test split inside a task — to weights W_i, vectorised
    over the tasks; then θ ← θ + β (1/n) Σ_i (W_i - θ) (:func:`reptile_update`).

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

    def one(xi: torch.Tensor, yi: torch.Tensor) -> Params:
        return adapt(plain, theta, xi, yi, loss_fn, inner_steps, inner_lr, first_order=True)

    def loss_at_theta(xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        return loss_fn(forward_with(plain, theta, xi), yi)

    with torch.no_grad():
        before = vmap(loss_at_theta)(x, y)
    adapted = vmap(one)(x, y)
    new = reptile_update(theta, adapted, outer_lr)
    with torch.no_grad():
        for k, p in model.named_parameters():
            p.copy_(new[k])
    return {"loss": before.mean().item()}


def accuracy_fn(
    model: nn.Module, config: MAMLConfig, loss_fn: LossFn = F.cross_entropy
) -> Callable[[Episode], torch.Tensor]:
    """A function ``episode -> (T,) query accuracies`` after adaptation, for ``train.evaluate``.

    It adapts ``model``'s current weights (first order: evaluation needs no outer graph) on
    each task's support set and scores the query set; the episode is moved to the model's
    device.
    """
    device = next(model.parameters()).device
    eval_config = dataclasses.replace(config, first_order=True)

    def fn(episode: Episode) -> torch.Tensor:
        episode = episode.to(device)
        params = {k: v.detach() for k, v in model.named_parameters()}
        logits = episode_outputs(model, params, episode, loss_fn, eval_config)
        return accuracy(logits.detach(), episode.query_y)

    return fn


def adaptation_curve(
    model: nn.Module,
    episode: Episode,
    loss_fn: LossFn,
    lr: float | Params,
    steps: int,
    params: Params | None = None,
) -> torch.Tensor:
    """Query loss after 0, 1, ..., ``steps`` inner steps, per task: the MAML paper's figure 3.

    Adapts ``params`` (default: the model's current weights, detached) on each task's support
    set with plain gradient steps of size ``lr`` (a number, or per-parameter step sizes as in
    :func:`adapt`), vectorised over the tasks, and evaluates the query loss after every step.
    No outer graph is kept. A measurement for tables and figures, so it comes back on the CPU.

    Returns:
        ``(T, steps + 1)`` query losses on the CPU; column 0 is before any adaptation.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be an int of at least 0, got {steps!r}")
    if params is None:
        params = {k: v.detach() for k, v in model.named_parameters()}
    params = {k: v.detach() for k, v in params.items()}
    if isinstance(lr, dict):
        lr = {k: v.detach() for k, v in lr.items()}
    model = with_batch_norm_kernel(model, fused=False)  # the kernel vmap handles right

    def one(sx: torch.Tensor, sy: torch.Tensor, qx: torch.Tensor, qy: torch.Tensor):
        losses, fast = [], params
        for step in range(steps + 1):
            losses.append(loss_fn(forward_with(model, fast, qx), qy))
            if step < steps:
                fast = adapt(model, fast, sx, sy, loss_fn, 1, lr, first_order=True)
        return torch.stack(losses)

    e = episode
    return vmap(one)(e.support_x, e.support_y, e.query_x, e.query_y).detach().cpu()
