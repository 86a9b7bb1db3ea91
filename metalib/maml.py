"""MAML and first-order MAML: one functional inner loop, per task or vectorised over tasks.

Model-agnostic meta-learning (Finn, Abbeel and Levine, 2017, "Model-Agnostic Meta-Learning for
Fast Adaptation of Deep Networks") learns an initialisation θ from which a few gradient steps on a
task's support set D_i^tr give low loss on its query set D_i^ts:

    min_θ  Σ_i L(θ - α ∇_θ L(θ, D_i^tr), D_i^ts).

Differentiating through the inner step brings in second derivatives (a Hessian-vector product per
inner step); first-order MAML drops them by treating the inner gradients as constants.

Everything here is a pure function of a parameter dict (:func:`metalib.nets.forward_with`, i.e.
``torch.func.functional_call``) and the inner gradients come from ``torch.func.grad``. Three
functions make the algorithm: :func:`adapt` (the inner loop), :func:`_task_outputs` (one task:
adapt, then run the queries) and :func:`meta_gradient`, which decides once how an episode's tasks
run: under ``torch.func.vmap`` over the task axis (a GPU), or in chunks on a CPU -- the support
steps of a few tasks under ``vmap``, then each task's queries on their own
(:func:`_adapt_tasks`). The inner step size
(:attr:`MAMLConfig.inner_lr`) is a number (MAML's α) or one tensor of step sizes per parameter:
the inner loop of Meta-SGD (:mod:`metalib.meta_sgd`), which meta-learns them with θ. Reptile,
which never differentiates through adaptation, is :mod:`metalib.reptile`.

BatchNorm: the backbones normalise every batch with its own statistics
(:class:`~metalib.nets.BatchStatNorm2d`), MAML's convention. Inside the inner loop the support set
is normalised by the support's statistics, and the query set by the statistics of the whole query
batch, so predictions are *transductive*: a query's label depends on the other queries it is
scored with. No running statistics are kept, so nothing learned on one task leaks into the next
and the inner loop stays a pure function.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import grad, vmap

from metalib.data.base import ImageClasses
from metalib.nets import Conv4, fast_conv4, forward_with, with_batch_norm_kernel
from metalib.runtime import Budget
from metalib.tasks import Episode, sample_episodes
from metalib.train import fit
from metalib.trained import Run, with_snapshots

Params = dict[str, torch.Tensor]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``loss_fn(outputs, targets) -> scalar``, e.g. ``F.cross_entropy`` or ``F.mse_loss``."""


@dataclass(frozen=True)
class MAMLConfig:
    """The inner loop of MAML and how the outer loop runs it.

    Attributes:
        inner_steps: gradient steps on the support set (1 to 10 in the papers).
        inner_lr: the inner step size: a number α (0.01 for sinusoids, 0.4 for Omniglot in Finn
            et al.), or a dict with one step-size tensor per parameter name (Meta-SGD; see
            :func:`check_step_sizes`), which the meta-gradient can differentiate.
        first_order: drop the second derivatives (first-order MAML).
        vectorise: run the tasks of an episode under ``torch.func.vmap`` instead of one after
            another. ``None`` picks the faster path for the device: vectorised on a GPU, the
            chunked loop on a CPU (``benchmarks/maml_speed.py`` measures both).
        fast_loop: on the loop, arrange the tasks to run faster on a CPU, at equal values and
            gradients: the support steps of ``chunk`` tasks together under ``vmap`` (a 5-image
            support batch is many small operations, whose per-call cost sets the time), then
            each task's queries alone in channels-last memory with the fused batch-norm kernel.
            ``False`` runs the plain loop, every task on its own: the reference the benchmark
            times against. The vectorised path ignores it.
        chunk: tasks adapted together on the fast loop (1: each on its own). More saves calls;
            the memory of their support steps' graphs grows with it.
    """

    inner_steps: int = 1
    inner_lr: float | Params = 0.4
    first_order: bool = False
    vectorise: bool | None = None
    fast_loop: bool = True
    chunk: int = 8

    def __post_init__(self) -> None:
        if isinstance(self.inner_steps, bool) or not isinstance(self.inner_steps, int):
            raise ValueError(f"inner_steps must be an int, got {self.inner_steps!r}")
        if self.inner_steps < 0:
            raise ValueError(f"inner_steps must be 0 or more, got {self.inner_steps}")
        if isinstance(self.inner_lr, dict):
            if not all(isinstance(a, torch.Tensor) for a in self.inner_lr.values()):
                raise ValueError("per-parameter step sizes must be tensors, one per name")
        elif not self.inner_lr > 0:
            raise ValueError(f"inner_lr must be positive, got {self.inner_lr}")
        if not isinstance(self.fast_loop, bool):
            raise ValueError(f"fast_loop must be True or False, got {self.fast_loop!r}")
        if isinstance(self.chunk, bool) or not isinstance(self.chunk, int) or self.chunk < 1:
            raise ValueError(f"chunk must be an int of at least 1, got {self.chunk!r}")


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


