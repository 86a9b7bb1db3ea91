"""Tests of metalib.learned_optim and metalib.optimizees."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.func import functional_call
from torch.testing import assert_close

from metalib import learned_optim as lo
from metalib import optimizees as oz

E10 = math.exp(10.0)


# --- preprocessing -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("g", "expected"),
    [
        (0.0, (-1.0, 0.0)),  # below the cut-off: (-1, e^p g)
        (1e-6, (-1.0, 1e-6 * E10)),
        (-1e-6, (-1.0, -1e-6 * E10)),
        (-4e-5, (-1.0, -4e-5 * E10)),  # just under e^-10 = 4.54e-5
        (5e-5, (math.log(5e-5) / 10, 1.0)),  # just over it: (log|g| / p, sign g)
        (1.0, (0.0, 1.0)),
        (-math.exp(2.0), (0.2, -1.0)),
        (1e-3, (math.log(1e-3) / 10, 1.0)),
        (-123.0, (math.log(123.0) / 10, -1.0)),
    ],
)
def test_preprocess_matches_the_papers_formula(g, expected):
    out = lo.preprocess_gradients(torch.tensor([g], dtype=torch.float64), p=10.0)
    assert_close(out, torch.tensor([expected], dtype=torch.float64), rtol=1e-12, atol=1e-12)


def test_preprocess_other_p_shape_and_continuity_at_the_cut():
    g = torch.tensor([[math.exp(-5.0), 0.001], [-2.0, 0.0]], dtype=torch.float64)
    out = lo.preprocess_gradients(g, p=5.0)
    assert out.shape == (2, 2, 2)
    # at |g| = e^-p both branches give (-1, +-1): the map is continuous there
    assert_close(out[0, 0], torch.tensor([-1.0, 1.0], dtype=torch.float64))
    assert_close(out[0, 1], torch.tensor([-1.0, 0.001 * math.exp(5.0)], dtype=torch.float64))
    assert_close(out[1, 0], torch.tensor([math.log(2.0) / 5, -1.0], dtype=torch.float64))


def test_preprocess_has_finite_gradients_at_zero():
    g = torch.tensor([0.0, 1e-7, 3.0], requires_grad=True)
    lo.preprocess_gradients(g).sum().backward()
    assert torch.isfinite(g.grad).all()


@settings(max_examples=200, deadline=None)
@given(st.floats(min_value=-1e30, max_value=1e30, allow_nan=False), st.floats(0.5, 20.0))
def test_preprocess_properties(g, p):
    """The second input keeps the sign; small gradients are read linearly, large on a log scale."""
    x = torch.tensor([g], dtype=torch.float64)
    first, second = lo.preprocess_gradients(x, p=p)[0].tolist()
    assert math.copysign(1.0, second) == math.copysign(1.0, g) or g == 0.0
    if abs(g) < math.exp(-p):
        assert first == -1.0 and abs(second) < 1.0 + 1e-12
    else:
        assert first >= -1.0 - 1e-12 and abs(second) == 1.0


def test_preprocess_rejects_non_positive_p():
    with pytest.raises(ValueError, match="p must be positive"):
        lo.preprocess_gradients(torch.ones(3), p=0.0)


# --- the LSTM optimizer ------------------------------------------------------------------------


def _random_state(opt, n, gen):
    return [
        (
            torch.randn(n, opt.hidden_size, generator=gen),
            torch.randn(n, opt.hidden_size, generator=gen),
        )
        for _ in opt.cells
    ]


@pytest.mark.parametrize("preprocess", [True, False])
def test_lstm_optimizer_is_coordinatewise(generator, preprocess):
    """Permuting the coordinates permutes the updates and the states (shared weights)."""
    opt = lo.LSTMOptimizer(hidden_size=6, preprocess=preprocess)
    n = 11
    grad = torch.randn(n, generator=generator) * torch.logspace(-6, 2, n)
    state = _random_state(opt, n, generator)
    update, new_state = opt(grad, state)
    for _ in range(3):
        perm = torch.randperm(n, generator=generator)
        p_update, p_state = opt(grad[perm], [(h[perm], c[perm]) for h, c in state])
        assert_close(p_update, update[perm])
        for (h, c), (ph, pc) in zip(new_state, p_state, strict=True):
            assert_close(ph, h[perm])
            assert_close(pc, c[perm])
    # and a coordinate alone gets the update it gets in the batch
    alone, _ = opt(grad[3:4], [(h[3:4], c[3:4]) for h, c in state])
    assert_close(alone, update[3:4])


def test_lstm_optimizer_structure_and_initial_state():
    opt = lo.LSTMOptimizer()
    assert len(opt.cells) == 2 and all(isinstance(c, torch.nn.LSTMCell) for c in opt.cells)
    assert opt.cells[0].input_size == 2 and opt.cells[1].hidden_size == 20
    assert isinstance(opt.head, torch.nn.Linear) and opt.head.out_features == 1
    state = opt.initial_state(7, torch.zeros(3))
    assert len(state) == 2
    for h, c in state:
        assert h.shape == c.shape == (7, 20) and not h.any() and not c.any()
    assert lo.LSTMOptimizer(preprocess=False).cells[0].input_size == 1


def test_lstm_update_is_output_scale_times_head():
    opt = lo.LSTMOptimizer(hidden_size=4, output_scale=0.5)
    with torch.no_grad():
        opt.head.weight.zero_()
        opt.head.bias.fill_(2.0)
    update, _ = opt(torch.randn(5), opt.initial_state(5, torch.zeros(1)))
    assert_close(update, torch.full((5,), 1.0))


def test_lstm_optimizer_rejects_bad_input():
    with pytest.raises(ValueError, match="hidden_size"):
        lo.LSTMOptimizer(hidden_size=0)
    with pytest.raises(ValueError, match="p must be positive"):
        lo.LSTMOptimizer(p=-1.0)
    opt = lo.LSTMOptimizer(hidden_size=3)
    with pytest.raises(ValueError, match="flat"):
        opt(torch.zeros(2, 3), opt.initial_state(6, torch.zeros(1)))
    with pytest.raises(ValueError, match="initial_state"):
        opt(torch.zeros(5), opt.initial_state(6, torch.zeros(1)))
    with pytest.raises(ValueError, match="n_coords"):
        opt.initial_state(0, torch.zeros(1))


# --- the unrolled meta-loss --------------------------------------------------------------------


def _quadratic(gen, n=2, dim=3):
    return oz.quadratics(n, gen, dim=dim)


def test_unroll_indexing_with_a_constant_update(generator):
    """Head weights 0, bias b: every update is 0.1 b, so theta_t = theta_0 + 0.1 b t."""
    opt = lo.LSTMOptimizer(hidden_size=3)
    with torch.no_grad():
        opt.head.weight.zero_()
        opt.head.bias.fill_(-0.5)
    calls = []

    def loss_fn(theta, t):
        calls.append(t)
        return (theta**2).sum(1) * (t + 1)

    theta0 = torch.randn(2, 4, generator=generator)
    meta, theta, state = lo.unroll(opt, loss_fn, theta0, 3, start=5)
    assert calls == [5, 6, 7, 8]
    expected = sum(((theta0 - 0.05 * t) ** 2).sum(1).mean() * (5 + t + 1) for t in (1, 2, 3))
    assert_close(meta, expected)
    assert_close(theta, theta0 - 0.15)
    assert len(state) == 2 and state[0][0].shape == (8, 3)


def test_unroll_in_segments_continues_one_trajectory(generator):
    """Two segments of 2 steps, the state and start carried over, are one run of 4 steps."""
    q = _quadratic(generator, n=3, dim=4)
    opt = lo.LSTMOptimizer(hidden_size=5)
    calls = []

    def loss_fn(theta, t):
        calls.append(t)
        return q.loss(theta) * (1 + 0.1 * t)

    whole, theta4, state4 = lo.unroll(opt, loss_fn, q.theta0, 4)
    calls.clear()
    first, theta2, state2 = lo.unroll(opt, loss_fn, q.theta0, 2)
    second, theta, state = lo.unroll(
        opt, loss_fn, theta2.detach(), 2, lo.detach_state(state2), start=2
    )
    assert calls == [0, 1, 2, 2, 3, 4]
    assert_close(first + second, whole)
    assert_close(theta, theta4)
    for (h, c), (h4, c4) in zip(state, state4, strict=True):
        assert_close(h, h4)
        assert_close(c, c4)
    assert all(not h.requires_grad for h, _ in lo.detach_state(state))


def test_unroll_matches_learned_curve(generator):
    q = _quadratic(generator, n=3, dim=4)
    opt = lo.LSTMOptimizer(hidden_size=5)
    meta, _, _ = lo.unroll(opt, q.loss, q.theta0, 4)
    curve = lo.learned_curve(opt, q.loss, q.theta0, 4)
    assert curve.shape == (5, 3)
    assert_close(curve[0], q.loss(q.theta0))
    assert_close(meta, curve[1:].mean(1).sum())
    with torch.no_grad():  # evaluation code may run it under no_grad: same curve
        assert_close(lo.learned_curve(opt, q.loss, q.theta0, 4), curve)


def _small_optimizer():
    torch.manual_seed(0)
    return lo.LSTMOptimizer(hidden_size=3, output_scale=0.3).double()


def _meta_loss_of(opt, flat, q, steps, second_order):
    names = [n for n, _ in opt.named_parameters()]
    shapes = [p.shape for _, p in opt.named_parameters()]
    params = dict(zip(names, flat.split([s.numel() for s in shapes]), strict=True))
    params = {n: v.view(s) for (n, v), s in zip(params.items(), shapes, strict=True)}

    def run(grad, state):
        return functional_call(opt, params, (grad, state))

    class Wrapped:  # unroll calls optimizer(...) and optimizer.initial_state(...)
        initial_state = opt.initial_state
        __call__ = staticmethod(run)

    return lo.unroll(Wrapped(), q.loss, q.theta0, steps, second_order=second_order)[0]


def _flat_params(opt):
    return torch.cat([p.detach().flatten() for p in opt.parameters()])


def test_second_order_meta_gradient_matches_finite_differences():
    """gradcheck (central differences, float64) of a 2-step unroll w.r.t. the LSTM's weights."""
    opt = _small_optimizer()
    gen = torch.Generator().manual_seed(3)
    base = oz.quadratics(2, gen, dim=3)
    q = oz.Quadratics(base.W.double() * 0.5, base.y.double(), base.theta0.double())
    flat = _flat_params(opt).requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda f: _meta_loss_of(opt, f, q, 2, second_order=True), (flat,), eps=1e-6, atol=1e-6
    )


