"""Meta-SGD (metalib.meta_sgd) and the per-parameter step sizes of metalib.maml: the update by
hand, the reduction to MAML when every step size equals MAML's alpha (bitwise), the step-size
meta-gradient by hand and against finite differences in float64, vmap against the loop."""

from __future__ import annotations

import dataclasses
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch.func import grad

from conftest import linear_model, one_point_episode
from metalib import maml, meta_sgd
from metalib.maml import MAMLConfig
from metalib.meta_sgd import MetaSGD, inner_update
from metalib.nets import MLP, Conv4, forward_with
from metalib.tasks import Episode


def random_episode(n_tasks: int, seed: int = 1, n_s: int = 3, n_q: int = 6) -> Episode:
    g = torch.Generator().manual_seed(seed)
    sx = torch.rand(n_tasks, n_s, 1, 16, 16, generator=g, dtype=torch.float64)
    qx = torch.rand(n_tasks, n_q, 1, 16, 16, generator=g, dtype=torch.float64)
    sy = torch.randint(0, 3, (n_tasks, n_s), generator=g)
    qy = torch.randint(0, 3, (n_tasks, n_q), generator=g)
    return Episode(sx, sy, qx, qy)


def tiny_conv4(seed: int = 0) -> Conv4:
    torch.manual_seed(seed)
    return Conv4(n_classes=3, hidden=4, image_size=16).double()


def test_inner_update_by_hand():
    params = {"w": torch.tensor([1.0, 2.0]), "b": torch.tensor(3.0)}
    grads = {"w": torch.tensor([0.5, -1.0]), "b": torch.tensor(2.0)}
    lrs = {"w": torch.tensor([0.1, 0.2]), "b": torch.tensor(0.5)}
    out = inner_update(params, grads, lrs)
    torch.testing.assert_close(out["w"], torch.tensor([0.95, 2.2]), rtol=0, atol=1e-7)
    torch.testing.assert_close(out["b"], torch.tensor(2.0), rtol=0, atol=0)
    # a 0-d step size broadcasts: MAML's scalar step
    same = inner_update(params, grads, {"w": torch.tensor(0.1), "b": torch.tensor(0.5)})
    torch.testing.assert_close(same["w"], torch.tensor([0.95, 2.1]), rtol=0, atol=1e-7)


def test_inner_update_and_adapt_reject_bad_step_sizes():
    params = {"w": torch.zeros(2, 3)}
    grads = {"w": torch.ones(2, 3)}
    with pytest.raises(ValueError, match="exactly the names"):
        inner_update(params, grads, {"v": torch.zeros(2, 3)})
    with pytest.raises(ValueError, match="does not broadcast"):
        inner_update(params, grads, {"w": torch.zeros(3, 2)})
    with pytest.raises(ValueError, match="does not broadcast"):
        inner_update(params, grads, {"w": torch.zeros(1, 2, 3)})  # broadcasts *past* the shape
    with pytest.raises(ValueError, match="must be a tensor"):
        inner_update(params, grads, {"w": 0.1})
    with pytest.raises(ValueError, match="grads must have exactly"):
        inner_update(params, {"v": torch.ones(2, 3)}, {"w": torch.zeros(2, 3)})
    with pytest.raises(ValueError, match="expected"):
        inner_update(params, {"w": torch.ones(3)}, {"w": torch.zeros(2, 3)})
    net = linear_model(0.5, -0.2)
    x = torch.ones(1, 1, dtype=torch.float64)
    with pytest.raises(ValueError, match="exactly the names"):
        maml.adapt(net, dict(net.named_parameters()), x, x, F.mse_loss, 1, {"head.weight": x})


