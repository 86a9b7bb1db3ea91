"""Prototypical networks, pixel nearest neighbour, and the episodic loss and scorer."""

import math
from dataclasses import replace

import pytest
import torch
from torch import nn

from metalib import protonet
from metalib.nets import Conv4, embed_tasks
from metalib.tasks import Episode
from metalib.train import episode_accuracy_fn, episode_loss


def test_prototypes_are_class_means_by_hand():
    features = torch.tensor([[[1.0, 0.0], [3.0, 2.0], [0.0, 5.0], [2.0, 4.0], [7.0, 7.0]]])
    labels = torch.tensor([[0, 0, 1, 1, 2]])
    expected = torch.tensor([[[2.0, 1.0], [1.0, 4.5], [7.0, 7.0]]])
    torch.testing.assert_close(protonet.prototypes(features, labels, 3), expected)


def test_prototypes_match_a_loop_over_tasks_and_classes(generator):
    features = torch.randn(3, 12, 5, generator=generator, dtype=torch.float64)
    labels = torch.stack([torch.randperm(12, generator=generator) % 4 for _ in range(3)])
    protos = protonet.prototypes(features, labels, 4)
    for t in range(3):
        for n in range(4):
            torch.testing.assert_close(protos[t, n], features[t][labels[t] == n].mean(0))


def test_logits_match_a_float64_reference(generator):
    q = torch.randn(2, 7, 6, generator=generator)
    c = torch.randn(2, 3, 6, generator=generator)
    q64, c64 = q.double(), c.double()
    euclid = torch.empty(2, 7, 3, dtype=torch.float64)
    cosine = torch.empty(2, 7, 3, dtype=torch.float64)
    for t in range(2):
        for i in range(7):
            for n in range(3):
                diff = q64[t, i] - c64[t, n]
                euclid[t, i, n] = -2.5 * (diff @ diff)
                cosine[t, i, n] = (
                    10.0 * (q64[t, i] @ c64[t, n]) / (q64[t, i].norm() * c64[t, n].norm())
                )
    got = protonet.logits(q, c, "euclidean", temperature=2.5)
    torch.testing.assert_close(got.double(), euclid, rtol=1e-5, atol=1e-5)
    got = protonet.logits(q, c, "cosine", temperature=torch.tensor(10.0))
    torch.testing.assert_close(got.double(), cosine, rtol=1e-5, atol=1e-5)


def test_nearest_prototype_wins_under_euclidean_logits():
    protos = torch.tensor([[[0.0, 0.0], [10.0, 0.0]]])
    queries = torch.tensor([[[1.0, 1.0], [9.0, -1.0], [4.9, 0.0]]])
    assert protonet.logits(queries, protos).argmax(-1).tolist() == [[0, 1, 0]]


@pytest.mark.parametrize("metric", protonet.METRICS)
def test_support_order_does_not_change_predictions(generator, metric):
    torch.manual_seed(0)
    net = protonet.ProtoNet(Conv4(hidden=8, image_size=16).body, metric, 5.0)
    labels = (torch.arange(8) % 4).expand(2, 8)
    episode = Episode(
        torch.rand(2, 8, 1, 16, 16, generator=generator),
        labels,
        torch.rand(2, 6, 1, 16, 16, generator=generator),
        labels[:, :6],
    )
    perm = torch.randperm(episode.support_x.shape[1], generator=generator)
    with torch.no_grad():
        a = net(episode.support_x, episode.support_y, episode.query_x, 4)
        b = net(episode.support_x[:, perm], episode.support_y[:, perm], episode.query_x, 4)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_relabelling_the_support_permutes_the_logits(generator):
    features = torch.randn(1, 6, 4, generator=generator)
    labels = torch.tensor([[0, 1, 2, 0, 1, 2]])
    queries = torch.randn(1, 5, 4, generator=generator)
    relabel = torch.tensor([2, 0, 1])  # class n becomes relabel[n]
    a = protonet.logits(queries, protonet.prototypes(features, labels, 3))
    b = protonet.logits(queries, protonet.prototypes(features, relabel[labels], 3))
    torch.testing.assert_close(b[..., relabel], a)


def test_embed_tasks_never_mixes_tasks(generator):
    # batch-statistics BN: a task's embeddings must not depend on the other tasks of the batch
    torch.manual_seed(0)
    encoder = Conv4(hidden=4, image_size=16).body
    s = torch.rand(3, 4, 1, 16, 16, generator=generator)
    q = torch.rand(3, 6, 1, 16, 16, generator=generator)
    sf, qf = embed_tasks(encoder, s, q)
    assert sf.shape == (3, 4, 4) and qf.shape == (3, 6, 4)
    sf1, qf1 = embed_tasks(encoder, s[1:2], q[1:2])
    torch.testing.assert_close(sf[1:2], sf1)
    torch.testing.assert_close(qf[1:2], qf1)