def test_first_order_meta_gradient_treats_inner_gradients_as_constants():
    """second_order=False: the exact gradient of the unroll with each g_t frozen at its value.

    The reference replays the trajectory with the recorded g_t fed in as constants and takes
    central differences of that replay's meta-loss with respect to every LSTM weight.
    """
    opt = _small_optimizer()
    gen = torch.Generator().manual_seed(3)
    base = oz.quadratics(2, gen, dim=3)
    q = oz.Quadratics(base.W.double() * 0.5, base.y.double(), base.theta0.double())
    flat = _flat_params(opt)
    steps = 2

    # the inner gradients along the nominal trajectory
    grads, theta, state = [], q.theta0, opt.initial_state(6, q.theta0)
    with torch.no_grad():
        for _ in range(steps):
            g = 2 * torch.einsum("bji,bj->bi", q.W, torch.einsum("bij,bj->bi", q.W, theta) - q.y)
            grads.append(g)
            update, state = opt(g.flatten(), state)
            theta = theta + update.view_as(theta)

    def frozen_replay(f):
        names = [n for n, _ in opt.named_parameters()]
        pieces = f.split([p.numel() for p in opt.parameters()])
        params = {n: v.view_as(p) for n, v, p in zip(names, pieces, opt.parameters(), strict=True)}
        th, st, total = q.theta0, opt.initial_state(6, q.theta0), 0.0
        for g in grads:
            update, st = functional_call(opt, params, (g.flatten(), st))
            th = th + update.view_as(th)
            total = total + q.loss(th).mean()
        return total

    eps = 1e-6
    fd = torch.stack(
        [
            (frozen_replay(flat + eps * e) - frozen_replay(flat - eps * e)) / (2 * eps)
            for e in torch.eye(len(flat), dtype=torch.float64)
        ]
    )
    f = flat.clone().requires_grad_(True)
    meta = _meta_loss_of(opt, f, q, steps, second_order=False)
    (auto,) = torch.autograd.grad(meta, f)
    assert_close(meta, frozen_replay(flat))
    assert_close(auto, fd, rtol=1e-6, atol=1e-7)
    # the Hessian terms it drops are not zero here: the reference tells the two apart
    f2 = flat.clone().requires_grad_(True)
    (auto2,) = torch.autograd.grad(_meta_loss_of(opt, f2, q, steps, second_order=True), f2)
    assert not torch.allclose(auto2, fd, rtol=1e-6, atol=1e-7)


