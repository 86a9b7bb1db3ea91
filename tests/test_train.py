"""Tests of metalib.train: the loop's bookkeeping and NaN guard, confidence intervals computed by
hand, evaluation over fixed episodes with accuracies known in advance."""

from __future__ import annotations

import math
import time

import pytest
import torch

from metalib.tasks import Episode, FixedEpisodes
from metalib.train import (
    History,
    Score,
    Timer,
    accuracy,
    accuracy_fn,
    evaluate,
    fit,
    mean_ci95,
)


def test_history_append_get_last():
    h = History()
    h.append(0, loss=1.0, acc=torch.tensor(0.25))
    h.append(5, loss=0.5)
    h.append(9, loss=0.25, val=0.75)
    assert h.step == [0, 5, 9]
    assert h["loss"] == [1.0, 0.5, 0.25]
    assert h["acc"][0] == 0.25 and math.isnan(h["acc"][1]) and math.isnan(h["acc"][2])
    assert math.isnan(h["val"][0]) and h["val"][2] == 0.75  # aligned on step
    assert h.last("loss") == 0.25 and h.last("acc") == 0.25
    assert isinstance(h["acc"][0], float)
    with pytest.raises(KeyError, match="no metric 'los' was recorded; recorded: \\['acc', 'loss'"):
        h["los"]


def test_history_smoothed_is_a_trailing_mean():
    h = History()
    for i, v in enumerate([1.0, 2.0, 3.0, 4.0, 5.0]):
        h.append(i, loss=v)
    assert h.smoothed("loss", 1) == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert h.smoothed("loss", 2) == [1.0, 1.5, 2.5, 3.5, 4.5]
    assert h.smoothed("loss", 3) == [1.0, 1.5, 2.0, 3.0, 4.0]
    assert h.smoothed("loss", 10) == [1.0, 1.5, 2.0, 2.5, 3.0]
    h.append(5, other=1.0)  # loss missing here: NaN, skipped by the average
    assert h.smoothed("loss", 2)[-1] == 5.0
    assert math.isnan(h.smoothed("other", 2)[0])  # nothing in the window


def test_history_errors():
    h = History()
    h.append(0, loss=1.0)
    with pytest.raises(ValueError, match="window must be at least 1"):
        h.smoothed("loss", 0)
    with pytest.raises(ValueError, match="single number"):
        h.append(1, loss=torch.ones(3))
    with pytest.raises(ValueError, match="must be a number"):
        h.append(1, loss="low")
    with pytest.raises(ValueError, match="'loss' has no recorded values"):
        History(step=[0], metrics={"loss": [math.nan]}).last("loss")


def test_fit_calls_step_fn_each_step_and_records():
    calls = []

    def step(i):
        calls.append(i)
        return {"loss": torch.tensor(1.0 / (i + 1)), "step_sq": i * i}

    h = fit(step, 6, desc="test")
    assert calls == list(range(6))
    assert h.step == list(range(6))
    assert h["loss"] == pytest.approx([1.0 / (i + 1) for i in range(6)])
    assert h["step_sq"] == [0.0, 1.0, 4.0, 9.0, 16.0, 25.0]


def test_fit_log_every_records_every_nth_and_the_last():
    calls = []
    h = fit(lambda i: calls.append(i) or {"loss": float(i)}, 10, log_every=4)
    assert calls == list(range(10))
    assert h.step == [0, 4, 8, 9] and h["loss"] == [0.0, 4.0, 8.0, 9.0]


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_fit_nan_guard_names_metric_and_step(bad):
    def step(i):
        return {"loss": bad if i == 3 else 1.0, "acc": 0.5}

    message = f"train-x: metric 'loss' became {bad} at step 3 of 8; lower the learning rate"
    with pytest.raises(FloatingPointError, match=message):
        fit(step, 8, desc="train-x", log_every=5)  # step 3 is not logged, yet checked


