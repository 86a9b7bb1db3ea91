"""The training loop every learner shares, and how the book scores learners.

* :func:`fit` runs any ``step_fn(step) -> metrics`` (pre-training, MAML, prototypical networks,
  learned optimizers: ``step_fn`` does its own update) under a progress bar, records a
  :class:`History` and stops with a clear error when a metric becomes NaN or infinite.
* :func:`evaluate` scores a learner on :class:`~metalib.tasks.FixedEpisodes` and reports the
  mean accuracy with a 95% confidence interval (:func:`mean_ci95`), as the few-shot literature
  does over 600 episodes (Finn et al., 2017; Snell et al., 2017).
* :func:`accuracy`, :class:`Timer` and :func:`graph_bytes` are the small measuring tools the
  chapters use (how good, how long, how much memory a backward pass holds).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from metalib import runtime
from metalib.runtime import progress, synchronize
from metalib.tasks import Episode, FixedEpisodes


@dataclass
class History:
    """Metrics recorded during training, aligned on ``step`` (for learning curves).

    ``metrics[name][i]`` is the value at ``step[i]``; a metric that was not reported at some
    step holds NaN there, which matplotlib draws as a gap.
    """

    step: list[int] = field(default_factory=list)
    metrics: dict[str, list[float]] = field(default_factory=dict)

    def append(self, step: int, **metrics: float | torch.Tensor) -> None:
        """Record the metrics of one step (tensors must hold one element)."""
        values = {name: _as_float(name, v) for name, v in metrics.items()}
        for name in values:
            if name not in self.metrics:
                self.metrics[name] = [math.nan] * len(self.step)
        self.step.append(int(step))
        for name, series in self.metrics.items():
            series.append(values.get(name, math.nan))

    def __getitem__(self, name: str) -> list[float]:
        """The values of one metric, one per recorded step."""
        if name not in self.metrics:
            raise KeyError(f"no metric {name!r} was recorded; recorded: {sorted(self.metrics)}")
        return self.metrics[name]

    def last(self, name: str) -> float:
        """The most recent recorded value of a metric."""
        for value in reversed(self[name]):
            if not math.isnan(value):
                return value
        raise ValueError(f"metric {name!r} has no recorded values yet")

    def smoothed(self, name: str, window: int) -> list[float]:
        """A trailing moving average of a metric over ``window`` recorded steps (NaNs skipped).

        Entry ``i`` averages entries ``max(0, i - window + 1) .. i``, so the curve starts at the
        first value instead of lagging by half a window.
        """
        if window < 1:
            raise ValueError(f"window must be at least 1 step, got {window}")
        x = torch.tensor(self[name], dtype=torch.float64)
        seen = ~torch.isnan(x)
        sums = torch.cat([x.new_zeros(1), torch.where(seen, x, 0.0).cumsum(0)])
        counts = torch.cat([x.new_zeros(1), seen.double().cumsum(0)])
        hi = torch.arange(1, len(x) + 1)
        lo = (hi - window).clamp(min=0)
        return ((sums[hi] - sums[lo]) / (counts[hi] - counts[lo])).tolist()  # 0/0 -> NaN


def _as_float(name: str, value: float | torch.Tensor) -> float:
    if isinstance(value, torch.Tensor) and value.numel() != 1:
        raise ValueError(
            f"metric {name!r} must be a single number, got a tensor of shape "
            f"{tuple(value.shape)}; reduce it (e.g. .mean()) before returning it"
        )
    try:
        return float(value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"metric {name!r} must be a number, got {value!r}") from err


def fit(
    step_fn: Callable[[int], Mapping[str, float | torch.Tensor]],
    n_steps: int,
    desc: str = "training",
    log_every: int = 1,
) -> History:
    """Call ``step_fn(step)`` for ``step`` in ``range(n_steps)`` and record what it returns.

    Args:
        step_fn: does one update (of whatever it trains) and returns its metrics, e.g.
            ``{"loss": 0.69, "accuracy": 0.5}`` (floats or one-element tensors).
        n_steps: how many steps to run.
        desc: the label of the progress bar and of error messages.
        log_every: record every ``log_every``-th step (and the last); every step is still
            checked for NaN.

    Returns:
        The :class:`History` of the recorded steps.

    Raises:
        FloatingPointError: a metric became NaN or infinite; the message names it and the step.
    """
    if n_steps < 1:
        raise ValueError(f"n_steps must be at least 1, got {n_steps}")
    if log_every < 1:
        raise ValueError(f"log_every must be at least 1, got {log_every}")
    history = History()
    with progress(range(n_steps), desc=desc, total=n_steps) as bar:
        for step in bar:
            metrics = step_fn(step)
            if not isinstance(metrics, Mapping):
                raise ValueError(
                    f"{desc}: step_fn must return a dict of metrics such as {{'loss': 0.7}}, "
                    f"got {type(metrics).__name__} at step {step}"
                )
            values = {name: _as_float(name, v) for name, v in metrics.items()}
            for name, value in values.items():
                if not math.isfinite(value):
                    raise FloatingPointError(
                        f"{desc}: metric {name!r} became {value} at step {step} of {n_steps}; "
                        "lower the learning rate or check the inputs"
                    )
            if step % log_every == 0 or step == n_steps - 1:
                history.append(step, **values)
                bar.set_postfix({k: f"{v:.4g}" for k, v in values.items()}, refresh=False)
    return history


@dataclass(frozen=True)
class Score:
    """A mean with its 95% confidence half-width over ``n`` values.

    ``str(score)`` reads ``"47.3% ± 1.2%"`` when ``percent`` is set (accuracies, as
    :func:`evaluate` returns them), else ``"0.473 ± 0.012"``.
    """

    mean: float
    ci95: float
    n: int
    percent: bool = False

    def as_percent(self, digits: int = 1) -> str:
        """The score as percentages, e.g. ``"47.3% ± 1.2%"``."""
        return f"{100 * self.mean:.{digits}f}% ± {100 * self.ci95:.{digits}f}%"

    def __str__(self) -> str:
        return self.as_percent() if self.percent else f"{self.mean:.4g} ± {self.ci95:.2g}"


def mean_ci95(values: torch.Tensor | Sequence[float], percent: bool = False) -> Score:
    """The mean and the 95% confidence half-width ``1.96 * std / sqrt(n)`` of ``values``.

    ``std`` is the sample standard deviation (n - 1 in the denominator), the normal
    approximation the few-shot literature reports over 600 episodes (Finn et al., 2017;
    Snell et al., 2017).

    Args:
        values: ``(n,)`` numbers, ``n >= 2``.
        percent: mark the score as accuracies, so that it prints as percentages.
    """
    x = torch.as_tensor(values, dtype=torch.float64).detach().cpu()
    if x.dim() != 1:
        raise ValueError(f"values must be one-dimensional (n,), got shape {tuple(x.shape)}")
    if len(x) < 2:
        raise ValueError(f"a confidence interval needs at least 2 values, got {len(x)}")
    if not torch.isfinite(x).all():
        raise ValueError("values contain NaN or infinity; a score needs finite values")
    n = len(x)
    return Score(x.mean().item(), 1.96 * x.std(correction=1).item() / math.sqrt(n), n, percent)


def evaluate(
    accuracy_fn: Callable[[Episode], torch.Tensor],
    episodes: FixedEpisodes,
    batch_size: int = 1,
    desc: str = "evaluating",
) -> Score:
    """Score a learner on fixed episodes: mean accuracy and 95% confidence interval.

    Args:
        accuracy_fn: adapts to each task of an episode batch (support) and returns the
            per-task query accuracies, ``(T,)`` in [0, 1]. It runs with gradients enabled,
            since learners such as MAML need them to adapt; it should move the episode to its
            device (``episode.to(dev)``).
        episodes: the evaluation episodes, the same for every method compared.
        batch_size: tasks per call of ``accuracy_fn``.
        desc: the label of the progress bar.

    Returns:
        A :class:`Score` over ``len(episodes)`` tasks, printed as percentages.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    accs = []
    total = math.ceil(len(episodes) / batch_size)
    for episode in progress(episodes.batches(batch_size), desc=desc, total=total):
        acc = accuracy_fn(episode)
        if not isinstance(acc, torch.Tensor) or acc.shape != (episode.n_tasks,):
            got = tuple(acc.shape) if isinstance(acc, torch.Tensor) else type(acc).__name__
            raise ValueError(
                f"accuracy_fn must return one accuracy per task, a tensor of shape "
                f"({episode.n_tasks},), got {got}"
            )
        acc = acc.detach().to("cpu", torch.float64)
        if not ((acc >= 0) & (acc <= 1)).all():
            raise ValueError(
                f"accuracy_fn returned {acc.tolist()}; accuracies must be fractions in [0, 1]"
            )
        accs.append(acc)
    return mean_ci95(torch.cat(accs), percent=True)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The fraction of correct predictions along the sample axis.

    Args:
        logits: ``(..., P, C)`` scores of C classes for P samples (e.g. ``(T, N*Q, N)``).
        labels: ``(..., P)`` long labels in ``0..C-1``.

    Returns:
        ``(...)`` accuracies in [0, 1] (e.g. ``(T,)``), in the logits' floating dtype.
    """
    if logits.dim() < 2 or logits.shape[:-1] != labels.shape:
        raise ValueError(
            f"logits (..., P, C) and labels (..., P) do not match: logits {tuple(logits.shape)}, "
            f"labels {tuple(labels.shape)}"
        )
    dtype = logits.dtype if logits.is_floating_point() else torch.get_default_dtype()
    return (logits.argmax(dim=-1) == labels).to(dtype).mean(dim=-1)


def episode_loss(
    model: nn.Module,
    episode: Episode,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The loss of an episodic classifier on a batch of tasks: mean query cross-entropy.

    An *episodic classifier* maps a task to query logits in one call,
    ``model(support_x, support_y, query_x, n_way) -> (T, N*Q, N)`` (prototypical networks, the
    black-box learners); meta-training minimises this loss over random episodes.

    Returns:
        ``(loss, accuracy)``: a scalar (mean over tasks and queries) and ``(T,)`` accuracies.
    """
    out = model(
        episode.support_x,
        episode.support_y,
        episode.query_x,
        episode.n_way,
    )
    if out.shape != (*episode.query_y.shape, episode.n_way):
        raise ValueError(
            f"{type(model).__name__} returned logits of shape "
            f"{tuple(out.shape)}; an episodic classifier must return (T, "
            f"N*Q, N) = {(*episode.query_y.shape, episode.n_way)}",
        )
    loss = F.cross_entropy(out.flatten(0, 1), episode.query_y.flatten())
    return loss, accuracy(out.detach(), episode.query_y)


