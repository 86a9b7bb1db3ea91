"""Tests of metalib.tta: entropy against float64 references, what TENT may touch, resets, BN
adaptation, rotations by hand, test-time training and the batch-wise error."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from metalib import tta
from metalib.nets import Conv4


def trained_source(seed: int = 0) -> Conv4:
    """A tiny float64 Conv4 with running statistics, moved off its initial state."""
    torch.manual_seed(seed)
    net = Conv4(n_classes=3, hidden=4, image_size=16, norm="running").double()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(seed)
    for _ in range(3):  # a few training steps: running statistics and affine params move
        x = torch.rand(8, 1, 16, 16, generator=g, dtype=torch.float64)
        loss = F.cross_entropy(net(x), torch.randint(0, 3, (8,), generator=g))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


def batch(seed: int = 1, n: int = 8) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 16, 16, generator=g, dtype=torch.float64)


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} changed"


# --- entropy ----------------------------------------------------------------------------------


def test_entropy_of_uniform_and_near_one_hot_predictions():
    uniform = torch.full((3, 7), 2.5, dtype=torch.float64)
    expected = torch.full((3,), math.log(7.0), dtype=torch.float64)
    torch.testing.assert_close(tta.entropy(uniform), expected, rtol=1e-14, atol=0)
    confident = torch.tensor([[100.0, 0.0, 0.0]], dtype=torch.float64)
    assert 0 <= tta.entropy(confident).item() < 1e-40


def test_entropy_matches_the_definition_in_float64():
    logits = torch.randn(5, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    p = logits.exp() / logits.exp().sum(-1, keepdim=True)
    expected = -(p * p.log()).sum(-1)
    torch.testing.assert_close(tta.entropy(logits), expected, rtol=1e-12, atol=1e-14)
    # two classes by hand: H = -(p log p + (1 - p) log(1 - p)) with p = sigmoid(a - b)
    two = torch.tensor([[1.0, -0.5]], dtype=torch.float64)
    q = torch.sigmoid(torch.tensor(1.5, dtype=torch.float64))
    hand = -(q * q.log() + (1 - q) * (1 - q).log())
    torch.testing.assert_close(tta.entropy(two)[0], hand, rtol=1e-12, atol=0)


def test_entropy_is_finite_for_huge_logits_and_rejects_other_shapes():
    assert torch.isfinite(tta.entropy(torch.tensor([[1e4, -1e4, 0.0]]))).all()
    with pytest.raises(ValueError, match=r"shape \(B, C\)"):
        tta.entropy(torch.zeros(4))


# --- collecting and configuring ----------------------------------------------------------------


def test_bn_affine_parameters_in_module_order():
    net = Conv4(hidden=4, image_size=16, norm="running")
    expected = []
    for block in net.body[:4]:
        expected += [block[1].weight, block[1].bias]
    got = tta.bn_affine_parameters(net)
    assert len(got) == 8 and all(a is b for a, b in zip(got, expected, strict=True))
    mixed = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3, affine=False), nn.BatchNorm1d(3))
    assert [id(p) for p in tta.bn_affine_parameters(mixed)] == [
        id(mixed[2].weight),
        id(mixed[2].bias),
    ]
    assert tta.bn_affine_parameters(nn.Linear(2, 2)) == []
    # metalib's batch-statistics norm is a batch norm too
    assert len(tta.bn_affine_parameters(Conv4(hidden=4, image_size=16))) == 8


def test_configure_tent_freezes_all_but_bn_affine_and_uses_batch_statistics():
    net = tta.configure_tent(copy.deepcopy(trained_source()))
    affine = {id(p) for p in tta.bn_affine_parameters(net)}
    for p in net.parameters():
        assert p.requires_grad == (id(p) in affine)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert m.training and not m.track_running_stats
    assert not net.head.training
    with pytest.raises(ValueError, match="no batch norm layer"):
        tta.configure_tent(nn.Linear(3, 2))


# --- TENT -------------------------------------------------------------------------------------


def test_tent_changes_only_bn_affine_parameters():
    source = trained_source()
    before = state(source)
    tent = tta.Tent(source, lr=1e-2)
    for seed in range(3):
        tent(batch(seed))
    after = state(tent.model)
    affine_names = {n for n, m in source.named_modules() if isinstance(m, nn.BatchNorm2d)}
    affine_names = {f"{n}.{p}" for n in affine_names for p in ("weight", "bias")}
    assert len(affine_names) == 8
    for name in before:
        if name in affine_names:
            assert not torch.equal(before[name], after[name]), f"{name} did not move"
        else:
            assert torch.equal(before[name], after[name]), f"{name} changed"
    assert_same_state(before, state(source))  # the source model itself is never touched


def test_tent_step_returns_the_logits_of_the_forward_pass_before_the_step():
    net = tta.configure_tent(copy.deepcopy(trained_source()))
    x = batch()
    with torch.no_grad():
        expected = net(x)
    opt = torch.optim.SGD(tta.bn_affine_parameters(net), lr=1e-3)
    logits = tta.tent_step(net, x, opt)
    assert not logits.requires_grad
    torch.testing.assert_close(logits, expected, rtol=0, atol=0)
    with torch.no_grad():
        # a small gradient step lowers the mean entropy of that batch
        assert tta.entropy(net(x)).mean() < tta.entropy(expected).mean()


def test_episodic_tent_restores_parameters_buffers_and_optimizer_after_every_batch():
    tent = tta.Tent(trained_source(), lr=1e-2, steps=3, episodic=True)
    start_model, start_opt = state(tent.model), copy.deepcopy(tent.optimizer.state_dict())
    for seed in range(3):
        tent(batch(seed))
        assert_same_state(start_model, state(tent.model))
        assert tent.optimizer.state_dict() == start_opt  # no Adam moments left behind


def test_episodic_single_step_tent_predicts_like_bn_adaptation():
    source = trained_source()
    x = batch()
    with torch.no_grad():
        bn = tta.bn_adapt(source)(x)
    tent = tta.Tent(source, lr=1e-2, episodic=True)
    torch.testing.assert_close(tent(x), bn, rtol=0, atol=0)
    torch.testing.assert_close(tent(x), bn, rtol=0, atol=0)  # again: nothing carried over


def test_online_tent_carries_its_state_and_reset_restores_it():
    tent = tta.Tent(trained_source(), lr=1e-2)
    start_model, start_opt = state(tent.model), copy.deepcopy(tent.optimizer.state_dict())
    first = tent(batch(1))
    second = tent(batch(1))
    assert not torch.equal(first, second)  # the second pass sees the adapted model
    assert tent.optimizer.state_dict()["state"]  # Adam has moments now
    tent.reset()
    assert_same_state(start_model, state(tent.model))
    assert tent.optimizer.state_dict() == start_opt
    torch.testing.assert_close(tent(batch(1)), first, rtol=0, atol=0)
    with pytest.raises(ValueError, match="steps must be at least 1"):
        tta.Tent(trained_source(), steps=0)


# --- BN adaptation ----------------------------------------------------------------------------


def test_bn_adapt_normalises_with_the_batch_statistics_and_keeps_the_buffers():
    source = trained_source()
    before = state(source)
    adapted = tta.bn_adapt(source)
    x = batch()
    reference = Conv4(n_classes=3, hidden=4, image_size=16).double()  # batch statistics always
    reference.load_state_dict(source.state_dict(), strict=False)  # running stats not used
    with torch.no_grad():
        torch.testing.assert_close(adapted(x), reference(x), rtol=1e-10, atol=1e-12)
        assert not torch.allclose(adapted(x), source(x))  # the source uses running statistics
        # the prediction of an image depends on the rest of its batch
        other = torch.cat([x[:1], batch(5)[1:]])
        assert not torch.allclose(adapted(x)[0], adapted(other)[0])
    assert_same_state(before, state(adapted))
    assert_same_state(before, state(source))
    assert not any(p.requires_grad for p in adapted.parameters())


# --- rotations and test-time training -----------------------------------------------------------


def test_rotate_batch_by_hand():
    a = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    x = torch.stack([a, 10 * a]).unsqueeze(1)  # (2, 1, 2, 2)
    rotated, labels = tta.rotate_batch(x)
    assert rotated.shape == (8, 1, 2, 2)
    assert labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    by_hand = [  # counter-clockwise quarter turns of [[1, 2], [3, 4]]
        [[1.0, 2.0], [3.0, 4.0]],
        [[2.0, 4.0], [1.0, 3.0]],
        [[4.0, 3.0], [2.0, 1.0]],
        [[3.0, 1.0], [4.0, 2.0]],
    ]
    for k in range(4):
        torch.testing.assert_close(rotated[2 * k, 0], torch.tensor(by_hand[k]))
        torch.testing.assert_close(rotated[2 * k + 1, 0], 10 * torch.tensor(by_hand[k]))
    with pytest.raises(ValueError, match="square images"):
        tta.rotate_batch(torch.zeros(2, 1, 3, 4))
    with pytest.raises(ValueError, match="square images"):
        tta.rotate_batch(torch.zeros(3, 3))


class CornerReader(nn.Module):
    """Logits that name the rotation of [[1, 2], [3, 4]] from its top-left pixel."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = scale
        self.register_buffer("corner", torch.tensor([1.0, 2.0, 4.0, 3.0]))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return -self.scale * (features[:, :1] - self.corner).abs()