def test_fit_nan_guard_sees_tensors():
    with pytest.raises(FloatingPointError, match="metric 'acc' became nan at step 0 of 2"):
        fit(lambda i: {"loss": 0.0, "acc": torch.tensor(float("nan"))}, 2)


def test_fit_errors():
    with pytest.raises(ValueError, match="n_steps must be at least 1"):
        fit(lambda i: {"loss": 0.0}, 0)
    with pytest.raises(ValueError, match="log_every must be at least 1"):
        fit(lambda i: {"loss": 0.0}, 3, log_every=0)
    with pytest.raises(ValueError, match="step_fn must return a dict"):
        fit(lambda i: 0.5, 3)
    with pytest.raises(ValueError, match="'loss' must be a single number"):
        fit(lambda i: {"loss": torch.zeros(2)}, 3)


def test_mean_ci95_by_hand():
    s = mean_ci95([0.0, 1.0, 0.0, 1.0])
    # sample std of 0,1,0,1 = sqrt(1/3); ci = 1.96 * 0.57735 / 2
    assert s.n == 4 and s.mean == 0.5
    assert s.ci95 == pytest.approx(1.96 * math.sqrt(1 / 3) / 2, rel=1e-12)
    assert mean_ci95(torch.full((10,), 0.3)).ci95 == pytest.approx(0.0, abs=1e-15)


def test_mean_ci95_matches_the_float64_formula():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(600, generator=g, dtype=torch.float64)
    n = len(x)
    mean = sum(x.tolist()) / n
    var = sum((v - mean) ** 2 for v in x.tolist()) / (n - 1)
    s = mean_ci95(x.float())
    assert s.mean == pytest.approx(mean, rel=1e-6)
    assert s.ci95 == pytest.approx(1.96 * math.sqrt(var / n), rel=1e-5)


def test_score_formatting():
    assert str(Score(0.4734, 0.0121, 600, percent=True)) == "47.3% ± 1.2%"
    assert Score(0.4734, 0.0121, 600).as_percent(2) == "47.34% ± 1.21%"
    assert str(Score(0.4734, 0.0121, 600)) == "0.4734 ± 0.012"
    assert str(mean_ci95([0.5, 0.5], percent=True)) == "50.0% ± 0.0%"


def test_mean_ci95_errors():
    with pytest.raises(ValueError, match="at least 2 values"):
        mean_ci95([0.5])
    with pytest.raises(ValueError, match="one-dimensional"):
        mean_ci95(torch.zeros(2, 2))
    with pytest.raises(ValueError, match="NaN or infinity"):
        mean_ci95([0.5, math.nan])


