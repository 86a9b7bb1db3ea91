"""Tests of metalib.compare and metalib.methods: cache keys and reuse, same episodes, formatting."""

from __future__ import annotations

import csv
import dataclasses
import warnings

import pytest
import torch

from conftest import count_training, tiny_learners
from metalib import compare as comparison
from metalib import maml, methods
from metalib.compare import Comparison, Row, compare
from metalib.data.base import ImageClasses
from metalib.finetune import PretrainConfig
from metalib.tasks import Episode

TINY = {
    "backbone": {"hidden": 8, "pretrain": PretrainConfig(steps=2, batch_size=32, lr=2e-3)},
    "ProtoNet": {"steps": 2, "hidden": 8, "train_way": 5},
    "weight predictor": {"steps": 2, "feature_dim": 8},
}
NAMES = ["pixel nearest neighbour", "ProtoNet", "weight predictor"]


def _split(name: str, n_classes: int, seed: int) -> ImageClasses:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n_classes, 8, 16, 16), generator=g, dtype=torch.uint8)
    return ImageClasses(
        name=name,
        images=images,
        class_names=tuple(f"c{i}" for i in range(n_classes)),
        groups=("g",) * n_classes,
    )


@pytest.fixture
def data() -> tuple[ImageClasses, ImageClasses]:
    """A random 16 x 16 train split (10 classes) and test split (6 classes), 8 images each."""
    return _split("rand/train", 10, 0), _split("rand/test", 6, 1)


def _run(data, folder, names=NAMES, **kwargs):
    kwargs = {"shots": (1, 2), "n_episodes": 4, "queries": 2, "overrides": TINY, **kwargs}
    return compare(names, data=data, folder=folder, **kwargs)


def _counting(monkeypatch, name: str) -> list[int]:
    """Count the calls of the train function of a learner's recipe."""
    return count_training(monkeypatch, methods.REGISTRY[name].learner)


def test_second_call_reuses_the_cache(monkeypatch, tmp_path, data):
    calls = _counting(monkeypatch, "ProtoNet")
    first = _run(data, tmp_path)
    assert len(calls) == 1 and not any(r.cached for r in first if r.method == "ProtoNet")
    second = _run(data, tmp_path)
    assert len(calls) == 1, "the second call must not train again"
    assert all(r.cached for r in second if r.method != "pixel nearest neighbour")
    assert [r.accuracy for r in second] == [r.accuracy for r in first]
    assert [r.train_seconds for r in second] == [r.train_seconds for r in first]
    # other settings: a new key, trained again
    _run(data, tmp_path, overrides={**TINY, "ProtoNet": {**TINY["ProtoNet"], "steps": 3}})
    assert len(calls) == 2


def test_no_cache_always_trains(monkeypatch, tmp_path, data):
    calls = _counting(monkeypatch, "ProtoNet")
    _run(data, tmp_path, names=["ProtoNet"], cache=False)
    _run(data, tmp_path, names=["ProtoNet"], cache=False)
    assert len(calls) == 2 and not list(tmp_path.glob("*.pt"))


def test_corrupt_cache_file_is_rebuilt(monkeypatch, tmp_path, data):
    calls = _counting(monkeypatch, "ProtoNet")
    first = _run(data, tmp_path, names=["ProtoNet"])
    (entry,) = tmp_path.glob("protonet-*.pt")
    entry.write_bytes(b"not a cache file")
    with pytest.warns(RuntimeWarning, match="corrupt"):
        again = _run(data, tmp_path, names=["ProtoNet"])
    assert len(calls) == 2 and not any(r.cached for r in again)
    assert [r.accuracy for r in again] == [r.accuracy for r in first]  # same seed, same weights
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert all(r.cached for r in _run(data, tmp_path, names=["ProtoNet"]))


def test_every_method_sees_the_same_episodes(monkeypatch, tmp_path, data):
    seen: dict[str, list[Episode]] = {}

    def watch(name, predict):
        def watched(*args):
            seen.setdefault(name, []).append(args[-1])
            return predict(*args)

        return watched

    monkeypatch.setattr(methods, "pixel_logits", watch("pixel", methods.pixel_logits))
    for name, module in (("proto", methods.protonet), ("wp", methods.weight_predictor)):
        monkeypatch.setattr(module, "predict", watch(name, module.predict))
    _run(data, tmp_path)
    pixel, proto, wp = (seen[n] for n in ("pixel", "proto", "wp"))
    assert len(pixel) == len(proto) == len(wp) == 10  # (1 for memory + 4 episodes) x 2 shots
    for a, b, c in zip(pixel, proto, wp, strict=True):
        for field in ("support_x", "support_y", "query_x", "query_y", "classes"):
            torch.testing.assert_close(getattr(a, field), getattr(b, field), rtol=0, atol=0)
        # the weight predictor reads embeddings of the very same images
        assert c.support_x.shape[-1] == 8 and c.support_x.dim() == 3
        for field in ("support_y", "query_y", "classes"):
            torch.testing.assert_close(getattr(a, field), getattr(c, field), rtol=0, atol=0)


