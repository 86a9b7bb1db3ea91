"""MAML, first-order MAML and Reptile (metalib.maml) against hand-derived gradients, finite
differences, Hessian-vector products, the per-task loop and Reptile's formula."""

from __future__ import annotations

from dataclasses import replace
from functools import partial
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from torch.func import grad, jvp

from conftest import linear_model, one_point_episode
from metalib import maml, reptile, train
from metalib.data.base import ImageClasses
from metalib.maml import MAMLConfig
from metalib.nets import MLP, Conv4, forward_with, with_batch_norm_kernel
from metalib.runtime import Budget
from metalib.tasks import Episode


@pytest.mark.parametrize(
    ("first_order", "expected_w", "expected_b"),
    [
        # derived by hand in the docstring of test_hand_derived_meta_gradients
        (False, 1.488, -2.976),
        (True, 2.48, -2.48),
    ],
)
def test_hand_derived_meta_gradients(first_order, expected_w, expected_b):
    """y = w x + b, w = 0.5, b = -0.2, alpha = 0.1, support (2, 1), query (-1, 0.5), MSE.

    r_s = w*2 + b - 1 = -0.2; w' = w - 2*alpha*r_s*2 = 0.58, b' = b - 2*alpha*r_s = -0.16;
    r_q = -w' + b' - 0.5 = -1.24; dL/dw' = 2 r_q (-1) = 2.48, dL/db' = 2 r_q = -2.48.
    First order: (2.48, -2.48). Second order multiplies by the Jacobian of (w', b'):
    [[1 - 2 alpha 2^2, -2 alpha 2], [-2 alpha 2, 1 - 2 alpha]] = [[0.2, -0.4], [-0.4, 0.8]]
    -> dL/dw = 2.48*0.2 + (-2.48)(-0.4) = 1.488, dL/db = 2.48*(-0.4) + (-2.48)(0.8) = -2.976.
    """
    net = linear_model(0.5, -0.2)
    params = dict(net.named_parameters())
    for vectorise in (False, True):
        config = MAMLConfig(1, 0.1, first_order=first_order, vectorise=vectorise)
        grads, losses = maml.meta_gradient(net, params, one_point_episode(), F.mse_loss, config)
        assert losses.item() == pytest.approx(1.24**2, abs=1e-12)
        assert grads["head.weight"].item() == pytest.approx(expected_w, abs=1e-12)
        assert grads["head.bias"].item() == pytest.approx(expected_b, abs=1e-12)


def test_adapt_takes_plain_gradient_steps():
    net = linear_model(0.5, -0.2)
    x = torch.tensor([[2.0]], dtype=torch.float64)
    y = torch.tensor([[1.0]], dtype=torch.float64)
    fast = maml.adapt(net, dict(net.named_parameters()), x, y, F.mse_loss, steps=1, lr=0.1)
    assert fast["head.weight"].item() == pytest.approx(0.58, abs=1e-12)
    assert fast["head.bias"].item() == pytest.approx(-0.16, abs=1e-12)
    two = maml.adapt(net, dict(net.named_parameters()), x, y, F.mse_loss, steps=2, lr=0.1)
    # second step from (0.58, -0.16): r = 1.16 - 0.16 - 1 = 0 -> no change
    assert two["head.weight"].item() == pytest.approx(0.58, abs=1e-12)
    same = maml.adapt(net, dict(net.named_parameters()), x, y, F.mse_loss, steps=0, lr=0.1)
    assert same["head.weight"] is net.head.weight


def tiny_conv4() -> Conv4:
    return Conv4(n_classes=3, hidden=4, image_size=16).double()


def random_episode(n_tasks: int, dtype=torch.float64, seed: int = 1, n_s: int = 3, n_q: int = 6):
    g = torch.Generator().manual_seed(seed)
    sx = torch.rand(n_tasks, n_s, 1, 16, 16, generator=g, dtype=dtype)
    qx = torch.rand(n_tasks, n_q, 1, 16, 16, generator=g, dtype=dtype)
    sy = torch.randint(0, 3, (n_tasks, n_s), generator=g)
    qy = torch.randint(0, 3, (n_tasks, n_q), generator=g)
    return Episode(sx, sy, qx, qy)


