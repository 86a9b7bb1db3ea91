"""Tests of metalib.data.sinusoid: the MAML paper's sinusoid regression family."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.testing import assert_close

from metalib.data.sinusoid import SinusoidFamily


def test_defaults_are_the_maml_paper_ranges():
    family = SinusoidFamily()
    assert family.amp_range == (0.1, 5.0)
    assert family.phase_range == (0.0, math.pi)
    assert family.x_range == (-5.0, 5.0)


def test_f_hand_computed_values():
    x = torch.tensor(
        [[[0.0], [math.pi / 2], [math.pi]], [[0.0], [1.0], [2.0]]], dtype=torch.float64
    )
    amplitude = torch.tensor([2.0, 0.5], dtype=torch.float64)
    phase = torch.tensor([0.0, 1.0], dtype=torch.float64)
    y = SinusoidFamily.f(x, amplitude, phase)
    # task 0: 2 sin(x) at 0, pi/2, pi; task 1: 0.5 sin(x - 1) at 0, 1, 2
    expected = torch.tensor(
        [[[0.0], [2.0], [0.0]], [[-0.5 * math.sin(1.0)], [0.0], [0.5 * math.sin(1.0)]]],
        dtype=torch.float64,
    )
    assert_close(y, expected, atol=1e-12, rtol=0)


def test_f_phase_shift_moves_the_curve():
    """A sin(x - phi) at x = phi + pi/2 is the crest A, whatever A and phi are."""
    amplitude = torch.tensor([0.1, 3.0, 5.0], dtype=torch.float64)
    phase = torch.tensor([0.0, 1.0, math.pi], dtype=torch.float64)
    x = (phase + math.pi / 2).view(3, 1, 1)
    assert_close(SinusoidFamily.f(x, amplitude, phase), amplitude.view(3, 1, 1))


def test_sample_shapes_dtypes_and_labels():
    family = SinusoidFamily()
    ep = family.sample(n_tasks=4, k_shot=5, q_queries=7, generator=torch.Generator().manual_seed(0))
    assert ep["support_x"].shape == (4, 5, 1) and ep["support_y"].shape == (4, 5, 1)
    assert ep["query_x"].shape == (4, 7, 1) and ep["query_y"].shape == (4, 7, 1)
    assert ep["amplitude"].shape == (4,) and ep["phase"].shape == (4,)
    assert all(v.dtype == torch.float32 for v in ep.values())
    for xs, ys in (("support_x", "support_y"), ("query_x", "query_y")):
        assert_close(ep[ys], family.f(ep[xs], ep["amplitude"], ep["phase"]))


def test_float64_sampling():
    family = SinusoidFamily()
    ep = family.sample(2, 3, 4, generator=0, dtype=torch.float64)
    assert all(v.dtype == torch.float64 for v in ep.values())
    assert family.grid(5, dtype=torch.float64).dtype == torch.float64


def test_determinism_for_a_seed():
    family = SinusoidFamily()
    a = family.sample(3, 4, 5, generator=torch.Generator().manual_seed(7))
    b = family.sample(3, 4, 5, generator=torch.Generator().manual_seed(7))
    c = family.sample(3, 4, 5, generator=torch.Generator().manual_seed(8))
    for key in a:
        assert torch.equal(a[key], b[key])
    assert not torch.equal(a["support_x"], c["support_x"])
    # an int seed is the same as a generator seeded with it
    d = family.sample(3, 4, 5, generator=7)
    assert all(torch.equal(a[key], d[key]) for key in a)


def test_generator_state_advances():
    """Two draws from one generator differ: no hidden reseeding."""
    family = SinusoidFamily()
    gen = torch.Generator().manual_seed(0)
    assert not torch.equal(family.sample_x(2, 3, gen), family.sample_x(2, 3, gen))


def _check_ranges(family: SinusoidFamily, ep: dict[str, torch.Tensor]) -> None:
    (a_lo, a_hi), (p_lo, p_hi), (x_lo, x_hi) = family.amp_range, family.phase_range, family.x_range
    assert ((ep["amplitude"] >= a_lo) & (ep["amplitude"] <= a_hi)).all()
    assert ((ep["phase"] >= p_lo) & (ep["phase"] <= p_hi)).all()
    for key in ("support_x", "query_x"):
        assert ((ep[key] >= x_lo) & (ep[key] <= x_hi)).all()
    # |A sin(.)| <= |A|: the outputs stay inside the amplitude envelope
    bound = ep["amplitude"].abs().view(-1, 1, 1) + 1e-12
    assert (ep["support_y"].abs() <= bound).all() and (ep["query_y"].abs() <= bound).all()


def test_ranges_respected_over_seeds():
    """A seeded sweep over two families, including a narrow and a negative range."""
    families = [SinusoidFamily(), SinusoidFamily((-1.0, 1.0), (2.0, 2.5), (10.0, 10.001))]
    for family in families:
        for seed in range(20):
            ep = family.sample(8, 5, 5, generator=seed, dtype=torch.float64)
            _check_ranges(family, ep)
    # the draws actually spread over the default ranges, not a corner of them
    ep = SinusoidFamily().sample(2000, 1, 1, generator=0, dtype=torch.float64)
    assert ep["amplitude"].min() < 0.3 and ep["amplitude"].max() > 4.8
    assert_close(ep["phase"].mean().item(), math.pi / 2, atol=0.1, rtol=0)


_finite = st.floats(-100, 100, allow_nan=False, allow_infinity=False)
_pairs = st.tuples(_finite, _finite).filter(lambda p: p[0] + 1e-6 < p[1])


@settings(max_examples=60, deadline=None)
@given(_pairs, _pairs, _pairs, st.integers(0, 2**31), st.integers(1, 4), st.integers(1, 6))
def test_ranges_respected_property(amp, phase, x_range, seed, n_tasks, k):
    family = SinusoidFamily(amp, phase, x_range)
    _check_ranges(family, family.sample(n_tasks, k, k, generator=seed, dtype=torch.float64))


def test_grid_is_evenly_spaced_over_x_range():
    grid = SinusoidFamily().grid(11, dtype=torch.float64)
    assert grid.shape == (11, 1)
    assert_close(grid[:, 0], torch.arange(-5.0, 5.5, 1.0, dtype=torch.float64))
    assert SinusoidFamily().grid().shape == (200, 1)


def test_lists_are_accepted_as_ranges():
    family = SinusoidFamily(amp_range=[1, 2])
    assert family.amp_range == (1.0, 2.0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"amp_range": (5.0, 0.1)},
        {"phase_range": (1.0, 1.0)},
        {"x_range": (-5.0, float("inf"))},
        {"x_range": (float("nan"), 1.0)},
        {"amp_range": (1.0,)},
        {"amp_range": "ab"},
        {"amp_range": None},
    ],
)
def test_bad_ranges_raise(kwargs):
    with pytest.raises(ValueError, match="_range"):
        SinusoidFamily(**kwargs)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((0, 5, 5), "n_tasks"),
        ((2, 0, 5), "k_shot"),
        ((2, 5, 0), "q_queries"),
        ((2.0, 5, 5), "n_tasks"),
        ((True, 5, 5), "n_tasks"),
    ],
)
def test_bad_counts_raise(args, match):
    with pytest.raises(ValueError, match=match):
        SinusoidFamily().sample(*args, generator=0)


def test_other_bad_inputs_raise():
    family = SinusoidFamily()
    with pytest.raises(ValueError, match="n_points"):
        family.sample_x(2, 0, generator=0)
    with pytest.raises(ValueError, match="n_tasks"):
        family.sample_params(0, generator=0)
    with pytest.raises(ValueError, match="Generator"):
        family.sample(2, 3, 4, generator=None)
    with pytest.raises(ValueError, match="Generator"):
        family.sample(2, 3, 4, generator=-1)
    with pytest.raises(ValueError, match="floating-point"):
        family.sample(2, 3, 4, generator=0, dtype=torch.int64)
    with pytest.raises(ValueError, match="at least 2"):
        family.grid(1)
    with pytest.raises(ValueError, match=r"\(tasks, points, 1\)"):
        family.f(torch.zeros(2, 3), torch.ones(2), torch.zeros(2))
    with pytest.raises(ValueError, match="one value per task"):
        family.f(torch.zeros(2, 3, 1), torch.ones(3), torch.zeros(2))