def test_temperature_learned_or_fixed():
    fixed = protonet.ProtoNet(nn.Flatten(), "euclidean", 2.0)
    learned = protonet.ProtoNet(nn.Flatten(), "cosine", 10.0, learn_temperature=True)
    assert [n for n, _ in fixed.named_parameters()] == []
    assert [n for n, _ in learned.named_parameters()] == ["log_temperature"]
    assert math.isclose(learned.temperature.item(), 10.0, rel_tol=1e-6)
    assert math.isclose(fixed.temperature.item(), 2.0, rel_tol=1e-6)


def test_episode_loss_is_cross_entropy_of_the_logits(generator):
    support = torch.tensor([[[0.0, 0.0], [4.0, 0.0]]])
    query = torch.tensor([[[1.0, 0.0], [3.0, 0.0], [0.0, 1.0]]])
    episode = Episode(
        support, torch.tensor([[0, 1]]), query, torch.tensor([[0, 1, 1]]), torch.tensor([[7, 9]])
    )
    net = protonet.ProtoNet(nn.Flatten(), "euclidean")
    loss, acc = episode_loss(net, episode)
    # logits: -d^2 = [[-1, -9], [-9, -1], [-1, -17]]
    expected = (
        -torch.log_softmax(torch.tensor([-1.0, -9.0]), 0)[0]
        - torch.log_softmax(torch.tensor([-9.0, -1.0]), 0)[1]
        - torch.log_softmax(torch.tensor([-1.0, -17.0]), 0)[1]
    ) / 3
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(acc, torch.tensor([2 / 3]))
    torch.testing.assert_close(episode_accuracy_fn(net)(episode), torch.tensor([2 / 3]))


def test_pixel_nearest_neighbour_by_hand():
    support = torch.tensor([[[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [1.0, 0.0, 0.0]]])
    query = torch.tensor([[[0.9, 0.8, 1.0], [0.1, 0.0, 0.2], [0.9, 0.1, 0.0]]])
    episode = Episode(support, torch.tensor([[2, 0, 1]]), query, torch.tensor([[0, 2, 1]]))
    assert protonet.pixel_nearest_neighbour(episode).tolist() == [[0, 2, 1]]


def test_bad_input_says_what_to_change(generator):
    f = torch.randn(1, 4, 3, generator=generator)
    with pytest.raises(ValueError, match="no support example"):
        protonet.prototypes(f, torch.tensor([[0, 0, 1, 1]]), 3)
    with pytest.raises(ValueError, match="must lie in 0..1"):
        protonet.prototypes(f, torch.tensor([[0, 1, 2, 1]]), 2)
    with pytest.raises(ValueError, match=r"\(T, N\*K, D\)"):
        protonet.prototypes(f[0], torch.tensor([0, 1, 0, 1]), 2)
    with pytest.raises(ValueError, match="long labels"):
        protonet.prototypes(f, torch.tensor([[0.0, 1.0, 0.0, 1.0]]), 2)
    with pytest.raises(ValueError, match="unknown metric"):
        protonet.logits(f, f, "manhattan")
    with pytest.raises(ValueError, match="agree on the number of tasks"):
        protonet.logits(f, torch.randn(1, 2, 5), "euclidean")
    with pytest.raises(ValueError, match="temperature must be positive"):
        protonet.ProtoNet(nn.Flatten(), temperature=0.0)
    with pytest.raises(ValueError, match="task axis"):
        embed_tasks(nn.Flatten(), torch.zeros(4, 1, 8, 8), torch.zeros(2, 4, 1, 8, 8))


def test_rotations_train_on_four_times_the_classes(generator):
    from conftest import make_tiny_classes
    from metalib.runtime import Budget

    assert protonet.Config.preset(Budget("default")).rotations  # the book's recipe
    two = make_tiny_classes(n_classes=2, per_class=3, size=16)
    plain = protonet.Config(hidden=8, train_way=8, queries=1, steps=1, snapshots=0)
    with pytest.raises(ValueError, match="way"):  # 8-way episodes need 8 classes
        protonet.train(plain, two, generator, torch.device("cpu"))
    rotated = replace(plain, rotations=True)
    run = protonet.train(rotated, two, generator, torch.device("cpu"))  # 2 classes x 4 rotations
    assert len(run.history["loss"]) == 1 and math.isfinite(run.history["loss"][0])