def test_adapt_with_step_sizes_is_repeated_inner_update():
    """maml.adapt with a dict takes exactly the step of inner_update, at every step."""
    torch.manual_seed(0)
    net = MLP(hidden=(5,)).double()
    theta = {k: v.detach() for k, v in net.named_parameters()}
    g = torch.Generator().manual_seed(1)
    lrs = {k: 0.1 * torch.rand(v.shape, generator=g, dtype=v.dtype) for k, v in theta.items()}
    x = torch.randn(6, 1, generator=g, dtype=torch.float64)
    y = torch.sin(x)
    expected = theta
    for _ in range(3):
        grads = grad(lambda p: F.mse_loss(forward_with(net, p, x), y))(expected)
        expected = inner_update(expected, grads, lrs)
    fast = maml.adapt(net, theta, x, y, F.mse_loss, 3, lrs)
    for k in theta:
        assert torch.equal(fast[k], expected[k]), k


def test_step_size_meta_gradient_by_hand():
    """y = w x + b at (0.5, -0.2), support (2, 1), query (-1, 0.5), MSE, steps 0.1 (w), 0.3 (b).

    r_s = 2w + b - 1 = -0.2, g_w = 2 r_s 2 = -0.8, g_b = 2 r_s = -0.4.
    w' = 0.5 + 0.08 = 0.58, b' = -0.2 + 0.12 = -0.08; r_q = -w' + b' - 0.5 = -1.16.
    dL/dw' = -2 r_q = 2.32, dL/db' = 2 r_q = -2.32.
    dL/dalpha_w = -g_w dL/dw' = 0.8 * 2.32 = 1.856; dL/dalpha_b = -g_b dL/db' = -0.928.
    dL/dw = dL/dw' (1 - 8 alpha_w) + dL/db' (-4 alpha_b) = 2.32 * 0.2 + 2.32 * 1.2 = 3.248;
    dL/db = dL/dw' (-4 alpha_w) + dL/db' (1 - 2 alpha_b) = -0.928 - 2.32 * 0.4 = -1.856.
    """
    model = MetaSGD(linear_model(0.5, -0.2), init=0.1)
    with torch.no_grad():
        model.lrs["head-bias"].fill_(0.3)
    for vectorise in (False, True):
        config = MAMLConfig(1, vectorise=vectorise)
        g_theta, g_lrs, losses = meta_sgd.meta_gradient(
            model, one_point_episode(), F.mse_loss, config
        )
        assert losses.item() == pytest.approx(1.16**2, abs=1e-12)
        assert g_lrs["head.weight"].item() == pytest.approx(1.856, abs=1e-12)
        assert g_lrs["head.bias"].item() == pytest.approx(-0.928, abs=1e-12)
        assert g_theta["head.weight"].item() == pytest.approx(3.248, abs=1e-12)
        assert g_theta["head.bias"].item() == pytest.approx(-1.856, abs=1e-12)
        # first order keeps the step-size gradient (only the Hessian term goes)
        fo = dataclasses.replace(config, first_order=True)
        g_theta, g_lrs, _ = meta_sgd.meta_gradient(model, one_point_episode(), F.mse_loss, fo)
        assert g_lrs["head.weight"].item() == pytest.approx(1.856, abs=1e-12)
        assert g_theta["head.weight"].item() == pytest.approx(2.32, abs=1e-12)


@pytest.mark.parametrize("fast_loop", [False, True])
@pytest.mark.parametrize("first_order", [False, True])
def test_equal_step_sizes_reduce_to_maml_exactly(first_order, fast_loop):
    """All step sizes = alpha: adapted weights, losses and the meta-gradient w.r.t. theta are
    bitwise MAML's (alpha * g and alpha_tensor * g round identically; the graph into theta is the
    same), on Conv4 with 2 inner steps, second and first order."""
    alpha, steps = 0.3, 2
    net = tiny_conv4()
    model = MetaSGD(net, init=alpha)
    episode = random_episode(3, seed=2)
    config = MAMLConfig(steps, alpha, first_order, vectorise=False, fast_loop=fast_loop)
    theta = model.weights()
    ref, ref_losses = maml.meta_gradient(net, theta, episode, F.cross_entropy, config)
    g_theta, g_lrs, losses = meta_sgd.meta_gradient(model, episode, F.cross_entropy, config)
    assert torch.equal(losses, ref_losses)
    for k in theta:
        assert torch.equal(g_theta[k], ref[k]), k
    assert sum(g.abs().sum() for g in g_lrs.values()) > 0  # and alpha gets a gradient
    e = episode.task(0)
    sx, sy = e.support_x[0], e.support_y[0]
    fast_maml = maml.adapt(net, theta, sx, sy, F.cross_entropy, steps, alpha, first_order)
    fast_msgd = maml.adapt(net, theta, sx, sy, F.cross_entropy, steps, model.step_sizes())
    for k in theta:
        assert torch.equal(fast_msgd[k], fast_maml[k]), k