@dataclass(frozen=True)
class _Path:
    """How the tasks of an episode run, decided once per call (:func:`_path`)."""

    vectorise: bool
    inner: nn.Module  # the network of the support steps
    query: nn.Module  # the network run on the queries
    layout: Callable[[torch.Tensor], torch.Tensor]  # applied to the queries and their weights
    chunk: int = 0  # tasks adapted together under vmap on the loop; 0: the plain loop


def _path(model: nn.Module, config: MAMLConfig, episode: Episode) -> _Path:
    """The vectorised path, the plain loop or the fast loop, and each one's kernels and layout.

    Every support step runs the plain batch-norm operations: under ``vmap`` the fused kernel's
    batching rule is wrong, and a second-order step's double backward is faster on them. The
    fast loop adapts ``config.chunk`` tasks at a time under ``vmap`` (:func:`_adapt_tasks`),
    then runs each task's queries in channels-last memory, where oneDNN's convolutions and
    max-pooling are several times faster than on the default layout, with PyTorch's fused
    kernel (no second derivative passes through a query's forward). The kernels are chosen
    here, whatever ``model`` was built with (:func:`metalib.nets.with_batch_norm_kernel`);
    ``benchmarks/maml_speed.py`` times each choice.
    """
    vectorise = config.vectorise
    if vectorise is None:
        vectorise = episode.support_x.device.type == "cuda"
    plain = with_batch_norm_kernel(model, fused=False)
    if vectorise or not config.fast_loop:
        return _Path(vectorise, plain, plain, lambda x: x)
    fused = with_batch_norm_kernel(model, fused=True)
    return _Path(False, plain, fused, _channels_last, config.chunk)


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    """4-D tensors (images, conv weights) copied into channels-last memory; others unchanged."""
    if x.dim() != 4:
        return x
    # empty_like gives channels-last strides even for C = 1, where .contiguous(memory_format=...)
    # sees nothing to do and leaves the default layout
    return torch.empty_like(x, memory_format=torch.channels_last).copy_(x)


def _task_outputs(
    path: _Path,
    params: Params,
    support_x: torch.Tensor,
    support_y: torch.Tensor,
    query_x: torch.Tensor,
    loss_fn: LossFn,
    config: MAMLConfig,
) -> torch.Tensor:
    """One task: adapt ``params`` on its support set, then run the adapted network on its queries.

    Shapes are of one task (no task axis): support ``(n_s, ...)``, queries ``(n_q, ...)``.
    Returns the outputs on the queries, ``(n_q, ...)`` (logits or predictions).
    """
    fast = adapt(
        path.inner, params, support_x, support_y, loss_fn,
        config.inner_steps, config.inner_lr, config.first_order,
    )  # fmt: skip
    return _query_outputs(path, fast, query_x)


