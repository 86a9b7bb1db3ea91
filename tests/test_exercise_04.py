"""Exercise 04_protonet: wrong answers name their mistake; other right answers pass."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import (
    exercise,
    right_answer_passes,
    solution,
    wrong_answer_fails,
)

NAME = "04_protonet"


def _protos(variant: str):
    def prototypes(support_features, support_y, n_way):
        one_hot = F.one_hot(support_y, n_way).to(support_features.dtype)
        counts = one_hot.sum(dim=1)
        if variant != "no ValueError" and (counts == 0).any():
            raise ValueError("a class has no example")
        sums = one_hot.transpose(1, 2) @ support_features
        t, m, d = support_features.shape
        if variant == "sum":
            return sums
        if variant == "sorted":
            return support_features.view(t, n_way, m // n_way, d).mean(2)
        if variant == "M/N":
            return sums / (m / n_way)
        if variant == "pooled":
            return torch.stack([support_features[support_y == n].mean(0) for n in range(n_way)])
        return sums / counts.unsqueeze(-1)

    return prototypes


def _distances(variant: str):
    def squared_distances(query_features, protos):
        d = (query_features.unsqueeze(2) - protos.unsqueeze(1)).square()
        if variant == "mean":
            return d.mean(-1)
        if variant == "swapped":
            return d.sum(-1).transpose(1, 2)
        return torch.cdist(query_features, protos)  # the distance, not its square

    return squared_distances


def _proto_loss(variant: str):
    ns = solution("04_protonet")

    def protonet_loss(encoder, episode):
        if variant == "apart":
            sf = torch.stack([encoder(x) for x in episode.support_x])
            qf = torch.stack([encoder(x) for x in episode.query_x])
        elif variant == "one batch":
            t, m = episode.support_x.shape[:2]
            f = encoder(torch.cat([episode.support_x.flatten(0, 1), episode.query_x.flatten(0, 1)]))
            sf, qf = f[: t * m].view(t, m, -1), f[t * m :].view(t, -1, f.shape[-1])
        else:
            sf, qf = ns["embed_tasks"](encoder, episode.support_x, episode.query_x)
        if variant == "no graph":
            sf, qf = sf.detach(), qf.detach()
        protos = ns["prototypes"](sf, episode.support_y, episode.n_way)
        d = ns["squared_distances"](qf, protos)
        logits = {"plus": d, "sqrt": -d.sqrt()}.get(variant, -d)
        reduction = "sum" if variant == "summed" else "mean"
        loss = F.cross_entropy(logits.flatten(0, 1), episode.query_y.flatten(), reduction=reduction)
        right = (logits.argmax(-1) == episode.query_y).float()
        return loss, right.sum(-1) if variant == "count" else right.mean(-1)

    return protonet_loss


def _cosine(variant: str):
    def cosine_logits(query_features, protos, temperature):
        q, c = F.normalize(query_features, dim=-1), F.normalize(protos, dim=-1)
        cos = q @ c.transpose(1, 2)
        if variant == "unnormalised":
            return temperature * query_features @ protos.transpose(1, 2)
        if variant == "no temperature":
            return cos
        if variant == "divided":
            return cos / temperature
        if variant == "float":  # a Python number: no gradient reaches the temperature
            return (temperature.item() if torch.is_tensor(temperature) else temperature) * cos
        return temperature * (1 - cos)  # a cosine distance

    return cosine_logits


WRONG = {
    "prototype = sum": ("q1", _protos("sum"), "not their mean"),
    "support assumed sorted by class": ("q1", _protos("sorted"), "sorted by class"),
    "divided by M/N": ("q1", _protos("M/N"), "its own class's count"),
    "tasks pooled": ("q1", _protos("pooled"), "the task axis is missing"),
    "nan for an empty class": ("q1", _protos("no ValueError"), "expected a ValueError"),
    "distance not squared": ("q2", _distances("sqrt"), "not its square"),
    "mean over features": ("q2", _distances("mean"), "mean over the"),
    "axes swapped": ("q2", _distances("swapped"), "swapped"),
    "+distance as logits": ("q3", _proto_loss("plus"), "+distance"),
    "distance not squared in the loss": ("q3", _proto_loss("sqrt"), "not squared"),
    "summed cross-entropy": ("q3", _proto_loss("summed"), "sum of the queries"),
    "support and query embedded apart": ("q3", _proto_loss("apart"), "separate batches"),
    "tasks embedded in one batch": ("q3", _proto_loss("one batch"), "mixed them"),
    "features detached": ("q3", _proto_loss("no graph"), "no graph back to the encoder"),
    "accuracy as a count": ("q3", _proto_loss("count"), "numbers of right queries"),
    "cosine unnormalised": ("q4", _cosine("unnormalised"), "not normalised"),
    "no temperature": ("q4", _cosine("no temperature"), "is missing"),
    "divided by τ": ("q4", _cosine("divided"), "divided by τ"),
    "temperature as a float": ("q4", _cosine("float"), "cut it"),
    "cosine distance": ("q4", _cosine("distance"), "cosine distance"),
}


@pytest.mark.parametrize(
    ("variant", "qname", "fn", "says"), [(k, *v) for k, v in WRONG.items()], ids=str
)
def test_a_wrong_answer_fails_with_a_helpful_message(variant, qname, fn, says):
    wrong_answer_fails(NAME, variant, qname, fn, says)


def test_every_question_has_a_wrong_answer():
    assert {q for q, _, _ in WRONG.values()} == {q.name for q in exercise(NAME).questions}


def _prototypes_by_masks(support_features, support_y, n_way):
    out = []
    for f, y in zip(support_features, support_y, strict=True):
        if any((y == n).sum() == 0 for n in range(n_way)):
            raise ValueError("every class needs an example")
        out.append(torch.stack([f[y == n].mean(0) for n in range(n_way)]))
    return torch.stack(out)


def _loss_by_log_softmax(encoder, episode):
    losses, accs = [], []
    for t in range(episode.n_tasks):
        f = encoder(torch.cat([episode.support_x[t], episode.query_x[t]]))
        sf, qf = f[: episode.support_x.shape[1]], f[episode.support_x.shape[1] :]
        protos = _prototypes_by_masks(sf[None], episode.support_y[t : t + 1], episode.n_way)[0]
        logp = (-(torch.cdist(qf, protos) ** 2)).log_softmax(-1)
        losses.append(-logp.gather(1, episode.query_y[t][:, None]).squeeze(1))
        accs.append((logp.argmax(-1) == episode.query_y[t]).double().mean())
    return torch.cat(losses).mean(), torch.stack(accs)


OTHER = [
    ("q1", _prototypes_by_masks),
    ("q2", lambda q, c: torch.cdist(q, c) ** 2),
    (
        "q2",
        lambda q, c: (
            q.square().sum(-1, keepdim=True)
            - 2 * q @ c.transpose(1, 2)
            + c.square().sum(-1)[:, None]
        ),
    ),
    ("q3", _loss_by_log_softmax),
    ("q4", lambda q, c, t: t * F.cosine_similarity(q.unsqueeze(2), c.unsqueeze(1), dim=-1)),
]
OTHER_IDS = ["masks", "cdist", "expanded", "log_softmax per task", "cosine_similarity"]


@pytest.mark.parametrize(("qname", "fn"), OTHER, ids=OTHER_IDS)
def test_other_right_answers_pass_every_case(qname, fn):
    right_answer_passes(NAME, qname, fn)