def test_rotation_loss_by_hand():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 1, 2, 2).repeat(3, 1, 1, 1)
    flatten = nn.Flatten()
    zeros = CornerReader(scale=0.0)
    torch.testing.assert_close(tta.rotation_loss(flatten, zeros, x), torch.tensor(math.log(4)))
    assert tta.rotation_loss(flatten, CornerReader(scale=50.0), x).item() < 1e-20
    # a reader that is wrong on every image: logits favour the next rotation
    wrong = tta.rotation_loss(flatten, CornerReader(scale=50.0), torch.rot90(x, 1, (2, 3)))
    assert wrong.item() > 10


def tiny_ttt(seed: int = 0, shared_blocks: int = 3) -> tta.TTTNet:
    torch.manual_seed(seed)
    net = Conv4(n_classes=3, hidden=4, image_size=16, norm="running").double()
    return tta.TTTNet.from_conv4(net, shared_blocks=shared_blocks)


def test_ttt_net_shapes_and_separate_branches():
    model = tiny_ttt()
    x = batch()
    assert model(x).shape == (8, 3)
    assert model.rotation_head(model.encoder(x)).shape == (8, 4)
    ids = lambda m: {id(p) for p in m.parameters()}  # noqa: E731
    assert not ids(model.encoder) & ids(model.classifier)
    assert not ids(model.rotation_head) & (ids(model.classifier) | ids(model.encoder))
    for bad in (0, 5):
        with pytest.raises(ValueError, match="shared_blocks must be 1 to 4"):
            tta.TTTNet.from_conv4(Conv4(hidden=4, image_size=16), shared_blocks=bad)