def test_second_order_meta_gradient_matches_finite_differences():
    """gradcheck of the adapted query loss (2 tasks, 2 inner steps) on Conv4 in float64."""
    net = tiny_conv4()
    names = [k for k, _ in net.named_parameters()]
    episode = random_episode(2)
    config = MAMLConfig(inner_steps=2, inner_lr=0.3, vectorise=False)

    def meta_loss(*leaves):
        params = dict(zip(names, leaves, strict=True))
        return maml.task_losses(net, params, episode, F.cross_entropy, config).mean()

    leaves = tuple(v.detach().clone().requires_grad_() for v in net.parameters())
    assert torch.autograd.gradcheck(meta_loss, leaves, eps=1e-6, atol=1e-7, rtol=1e-5)
    # and meta_gradient returns that same gradient
    grads, _ = maml.meta_gradient(
        net, dict(zip(names, leaves, strict=True)), episode, F.cross_entropy, config
    )
    reference = torch.autograd.grad(meta_loss(*leaves), leaves)
    for k, r in zip(names, reference, strict=True):
        torch.testing.assert_close(grads[k], r, rtol=1e-10, atol=1e-12)


def test_first_order_differs_from_second_order_by_the_hessian_term():
    """One step: grad_SO = (I - alpha H_s(theta)) g_q(theta'), grad_FO = g_q(theta')."""
    net = tiny_conv4()
    params = {k: v.detach().clone().requires_grad_() for k, v in net.named_parameters()}
    episode = random_episode(1)
    alpha = 0.3
    so, _ = maml.meta_gradient(
        net,
        params,
        episode,
        F.cross_entropy,
        MAMLConfig(1, alpha, first_order=False, vectorise=False),
    )
    fo, _ = maml.meta_gradient(
        net,
        params,
        episode,
        F.cross_entropy,
        MAMLConfig(1, alpha, first_order=True, vectorise=False),
    )
    e = episode.task(0)
    sx, sy = e.support_x[0], e.support_y[0]

    def support_loss(p):
        return F.cross_entropy(forward_with(net, p, sx), sy)

    theta = {k: v.detach() for k, v in params.items()}
    _, hvp = jvp(grad(support_loss), (theta,), (fo,))  # H_s(theta) @ g_q(theta')
    for k in theta:
        torch.testing.assert_close(so[k], fo[k] - alpha * hvp[k], rtol=1e-9, atol=1e-12)
    difference = sum((so[k] - fo[k]).norm() ** 2 for k in theta) ** 0.5
    assert difference > 1e-3  # the Hessian term is not negligible here


@pytest.mark.parametrize("first_order", [False, True])
def test_vectorised_and_per_task_paths_agree_in_float32(first_order):
    torch.manual_seed(0)
    net = Conv4(n_classes=3, hidden=8, image_size=16)
    params = dict(net.named_parameters())
    episode = random_episode(4, dtype=torch.float32, seed=3, n_s=6, n_q=9)
    results = {}
    for vectorise in (False, True):
        config = MAMLConfig(2, 0.4, first_order=first_order, vectorise=vectorise)
        results[vectorise] = maml.meta_gradient(net, params, episode, F.cross_entropy, config)
    (g_loop, l_loop), (g_vec, l_vec) = results[False], results[True]
    torch.testing.assert_close(l_vec, l_loop, rtol=1e-5, atol=0)
    # over the whole gradient: a conv bias followed by batch norm has an exactly zero gradient,
    # so its own relative error is rounding noise over rounding noise
    flat = lambda g: torch.cat([g[k].flatten() for k in params])  # noqa: E731
    relative = (flat(g_vec) - flat(g_loop)).norm() / flat(g_loop).norm()
    assert relative < 1e-5, relative.item()
    for k in params:  # and per tensor, wherever the gradient is not zero by construction
        if g_loop[k].norm() > 1e-4 * flat(g_loop).norm():
            assert (g_vec[k] - g_loop[k]).norm() / g_loop[k].norm() < 1e-5, k