def test_pixel_nearest_neighbour_on_a_hand_made_episode():
    # class 0 is dark, class 1 bright; queries 0.1, 0.9 and 0.4 (nearer dark) -> labels 0, 1, 0
    support_x = torch.tensor([0.0, 1.0]).view(1, 2, 1, 1, 1).expand(1, 2, 1, 2, 2)
    query_x = torch.tensor([0.1, 0.9, 0.4]).view(1, 3, 1, 1, 1).expand(1, 3, 1, 2, 2)
    ep = Episode(
        support_x,
        torch.tensor([[1, 0]]),
        query_x,
        torch.tensor([[1, 0, 0]]),
        torch.tensor([[3, 7]]),
    )  # the support is listed bright first: labels come from the support set, not positions
    assert methods.REGISTRY["pixel nearest neighbour"].learner is None
    logits = methods.pixel_logits(ep)
    torch.testing.assert_close(logits, torch.tensor([[[0.0, 1.0], [1.0, 0.0], [0.0, 1.0]]]))


def _row(**kw) -> Row:
    base = dict(
        method="MAML", family="optimization-based", n_way=5, shots=1, accuracy=0.8766,
        ci95=0.0123, n_episodes=300, train_seconds=47.4, adapt_ms=14.256, peak_mb=12.34,
        cached=False,
    )  # fmt: skip
    return Row(**{**base, **kw})


def test_table_markdown_and_csv(tmp_path):
    result = Comparison(
        (_row(), _row(method="pixel NN", cached=True, peak_mb=None)), "default", "cpu"
    )
    lines = result.table_markdown().splitlines()
    assert lines[0].startswith("| method | family | shots | accuracy (95% CI) |")
    assert lines[2] == (
        "| MAML | optimization-based | 5-way 1-shot | 87.7% ± 1.2% | 47 | 14.26 | 12.3 |"
    )
    assert lines[3].endswith("| 47 (cached) | 14.26 | n/a |")
    result.to_csv(tmp_path / "c.csv")
    with open(tmp_path / "c.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows[0]["accuracy"] == "0.8766" and rows[1]["cached"] == "True"
    assert rows[1]["peak_mb"] == "" and list(rows[0]) == [f.name for f in dataclasses.fields(Row)]
    assert len(result) == 2 and list(result)[0] == _row()


def test_rows_carry_families_and_costs(tmp_path, data):
    rows = list(_run(data, tmp_path))
    assert [(r.method, r.shots) for r in rows] == [(n, k) for n in NAMES for k in (1, 2)]
    assert {r.family for r in rows} <= set(methods.FAMILIES)
    for r in rows:
        assert 0 <= r.accuracy <= 1 and r.ci95 >= 0 and r.n_episodes == 4 and r.adapt_ms > 0
        assert r.peak_mb is None or r.peak_mb >= 0
    assert rows[0].train_seconds == 0 and rows[2].train_seconds > 0


def test_registry_is_complete():
    assert set(methods.REGISTRY) == {
        "pixel nearest neighbour",
        "fine-tuning (last layer)",
        "MAML",
        "first-order MAML",
        "Meta-SGD",
        "Reptile",
        "LSTM learner",
        "attention learner",
        "weight predictor",
        "ProtoNet",
    }
    assert all(m.family in methods.FAMILIES for m in methods.REGISTRY.values())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            {"methods": ["MAML", "SNAIL"]},
            r"unknown methods \['SNAIL'\]; choose from \[.*'ProtoNet'",
        ),
        ({"methods": []}, "methods is empty"),
        ({"shots": ()}, "shots must be positive ints"),
        ({"shots": (0, 1)}, "shots must be positive ints"),
        ({"shots": (1, True)}, "shots must be positive ints"),
        ({"shots": (1.0,)}, "shots must be positive ints"),
        ({"shots": (7,)}, "exceed the 8 images per class"),
        ({"overrides": {"Maml": {}}}, "overrides for unknown methods"),
        ({"n_way": 1}, "at least 2 classes"),
    ],
)
def test_bad_arguments_raise(kwargs, match, data, tmp_path):
    kwargs = {"methods": ["pixel nearest neighbour"], "queries": 2, **kwargs}
    with pytest.raises(ValueError, match=match):
        compare(data=data, folder=tmp_path, n_episodes=2, **kwargs)


def test_other_training_data_trains_again(monkeypatch, tmp_path, data):
    calls = _counting(monkeypatch, "ProtoNet")
    _run(data, tmp_path, names=["ProtoNet"])
    other = (_split("rand/train", 10, 5), data[1])  # same name and shape, other pixels
    _run(other, tmp_path, names=["ProtoNet"])
    assert len(calls) == 2


