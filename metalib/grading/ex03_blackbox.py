"""Exercise 03_blackbox: label-conditioned tokens, the LSTM learner, the attention mask, and
classifier weights predicted from activations.

Every case is rebuilt from a seed on both sides (see the 03_blackbox section of
:mod:`metalib.grading.probes`): features whose rows have different norms, support labels shuffled
per task, a :class:`~metalib.blackbox.SequenceLearner` (``kind="lstm"``) whose ``lstm`` and
``head`` the student's forward pass receives, and a φ (linear near the identity, or a small ReLU
network) for the weight predictor. The judges compare with :mod:`metalib.blackbox`
(``label_sequence``, ``query_tokens``, ``SequenceLearner.forward``, ``attention_mask``) and
:class:`metalib.weight_predictor.WeightPredictor` to 1e-9 in float64 and 1e-5 in float32, the
gradients with respect to the learner's (or φ's) weights as well. A wrong answer is matched
against the usual mistakes (the label as a number, a one-hot as wide as the task's classes,
queries read one after another, the support's state dropped, an inverted or causal mask,
activations averaged before normalising, φ applied to the queries) so the message can say which.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from metalib import blackbox, protonet
from metalib.grading import feedback
from metalib.grading.ex00_tasks import judge_raises, raises_case
from metalib.grading.ex04_protonet import close, compare, show
from metalib.grading.probes import (
    blackbox_features,
    blackbox_learner,
    blackbox_phi,
    output_grads,
    proto_support,
)
from metalib.grading.spec import Case, Exercise, Question
from metalib.weight_predictor import WeightPredictor


def _features(kw: dict[str, Any], offset: int = 0):
    return blackbox_features(
        kw["tasks"],
        kw["n_way"],
        kw["k_shot"],
        kw["queries"],
        kw["dim"],
        kw["seed"] + offset,
        kw["dtype"],
    )


def _judge_grads(got: Any, want: dict[str, torch.Tensor], what: str) -> str | None:
    """Compare the gradients the probe took through the student's output with the reference's."""
    if got is None:
        return (
            f"the values are right, but they carry no graph back to {what} (computed under "
            "torch.no_grad(), or detached); meta-training differentiates through them"
        )
    for name, g in want.items():
        if not close(got[name], g):
            return (
                f"the values are right, but their gradient with respect to {what}'s {name} is "
                f"not: expected {show(g)}, got {show(got[name])}; use differentiable operations "
                "only"
            )
    return None


# ---------------------------------------------------------------------------------- q1

_TOKENS = (
    "A support token is [features, one_hot(label, n_slots)]; a query token is [features, "
    "n_slots zeros]"
)


def judge_make_tokens(case: Case, out: Any) -> str | None:
    """``make_tokens(support_features, support_y, query_features, n_slots) -> (support, query)``."""
    if case.probe == "raises":
        return judge_raises(case, out)
    kw = case.kwargs
    if out["inputs_changed"]:
        return "the features or labels changed in place; leave the inputs as they are"
    got = out["out"]
    if not isinstance(got, (tuple, list)) or len(got) != 2:
        return f"expected a pair (support_tokens, query_tokens), got a {type(got).__name__}"
    sf, sy, qf = _features(kw)
    (t, s, d), p, n, slots = sf.shape, kw["queries"], kw["n_way"], kw["n_slots"]
    code = F.one_hot(sy, slots).to(sf.dtype)
    width = (
        f"the one-hot code has width {n}, the number of classes of this task; make it n_slots = "
        f"{slots} wide, the same for every task (the learner's input size is fixed)"
    )
    hints = {  # later entries win where sizes coincide
        (t, s, slots): "the features are missing; a token is the features, then the label code",
        (t, s, d): "the label is missing; append its one-hot code to the features",
        (t, s, d + n): width,
        (t, s, d + 1): "the label was appended as one number; append its one-hot code instead",
    }
    guesses = [
        (torch.cat([code, sf], -1), "the code comes first; put the features first, then it"),
    ]
    want = blackbox.label_sequence(sf, sy, slots)
    problem = compare(got[0], want, "the support tokens", hints, guesses, _TOKENS + ".")
    if problem:
        return problem
    zeros = qf.new_zeros(t, p, slots)
    hints = {
        (t, p, d): "a query token needs n_slots zeros where a support token has its label code",
        (t, p, d + n): width,
    }
    guesses = [
        (torch.cat([zeros, qf], -1), "the zeros come first; put the features first, then them"),
        (torch.cat([qf, zeros + 1], -1), "the label slots hold ones; a query's label is unknown"),
        (torch.cat([qf, zeros + 1 / slots], -1), "the label slots should be zeros, not 1/n_slots"),
    ]
    want = blackbox.query_tokens(qf, slots)
    return compare(got[1], want, "the query tokens", hints, guesses, _TOKENS + ".")


# ---------------------------------------------------------------------------------- q2

_LSTM = (
    "The LSTM reads the support tokens; then each query is one more step from the final (h, c) "
    "of its task's support, every query from that same state, and the head maps the step's "
    "output to logits"
)


def _lstm_variant(kw: dict[str, Any], variant: str) -> torch.Tensor:
    net = blackbox_learner(
        "lstm", *(kw[k] for k in ("dim", "n_slots", "hidden", "layers")), kw["seed"], kw["dtype"]
    )
    sf, sy, qf = _features(kw, offset=10)
    support, query = (
        blackbox.label_sequence(sf, sy, kw["n_slots"]),
        blackbox.query_tokens(qf, kw["n_slots"]),
    )
    t, p = query.shape[:2]
    with torch.no_grad():
        _, (h, c) = net.lstm(support)
        if variant == "sequence":
            out, _ = net.lstm(query, (h, c))
        elif variant == "state only":
            out = h[-1].unsqueeze(1).expand(t, p, -1)
        else:
            if variant == "no support":
                h, c = torch.zeros_like(h), torch.zeros_like(c)
            elif variant == "no cell":
                c = torch.zeros_like(c)
            state = (h.repeat_interleave(p, 1), c.repeat_interleave(p, 1))
            out, _ = net.lstm(query.reshape(t * p, 1, -1), state)
            out = out.reshape(t, p, -1)
        return net.head(out)


_LSTM_GUESSES = {
    "sequence": (
        "the queries were read as one sequence after the support, so each query saw the ones "
        "before it; start every query from the support's final state (repeat the state for each "
        "query and give each query as a sequence of length 1)"
    ),
    "no support": "the queries were read from a zero state, so the support was ignored",
    "no cell": "the support's cell state c was dropped; pass the final (h, c), both",
    "state only": (
        "every query got the head of the support's final h, so its own features were never read; "
        "take one LSTM step on each query token"
    ),
}


def judge_lstm_forward(case: Case, out: Any) -> str | None:
    """``lstm_forward(lstm, head, support_tokens, query_tokens) -> (T, P, n_slots)``."""
    kw = case.kwargs
    if out["model_changed"]:
        return "the LSTM's or the head's weights changed; a forward pass leaves them as they are"
    net = blackbox_learner(
        "lstm", *(kw[k] for k in ("dim", "n_slots", "hidden", "layers")), kw["seed"], kw["dtype"]
    )
    sf, sy, qf = _features(kw, offset=10)
    want = net(sf, sy, qf)
    t, p, slots = qf.shape[0], kw["queries"], kw["n_slots"]
    hints = {
        (t * p, slots): f"give the logits the shape (T, P, n_slots) = {(t, p, slots)}",
        (t, p, kw["hidden"]): "the head is missing: apply it to the LSTM's output",
    }

    def guesses() -> list[tuple[torch.Tensor, str]]:
        return [(_lstm_variant(kw, v), why) for v, why in _LSTM_GUESSES.items()]

    problem = compare(out["logits"], want.detach(), "the logits", hints, guesses, _LSTM + ".")
    if problem:
        return problem
    return _judge_grads(out["grads"], output_grads(want, net, kw["seed"] + 20), "the LSTM")


# ---------------------------------------------------------------------------------- q3


def _rows(mask: torch.Tensor) -> str:
    return " ".join("".join("1" if v else "0" for v in row) for row in mask.tolist())


def judge_attention_mask(case: Case, out: Any) -> str | None:
    """``attention_mask(n_support, n_query) -> (S + P, S + P)`` bool, True = blocked."""
    s, p = case.kwargs["n_support"], case.kwargs["n_query"]
    want = blackbox.attention_mask(s, p)
    if not isinstance(out, torch.Tensor):
        return f"expected a tensor, got a {type(out).__name__}"
    if out.shape != want.shape:
        hint = " (one row and one column per token of [support; queries])"
        return f"got shape {tuple(out.shape)}, expected {tuple(want.shape)}{hint}"
    if out.dtype != torch.bool:
        return (
            f"got dtype {out.dtype}; return a bool tensor, True where attention is blocked "
            "(PyTorch's convention for a boolean attn_mask)"
        )
    if torch.equal(out, want):
        return None
    allowed = ~want
    see_queries, support_sees_all, causal, no_self = (
        allowed.clone(),
        allowed.clone(),
        torch.ones_like(want).triu(1),
        allowed.clone(),
    )
    see_queries[s:, s:] = True
    support_sees_all[:s] = True
    no_self[range(s, s + p), range(s, s + p)] = False
    guesses = [
        (allowed, "True and False are swapped: in PyTorch's mask True means *blocked*"),
        (~see_queries, "the queries can attend to each other; each query sees itself only"),
        (~support_sees_all, "the support tokens can attend to the queries; block that"),
        (causal, "this is a causal mask: a query would see the queries before it"),
        (~no_self, "a query cannot attend to itself; let it (only the other queries are hidden)"),
    ]
    row = int((out != want).any(dim=1).nonzero()[0])
    which = f"support token {row}" if row < s else f"query {row - s}"
    wrong = (
        f"row {row} ({which}) should be {_rows(want[row : row + 1])}, got "
        f"{_rows(out[row : row + 1])}"
    )
    for candidate, why in guesses:
        if torch.equal(out, candidate):
            return f"{wrong}: {why}"
    return (
        f"{wrong}; every token may attend to every support token, a query also to itself, and "
        f"nothing else (expected {_rows(want)})"
    )


# ---------------------------------------------------------------------------------- q4

_QIAO = (
    "ā_n is the mean of the unit-length activations of class n's support, w_n = φ(ā_n) / "
    "‖φ(ā_n)‖, and logit[t, p, n] = scale · cos(q_p, w_n)"
)


def judge_predicted_logits(case: Case, out: Any) -> str | None:
    """``predicted_weight_logits(phi, support_features, support_y, query_features, n_way,
    scale) -> (T, P, N)``."""
    kw = case.kwargs
    if out["model_changed"]:
        return "φ's weights changed; predicting the weights leaves φ as it is"
    phi = blackbox_phi(kw["phi"], kw["dim"], kw["seed"], kw["dtype"])
    sf, sy, qf = _features(kw, offset=10)
    n, scale = kw["n_way"], kw["scale"]
    predictor = WeightPredictor(nn.Identity(), kw["dim"], scale, learn_scale=False)
    predictor.phi = phi
    want = protonet.logits(qf, predictor.predict_weights(sf, sy, n), "cosine", scale)
    with torch.no_grad():
        a, qn = F.normalize(sf, dim=-1), F.normalize(qf, dim=-1)
        mean = protonet.prototypes(a, sy, n)
        w = F.normalize(phi(mean), dim=-1)

        def cos(q: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
            return scale * q @ weights.transpose(1, 2)

        guesses = [
            (
                cos(qn, F.normalize(phi(protonet.prototypes(sf, sy, n)), dim=-1)),
                "the activations were averaged before being normalised; normalise each a(x) to "
                "unit length first, then average",
            ),
            (cos(qn, phi(mean)), "the predicted weights were not normalised to unit length"),
            (cos(qf, w), "the query activations were not normalised to unit length"),
            (
                cos(F.normalize(phi(qn), dim=-1), w),
                "φ was applied to the queries too; it predicts the weights from the support only",
            ),
            (
                cos(qn, F.normalize(protonet.prototypes(phi(a), sy, n), dim=-1)),
                "φ was applied to each activation before the mean; apply it to the class mean ā_n",
            ),
            (cos(qn, F.normalize(mean, dim=-1)), "φ was not applied: these are cosine prototypes"),
            (cos(qn, w) / scale, f"the scale ({scale:g}) is missing"),
        ]
    t, p = qf.shape[:2]
    hints = {(t, n, p): "the last two axes are swapped; [t, p, n] is query p against class n"}
    problem = compare(out["logits"], want.detach(), "the logits", hints, guesses, _QIAO + ".")
    if problem:
        return problem
    return _judge_grads(out["grads"], output_grads(want, phi, kw["seed"] + 20), "φ")


# ---------------------------------------------------------------------------------- cases


def _label(tasks: int, n_way: int, k_shot: int, queries: int, dim: int, dtype: str) -> str:
    return f"{tasks} task(s), {n_way}-way {k_shot}-shot, {queries} queries, {dim} features, {dtype}"


def tokens_case(
    tasks: int,
    n_way: int,
    k_shot: int,
    queries: int,
    dim: int,
    n_slots: int,
    seed: int,
    dtype: str = "float64",
) -> Case:
    kwargs = {
        "tasks": tasks,
        "n_way": n_way,
        "k_shot": k_shot,
        "queries": queries,
        "dim": dim,
        "n_slots": n_slots,
        "seed": seed,
        "dtype": dtype,
    }
    label = f"{_label(tasks, n_way, k_shot, queries, dim, dtype)}, n_slots={n_slots}, seed {seed}"
    return Case(label, kwargs, probe="blackbox_tokens")


def label_too_large_case(n_slots: int, dim: int, seed: int) -> Case:
    """Labels 0..n_slots (one too many classes for the code) must raise a ValueError."""
    f, y = proto_support(1, [1] * (n_slots + 1), dim, seed)
    q = torch.zeros(1, 2, dim, dtype=f.dtype)
    return raises_case(
        f"labels 0..{n_slots} with n_slots={n_slots}: label {n_slots} has no slot",
        [f, y, q, n_slots],
        [f, y, q, n_slots + 1],
    )


def lstm_case(
    tasks: int,
    n_way: int,
    k_shot: int,
    queries: int,
    dim: int,
    n_slots: int,
    hidden: int,
    layers: int,
    seed: int,
    dtype: str = "float64",
) -> Case:
    kwargs = {
        "tasks": tasks,
        "n_way": n_way,
        "k_shot": k_shot,
        "queries": queries,
        "dim": dim,
        "n_slots": n_slots,
        "hidden": hidden,
        "layers": layers,
        "seed": seed,
        "dtype": dtype,
    }
    label = (
        f"an LSTM of {layers} layer(s) x {hidden} units, n_slots={n_slots}; "
        f"{_label(tasks, n_way, k_shot, queries, dim, dtype)}, seed {seed}"
    )
    return Case(label, kwargs, probe="blackbox_lstm")


def mask_case(n_support: int, n_query: int) -> Case:
    return Case(
        f"{n_support} support token(s), {n_query} queries",
        {"n_support": n_support, "n_query": n_query},
    )


def weights_case(
    tasks: int,
    n_way: int,
    k_shot: int,
    queries: int,
    dim: int,
    phi: str,
    scale: float,
    seed: int,
    dtype: str = "float64",
) -> Case:
    kwargs = {
        "tasks": tasks,
        "n_way": n_way,
        "k_shot": k_shot,
        "queries": queries,
        "dim": dim,
        "phi": phi,
        "scale": scale,
        "seed": seed,
        "dtype": dtype,
    }
    what = "φ linear" if phi == "linear" else "φ a ReLU network"
    label = f"{what}, scale {scale:g}; {_label(tasks, n_way, k_shot, queries, dim, dtype)}"
    return Case(f"{label}, seed {seed}", kwargs, probe="blackbox_weights")


EXERCISE = Exercise(
    "03_blackbox",
    (
        Question(
            "q1",
            "make_tokens",
            2,
            judge_make_tokens,
            visible=(
                tokens_case(1, 3, 1, 2, 4, n_slots=5, seed=0),
                tokens_case(2, 5, 2, 3, 3, n_slots=5, seed=1),
                tokens_case(3, 2, 3, 4, 6, n_slots=4, seed=2, dtype="float32"),
                label_too_large_case(n_slots=3, dim=2, seed=3),
            ),
            title="the label-conditioned input sequence",
        ),
        Question(
            "q2",
            "lstm_forward",
            3,
            judge_lstm_forward,
            visible=(
                lstm_case(1, 3, 1, 2, 4, n_slots=3, hidden=8, layers=1, seed=0),
                lstm_case(2, 5, 1, 3, 6, n_slots=5, hidden=8, layers=2, seed=1),
                lstm_case(3, 2, 2, 4, 3, n_slots=4, hidden=6, layers=1, seed=2, dtype="float32"),
            ),
            title="the LSTM learner's forward pass",
        ),
        Question(
            "q3",
            "attention_mask",
            2,
            judge_attention_mask,
            visible=(mask_case(3, 2), mask_case(5, 5), mask_case(2, 1)),
            title="the attention mask that keeps queries independent",
        ),
        Question(
            "q4",
            "predicted_weight_logits",
            3,
            judge_predicted_logits,
            visible=(
                weights_case(1, 3, 2, 4, 5, "linear", 10.0, seed=0),
                weights_case(2, 5, 1, 3, 8, "linear", 1.0, seed=1),
                weights_case(2, 4, 3, 2, 6, "mlp", 5.0, seed=2, dtype="float32"),
            ),
            title="classifier weights predicted from activations",
        ),
    ),
)


def check(name: str, fn: Callable[..., Any]) -> feedback.Verdict:
    """Run the visible cases of question ``name`` on ``fn`` and print the verdict."""
    return feedback.check(EXERCISE, name, fn)
