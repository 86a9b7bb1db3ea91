"""Meta-SGD: MAML whose inner step sizes are meta-learned too, one per parameter.

Li, Zhou, Chen and Li (2017), "Meta-SGD: Learning to Learn Quickly for Few-Shot Learning".
MAML's inner step θ' = θ - α ∇L(θ, D^tr) uses one scalar α, chosen by hand. Meta-SGD makes α a
tensor of θ's shape and learns it with θ, by the same outer objective:

    min_{θ, α}  Σ_i L(θ - α ∘ ∇_θ L(θ, D_i^tr), D_i^ts),

so the inner step can point in another direction than the gradient, and with another length per
weight. The meta-gradient with respect to α is cheap: for one inner step it is
-∇_θ L(θ, D^tr) ∘ ∇_θ' L(θ', D^ts), and it exists even for first-order MAML.

Everything else is MAML's: the inner loop is :func:`metalib.maml.adapt` with a dict of step-size
tensors in place of the scalar, in MAML's loop or under ``torch.func.vmap`` (the step sizes
are shared by all tasks, so ``vmap`` sees them as unbatched). With every step size equal to MAML's
α, Meta-SGD computes exactly what MAML computes (``tests/test_meta_sgd.py``). The price: twice the
parameters, and an elementwise product per inner step.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from metalib import maml
from metalib.data.base import ImageClasses
from metalib.maml import LossFn, MAMLConfig, Params, check_step_sizes
from metalib.runtime import Budget
from metalib.tasks import Episode, sample_episodes
from metalib.train import fit
from metalib.trained import Run


def inner_update(params: Params, grads: Params, lrs: Params) -> Params:
    """One Meta-SGD inner step: ``{k: params[k] - lrs[k] * grads[k]}``, elementwise.

    Args:
        params: the weights θ by name.
        grads: ∇L(θ) by name, each of its weight's shape.
        lrs: the step sizes α by name, each of its weight's shape (or broadcastable to it:
            a 0-d tensor gives MAML's scalar step).

    Returns:
        θ - α ∘ ∇L(θ), a new dict with the same names.
    """
    if set(grads) != set(params):
        raise ValueError(
            f"grads must have exactly the names of params "
            f"({sorted(params)[:3]}...), got {sorted(grads)[:3]}",
        )
    for k, g in grads.items():
        if g.shape != params[k].shape:
            raise ValueError(
                f"grads[{k!r}] has shape {tuple(g.shape)}; "
                f"expected {tuple(params[k].shape)}"
            )  # fmt: skip
    check_step_sizes(params, lrs)
    return {k: params[k] - lrs[k] * grads[k] for k in params}


def _key(name: str) -> str:
    # ParameterDict keys may not contain "."; "-" never occurs in a Python attribute name
    return name.replace(".", "-")


class MetaSGD(nn.Module):
    """A network and its learned inner step sizes, one tensor of its shape per parameter.

    Args:
        net: the network whose weights θ are adapted (e.g. ``MLP()`` or ``Conv4()``).
        init: every step size starts at this number (MAML's tuned α: Meta-SGD then starts as
            MAML); or ``(low, high)``, drawn uniformly, as the paper's [0.005, 0.1].
        generator: the randomness of a ``(low, high)`` initialisation.

    Attributes:
        net: the network.
        lrs: an ``nn.ParameterDict`` of the step sizes (keys: the names with "." -> "-");
            :meth:`step_sizes` gives them by the network's parameter names.

    Example:
        >>> model = MetaSGD(MLP(), init=0.01)
        >>> fast = maml.adapt(model.net, model.weights(), x, y, F.mse_loss, 1, model.step_sizes())
    """

    def __init__(
        self,
        net: nn.Module,
        init: float | tuple[float, float] = 0.01,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if isinstance(init, tuple):
            if len(init) != 2 or not init[0] < init[1]:
                raise ValueError(f"init as a range must be (low, high) with low < high, got {init}")
        elif not isinstance(init, int | float) or isinstance(init, bool):
            raise ValueError(f"init must be a number or a (low, high) pair, got {init!r}")
        self.net = net
        lrs = {}
        for name, p in net.named_parameters():
            a = torch.empty_like(p, requires_grad=False)  # keeps p's device, dtype and layout
            with torch.no_grad():
                if isinstance(init, tuple):
                    u = torch.rand(p.shape, generator=generator, dtype=p.dtype)
                    a.copy_(init[0] + (init[1] - init[0]) * u)
                else:
                    a.fill_(float(init))
            lrs[_key(name)] = nn.Parameter(a)
        self.lrs = nn.ParameterDict(lrs)

    def weights(self) -> Params:
        """The network's weights θ by name (the live parameters)."""
        return dict(self.net.named_parameters())

    def step_sizes(self) -> Params:
        """The step sizes α by the network's parameter names (the live parameters)."""
        return {name: self.lrs[_key(name)] for name, _ in self.net.named_parameters()}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The network's outputs at θ (before any adaptation)."""
        return self.net(x)