def test_feature_learners_pay_for_embedding_each_task(monkeypatch, tmp_path, data):
    """A learner reading embeddings is charged the encoder's pass over a task's images: timed
    once per shot setting, whatever the number of such learners, and added to each one's time."""
    seen = []
    build = methods.BACKBONE.build

    def counting_backbone(config, split):
        net = build(config, split)
        net.body.register_forward_hook(lambda m, inp, out: seen.append(inp[0].shape[0]))
        return net

    monkeypatch.setattr(methods.BACKBONE, "build", counting_backbone)
    names = ["weight predictor", "attention learner"]
    overrides = {**TINY, "attention learner": {"steps": 2, "feature_dim": 8}}
    _run(data, tmp_path, names=names, shots=(2,), cache=False, overrides=overrides)
    # besides embedding the splits (train and test, 80 and 48 images), passes over one task's
    # 5 ways x (2 shots + 2 queries) = 20 images: one memory probe per learner, and for the
    # setting one untimed pass and one timed pass per task (4 tasks)
    assert seen.count(20) == 2 + 1 + 4, seen
    slow = 1000.0
    monkeypatch.setattr(comparison, "_embedding_ms", lambda encoder, episodes, device: slow)
    rows = _run(data, tmp_path, names=names, shots=(2,), cache=False, overrides=overrides)
    assert all(slow < r.adapt_ms < slow + 1000 for r in rows), [r.adapt_ms for r in rows]
    pixel = _run(data, tmp_path, names=["pixel nearest neighbour"], shots=(2,))
    assert pixel.rows[0].adapt_ms < slow  # learners on pixels pay no embedding


def test_feature_learners_are_keyed_by_their_backbone(monkeypatch, tmp_path, data):
    """Another backbone gives other embeddings: the learners reading them train again."""
    calls = _counting(monkeypatch, "weight predictor")
    _run(data, tmp_path, names=["weight predictor"])
    _run(data, tmp_path, names=["weight predictor"])
    assert len(calls) == 1
    other = {**TINY, "backbone": {**TINY["backbone"], "hidden": 6}}
    _run(
        data,
        tmp_path,
        names=["weight predictor"],
        overrides={**other, "weight predictor": {"steps": 2, "feature_dim": 6}},
    )
    assert len(calls) == 2


def test_meta_sgd_trains_caches_and_reloads_its_step_sizes(monkeypatch, tmp_path, data):
    """Meta-SGD's state holds the network and its step sizes; a cached run scores the same."""
    calls = _counting(monkeypatch, "Meta-SGD")
    base = maml.Config(steps=2, hidden=8, tasks=2, test_steps=2)
    tiny = {"Meta-SGD": {"base": base}}
    g = torch.Generator().manual_seed(3)  # 16 images per class: training draws 1 + 15 of them
    images = torch.randint(0, 256, (10, 16, 16, 16), generator=g, dtype=torch.uint8)
    names = tuple(f"c{i}" for i in range(10))
    train = ImageClasses(name="rand16/train", images=images, class_names=names, groups=("g",) * 10)
    data = (train, data[1])
    first = list(_run(data, tmp_path, names=["Meta-SGD"], overrides=tiny))
    again = list(_run(data, tmp_path, names=["Meta-SGD"], overrides=tiny))
    assert len(calls) == 1 and again[0].cached and not first[0].cached
    assert [r.accuracy for r in first] == [r.accuracy for r in again]
    assert first[0].family == "optimization-based"


def test_cpu_peak_memory_counts_the_tensors_alive_together():
    """1 MiB, then 2 MiB more while it lives, both freed, then 1 MiB: the peak is 3 MiB."""
    from metalib.compare import peak_memory_mb

    kept = torch.ones(2**20)  # allocated before: not counted

    def fn() -> None:
        a = torch.ones(2**18)  # float32: 1 MiB
        b = torch.ones(2**19)
        del a, b
        torch.ones(2**18)

    cpu = torch.device("cpu")
    peaks = [peak_memory_mb(fn, cpu) for _ in range(2)]
    assert 3.0 <= peaks[0] < 3.01 and peaks[1] == peaks[0]
    assert kept.numel() == 2**20


def test_every_learner_trains_once_then_loads(tmp_path):
    """Every recipe of the registry trains, is stored, and a second comparison loads them all:
    the same accuracies, no training (``cached`` on every row that trains something)."""
    g = torch.Generator().manual_seed(4)
    images = torch.randint(0, 256, (10, 16, 16, 16), generator=g, dtype=torch.uint8)
    names = tuple(f"c{i}" for i in range(10))
    train = ImageClasses("rand16/train", images, names, ("g",) * 10)
    kwargs = {"shots": (1,), "n_episodes": 2, "queries": 2, "overrides": tiny_learners()}
    data = (train, _split("rand/test", 6, 1))
    first = list(compare(None, data=data, folder=tmp_path, **kwargs))
    again = list(compare(None, data=data, folder=tmp_path, **kwargs))
    assert [r.method for r in first] == list(methods.REGISTRY)
    assert not any(r.cached for r in first)
    assert all(r.cached for r in again[1:]) and not again[0].cached  # pixel NN: nothing to load
    assert [r.accuracy for r in again] == [r.accuracy for r in first]
    assert [r.train_seconds for r in again] == [r.train_seconds for r in first]
    # one file per recipe: the backbone (also fine-tuning's), two black boxes, two MAMLs, ...
    assert len([p for p in tmp_path.glob("*.pt") if not p.name.startswith("features-")]) == 9
    # and the two splits embedded by the backbone, once each
    assert len(list(tmp_path.glob("features-*.pt"))) == 2
