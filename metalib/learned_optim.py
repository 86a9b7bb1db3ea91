"""Learned optimizers: a coordinate-wise LSTM that maps gradients to updates.

Andrychowicz et al. (2016), "Learning to learn by gradient descent by gradient descent":

* :func:`preprocess_gradients` squashes each gradient coordinate into two numbers of order one
  (its log-magnitude and its sign), so that one network can read gradients of any scale;
* :class:`LSTMOptimizer` is a two-layer LSTM applied to every coordinate separately, with weights
  shared across coordinates: it works on parameter vectors of any size and keeps, per coordinate,
  a hidden state that can learn momentum-like behaviour;
* :func:`unroll` runs it on a batch of problems and returns the meta-loss (the sum of the
  optimizee's losses along the trajectory), differentiable with respect to the LSTM's weights;
* :func:`meta_train` trains the LSTM with Adam by truncated backpropagation through time.

:func:`learned_curve` runs the trained LSTM without building a meta-graph. The problem families,
and the hand-designed baselines run on them (:func:`metalib.optimizees.torch_curve`,
:func:`metalib.optimizees.tune_lr`), are in :mod:`metalib.optimizees`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from metalib.train import History, fit

State = list[tuple[Tensor, Tensor]]
LossFn = Callable[[Tensor, int], Tensor]


def preprocess_gradients(grad: Tensor, p: float = 10.0) -> Tensor:
    """The paper's gradient preprocessing: two numbers of order one per coordinate.

    ``(log|g| / p, sign g)`` when ``|g| >= e^-p``, else ``(-1, e^p g)`` (Andrychowicz et al.,
    2016, appendix A). Large gradients are read on a log scale, tiny ones linearly.

    Args:
        grad: ``(...)`` gradients, any shape.
        p: the cut-off exponent (10 in the paper), positive.

    Returns:
        ``(..., 2)`` preprocessed gradients.
    """
    if p <= 0:
        raise ValueError(f"p must be positive (the paper uses 10), got {p}")
    cut = math.exp(-p)
    big = grad.abs() >= cut
    # The clamp keeps log finite (and its gradient NaN-free) on the branch
    # torch.where discards.
    log_part = torch.where(
        big,
        grad.abs().clamp(min=cut).log() / p,
        -torch.ones_like(grad),
    )
    sign_part = torch.where(big, torch.sign(grad), grad * math.exp(p))
    return torch.stack([log_part, sign_part], dim=-1)


class LSTMOptimizer(nn.Module):
    """A coordinate-wise two-layer LSTM optimizer (Andrychowicz et al., 2016).

    Every parameter coordinate is one row of the LSTM's batch: the same small network reads
    each coordinate's gradient and its own hidden state and writes that coordinate's update.

    Args:
        hidden_size: units per LSTM layer (20 in the paper).
        num_layers: stacked LSTM cells (2 in the paper).
        preprocess: feed :func:`preprocess_gradients` (2 inputs) instead of the raw gradient (1).
        p: the preprocessing cut-off exponent.
        output_scale: the update is this times the linear head's output (0.1 in the paper).

    Example:
        >>> opt = LSTMOptimizer()
        >>> state = opt.initial_state(5, torch.zeros(5))
        >>> update, state = opt(torch.randn(5), state)
        >>> update.shape
        torch.Size([5])
    """

    def __init__(
        self,
        hidden_size: int = 20,
        num_layers: int = 2,
        preprocess: bool = True,
        p: float = 10.0,
        output_scale: float = 0.1,
    ) -> None:
        super().__init__()
        if hidden_size < 1 or num_layers < 1:
            raise ValueError(
                "hidden_size and num_layers must be at least 1, "
                f"got {hidden_size}, {num_layers}"
            )  # fmt: skip
        if p <= 0:
            raise ValueError(
                f"p must be positive (the paper uses 10), got {p}",
            )
        self.hidden_size = hidden_size
        self.preprocess = preprocess
        self.p = p
        self.output_scale = output_scale
        sizes = [2 if preprocess else 1] + [hidden_size] * num_layers
        pairs = zip(sizes[:-1], sizes[1:], strict=True)
        self.cells = nn.ModuleList(nn.LSTMCell(a, b) for a, b in pairs)
        self.head = nn.Linear(hidden_size, 1)

    def initial_state(self, n_coords: int, like: Tensor) -> State:
        """Zero ``(h, c)`` per layer, each ``(n_coords, hidden_size)``, on ``like``'s device."""
        if n_coords < 1:
            raise ValueError(f"n_coords must be at least 1, got {n_coords}")
        dtype = self.head.weight.dtype
        zeros = torch.zeros(
            n_coords,
            self.hidden_size,
            device=like.device,
            dtype=dtype,
        )
        return [(zeros, zeros) for _ in self.cells]

    def forward(self, grad: Tensor, state: State) -> tuple[Tensor, State]:
        """One step: gradients in, updates out, for every coordinate at once.

        Args:
            grad: ``(n_coords,)`` flat gradients.
            state: ``(h, c)`` per layer, each ``(n_coords, hidden_size)``.

        Returns:
            ``(update, new_state)``: ``(n_coords,)`` updates to *add* to the parameters, and the
            new state.
        """
        if grad.dim() != 1:
            raise ValueError(
                f"grad must be flat (n_coords,), got shape "
                f"{tuple(grad.shape)}; pass grad.flatten() and reshape the "
                "update",
            )
        other_rows = (h.shape[0] != len(grad) for h, _ in state)
        if len(state) != len(self.cells) or any(other_rows):
            raise ValueError(
                f"state must hold (h, c) for each of the {len(self.cells)} "
                f"layers with {len(grad)} rows; get one from "
                f"initial_state(n_coords, like)",
            )
        if self.preprocess:
            x = preprocess_gradients(grad, self.p)  # (n, 2)
        else:
            x = grad[:, None]  # (n, 1)
        new_state = []
        for cell, (h, c) in zip(self.cells, state, strict=True):
            h, c = cell(x, (h, c))
            new_state.append((h, c))
            x = h
        return self.output_scale * self.head(x).squeeze(-1), new_state


