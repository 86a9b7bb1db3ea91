"""The sinusoid regression tasks of the MAML paper: y = A sin(x - phi), one (A, phi) per task.

Finn, Abbeel, Levine (2017). Model-agnostic meta-learning for fast adaptation of deep networks.
ICML. Section 5.1: amplitude A ~ U[0.1, 5.0], phase phi ~ U[0, pi], inputs x ~ U[-5, 5].
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def _as_generator(generator: torch.Generator | int) -> torch.Generator:
    if isinstance(generator, torch.Generator):
        return generator
    if isinstance(generator, int) and not isinstance(generator, bool) and generator >= 0:
        return torch.Generator().manual_seed(generator)
    raise ValueError(f"pass a torch.Generator or a non-negative int seed, got {generator!r}")


def _check_count(what: str, n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"{what} must be a positive int, got {n!r}")


@dataclass(frozen=True)
class SinusoidFamily:
    """The distribution over sinusoid tasks; each range is ``(low, high)``, sampled uniformly.

    Example::

        family = SinusoidFamily()
        episode = family.sample(n_tasks=4, k_shot=10, q_queries=10, generator=0)
        episode["support_x"].shape  # (4, 10, 1)
    """

    amp_range: tuple[float, float] = (0.1, 5.0)
    phase_range: tuple[float, float] = (0.0, math.pi)
    x_range: tuple[float, float] = (-5.0, 5.0)

    def __post_init__(self) -> None:
        for field in ("amp_range", "phase_range", "x_range"):
            value = getattr(self, field)
            try:
                low, high = (float(v) for v in value)
            except (TypeError, ValueError) as err:
                raise ValueError(
                    f"{field} must be a pair (low, high) of numbers, got {value!r}"
                ) from err
            if not (math.isfinite(low) and math.isfinite(high) and low < high):
                raise ValueError(f"{field} must be finite with low < high, got {value!r}")
            object.__setattr__(self, field, (low, high))  # store plain floats, also from lists

    @staticmethod
    def _uniform(
        rng: tuple[float, float], shape: tuple[int, ...], gen: torch.Generator, dtype: torch.dtype
    ) -> torch.Tensor:
        if not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating-point dtype, got {dtype}")
        low, high = rng
        return low + (high - low) * torch.rand(shape, generator=gen, dtype=dtype, device=gen.device)

    def sample_params(
        self, n_tasks: int, generator: torch.Generator | int, dtype: torch.dtype = torch.float32
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw each task's amplitude and phase.

        Returns:
            ``amplitude (T,)`` and ``phase (T,)``, on the generator's device.
        """
        _check_count("n_tasks", n_tasks)
        gen = _as_generator(generator)
        amplitude = self._uniform(self.amp_range, (n_tasks,), gen, dtype)
        phase = self._uniform(self.phase_range, (n_tasks,), gen, dtype)
        return amplitude, phase

    def sample_x(
        self,
        n_tasks: int,
        n_points: int,
        generator: torch.Generator | int,
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """Draw inputs uniformly from ``x_range``: ``(T, n_points, 1)``."""
        _check_count("n_tasks", n_tasks)
        _check_count("n_points", n_points)
        return self._uniform(self.x_range, (n_tasks, n_points, 1), _as_generator(generator), dtype)

    @staticmethod
    def f(x: torch.Tensor, amplitude: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
        """Evaluate each task's sinusoid: ``y = A sin(x - phi)``.

        Args:
            x: ``(T, P, 1)`` inputs.
            amplitude: ``(T,)``.
            phase: ``(T,)``.

        Returns:
            ``(T, P, 1)`` outputs.
        """
        if x.dim() != 3 or x.shape[-1] != 1:
            raise ValueError(f"x must have shape (tasks, points, 1), got {tuple(x.shape)}")
        t = x.shape[0]
        if amplitude.shape != (t,) or phase.shape != (t,):
            raise ValueError(
                f"amplitude {tuple(amplitude.shape)} and phase {tuple(phase.shape)} must both "
                f"have shape ({t},), one value per task of x"
            )
        return amplitude[:, None, None] * torch.sin(x - phase[:, None, None])

    def sample(
        self,
        n_tasks: int,
        k_shot: int,
        q_queries: int,
        generator: torch.Generator | int,
        dtype: torch.dtype = torch.float32,
    ) -> dict[str, torch.Tensor]:
        """Draw a batch of tasks, each with K support and Q query points.

        Returns:
            ``support_x``, ``support_y`` ``(T, K, 1)``; ``query_x``, ``query_y`` ``(T, Q, 1)``;
            ``amplitude``, ``phase`` ``(T,)``. Support and query points are independent draws.
        """
        _check_count("n_tasks", n_tasks)
        _check_count("k_shot", k_shot)
        _check_count("q_queries", q_queries)
        gen = _as_generator(generator)
        amplitude, phase = self.sample_params(n_tasks, gen, dtype)
        x = self.sample_x(n_tasks, k_shot + q_queries, gen, dtype)  # (T, K+Q, 1)
        y = self.f(x, amplitude, phase)
        return {
            "support_x": x[:, :k_shot],
            "support_y": y[:, :k_shot],
            "query_x": x[:, k_shot:],
            "query_y": y[:, k_shot:],
            "amplitude": amplitude,
            "phase": phase,
        }

    def grid(self, n: int = 200, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``n`` evenly spaced inputs over ``x_range``, ends included: ``(n, 1)``, for plots."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 2:
            raise ValueError(f"grid needs an int n of at least 2 points, got {n!r}")
        return torch.linspace(*self.x_range, n, dtype=dtype).unsqueeze(-1)