def test_accuracy_on_hand_made_logits():
    logits = torch.tensor(
        [
            [[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [0.0, 0.0, 1.0], [5.0, 0.0, 0.0]],
            [[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 2.0, 1.0], [0.0, 0.0, 1.0]],
        ]
    )  # (T=2, P=4, C=3); argmax: [0, 1, 2, 0] and [1, 0, 1, 2]
    labels = torch.tensor([[0, 1, 2, 1], [0, 0, 0, 0]])
    torch.testing.assert_close(accuracy(logits, labels), torch.tensor([0.75, 0.25]))
    assert accuracy(logits[0], labels[0]).shape == ()
    assert accuracy(logits.double(), labels).dtype == torch.float64
    with pytest.raises(ValueError, match="do not match"):
        accuracy(logits, labels[:, :3])
    with pytest.raises(ValueError, match="do not match"):
        accuracy(logits[0, 0], labels[0, 0])


def even_class_accuracy(ep: Episode) -> torch.Tensor:
    """Right exactly on the queries whose class (read from the image) is even."""
    true_class = (ep.query_x[:, :, 0, 0, 0] * 255).round().long()  # (T, N*Q)
    return (true_class % 2 == 0).double().mean(dim=1)


def test_evaluate_with_a_known_accuracy(tiny_classes):
    fixed = FixedEpisodes(tiny_classes, n_way=4, k_shot=1, q_queries=2, n_episodes=25, seed=3)
    # every class has the same number of queries, so the accuracy is the share of even classes
    expected = torch.stack([(fixed[i].classes[0] % 2 == 0).double().mean() for i in range(25)])
    ref = mean_ci95(expected)
    for batch_size in (1, 7, 25, 100):
        score = evaluate(even_class_accuracy, fixed, batch_size=batch_size)
        assert score.n == 25 and score.percent
        assert score.mean == pytest.approx(ref.mean, rel=1e-12)
        assert score.ci95 == pytest.approx(ref.ci95, rel=1e-12)
    perfect = evaluate(lambda ep: torch.ones(ep.n_tasks), fixed, batch_size=4)
    assert (perfect.mean, perfect.ci95) == (1.0, 0.0) and str(perfect) == "100.0% ± 0.0%"


def test_accuracy_fn_scores_a_learners_logits(tiny_classes):
    """``accuracy_fn(predict)``: the one way every learner is scored, from its query logits."""
    fixed = FixedEpisodes(tiny_classes, n_way=4, k_shot=1, q_queries=2, n_episodes=25, seed=3)
    seen = []

    def predict(ep: Episode) -> torch.Tensor:  # right on the even classes, wrong on the others
        seen.append(ep.query_x.device)
        true_class = (ep.query_x[:, :, 0, 0, 0] * 255).round().long()
        guess = torch.where(true_class % 2 == 0, ep.query_y, (ep.query_y + 1) % ep.n_way)
        return torch.nn.functional.one_hot(guess, ep.n_way).double()

    score = evaluate(accuracy_fn(predict, "cpu"), fixed, batch_size=7)
    reference = evaluate(even_class_accuracy, fixed)
    assert (score.mean, score.ci95) == (reference.mean, reference.ci95)
    assert seen and all(d == torch.device("cpu") for d in seen)


def test_evaluate_runs_with_gradients_enabled(tiny_classes):
    fixed = FixedEpisodes(tiny_classes, 3, 1, 1, n_episodes=2)

    def needs_grad(ep):
        assert torch.is_grad_enabled()
        return torch.ones(ep.n_tasks, requires_grad=True) * 0.5

    assert evaluate(needs_grad, fixed).mean == 0.5


def test_evaluate_errors(tiny_classes):
    fixed = FixedEpisodes(tiny_classes, 3, 1, 1, n_episodes=4)
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        evaluate(even_class_accuracy, fixed, batch_size=0)
    with pytest.raises(ValueError, match=r"shape \(2,\), got \(\)"):
        evaluate(lambda ep: torch.tensor(0.5), fixed, batch_size=2)
    with pytest.raises(ValueError, match="got float"):
        evaluate(lambda ep: 0.5, fixed)
    with pytest.raises(ValueError, match="fractions in \\[0, 1\\]"):
        evaluate(lambda ep: torch.full((ep.n_tasks,), 50.0), fixed)
    with pytest.raises(ValueError, match="at least 2 values"):
        evaluate(even_class_accuracy, FixedEpisodes(tiny_classes, 3, 1, 1, n_episodes=1))


def test_timer_measures_wall_time():
    t = Timer()
    assert t.seconds == 0.0
    with t:
        time.sleep(0.02)
        inside = t.seconds
    assert 0.015 < inside <= t.seconds < 1.0
    frozen = t.seconds
    time.sleep(0.005)
    assert t.seconds == frozen


def test_graph_bytes_counts_saved_tensors_once():
    from metalib.train import graph_bytes

    x = torch.randn(1000, requires_grad=True)
    assert graph_bytes((x * x).sum()) == 4000  # mul saves x twice: one storage
    y = (x * x).exp().sum()  # + exp saves its 1000-float result
    assert graph_bytes(y) == 8000
    y.backward()
    assert graph_bytes(y) == 0  # freed by the backward pass
    assert graph_bytes(torch.ones(3)) == 0
    with pytest.raises(ValueError, match="tensor"):
        graph_bytes([1.0])
