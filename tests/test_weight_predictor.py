"""Tests of metalib.weight_predictor: the feature map stays frozen, the predictor's gradient
against a hand-written float64 chain rule (query activations as constants), class n's weights
from class n's support only, and the identity start as a cosine-prototype classifier."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from metalib.nets import Conv4, embed_tasks
from metalib.tasks import Episode
from metalib.train import episode_loss
from metalib.weight_predictor import WeightPredictor


def _episode(t=2, n=3, k=2, q=2, size=16, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    sy = torch.arange(n).repeat(k).expand(t, -1).clone()
    qy = torch.arange(n).repeat(q).expand(t, -1).clone()
    sx = torch.rand(t, n * k, 1, size, size, generator=g, dtype=dtype)
    qx = torch.rand(t, n * q, 1, size, size, generator=g, dtype=dtype)
    return Episode(sx, sy, qx, qy, torch.arange(n).expand(t, -1).clone())


def _predictor(dtype=torch.float32, perturb_phi=True):
    net = WeightPredictor(Conv4(hidden=8, image_size=16).body, feature_dim=8).to(dtype)
    if perturb_phi:  # move φ away from the identity, so the tests see a general map
        with torch.no_grad():
            g = torch.Generator().manual_seed(3)
            net.phi.weight.add_(0.3 * torch.randn(8, 8, generator=g, dtype=dtype))
            net.phi.bias.add_(0.1 * torch.randn(8, generator=g, dtype=dtype))
    return net


def test_encoder_is_frozen_and_unchanged_by_a_step():
    encoder = Conv4(hidden=8, image_size=16).body
    net = WeightPredictor(encoder, feature_dim=8)
    assert all(p.requires_grad for p in encoder.parameters())  # the caller's net is untouched
    assert not any(p.requires_grad for p in net.encoder.parameters())
    before = {k: v.clone() for k, v in net.encoder.state_dict().items()}
    phi_before = net.phi.weight.clone()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    loss, _ = episode_loss(net, _episode())
    loss.backward()
    assert all(p.grad is None for p in net.encoder.parameters())
    opt.step()
    for k, v in net.encoder.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    assert (net.phi.weight - phi_before).abs().max() > 1e-4  # φ did learn
    assert net.log_scale.grad is not None


def test_gradient_matches_hand_written_chain_rule_in_float64():
    """Autograd through the model equals the chain rule in which query activations are constants.

    With q̂ the unit query activations (constants), ā_n the mean unit support activation of class
    n, w_n = W ā_n + b, ŵ_n = w_n / ||w_n||, logits z_pn = s q̂_p·ŵ_n and G = dL/dz:
    dL/dŵ_n = s Σ_p G_pn q̂_p;  dL/dw_n = (I - ŵ_n ŵ_nᵀ) dL/dŵ_n / ||w_n||;
    dL/dW = Σ_n dL/dw_n ā_nᵀ;  dL/db = Σ_n dL/dw_n;  dL/d(log s) = Σ G ⊙ z.
    """
    net = _predictor(torch.float64)
    ep = _episode(dtype=torch.float64)
    loss, _ = episode_loss(net, ep)
    loss.backward()

    with torch.no_grad():
        sf, qf = embed_tasks(net.encoder, ep.support_x, ep.query_x)
        s = net.scale
        w_mat, b = net.phi.weight, net.phi.bias
        grad_w, grad_b, grad_log_s = torch.zeros_like(w_mat), torch.zeros_like(b), 0.0
        n_queries = ep.query_y.numel()
        for t in range(ep.n_tasks):
            a = F.normalize(sf[t], dim=-1)
            means = torch.stack([a[ep.support_y[t] == n].mean(0) for n in range(ep.n_way)])
            w = means @ w_mat.T + b  # (N, D)
            w_hat = w / w.norm(dim=-1, keepdim=True)
            q_hat = qf[t] / qf[t].norm(dim=-1, keepdim=True)
            z = s * q_hat @ w_hat.T  # (P, N)
            g = (z.softmax(-1) - F.one_hot(ep.query_y[t], ep.n_way)) / n_queries
            d_w_hat = s * g.T @ q_hat  # (N, D)
            for n in range(ep.n_way):
                proj = torch.eye(8, dtype=torch.float64) - torch.outer(w_hat[n], w_hat[n])
                d_w = proj @ d_w_hat[n] / w[n].norm()
                grad_w += torch.outer(d_w, means[n])
                grad_b += d_w
            grad_log_s += (g * z).sum()
    torch.testing.assert_close(net.phi.weight.grad, grad_w, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(net.phi.bias.grad, grad_b, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(net.log_scale.grad, grad_log_s, rtol=1e-9, atol=1e-12)


def test_class_weights_depend_on_their_own_class_only():
    net = _predictor()
    g = torch.Generator().manual_seed(0)
    sf = torch.rand(2, 6, 8, generator=g)
    sy = torch.tensor([[0, 1, 2, 0, 1, 2], [2, 2, 1, 1, 0, 0]])
    w = net.predict_weights(sf, sy, 3)
    assert w.shape == (2, 3, 8)
    torch.testing.assert_close(w.norm(dim=-1), torch.ones(2, 3))
    moved = sf.clone()
    moved[sy == 1] += torch.rand(4, 8, generator=g)  # perturb class 1's support in both tasks
    w2 = net.predict_weights(moved, sy, 3)
    torch.testing.assert_close(w2[:, [0, 2]], w[:, [0, 2]], rtol=0, atol=0)
    assert (w2[:, 1] - w[:, 1]).abs().max() > 1e-3


def test_identity_start_is_a_cosine_prototype_classifier():
    net = _predictor(perturb_phi=False)
    sf = torch.tensor([[[3.0, 4.0] + [0.0] * 6, [0.0, 2.0] + [0.0] * 6, [1.0] * 8]])
    sy = torch.tensor([[0, 0, 1]])
    # class 0: unit vectors (0.6, 0.8) and (0, 1) average to (0.3, 0.9); normalised by sqrt(0.9)
    expected0 = torch.tensor([0.3, 0.9] + [0.0] * 6) / 0.9**0.5
    expected1 = torch.full((8,), 8**-0.5)
    w = net.predict_weights(sf, sy, 2)
    torch.testing.assert_close(w[0], torch.stack([expected0, expected1]))
    ep = _episode()
    out = net(ep.support_x, ep.support_y, ep.query_x, ep.n_way)
    sf, qf = embed_tasks(net.encoder, ep.support_x, ep.query_x)
    a = F.normalize(sf, dim=-1)
    protos = torch.stack([a[:, ep.support_y[0] == n].mean(1) for n in range(3)], dim=1)
    expected = 10.0 * F.cosine_similarity(qf.unsqueeze(2), protos.unsqueeze(1), dim=-1)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_errors():
    enc = Conv4(hidden=8, image_size=16).body
    with pytest.raises(ValueError, match="feature_dim must be at least 1"):
        WeightPredictor(enc, 0)
    with pytest.raises(ValueError, match="scale must be positive"):
        WeightPredictor(enc, 8, scale=0.0)
    ep = _episode()
    with pytest.raises(ValueError, match="encoder gives 8 features.*feature_dim=16"):
        WeightPredictor(enc, 16)(ep.support_x, ep.support_y, ep.query_x, ep.n_way)
    net = WeightPredictor(enc, 8)
    with pytest.raises(ValueError, match=r"support_features must be \(T, N\*K, 8\)"):
        net.predict_weights(torch.zeros(6, 8), torch.zeros(6, dtype=torch.long), 3)
    with pytest.raises(ValueError, match="class 2 of task 0 has no support example"):
        net.predict_weights(torch.rand(1, 2, 8), torch.tensor([[0, 1]]), 3)
    assert net.log_scale.requires_grad
    fixed = WeightPredictor(enc, 8, scale=5.0, learn_scale=False)
    assert "log_scale" not in dict(fixed.named_parameters())
    torch.testing.assert_close(fixed.scale, torch.tensor(5.0))
