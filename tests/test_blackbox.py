"""Tests of metalib.blackbox: label-conditioned tokens by hand, the attention mask, invariance to
the support order (attention) and its absence (LSTM), no leakage between queries, label
equivariance learned by meta-training (and absent before it), the episodic classifier's shapes
and errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from metalib import blackbox
from metalib.blackbox import (
    BlackBoxClassifier,
    SequenceLearner,
    attention_mask,
    label_sequence,
    query_tokens,
)
from metalib.nets import Conv4
from metalib.tasks import Episode
from metalib.train import episode_loss

KINDS = ("lstm", "attention")


def test_label_sequence_and_query_tokens_by_hand():
    feats = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]])  # (1, 3, 2)
    y = torch.tensor([[2, 0, 1]])
    expected = torch.tensor(
        [[[1.0, 2.0, 0.0, 0.0, 1.0, 0.0], [3.0, 4.0, 1.0, 0.0, 0.0, 0.0], [5.0, 6.0, 0, 1, 0, 0]]]
    )
    torch.testing.assert_close(label_sequence(feats, y, n_slots=4), expected, rtol=0, atol=0)
    q = torch.tensor([[[7.0, 8.0]], [[9.0, 10.0]]])  # (2, 1, 2)
    expected_q = torch.tensor([[[7.0, 8.0, 0.0, 0.0, 0.0]], [[9.0, 10.0, 0.0, 0.0, 0.0]]])
    torch.testing.assert_close(query_tokens(q, n_slots=3), expected_q, rtol=0, atol=0)
    assert label_sequence(feats.double(), y, 3).dtype == torch.float64


def test_label_sequence_and_query_tokens_errors():
    feats, y = torch.zeros(2, 3, 4), torch.zeros(2, 3, dtype=torch.long)
    with pytest.raises(ValueError, match="n_slots must be at least 1"):
        label_sequence(feats, y, 0)
    with pytest.raises(ValueError, match=r"support_features must be \(T, S, D\)"):
        label_sequence(feats[0], y[0], 3)
    with pytest.raises(ValueError, match=r"support_y must be \(T, S\) = \(2, 3\)"):
        label_sequence(feats, y[:, :2], 3)
    with pytest.raises(ValueError, match="long labels"):
        label_sequence(feats, y.float(), 3)
    with pytest.raises(ValueError, match=r"0\.\.2 \(n_slots=3\), got values from 0 to 3"):
        label_sequence(feats, torch.tensor([[0, 1, 3], [0, 0, 0]]), 3)
    with pytest.raises(ValueError, match="from -1 to 0"):
        label_sequence(feats, torch.tensor([[0, -1, 0], [0, 0, 0]]), 3)
    with pytest.raises(ValueError, match="n_slots must be at least 1"):
        query_tokens(feats, 0)
    with pytest.raises(ValueError, match=r"query_features must be \(T, P, D\)"):
        query_tokens(feats[0], 3)


def test_attention_mask_by_hand():
    blocked = attention_mask(2, 3)
    allowed = torch.tensor(
        [
            [1, 1, 0, 0, 0],  # support sees support only
            [1, 1, 0, 0, 0],
            [1, 1, 1, 0, 0],  # a query sees the support and itself
            [1, 1, 0, 1, 0],
            [1, 1, 0, 0, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(blocked, ~allowed)


def test_sequence_learner_errors():
    with pytest.raises(ValueError, match="unknown kind 'gru'"):
        SequenceLearner(4, 3, kind="gru")
    with pytest.raises(ValueError, match="feature_dim must be at least 1"):
        SequenceLearner(0, 3)
    with pytest.raises(ValueError, match="n_slots must be at least 1"):
        SequenceLearner(4, 0)
    with pytest.raises(ValueError, match="hidden and layers"):
        SequenceLearner(4, 3, hidden=8, layers=0)
    with pytest.raises(ValueError, match=r"heads \(3\) must be at least 1 and divide hidden \(8\)"):
        SequenceLearner(4, 3, kind="attention", hidden=8, heads=3)
    for kind in KINDS:
        net = SequenceLearner(4, 3, kind=kind, hidden=8, heads=2)
        y = torch.zeros(2, 3, dtype=torch.long)
        with pytest.raises(ValueError, match=r"support \(T, S, 4\) and queries \(T, P, 4\)"):
            net(torch.zeros(2, 3, 5), y, torch.zeros(2, 1, 5))  # wrong feature size
        with pytest.raises(ValueError, match="with the same T"):
            net(torch.zeros(2, 3, 4), y, torch.zeros(1, 1, 4))


def _random_task(t=2, s=6, p=4, d=5, n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    sy = torch.arange(s).remainder(n).expand(t, -1).clone()
    return torch.randn(t, s, d, generator=g), sy, torch.randn(t, p, d, generator=g)


@pytest.mark.parametrize("kind", KINDS)
def test_output_shape_and_support_order(kind):
    net = SequenceLearner(5, n_slots=3, kind=kind, hidden=16, layers=2, heads=4)
    sf, sy, qf = _random_task()
    out = net(sf, sy, qf)
    assert out.shape == (2, 4, 3)
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    permuted = net(sf[:, perm], sy[:, perm], qf)
    if kind == "attention":  # no positional encoding: the support is a set
        torch.testing.assert_close(permuted, out, rtol=1e-5, atol=1e-5)
    else:  # the LSTM reads a sequence: its answer depends on the order
        assert (permuted - out).abs().max() > 1e-3


@pytest.mark.parametrize("kind", KINDS)
def test_queries_do_not_see_each_other(kind):
    net = SequenceLearner(5, n_slots=3, kind=kind, hidden=16, layers=2, heads=4)
    sf, sy, qf = _random_task()
    out = net(sf, sy, qf)
    changed = qf.clone()
    changed[:, 0] += 3.0
    out2 = net(sf, sy, changed)
    torch.testing.assert_close(out2[:, 1:], out[:, 1:], rtol=1e-5, atol=1e-6)
    assert (out2[:, 0] - out[:, 0]).abs().max() > 1e-3
    alone = net(sf, sy, qf[:, 2:3])  # a query scored by itself gets the same logits
    torch.testing.assert_close(alone[:, 0], out[:, 2], rtol=1e-5, atol=1e-6)
    net.eval()  # in eval mode without gradients PyTorch may take its fused transformer path
    with torch.no_grad():
        torch.testing.assert_close(net(sf, sy, changed), out2, rtol=1e-5, atol=1e-6)


def _gaussian_tasks(t, g, d=8, n=3, q=5):
    """Random 3-way 1-shot tasks in feature space: class centres N(0, I), items centre + noise."""
    centres = torch.randn(t, n, d, generator=g)
    sy = torch.rand(t, n, generator=g).argsort(1)  # a shuffled support, one shot per class
    qy = torch.arange(n).repeat(q).expand(t, -1)
    sx = centres.gather(1, sy[..., None].expand(-1, -1, d))
    qx = centres.gather(1, qy[..., None].expand(-1, -1, d))
    sx = sx + 0.3 * torch.randn(sx.shape, generator=g)
    qx = qx + 0.3 * torch.randn(qx.shape, generator=g)
    return sx, sy, qx, qy


def _follows_relabelling(net, g):
    """Fraction of queries whose prediction moves with a cyclic relabelling π of the support."""
    sx, sy, qx, _ = _gaussian_tasks(64, g)
    pi = torch.tensor([1, 2, 0])  # no fixed point: a constant answer never "follows" it
    with torch.no_grad():
        before = net(sx, sy, qx).argmax(-1)
        after = net(sx, pi[sy], qx).argmax(-1)
    return (after == pi[before]).float().mean().item()


@pytest.mark.parametrize(("kind", "hidden", "steps"), [("lstm", 64, 800), ("attention", 32, 500)])
def test_label_equivariance_is_learned(kind, hidden, steps):
    torch.manual_seed(0)
    net = SequenceLearner(8, n_slots=3, kind=kind, hidden=hidden, layers=1, heads=2)
    # one-hot labels in, a fixed head out: nothing makes an untrained net follow a relabelling
    assert _follows_relabelling(net, torch.Generator().manual_seed(1)) < 0.5
    g = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(steps):  # every task labels its classes at random: equivariance pays
        sx, sy, qx, qy = _gaussian_tasks(32, g)
        loss = F.cross_entropy(net(sx, sy, qx).flatten(0, 1), qy.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert _follows_relabelling(net, torch.Generator().manual_seed(1)) >= 0.9


def _image_episode(t=2, n=3, k=1, q=2, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    sy = torch.arange(n).repeat(k).expand(t, -1).clone()
    qy = torch.arange(n).repeat(q).expand(t, -1).clone()
    classes = torch.arange(n).expand(t, -1).clone()
    sx = torch.rand(t, n * k, 1, size, size, generator=g)
    qx = torch.rand(t, n * q, 1, size, size, generator=g)
    return Episode(sx, sy, qx, qy, classes)


@pytest.mark.parametrize("kind", KINDS)
def test_blackbox_classifier_is_an_episodic_classifier(kind):
    enc = Conv4(hidden=8, image_size=16).body
    net = BlackBoxClassifier(enc, SequenceLearner(8, n_slots=5, kind=kind, hidden=16, heads=2))
    ep = _image_episode()
    out = net(ep.support_x, ep.support_y, ep.query_x, ep.n_way)
    assert out.shape == (2, 6, 3)
    loss, acc = episode_loss(net, ep)
    loss.backward()
    assert acc.shape == (2,)
    # trained end to end: the encoder's first convolution receives a gradient
    assert enc[0][0].weight.grad is not None and enc[0][0].weight.grad.abs().sum() > 0


def test_blackbox_classifier_errors():
    net = BlackBoxClassifier(Conv4(hidden=8, image_size=16).body, SequenceLearner(8, n_slots=3))
    ep = _image_episode(n=4)
    with pytest.raises(ValueError, match="n_slots=3 tells at most 3 classes.*more slots"):
        net(ep.support_x, ep.support_y, ep.query_x, 4)
    with pytest.raises(ValueError, match="n_way must lie in 1..3, got 0"):
        net(ep.support_x, ep.support_y, ep.query_x, 0)
    ep = _image_episode(n=3)
    with pytest.raises(ValueError, match=r"labels must lie in 0..1 for a 2-way task"):
        net(ep.support_x, ep.support_y, ep.query_x, 2)
    with pytest.raises(ValueError, match="learner must be a SequenceLearner"):
        BlackBoxClassifier(Conv4(hidden=8).body, torch.nn.LSTM(8, 8))


def test_spread_labels_is_one_random_injective_map_per_task(generator):
    support_y = torch.tensor([[0, 1, 2, 0], [2, 1, 0, 1]])
    query_y = torch.tensor([[2, 2, 1], [0, 0, 2]])
    s, q = blackbox.spread_labels(support_y, query_y, 3, 10, generator)
    for t in range(2):
        slot = {}
        for old, new in zip(
            torch.cat([support_y[t], query_y[t]]), torch.cat([s[t], q[t]]), strict=True
        ):
            assert slot.setdefault(old.item(), new.item()) == new.item()  # one map per task
        assert len(set(slot.values())) == 3 and max(slot.values()) < 10  # injective, in range
    firsts = {
        blackbox.spread_labels(support_y, query_y, 3, 10, generator)[0][0, 0].item()
        for _ in range(30)
    }
    assert len(firsts) > 3  # the slots are random
    with pytest.raises(ValueError, match="at least n_way"):
        blackbox.spread_labels(support_y, query_y, 3, 2)
    with pytest.raises(ValueError, match="same T"):
        blackbox.spread_labels(support_y, query_y[:1], 3, 5)
