"""Tests of metalib.tasks: episodes read back from the images themselves (tiny_classes encodes the
class in pixel (0, 0) and the sample in pixel (0, 1))."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metalib.tasks import Episode, FixedEpisodes, sample_episodes, sample_indices


def ids(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(class, sample) ids of images (..., 1, H, W) decoded from their first two pixels."""
    pix = (x[..., 0, 0, :2] * 255).round().long()
    return pix[..., 0], pix[..., 1]


def check_episode(ep: Episode, n_way: int, k: int, q: int, n_tasks: int, size: int = 8) -> None:
    """Every property an image episode must have, checked from its pixels."""
    assert ep.support_x.shape == (n_tasks, n_way * k, 1, size, size)
    assert ep.query_x.shape == (n_tasks, n_way * q, 1, size, size)
    assert ep.support_y.shape == (n_tasks, n_way * k) and ep.support_y.dtype == torch.long
    assert ep.query_y.shape == (n_tasks, n_way * q) and ep.query_y.dtype == torch.long
    assert ep.classes.shape == (n_tasks, n_way)
    s_cls, s_smp = ids(ep.support_x)
    q_cls, q_smp = ids(ep.query_x)
    for t in range(n_tasks):
        assert len(set(ep.classes[t].tolist())) == n_way, "classes repeat inside a task"
        # every image of label j comes from class classes[t, j]
        torch.testing.assert_close(s_cls[t], ep.classes[t][ep.support_y[t]])
        torch.testing.assert_close(q_cls[t], ep.classes[t][ep.query_y[t]])
        # each label exactly K times in support and Q times in query
        assert ep.support_y[t].bincount(minlength=n_way).tolist() == [k] * n_way
        assert ep.query_y[t].bincount(minlength=n_way).tolist() == [q] * n_way
        # no image twice, and support and query disjoint
        s_pairs = set(zip(s_cls[t].tolist(), s_smp[t].tolist(), strict=True))
        q_pairs = set(zip(q_cls[t].tolist(), q_smp[t].tolist(), strict=True))
        assert len(s_pairs) == n_way * k and len(q_pairs) == n_way * q
        assert not s_pairs & q_pairs


def test_sample_episodes_is_a_valid_episode(tiny_classes, generator):
    ep = sample_episodes(
        tiny_classes, n_way=5, k_shot=2, q_queries=3, n_tasks=20, generator=generator
    )
    check_episode(ep, 5, 2, 3, 20)
    assert ep.n_tasks == len(ep) == 20 and ep.n_way == 5
    assert ep.support_x.dtype == torch.float32
    # labels are a random relabelling, not the classes in sorted order
    assert (ep.classes[:, 0] != ep.classes.min(dim=1).values).any()


# tiny_classes is never modified, so sharing it across generated examples is safe
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    n_way=st.integers(2, 12),
    k=st.integers(1, 5),
    q=st.integers(1, 5),
    n_tasks=st.integers(1, 4),
    seed=st.integers(0, 2**31),
)
def test_episode_properties_hold_for_any_valid_sizes(tiny_classes, n_way, k, q, n_tasks, seed):
    data = tiny_classes
    if k + q > data.per_class:
        with pytest.raises(ValueError, match="must be at most 6"):
            sample_episodes(data, n_way, k, q, n_tasks, torch.Generator().manual_seed(seed))
        return
    ep = sample_episodes(data, n_way, k, q, n_tasks, torch.Generator().manual_seed(seed))
    check_episode(ep, n_way, k, q, n_tasks)


def test_sample_indices_shapes_and_distinctness(generator):
    classes, samples = sample_indices(30, 20, 5, 1, 15, n_tasks=50, generator=generator)
    assert classes.shape == (50, 5) and samples.shape == (50, 5, 16)
    assert classes.dtype == samples.dtype == torch.long
    assert all(len(set(row)) == 5 for row in classes.tolist())
    assert all(len(set(row)) == 16 for row in samples.flatten(0, 1).tolist())
    assert classes.min() >= 0 and classes.max() < 30 and samples.max() < 20


def test_labels_are_a_random_relabelling(generator):
    classes, _ = sample_indices(12, 6, 5, 1, 1, n_tasks=200, generator=generator)
    # label 0 is not always the smallest class, and every class shows up as label 0
    assert (classes[:, 0] != classes.min(dim=1).values).any()
    assert not (classes.diff(dim=1) > 0).all()
    assert set(classes[:, 0].tolist()) == set(range(12))


def test_positions_carry_no_label(tiny_classes, generator):
    ep = sample_episodes(tiny_classes, 5, 3, 3, n_tasks=50, generator=generator)
    # if support were grouped by label, the label sequence would be sorted in every task
    assert not (ep.support_y.diff(dim=1) >= 0).all(dim=1).any()
    assert not (ep.query_y.diff(dim=1) >= 0).all(dim=1).any()
    # and position 0 holds every label over many tasks
    assert set(ep.support_y[:, 0].tolist()) == set(range(5))


def test_same_seed_same_episode_other_seed_differs(tiny_classes):
    def draw(seed):
        return sample_episodes(tiny_classes, 4, 2, 2, 3, torch.Generator().manual_seed(seed))

    a, b, c = draw(7), draw(7), draw(8)
    for name in ("support_x", "support_y", "query_x", "query_y", "classes"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name))
    assert not torch.equal(a.support_x, c.support_x)


