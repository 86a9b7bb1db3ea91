"""Learning to reweight examples (metalib.reweight): a hand-derived weighted step, the
meta-gradient against finite differences in float64, the clamping and normalisation, flips."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from metalib import reweight
from metalib.nets import MLP, forward_with


def linear_model(n_in: int = 2, n_out: int = 2) -> MLP:
    """A linear classifier with all weights zero, so both classes start at probability 1/2."""
    net = MLP(in_features=n_in, out_features=n_out, hidden=()).double()
    with torch.no_grad():
        net.head.weight.zero_()
        net.head.bias.zero_()
    return net


def params_of(net) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().requires_grad_() for k, v in net.named_parameters()}


def test_weighted_step_by_hand():
    """W = 0, b = 0: p = (1/2, 1/2) and ∇_W ℓ_i = (p - e_{y_i}) x_iᵀ, ∇_b ℓ_i = p - e_{y_i}.

    x_1 = (1, 0), y_1 = 0, weight 1/4: grad_W = 1/4 [[-1/2, 0], [1/2, 0]], grad_b = 1/4 (-1/2, 1/2)
    x_2 = (0, 2), y_2 = 1, weight 1:   grad_W = [[0, 1], [0, -1]],          grad_b = (1/2, -1/2)
    With lr = 1/2: W' = -1/2 [[-1/8, 1], [1/8, -1]], b' = -1/2 (3/8, -3/8).
    """
    net = linear_model()
    p = params_of(net)
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    y = torch.tensor([0, 1])
    weights = torch.tensor([0.25, 1.0], dtype=torch.float64, requires_grad=True)
    new = reweight.weighted_step(net, p, x, y, weights, lr=0.5)
    assert set(new) == set(p)
    w_expected = torch.tensor([[0.0625, -0.5], [-0.0625, 0.5]], dtype=torch.float64)
    b_expected = torch.tensor([-0.1875, 0.1875], dtype=torch.float64)
    torch.testing.assert_close(new["head.weight"], w_expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(new["head.bias"], b_expected, rtol=0, atol=1e-12)
    # differentiable in the weights: dW'_00/dε = -lr (p - e_y)_0 x_0 = (1/4, 0)
    (d_weights,) = torch.autograd.grad(new["head.weight"][0, 0], weights, retain_graph=True)
    torch.testing.assert_close(d_weights, torch.tensor([0.25, 0.0], dtype=torch.float64))
    # and in the params, second order: db'_0/db_0 = 1 - lr Σ ε_i p_0 (1 - p_0) = 1 - 0.5·1.25/4
    (d_bias,) = torch.autograd.grad(new["head.bias"][0], p["head.bias"])
    torch.testing.assert_close(d_bias, torch.tensor([0.84375, 0.15625], dtype=torch.float64))


def tiny_problem(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = MLP(in_features=3, out_features=3, hidden=(5,)).double()
    x = torch.randn(8, 3, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (8,), generator=gen)
    val_x = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    val_y = torch.randint(0, 3, (4,), generator=gen)
    return net, params_of(net), x, y, val_x, val_y


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_example_weights_against_finite_differences(seed):
    net, p, x, y, val_x, val_y = tiny_problem(seed)
    lr, h = 0.3, 1e-6

    def val_loss(eps: torch.Tensor) -> float:
        fast = reweight.weighted_step(net, p, x, y, eps, lr)
        return F.cross_entropy(forward_with(net, fast, val_x), val_y).item()

    g = torch.zeros(8, dtype=torch.float64)
    for i in range(8):
        e = torch.zeros(8, dtype=torch.float64)
        e[i] = h
        g[i] = (val_loss(e) - val_loss(-e)) / (2 * h)
    clamped = torch.clamp(-g, min=0)
    assert 0 < (clamped > 0).sum() < 8, "the case should have both kept and dropped examples"
    w = reweight.example_weights(net, p, x, y, val_x, val_y, lr)
    # central differences in float64 with h = 1e-6: error ~1e-10 on g ~ 1e-2
    torch.testing.assert_close(w, clamped / clamped.sum(), rtol=1e-6, atol=1e-8)
    assert not w.requires_grad
    torch.testing.assert_close(w.sum(), torch.tensor(1.0, dtype=torch.float64))


def test_example_weights_are_gradient_alignments_independent_of_lr():
    """At ε = 0, θ' = θ, so g_i = -α ∇L_val · ∇ℓ_i: the normalised weights ignore α."""
    net, p, x, y, val_x, val_y = tiny_problem(3)
    gv = torch.autograd.grad(F.cross_entropy(forward_with(net, p, val_x), val_y), list(p.values()))
    dots = []
    for i in range(8):
        gi = torch.autograd.grad(
            F.cross_entropy(forward_with(net, p, x[i : i + 1]), y[i : i + 1]), list(p.values())
        )
        dots.append(sum((a * b).sum() for a, b in zip(gv, gi, strict=True)))
    clamped = torch.clamp(torch.stack(dots), min=0)
    for lr in (1e-3, 0.1, 10.0):
        w = reweight.example_weights(net, p, x, y, val_x, val_y, lr)
        torch.testing.assert_close(w, clamped / clamped.sum(), rtol=1e-9, atol=1e-12)


