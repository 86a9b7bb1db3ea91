"""Tests of metalib.trained (a learner trained once, cached under its recipe), on ProtoNet."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from conftest import count_training
from metalib import protonet, runtime
from metalib.data.base import ImageClasses
from metalib.trained import data_identity, recipe_key, train_once

CONFIG = protonet.Config(hidden=4, train_way=3, queries=2, steps=4, snapshots=2)


@pytest.fixture
def split() -> ImageClasses:
    """Six random 16 x 16 classes of 4 images."""
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (6, 4, 16, 16), generator=g, dtype=torch.uint8)
    names = tuple(f"c{i}" for i in range(6))
    return ImageClasses("rand/train", images, names, ("g",) * 6)


def test_trained_once_then_loaded(monkeypatch, tmp_path, split):
    calls = count_training(monkeypatch, protonet)
    cpu = torch.device("cpu")
    before = torch.random.get_rng_state()
    first = train_once(protonet, CONFIG, split, device=cpu, folder=tmp_path)
    assert torch.equal(torch.random.get_rng_state(), before), "the caller's random state is kept"
    again = train_once(protonet, CONFIG, split, device=cpu, folder=tmp_path)
    assert len(calls) == 1 and not first.cached and again.cached and again.key == first.key
    assert again.seconds == first.seconds > 0
    mine, theirs = first.model.state_dict(), again.model.state_dict()
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert again.history.step == first.history.step == [0, 1, 2, 3]
    assert again.history["loss"] == first.history["loss"]
    # snapshots every steps // snapshots = 2 episodes, with the training seconds so far
    assert sorted(again.snapshots) == [2, 4]
    assert torch.equal(again.snapshots[4]["encoder.0.0.weight"], mine["encoder.0.0.weight"].cpu())
    seconds = again.history["seconds"]
    assert math.isnan(seconds[0]) and 0 < seconds[1] <= seconds[3] and math.isnan(seconds[2])
    # another recipe, seed or split: another key, trained again
    train_once(protonet, protonet.Config(**{**vars(CONFIG), "steps": 5}), split, folder=tmp_path)
    train_once(protonet, CONFIG, split, seed=1, device=cpu, folder=tmp_path)
    assert len(calls) == 3 and len(list(tmp_path.glob("protonet-*.pt"))) == 3


def test_same_seed_same_weights_and_no_file_without_cache(tmp_path, split):
    runs = [train_once(protonet, CONFIG, split, cache=False, folder=tmp_path) for _ in range(2)]
    a, b = (r.model.state_dict() for r in runs)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not any(r.cached for r in runs) and not list(tmp_path.iterdir())


def test_seed_shift_changes_the_training(monkeypatch, tmp_path, split):
    plain = train_once(protonet, CONFIG, split, cache=False)
    monkeypatch.setenv(runtime.ENV_SEED, "1")
    shifted = train_once(protonet, CONFIG, split, cache=False)
    assert shifted.key != plain.key
    one = train_once(protonet, CONFIG, split, seed=1, cache=False)
    monkeypatch.delenv(runtime.ENV_SEED)
    assert not torch.equal(plain.model.encoder[0][0].weight, shifted.model.encoder[0][0].weight)
    assert plain.key != one.key


def test_key_covers_the_recipe(split):
    cpu, data = torch.device("cpu"), data_identity(split)
    key = recipe_key(protonet, CONFIG, data, cpu, 0)
    assert recipe_key(protonet, CONFIG, data, cpu, 0) == key
    assert (
        recipe_key(protonet, protonet.Config(**{**vars(CONFIG), "lr": 1e-3}), data, cpu, 0) != key
    )
    assert recipe_key(protonet, CONFIG, data, torch.device("meta"), 0) != key
    assert recipe_key(protonet, CONFIG, data, cpu, 1) != key
    other = ImageClasses(split.name, split.images.flip(0), split.class_names, split.groups)
    assert recipe_key(protonet, CONFIG, data_identity(other), cpu, 0) != key


def test_bad_recipes_are_refused(split):
    with pytest.raises(ValueError, match="protonet.Config"):
        train_once(protonet, {"steps": 2}, split)
    with pytest.raises(ValueError, match="pass data_id"):
        data_identity(split.images)
    with pytest.raises(ValueError, match="unknown metric"):
        protonet.Config(metric="manhattan")
    budget = runtime.Budget("long")
    assert protonet.Config.preset(budget).steps == 20_000
    assert protonet.Config.preset(budget, metric="cosine").metric == "cosine"


def test_a_key_reads_the_modules_the_learner_runs_and_no_others():
    """The learner's module and its metalib imports, direct or not (even inside functions)."""
    from metalib.trained import source_files

    root = Path(__import__("metalib").__file__).parent

    def files(module):
        return {p.relative_to(root).as_posix() for p in source_files(module)}

    proto = files("metalib.protonet")
    assert {"protonet.py", "nets.py", "tasks.py", "train.py", "trained.py"} <= proto
    assert {"__init__.py", "data/__init__.py", "data/base.py", "data/cache.py"} <= proto
    assert not {"maml.py", "compare.py", "methods.py", "plots.py"} & proto
    assert not any(f.startswith("grading/") for f in proto)
    assert files("metalib.nets") == {"__init__.py", "nets.py"}
    everything = files("metalib.compare")  # imports metalib.data.glyphs inside a function
    assert {"data/glyphs.py", "maml.py", "reptile.py", "methods.py"} <= everything


def test_editing_a_source_file_changes_the_digest(tmp_path):
    from metalib.trained import source_digest

    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text("x = 1\n")
    b.write_text("y = 2\n")
    before = source_digest([a, b])
    assert source_digest([a, b]) == before
    b.write_text("y = 3\n")
    assert source_digest([a, b]) != before


def test_embeddings_stored_once_then_loaded(monkeypatch, tmp_path, split):
    from metalib import trained
    from metalib.nets import Conv4
    from metalib.train import History

    torch.manual_seed(0)
    backbone = trained.Trained(Conv4(6, hidden=4, image_size=16), History(), key="backbone-a")
    calls, embed = [], trained.embed_classes
    monkeypatch.setattr(trained, "embed_classes", lambda *a: calls.append(1) or embed(*a))
    first, first_id = trained.embedded(backbone, split, folder=tmp_path)
    again, again_id = trained.embedded(backbone, split, folder=tmp_path)
    assert len(calls) == 1 and again_id == first_id, "the second call loads what the first stored"
    assert again.name == first.name and torch.equal(again.features, first.features)
    assert first.features.shape == (6, 4, 4)
    # another backbone: other embeddings, another identity; without the cache: embedded, no file
    other = trained.Trained(backbone.model, History(), key="backbone-b")
    _, other_id = trained.embedded(other, split, folder=tmp_path)
    assert len(calls) == 2 and other_id != first_id
    n_files = len(list(tmp_path.glob("features-*.pt")))
    trained.embedded(backbone, split, cache=False, folder=tmp_path)
    assert len(calls) == 3 and len(list(tmp_path.glob("features-*.pt"))) == n_files == 2