def test_step_size_meta_gradient_matches_finite_differences():
    """Second order, 2 inner steps, Conv4 in float64, random step sizes: the directional
    derivative along random directions of alpha against central differences."""
    model = MetaSGD(tiny_conv4(1), init=(0.05, 0.3), generator=torch.Generator().manual_seed(0))
    episode = random_episode(2, seed=3)
    config = MAMLConfig(2, vectorise=False)
    theta = {k: v.detach() for k, v in model.weights().items()}
    alphas = {k: v.detach() for k, v in model.step_sizes().items()}
    _, g_lrs, _ = meta_sgd.meta_gradient(model, episode, F.cross_entropy, config)

    def meta_loss(lrs):
        return maml.task_losses(
            model.net, theta, episode, F.cross_entropy, replace(config, inner_lr=lrs)
        ).mean()

    g = torch.Generator().manual_seed(4)
    eps = 1e-6
    for _ in range(3):
        d = {k: torch.randn(a.shape, generator=g, dtype=a.dtype) for k, a in alphas.items()}
        plus = meta_loss({k: a + eps * d[k] for k, a in alphas.items()})
        minus = meta_loss({k: a - eps * d[k] for k, a in alphas.items()})
        fd = (plus - minus) / (2 * eps)
        analytic = sum((g_lrs[k] * d[k]).sum() for k in alphas)
        torch.testing.assert_close(analytic, fd, rtol=1e-6, atol=1e-9)


