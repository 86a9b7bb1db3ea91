"""Exercise 03_blackbox: label-conditioned tokens, the LSTM learner, the attention mask, and
classifier weights predicted from activations.

Every case is a plain spec, rebuilt from its seed on both sides (:mod:`metalib.grading.builders`):
features whose rows have different norms, support labels shuffled per task, a
:class:`~metalib.blackbox.SequenceLearner` (``kind="lstm"``) whose ``lstm`` and ``head`` the
student's forward pass receives, and a φ (linear near the identity, or a small ReLU network) for
the weight predictor.

The references are metalib's own: :func:`metalib.blackbox.label_sequence` and
:func:`~metalib.blackbox.query_tokens` (the tokens), :meth:`SequenceLearner.forward
<metalib.blackbox.SequenceLearner.forward>` around the given LSTM and head (Santoro et al., 2016),
:func:`metalib.blackbox.attention_mask` (Mishra et al., 2018), and
:meth:`WeightPredictor.predict_weights <metalib.weight_predictor.WeightPredictor.predict_weights>`
around the given φ with :func:`metalib.protonet.logits` (Qiao et al., 2018). Outputs match to
1e-9 in float64 and 1e-5 in float32 (:func:`~metalib.grading.question.difference`; the mask
exactly, as bool); the logits' gradients with respect to the learner's (or φ's) weights as well,
along seeded directions (:func:`~metalib.grading.builders.vjp`), relative to their largest entry
(:func:`gradient`). A wrong answer is matched
against the usual mistakes (the label as a number, a one-hot as wide as the task's classes,
queries read one after another, the support's state dropped, an inverted or causal mask,
activations averaged before normalising, φ applied to the queries, the graph cut) so that the
message can say which one it is.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from metalib import blackbox, protonet
from metalib.grading import builders, feedback
from metalib.grading.question import Case, Exercise, Mistake, Question, case, given, plain, raises
from metalib.weight_predictor import WeightPredictor

Tensors = tuple[torch.Tensor, ...]


def task_features(
    tasks: int, n_way: int, k_shot: int, queries: int, dim: int, seed: int, dtype: str
) -> Tensors:
    """Support features ``(T, N*K, D)``, shuffled labels ``(T, N*K)``, queries ``(T, P, D)``."""
    sf, sy = builders.support(tasks, [k_shot] * n_way, dim, seed, dtype)
    return sf, sy, builders.features((tasks, queries, dim), seed + 2, dtype)


def spec_of(build: Callable[..., Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
    """The spec of a case whose arguments are ``build``'s, defaults included."""
    bound = inspect.signature(build).bind(*args, **kwargs)
    bound.apply_defaults()
    return dict(bound.arguments)


def _label(s: dict[str, Any]) -> str:
    return (
        f"{s['tasks']} task(s), {s['n_way']}-way {s['k_shot']}-shot, {s['queries']} queries, "
        f"{s['dim']} features, {s['dtype']}"
    )


NO_GRAPH = (
    "the values are right, but they carry no graph back to {} (computed under torch.no_grad(), "
    "or detached); meta-training differentiates through them"
)


