"""ipywidgets explorers used across chapters.

In Jupyter the controls are live; in the static HTML book they are drawn with their initial state
(no kernel), so every chapter also shows the same figure as a plain image.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from IPython.display import display

from metalib.data.base import ImageClasses
from metalib.data.sinusoid import SinusoidFamily
from metalib.maml import adapt
from metalib.nets import forward_with
from metalib.plots import COLUMN, episode_grid, regression_fits
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


def adaptation_explorer(
    models: Mapping[str, torch.nn.Module],
    family: SinusoidFamily,
    k_shot: int = 5,
    max_steps: int = 10,
    lr: float = 0.01,
):
    """Adapt regression models to one sinusoid task, with sliders for the inner loop.

    Every model takes ``steps`` plain gradient steps of size ``lr`` (MSE) on the same K support
    points (:func:`metalib.maml.adapt`); the figure shows the task, the points and each adapted
    model's prediction with its MSE on the whole curve.

    Args:
        models: label -> a regression network ``(n, 1) -> (n, 1)`` (e.g. MAML's and a
            pre-trained baseline), on any device (each adapts on its own); never modified.
        family: where the tasks come from.
        k_shot, max_steps, lr: the sliders' initial values (steps up to ``max_steps``).
    """
    import ipywidgets as w

    if not models:
        raise ValueError("adaptation_explorer needs at least one model")
    empty = [label for label, model in models.items() if next(model.parameters(), None) is None]
    if empty:
        raise ValueError(f"models {empty} have no parameters to adapt; pass regression networks")
    steps = w.IntSlider(1, min=0, max=max_steps, description="inner steps")
    rate = w.FloatLogSlider(lr, base=10, min=-3, max=-0.5, description="inner lr α")
    shots = w.IntSlider(k_shot, min=1, max=20, description="shots (K)")
    seed = w.IntSlider(0, min=0, max=99, description="task seed")
    out = w.Output()
    grid = family.grid(200)

    def draw(*_):
        task = family.sample(1, shots.value, 1, generator=seed.value)
        sx, sy = task["support_x"][0], task["support_y"][0]
        truth = family.f(grid[None], task["amplitude"], task["phase"])[0]  # (P, 1), CPU
        predictions = {}
        for label, model in models.items():
            p = {k: v.detach() for k, v in model.named_parameters()}
            dev = next(iter(p.values())).device  # the task goes to the model, the curve back
            fast = adapt(
                model, p, sx.to(dev), sy.to(dev), F.mse_loss, steps.value, rate.value,
                first_order=True,
            )  # fmt: skip
            y = forward_with(model, fast, grid.to(dev)).detach().cpu()
            predictions[f"{label} (MSE {F.mse_loss(y, truth).item():.2f})"] = y
        with out:
            out.clear_output(wait=True)
            fig, ax = plt.subplots(figsize=(COLUMN, 4))
            title = f"{steps.value} step(s) of size {rate.value:.3g} on {shots.value} points"
            regression_fits(grid, truth, (sx, sy), predictions, ax=ax, title=title)
            display(fig)
            plt.close(fig)

    for control in (steps, rate, shots, seed):
        control.observe(draw, names="value")
    draw()
    return w.VBox([w.HBox([steps, rate]), w.HBox([shots, seed]), out])