def detach_state(state: State) -> State:
    """The state cut from its graph: the truncation point of truncated BPTT."""
    return [(h.detach(), c.detach()) for h, c in state]


def _losses(loss_fn: LossFn, theta: Tensor, t: int) -> Tensor:
    loss = loss_fn(theta, t)
    if loss.shape != theta.shape[:1]:
        raise ValueError(
            f"loss_fn must return one loss per problem, shape ({theta.shape[0]},), got "
            f"{tuple(loss.shape)} at step {t}"
        )
    return loss


def unroll(
    optimizer: LSTMOptimizer,
    loss_fn: LossFn,
    theta: Tensor,
    steps: int,
    state: State | None = None,
    second_order: bool = False,
    start: int = 0,
) -> tuple[Tensor, Tensor, State]:
    """Run the learned optimizer for ``steps`` steps; return the differentiable meta-loss.

    With ``theta_0 = theta``, for ``t = 0 .. steps - 1``:
    ``g_t = d/d theta_t sum_b loss_fn(theta_t, start + t)[b]``,
    ``update_t, state = optimizer(g_t.flatten(), state)``,
    ``theta_{t+1} = theta_t + update_t.view(B, P)``, and the meta-loss is
    ``sum_{t=1..steps} mean_b loss_fn(theta_t, start + t)[b]`` (the paper's weights
    ``w_t = 1``). Each ``loss_fn(theta_t, start + t)`` is evaluated once and serves both as a
    meta-loss term and as the source of ``g_t``, so a stochastic loss uses the same minibatch for
    both. The loss at ``theta_0`` is not part of the meta-loss (no update can change it).

    Args:
        optimizer: the learned optimizer.
        loss_fn: ``loss_fn(theta (B, P), t) -> (B,)``, the B problems' losses at step t.
        theta: ``(B, P)`` starting parameters of B independent problems.
        steps: how many updates to unroll (the truncation length).
        state: the optimizer's state from the previous truncation, or None for zeros.
        second_order: keep the graph of ``g_t``, so the meta-gradient includes the Hessian
            terms; False (the paper's setting) treats every ``g_t`` as a constant.
        start: the step index of ``theta`` (the truncation's offset in a longer run).

    Returns:
        ``(meta_loss, theta_after, state_after)``: a scalar, ``(B, P)`` and the new state,
        all still attached to the graph (:func:`detach_state` truncates).
    """
    if theta.dim() != 2:
        raise ValueError(
            "theta must be (B, P): B problems of P parameters, "
            f"got {theta.shape}"
        )  # fmt: skip
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    n_problems, n_params = theta.shape
    if state is None:
        state = optimizer.initial_state(n_problems * n_params, theta)
    # a fresh start: the inner gradient needs a graph from theta
    if not theta.requires_grad:
        theta = theta.detach().requires_grad_(True)
    meta_loss = theta.new_zeros(())
    loss = _losses(loss_fn, theta, start)
    for t in range(steps):
        # retain_graph: loss (for t >= 1) is also a term of the meta-loss,
        # still to be differentiated; create_graph only when second
        # derivatives are wanted.
        (grad,) = torch.autograd.grad(
            loss.sum(),
            theta,
            retain_graph=True,
            create_graph=second_order,
        )
        update, state = optimizer(grad.flatten(), state)
        theta = theta + update.view(n_problems, n_params)
        loss = _losses(loss_fn, theta, start + t + 1)
        meta_loss = meta_loss + loss.mean()
    return meta_loss, theta, state


