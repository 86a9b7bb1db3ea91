"""Tests of metalib.nets: shapes, functional calls against hand-written float64 forwards, first and
second derivatives (gradcheck, gradgradcheck, vmap against a loop), batch-statistics BN."""

from __future__ import annotations

from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from metalib import nets
from metalib.nets import (
    MLP,
    BatchStatNorm2d,
    Conv4,
    forward_with,
    params,
    with_batch_norm_kernel,
    with_new_head,
)


def tiny_conv4(n_classes: int = 3) -> Conv4:
    return Conv4(n_classes=n_classes, hidden=4, image_size=16).double()


def test_conv4_shapes_and_feature_dim():
    net = Conv4(n_classes=5)
    assert net.feature_dim == 64
    assert net(torch.rand(7, 1, 28, 28)).shape == (7, 5)
    assert net.features(torch.rand(7, 1, 28, 28)).shape == (7, 64)
    # 32 -> 16 -> 8 -> 4 -> 2: four 2x2 maps of 8 channels
    wide = Conv4(n_classes=2, in_channels=3, hidden=8, image_size=32)
    assert wide.feature_dim == 32 and wide(torch.rand(2, 3, 32, 32)).shape == (2, 2)
    assert isinstance(net.head, nn.Linear) and isinstance(net.body, nn.Sequential)


def test_mlp_shapes_and_hand_forward():
    net = MLP(in_features=2, out_features=3, hidden=(5, 4)).double()
    x = torch.randn(6, 2, dtype=torch.float64)
    assert net(x).shape == (6, 3) and net.features(x).shape == (6, 4) and net.feature_dim == 4
    assert net(torch.zeros(2, 6, 2, dtype=torch.float64)).shape == (2, 6, 3)
    w = params(net)
    h = torch.relu(x @ w["body.0.weight"].T + w["body.0.bias"])
    h = torch.relu(h @ w["body.2.weight"].T + w["body.2.bias"])
    torch.testing.assert_close(net(x), h @ w["head.weight"].T + w["head.bias"], rtol=0, atol=1e-14)
    linear = MLP(in_features=3, out_features=1, hidden=())
    assert linear.feature_dim == 3 and linear(torch.zeros(4, 3)).shape == (4, 1)


def test_params_are_the_live_named_parameters():
    net = MLP()
    p = params(net)
    assert list(p) == [name for name, _ in net.named_parameters()]
    assert all(p[k] is v for k, v in net.named_parameters())


def test_forward_with_own_params_equals_forward_exactly():
    net = tiny_conv4()
    x = torch.rand(5, 1, 16, 16, dtype=torch.float64)
    assert torch.equal(forward_with(net, params(net), x), net(x))
    mlp = MLP()
    xs = torch.rand(9, 1)
    assert torch.equal(forward_with(mlp, params(mlp), xs), mlp(xs))


def test_forward_with_perturbed_params_matches_a_hand_computation():
    net = MLP(hidden=(40, 40)).double()
    x = torch.linspace(-5, 5, 11, dtype=torch.float64)[:, None]
    g = torch.Generator().manual_seed(0)
    p = {
        k: v.detach() + 0.1 * torch.randn(v.shape, generator=g, dtype=v.dtype)
        for k, v in params(net).items()
    }
    out = forward_with(net, p, x)
    assert not torch.allclose(out, net(x))
    h = torch.relu(x @ p["body.0.weight"].T + p["body.0.bias"])
    h = torch.relu(h @ p["body.2.weight"].T + p["body.2.bias"])
    torch.testing.assert_close(out, h @ p["head.weight"].T + p["head.bias"], rtol=0, atol=1e-12)


def test_forward_with_missing_names_fall_back_to_the_module():
    net = MLP().double()
    x = torch.rand(4, 1, dtype=torch.float64)
    head = {
        "head.weight": torch.zeros(1, 40, dtype=torch.float64),
        "head.bias": torch.ones(1, dtype=torch.float64),
    }
    torch.testing.assert_close(forward_with(net, head, x), torch.ones(4, 1, dtype=torch.float64))


def test_forward_with_rejects_unknown_names():
    with pytest.raises(ValueError, match=r"does not have: \['head.wieght'\]"):
        forward_with(MLP(), {"head.wieght": torch.zeros(1, 40)}, torch.zeros(2, 1))