def test_global_generator_is_used_when_none_given(tiny_classes):
    torch.manual_seed(3)
    a = sample_episodes(tiny_classes, 3, 1, 1)
    torch.manual_seed(3)
    b = sample_episodes(tiny_classes, 3, 1, 1)
    torch.testing.assert_close(a.support_x, b.support_x)


def test_episode_task_and_to(tiny_classes, generator):
    ep = sample_episodes(tiny_classes, 3, 2, 1, n_tasks=4, generator=generator)
    one = ep.task(2)
    assert one.n_tasks == 1 and one.support_x.shape == (1, 6, 1, 8, 8)
    torch.testing.assert_close(one.query_x[0], ep.query_x[2])
    torch.testing.assert_close(ep.task(-1).classes[0], ep.classes[3])
    moved = ep.to("cpu")
    torch.testing.assert_close(moved.support_y, ep.support_y)
    with pytest.raises(IndexError, match="out of range"):
        ep.task(4)


def test_regression_episode():
    ep = Episode(
        torch.zeros(2, 10, 1), torch.zeros(2, 10, 1), torch.zeros(2, 5, 1), torch.zeros(2, 5, 1)
    )
    assert ep.n_tasks == 2 and ep.classes is None and ep.task(1).support_x.shape == (1, 10, 1)
    with pytest.raises(ValueError, match="regression"):
        _ = ep.n_way


def test_episode_validation():
    x, y = torch.zeros(2, 6, 1, 8, 8), torch.zeros(2, 6, dtype=torch.long)
    with pytest.raises(ValueError, match="number of tasks"):
        Episode(x, y, x[:1], y[:1])
    with pytest.raises(ValueError, match="support_x has 6 samples per task but support_y has 5"):
        Episode(x, y[:, :5], x, y)
    with pytest.raises(ValueError, match="query_x has 6"):
        Episode(x, y, x, y[:, :4])
    with pytest.raises(ValueError, match="leading task axis"):
        Episode(x[0, :, 0, 0, 0], y, x, y)
    with pytest.raises(ValueError, match="classes"):
        Episode(x, y, x, y, classes=torch.zeros(3, 2, dtype=torch.long))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_way": 1}, "at least 2 classes"),
        ({"n_way": 30}, "30-way episodes but split tiny/train has 12 classes; use at most 12 ways"),
        ({"k_shot": 0}, "k_shot must be at least 1"),
        ({"q_queries": 0}, "q_queries must be at least 1"),
        ({"k_shot": 4, "q_queries": 3}, "has 6 images; k_shot \\+ q_queries must be at most 6"),
        ({"n_tasks": 0}, "n_tasks must be at least 1"),
    ],
)
def test_sampling_errors_say_what_to_change(tiny_classes, kwargs, message):
    args = {"n_way": 5, "k_shot": 1, "q_queries": 1, "n_tasks": 1} | kwargs
    with pytest.raises(ValueError, match=message):
        sample_episodes(tiny_classes, **args)
    fixed_args = {k: v for k, v in args.items() if k != "n_tasks"}
    if "n_tasks" not in kwargs:
        with pytest.raises(ValueError, match=message):
            FixedEpisodes(tiny_classes, **fixed_args)
        with pytest.raises(ValueError, match=message.split(" but split")[0]):
            sample_indices(12, 6, **args)


def test_fixed_episodes_are_valid_and_batched_consistently(tiny_classes):
    fixed = FixedEpisodes(tiny_classes, n_way=4, k_shot=2, q_queries=3, n_episodes=10, seed=1)
    assert len(fixed) == 10
    check_episode(fixed[0], 4, 2, 3, 1)
    batches = list(fixed.batches(4))
    assert [b.n_tasks for b in batches] == [4, 4, 2]
    check_episode(batches[0], 4, 2, 3, 4)
    joined = torch.cat([b.query_x for b in batches])
    torch.testing.assert_close(joined[7], fixed[7].query_x[0])
    torch.testing.assert_close(fixed[-1].classes, fixed[9].classes)
    assert "10 episodes of 4-way 2-shot" in repr(fixed)


def test_fixed_episodes_ignore_the_global_random_state(tiny_classes):
    torch.manual_seed(0)
    a = FixedEpisodes(tiny_classes, 5, 1, 2, n_episodes=30, seed=4)
    torch.manual_seed(99)
    torch.rand(100)
    b = FixedEpisodes(tiny_classes, 5, 1, 2, n_episodes=30, seed=4)
    c = FixedEpisodes(tiny_classes, 5, 1, 2, n_episodes=30, seed=5)
    for i in (0, 17, 29):
        torch.testing.assert_close(a[i].support_x, b[i].support_x)
        torch.testing.assert_close(a[i].query_y, b[i].query_y)
    assert any(not torch.equal(a[i].classes, c[i].classes) for i in range(30))


def test_fixed_episodes_cannot_be_corrupted_through_an_episode(tiny_classes):
    fixed = FixedEpisodes(tiny_classes, 3, 1, 1, n_episodes=3)
    before = fixed[0].classes.clone()
    fixed[0].classes.zero_()
    torch.testing.assert_close(fixed[0].classes, before)


def test_fixed_episodes_errors(tiny_classes):
    fixed = FixedEpisodes(tiny_classes, 3, 1, 1, n_episodes=3)
    with pytest.raises(ValueError, match="n_episodes must be at least 1"):
        FixedEpisodes(tiny_classes, 3, 1, 1, n_episodes=0)
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        next(fixed.batches(0))
    with pytest.raises(IndexError, match="episode 3 out of range for 3"):
        fixed[3]
    assert len(list(fixed)) == 3  # iteration stops at the IndexError