def meta_train(
    optimizer: LSTMOptimizer,
    sample: Callable[[torch.Generator], object],
    iterations: int,
    generator: torch.Generator,
    horizon: int = 100,
    truncation: int = 20,
    lr: float = 1e-3,
    desc: str = "meta-training",
) -> History:
    """Meta-train ``optimizer`` in place by truncated backpropagation through time, with Adam.

    Each iteration draws a fresh batch of problems, ``sample(generator)`` (an object with
    ``theta0 (B, P)`` and ``loss(theta, t) -> (B,)``), and optimizes them for ``horizon`` steps in
    ``horizon // truncation`` segments; after each segment Adam takes one step on the meta-loss
    of that segment (divided by its length), and the parameters and the LSTM state are detached
    (Andrychowicz et al., 2016, section 3).

    Args:
        optimizer: the learned optimizer, trained in place.
        sample: draws a batch of problems from the training distribution.
        iterations: how many batches of problems (each gives ``horizon // truncation`` updates).
        generator: the randomness of ``sample``.
        horizon: optimizee steps per batch of problems.
        truncation: optimizee steps per meta-gradient (must divide ``horizon``).
        lr: Adam's learning rate on the LSTM's weights.
        desc: the progress bar's label.

    Returns:
        A :class:`~metalib.train.History` with ``meta_loss`` (mean optimizee loss over the
        segment's steps) at every Adam step and ``final_loss`` at the end of each batch.
    """
    if iterations < 1:
        raise ValueError(f"iterations must be at least 1, got {iterations}")
    if truncation < 1 or horizon % truncation:
        raise ValueError(
            f"truncation ({truncation}) must be "
            f"a positive divisor of horizon ({horizon})"
        )  # fmt: skip
    segments = horizon // truncation
    adam = torch.optim.Adam(optimizer.parameters(), lr=lr)
    run: dict[str, object] = {}

    def step(i: int) -> dict[str, float]:
        k = i % segments
        if k == 0:
            problems = sample(generator)
            run.update(problems=problems, theta=problems.theta0, state=None)
        problems = run["problems"]
        meta_loss, theta, state = unroll(
            optimizer,
            problems.loss,
            run["theta"],
            truncation,
            run["state"],
            start=k * truncation,
        )
        adam.zero_grad()
        (meta_loss / truncation).backward()
        adam.step()
        run.update(theta=theta.detach(), state=detach_state(state))
        metrics = {"meta_loss": meta_loss.item() / truncation}
        if k == segments - 1:
            with torch.no_grad():
                final = problems.loss(run["theta"], horizon)
                metrics["final_loss"] = final.mean().item()
        return metrics

    return fit(step, iterations * segments, desc=desc)


def learned_curve(optimizer: LSTMOptimizer, loss_fn: LossFn, theta0: Tensor, steps: int) -> Tensor:
    """The losses of B problems optimized by the learned optimizer, without a meta-graph.

    Args:
        optimizer: the learned optimizer (not changed).
        loss_fn: ``loss_fn(theta (B, P), t) -> (B,)``.
        theta0: ``(B, P)`` starting parameters.
        steps: how many updates.

    Returns:
        ``(steps + 1, B)`` losses on the CPU (a measurement, for tables and figures): row t is
        ``loss_fn(theta_t, t)``, as in :func:`unroll`.
    """
    if theta0.dim() != 2 or steps < 1:
        raise ValueError(f"need theta0 (B, P) and steps >= 1, got {tuple(theta0.shape)}, {steps}")
    theta = theta0.detach()
    state = optimizer.initial_state(theta.numel(), theta)
    losses = []
    for t in range(steps + 1):
        with torch.enable_grad():  # the optimizee's gradient, even if called under no_grad
            theta = theta.detach().requires_grad_(True)
            loss = _losses(loss_fn, theta, t)
            if t < steps:
                (grad,) = torch.autograd.grad(loss.sum(), theta)
        losses.append(loss.detach())
        if t == steps:
            break
        with torch.no_grad():
            update, state = optimizer(grad.flatten(), state)
            theta = theta + update.view_as(theta)
    return torch.stack(losses).cpu()