def test_grad_through_forward_with_matches_autograd():
    net = tiny_conv4()
    x = torch.rand(6, 1, 16, 16, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    p = {k: v.detach() for k, v in params(net).items()}
    g = grad(lambda p: F.cross_entropy(forward_with(net, p, x), y))(p)
    F.cross_entropy(net(x), y).backward()
    for name, w in net.named_parameters():
        torch.testing.assert_close(g[name], w.grad, rtol=1e-10, atol=1e-12)


def test_gradcheck_and_gradgradcheck_through_conv4():
    """First and second derivatives of Conv4 w.r.t. its parameters and input (what MAML needs)."""
    torch.manual_seed(0)
    net = tiny_conv4()
    names = [k for k, _ in net.named_parameters()]
    x = torch.rand(3, 1, 16, 16, dtype=torch.float64, requires_grad=True)

    def f(x, *ws):
        return forward_with(net, dict(zip(names, ws, strict=True)), x)

    ws = tuple(w.detach().clone().requires_grad_() for w in params(net).values())
    assert torch.autograd.gradcheck(f, (x, *ws))
    # the full second-derivative check takes 5 s; fast mode checks random projections of it
    assert torch.autograd.gradgradcheck(f, (x, *ws), fast_mode=True)


def test_second_order_vmap_over_tasks_matches_a_loop():
    """Backprop through vmap of a MAML inner step: with nn.BatchNorm2d this is silently wrong."""
    torch.manual_seed(0)
    net = tiny_conv4()
    p = {k: v.detach() for k, v in params(net).items()}
    g = torch.Generator().manual_seed(1)
    xs, xq = (torch.rand(4, 6, 1, 16, 16, generator=g, dtype=torch.float64) for _ in range(2))
    ys, yq = (torch.randint(0, 3, (4, 6), generator=g) for _ in range(2))

    def loss(p, x, y):
        return F.cross_entropy(functional_call(net, p, (x,)), y)

    def adapted_loss(p, xs, ys, xq, yq):
        gs = grad(loss)(p, xs, ys)
        return loss({k: p[k] - 0.4 * gs[k] for k in p}, xq, yq)

    loop = [grad(adapted_loss)(p, xs[t], ys[t], xq[t], yq[t]) for t in range(4)]
    mean_loss = lambda p: vmap(adapted_loss, in_dims=(None, 0, 0, 0, 0))(p, xs, ys, xq, yq).mean()
    vectorised = grad(mean_loss)(p)
    for k in p:
        torch.testing.assert_close(
            vectorised[k], sum(lp[k] for lp in loop) / 4, rtol=1e-9, atol=1e-12
        )
    # and the meta-gradient against a central finite difference along a random direction
    d = {k: torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in p.items()}
    eps = 1e-6
    shifted = [{k: p[k] + s * eps * d[k] for k in p} for s in (1, -1)]
    fd = (mean_loss(shifted[0]) - mean_loss(shifted[1])) / (2 * eps)
    analytic = sum((vectorised[k] * d[k]).sum() for k in p)
    torch.testing.assert_close(analytic, fd, rtol=1e-6, atol=1e-8)


def test_batch_norm_uses_batch_statistics_in_eval_mode_too():
    net = tiny_conv4()
    x = torch.rand(5, 1, 16, 16, dtype=torch.float64)
    train_out = net.train()(x)
    eval_out = net.eval()(x)
    torch.testing.assert_close(train_out, eval_out, rtol=0, atol=0)
    assert not any(b.numel() for b in net.buffers()), "no running statistics are kept"
    # an image's output depends on the rest of its batch (batch statistics)
    assert not torch.allclose(net(x)[:2], net(x[:2]))


def test_batch_stat_norm_equals_torch_batch_norm():
    bn = BatchStatNorm2d(3).double()
    ref = nn.BatchNorm2d(3, track_running_stats=False).double()
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2)
        bn.bias.uniform_(-1, 1)
        ref.load_state_dict(bn.state_dict())
    x = torch.randn(4, 3, 5, 5, dtype=torch.float64) * 3 + 1
    torch.testing.assert_close(bn(x), ref(x), rtol=1e-12, atol=1e-12)
    # per channel: mean = bias, biased std = weight (up to eps)
    out = bn(x)
    torch.testing.assert_close(out.mean(dim=(0, 2, 3)), bn.bias.detach(), rtol=0, atol=1e-12)
    torch.testing.assert_close(
        out.std(dim=(0, 2, 3), correction=0), bn.weight.detach(), rtol=1e-5, atol=0
    )