def meta_gradient(
    model: MetaSGD,
    episode: Episode,
    loss_fn: LossFn,
    config: MAMLConfig,
) -> tuple[Params, Params, torch.Tensor]:
    """Gradients of the mean adapted query loss with respect to θ and to the step sizes α.

    :func:`metalib.maml.meta_gradient` with the step sizes as the inner loop's ``inner_lr``,
    differentiated too (a chunk of tasks' inner loops and one task's queries at a time on a CPU,
    all tasks under ``vmap`` on the vectorised path).

    Args:
        model: the network and its step sizes.
        episode: ``T`` tasks.
        loss_fn: ``loss_fn(outputs, targets) -> scalar``.
        config: the inner loop as for MAML (steps, first order, vectorise, fast loop); its
            ``inner_lr`` is replaced by ``model``'s step sizes.

    Returns:
        ``(grads_theta, grads_lrs, losses)``: two dicts by the network's parameter names, and
        the per-task query losses ``(T,)`` (detached).
    """
    theta, lrs = model.weights(), model.step_sizes()
    config = dataclasses.replace(config, inner_lr=lrs)
    also = {f"step size of {k}": a for k, a in lrs.items()}
    grads, losses = maml.meta_gradient(
        model.net,
        theta,
        episode,
        loss_fn,
        config,
        also,
    )
    return (
        {k: grads[k] for k in theta},
        {k: grads[f"step size of {k}"] for k in theta},
        losses,
    )


def meta_step(
    model: MetaSGD,
    optimizer: torch.optim.Optimizer,
    episode: Episode,
    loss_fn: LossFn,
    config: MAMLConfig,
) -> dict[str, float]:
    """One Meta-SGD update of θ and α with ``optimizer`` (over ``model.parameters()``).

    Returns:
        ``{"loss": mean query loss after adaptation, "mean_lr": mean step size}``, both
        before the update.
    """
    grads_theta, grads_lrs, losses = meta_gradient(model, episode, loss_fn, config)
    lrs = model.step_sizes()
    with torch.no_grad():
        mean_lr = torch.cat([a.flatten() for a in lrs.values()]).mean().item()
    optimizer.zero_grad(set_to_none=True)
    for k, p in model.weights().items():
        p.grad = grads_theta[k]
        lrs[k].grad = grads_lrs[k]
    optimizer.step()
    return {"loss": losses.mean().item(), "mean_lr": mean_lr}


def detached(model: MetaSGD) -> tuple[Params, Params]:
    """``(θ, α)`` detached: the starting point and step sizes for adaptation at test time."""
    return (
        {k: v.detach() for k, v in model.weights().items()},
        {k: v.detach() for k, v in model.step_sizes().items()},
    )


def episode_outputs(
    model: MetaSGD, episode: Episode, loss_fn: LossFn, config: MAMLConfig
) -> torch.Tensor:
    """Query outputs ``(T, n_q, ...)`` after adapting with the learned step sizes (no graph)."""
    theta, lrs = detached(model)
    eval_config = dataclasses.replace(config, first_order=True, inner_lr=lrs)
    return maml.episode_outputs(model.net, theta, episode, loss_fn, eval_config).detach()


def step_size_summary(model: MetaSGD) -> list[tuple[str, torch.Tensor]]:
    """Each parameter tensor's step sizes, flattened, by name: ``[(name, (numel,)), ...]``."""
    return [(k, v.detach().flatten().cpu()) for k, v in model.step_sizes().items()]


@dataclass(frozen=True)
class Config:
    """The book's Meta-SGD on images (chapter 8): MAML's recipe (:class:`metalib.maml.Config`),
    with the step sizes started at MAML's tuned one and learned at ``lr_lr`` (Li et al., 2017).

    Attributes:
        base: the network, tasks, inner loop, outer rate and test steps: MAML's recipe.
        lr_lr: Adam's learning rate for the step sizes.
    """

    base: maml.Config = maml.Config()
    lr_lr: float = 0.04

    @classmethod
    def preset(cls, budget: Budget, **changes) -> Config:
        """MAML's recipe at ``budget`` with 160 meta-iterations (its ``steps`` for the default
        budget: chapters 7 and 8 train it beside many others) and a step-size rate of 0.04 (a
        tenth of α_0 = 0.4)."""
        base = maml.Config.preset(budget, steps=budget.pick(default=160, long=5_000))
        return cls(**{"base": base, **changes})


def build(config: Config, data: ImageClasses) -> MetaSGD:
    """MAML's untrained network with a step size of ``inner.inner_lr`` for every weight."""
    return MetaSGD(maml.build(config.base, data), init=config.base.inner.inner_lr)


def train(
    config: Config, data: ImageClasses, generator: torch.Generator, device: torch.device
) -> Run:
    """Meta-train the initialisation and the step sizes together (:func:`meta_step`)."""
    model, m = build(config, data).to(device), config.base
    groups = [
        {"params": model.net.parameters()},
        {"params": model.lrs.parameters(), "lr": config.lr_lr},
    ]
    opt = torch.optim.Adam(groups, lr=m.outer_lr)

    def step(_: int) -> dict[str, float]:
        ep = sample_episodes(data, m.n_way, m.shots, m.queries, m.tasks, generator)
        return meta_step(model, opt, ep.to(device), F.cross_entropy, m.inner)

    return Run(model, fit(step, m.steps, desc="Meta-SGD"))


def predict(config: Config, model: MetaSGD, episode: Episode) -> torch.Tensor:
    """Logits ``(T, N*Q, N)``: adapted by ``test_steps`` steps of the learned step sizes."""
    test = MAMLConfig(config.base.test_steps, config.base.inner.inner_lr, first_order=True)
    return episode_outputs(model, episode, F.cross_entropy, test).detach()