def test_meta_step_applies_the_meta_gradient_with_the_optimizer():
    net = linear_model(0.5, -0.2)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.5)
    metrics = maml.meta_step(
        net, optimizer, one_point_episode(), F.mse_loss, MAMLConfig(1, 0.1, vectorise=False)
    )
    assert metrics["loss"] == pytest.approx(1.24**2, abs=1e-12)
    assert net.head.weight.item() == pytest.approx(0.5 - 0.5 * 1.488, abs=1e-12)
    assert net.head.bias.item() == pytest.approx(-0.2 + 0.5 * 2.976, abs=1e-12)


def test_reptile_step_equals_the_batched_formula():
    """theta <- theta + beta (1/n) sum_i (W_i - theta), W_i from plain SGD on task i's data."""
    torch.manual_seed(0)
    net = MLP(hidden=(8,)).double()
    theta = {k: v.detach().clone() for k, v in net.named_parameters()}
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 7, 1, generator=g, dtype=torch.float64)
    y = torch.randn(3, 7, 1, generator=g, dtype=torch.float64)
    episode = Episode(x[:, :3], y[:, :3], x[:, 3:], y[:, 3:])
    steps, alpha, beta = 3, 0.05, 0.7
    reference = {k: torch.zeros_like(v) for k, v in theta.items()}
    for i in range(3):  # every task by hand, with torch.optim.SGD on a copy of the network
        copy = MLP(hidden=(8,)).double()
        copy.load_state_dict(net.state_dict())
        opt = torch.optim.SGD(copy.parameters(), lr=alpha)
        for _ in range(steps):
            opt.zero_grad()
            F.mse_loss(copy(x[i]), y[i]).backward()
            opt.step()
        for k, w in copy.named_parameters():
            reference[k] += (w.detach() - theta[k]) / 3
    reptile.step(net, episode, F.mse_loss, steps, alpha, beta)
    for k, w in net.named_parameters():
        torch.testing.assert_close(w.detach(), theta[k] + beta * reference[k], rtol=0, atol=1e-12)


def test_reptile_update_formula_and_errors():
    params = {"w": torch.tensor([1.0, 2.0])}
    adapted = {"w": torch.tensor([[3.0, 2.0], [1.0, 6.0]])}
    out = reptile.update(params, adapted, 0.5)
    torch.testing.assert_close(out["w"], torch.tensor([1.5, 3.0]))
    with pytest.raises(ValueError, match="n_tasks"):
        reptile.update(params, {"w": torch.zeros(2, 3)}, 0.5)
    with pytest.raises(ValueError, match="do not match"):
        reptile.update(params, {"v": torch.zeros(2, 2)}, 0.5)


def test_predict_is_adapt_then_the_queries():
    """The recipe's ``predict``: ``test_steps`` first-order steps of the inner step size on each
    task's support set, then the queries; the same logits as adapting by hand."""
    torch.manual_seed(0)
    net = Conv4(n_classes=3, hidden=4, image_size=16)
    episode = random_episode(3, dtype=torch.float32)
    config = maml.Config(inner=MAMLConfig(1, 0.4), test_steps=2)
    logits = maml.predict(config, net, episode)
    assert logits.shape == (3, episode.query_x.shape[1], 3) and not logits.requires_grad
    params = {k: v.detach() for k, v in net.named_parameters()}
    plain = with_batch_norm_kernel(net, fused=False)
    for t in range(3):
        fast = maml.adapt(
            plain, params, episode.support_x[t], episode.support_y[t], F.cross_entropy, 2, 0.4,
            first_order=True,
        )  # fmt: skip
        by_hand = forward_with(plain, fast, episode.query_x[t])
        torch.testing.assert_close(logits[t], by_hand, rtol=1e-4, atol=1e-5)
    acc = train.accuracy_fn(partial(maml.predict, config, net), "cpu")(episode)
    torch.testing.assert_close(acc, train.accuracy(logits, episode.query_y))