def _query_outputs(path: _Path, fast: Params, query_x: torch.Tensor) -> torch.Tensor:
    """The adapted network of one task on its queries ``(n_q, ...)``, in the path's layout."""
    cl = path.layout
    return forward_with(path.query, {k: cl(v) for k, v in fast.items()}, cl(query_x))


def _adapt_tasks(
    path: _Path,
    params: Params,
    support_x: torch.Tensor,
    support_y: torch.Tensor,
    loss_fn: LossFn,
    config: MAMLConfig,
) -> Params:
    """The inner loop of a few tasks at once, under ``vmap``: support ``(c, n_s, ...)`` in,
    fast weights ``(c, *shape)`` by name out (the fast loop's first half; one call does the
    work of ``c`` calls, which is what a 5-image support set's small operations need)."""

    def one(sx: torch.Tensor, sy: torch.Tensor) -> Params:
        lr, steps = config.inner_lr, config.inner_steps
        return adapt(path.inner, params, sx, sy, loss_fn, steps, lr, config.first_order)

    return vmap(one)(support_x, support_y)


def _add(total: list, new: Sequence) -> list:
    """Gradients summed name by name; ``None`` (a tensor the loss did not reach) adds nothing."""
    return [b if a is None else a if b is None else a + b for a, b in zip(total, new, strict=True)]