def _detached(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """``fn`` with its output cut from the graph: right values, no gradient."""
    return lambda *args: fn(*args).detach()


def gradient(out: Any, params: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The gradient of ``out`` along seeded directions (:func:`~metalib.grading.builders.vjp`)
    with respect to ``params``: its scale (its largest entry in absolute value), and every entry
    divided by it (``None`` both when ``out`` carries no graph). Relative, so that float32
    rounding, about 1e-6 of the largest entry, stays within the absolute tolerance (1e-5) however
    large that entry is."""
    grad = builders.vjp(out, params)
    if grad is None:
        return {"gradient scale": None, "gradient / scale": None}
    top = torch.stack([g.abs().max() for g in grad.values()]).max()
    relative = {k: g / top.clamp_min(1e-30) for k, g in grad.items()}
    return {"gradient scale": top, "gradient / scale": relative}


def observe_logits(fn: Callable[..., Any], args: dict[str, Any], spec: dict) -> dict[str, Any]:
    """The logits and their :func:`gradient` with respect to the weights of every module among
    the arguments."""
    out = fn(*args.values())
    params = {
        f"{name}.{k}": p
        for name, module in args.items()
        if isinstance(module, nn.Module)
        for k, p in module.named_parameters()
    }
    return {"logits": plain(out), **gradient(out, params)}


# ---------------------------------------------------------------------------------- q1


def token_inputs(
    tasks: int,
    n_way: int,
    k_shot: int,
    queries: int,
    dim: int,
    n_slots: int,
    seed: int,
    dtype: str = "float64",
) -> dict[str, Any]:
    sf, sy, qf = task_features(tasks, n_way, k_shot, queries, dim, seed, dtype)
    return {"support_features": sf, "support_y": sy, "query_features": qf, "n_slots": n_slots}


def observe_tokens(fn: Callable[..., Any], args: dict[str, Any], spec: dict) -> dict[str, Any]:
    """The pair of tokens, named (so that a message says which of them is wrong)."""
    out = fn(*args.values())
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        length = f" of length {len(out)}" if isinstance(out, (tuple, list)) else ""
        raise TypeError(
            f"make_tokens returned a {type(out).__name__}{length}; return a pair "
            "(support_tokens, query_tokens)"
        )
    return {"support_tokens": plain(out[0]), "query_tokens": plain(out[1])}


def tokens_case(*args: Any, **kwargs: Any) -> Case:
    """A case of :func:`token_inputs`'s arguments."""
    s = spec_of(token_inputs, *args, **kwargs)
    return case(f"{_label(s)}, n_slots={s['n_slots']}, seed {s['seed']}", **s)


def label_too_large_case(n_slots: int, dim: int, seed: int) -> Case:
    """Labels 0..n_slots (one too many classes for the code) must raise a ValueError."""
    spec = dict(tasks=1, n_way=n_slots + 1, k_shot=1, queries=2, dim=dim, seed=seed)
    return raises(
        f"labels 0..{n_slots} with n_slots={n_slots}: label {n_slots} has no slot",
        {**spec, "n_slots": n_slots},
        {**spec, "n_slots": n_slots + 1},
    )


def reference_make_tokens(support_features, support_y, query_features, n_slots):
    support = blackbox.label_sequence(support_features, support_y, n_slots)
    return support, blackbox.query_tokens(query_features, n_slots)


def _tokens_hints(s: dict) -> dict[tuple[int, ...], str]:
    t, p, d, n, slots = (s[k] for k in ("tasks", "queries", "dim", "n_way", "n_slots"))
    m = n * s["k_shot"]
    width = (
        f"the one-hot code has width {n}, the number of classes of this task; make it n_slots = "
        f"{slots} wide, the same for every task (the learner's input size is fixed)"
    )
    hints = {  # later entries win where sizes coincide
        (t, m, slots): "the features are missing; a token is the features, then the label code",
        (t, m, d): "the label is missing; append its one-hot code to the features",
        (t, p, d): "a query token needs n_slots zeros where a support token has its label code",
        (t, p, d + n): width,
        (t, m, d + n): width,
        (t, m, d + 1): "the label was appended as one number; append its one-hot code instead",
    }
    if m == p:
        hints[t, m, d] = (
            "the label slots are missing: a support token needs its one-hot code, a query token "
            "needs n_slots zeros"
        )
    return hints


def _queries(variant: str) -> Callable[..., Tensors]:
    """The right support tokens, and query tokens with one known mistake."""

    def make_tokens(sf, sy, qf, n_slots):
        value = {"ones": 1.0, "uniform": 1 / n_slots}.get(variant, 0.0)
        slots = qf.new_full((*qf.shape[:2], n_slots), value)
        queries = torch.cat([slots, qf] if variant == "first" else [qf, slots], -1)
        return blackbox.label_sequence(sf, sy, n_slots), queries

    return make_tokens


Q1 = Question(
    "q1",
    "make_tokens",
    2,
    title="the label-conditioned input sequence",
    build=token_inputs,
    reference=reference_make_tokens,
    observe=observe_tokens,
    what="the output",
    mistakes=(
        Mistake(
            "the code comes first; put the features first, then it",
            lambda sf, sy, qf, n: (
                torch.cat([F.one_hot(sy, n).to(sf.dtype), sf], -1),
                blackbox.query_tokens(qf, n),
            ),
        ),
        Mistake("the zeros come first; put the features first, then them", _queries("first")),
        Mistake("the label slots hold ones; a query's label is unknown", _queries("ones")),
        Mistake("the label slots should be zeros, not 1/n_slots", _queries("uniform")),
    ),
    hints=_tokens_hints,
    rule=(
        "A support token is [features, one_hot(label, n_slots)]; a query token is [features, "
        "n_slots zeros]"
    ),
    visible=(
        tokens_case(1, 3, 1, 2, 4, n_slots=5, seed=0),
        tokens_case(2, 5, 2, 3, 3, n_slots=5, seed=1),
        tokens_case(3, 2, 3, 4, 6, n_slots=4, seed=2, dtype="float32"),
        label_too_large_case(n_slots=3, dim=2, seed=3),
    ),
)

# ---------------------------------------------------------------------------------- q2


def learner(
    dim: int, n_slots: int, hidden: int, layers: int, seed: int, dtype: str
) -> blackbox.SequenceLearner:
    """An LSTM :class:`~metalib.blackbox.SequenceLearner` whose weights depend only on ``seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = blackbox.SequenceLearner(dim, n_slots, "lstm", hidden=hidden, layers=layers)
    return net.to(builders.dtype(dtype))


def lstm_inputs(
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
) -> dict[str, Any]:
    """The learner's ``lstm`` and ``head``, and the tokens of seeded features (seed + 10)."""
    net = learner(dim, n_slots, hidden, layers, seed, dtype)
    sf, sy, qf = task_features(tasks, n_way, k_shot, queries, dim, seed + 10, dtype)
    support, query = reference_make_tokens(sf, sy, qf, n_slots)
    return {"lstm": net.lstm, "head": net.head, "support_tokens": support, "query_tokens": query}


def lstm_case(*args: Any, **kwargs: Any) -> Case:
    """A case of :func:`lstm_inputs`'s arguments."""
    s = spec_of(lstm_inputs, *args, **kwargs)
    net = f"an LSTM of {s['layers']} layer(s) x {s['hidden']} units, n_slots={s['n_slots']}"
    return case(f"{net}; {_label(s)}, seed {s['seed']}", **s)


def reference_lstm_forward(lstm, head, support_tokens, query_tokens):
    """:meth:`SequenceLearner.forward` with the given ``lstm`` and ``head``, on the features and
    labels the tokens hold."""
    n_slots = head.out_features
    d = support_tokens.shape[-1] - n_slots
    net = blackbox.SequenceLearner(d, n_slots, "lstm", lstm.hidden_size, lstm.num_layers)
    net.lstm, net.head = lstm, head
    labels = support_tokens[..., d:].argmax(-1)
    return net(support_tokens[..., :d], labels, query_tokens[..., :d])


def _lstm(variant: str) -> Callable[..., torch.Tensor]:
    """The forward pass with one known mistake."""

    def lstm_forward(lstm, head, support_tokens, query_tokens):
        t, p = query_tokens.shape[:2]
        _, (h, c) = lstm(support_tokens)
        if variant == "sequence":
            return head(lstm(query_tokens, (h, c))[0])
        if variant == "state only":
            return head(h[-1]).unsqueeze(1).expand(t, p, -1)
        if variant == "no support":
            h = torch.zeros_like(h)
        c = torch.zeros_like(c) if variant in ("no support", "no cell") else c
        state = (h.repeat_interleave(p, 1), c.repeat_interleave(p, 1))
        out, _ = lstm(query_tokens.reshape(t * p, 1, -1), state)
        return head(out.reshape(t, p, -1))

    return lstm_forward


Q2 = Question(
    "q2",
    "lstm_forward",
    3,
    title="the LSTM learner's forward pass",
    build=lstm_inputs,
    reference=reference_lstm_forward,
    observe=observe_logits,
    what="the output",
    mistakes=(
        Mistake(
            "the queries were read as one sequence after the support, so each query saw the ones "
            "before it; start every query from the support's final state (repeat the state for "
            "each query and give each query as a sequence of length 1)",
            _lstm("sequence"),
        ),
        Mistake("the queries started from zeros: the support was ignored", _lstm("no support")),
        Mistake("the support's cell state c was dropped; pass (h, c), both", _lstm("no cell")),
        Mistake(
            "every query got the head of the support's final h, so its own features were never "
            "read; take one LSTM step on each query token",
            _lstm("state only"),
        ),
        Mistake(NO_GRAPH.format("the LSTM"), _detached(reference_lstm_forward)),
    ),
    hints=lambda s: {
        (s["tasks"] * s["queries"], s["n_slots"]): "give the logits the shape (T, P, n_slots)",
        (s["tasks"], s["queries"], s["hidden"]): "the head is missing: apply it to the LSTM's "
        "output",
    },
    rule=(
        "The LSTM reads the support tokens; then each query is one more step from the final "
        "(h, c) of its task's support, every query from that same state, and the head maps the "
        "step's output to logits"
    ),
    visible=(
        lstm_case(1, 3, 1, 2, 4, n_slots=3, hidden=8, layers=1, seed=0),
        lstm_case(2, 5, 1, 3, 6, n_slots=5, hidden=8, layers=2, seed=1),
        lstm_case(3, 2, 2, 4, 3, n_slots=4, hidden=6, layers=1, seed=2, dtype="float32"),
    ),
)

# ---------------------------------------------------------------------------------- q3


def mask_case(n_support: int, n_query: int) -> Case:
    label = f"{n_support} support token(s), {n_query} queries"
    return case(label, n_support=n_support, n_query=n_query)


def reference_attention_mask(n_support, n_query):
    return blackbox.attention_mask(n_support, n_query)


def _mask(variant: str) -> Callable[[int, int], torch.Tensor]:
    """The mask with one known mistake."""

    def attention_mask(s, p):
        blocked = reference_attention_mask(s, p)
        if variant == "queries see queries":
            blocked[s:, s:] = False
        elif variant == "support sees queries":
            blocked[:s] = False
        elif variant == "no self":
            blocked[range(s, s + p), range(s, s + p)] = True
        elif variant == "causal":
            blocked = torch.ones_like(blocked).triu(1)
        elif variant == "float":
            return torch.zeros(s + p, s + p).masked_fill(blocked, -torch.inf)
        return ~blocked if variant == "~" else blocked

    return attention_mask


Q3 = Question(
    "q3",
    "attention_mask",
    2,
    title="the attention mask that keeps queries independent",
    build=given,
    reference=reference_attention_mask,
    what="the mask",
    mistakes=(
        Mistake("True and False are swapped: in PyTorch's mask True means *blocked*", _mask("~")),
        Mistake(
            "the queries can attend to each other; each query sees itself only",
            _mask("queries see queries"),
        ),
        Mistake(
            "the support tokens can attend to the queries; block that",
            _mask("support sees queries"),
        ),
        Mistake("this is a causal mask: a query would see the queries before it", _mask("causal")),
        Mistake(
            "a query cannot attend to itself; let it (only the other queries are hidden)",
            _mask("no self"),
        ),
        Mistake(
            "this is an additive float mask; return a bool tensor, True where attention is "
            "blocked (PyTorch's convention for a boolean attn_mask)",
            _mask("float"),
        ),
    ),
    rule=(
        "The mask is (S + P, S + P) bool, True where attention is blocked: every token may attend "
        "to every support token, a query also to itself, and nothing else"
    ),
    visible=(mask_case(3, 2), mask_case(5, 5), mask_case(2, 1)),
)

# ---------------------------------------------------------------------------------- q4


def phi_net(kind: str, dim: int, seed: int, dtype: str) -> nn.Module:
    """φ of the weight predictor: ``nn.Linear(D, D)`` near the identity, or a small ReLU MLP."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if kind == "linear":
            phi: nn.Module = nn.Linear(dim, dim)
            with torch.no_grad():
                phi.weight.add_(torch.eye(dim))
        else:
            phi = nn.Sequential(nn.Linear(dim, 2 * dim), nn.ReLU(), nn.Linear(2 * dim, dim))
    return phi.to(builders.dtype(dtype))


def weight_inputs(
    tasks: int,
    n_way: int,
    k_shot: int,
    queries: int,
    dim: int,
    phi: str,
    scale: float,
    seed: int,
    dtype: str = "float64",
) -> dict[str, Any]:
    """φ, seeded support and query activations (seed + 10), ``n_way`` and ``scale``."""
    sf, sy, qf = task_features(tasks, n_way, k_shot, queries, dim, seed + 10, dtype)
    return {
        "phi": phi_net(phi, dim, seed, dtype),
        "support_features": sf,
        "support_y": sy,
        "query_features": qf,
        "n_way": n_way,
        "scale": scale,
    }


def weights_case(*args: Any, **kwargs: Any) -> Case:
    """A case of :func:`weight_inputs`'s arguments."""
    s = spec_of(weight_inputs, *args, **kwargs)
    phi = "φ linear" if s["phi"] == "linear" else "φ a ReLU network"
    return case(f"{phi}, scale {s['scale']:g}; {_label(s)}, seed {s['seed']}", **s)


def reference_predicted_weight_logits(
    phi, support_features, support_y, query_features, n_way, scale
):
    """:class:`~metalib.weight_predictor.WeightPredictor`'s weights with the given φ, then its
    cosine logits."""
    predictor = WeightPredictor(nn.Identity(), support_features.shape[-1], scale, False)
    predictor.phi = phi
    weights = predictor.predict_weights(support_features, support_y, n_way)
    return protonet.logits(query_features, weights, "cosine", scale)


def _qiao(variant: str) -> Callable[..., torch.Tensor]:
    """The logits with one known mistake."""

    def predicted_weight_logits(phi, sf, sy, qf, n_way, scale):
        a = sf if variant == "raw mean" else F.normalize(sf, dim=-1)
        a = phi(a) if variant == "phi first" else a
        mean = protonet.prototypes(a, sy, n_way)
        w = mean if variant in ("no phi", "phi first") else phi(mean)
        w = w if variant == "raw weights" else F.normalize(w, dim=-1)
        q = qf if variant == "raw queries" else F.normalize(qf, dim=-1)
        q = F.normalize(phi(q), dim=-1) if variant == "phi on queries" else q
        logits = q @ w.transpose(1, 2)
        return logits if variant == "no scale" else scale * logits

    return predicted_weight_logits


Q4 = Question(
    "q4",
    "predicted_weight_logits",
    3,
    title="classifier weights predicted from activations",
    build=weight_inputs,
    reference=reference_predicted_weight_logits,
    observe=observe_logits,
    what="the output",
    mistakes=(
        Mistake(
            "the activations were averaged before being normalised; normalise each a(x) to unit "
            "length first, then average",
            _qiao("raw mean"),
        ),
        Mistake("the predicted weights were not normalised to unit length", _qiao("raw weights")),
        Mistake("the query activations were not normalised to unit length", _qiao("raw queries")),
        Mistake(
            "φ was applied to the queries too; it predicts the weights from the support only",
            _qiao("phi on queries"),
        ),
        Mistake(
            "φ was applied to each activation before the mean; apply it to the class mean ā_n",
            _qiao("phi first"),
        ),
        Mistake("φ was not applied: these are cosine prototypes", _qiao("no phi")),
        Mistake("the scale is missing", _qiao("no scale")),
        Mistake(NO_GRAPH.format("φ"), _detached(reference_predicted_weight_logits)),
    ),
    hints=lambda s: {
        (s["tasks"], s["n_way"], s["queries"]): "the last two axes are swapped; [t, p, n] is "
        "query p against class n"
    },
    rule=(
        "ā_n is the mean of the unit-length activations of class n's support, w_n = φ(ā_n) / "
        "‖φ(ā_n)‖, and logit[t, p, n] = scale · cos(q_p, w_n)"
    ),
    visible=(
        weights_case(1, 3, 2, 4, 5, "linear", 10.0, seed=0),
        weights_case(2, 5, 1, 3, 8, "linear", 1.0, seed=1),
        weights_case(2, 4, 3, 2, 6, "mlp", 5.0, seed=2, dtype="float32"),
    ),
)

EXERCISE = Exercise("03_blackbox", (Q1, Q2, Q3, Q4))


def check(name: str, fn: Callable[..., Any]) -> feedback.Verdict:
    """Run the visible cases of question ``name`` on ``fn`` and print the verdict."""
    return feedback.check(EXERCISE, name, fn)