def test_with_new_head_copies_body_and_leaves_original_untouched():
    torch.manual_seed(0)
    net = Conv4(n_classes=5, hidden=8)
    before = {k: v.detach().clone() for k, v in params(net).items()}
    new = with_new_head(net, 3, torch.Generator().manual_seed(0))
    assert new.head.out_features == 3 and net.head.out_features == 5
    for k, v in params(net).items():
        torch.testing.assert_close(v.detach(), before[k], rtol=0, atol=0)
    for k, v in params(new.body).items():
        torch.testing.assert_close(v.detach(), before["body." + k], rtol=0, atol=0)
        assert v is not params(net.body)[k], "the body must be a copy"
    bound = 1 / 8**0.5
    assert new.head.weight.abs().max() <= bound and new.head.bias.abs().max() <= bound
    again = with_new_head(net, 3, torch.Generator().manual_seed(0))
    torch.testing.assert_close(again.head.weight, new.head.weight, rtol=0, atol=0)
    other = with_new_head(net, 3, torch.Generator().manual_seed(1))
    assert not torch.equal(other.head.weight, new.head.weight)
    x = torch.rand(4, 1, 28, 28)
    torch.testing.assert_close(new.features(x), net.features(x))
    assert new(x).shape == (4, 3)


def test_with_new_head_keeps_dtype():
    new = with_new_head(MLP().double(), 2)
    assert new.head.weight.dtype == torch.float64 and new(
        torch.zeros(3, 1, dtype=torch.float64)
    ).shape == (3, 2)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: Conv4(image_size=15), "at least 16 x 16"),
        (lambda: Conv4(hidden=0), "hidden"),
        (lambda: Conv4(n_classes=0), "n_classes must be at least 1"),
        (lambda: Conv4(in_channels=0), "in_channels must be at least 1"),
        (lambda: MLP(hidden=(40, 0)), "at least 1 unit"),
        (lambda: MLP(out_features=0), "at least 1 unit"),
        (lambda: with_new_head(MLP(), 0), "n_classes must be at least 1"),
        (lambda: with_new_head(nn.Linear(2, 2), 3), "no linear `head`"),
    ],
)
def test_construction_errors(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_input_shape_errors_name_the_expected_shape():
    with pytest.raises(ValueError, match=r"\(B, 1, 28, 28\), got \(2, 5, 1, 28, 28\)"):
        Conv4()(torch.zeros(2, 5, 1, 28, 28))
    with pytest.raises(ValueError, match=r"\(B, 1, 28, 28\), got \(2, 1, 16, 16\)"):
        Conv4().features(torch.zeros(2, 1, 16, 16))
    with pytest.raises(ValueError, match=r"\(\.\.\., 1\), got \(10,\)"):
        MLP()(torch.zeros(10))


def _bn_with_random_affine(channels: int = 3, fused: bool = False) -> BatchStatNorm2d:
    bn = BatchStatNorm2d(channels, fused=fused).double()
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2, generator=torch.Generator().manual_seed(0))
        bn.bias.uniform_(-1, 1, generator=torch.Generator().manual_seed(1))
    return bn


def test_fused_kernel_is_chosen_when_built_and_keeps_the_values():
    bn = _bn_with_random_affine()
    fused_bn = _bn_with_random_affine(fused=True)
    g = torch.Generator().manual_seed(2)
    x = (torch.randn(4, 3, 5, 5, generator=g, dtype=torch.float64) * 3 + 1).requires_grad_()
    plain, fused = bn(x), fused_bn(x)
    assert type(fused.grad_fn).__name__ == "NativeBatchNormBackward0"
    assert type(plain.grad_fn).__name__ != "NativeBatchNormBackward0"
    torch.testing.assert_close(fused, plain, rtol=1e-12, atol=1e-12)
    # first and second derivatives of the two kernels agree (what second-order MAML needs)
    v = torch.randn(plain.shape, generator=g, dtype=torch.float64)
    grads = []
    for layer, out in ((bn, plain), (fused_bn, fused)):
        gx, gw = torch.autograd.grad((out * v).sum(), (x, layer.weight), create_graph=True)
        grads.append(torch.autograd.grad(gx.square().sum() + gw.square().sum(), (x, layer.weight)))
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="fused must be True or False"):
        BatchStatNorm2d(3, fused="yes")
    assert "fused=True" in repr(fused_bn)