def _chunks(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def episode_outputs(
    model: nn.Module,
    params: Params,
    episode: Episode,
    loss_fn: LossFn,
    config: MAMLConfig,
) -> torch.Tensor:
    """Query outputs ``(T, n_q, ...)`` of every task of ``episode``, each adapted on its own
    support set (:func:`_task_outputs`, per task, under ``vmap`` or in chunks; the same values)."""
    _check_params(params)
    path, e = _path(model, config, episode), episode
    if path.vectorise:

        def one_task(sx, sy, qx):
            return _task_outputs(path, params, sx, sy, qx, loss_fn, config)

        return vmap(one_task)(e.support_x, e.support_y, e.query_x)
    if path.chunk:
        outputs = []
        for part in _chunks(len(e), path.chunk):
            fast = _adapt_tasks(
                path,
                params,
                e.support_x[part],
                e.support_y[part],
                loss_fn,
                config,
            )
            for i, qx in enumerate(e.query_x[part]):
                outputs.append(
                    _query_outputs(
                        path,
                        {k: v[i] for k, v in fast.items()},
                        qx,
                    ),
                )
        return torch.stack(outputs)
    return torch.stack(
        [
            _task_outputs(path, params, sx, sy, qx, loss_fn, config)
            for sx, sy, qx in zip(
                e.support_x,
                e.support_y,
                e.query_x,
                strict=True,
            )
        ],
    )


def task_losses(
    model: nn.Module, params: Params, episode: Episode, loss_fn: LossFn, config: MAMLConfig
) -> torch.Tensor:
    """The query loss after adaptation, one per task: ``(T,)``; their mean is MAML's objective."""
    outputs = episode_outputs(model, params, episode, loss_fn, config)
    return torch.stack([loss_fn(o, y) for o, y in zip(outputs, episode.query_y, strict=True)])


def meta_gradient(
    model: nn.Module,
    params: Params,
    episode: Episode,
    loss_fn: LossFn,
    config: MAMLConfig,
    also: Params | None = None,
) -> tuple[Params, torch.Tensor]:
    """The gradient of the mean adapted query loss with respect to the initial weights.

    The path is decided once (:func:`_path`). In the plain loop each task's graph is built,
    differentiated and freed before the next (memory of one task at a time); the vectorised
    path differentiates all tasks at once. The fast loop adapts a chunk of tasks together, then
    differentiates each task's query loss as far as that task's fast weights (freeing its query
    graph), and takes those gradients back through the chunk's inner loops in one backward:
    the memory of one task's queries plus a chunk's support steps.

    Args:
        params: the initial weights θ; they must require gradients.
        also: more tensors to differentiate with respect to, by names of the caller's choosing
            that differ from ``params``' (Meta-SGD's step sizes, which reach the loss through
            ``config.inner_lr``); their gradients come back in the same dict.

    Returns:
        ``(grads, losses)``: ∇ (1/T) Σ_i L_i by name (zeros for a tensor the loss does not
        use), and the per-task query losses ``(T,)`` (detached).
    """
    _check_params(params)
    missing = [k for k, v in params.items() if not v.requires_grad]
    if missing:
        raise ValueError(
            f"params {missing[:3]} do not require gradients; pass "
            "{k: v.detach().requires_grad_() ...} or the model's own "
            "parameters",
        )
    wrt = {**params, **(also or {})}
    if len(wrt) != len(params) + len(also or {}):
        raise ValueError(
            "the names in `also` must differ from those of `params`",
        )
    leaves, e, n = list(wrt.values()), episode, len(episode)
    path = _path(model, config, e)

    def loss(sx, sy, qx, qy) -> torch.Tensor:
        outputs = _task_outputs(path, params, sx, sy, qx, loss_fn, config)
        return loss_fn(outputs, qy)

    tasks = (e.support_x, e.support_y, e.query_x, e.query_y)
    if path.vectorise:
        losses = vmap(loss)(*tasks)
        grads = torch.autograd.grad(losses.mean(), leaves, allow_unused=True)
    elif path.chunk:
        grads, losses = [None] * len(leaves), []
        for part in _chunks(n, path.chunk):
            fast = _adapt_tasks(
                path,
                params,
                e.support_x[part],
                e.support_y[part],
                loss_fn,
                config,
            )
            # ∂L_i/∂(fast weights of task i), task by task
            outer = [[] for _ in fast]
            queries = zip(e.query_x[part], e.query_y[part], strict=True)
            for i, (qx, qy) in enumerate(queries):
                mine = {k: v[i].detach() for k, v in fast.items()}
                for v in mine.values():
                    v.requires_grad_()
                task_loss = loss_fn(_query_outputs(path, mine, qx), qy)
                g = torch.autograd.grad(
                    task_loss / n,
                    list(mine.values()),
                    allow_unused=True,
                    materialize_grads=True,
                )
                for seeds, gi in zip(outer, g, strict=True):
                    seeds.append(gi)
                losses.append(task_loss.detach())
            seeds = [torch.stack(s) for s in outer]
            new = torch.autograd.grad(
                list(fast.values()),
                leaves,
                seeds,
                allow_unused=True,
            )
            grads = _add(grads, new)
        losses = torch.stack(losses)
    else:  # one task's graph at a time
        grads, losses = [None] * len(leaves), []
        for task in zip(*tasks, strict=True):
            task_loss = loss(*task)
            new = torch.autograd.grad(
                task_loss / n,
                leaves,
                allow_unused=True,
            )
            grads = _add(grads, new)
            losses.append(task_loss.detach())
        losses = torch.stack(losses)
    pairs = zip(leaves, grads, strict=True)
    grads = [torch.zeros_like(v) if g is None else g for v, g in pairs]
    return dict(zip(wrt, grads, strict=True)), losses.detach()


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


@dataclass(frozen=True)
class Config:
    """The book's MAML on images (chapter 2, and chapter 7's comparison): Conv4-32, 5-way 1-shot
    tasks with 15 queries per class, 8 tasks per meta-batch, Adam on the initialisation.

    Attributes:
        inner: the inner loop in meta-training (steps, step size, first or second order).
        n_way, hidden: the tasks' N and the Conv4's channels.
        shots: K of the training tasks (the paper trains at the K it tests at).
        steps, tasks, queries: meta-iterations, tasks per meta-batch, queries per class.
        outer_lr: Adam's learning rate.
        test_steps: first-order inner steps of ``inner.inner_lr`` when adapting to a test task.
        snapshots: how many times :func:`train` keeps the weights (every ``steps // snapshots``
            meta-iterations), with the training seconds so far, for an accuracy-against-time
            curve; 0 for none.
    """

    inner: MAMLConfig = MAMLConfig(1, 0.4)
    n_way: int = 5
    hidden: int = 32
    shots: int = 1
    steps: int = 160
    tasks: int = 8
    queries: int = 15
    outer_lr: float = 3e-3
    test_steps: int = 3
    snapshots: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.shots, bool) or not isinstance(self.shots, int) or self.shots < 1:
            raise ValueError(f"shots must be an int of at least 1, got {self.shots!r}")
        if isinstance(self.snapshots, bool) or not isinstance(self.snapshots, int):
            raise ValueError(f"snapshots must be an int, got {self.snapshots!r}")
        if not 0 <= self.snapshots <= self.steps:
            raise ValueError(
                f"snapshots must be between 0 and steps ({self.steps}), got {self.snapshots}"
            )

    @classmethod
    def preset(cls, budget: Budget, first_order: bool = False, **changes) -> Config:
        """The book's recipe at ``budget``: 400 meta-iterations (5,000 for ``long``), where the
        steep rise of MAML's accuracy on Glyphs ends (85% at 5-way 1-shot after 3 test steps; 78%
        after 160 iterations, 87% after 640: ``benchmarks/results/accuracy_budget.md``). First order
        takes 160 iterations of 3 inner steps of 0.1 instead of 1 of 0.4: with one step it barely
        learns in 160 iterations (44.9% against 79.5% at 5-way 1-shot, ``benchmarks/compare.py``),
        and extra first-order steps cost little.

        A test task is adapted as in meta-training (``test_steps`` = the inner steps): more steps
        of a step size learned for one first overshoot on a 5-shot support set
        (``benchmarks/results/maml_test_steps.md``)."""
        inner = MAMLConfig(3, 0.1, first_order=True) if first_order else MAMLConfig(1, 0.4)
        steps = budget.pick(default=160 if first_order else 400, long=5_000)
        return cls(**{"inner": inner, "steps": steps, "test_steps": inner.inner_steps, **changes})