def episode_logits(model: nn.Module, episode: Episode) -> torch.Tensor:
    """Logits ``(T, N*Q, N)`` of an episodic classifier on ``episode``'s queries, no gradient."""
    with torch.no_grad():
        return model(episode.support_x, episode.support_y, episode.query_x, episode.n_way)


def accuracy_fn(
    predict: Callable[[Episode], torch.Tensor], device: torch.device | str | None = None
) -> Callable[[Episode], torch.Tensor]:
    """``fn(episode) -> (T,)`` query accuracies of a learner, for :func:`evaluate`.

    Every learner is scored this one way: its ``predict(episode) -> (T, N*Q, N)`` logits (each
    learner module's ``predict(config, model, episode)`` with its config and model bound, as
    :func:`metalib.compare.compare` scores it), against the episode's query labels.

    Args:
        predict: adapts to each task of an episode and returns its query logits.
        device: where the episode is moved first (``None``: :func:`metalib.runtime.device`).
    """
    device = torch.device(device) if device is not None else runtime.device()

    def fn(episode: Episode) -> torch.Tensor:
        episode = episode.to(device)
        return accuracy(predict(episode).detach(), episode.query_y)

    return fn


def episode_accuracy_fn(model: nn.Module) -> Callable[[Episode], torch.Tensor]:
    """:func:`accuracy_fn` of an episodic classifier (:func:`episode_logits`), on its device."""
    device = next(iter(model.parameters()), torch.empty(0)).device
    return accuracy_fn(partial(episode_logits, model), device)


