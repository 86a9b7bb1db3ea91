"""Tests of metalib.hypernet: target-MLP shapes by hand, the batched functional MLP against
nn.Sequential and chapter 2's MLP, output shapes for any K, invariance to the order of the
points, the initialisation's scale, training that lowers the loss, image points, errors."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from metalib import hypernet
from metalib.hypernet import (
    HyperNetwork,
    fit_hypernet,
    functional_mlp,
    image_points,
    mlp_shapes,
    n_weights,
    pixel_coords,
    query_mse,
    unflatten,
)
from metalib.nets import MLP


def sequential(sizes, activation=nn.ReLU) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:], strict=True):
        layers += [nn.Linear(a, b), activation()]
    return nn.Sequential(*layers[:-1])


def test_mlp_shapes_and_n_weights_by_hand():
    shapes = mlp_shapes((1, 40, 40, 1))
    assert [(n, tuple(s)) for n, s in shapes] == [
        ("0.weight", (40, 1)),
        ("0.bias", (40,)),
        ("2.weight", (40, 40)),
        ("2.bias", (40,)),
        ("4.weight", (1, 40)),
        ("4.bias", (1,)),
    ]
    assert n_weights((1, 40, 40, 1)) == 40 + 40 + 1600 + 40 + 40 + 1 == 1761
    assert n_weights((3, 2)) == 8
    # the names and shapes are nn.Sequential's own
    seq = sequential((2, 5, 3, 4))
    assert [(n, p.shape) for n, p in seq.named_parameters()] == mlp_shapes((2, 5, 3, 4))


def test_unflatten_by_hand():
    flat = torch.arange(16.0).reshape(2, 8)  # two functions, sizes (3, 2): W (2, 3), b (2,)
    p = unflatten(flat, (3, 2))
    torch.testing.assert_close(p["0.weight"][1], torch.tensor([[8.0, 9, 10], [11, 12, 13]]))
    torch.testing.assert_close(p["0.bias"][0], torch.tensor([6.0, 7.0]))


@pytest.mark.parametrize("sizes", [(1, 40, 40, 1), (2, 7, 3), (4, 1)])
def test_functional_mlp_matches_sequential_per_function(sizes):
    g = torch.Generator().manual_seed(0)
    nets = [sequential(sizes).double() for _ in range(3)]
    flat = torch.stack([torch.cat([p.flatten() for p in n.parameters()]) for n in nets])
    x = torch.randn(3, 11, sizes[0], generator=g, dtype=torch.float64)
    out = functional_mlp(flat, x, sizes)
    expected = torch.stack([n(xi) for n, xi in zip(nets, x, strict=True)])
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    # another activation is applied between layers only
    seq_tanh = sequential(sizes, nn.Tanh).double()
    flat_tanh = torch.cat([p.flatten() for p in seq_tanh.parameters()])[None]
    torch.testing.assert_close(
        functional_mlp(flat_tanh, x[:1], sizes, torch.tanh),
        seq_tanh(x[0])[None],
        rtol=1e-12,
        atol=1e-12,
    )


def test_predicted_weights_load_into_chapter_2_mlp():
    """A predicted row loaded into metalib.nets.MLP (same parameter order): same outputs."""
    g = torch.Generator().manual_seed(1)
    model = HyperNetwork((1, 40, 40, 1), hidden=16, layers=1, heads=2, init_scale=1.0, generator=g)
    x, y, q = torch.randn(2, 5, 1), torch.randn(2, 5, 1), torch.randn(2, 9, 1)
    flat = model(x, y).detach()
    net = MLP()
    for i in range(2):
        chunks = flat[i].split([p.numel() for p in net.parameters()])
        with torch.no_grad():
            for p, c in zip(net.parameters(), chunks, strict=True):
                p.copy_(c.reshape(p.shape))
        torch.testing.assert_close(model.predict(x, y, q)[i], net(q[i]), rtol=1e-5, atol=1e-5)


@settings(max_examples=15, deadline=None)
@given(
    k=st.integers(1, 30),
    batch=st.integers(1, 4),
    hidden_sizes=st.lists(st.integers(1, 12), min_size=0, max_size=3),
    d_in=st.integers(1, 3),
    d_out=st.integers(1, 3),
)
def test_output_shapes_for_any_k(k, batch, hidden_sizes, d_in, d_out):
    sizes = (d_in, *hidden_sizes, d_out)
    model = HyperNetwork(sizes, hidden=8, layers=1, heads=2)
    x, y = torch.randn(batch, k, d_in), torch.randn(batch, k, d_out)
    flat = model(x, y)
    assert flat.shape == (batch, n_weights(sizes))
    params = unflatten(flat, sizes)
    assert [(n, v.shape[1:]) for n, v in params.items()] == mlp_shapes(sizes)
    assert model.predict(x, y, torch.randn(batch, 6, d_in)).shape == (batch, 6, d_out)


def test_prediction_ignores_the_order_of_the_points():
    g = torch.Generator().manual_seed(2)
    model = HyperNetwork((1, 10, 1), hidden=16, layers=2, heads=4, init_scale=1.0).double()
    x = torch.randn(3, 12, 1, generator=g, dtype=torch.float64)
    y = torch.randn(3, 12, 1, generator=g, dtype=torch.float64)
    perm = torch.randperm(12, generator=g)
    a, b = model(x, y), model(x[:, perm], y[:, perm])
    torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    # ... while the points themselves matter: moving one point changes the weights
    y2 = y.clone()
    y2[:, 0] += 1.0
    assert (model(x, y2) - a).abs().max() > 1e-4
    # and each function's weights come from its own points only
    torch.testing.assert_close(model(x[1:2], y[1:2]), a[1:2], rtol=0, atol=1e-12)


def test_initial_prediction_is_a_well_scaled_mlp():
    """Before training each layer's predicted weights spread like nn.Linear's default init."""
    sizes = (1, 40, 40, 1)
    model = HyperNetwork(sizes, generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(4)
    x, y = 5 * torch.rand(64, 10, 1, generator=g) - 2.5, 3 * torch.randn(64, 10, 1, generator=g)
    params = unflatten(model(x, y).detach(), sizes)
    for name, fan_in in (("0.weight", 1), ("2.weight", 40), ("4.weight", 40)):
        std = params[name].std().item()
        default = 1 / math.sqrt(3 * fan_in)  # uniform in ±1/sqrt(fan_in)
        assert 0.75 * default < std < 1.33 * default, (name, std, default)  # 40+ samples
    # data-dependent, but only slightly at first: functions differ by about init_scale
    spread = params["2.weight"].std(dim=0).mean().item()
    assert 0.01 / math.sqrt(40) < spread < 0.3 / math.sqrt(40)
    # with init_scale 0 every function gets exactly the base weights
    flat0 = HyperNetwork(sizes, init_scale=0.0)(x, y)
    torch.testing.assert_close(flat0, flat0[:1].expand_as(flat0), rtol=0, atol=0)


def test_fit_hypernet_lowers_the_query_error_on_lines():
    """Lines y = a x + b with K in 2..4: training brings the query MSE far below its start."""

    def sample(k, gen):
        a, b = torch.randn(16, 1, 1, generator=gen), torch.randn(16, 1, 1, generator=gen)
        x, q = torch.rand(16, k, 1, generator=gen) * 2 - 1, torch.rand(16, 8, 1, generator=gen)
        return x, a * x + b, q, a * q + b

    model = HyperNetwork((1, 8, 1), hidden=16, layers=1, heads=2)
    test = sample(3, torch.Generator().manual_seed(9))
    with torch.no_grad():
        before = query_mse(model, *test).mean().item()
    history = fit_hypernet(model, sample, 300, (2, 4), lr=3e-3, log_every=10)
    with torch.no_grad():
        after = query_mse(model, *test).mean().item()
    assert after < 0.1 * before, (before, after)
    assert set(history["k"]) <= {2, 3, 4} and len(set(history["k"])) > 1


def test_pixel_coords_and_image_points_by_hand():
    torch.testing.assert_close(
        pixel_coords(2), torch.tensor([[-0.5, -0.5], [-0.5, 0.5], [0.5, -0.5], [0.5, 0.5]])
    )
    images = torch.arange(18.0).reshape(2, 1, 3, 3)
    coords, ink = image_points(images, 9, torch.Generator().manual_seed(0))
    assert coords.shape == (2, 9, 2) and ink.shape == (2, 9, 1)
    grid = pixel_coords(3)
    for i in range(2):  # every pixel once, and each ink value read at its own coordinate
        rows = ((coords[i] + 1) / 2 * 3 - 0.5).round().long()
        torch.testing.assert_close(ink[i, :, 0], images[i, 0, rows[:, 0], rows[:, 1]])
        assert sorted(ink[i, :, 0].tolist()) == list(range(9 * i, 9 * i + 9))
        assert {tuple(r) for r in coords[i].tolist()} == {tuple(r) for r in grid.tolist()}


def test_errors():
    for bad in [(3,), (1, 0, 1), (1, 2.5, 1), [True, 2]]:
        with pytest.raises(ValueError, match="sizes|width"):
            mlp_shapes(bad)
    with pytest.raises(ValueError, match=r"flat weights must be \(B, 8\)"):
        unflatten(torch.zeros(2, 7), (3, 2))
    with pytest.raises(ValueError, match=r"x must be \(B, n, 3\) with B = 2"):
        functional_mlp(torch.zeros(2, 8), torch.zeros(3, 4, 3), (3, 2))
    with pytest.raises(ValueError, match=r"x must be \(B, n, 3\)"):
        functional_mlp(torch.zeros(2, 8), torch.zeros(2, 4, 2), (3, 2))
    with pytest.raises(ValueError, match="heads dividing hidden"):
        HyperNetwork((1, 4, 1), hidden=10, heads=3)
    with pytest.raises(ValueError, match="layers >= 1"):
        HyperNetwork((1, 4, 1), layers=0)
    with pytest.raises(ValueError, match="init_scale"):
        HyperNetwork((1, 4, 1), init_scale=-1.0)
    model = HyperNetwork((1, 4, 1), hidden=8, layers=1, heads=2)
    with pytest.raises(ValueError, match="same K >= 1 points"):
        model(torch.zeros(2, 5, 1), torch.zeros(2, 4, 1))  # mismatched K
    with pytest.raises(ValueError, match="same K >= 1 points"):
        model(torch.zeros(2, 5, 1), torch.zeros(3, 5, 1))  # mismatched B
    with pytest.raises(ValueError, match="same K >= 1 points"):
        model(torch.zeros(2, 0, 1), torch.zeros(2, 0, 1))
    with pytest.raises(ValueError, match=r"x \(B, K, 1\) and y \(B, K, 1\)"):
        model(torch.zeros(2, 5, 2), torch.zeros(2, 5, 1))
    with pytest.raises(ValueError, match=r"x \(B, K, 1\)"):
        model(torch.zeros(5, 1), torch.zeros(5, 1))
    with pytest.raises(ValueError, match="query_y must be"):
        query_mse(model, torch.zeros(2, 3, 1), torch.zeros(2, 3, 1), torch.zeros(2, 4, 1),
                  torch.zeros(2, 5, 1))  # fmt: skip
    with pytest.raises(ValueError, match="k_range"):
        fit_hypernet(model, lambda k, g: None, 1, (0, 3))
    with pytest.raises(ValueError, match="k_range"):
        fit_hypernet(model, lambda k, g: None, 1, (4, 3))
    with pytest.raises(ValueError, match="lr must be positive"):
        fit_hypernet(model, lambda k, g: None, 1, (1, 3), lr=0.0)
    with pytest.raises(ValueError, match="size must be a positive int"):
        pixel_coords(0)
    with pytest.raises(ValueError, match=r"k must lie in 1\.\.9"):
        image_points(torch.zeros(2, 3, 3), 10)
    with pytest.raises(ValueError, match="images must be"):
        image_points(torch.zeros(2, 3, 4), 2)
    assert hypernet.Sampler is not None
