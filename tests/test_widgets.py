"""Tests of metalib.widgets: the episode explorer's controls, redraws and lazy loading, with the
figure drawing recorded instead of shown (Agg backend, no kernel)."""

from __future__ import annotations

import ipywidgets as w
import matplotlib
import matplotlib.pyplot as plt
import pytest
import torch

import metalib.widgets
from metalib.data.base import ImageClasses
from metalib.widgets import episode_explorer

matplotlib.use("Agg")


def shade_classes(n_classes: int = 6, per_class: int = 5, name: str = "shades") -> ImageClasses:
    images = (torch.arange(n_classes) * 20 + 10).to(torch.uint8).view(-1, 1, 1, 1)
    return ImageClasses(
        name,
        images.expand(n_classes, per_class, 16, 16).clone(),
        tuple(f"{name}{c}" for c in range(n_classes)),
        tuple("g" for _ in range(n_classes)),
    )


@pytest.fixture
def drawn(monkeypatch):
    """Every episode the explorer draws, in order (plt.show is replaced: Agg cannot show)."""
    episodes = []
    real_grid = metalib.widgets.episode_grid

    def recording_grid(episode, **kwargs):
        episodes.append((episode, kwargs))
        return real_grid(episode, **kwargs)

    monkeypatch.setattr(metalib.widgets, "episode_grid", recording_grid)
    monkeypatch.setattr(plt, "show", lambda *args, **kwargs: plt.close("all"))
    yield episodes
    plt.close("all")


def _controls(box: w.VBox) -> dict[str, w.Widget]:
    found = {}
    for child in box.children:
        for c in getattr(child, "children", (child,)):
            found[getattr(c, "description", "") or type(c).__name__] = c
    return found


def test_returns_a_vbox_with_the_controls(drawn):
    box = episode_explorer({"shades": shade_classes()}, max_ways=7, max_shots=3)
    assert isinstance(box, w.VBox)
    c = _controls(box)
    assert set(c) == {"dataset", "seed", "ways (N)", "shots (K)", "Output"}
    assert isinstance(c["Output"], w.Output)
    assert c["dataset"].options == ("shades",)
    assert (c["ways (N)"].value, c["ways (N)"].min, c["ways (N)"].max) == (5, 2, 7)
    assert (c["shots (K)"].value, c["shots (K)"].min, c["shots (K)"].max) == (1, 1, 3)
    assert len(drawn) == 1  # drawn once on creation
    episode, kwargs = drawn[0]
    assert (episode.n_way, episode.support_x.shape[1], episode.query_x.shape[1]) == (5, 5, 10)
    assert kwargs["class_names"] == shade_classes().class_names


def test_moving_a_slider_redraws(drawn):
    box = episode_explorer({"shades": shade_classes()}, queries=1)
    c = _controls(box)
    c["ways (N)"].value = 3
    assert len(drawn) == 2
    assert drawn[-1][0].n_way == 3 and drawn[-1][0].support_x.shape[1] == 3
    c["shots (K)"].value = 2
    assert len(drawn) == 3 and drawn[-1][0].support_x.shape[1] == 3 * 2
    before = drawn[-1][0].classes
    c["seed"].value = 1
    assert len(drawn) == 4 and drawn[-1][0].n_way == 3
    assert not torch.equal(drawn[-1][0].classes, before)  # another seed, another episode
    c["seed"].value = 0
    assert torch.equal(drawn[-1][0].classes, before)  # the same seed, the same episode


def test_sizes_are_clamped_to_the_dataset(drawn):
    box = episode_explorer({"small": shade_classes(n_classes=3, per_class=4)}, queries=2)
    c = _controls(box)
    assert drawn[-1][0].n_way == 3  # 5 ways asked, 3 classes there
    c["shots (K)"].value = 5
    ep = drawn[-1][0]
    assert ep.support_x.shape[1] == 3 * 2 and ep.query_x.shape[1] == 3 * 2  # 2 shots + 2 queries


def test_callable_datasets_load_lazily_and_once(drawn):
    calls = {"a": 0, "b": 0}

    def loader(name):
        def load():
            calls[name] += 1
            return shade_classes(name=name)

        return load

    box = episode_explorer({"a": loader("a"), "b": loader("b")})
    c = _controls(box)
    assert calls == {"a": 1, "b": 0}  # only the shown dataset is loaded
    c["dataset"].value = "b"
    assert calls == {"a": 1, "b": 1}
    assert drawn[-1][1]["class_names"][0] == "b0"
    c["dataset"].value = "a"
    c["ways (N)"].value = 2
    c["dataset"].value = "b"
    assert calls == {"a": 1, "b": 1}  # loaded once, then reused
    assert len(drawn) == 5


def test_mixed_loaded_and_callable_datasets(drawn):
    calls = []
    box = episode_explorer(
        {"ready": shade_classes(), "later": lambda: calls.append(1) or shade_classes()}
    )
    _controls(box)["dataset"].value = "later"
    assert len(calls) == 1 and len(drawn) == 2


def test_empty_datasets_are_an_error():
    with pytest.raises(ValueError, match="needs at least one dataset"):
        episode_explorer({})


def test_works_on_a_non_interactive_backend():
    plt.close("all")
    box = episode_explorer({"shades": shade_classes()})
    _controls(box)["ways (N)"].value = 3
    assert plt.get_fignums() == []  # every redraw closes its figure


class _Shift(torch.nn.Module):
    """y = x * 0 + b: one parameter, so one gradient step on MSE has a closed form."""

    def __init__(self) -> None:
        super().__init__()
        self.b = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 0 + self.b


def test_adaptation_explorer_adapts_each_model_on_the_same_points(monkeypatch):
    from metalib.data.sinusoid import SinusoidFamily
    from metalib.widgets import adaptation_explorer

    fits = []
    real = metalib.widgets.regression_fits
    monkeypatch.setattr(
        metalib.widgets,
        "regression_fits",
        lambda grid, truth, support, predictions, **kw: (
            fits.append((support, predictions)) or real(grid, truth, support, predictions, **kw)
        ),
    )
    shift = _Shift()
    box = adaptation_explorer({"shift": shift}, SinusoidFamily(), k_shot=3, lr=0.25)
    steps, rate = box.children[0].children
    shots, seed = box.children[1].children
    assert (steps.value, shots.value) == (1, 3) and rate.value == pytest.approx(0.25)
    (sx, sy), predictions = fits[-1]
    ((label, y),) = predictions.items()
    # one step on MSE from b = 0: b' = 0 - lr * 2 * (0 - mean(y)) = 2 * lr * mean(y)
    assert sx.shape == (3, 1)
    torch.testing.assert_close(y, torch.full_like(y, 0.5 * sy.mean().item()), rtol=1e-5, atol=1e-6)
    assert label.startswith("shift (MSE ")
    steps.value = 0
    (_, _), predictions = fits[-1]
    assert torch.all(next(iter(predictions.values())) == 0)
    seed.value = 5
    assert not torch.equal(fits[-1][0][1], sy)  # another task
    assert shift.b.item() == 0.0  # the model itself is never modified
    with pytest.raises(ValueError, match="at least one model"):
        adaptation_explorer({}, SinusoidFamily())