class Timer:
    """Wall-clock time of a ``with`` block, in ``seconds`` (``time.perf_counter``).

    On an accelerator the clock is read after the queued kernels have run
    (:func:`metalib.runtime.synchronize`), so the time is that of the work, not of queueing it.

    Example:
        >>> with Timer() as t:
        ...     train()
        >>> print(f"{t.seconds:.1f} s")

    Inside the block ``seconds`` is the time elapsed so far.
    """

    def __init__(self) -> None:
        self._start: float | None = None
        self._seconds = 0.0

    def __enter__(self) -> Timer:
        synchronize()
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        synchronize()
        self._seconds = time.perf_counter() - self._start
        self._start = None

    @property
    def seconds(self) -> float:
        if self._start is not None:
            return time.perf_counter() - self._start
        return self._seconds


def graph_bytes(output: torch.Tensor) -> int:
    """Bytes of the tensors an autograd graph keeps alive for its backward pass.

    Walks the graph from ``output.grad_fn`` and adds up, once per storage, every tensor a node
    saved for backward (its ``_saved_*`` attributes). This is the memory that backpropagating
    through ``output`` needs beyond the inputs, and on a CPU (no allocator statistics) a
    deterministic stand-in for the peak memory of a training step: second-order MAML's grows
    with every inner step, first-order MAML's does not. Parameters and inputs are counted when
    the graph saved them.

    Args:
        output: a tensor with a ``grad_fn`` (e.g. a meta-loss before ``backward()``).

    Returns:
        The total size in bytes (0 for a tensor without a graph).
    """
    if not isinstance(output, torch.Tensor):
        raise ValueError(f"graph_bytes needs a tensor, got {type(output).__name__}")
    storages: dict[int, int] = {}
    seen: set[object] = set()
    stack = [output.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        for name in dir(node):
            if not name.startswith("_saved_"):
                continue
            try:
                value = getattr(node, name)
            except RuntimeError:  # saved tensors already freed by an earlier backward
                continue
            for t in value if isinstance(value, (tuple, list)) else (value,):
                if isinstance(t, torch.Tensor):
                    storage = t.untyped_storage()
                    storages[storage.data_ptr()] = storage.nbytes()
        stack.extend(fn for fn, _ in node.next_functions)
    return sum(storages.values())