def test_opposing_example_gets_zero_and_duplicates_equal_weights():
    net = linear_model()
    p = params_of(net)
    one = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    val_y = torch.tensor([0])
    # the same image labelled 0 (agrees with the validation example) and 1 (opposes it)
    x, y = one.repeat(2, 1), torch.tensor([0, 1])
    w = reweight.example_weights(net, p, x, y, one, val_y, lr=0.1)
    torch.testing.assert_close(w, torch.tensor([1.0, 0.0], dtype=torch.float64))
    # four copies of a clean example share the weight equally
    w = reweight.example_weights(net, p, one.repeat(4, 1), torch.zeros(4).long(), one, val_y, 0.1)
    torch.testing.assert_close(w, torch.full((4,), 0.25, dtype=torch.float64))


def test_all_opposing_gives_all_zero_weights():
    net = linear_model()
    p = params_of(net)
    one = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    w = reweight.example_weights(
        net, p, one.repeat(3, 1), torch.ones(3).long(), one, torch.tensor([0]), lr=0.1
    )
    assert torch.equal(w, torch.zeros(3, dtype=torch.float64))


def test_flip_labels_exact_fraction_different_class_and_seeded():
    y = torch.arange(50) % 7
    noisy, flipped = reweight.flip_labels(y, 7, 0.3, torch.Generator().manual_seed(0))
    assert flipped.sum().item() == 15  # round(0.3 * 50)
    assert (noisy[flipped] != y[flipped]).all()
    assert torch.equal(noisy[~flipped], y[~flipped])
    assert ((noisy >= 0) & (noisy < 7)).all()
    again = reweight.flip_labels(y, 7, 0.3, torch.Generator().manual_seed(0))
    assert torch.equal(again[0], noisy) and torch.equal(again[1], flipped)
    other = reweight.flip_labels(y, 7, 0.3, torch.Generator().manual_seed(1))
    assert not torch.equal(other[1], flipped)
    none, mask = reweight.flip_labels(y, 7, 0.0, torch.Generator().manual_seed(0))
    assert torch.equal(none, y) and not mask.any()
    # two classes: every flip goes to the other one
    noisy2, flipped2 = reweight.flip_labels(y % 2, 2, 0.5, torch.Generator().manual_seed(0))
    assert torch.equal(noisy2[flipped2], 1 - (y % 2)[flipped2])


def test_small_loss_step_keeps_the_smallest_losses():
    torch.manual_seed(0)
    net = MLP(in_features=3, out_features=3, hidden=(4,)).double()
    x = torch.randn(10, 3, dtype=torch.float64)
    y = torch.randint(0, 3, (10,))
    losses = F.cross_entropy(net(x), y, reduction="none").detach()
    before = {k: v.detach().clone() for k, v in net.named_parameters()}
    out = reweight.small_loss_step(net, torch.optim.SGD(net.parameters(), lr=0.5), x, y, 0.3)
    assert out["kept"].sum() == 7
    assert losses[out["kept"]].max() < losses[~out["kept"]].min()
    kept_loss = F.cross_entropy(forward_with(net, before, x[out["kept"]]), y[out["kept"]])
    p = {k: v.clone().requires_grad_() for k, v in before.items()}
    g = torch.autograd.grad(
        F.cross_entropy(forward_with(net, p, x[out["kept"]]), y[out["kept"]]), list(p.values())
    )
    for (name, w0), gk in zip(before.items(), g, strict=True):
        torch.testing.assert_close(dict(net.named_parameters())[name].detach(), w0 - 0.5 * gk)
    assert out["loss"] == pytest.approx(kept_loss.item())


