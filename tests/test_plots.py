"""Tests of metalib.plots: which image lands on which axes, the labels and titles, and the lines
drawn for histories and scores (on the non-interactive Agg backend)."""

from __future__ import annotations

import math

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from metalib.compare import Row
from metalib.data.base import ImageClasses
from metalib.plots import (
    COLUMN,
    accuracy_vs_cost,
    band,
    episode_grid,
    image_grid,
    learning_curves,
    scores_vs,
    spread_labels,
    text_overlaps,
)
from metalib.tasks import Episode, sample_episodes
from metalib.train import History, Score

matplotlib.use("Agg")


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def shade_classes(n_classes: int = 5, per_class: int = 6) -> ImageClasses:
    """16 x 16 images of class c all hold 10 * (c + 1), except pixel (0, 0) = 200 + sample id."""
    images = torch.zeros(n_classes, per_class, 16, 16, dtype=torch.uint8)
    for c in range(n_classes):
        images[c] = 10 * (c + 1)
        images[c, :, 0, 0] = 200 + torch.arange(per_class, dtype=torch.uint8)
    names = tuple(f"A CHARACTER WITH A VERY LONG NAME {c}" for c in range(n_classes))
    return ImageClasses("shades/train", images, names, tuple("g" for _ in range(n_classes)))


def _shown(ax) -> np.ndarray:
    return np.asarray(ax.images[0].get_array())


def _class_of(ax) -> int:
    """The class drawn on an axes of a shade_classes image (pixel (1, 1) = 10 * (c + 1) / 255)."""
    return round(float(_shown(ax)[1, 1]) * 255 / 10) - 1


# image_grid --------------------------------------------------------------------------------------