def test_unroll_rejects_bad_input(generator):
    opt = lo.LSTMOptimizer(hidden_size=3)
    q = _quadratic(generator)
    with pytest.raises(ValueError, match=r"\(B, P\)"):
        lo.unroll(opt, q.loss, q.theta0[0], 2)
    with pytest.raises(ValueError, match="steps"):
        lo.unroll(opt, q.loss, q.theta0, 0)
    with pytest.raises(ValueError, match="one loss per problem"):
        lo.unroll(opt, lambda th, t: th.sum(), q.theta0, 2)


# --- problem families ----------------------------------------------------------------------------


def test_quadratic_loss_by_hand():
    W = torch.tensor([[[1.0, 2.0], [0.0, 1.0]], [[2.0, 0.0], [0.0, 2.0]]])
    y = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    q = oz.Quadratics(W, y, torch.zeros(2, 2))
    theta = torch.tensor([[1.0, 1.0], [0.5, -1.0]])
    # W theta - y: [3 - 1, 1 - 0] = [2, 1] -> 5;  [1 - 1, -2 - 1] = [0, -3] -> 9
    assert_close(q.loss(theta, 7), torch.tensor([5.0, 9.0]))
    with pytest.raises(ValueError, match="theta must be"):
        q.loss(torch.zeros(2, 3))


