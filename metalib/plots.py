"""Figures used across chapters: episodes, image grids, learning curves, scores with error bars.

Every function draws on a matplotlib ``Axes`` it is given (or a new figure) and returns the
figure, labelled, so a chapter can adjust it before showing it. :func:`book_style`, called once
in every chapter's setup, gives all the book's figures the same look.

Tensors may live on any device: each function copies what it draws to the CPU (matplotlib reads
NumPy arrays, which a GPU tensor cannot become), so a chapter passes its results as they are.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.text import Text
from matplotlib.transforms import Bbox

from metalib.tasks import Episode
from metalib.train import History, Score

# The width of the book's figures in inches, at their 100 dpi: the book saves figures with a
# 0.1-inch margin, so 6.6 inches make a 680-px image, shown at its natural size in the 684-px
# column of a 1280-px window; 9-10 pt text then reads at 12-14 px. Wider figures are shrunk to
# fit the column: stack their panels instead.
COLUMN = 6.6

# One look for every figure of the book: no box around the plot, light grid lines, legends
# without frames.
BOOK_STYLE = {
    "figure.dpi": 100,
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "legend.fontsize": 9,
    "legend.frameon": False,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "lines.linewidth": 1.6,
    "axes.grid": True,
    "grid.alpha": 0.3,
}


def _cpu(t: torch.Tensor) -> torch.Tensor:
    """``t`` detached and on the CPU, ready for ``.numpy()`` (a no-op for a CPU tensor)."""
    return t.detach().to("cpu")


def book_style() -> None:
    """Apply :data:`BOOK_STYLE` to matplotlib's defaults (idempotent; for a chapter's setup)."""
    plt.rcParams.update(BOOK_STYLE)


def image_grid(
    images: torch.Tensor,
    row_labels: Sequence[str] | None = None,
    title: str | None = None,
    scale: float = 0.9,
):
    """Draw a grid of single-channel images.

    Args:
        images: ``(R, C, 1, H, W)`` or ``(R, C, H, W)`` float in [0, 1], ink = 1, on any device.
        row_labels: R labels drawn left of the rows.
        title: figure title.
        scale: inches per image, at most: a grid wider than :data:`COLUMN` (with room for
            the row labels) gets smaller images.
    """
    images = _cpu(images)
    if images.dim() == 5:
        images = images[:, :, 0]
    if images.dim() != 4:
        raise ValueError(f"expected (rows, cols, [1,] H, W) images, got {tuple(images.shape)}")
    rows, cols = images.shape[:2]
    scale = min(scale, COLUMN / (cols + 1.5 * (row_labels is not None)))  # fit the column
    fig, axes = plt.subplots(rows, cols, figsize=(cols * scale, rows * scale), squeeze=False)
    for r in range(rows):
        for c in range(cols):
            ax = axes[r, c]
            ax.imshow(images[r, c].numpy(), cmap="gray_r", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        if row_labels is not None:
            axes[r, 0].set_ylabel(row_labels[r], rotation=0, ha="right", va="center", fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def episode_grid(
    episode: Episode, task: int = 0, class_names: Sequence[str] | None = None, max_queries: int = 5
):
    """Draw one task of an episode: a row per label, its support images, then its query images.

    Args:
        episode: an image episode (``support_x`` of shape ``(T, N*K, 1, H, W)``), on any device.
        task: which of the T tasks to draw.
        class_names: names of the original classes, indexed by ``episode.classes``.
        max_queries: at most this many query images per row.
    """
    if episode.support_x.dim() != 5:
        raise ValueError("episode_grid draws image episodes; this episode's inputs are not images")
    episode = episode.task(task).to("cpu")
    sx, sy = episode.support_x[0], episode.support_y[0]
    qx, qy = episode.query_x[0], episode.query_y[0]
    n_way = int(sy.max()) + 1
    k_shot = int((sy == 0).sum())
    q = min(int((qy == 0).sum()), max_queries)
    size = sx.shape[-1]
    blank = torch.zeros(1, size, size)
    rows = []
    for label in range(n_way):
        support = list(sx[sy == label])
        query = list(qx[qy == label][:q])
        rows.append(torch.stack(support + [blank] + query))
    grid = torch.stack(rows)  # (N, K + 1 + q, 1, H, W)
    labels = [f"label {j}" for j in range(n_way)]
    if class_names is not None and episode.classes is not None:
        labels = [f"{j}: {class_names[int(c)][:22]}" for j, c in enumerate(episode.classes[0])]
    fig = image_grid(grid, row_labels=labels)
    fig.suptitle(f"{n_way}-way {k_shot}-shot task: support (left) | query (right)", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.94))  # leave room for the title above the captions
    fig.axes[0].set_title("support", fontsize=8, loc="left")
    fig.axes[k_shot + 1].set_title("query", fontsize=8, loc="left")
    for r in range(n_way):  # the blank separator column carries no frame
        fig.axes[r * (k_shot + 1 + q) + k_shot].axis("off")
    return fig


def learning_curves(
    history: History,
    metrics: Sequence[str] = ("loss",),
    window: int = 1,
    ax=None,
    title: str | None = None,
):
    """Plot metrics of a training ``History`` against the step, optionally smoothed."""
    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 3.5))
    for name in metrics:
        values = history.smoothed(name, window) if window > 1 else history[name]
        ax.plot(history.step[: len(values)], values, label=name)
    ax.set_xlabel("step")
    ax.set_ylabel(", ".join(metrics))
    if len(metrics) > 1:
        ax.legend()
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.figure.tight_layout()
    return ax.figure


def band(ax, x, mean, half, label: str | None = None, positive: bool = False, **line_kw):
    """A mean curve with a shaded band of ``mean ± half`` around it, in the curve's colour.

    Args:
        ax: the matplotlib Axes to draw on.
        x, mean, half: 1-D sequences or tensors of one length (any device), e.g. the mean query
            loss after each inner step and its 95% CI half-width (:func:`metalib.train.mean_ci95`).
        label: the curve's legend entry.
        positive: the quantity is positive, drawn on a log scale: the band's lower edge stops
            at a tenth of the mean instead of reaching zero, which a log axis cannot show.
        line_kw: passed to ``ax.plot`` (``marker="o"``, ``color=...``).

    Returns:
        The curve's ``Line2D``.
    """
    x, mean, half = (_cpu(torch.as_tensor(v, dtype=torch.float64)).numpy() for v in (x, mean, half))
    if not (x.ndim == mean.ndim == half.ndim == 1 and len(x) == len(mean) == len(half)):
        raise ValueError(
            f"x, mean and half must be 1-D and of one length, got shapes {x.shape}, "
            f"{mean.shape} and {half.shape}"
        )
    (line,) = ax.plot(x, mean, label=label, **line_kw)
    low = np.maximum(mean - half, mean / 10) if positive else mean - half
    ax.fill_between(x, low, mean + half, alpha=0.2, color=line.get_color(), linewidth=0)
    return line


def scores_vs(
    x: Sequence[float],
    curves: Mapping[str, Sequence[Score]],
    xlabel: str,
    ylabel: str = "accuracy (%)",
    ax=None,
    title: str | None = None,
    chance=None,
):
    """Plot mean scores with 95% confidence bands, one curve per entry of ``curves``.

    Args:
        x: the x positions (e.g. shots).
        curves: name -> one ``Score`` per x.
        chance: draw a dashed line at this level (e.g. 100 / n_way), if given.
    """
    if ax is None:
        fig, ax = plt.subplots(figsize=(6.5, 4))
    for name, scores in curves.items():
        if len(scores) != len(x):
            raise ValueError(f"curve {name!r} has {len(scores)} scores for {len(x)} x values")
        mean = np.array([s.mean for s in scores]) * 100
        ci = np.array([s.ci95 for s in scores]) * 100
        band(ax, x, mean, ci, label=name, marker="o")
    if chance is not None:
        ax.axhline(chance, color="gray", linestyle="--", linewidth=1, label="chance")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_xticks(list(x))
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.figure.tight_layout()
    return ax.figure


def regression_fits(
    grid: torch.Tensor,
    truth: torch.Tensor,
    support: tuple[torch.Tensor, torch.Tensor],
    predictions: Mapping[str, torch.Tensor],
    ax=None,
    title: str | None = None,
):
    """One regression task: the true function, its support points, and models' predictions.

    Args:
        grid: ``(P, 1)`` inputs, sorted.
        truth: ``(P, 1)`` the task's true outputs on ``grid``.
        support: ``(x (K, 1), y (K, 1))``, the points the models adapted on.
        predictions: label -> ``(P, 1)`` a model's outputs on ``grid``.

    Each tensor may be on any device.
    """
    if ax is None:
        fig, ax = plt.subplots(figsize=(6.5, 4))

    def curve(t: torch.Tensor) -> np.ndarray:  # (P, 1) tensor -> (P,) array for matplotlib
        return _cpu(t).squeeze(-1).numpy()

    x = curve(grid)
    ax.plot(x, curve(truth), color="black", linewidth=2, label="true function")
    for label, y in predictions.items():
        if y.shape != grid.shape:
            raise ValueError(
                f"prediction {label!r} has shape {tuple(y.shape)}, grid "
                f"{tuple(grid.shape)}; predict on the grid"
            )
        ax.plot(x, curve(y), linestyle="--", label=label)
    sx, sy = (curve(t) for t in support)
    ax.scatter(sx, sy, color="black", marker="^", s=60, zorder=5, label=f"{len(sx)} support points")
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.figure.tight_layout()
    return ax.figure


# one colour and marker per family of learners (metalib.methods.FAMILIES), the same in every figure
FAMILY_STYLE = {
    "non-parametric": ("tab:blue", "o"),
    "fine-tuning": ("tab:gray", "s"),
    "optimization-based": ("tab:orange", "^"),
    "black-box": ("tab:green", "D"),
}


def accuracy_vs_cost(
    rows: Sequence,
    cost: str = "adapt_ms",
    xlabel: str = "adaptation time per task (ms, log scale)",
    axes=None,
    title: str | None = None,
):
    """Accuracy with its 95% CI against a cost, one panel per shot setting, one point per method.

    Args:
        rows: :class:`metalib.compare.Row` objects (anything with ``method``, ``family``,
            ``n_way``, ``shots``, ``accuracy``, ``ci95`` and the ``cost`` attribute).
        cost: the row attribute on the x axis (log scale), e.g. ``"adapt_ms"`` or
            ``"train_seconds"``; rows whose cost is not positive are left out of the panel.
        axes: one matplotlib Axes per shot setting, in increasing shots (``None``: a new
            column-wide figure with the panels stacked, so that no text is shrunk).
        title: the figure's title, laid out with the panels.

    Returns:
        The figure; methods are named next to their points (right of them, or left where the
        right would cover another point), never on another name, point or the title
        (:func:`text_overlaps` finds none); families coloured as :data:`FAMILY_STYLE`.
    """
    rows = list(rows)
    if not rows:
        raise ValueError("no rows to plot; pass the rows of a metalib.compare.compare() result")
    unknown = sorted({r.family for r in rows} - set(FAMILY_STYLE))
    if unknown:
        raise ValueError(f"families {unknown} have no style; add them to FAMILY_STYLE")
    settings = sorted({(r.n_way, r.shots) for r in rows}, key=lambda s: (s[1], s[0]))
    if axes is None:
        fig, grid = plt.subplots(
            len(settings), 1, figsize=(COLUMN, 0.9 + 3.6 * len(settings)), squeeze=False
        )
        axes = list(grid[:, 0])
    if len(axes) != len(settings):
        raise ValueError(
            f"{len(settings)} shot settings need {len(settings)} axes, got {len(axes)}"
        )
    fig = axes[0].figure
    panels = []
    for ax, (n_way, shots) in zip(axes, settings, strict=True):
        points = [
            (getattr(r, cost), 100 * r.accuracy, r)
            for r in rows
            if (r.n_way, r.shots) == (n_way, shots) and getattr(r, cost) and getattr(r, cost) > 0
        ]
        for x, y, r in points:
            color, marker = FAMILY_STYLE[r.family]
            ax.errorbar(
                x, y, yerr=100 * r.ci95, color=color, marker=marker, markersize=7, capsize=3,
                linestyle="none",
            )  # fmt: skip
        ax.set_xscale("log")
        if points:
            xs = [x for x, _, _ in points]
            ax.set_xlim(min(xs) / 6, max(xs) * 6)  # room for the names on either side
        ax.axhline(100 / n_way, color="gray", linestyle="--", linewidth=1)
        ax.set_title(f"{n_way}-way {shots}-shot")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("accuracy (%), 95% CI")
        panels.append((ax, points))
    handles = [
        plt.Line2D([], [], color=c, marker=m, linestyle="none", label=family)
        for family, (c, m) in FAMILY_STYLE.items()
        if any(r.family == family for r in rows)
    ]
    handles.append(plt.Line2D([], [], color="gray", linestyle="--", label="chance"))
    legend = fig.legend(handles=handles, loc="lower center", ncol=(len(handles) + 1) // 2)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.55 / fig.get_figheight(), 1, 1))
    legend.set_bbox_to_anchor((0.5, 0.0), transform=fig.transFigure)
    for ax, points in panels:
        _name_points(ax, points)
    return fig


def _name_points(ax, points, fontsize: float = 8) -> None:
    """Name each point of ``points`` ((x, y, row) tuples) without covering anything.

    Greedy: each name goes beside its point, right or left, level with it or moved up or down
    by whole lines (then with a thin leader line), at the first place inside the axes that covers
    no marker, error bar or name placed before it.
    """
    if not points:
        return
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    low = min([y - 100 * r.ci95 for _, y, r in points] + [ax.get_ylim()[0]])
    high = max(y + 100 * r.ci95 for _, y, r in points)
    ax.set_ylim(low - 0.04 * (high - low), high + 0.12 * (high - low))
    blocked = [_marker_box(ax, x, y, 8) for x, y, _ in points]
    for x, y, r in points:  # the error bars, as thin boxes
        x0, y0 = ax.transData.transform((x, y - 100 * r.ci95))
        x1, y1 = ax.transData.transform((x, y + 100 * r.ci95))
        blocked.append(Bbox.from_extents(x0 - 2, y0, x1 + 2, y1))
    line = 1.2 * fontsize  # points
    offsets = [0] + [s * k * line for k in range(1, 9) for s in (1, -1)]
    for x, y, r in sorted(points, key=lambda p: -p[1]):
        for dy in offsets:
            found = None
            for dx in (7, -7):
                text = ax.annotate(
                    r.method, (x, y), xytext=(dx, dy), textcoords="offset points",
                    fontsize=fontsize, va="center", ha="left" if dx > 0 else "right",
                    arrowprops={"arrowstyle": "-", "color": "0.6", "lw": 0.6, "shrinkA": 0,
                                "shrinkB": 4} if dy else None,
                )  # fmt: skip
                text.update_positions(renderer)
                box = Text.get_window_extent(text, renderer)  # the name, not its arrow
                inside = ax.bbox.x0 <= box.x0 and box.x1 <= ax.bbox.x1
                inside = inside and ax.bbox.y0 <= box.y0 and box.y1 <= ax.bbox.y1
                if inside and not any(box.overlaps(b) for b in blocked):
                    found = box
                    break
                text.remove()
            if found is not None:
                blocked.append(found)
                break
        else:  # nowhere free: name it on its right, and let text_overlaps report it
            ax.annotate(
                r.method, (x, y), xytext=(7, 0), textcoords="offset points",
                fontsize=fontsize, va="center",
            )  # fmt: skip


def _marker_box(ax, x: float, y: float, size_pt: float):
    """The display-space box of a marker of ``size_pt`` points centred on data ``(x, y)``."""
    cx, cy = ax.transData.transform((x, y))
    half = size_pt * ax.figure.dpi / 72 / 2
    return Bbox.from_extents(cx - half, cy - half, cx + half, cy + half)


def text_overlaps(fig) -> list[str]:
    """Pairs of texts of ``fig`` that cover each other or a plotted marker, as sentences.

    Looks at every visible, non-empty text (titles, the figure's title, axis labels, legend
    entries, annotations) and every marker of a line drawn with markers; a text may not overlap
    another text or a marker (markers may overlap each other: that is data). Tick labels are left
    out. An empty list means every label can be read.
    """
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    texts = [t for t in fig.texts if t.get_visible() and t.get_text()]
    if fig._suptitle is not None:
        texts.append(fig._suptitle)
    marks = []
    for ax in fig.axes:
        texts += [ax.title, ax._left_title, ax._right_title, ax.xaxis.label, ax.yaxis.label]
        texts += list(ax.texts)
        for line in ax.lines:
            if line.get_marker() in (None, "", "None", " ", "_", "|") or not line.get_visible():
                continue
            for x, y in line.get_xydata():
                marks.append(
                    (f"a marker at ({x:g}, {y:g})", _marker_box(ax, x, y, line.get_markersize()))
                )
        legend = ax.get_legend()
        if legend is not None:
            texts += list(legend.get_texts())
    for legend in fig.legends:
        texts += list(legend.get_texts())
    boxes = []
    for t in dict.fromkeys(texts):  # unique, in order
        if t.get_visible() and t.get_text().strip():
            if hasattr(t, "update_positions"):  # an annotation: its text, not its arrow
                t.update_positions(renderer)
            box = Text.get_window_extent(t, renderer)
            boxes.append((repr(t.get_text()), box.shrunk(0.98, 0.9)))
    found = []
    for i, (a, box_a) in enumerate(boxes):
        found += [f"{a} overlaps {b}" for b, box_b in boxes[i + 1 :] if box_a.overlaps(box_b)]
        found += [f"{a} covers {m}" for m, box_m in marks if box_a.overlaps(box_m)]
    return found


def spread_labels(ys: Sequence[float], gap: float) -> list[float]:
    """Vertical positions for labels of points at heights ``ys``, at least ``gap`` apart.

    Labels keep the order of their points; a label moves only as far as it must, and a crowded
    group is centred on its points (so that a label moves down as often as up).

    Example:
        >>> spread_labels([10, 11, 30], gap=4)
        [8.5, 12.5, 30.0]
    """
    if gap <= 0:
        raise ValueError(f"gap must be positive, got {gap}")
    order = sorted(range(len(ys)), key=lambda i: ys[i])
    # groups of labels that touch: each placed as a block centred on the mean of its points
    groups: list[list[int]] = []
    for i in order:
        groups.append([i])
        while len(groups) > 1:
            low, high = groups[-2], groups[-1]
            if _block_top(low, ys, gap) + gap <= _block_bottom(high, ys, gap):
                break
            groups[-2:] = [low + high]
    out = [float(y) for y in ys]
    for group in groups:
        bottom = _block_bottom(group, ys, gap)
        for j, i in enumerate(group):
            out[i] = bottom + j * gap
    return out


def _block_bottom(group: list[int], ys: Sequence[float], gap: float) -> float:
    centre = sum(ys[i] for i in group) / len(group)
    return centre - gap * (len(group) - 1) / 2


def _block_top(group: list[int], ys: Sequence[float], gap: float) -> float:
    return _block_bottom(group, ys, gap) + gap * (len(group) - 1)