def test_conv4_fused_norm_option():
    torch.manual_seed(0)
    plain = tiny_conv4()
    torch.manual_seed(0)
    fused = Conv4(n_classes=3, hidden=4, image_size=16, fused_norm=True).double()
    norms = [m for m in fused.modules() if isinstance(m, BatchStatNorm2d)]
    assert len(norms) == 4 and all(m.fused for m in norms)
    x = torch.rand(5, 1, 16, 16, dtype=torch.float64)
    torch.testing.assert_close(fused(x), plain(x), rtol=1e-10, atol=1e-12)  # same weights drawn
    with pytest.raises(ValueError, match='kernel of norm="batch"'):
        Conv4(norm="running", fused_norm=True)


def test_batch_stat_norm_accepts_channels_last_input():
    x = torch.randn(3, 4, 6, 6, dtype=torch.float64)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    for fused in (False, True):
        bn = _bn_with_random_affine(4, fused=fused)
        torch.testing.assert_close(bn(x_cl), bn(x), rtol=1e-12, atol=1e-12)


def test_with_batch_norm_kernel_shares_the_weights_and_leaves_the_network_alone():
    net = Conv4(n_classes=3, hidden=4, image_size=16, fused_norm=True)
    assert with_batch_norm_kernel(net, fused=True) is net  # nothing to change: no copy
    plain = with_batch_norm_kernel(net, fused=False)
    assert plain is not net
    assert all(m.fused for m in net.modules() if isinstance(m, BatchStatNorm2d))
    assert not any(m.fused for m in plain.modules() if isinstance(m, BatchStatNorm2d))
    mine, theirs = dict(net.named_parameters()), dict(plain.named_parameters())
    assert list(mine) == list(theirs) and all(mine[k] is theirs[k] for k in mine)
    x = torch.rand(6, 1, 16, 16)
    calls = mock.patch.object(nets.F, "batch_norm", wraps=F.batch_norm)
    with calls as batch_norm:
        out = plain(x)
        assert batch_norm.call_count == 0
        torch.testing.assert_close(out, net(x), rtol=1e-5, atol=1e-5)
        assert batch_norm.call_count == 4


def test_vectorised_maml_runs_the_plain_kernel_of_a_fused_network():
    """A network built with the fused kernel: MAML's vmap path swaps in the plain operations (the
    fused kernel's batching rule is wrong under vmap), and its meta-gradient is the loop's."""
    from metalib import maml
    from metalib.tasks import Episode

    torch.manual_seed(0)
    net = Conv4(n_classes=3, hidden=4, image_size=16, fused_norm=True).double()
    g = torch.Generator().manual_seed(1)
    xs, xq = (torch.rand(3, 6, 1, 16, 16, generator=g, dtype=torch.float64) for _ in range(2))
    ys, yq = (torch.randint(0, 3, (3, 6), generator=g) for _ in range(2))
    episode = Episode(xs, ys, xq, yq)
    p = dict(net.named_parameters())
    grads = {}
    calls = mock.patch.object(nets.F, "batch_norm", wraps=F.batch_norm)
    for vectorise, fast_loop in ((True, True), (False, True), (False, False)):
        config = maml.MAMLConfig(1, 0.4, vectorise=vectorise, fast_loop=fast_loop)
        with calls as batch_norm:
            grads[vectorise, fast_loop] = maml.meta_gradient(
                net, p, episode, F.cross_entropy, config
            )[0]
        # the per-task fast loop runs the fused kernel on the queries; vmap and the plain loop never
        assert (batch_norm.call_count > 0) == (fast_loop and not vectorise)
    for k in p:
        reference = grads[False, False][k]
        for key in ((True, True), (False, True)):
            torch.testing.assert_close(grads[key][k], reference, rtol=1e-9, atol=1e-12)


def test_conv4_norm_option_keeps_the_default_and_adds_running_statistics():
    default = Conv4(hidden=4, image_size=16)
    assert all(type(b[1]) is BatchStatNorm2d for b in default.body[:4])
    net = Conv4(n_classes=3, hidden=4, image_size=16, norm="running").double()
    assert all(type(b[1]) is nn.BatchNorm2d for b in net.body[:4])
    x = torch.rand(8, 1, 16, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    fresh_eval = net.eval()(x)  # running mean 0 and variance 1: no normalisation yet
    net.train()(x)  # one training batch moves the running statistics towards the batch's
    first = net.body[0][1]
    assert int(first.num_batches_tracked) == 1
    assert first.running_mean.abs().sum() > 0
    torch.testing.assert_close(net.train()(x), net.train()(x))  # batch statistics in training
    assert not torch.allclose(net.eval()(x), fresh_eval)
    with pytest.raises(ValueError, match="norm must be one of"):
        Conv4(norm="group")