def test_quadratics_are_seeded_and_validated():
    a = oz.quadratics(4, torch.Generator().manual_seed(1))
    b = oz.quadratics(4, torch.Generator().manual_seed(1))
    assert a.W.shape == (4, 10, 10) and a.y.shape == a.theta0.shape == (4, 10)
    assert torch.equal(a.W, b.W) and torch.equal(a.theta0, b.theta0)
    with pytest.raises(ValueError, match="at least 1"):
        oz.quadratics(0, torch.Generator())


def test_mlp_loss_matches_torch_modules(tiny_classes, generator):
    p = oz.mlp_problems(tiny_classes, 3, generator, horizon=4, n_way=5, hidden=7, batch_size=8)
    assert p.x.shape == (3, 30, 64) and p.theta0.shape == (3, 64 * 7 + 7 + 7 * 5 + 5)
    assert p.batches.shape == (5, 3, 8)
    # minibatches without replacement
    assert all(len(set(row.tolist())) == 8 for row in p.batches.flatten(0, 1))
    theta = p.theta0 + 0.1 * torch.randn(p.theta0.shape, generator=generator)
    losses = p.loss(theta, 2)
    for b in range(3):
        w1, b1, w2, b2 = (t[b] for t in p.unpack(theta))
        idx = p.batches[2, b]
        hidden = torch.sigmoid(p.x[b, idx] @ w1 + b1)
        ref = torch.nn.functional.cross_entropy(hidden @ w2 + b2, p.y[b, idx])
        assert_close(losses[b], ref)
    # each problem's classes are distinct, and its labels cover 0..n_way-1 per_class times
    assert torch.equal(p.y[0], torch.arange(5).repeat_interleave(6))
    assert p.accuracy(theta).shape == (3,)


def test_mlp_problems_reject_bad_input(tiny_classes, generator):
    with pytest.raises(ValueError, match="activation"):
        oz.mlp_problems(tiny_classes, 2, generator, 3, n_way=5, activation="gelu")
    with pytest.raises(ValueError, match="n_way"):
        oz.mlp_problems(tiny_classes, 2, generator, 3, n_way=13)
    with pytest.raises(ValueError, match="batch_size"):
        oz.mlp_problems(tiny_classes, 2, generator, 3, n_way=5, batch_size=31)
    with pytest.raises(ValueError, match="need n"):
        oz.mlp_problems(tiny_classes, 0, generator, 3, n_way=5, batch_size=4)
    p = oz.mlp_problems(tiny_classes, 2, generator, 3, n_way=5, batch_size=4)
    with pytest.raises(ValueError, match="longer horizon"):
        p.loss(p.theta0, 4)
    with pytest.raises(ValueError, match="theta must be"):
        p.loss(p.theta0[:, 1:], 0)


