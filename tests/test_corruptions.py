"""Tests of metalib.data.corruptions: shapes and range, seeds, severities, hand-checked values."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from metalib.data import corruptions
from metalib.data.corruptions import CORRUPTIONS, corrupt

RANDOM = ("gaussian_noise", "elastic")


def images(seed: int = 0, shape=(6, 1, 16, 16), dtype=torch.float32) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("name", CORRUPTIONS)
@pytest.mark.parametrize("shape", [(6, 1, 16, 16), (2, 3, 16, 16), (16, 16), (3, 1, 12, 20)])
def test_shape_dtype_and_range_are_kept(name, shape):
    for dtype in (torch.float32, torch.float64):
        x = images(shape=shape, dtype=dtype)
        for severity in range(1, 6):
            out = corrupt(x, name, severity, seeded(1))
            assert out.shape == x.shape and out.dtype == dtype
            assert out.min() >= 0 and out.max() <= 1


@settings(max_examples=30, deadline=None)
@given(
    name=st.sampled_from(CORRUPTIONS),
    severity=st.integers(1, 5),
    seed=st.integers(0, 1000),
    ink=st.floats(0.0, 1.0),
)
def test_range_holds_for_binary_glyph_like_images(name, severity, seed, ink):
    x = (images(seed) > 0.7).float() * ink  # strokes of any intensity on black
    out = corrupt(x, name, severity, seeded(seed))
    assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_same_seed_gives_identical_images(name):
    x = images()
    torch.testing.assert_close(
        corrupt(x, name, 3, seeded(7)), corrupt(x, name, 3, seeded(7)), rtol=0, atol=0
    )


@pytest.mark.parametrize("name", RANDOM)
def test_different_seeds_give_different_images(name):
    x = images()
    assert not torch.equal(corrupt(x, name, 3, seeded(7)), corrupt(x, name, 3, seeded(8)))


@pytest.mark.parametrize("name", sorted(set(CORRUPTIONS) - set(RANDOM)))
def test_deterministic_corruptions_ignore_the_generator(name):
    x = images()
    assert torch.equal(corrupt(x, name, 4, seeded(1)), corrupt(x, name, 4, seeded(2)))
    assert torch.equal(corrupt(x, name, 4), corrupt(x, name, 4, seeded(2)))


@pytest.mark.parametrize("severity", range(1, 6))
def test_inversion_is_exactly_one_minus_x(severity):
    x = images(dtype=torch.float64)
    assert torch.equal(corrupt(x, "inversion", severity), 1 - x)


def test_noise_std_grows_with_severity_and_matches_the_table():
    x = torch.full((200, 1, 16, 16), 0.5, dtype=torch.float64)  # mid-grey: little clipping
    stds = [(corrupt(x, "gaussian_noise", s, seeded(0)) - x).std().item() for s in range(1, 6)]
    assert stds == sorted(stds)
    # below the clipping point the added noise has the table's standard deviation
    assert stds[0] == pytest.approx(corruptions.NOISE_STD[0], rel=0.02)


def test_contrast_by_hand_and_monotone():
    x = torch.tensor([[0.0, 1.0], [0.0, 1.0]], dtype=torch.float64)  # mean 0.5
    c = corruptions.CONTRAST[2]
    expected = torch.tensor([[0.5 - c / 2, 0.5 + c / 2]] * 2, dtype=torch.float64)
    torch.testing.assert_close(corrupt(x, "contrast", 3), expected, rtol=0, atol=1e-15)
    y = images(dtype=torch.float64)
    spreads = [corrupt(y, "contrast", s).std(dim=(-2, -1)).mean().item() for s in range(1, 6)]
    assert spreads == sorted(spreads, reverse=True)
    # every image keeps its mean brightness
    torch.testing.assert_close(corrupt(y, "contrast", 5).mean((-2, -1)), y.mean((-2, -1)))


def test_blur_of_an_impulse_is_the_gaussian_kernel():
    x = torch.zeros(21, 21, dtype=torch.float64)
    x[10, 10] = 1.0
    for severity in range(1, 6):
        sigma = corruptions.BLUR_SIGMA[severity - 1]
        r = math.ceil(3 * sigma)
        t = torch.arange(-r, r + 1, dtype=torch.float64)
        k = torch.exp(-(t**2) / (2 * sigma**2))
        k = k / k.sum()
        expected = torch.zeros_like(x)
        expected[10 - r : 11 + r, 10 - r : 11 + r] = torch.outer(k, k)
        torch.testing.assert_close(corrupt(x, "blur", severity), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", ["blur", "elastic"])
def test_blur_and_elastic_move_further_from_the_original_with_severity(name):
    x = (images(3, dtype=torch.float64) > 0.6).double()
    distance = [(corrupt(x, name, s, seeded(0)) - x).abs().mean().item() for s in range(1, 6)]
    assert distance == sorted(distance) and distance[0] > 0


def test_elastic_keeps_a_blank_image_blank():
    x = torch.zeros(3, 1, 16, 16)
    assert torch.equal(corrupt(x, "elastic", 5, seeded(0)), x)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((images(), "fog", 1), "unknown corruption 'fog'; choose one of .*gaussian_noise"),
        ((images(), "blur", 0), "severity must be an int from 1 to 5"),
        ((images(), "blur", 6), "severity must be an int from 1 to 5"),
        ((images(), "blur", 2.0), "severity must be an int from 1 to 5"),
        ((images(), "blur", True), "severity must be an int from 1 to 5"),
        (((images() * 255).to(torch.uint8), "blur", 1), "floating-point"),
        ((images() * 2, "blur", 1), r"must lie in \[0, 1\]"),
        ((images() - 1, "inversion", 1), r"must lie in \[0, 1\]"),
        ((torch.rand(5), "blur", 1), r"at least the \(H, W\) axes"),
    ],
)
def test_errors(args, message):
    with pytest.raises(ValueError, match=message):
        corrupt(*args)