def test_step_size_meta_gradient_passes_gradcheck():
    """Every step size of a small MLP, 3 inner steps, second order, float64 (gradcheck)."""
    torch.manual_seed(2)
    net = MLP(hidden=(4,)).double()
    theta = {k: v.detach() for k, v in net.named_parameters()}
    names = list(theta)
    g = torch.Generator().manual_seed(6)
    x = torch.randn(2, 9, 1, generator=g, dtype=torch.float64)
    episode = Episode(x[:, :4], torch.sin(x[:, :4]), x[:, 4:], torch.sin(x[:, 4:]))
    config = MAMLConfig(3, vectorise=False)

    def meta_loss(*alphas):
        lrs = dict(zip(names, alphas, strict=True))
        return maml.task_losses(
            net, theta, episode, F.mse_loss, replace(config, inner_lr=lrs)
        ).mean()

    alphas = tuple(
        0.05 + 0.2 * torch.rand(v.shape, generator=g, dtype=v.dtype) for v in theta.values()
    )
    leaves = tuple(a.requires_grad_() for a in alphas)
    assert torch.autograd.gradcheck(meta_loss, leaves, eps=1e-6, atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize("first_order", [False, True])
def test_vectorised_path_agrees_with_the_loop(first_order):
    """Under vmap the step sizes are shared by the tasks (unbatched): same gradients."""
    model = MetaSGD(MLP(hidden=(8,)).double(), init=(0.01, 0.1), generator=torch.Generator())
    g = torch.Generator().manual_seed(5)
    x = torch.randn(4, 9, 1, generator=g, dtype=torch.float64)
    episode = Episode(x[:, :4], torch.sin(x[:, :4]), x[:, 4:], torch.sin(x[:, 4:]))
    out = {}
    for vectorise in (False, True):
        config = MAMLConfig(2, first_order=first_order, vectorise=vectorise)
        out[vectorise] = meta_sgd.meta_gradient(model, episode, F.mse_loss, config)
    for a, b in zip(out[False], out[True], strict=True):
        if isinstance(a, dict):
            for k in a:
                torch.testing.assert_close(b[k], a[k], rtol=1e-10, atol=1e-12)
        else:
            torch.testing.assert_close(b, a, rtol=1e-12, atol=0)


def test_meta_step_updates_theta_and_step_sizes():
    """Plain SGD of size 0.5 on the gradients derived in test_step_size_meta_gradient_by_hand."""
    model = MetaSGD(linear_model(0.5, -0.2), init=0.1)
    with torch.no_grad():
        model.lrs["head-bias"].fill_(0.3)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    metrics = meta_sgd.meta_step(model, opt, one_point_episode(), F.mse_loss, MAMLConfig(1))
    assert metrics["loss"] == pytest.approx(1.16**2, abs=1e-12)
    assert metrics["mean_lr"] == pytest.approx(0.2, abs=1e-12)  # before the update
    lrs = model.step_sizes()
    assert lrs["head.weight"].item() == pytest.approx(0.1 - 0.5 * 1.856, abs=1e-12)
    assert lrs["head.bias"].item() == pytest.approx(0.3 + 0.5 * 0.928, abs=1e-12)
    assert model.net.head.weight.item() == pytest.approx(0.5 - 0.5 * 3.248, abs=1e-12)
    assert model.net.head.bias.item() == pytest.approx(-0.2 + 0.5 * 1.856, abs=1e-12)


def test_model_holds_one_step_size_per_weight():
    torch.manual_seed(0)
    net = Conv4(n_classes=3, hidden=4, image_size=16).to(memory_format=torch.channels_last)
    model = MetaSGD(net, init=(0.005, 0.1), generator=torch.Generator().manual_seed(0))
    lrs = model.step_sizes()
    assert list(lrs) == [k for k, _ in net.named_parameters()]
    n_theta = sum(p.numel() for p in net.parameters())
    assert sum(p.numel() for p in model.parameters()) == 2 * n_theta
    flat = torch.cat([a.detach().flatten() for a in lrs.values()])
    assert flat.min() >= 0.005 and flat.max() <= 0.1 and flat.std() > 0.01
    conv = "body.0.0.weight"  # step sizes keep their weight's memory layout
    assert lrs[conv].is_contiguous(memory_format=torch.channels_last)
    again = MetaSGD(net, init=(0.005, 0.1), generator=torch.Generator().manual_seed(0))
    assert torch.equal(again.step_sizes()[conv], lrs[conv])
    assert model(torch.rand(2, 1, 16, 16)).shape == (2, 3)
    with pytest.raises(ValueError, match="low < high"):
        MetaSGD(net, init=(0.1, 0.01))
    with pytest.raises(ValueError, match="number or a"):
        MetaSGD(net, init="0.1")


def test_predict_and_adaptation_curve_use_the_step_sizes():
    torch.manual_seed(0)
    net = Conv4(n_classes=3, hidden=4, image_size=16)
    model = MetaSGD(net, init=0.4)
    episode = random_episode(3)
    episode = Episode(
        *(
            t.float() if t.is_floating_point() else t
            for t in (episode.support_x, episode.support_y, episode.query_x, episode.query_y)
        )
    )
    recipe = maml.Config(inner=MAMLConfig(1, 0.4), test_steps=1)
    logits = meta_sgd.predict(meta_sgd.Config(base=recipe), model, episode)
    assert torch.equal(logits, maml.predict(recipe, net, episode))  # step sizes all 0.4
    mlp = MetaSGD(MLP(hidden=(8,)).double(), init=0.05)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(3, 9, 1, generator=g, dtype=torch.float64)
    ep = Episode(x[:, :4], torch.sin(x[:, :4]), x[:, 4:], torch.sin(x[:, 4:]))
    per_param = maml.adaptation_curve(mlp.net, ep, F.mse_loss, mlp.step_sizes(), 3)
    scalar = maml.adaptation_curve(mlp.net, ep, F.mse_loss, 0.05, 3)
    torch.testing.assert_close(per_param, scalar, rtol=0, atol=0)
    assert not per_param.requires_grad