# --- baselines and meta-training ---------------------------------------------------------------


def test_sgd_curve_equals_sgd_by_hand(generator):
    q = _quadratic(generator, n=3, dim=4)
    curve = oz.torch_curve(torch.optim.SGD, 0.01, q.loss, q.theta0, 5)
    theta, expected = q.theta0.clone(), []
    for _ in range(6):
        expected.append(q.loss(theta))
        r = torch.einsum("bij,bj->bi", q.W, theta) - q.y
        theta = theta - 0.01 * 2 * torch.einsum("bji,bj->bi", q.W, r)  # f' = 2 W^T (W theta - y)
    assert_close(curve, torch.stack(expected))


def test_adam_curve_optimizes_each_problem_alone(generator):
    q = _quadratic(generator, n=3, dim=4)
    curve = oz.torch_curve(torch.optim.Adam, 0.1, q.loss, q.theta0, 5)
    for b in range(3):
        one = oz.Quadratics(q.W[b : b + 1], q.y[b : b + 1], q.theta0[b : b + 1])
        assert_close(
            curve[:, b], oz.torch_curve(torch.optim.Adam, 0.1, one.loss, one.theta0, 5)[:, 0]
        )
    with pytest.raises(ValueError, match="lr must be positive"):
        oz.torch_curve(torch.optim.SGD, 0.0, q.loss, q.theta0, 5)
    with pytest.raises(ValueError, match="steps"):
        oz.torch_curve(torch.optim.SGD, 0.1, q.loss, q.theta0, 0)
    with pytest.raises(ValueError, match=r"\(3,\) losses"):
        oz.torch_curve(torch.optim.SGD, 0.1, lambda th, t: th.sum(), q.theta0, 2)
    with pytest.raises(ValueError, match="steps"):
        lo.learned_curve(lo.LSTMOptimizer(), q.loss, q.theta0, 0)


def test_tune_lr_picks_the_best_finite_rate(generator):
    q = _quadratic(generator, n=4, dim=10)
    lrs = [1e-4, 1e-3, 1e-2, 10.0]
    best, scores = oz.tune_lr(torch.optim.SGD, q.loss, q.theta0, 20, lrs)
    assert scores.shape == (4,) and math.isinf(scores[-1])  # lr 10 diverges
    assert best == lrs[int(scores.argmin())] and best != 10.0
    for lr, s in zip(lrs[:3], scores[:3], strict=True):
        curve = oz.torch_curve(torch.optim.SGD, lr, q.loss, q.theta0, 20)
        assert_close(s.item(), curve[1:].double().mean().item())
    with pytest.raises(ValueError, match="empty"):
        oz.tune_lr(torch.optim.SGD, q.loss, q.theta0, 20, [])


def test_meta_train_lowers_the_meta_loss():
    opt = lo.LSTMOptimizer(hidden_size=8)
    gen = torch.Generator().manual_seed(0)
    history = lo.meta_train(
        opt,
        lambda g: oz.quadratics(16, g),
        iterations=30,
        generator=gen,
        horizon=10,
        truncation=5,
        lr=0.01,
    )
    assert len(history.step) == 60
    final = [v for v in history["final_loss"] if not math.isnan(v)]
    assert len(final) == 30
    assert sum(final[-5:]) < 0.5 * sum(final[:5]), final


def test_meta_train_rejects_bad_input():
    opt = lo.LSTMOptimizer(hidden_size=3)
    with pytest.raises(ValueError, match="divisor"):
        lo.meta_train(opt, lambda g: None, 1, torch.Generator(), horizon=10, truncation=3)
    with pytest.raises(ValueError, match="iterations"):
        lo.meta_train(opt, lambda g: None, 0, torch.Generator())