@pytest.mark.parametrize("channel_axis", [True, False])
def test_image_grid_puts_each_image_on_its_axes(channel_axis):
    images = torch.rand(2, 3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    fig = image_grid(images if channel_axis else images[:, :, 0], scale=1.0)
    assert len(fig.axes) == 6
    np.testing.assert_allclose(fig.get_size_inches(), [3.0, 2.0])  # cols x rows inches
    for i, ax in enumerate(fig.axes):  # row-major order
        r, c = divmod(i, 3)
        np.testing.assert_allclose(_shown(ax), images[r, c, 0].numpy(), rtol=0, atol=0)
        assert ax.images[0].get_clim() == (0, 1)
        assert list(ax.get_xticks()) == [] and list(ax.get_yticks()) == []
    assert fig._suptitle is None


def test_image_grid_labels_and_title():
    fig = image_grid(torch.zeros(2, 2, 8, 8), row_labels=["first", "second"], title="a grid")
    assert fig._suptitle.get_text() == "a grid"
    assert [ax.get_ylabel() for ax in fig.axes] == ["first", "", "second", ""]


def test_image_grid_single_image():
    fig = image_grid(torch.ones(1, 1, 1, 8, 8))
    assert len(fig.axes) == 1


@pytest.mark.parametrize("shape", [(3, 8, 8), (2, 2, 1, 1, 8, 8), (8, 8)])
def test_image_grid_rejects_other_shapes(shape):
    with pytest.raises(ValueError, match=r"expected \(rows, cols, \[1,\] H, W\) images"):
        image_grid(torch.zeros(shape))


# episode_grid ------------------------------------------------------------------------------------


@pytest.mark.parametrize("q, max_queries", [(4, 3), (2, 5), (1, 1)])
def test_episode_grid_layout(q, max_queries):
    n, k = 3, 2
    data = shade_classes()
    ep = sample_episodes(data, n, k, q, generator=torch.Generator().manual_seed(0))
    fig = episode_grid(ep, max_queries=max_queries)
    shown_q = min(q, max_queries)
    cols = k + 1 + shown_q
    assert len(fig.axes) == n * cols
    assert fig._suptitle.get_text() == f"{n}-way {k}-shot task: support (left) | query (right)"
    assert fig.axes[0].get_title(loc="left") == "support"
    assert fig.axes[k + 1].get_title(loc="left") == "query"
    for j in range(n):
        row = fig.axes[j * cols : (j + 1) * cols]
        assert row[0].get_ylabel() == f"label {j}"  # no class names given
        expected = int(ep.classes[0, j])
        assert [_class_of(ax) for ax in row[:k]] == [expected] * k  # support of label j
        assert [_class_of(ax) for ax in row[k + 1 :]] == [expected] * shown_q  # its queries
        assert not row[k].axison  # the blank separator has no frame
        assert float(_shown(row[k]).max()) == 0.0
        assert all(ax.axison for ax in row[:k] + row[k + 1 :])


def test_episode_grid_shows_distinct_support_and_query_images():
    data = shade_classes(per_class=6)
    ep = sample_episodes(data, 2, 3, 3, generator=torch.Generator().manual_seed(1))
    fig = episode_grid(ep)
    cols = 3 + 1 + 3
    for j in range(2):
        row = fig.axes[j * cols : (j + 1) * cols]
        samples = [round(float(_shown(ax)[0, 0]) * 255) - 200 for ax in row[:3] + row[4:]]
        assert sorted(samples) == sorted(set(samples))  # six different images of the class


def test_episode_grid_class_names_and_task():
    data = shade_classes()
    ep = sample_episodes(data, 3, 2, 2, n_tasks=2, generator=torch.Generator().manual_seed(2))
    assert not torch.equal(ep.classes[0], ep.classes[1])
    fig = episode_grid(ep, task=1, class_names=data.class_names)
    cols = 2 + 1 + 2
    for j in range(3):
        c = int(ep.classes[1, j])
        assert fig.axes[j * cols].get_ylabel() == f"{j}: {data.class_names[c][:22]}"
        assert fig.axes[j * cols].get_ylabel() == f"{j}: A CHARACTER WITH A VER"  # cut at 22
        assert _class_of(fig.axes[j * cols]) == c


def test_episode_grid_rejects_non_image_episodes():
    regression = Episode(torch.zeros(1, 5, 1), torch.zeros(1, 5, 1), torch.zeros(1, 3, 1),
                         torch.zeros(1, 3, 1))  # fmt: skip
    with pytest.raises(ValueError, match="episode_grid draws image episodes"):
        episode_grid(regression)
    no_channel = Episode(torch.zeros(1, 4, 8, 8), torch.tensor([[0, 0, 1, 1]]),
                         torch.zeros(1, 2, 8, 8), torch.tensor([[0, 1]]))  # fmt: skip
    with pytest.raises(ValueError, match="episode_grid draws image episodes"):
        episode_grid(no_channel)


# learning_curves ---------------------------------------------------------------------------------


def _history() -> History:
    h = History()
    for step, loss, acc in [(0, 2.0, 0.2), (10, 1.0, 0.5), (20, 0.5, 0.7), (30, 0.25, 0.9)]:
        h.append(step, loss=loss, accuracy=acc)
    return h


def test_learning_curves_one_point_per_step():
    h = _history()
    fig = learning_curves(h, title="training")
    ax = fig.axes[0]
    (line,) = ax.get_lines()
    assert len(line.get_xdata()) == len(h.step)
    assert list(line.get_xdata()) == [0, 10, 20, 30]
    assert list(line.get_ydata()) == [2.0, 1.0, 0.5, 0.25]
    assert ax.get_xlabel() == "step" and ax.get_ylabel() == "loss"
    assert ax.get_title() == "training"
    assert ax.get_legend() is None  # one metric: the y label names it


def test_learning_curves_smoothed_and_several_metrics():
    h = _history()
    fig = learning_curves(h, metrics=("loss", "accuracy"), window=2)
    ax = fig.axes[0]
    loss, acc = ax.get_lines()
    assert list(loss.get_ydata()) == [2.0, 1.5, 0.75, 0.375]  # trailing means of 2
    np.testing.assert_allclose(acc.get_ydata(), [0.2, 0.35, 0.6, 0.8])
    assert ax.get_ylabel() == "loss, accuracy"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["loss", "accuracy"]


def test_learning_curves_draws_on_a_given_axes():
    fig, (left, right) = plt.subplots(1, 2)
    h = History()
    h.append(0, loss=1.0)
    h.append(1, val=0.5)  # loss missing at step 1: NaN, a gap
    out = learning_curves(h, ax=right)
    assert out is fig
    assert left.get_lines() == [] and len(right.get_lines()) == 1
    assert math.isnan(right.get_lines()[0].get_ydata()[1])
    with pytest.raises(KeyError, match="no metric 'acc'"):
        learning_curves(h, metrics=("acc",))


# scores_vs ---------------------------------------------------------------------------------------


def _scores(means: list[float]) -> list[Score]:
    return [Score(mean=m, ci95=0.02, n=600, percent=True) for m in means]


def test_scores_vs_one_line_per_curve_and_chance():
    x = [1, 5, 10]
    curves = {"maml": _scores([0.5, 0.6, 0.7]), "protonet": _scores([0.55, 0.7, 0.75])}
    fig = scores_vs(x, curves, xlabel="shots", chance=20.0, title="5-way")
    ax = fig.axes[0]
    lines = ax.get_lines()
    assert len(lines) == len(curves) + 1
    maml, proto, chance = lines
    assert list(maml.get_xdata()) == x
    np.testing.assert_allclose(maml.get_ydata(), [50.0, 60.0, 70.0])  # percentages
    np.testing.assert_allclose(proto.get_ydata(), [55.0, 70.0, 75.0])
    assert list(chance.get_ydata()) == [20.0, 20.0] and chance.get_linestyle() == "--"
    assert len(ax.collections) == 2  # one confidence band per curve
    band = ax.collections[0].get_paths()[0].vertices
    assert band[:, 1].min() == pytest.approx(48.0) and band[:, 1].max() == pytest.approx(72.0)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["maml", "protonet", "chance"]
    assert ax.get_xlabel() == "shots" and ax.get_ylabel() == "accuracy (%)"
    assert list(ax.get_xticks()) == x and ax.get_title() == "5-way"


def test_scores_vs_without_chance_on_a_given_axes():
    fig, ax = plt.subplots()
    out = scores_vs([1, 2], {"a": _scores([0.1, 0.2])}, xlabel="steps", ylabel="acc", ax=ax)
    assert out is fig and len(ax.get_lines()) == 1 and ax.get_ylabel() == "acc"


def test_scores_vs_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="curve 'b' has 2 scores for 3 x values"):
        scores_vs([1, 2, 3], {"a": _scores([0.1] * 3), "b": _scores([0.1] * 2)}, xlabel="shots")