def test_ttt_train_step_updates_all_three_parts():
    model = tiny_ttt()
    before = state(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    metrics = tta.ttt_train_step(model, batch(), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1]), opt)
    assert set(metrics) == {"loss", "rotation_loss", "accuracy"}
    assert all(math.isfinite(v) for v in metrics.values())
    after = state(model)
    for part in ("encoder", "classifier", "rotation_head"):
        assert any(
            not torch.equal(before[k], after[k]) for k in before if k.startswith(part + ".")
        ), f"{part} did not change"


@pytest.mark.parametrize("episodic", [True, False])
def test_ttt_updates_only_the_encoder_and_resets_when_episodic(episodic):
    model = tiny_ttt().eval()
    before = state(model)
    adapter = tta.TTT(model, lr=0.1, steps=2, episodic=episodic)
    logits = adapter(batch())
    assert logits.shape == (8, 3)
    after = state(adapter.model)
    for k in before:
        moved = not torch.equal(before[k], after[k])
        if episodic or not k.startswith("encoder.") or "running" in k or "tracked" in k:
            assert not moved, f"{k} changed"
    if not episodic:
        assert any(not torch.equal(before[k], after[k]) for k in before if "encoder." in k)
        adapter.reset()
        assert_same_state(before, state(adapter.model))
    assert_same_state(before, state(model))
    with pytest.raises(ValueError, match="TTT adapts a TTTNet"):
        tta.TTT(Conv4(hidden=4, image_size=16))


def test_ttt_prediction_uses_the_adapted_encoder():
    model = tiny_ttt().eval()
    x = batch()
    with torch.no_grad():
        source = model(x)
    assert not torch.allclose(tta.TTT(model, lr=0.5, steps=3)(x), source)


# --- batch-wise error -----------------------------------------------------------------------------


def test_batch_errors_and_error_by_hand():
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0])
    guesses = torch.tensor([0, 1, 0, 0, 0, 0, 1])  # wrong at 2, 4, 5, 6
    seen = []

    def predict(x: torch.Tensor) -> torch.Tensor:
        seen.append(x[:, 0].tolist())
        return F.one_hot(guesses[x[:, 0].long()], 3).double()

    index = torch.arange(7).double().view(7, 1)  # each "image" carries its own index
    per_batch = tta.batch_errors(predict, index, labels, batch_size=3)
    torch.testing.assert_close(per_batch, torch.tensor([1 / 3, 2 / 3, 1.0], dtype=torch.float64))
    assert seen == [[0, 1, 2], [3, 4, 5], [6]]  # consecutive batches, in order
    assert tta.error(predict, index, labels, batch_size=3) == pytest.approx(4 / 7)
    assert tta.error(predict, index, labels, batch_size=7) == pytest.approx(4 / 7)
    for kwargs in ({"batch_size": 0}, {"labels": labels[:3]}):
        args = {"images": index, "labels": labels, "batch_size": 3} | kwargs
        with pytest.raises(ValueError, match="batch_size >= 1 and as many labels"):
            tta.batch_errors(predict, **args)


def test_rotation_images_limit_the_rotation_loss_to_the_first_images():
    x, y = batch(), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    losses = []
    for rotation_images, images in ((3, x), (3, torch.cat([x[:3], batch(9)[3:]]))):
        model = tiny_ttt()
        opt = torch.optim.SGD(model.parameters(), lr=0.0)
        losses.append(tta.ttt_train_step(model, images, y, opt, rotation_images)["rotation_loss"])
    assert losses[0] == losses[1]  # only the first three images enter the rotation loss
    model = tiny_ttt()
    expected = tta.rotation_loss(model.encoder, model.rotation_head, x[:3]).item()
    model.train()
    got = tta.ttt_train_step(model, x, y, torch.optim.SGD(model.parameters(), lr=0.0), 3)
    assert got["rotation_loss"] == pytest.approx(expected, rel=1e-12)
    for bad in (0, 9):
        with pytest.raises(ValueError, match="rotation_images must be 1 to 8"):
            tta.ttt_train_step(model, x, y, torch.optim.SGD(model.parameters(), lr=0.0), bad)
    with pytest.raises(ValueError, match="rotation_images must be at least 1"):
        tta.TTT(model, rotation_images=0)
