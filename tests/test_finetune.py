"""Tests of metalib.finetune on a tiny easy dataset (6 classes of 16 x 16 squares): pre-training
learns, fine-tuning copies, and exactly the layers a recipe freezes stay unchanged."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from metalib import finetune as finetune_module
from metalib.data.base import ImageClasses
from metalib.finetune import FinetuneConfig, PretrainConfig, finetune, finetune_accuracy, pretrain
from metalib.nets import Conv4, with_new_head
from metalib.tasks import sample_episodes

HIDDEN, SIZE = 8, 16


def easy_classes(n_classes: int = 6, per_class: int = 10, seed: int = 0) -> ImageClasses:
    """Class c is a 4 x 4 square at its own place (jittered by a pixel) on a noisy background."""
    g = torch.Generator().manual_seed(seed)
    images = torch.zeros(n_classes, per_class, SIZE, SIZE)
    for c in range(n_classes):
        r, col = (c // 3) * 8 + 2, (c % 3) * 5 + 1
        for m in range(per_class):
            dr, dc = torch.randint(-1, 2, (2,), generator=g).tolist()
            images[c, m, r + dr : r + dr + 4, col + dc : col + dc + 4] = 1.0
    images += 0.3 * torch.rand(images.shape, generator=g)
    images = (images.clamp(0, 1) * 255).round().to(torch.uint8)
    return ImageClasses(
        name="easy/train",
        images=images,
        class_names=tuple(f"square{c}" for c in range(n_classes)),
        groups=tuple(f"row{c // 3}" for c in range(n_classes)),
    )


def new_model(n_classes: int = 6, seed: int = 0) -> Conv4:
    torch.manual_seed(seed)
    return Conv4(n_classes=n_classes, hidden=HIDDEN, image_size=SIZE)


@pytest.fixture(scope="module")
def data() -> ImageClasses:
    return easy_classes()


@pytest.fixture(scope="module")
def pretrained(data) -> tuple[Conv4, list[float]]:
    """A Conv4 pre-trained for 40 steps on the easy classes, and its loss per step."""
    torch.set_num_threads(1)
    model = new_model()
    history = pretrain(
        model,
        data,
        PretrainConfig(steps=40, batch_size=32, lr=1e-2),
        torch.Generator().manual_seed(0),
    )
    return model, history["loss"]


@pytest.fixture
def support(data) -> tuple[torch.Tensor, torch.Tensor]:
    """One 3-way 2-shot support set: (6, 1, 16, 16) images and (6,) labels."""
    ep = sample_episodes(data, 3, 2, 1, generator=torch.Generator().manual_seed(3))
    return ep.support_x[0], ep.support_y[0]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(a: nn.Module | dict, b: nn.Module | dict) -> bool:
    a = a if isinstance(a, dict) else a.state_dict()
    b = b if isinstance(b, dict) else b.state_dict()
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# pretrain ----------------------------------------------------------------------------------------


def test_pretrain_needs_a_head_per_class(data):
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="needs a head with 6 outputs; build the model with"):
        pretrain(new_model(n_classes=5), data, PretrainConfig(steps=1), g)
    with pytest.raises(ValueError, match="needs a head with 6 outputs"):
        pretrain(nn.Sequential(nn.Flatten(), nn.Linear(SIZE * SIZE, 6)), data, PretrainConfig(), g)


def test_pretrain_reduces_the_loss(pretrained):
    _, losses = pretrained
    assert len(losses) == 40
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert first > 1.0  # about log(6) = 1.8 at the start
    assert last < 0.3 * first


def test_pretrain_is_deterministic_and_records_accuracy(data):
    runs = []
    for _ in range(2):
        model = new_model(seed=1)
        h = pretrain(model, data, PretrainConfig(5, 16, 1e-2), torch.Generator().manual_seed(4))
        runs.append((model, h))
    (m1, h1), (m2, h2) = runs
    assert h1.step == [0, 1, 2, 3, 4]
    assert h1["loss"] == h2["loss"] and h1["accuracy"] == h2["accuracy"]
    assert all(0.0 <= a <= 1.0 for a in h1["accuracy"])
    assert _same(m1, m2)
    assert not _same(m1, new_model(seed=1))  # and it did train in place


# finetune ----------------------------------------------------------------------------------------


CONFIGS = [
    FinetuneConfig(steps=3),
    FinetuneConfig(steps=3, body_lr=None),
    FinetuneConfig(steps=3, body_lr=0),
    FinetuneConfig(steps=3, frozen_blocks=2),
    FinetuneConfig(steps=3, probe_steps=2),
]


@pytest.mark.parametrize("config", CONFIGS, ids=["default", "same-lr", "probe", "frozen", "lp-ft"])
def test_finetune_never_mutates_the_model(pretrained, support, config):
    model = copy.deepcopy(pretrained[0]).eval()  # not the shared one: its mode is checked
    before = _snapshot(model)
    flags = [p.requires_grad for p in model.parameters()]
    grads = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
    net = finetune(model, *support, 3, config, torch.Generator().manual_seed(0))
    assert net is not model
    assert _same(model, before)
    assert [p.requires_grad for p in model.parameters()] == flags
    assert not model.training and model.head.out_features == 6
    for p, g in zip(model.parameters(), grads, strict=True):  # not even the stale gradients
        assert (p.grad is None and g is None) or torch.equal(p.grad, g)


def test_finetune_new_head_has_n_way_outputs(pretrained, support):
    model, _ = pretrained
    net = finetune(model, *support, 3, FinetuneConfig(steps=2), torch.Generator().manual_seed(0))
    assert isinstance(net.head, nn.Linear)
    assert (net.head.in_features, net.head.out_features) == (HIDDEN, 3)
    assert net(support[0]).shape == (6, 3)


def test_finetune_is_deterministic_given_the_generator(pretrained, support):
    model, _ = pretrained
    config = FinetuneConfig(steps=3, probe_steps=2)
    a = finetune(model, *support, 3, config, torch.Generator().manual_seed(5))
    b = finetune(model, *support, 3, config, torch.Generator().manual_seed(5))
    c = finetune(model, *support, 3, config, torch.Generator().manual_seed(6))
    assert _same(a, b)
    assert not torch.equal(a.head.weight, c.head.weight)


def test_body_lr_zero_trains_only_the_head(pretrained, support):
    model, _ = pretrained
    net = finetune(
        model, *support, 3, FinetuneConfig(steps=5, body_lr=0), torch.Generator().manual_seed(0)
    )
    assert _same(net.body, model.body)
    start = with_new_head(model, 3, torch.Generator().manual_seed(0)).head  # the head it began from
    assert not torch.equal(net.head.weight, start.weight)
    assert not torch.equal(net.head.bias, start.bias)


def test_body_lr_none_means_the_head_lr(pretrained, support):
    model, _ = pretrained
    a = finetune(
        model,
        *support,
        3,
        FinetuneConfig(3, lr=5e-3, body_lr=None),
        torch.Generator().manual_seed(0),
    )
    b = finetune(
        model,
        *support,
        3,
        FinetuneConfig(3, lr=5e-3, body_lr=5e-3),
        torch.Generator().manual_seed(0),
    )
    c = finetune(
        model,
        *support,
        3,
        FinetuneConfig(3, lr=5e-3, body_lr=1e-4),
        torch.Generator().manual_seed(0),
    )
    assert _same(a, b)
    assert not _same(a, c)


@pytest.mark.parametrize("k", [0, 1, 2, 3, 4])
def test_frozen_blocks_stay_exactly_unchanged(pretrained, support, k):
    model, _ = pretrained
    config = FinetuneConfig(steps=3, lr=1e-2, body_lr=1e-2, frozen_blocks=k)
    net = finetune(model, *support, 3, config, torch.Generator().manual_seed(0))
    for i in range(4):
        old, new = model.body[i], net.body[i]
        if i < k:
            assert _same(old, new), f"block {i} of {k} frozen ones changed"
        else:
            # the conv bias sits before a batch norm, so its gradient is (nearly) zero: check the
            # conv kernel and the norm's scale, which always learn
            assert not torch.equal(old[0].weight, new[0].weight), f"block {i} did not learn"
            assert not torch.equal(old[1].weight, new[1].weight), f"block {i} did not learn"
    assert not torch.equal(
        net.head.weight, with_new_head(model, 3, torch.Generator().manual_seed(0)).head.weight
    )


def test_probe_steps_fit_the_head_first(pretrained, support):
    model, _ = pretrained
    plain = finetune(model, *support, 3, FinetuneConfig(steps=3, probe_steps=0), _gen(0))
    lpft = finetune(model, *support, 3, FinetuneConfig(steps=3, probe_steps=4), _gen(0))
    assert not _same(plain, lpft)
    assert not _same(lpft.body, model.body)  # after the probe the whole network moved
    # LP-FT with no fine-tuning steps is exactly a linear probe of probe_steps steps
    probe_only = finetune(model, *support, 3, FinetuneConfig(steps=0, probe_steps=4), _gen(0))
    linear = finetune(model, *support, 3, FinetuneConfig(steps=4, body_lr=0), _gen(0))
    assert _same(probe_only, linear)
    assert _same(probe_only.body, model.body)


def test_finetune_shape_errors(pretrained, support):
    model, _ = pretrained
    x, y = support
    config = FinetuneConfig(steps=1)
    with pytest.raises(ValueError, match=r"finetune takes one task.*use episode.task\(i\)"):
        finetune(model, x.unsqueeze(0), y.unsqueeze(0), 3, config)  # with a task axis
    with pytest.raises(ValueError, match="finetune takes one task"):
        finetune(model, x, y[:-1], 3, config)
    with pytest.raises(ValueError, match="finetune takes one task"):
        finetune(model, x.flatten(1), y, 3, config)


def test_too_many_frozen_blocks(pretrained, support):
    model, _ = pretrained
    with pytest.raises(ValueError, match="frozen_blocks=5, but the body has 4 blocks"):
        finetune(model, *support, 3, FinetuneConfig(steps=1, frozen_blocks=5))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"steps": -1}, "steps and probe_steps must be non-negative"),
        ({"probe_steps": -1}, "steps and probe_steps must be non-negative"),
        ({"lr": 0.0}, "learning rates must be positive"),
        ({"lr": -1e-3}, "learning rates must be positive"),
        ({"body_lr": -1e-3}, "learning rates must be positive"),
        ({"frozen_blocks": -1}, "frozen_blocks must be non-negative, got -1"),
    ],
)
def test_finetune_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FinetuneConfig(**kwargs)


def test_finetune_config_accepts_its_edges():
    FinetuneConfig(steps=0, body_lr=0.0)
    FinetuneConfig(body_lr=None, probe_steps=0, frozen_blocks=0)


# finetune_accuracy -------------------------------------------------------------------------------


def test_finetune_accuracy_shape_range_determinism(pretrained, data):
    model, _ = pretrained
    before = _snapshot(model)
    ep = sample_episodes(data, 3, 2, 3, n_tasks=3, generator=torch.Generator().manual_seed(1))
    config = FinetuneConfig(steps=3)
    a = finetune_accuracy(model, ep, config, seed=0)
    b = finetune_accuracy(model, ep, config, seed=0)
    assert a.shape == (3,) and a.dtype == torch.float32
    assert ((a >= 0) & (a <= 1)).all()
    # with 3 queries for each of 3 classes, every accuracy is a multiple of 1/9
    torch.testing.assert_close(a * 9, (a * 9).round(), rtol=0, atol=1e-5)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert _same(model, before)


def test_finetune_accuracy_matches_finetune_per_task(pretrained, data):
    model, _ = pretrained
    ep = sample_episodes(data, 3, 1, 2, n_tasks=2, generator=torch.Generator().manual_seed(2))
    config = FinetuneConfig(steps=2, body_lr=0)
    accs = finetune_accuracy(model, ep, config, seed=7)
    for t in range(2):
        net = finetune(
            model, ep.support_x[t], ep.support_y[t], 3, config, torch.Generator().manual_seed(7)
        )
        with torch.no_grad():
            pred = net(ep.query_x[t]).argmax(-1)
        expected = (pred == ep.query_y[t]).float().mean()
        torch.testing.assert_close(accs[t], expected, rtol=0, atol=0)


def test_finetune_accuracy_is_high_on_an_easy_task(pretrained):
    model, _ = pretrained
    fresh = easy_classes(seed=1)  # new jitter and noise, the same six squares
    ep = sample_episodes(fresh, 3, 2, 3, n_tasks=6, generator=torch.Generator().manual_seed(1))
    accs = finetune_accuracy(model, ep, FinetuneConfig(steps=20, lr=1e-2, body_lr=None))
    assert accs.shape == (6,)
    assert accs.mean() >= 0.9, accs


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
def test_head_fit_takes_torch_adams_steps(dtype, tol):
    """The written-out linear probe equals autograd + torch.optim.Adam on the mean cross entropy."""
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(10, 6, generator=g, dtype=dtype)
    y = torch.tensor([0, 1, 2, 3, 4] * 2)
    head = nn.Linear(6, 5).to(dtype)
    reference = nn.Linear(6, 5).to(dtype)
    reference.load_state_dict(head.state_dict())
    start = head.weight.detach().clone()
    finetune_module._fit_head_on_features(head, feats, y, steps=30, lr=0.05)
    opt = torch.optim.Adam(reference.parameters(), lr=0.05)
    for _ in range(30):
        loss = torch.nn.functional.cross_entropy(reference(feats), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert torch.allclose(head.weight, reference.weight, rtol=0, atol=tol)
    assert torch.allclose(head.bias, reference.bias, rtol=0, atol=tol)
    assert (head.weight - start).abs().max() > 0.5  # 30 steps of 0.05 moved it