def test_book_style_sets_the_shared_look_and_is_idempotent():
    import matplotlib.pyplot as plt

    from metalib.plots import BOOK_STYLE, book_style

    with plt.rc_context():
        plt.rcParams["axes.spines.top"] = True
        book_style()
        book_style()
        assert plt.rcParams["axes.spines.top"] is False
        assert all(plt.rcParams[k] == v for k, v in BOOK_STYLE.items())


def _row(method, family, shots, accuracy, adapt_ms):
    return Row(method, family, 5, shots, accuracy, 0.01, 10, 1.0, adapt_ms, None, False)


def test_accuracy_vs_cost_one_panel_per_shot_setting_one_point_per_method():
    rows = [
        _row("A", "non-parametric", 1, 0.9, 3.0),
        _row("B", "black-box", 1, 0.5, 0.5),
        _row("A", "non-parametric", 5, 0.95, 4.0),
        _row("B", "black-box", 5, 0.6, 0.0),  # no cost measured: left out
    ]
    fig = accuracy_vs_cost(rows)
    one, five = fig.axes
    assert (one.get_title(), five.get_title()) == ("5-way 1-shot", "5-way 5-shot")
    assert one.get_xscale() == "log" and one.get_ylabel().startswith("accuracy (%)")
    assert [t.get_text() for t in one.texts] == ["A", "B"] and [
        t.get_text() for t in five.texts
    ] == ["A"]
    assert tuple(one.texts[0].xy) == (3.0, 90.0) and tuple(one.texts[1].xy) == (0.5, 50.0)
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == ["non-parametric", "black-box", "chance"]
    assert fig.get_figwidth() <= COLUMN  # panels stacked in the column, not side by side
    assert one.get_position().y0 > five.get_position().y1
    plt.close(fig)


def test_accuracy_vs_cost_names_a_crowd_without_overlaps():
    # twelve learners within a few points and milliseconds of each other, one with a long name
    rows = [
        _row(f"learner {i}" + " with a long name" * (i == 3), fam, 1, 0.80 + 0.01 * (i % 5), ms)
        for i, (fam, ms) in enumerate(
            [("black-box", 10 + i) for i in range(6)] + [("fine-tuning", 12 + i) for i in range(6)]
        )
    ]
    fig = accuracy_vs_cost(rows, title="a crowded benchmark")
    assert text_overlaps(fig) == []
    assert len(fig.axes[0].texts) == len(rows)
    plt.close(fig)


