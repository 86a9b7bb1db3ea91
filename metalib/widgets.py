"""ipywidgets explorers used across chapters.

In Jupyter the controls are live; in the static HTML book they are drawn with their initial state
(no kernel), so every chapter also shows the same figure as a plain image.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import matplotlib.pyplot as plt
import torch
from IPython.display import display

from metalib.data.base import ImageClasses
from metalib.plots import episode_grid
from metalib.tasks import sample_episodes


def episode_explorer(
    datasets: Mapping[str, ImageClasses | Callable[[], ImageClasses]],
    max_ways: int = 10,
    max_shots: int = 5,
    queries: int = 2,
):
    """An interactive N-way K-shot episode sampler: choose dataset, ways, shots and seed.

    Args:
        datasets: name -> split (or a zero-argument function returning one, loaded on first use).
        max_ways, max_shots: the sliders' upper ends.
        queries: query images drawn per class.

    Returns:
        An ``ipywidgets.VBox`` holding the controls and the figure.
    """
    import ipywidgets as w

    if not datasets:
        raise ValueError("episode_explorer needs at least one dataset")
    loaded: dict[str, ImageClasses] = {}

    def get(name: str) -> ImageClasses:
        if name not in loaded:
            value = datasets[name]
            loaded[name] = value() if callable(value) else value
        return loaded[name]

    dataset = w.Dropdown(options=list(datasets), description="dataset")
    ways = w.IntSlider(5, min=2, max=max_ways, description="ways (N)")
    shots = w.IntSlider(1, min=1, max=max_shots, description="shots (K)")
    seed = w.IntSlider(0, min=0, max=99, description="seed")
    out = w.Output()

    def draw(*_):
        data = get(dataset.value)
        n = min(ways.value, data.n_classes)
        k = min(shots.value, data.per_class - queries)
        episode = sample_episodes(
            data, n, k, queries, generator=torch.Generator().manual_seed(seed.value)
        )
        with out:
            out.clear_output(wait=True)
            fig = episode_grid(episode, class_names=data.class_names)
            display(fig)
            plt.close(fig)  # one figure per redraw, not one more per slider move

    for control in (dataset, ways, shots, seed):
        control.observe(draw, names="value")
    draw()
    return w.VBox([w.HBox([dataset, seed]), w.HBox([ways, shots]), out])
