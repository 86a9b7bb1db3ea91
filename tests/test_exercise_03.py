"""Exercise 03_blackbox: wrong answers name their mistake; other right answers pass."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import (
    exercise,
    right_answer_passes,
    wrong_answer_fails,
)

NAME = "03_blackbox"


def _tokens(variant: str):
    def make_tokens(support_features, support_y, query_features, n_slots):
        if variant != "no ValueError" and support_y.max() >= n_slots:
            raise ValueError("label without a slot")
        code = F.one_hot(support_y, n_slots).to(support_features.dtype)
        zeros = query_features.new_zeros(*query_features.shape[:2], n_slots)
        support = torch.cat([support_features, code], -1)
        query = torch.cat([query_features, zeros], -1)
        if variant == "number":
            support = torch.cat([support_features, support_y.unsqueeze(-1).to(code.dtype)], -1)
        elif variant == "task width":
            support = torch.cat([support_features, F.one_hot(support_y).to(code.dtype)], -1)
        elif variant == "code first":
            support = torch.cat([code, support_features], -1)
        elif variant == "ones":
            query = torch.cat([query_features, zeros + 1], -1)
        elif variant == "no zeros":
            query = query_features
        return support, query

    return make_tokens


def _lstm(variant: str):
    def lstm_forward(lstm, head, support_tokens, query_tokens):
        t, p = query_tokens.shape[:2]
        _, (h, c) = lstm(support_tokens)
        if variant == "sequence":
            return head(lstm(query_tokens, (h, c))[0])
        if variant == "state only":
            return head(h[-1]).unsqueeze(1).expand(t, p, -1)
        if variant == "zero state":
            h, c = torch.zeros_like(h), torch.zeros_like(c)
        if variant == "no cell":
            c = torch.zeros_like(c)
        state = (h.repeat_interleave(p, 1), c.repeat_interleave(p, 1))
        with torch.set_grad_enabled(variant != "no grad"):
            out, _ = lstm(query_tokens.reshape(t * p, 1, -1), state)
            return head(out.reshape(t, p, -1))

    return lstm_forward


def _mask(variant: str):
    def attention_mask(n_support, n_query):
        n = n_support + n_query
        blocked = torch.ones(n, n, dtype=torch.bool)
        blocked[:, :n_support] = False
        if variant == "queries see queries":
            blocked[n_support:, n_support:] = False
        elif variant != "no self":
            blocked[range(n_support, n), range(n_support, n)] = False
        if variant == "causal":
            return torch.ones(n, n, dtype=torch.bool).triu(1)
        if variant == "float":
            return torch.zeros(n, n).masked_fill(blocked, float("-inf"))
        return ~blocked if variant == "inverted" else blocked

    return attention_mask


def _qiao(variant: str):
    def predicted_weight_logits(phi, support_features, support_y, query_features, n_way, scale):
        a = F.normalize(support_features, dim=-1)
        if variant == "raw mean":
            a = support_features
        one_hot = F.one_hot(support_y, n_way).to(a.dtype)
        if variant == "phi first":
            a = phi(a)
        mean = one_hot.transpose(1, 2) @ a / one_hot.sum(1).unsqueeze(-1)
        w = mean if variant in ("no phi", "phi first") else phi(mean)
        if variant == "detached":
            w = w.detach()
        if variant != "unnormalised weights":
            w = F.normalize(w, dim=-1)
        q = F.normalize(query_features, dim=-1)
        if variant == "phi on queries":
            q = F.normalize(phi(q), dim=-1)
        logits = q @ w.transpose(1, 2)
        return logits if variant == "no scale" else scale * logits

    return predicted_weight_logits


WRONG = {
    "the label as a number": ("q1", _tokens("number"), "appended as one number"),
    "a one-hot as wide as the task": ("q1", _tokens("task width"), "number of classes of this"),
    "the code first": ("q1", _tokens("code first"), "the code comes first"),
    "ones for the query's label": ("q1", _tokens("ones"), "hold ones"),
    "queries without label slots": ("q1", _tokens("no zeros"), "needs n_slots zeros"),
    "no ValueError for a label without slot": (
        "q1",
        _tokens("no ValueError"),
        "expected a ValueError",
    ),
    "queries read as one sequence": ("q2", _lstm("sequence"), "one sequence after the support"),
    "queries from a zero state": ("q2", _lstm("zero state"), "support was ignored"),
    "the cell state dropped": ("q2", _lstm("no cell"), "cell state c was dropped"),
    "the support's state as the answer": ("q2", _lstm("state only"), "never read"),
    "queries under no_grad": ("q2", _lstm("no grad"), "carry no graph back to the LSTM"),
    "True for allowed": ("q3", _mask("inverted"), "True and False are swapped"),
    "queries see each other": ("q3", _mask("queries see queries"), "attend to each other"),
    "a causal mask": ("q3", _mask("causal"), "causal mask"),
    "a float mask": ("q3", _mask("float"), "return a bool tensor"),
    "a query blind to itself": ("q3", _mask("no self"), "cannot attend to itself"),
    "raw activations averaged": ("q4", _qiao("raw mean"), "averaged before being normalised"),
    "weights not normalised": ("q4", _qiao("unnormalised weights"), "weights were not normal"),
    "φ on the queries": ("q4", _qiao("phi on queries"), "applied to the queries too"),
    "φ before the mean": ("q4", _qiao("phi first"), "before the mean"),
    "no φ": ("q4", _qiao("no phi"), "cosine prototypes"),
    "no scale": ("q4", _qiao("no scale"), "is missing"),
    "weights detached": ("q4", _qiao("detached"), "no graph back to φ"),
}


@pytest.mark.parametrize(
    ("variant", "qname", "fn", "says"), [(k, *v) for k, v in WRONG.items()], ids=str
)
def test_a_wrong_answer_fails_with_a_helpful_message(variant, qname, fn, says):
    wrong_answer_fails(NAME, variant, qname, fn, says)


def test_every_question_has_a_wrong_answer():
    assert {q for q, _, _ in WRONG.values()} == {q.name for q in exercise(NAME).questions}


def _lstm_query_by_query(lstm, head, support_tokens, query_tokens):
    rows = []
    for s, q in zip(support_tokens, query_tokens, strict=True):
        _, state = lstm(s[None])
        rows.append(torch.cat([lstm(x[None, None], state)[0][0] for x in q]))
    return head(torch.stack(rows))


def _mask_by_blocks(n_support, n_query):
    eye = torch.eye(n_query, dtype=torch.bool)
    top = torch.cat([torch.zeros(n_support, n_support), torch.ones(n_support, n_query)], 1)
    bottom = torch.cat([torch.zeros(n_query, n_support), ~eye], 1)
    return torch.cat([top, bottom]).bool()


def _qiao_by_loops(phi, support_features, support_y, query_features, n_way, scale):
    out = []
    for f, y, q in zip(support_features, support_y, query_features, strict=True):
        a = f / f.norm(dim=-1, keepdim=True)
        w = torch.stack([phi(a[y == n].mean(0)) for n in range(n_way)])
        w = w / w.norm(dim=-1, keepdim=True)
        out.append(scale * F.cosine_similarity(q[:, None], w[None], dim=-1))
    return torch.stack(out)


def _tokens_by_eye(support_features, support_y, query_features, n_slots):
    if support_y.max() >= n_slots:
        raise ValueError("one slot per label")
    eye = torch.eye(n_slots, dtype=support_features.dtype)
    pad = torch.zeros(*query_features.shape[:-1], n_slots, dtype=query_features.dtype)
    return (
        torch.cat([support_features, eye[support_y]], -1),
        torch.cat([query_features, pad], -1),
    )


OTHER = [
    ("q1", _tokens_by_eye),
    ("q2", _lstm_query_by_query),
    ("q3", _mask_by_blocks),
    ("q4", _qiao_by_loops),
]
OTHER_IDS = ["eye rows", "query by query", "blocks", "loops"]


@pytest.mark.parametrize(("qname", "fn"), OTHER, ids=OTHER_IDS)
def test_other_right_answers_pass_every_case(qname, fn):
    right_answer_passes(NAME, qname, fn)