def build(config: Config, data: ImageClasses) -> Conv4:
    """The untrained network (:func:`metalib.nets.fast_conv4`; the inner loop picks its
    batch-norm kernels per phase, :func:`_path`)."""
    return fast_conv4(config.n_way, config.hidden, data.image_size)


def train(
    config: Config,
    data: ImageClasses,
    generator: torch.Generator,
    device: torch.device,
) -> Run:
    """Meta-train :func:`build`'s network with :func:`meta_step` on tasks drawn from ``data``."""
    net = build(config, data).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=config.outer_lr)

    def step(_: int) -> dict[str, float]:
        ep = sample_episodes(
            data,
            config.n_way,
            config.shots,
            config.queries,
            config.tasks,
            generator,
        )
        return meta_step(
            net,
            opt,
            ep.to(device),
            F.cross_entropy,
            config.inner,
        )

    step, snapshots = with_snapshots(
        step,
        net,
        config.steps,
        config.snapshots,
    )
    desc = "first-order MAML" if config.inner.first_order else "MAML"
    return Run(net, fit(step, config.steps, desc=desc), snapshots)


def adapted_logits(model: nn.Module, episode: Episode, steps: int, lr: float) -> torch.Tensor:
    """Logits ``(T, N*Q, N)`` of ``model``'s weights adapted to each task by ``steps`` first-order
    steps of size ``lr`` on its support set (how MAML and Reptile meet a test task)."""
    test = MAMLConfig(steps, lr, first_order=True)
    params = {k: v.detach() for k, v in model.named_parameters()}
    return episode_outputs(model, params, episode, F.cross_entropy, test).detach()


def predict(config: Config, model: nn.Module, episode: Episode) -> torch.Tensor:
    """Logits ``(T, N*Q, N)``: the initialisation adapted to each task by ``test_steps`` steps."""
    return adapted_logits(model, episode, config.test_steps, config.inner.inner_lr)