def test_text_overlaps_finds_a_name_on_a_title_and_on_a_marker():
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.plot([1.0], [1.0], marker="o", linestyle="none")
    ax.set_title("a title")
    assert text_overlaps(fig) == []
    ax.annotate("on its point", (1.0, 1.0), ha="center", va="center")
    found = text_overlaps(fig)
    assert len(found) == 1 and "'on its point' covers a marker at (1, 1)" in found[0]
    ax.annotate("one name", (0.2, 0.2), xycoords="axes fraction")
    ax.annotate("another name", (0.22, 0.21), xycoords="axes fraction")
    assert "'one name' overlaps 'another name'" in text_overlaps(fig)
    plt.close(fig)


def test_image_grid_fits_the_column():
    fig = image_grid(torch.rand(2, 12, 8, 8), row_labels=["a", "b"])
    assert fig.get_figwidth() <= COLUMN
    plt.close(fig)


def test_accuracy_vs_cost_rejects_bad_input():
    with pytest.raises(ValueError, match="no rows"):
        accuracy_vs_cost([])
    with pytest.raises(ValueError, match="no style"):
        accuracy_vs_cost([_row("A", "magic", 1, 0.9, 1.0)])
    fig, ax = plt.subplots()
    with pytest.raises(ValueError, match="2 shot settings need 2 axes"):
        accuracy_vs_cost(
            [_row("A", "fine-tuning", 1, 0.9, 1.0), _row("A", "fine-tuning", 5, 0.9, 1.0)],
            axes=[ax],
        )
    plt.close(fig)


def test_spread_labels_by_hand():
    assert spread_labels([10, 11, 30], gap=4) == [8.5, 12.5, 30.0]
    assert spread_labels([30, 10, 11], gap=4) == [30.0, 8.5, 12.5]  # any order of points
    assert spread_labels([5.0], gap=1) == [5.0] and spread_labels([], gap=1) == []
    with pytest.raises(ValueError, match="gap must be positive"):
        spread_labels([1, 2], gap=0)


@given(
    st.lists(st.floats(min_value=0, max_value=100, allow_nan=False), max_size=12),
    st.floats(min_value=0.5, max_value=10),
)
def test_spread_labels_keeps_order_and_gap_and_leaves_lone_labels(ys, gap):
    out = spread_labels(ys, gap)
    order = sorted(range(len(ys)), key=lambda i: ys[i])
    placed = [out[i] for i in order]
    assert all(b - a >= gap - 1e-9 for a, b in zip(placed, placed[1:], strict=False))
    for i, y in enumerate(ys):  # a label with no neighbour within the gap stays at its point
        if all(abs(y - z) >= 2 * gap * len(ys) for j, z in enumerate(ys) if j != i):
            assert out[i] == y


def test_band_draws_the_mean_and_its_band_in_one_colour():
    fig, ax = plt.subplots()
    line = band(ax, [0, 1, 2], torch.tensor([1.0, 2.0, 4.0]), [0.5, 3.0, 1.0], label="m")
    assert line.get_label() == "m" and list(line.get_ydata()) == [1.0, 2.0, 4.0]
    (poly,) = ax.collections
    ys = poly.get_paths()[0].vertices[:, 1]
    assert ys.min() == pytest.approx(-1.0) and ys.max() == pytest.approx(5.0)
    assert matplotlib.colors.same_color(poly.get_facecolor()[0][:3], line.get_color())
    fig2, ax2 = plt.subplots()
    band(ax2, [0, 1, 2], [1.0, 2.0, 4.0], [0.5, 3.0, 1.0], positive=True)
    low = ax2.collections[0].get_paths()[0].vertices[:, 1].min()
    assert low == pytest.approx(0.2)  # 2.0 - 3.0 < 0: the edge stops at a tenth of the mean
    with pytest.raises(ValueError, match="one length"):
        band(ax, [0, 1], [1.0, 2.0, 3.0], [0.1, 0.1, 0.1])