def test_reweighted_step_descends_the_weighted_loss():
    net, _, x, y, val_x, val_y = tiny_problem(4)
    before = params_of(net)
    w = reweight.example_weights(net, before, x, y, val_x, val_y, 0.1)
    out = reweight.reweighted_step(
        net, torch.optim.SGD(net.parameters(), lr=0.1), x, y, val_x, val_y, 0.1
    )
    torch.testing.assert_close(out["weights"], w)
    expected = reweight.weighted_step(net, before, x, y, w, 0.1)
    for name, value in net.named_parameters():
        torch.testing.assert_close(value.detach(), expected[name].detach())
    assert out["mean_weight"] == pytest.approx(1 / 8)


def test_train_reweight_downweights_flipped_labels():
    """Two well-separated blobs, a third of the labels flipped: flipped examples weigh less."""
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    y_clean = torch.arange(60) % 2
    x = torch.randn(60, 2, generator=gen) + 3 * (2 * y_clean[:, None] - 1).float()
    y, flipped = reweight.flip_labels(y_clean, 2, 1 / 3, gen)
    val = (torch.tensor([[-3.0, -3.0], [3.0, 3.0]]), torch.tensor([0, 1]))
    net = MLP(in_features=2, out_features=2, hidden=(8,))
    out = reweight.train(net, x, y, "reweight", 60, 20, gen, lr=0.1, val=val)
    assert len(out["loss"]) == 60
    assert out["mean_weight"][flipped].mean() < 0.5 * out["mean_weight"][~flipped].mean()
    plain = reweight.train(MLP(2, 2, (8,)), x, y, "plain", 5, 20, gen)
    assert torch.isnan(plain["mean_weight"]).all()


def test_errors_name_the_fix():
    net = linear_model()
    p = params_of(net)
    x = torch.zeros(3, 2, dtype=torch.float64)
    y = torch.zeros(3).long()
    w = torch.ones(3, dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    cases = [
        (lambda: reweight.weighted_step(net, p, x, y, torch.ones(2), 0.1), "one weight per"),
        (lambda: reweight.weighted_step(net, p, x, y, torch.ones(3, 1), 0.1), "1-D"),
        (lambda: reweight.weighted_step(net, p, x, y, w, 0.0), "positive"),
        (lambda: reweight.weighted_step(net, p, x, y, w, -1.0), "positive"),
        (lambda: reweight.weighted_step(net, p, x[:2], y, w, 0.1), "same n"),
        (lambda: reweight.weighted_step(net, p, x, y.float(), w, 0.1), "long"),
        (lambda: reweight.weighted_step(net, p, x, y[:, None], w, 0.1), "1-D long"),
        (lambda: reweight.weighted_step(net, {}, x, y, w, 0.1), "non-empty dict"),
        (lambda: reweight.example_weights(net, p, x, y, x[:2], y, 0.1), "val_x, val_y"),
        (lambda: reweight.example_weights(net, p, x, y, x, y, 0.0), "positive"),
        (lambda: reweight.flip_labels(y, 2, 1.0, gen), r"\[0, 1\)"),
        (lambda: reweight.flip_labels(y, 2, -0.1, gen), r"\[0, 1\)"),
        (lambda: reweight.flip_labels(y, 1, 0.2, gen), "n_classes >= 2"),
        (lambda: reweight.flip_labels(y + 5, 2, 0.2, gen), "labels in"),
        (lambda: reweight.small_loss_step(net, opt, x, y, 1.0), r"\[0, 1\)"),
        (lambda: reweight.train(net, x, y, "mean", 1, 1, gen), "method must be"),
        (lambda: reweight.train(net, x, y, "reweight", 1, 1, gen), "val="),
        (lambda: reweight.train(net, x, y, "plain", 0, 1, gen), "at least 1"),
    ]
    for call, match in cases:
        with pytest.raises(ValueError, match=match):
            call()