def test_bad_configs_and_params_say_what_to_change():
    with pytest.raises(ValueError, match="inner_steps"):
        MAMLConfig(inner_steps=-1)
    with pytest.raises(ValueError, match="inner_lr"):
        MAMLConfig(inner_lr=0)
    net = linear_model(0.5, -0.2)
    frozen = {k: v.detach() for k, v in net.named_parameters()}
    with pytest.raises(ValueError, match="require gradients"):
        maml.meta_gradient(net, frozen, one_point_episode(), F.mse_loss, MAMLConfig())
    with pytest.raises(ValueError, match="non-empty dict"):
        maml.adapt(net, {}, torch.zeros(1, 1), torch.zeros(1, 1), F.mse_loss, 1, 0.1)


@pytest.mark.parametrize(("first_order", "steps"), [(False, 1), (False, 2), (True, 2)])
def test_fast_loop_gives_the_plain_loop_meta_gradient_in_float64(first_order, steps):
    """Channels-last images and the fused batch-norm kernel change no value and no gradient."""
    net = tiny_conv4()
    params = {k: v.detach().clone().requires_grad_() for k, v in net.named_parameters()}
    episode = random_episode(3, seed=4, n_s=4, n_q=7)
    results = {}
    for fast_loop in (False, True):
        config = MAMLConfig(steps, 0.3, first_order, vectorise=False, fast_loop=fast_loop)
        results[fast_loop] = maml.meta_gradient(net, params, episode, F.cross_entropy, config)
        outputs = maml.episode_outputs(net, params, episode, F.cross_entropy, config)
        results[fast_loop] += (outputs,)
    (g_plain, l_plain, o_plain), (g_fast, l_fast, o_fast) = results[False], results[True]
    torch.testing.assert_close(o_fast, o_plain, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(l_fast, l_plain, rtol=1e-12, atol=0)
    for k in params:
        torch.testing.assert_close(g_fast[k], g_plain[k], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("chunk", [1, 2, 8])
def test_any_chunk_gives_the_plain_loop_meta_gradient_in_float64(chunk, first_order):
    """5 tasks adapted 1, 2 (uneven: 2 + 2 + 1) or all at a time under vmap: the plain loop's
    outputs, losses and gradients, for theta and for per-parameter step sizes (``also``)."""
    net = tiny_conv4()
    params = {k: v.detach().clone().requires_grad_() for k, v in net.named_parameters()}
    g = torch.Generator().manual_seed(9)
    lrs = {k: (0.1 + 0.3 * torch.rand(v.shape, generator=g, dtype=v.dtype)).requires_grad_()
           for k, v in params.items()}  # fmt: skip
    also = {f"lr.{k}": v for k, v in lrs.items()}
    episode = random_episode(5, seed=10, n_s=4, n_q=5)
    results = []
    for fast_loop in (False, True):
        config = MAMLConfig(2, lrs, first_order, vectorise=False, fast_loop=fast_loop, chunk=chunk)
        grads, losses = maml.meta_gradient(net, params, episode, F.cross_entropy, config, also)
        outputs = maml.episode_outputs(net, params, episode, F.cross_entropy, config)
        results.append((grads, losses, outputs))
    (g_plain, l_plain, o_plain), (g_fast, l_fast, o_fast) = results
    torch.testing.assert_close(o_fast, o_plain, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(l_fast, l_plain, rtol=1e-12, atol=0)
    assert set(g_fast) == set(g_plain) == {*params, *also}
    for k in g_plain:
        assert g_plain[k].abs().max() > 0, k  # every tensor gets a gradient to compare
        torch.testing.assert_close(g_fast[k], g_plain[k], rtol=1e-9, atol=1e-12)


def test_the_fast_loop_adapts_a_chunk_of_tasks_per_call():
    """The inner loop runs once per chunk of tasks (here 3 + 3 + 1), not once per task."""
    net = tiny_conv4()
    params = {k: v.detach().clone().requires_grad_() for k, v in net.named_parameters()}
    episode = random_episode(7, seed=11)
    config = MAMLConfig(1, 0.3, vectorise=False, chunk=3)
    with mock.patch.object(maml, "_adapt_tasks", wraps=maml._adapt_tasks) as adapt_tasks:
        maml.meta_gradient(net, params, episode, F.cross_entropy, config)
    assert [c.args[2].shape[0] for c in adapt_tasks.call_args_list] == [3, 3, 1]


def test_chunk_must_be_a_positive_int():
    for bad in (0, -1, 2.0, True, None):
        with pytest.raises(ValueError, match="chunk must be an int of at least 1"):
            MAMLConfig(chunk=bad)


def test_fast_loop_agrees_with_the_plain_loop_in_float32():
    torch.manual_seed(0)
    net = Conv4(n_classes=3, hidden=8, image_size=16)
    params = dict(net.named_parameters())
    episode = random_episode(4, dtype=torch.float32, seed=3, n_s=6, n_q=9)
    results = {}
    for fast_loop in (False, True):
        config = MAMLConfig(2, 0.4, vectorise=False, fast_loop=fast_loop)
        results[fast_loop] = maml.meta_gradient(net, params, episode, F.cross_entropy, config)
    (g_plain, l_plain), (g_fast, l_fast) = results[False], results[True]
    torch.testing.assert_close(l_fast, l_plain, rtol=1e-5, atol=0)
    flat = lambda g: torch.cat([g[k].flatten() for k in params])  # noqa: E731
    relative = (flat(g_fast) - flat(g_plain)).norm() / flat(g_plain).norm()
    assert relative < 1e-5, relative.item()


def test_fast_loop_meta_gradient_matches_a_finite_difference():
    """Second order, 3 inner steps: the directional derivative of the mean adapted loss."""
    net = tiny_conv4()
    params = {k: v.detach().clone().requires_grad_() for k, v in net.named_parameters()}
    episode = random_episode(2, seed=5)
    config = MAMLConfig(3, 0.3, vectorise=False)
    grads, _ = maml.meta_gradient(net, params, episode, F.cross_entropy, config)
    g = torch.Generator().manual_seed(6)
    d = {k: torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in params.items()}

    def meta_loss(shift: float) -> torch.Tensor:
        p = {k: v.detach() + shift * d[k] for k, v in params.items()}
        return maml.task_losses(net, p, episode, F.cross_entropy, config).mean()

    eps = 1e-6
    fd = (meta_loss(eps) - meta_loss(-eps)) / (2 * eps)
    analytic = sum((grads[k] * d[k]).sum() for k in params)
    torch.testing.assert_close(analytic, fd, rtol=1e-6, atol=1e-9)


def test_default_config_runs_the_fast_loop_on_a_cpu_and_decides_once():
    net = tiny_conv4()
    params = {k: v.detach().clone().requires_grad_() for k, v in net.named_parameters()}
    episode = random_episode(3)
    cases = [
        (MAMLConfig(), False, True),  # vectorise=None on a CPU: the per-task loop, fast
        (MAMLConfig(vectorise=False), False, True),
        (MAMLConfig(vectorise=False, fast_loop=False), False, False),  # the plain loop
        (MAMLConfig(vectorise=True), True, False),  # vmap ignores fast_loop
    ]
    for config, vectorised, fast in cases:
        with mock.patch.object(maml, "_path", wraps=maml._path) as decide:
            maml.meta_gradient(net, params, episode, F.cross_entropy, config)
        assert decide.call_count == 1, config  # once per call, not once per task
        path = (
            decide.spy_return if hasattr(decide, "spy_return") else maml._path(net, config, episode)
        )
        assert path.vectorise == vectorised and (path.layout is maml._channels_last) == fast
        assert path.chunk == (config.chunk if fast else 0)


def test_channels_last_copies_images_into_channels_last_memory():
    x = torch.rand(5, 1, 8, 8)
    out = maml._channels_last(x)
    # one channel: .contiguous(memory_format=...) would keep the default strides here
    assert out.stride() == (64, 1, 8, 1) and torch.equal(out, x)
    conv = torch.nn.functional.conv2d(out, torch.randn(4, 1, 3, 3))
    assert conv.is_contiguous(memory_format=torch.channels_last)
    flat = torch.rand(5, 3)
    assert maml._channels_last(flat) is flat


def test_fast_loop_must_be_a_bool():
    with pytest.raises(ValueError, match="fast_loop must be True or False"):
        MAMLConfig(fast_loop=None)


def test_adaptation_curve_matches_plain_steps_per_task():
    """Column k is the query loss after k plain gradient steps; column 0 before any step."""
    torch.manual_seed(0)
    net = MLP(hidden=(8,)).double()
    g = torch.Generator().manual_seed(5)
    x = torch.randn(3, 9, 1, generator=g, dtype=torch.float64)
    y = torch.sin(x)
    episode = Episode(x[:, :4], y[:, :4], x[:, 4:], y[:, 4:])
    curve = maml.adaptation_curve(net, episode, F.mse_loss, lr=0.1, steps=3)
    assert curve.shape == (3, 4) and not curve.requires_grad
    for t in range(3):
        copy = MLP(hidden=(8,)).double()
        copy.load_state_dict(net.state_dict())
        opt = torch.optim.SGD(copy.parameters(), lr=0.1)
        for k in range(4):
            with torch.no_grad():
                expected = F.mse_loss(copy(x[t, 4:]), y[t, 4:])
            torch.testing.assert_close(curve[t, k], expected, rtol=1e-12, atol=1e-12)
            opt.zero_grad()
            F.mse_loss(copy(x[t, :4]), y[t, :4]).backward()
            opt.step()
    assert curve[:, -1].mean() < curve[:, 0].mean()  # the steps lower the query loss here
    with pytest.raises(ValueError, match="steps"):
        maml.adaptation_curve(net, episode, F.mse_loss, lr=0.1, steps=-1)


def test_adapt_takes_per_parameter_steps():
    """Step sizes as tensors (Meta-SGD): w' = 0.5 - 0.1 (-0.8) = 0.58, b' = -0.2 - 0.3 (-0.4)."""
    net = linear_model(0.5, -0.2)
    x = torch.tensor([[2.0]], dtype=torch.float64)
    y = torch.tensor([[1.0]], dtype=torch.float64)
    f64 = torch.float64
    lrs = {
        "head.weight": torch.full((1, 1), 0.1, dtype=f64),
        "head.bias": torch.tensor(0.3, dtype=f64),
    }
    fast = maml.adapt(net, dict(net.named_parameters()), x, y, F.mse_loss, steps=1, lr=lrs)
    assert fast["head.weight"].item() == pytest.approx(0.58, abs=1e-12)
    assert fast["head.bias"].item() == pytest.approx(-0.08, abs=1e-12)


def test_check_step_sizes_says_what_to_change():
    params = {"w": torch.zeros(2, 3), "b": torch.zeros(3)}
    maml.check_step_sizes(params, {"w": torch.zeros(2, 3), "b": torch.tensor(0.1)})
    maml.check_step_sizes(params, {"w": torch.zeros(1, 3), "b": torch.zeros(3)})  # broadcasts
    with pytest.raises(ValueError, match="exactly the names"):
        maml.check_step_sizes(params, {"w": torch.zeros(2, 3)})
    with pytest.raises(ValueError, match="exactly the names"):
        maml.check_step_sizes(params, [torch.zeros(2, 3), torch.zeros(3)])
    with pytest.raises(ValueError, match=r"full_like\(params\['b'\]"):
        maml.check_step_sizes(params, {"w": torch.zeros(2, 3), "b": torch.zeros(2)})
    with pytest.raises(ValueError, match="must be a tensor"):
        maml.check_step_sizes(params, {"w": torch.zeros(2, 3), "b": 0.1})


@pytest.mark.parametrize("vectorise", [False, True])
def test_step_size_paths_give_the_plain_loop_values_and_gradients(vectorise):
    """Per-parameter step sizes through the fast loop and vmap: the plain loop's losses and
    gradients (w.r.t. theta and the step sizes) in float64."""
    net = tiny_conv4()
    params = {k: v.detach().clone().requires_grad_() for k, v in net.named_parameters()}
    g = torch.Generator().manual_seed(7)
    lrs = {k: (0.1 + 0.3 * torch.rand(v.shape, generator=g, dtype=v.dtype)).requires_grad_()
           for k, v in params.items()}  # fmt: skip
    episode = random_episode(2, seed=8)
    leaves = [*params.values(), *lrs.values()]
    results = []
    for config in (
        MAMLConfig(2, vectorise=False, fast_loop=False),
        MAMLConfig(2, vectorise=vectorise, fast_loop=True),
    ):
        losses = maml.task_losses(
            net, params, episode, F.cross_entropy, replace(config, inner_lr=lrs)
        )
        results.append((losses, torch.autograd.grad(losses.mean(), leaves)))
    (l_plain, g_plain), (l_other, g_other) = results
    torch.testing.assert_close(l_other, l_plain, rtol=1e-12, atol=0)
    for a, b in zip(g_other, g_plain, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_recipe_keeps_snapshots_with_the_training_seconds():
    """maml.train with snapshots=2 over 4 meta-iterations keeps the weights after 2 and 4, the
    last equal to the trained network's; the history records the seconds where it kept them."""
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (6, 3, 16, 16), generator=g, dtype=torch.uint8)
    data = ImageClasses("rand/train", images, tuple(f"c{i}" for i in range(6)), ("g",) * 6)
    config = maml.Config(n_way=3, hidden=4, steps=4, tasks=2, queries=2, snapshots=2)
    run = maml.train(config, data, torch.Generator().manual_seed(1), torch.device("cpu"))
    assert sorted(run.snapshots) == [2, 4]
    for k, v in run.model.state_dict().items():
        assert torch.equal(run.snapshots[4][k], v)
    assert not torch.equal(run.snapshots[2]["head.weight"], run.snapshots[4]["head.weight"])
    seconds = [run.history["seconds"][run.history.step.index(i - 1)] for i in (2, 4)]
    assert 0 < seconds[0] < seconds[1]
    assert maml.train(replace(config, snapshots=0), data, g, torch.device("cpu")).snapshots == {}
    for bad in (-1, 5, 1.0):
        with pytest.raises(ValueError, match="snapshots must be"):
            replace(config, snapshots=bad)


def test_recipe_trains_on_tasks_of_its_shots():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (6, 4, 16, 16), generator=g, dtype=torch.uint8)
    data = ImageClasses("rand/train", images, tuple(f"c{i}" for i in range(6)), ("g",) * 6)
    config = maml.Config(n_way=3, hidden=4, shots=2, steps=2, tasks=2, queries=1)
    with mock.patch.object(maml, "sample_episodes", wraps=maml.sample_episodes) as sample:
        maml.train(config, data, torch.Generator().manual_seed(1), torch.device("cpu"))
    assert [c.args[1:5] for c in sample.call_args_list] == [(3, 2, 1, 2)] * 2
    with pytest.raises(ValueError, match="shots must be an int of at least 1"):
        replace(config, shots=0)


def test_preset_tests_as_it_trains():
    """The book's recipe adapts a test task by the inner steps of meta-training: one step of 0.4
    (second order), three of 0.1 (first order); the budget changes only the meta-iterations."""
    for budget in (Budget("default"), Budget("long")):
        second, first = maml.Config.preset(budget), maml.Config.preset(budget, first_order=True)
        assert (second.inner.inner_steps, second.inner.inner_lr, second.test_steps) == (1, 0.4, 1)
        assert (first.inner.inner_steps, first.inner.inner_lr, first.test_steps) == (3, 0.1, 3)
    assert maml.Config.preset(Budget("default"), test_steps=5).test_steps == 5


def test_preset_iterations_per_budget():
    """Second-order MAML trains 400 meta-iterations at the default budget, first order and
    Meta-SGD's base 160; all 5,000 at ``long``."""
    from metalib import meta_sgd

    default, long = Budget("default"), Budget("long")
    assert maml.Config.preset(default).steps == 400
    assert maml.Config.preset(default, first_order=True).steps == 160
    assert meta_sgd.Config.preset(default).base.steps == 160
    assert meta_sgd.Config.preset(default).base == maml.Config.preset(default, steps=160)
    for preset in (
        maml.Config.preset(long),
        maml.Config.preset(long, first_order=True),
        meta_sgd.Config.preset(long).base,
    ):
        assert preset.steps == 5_000
