"""Exercise 03_blackbox: wrong answers name their mistake; other right answers pass."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from conftest import (
    exercise_tests,
)
from metalib.nets import embed_tasks
from metalib.tasks import FixedEpisodes

NAME = "03_blackbox"


def _offset(variant: str):
    def offset_tokens(features, labels, n_slots):
        if variant != "no ValueError" and labels.max() >= n_slots:
            raise ValueError("label without a slot")
        width = int(labels.max()) + 1 if variant == "task width" else n_slots
        code = F.one_hot(labels, width).to(features.dtype)
        if variant == "own label":
            label_part = code
        elif variant == "future":
            label_part = torch.cat([code[:, 1:], torch.zeros_like(code[:, :1])], 1)
        elif variant == "roll":
            label_part = torch.roll(code, 1, dims=1)
        else:
            label_part = torch.cat([torch.zeros_like(code[:, :1]), code[:, :-1]], 1)
        if variant == "code first":
            return torch.cat([label_part, features], -1)
        tokens = torch.cat([features, label_part], -1)
        return tokens[:, 1:] if variant == "no first token" else tokens

    return offset_tokens


def _average(variant: str):
    def average_forward(encoder, decoder, support_tokens, query_features):
        p = query_features.shape[1]
        with torch.set_grad_enabled(variant != "no grad"):
            if variant == "average first":
                r = encoder(support_tokens.mean(1))
            elif variant == "sum":
                r = encoder(support_tokens).sum(1)
            elif variant == "max":
                r = encoder(support_tokens).max(1).values
            elif variant == "all tasks":
                r = encoder(support_tokens).mean((0, 1)).expand(len(support_tokens), -1)
            else:
                r = encoder(support_tokens).mean(1)
            r = r[:, None].repeat(1, p, 1)
            pair = (r, query_features) if variant == "r first" else (query_features, r)
            return decoder(torch.cat(pair, -1))

    return average_forward


def _mask(variant: str):
    def class_attention_mask(support_y, n_query):
        t, s = support_y.shape
        n = s + n_query
        allowed = torch.zeros(t, n, n, dtype=torch.bool)
        y = support_y[:1].expand(t, -1) if variant == "task 0" else support_y
        same = y[:, :, None] == y[:, None, :]
        allowed[:, :s, :s] = ~same if variant == "other classes" else same
        if variant == "chapter":
            allowed[:, :s, :s] = True
        allowed[:, s:, :s] = True
        if variant == "queries see queries":
            allowed[:, s:, s:] = True
        elif variant != "no self":
            allowed[:, range(s, n), range(s, n)] = True
        if variant == "no self":
            allowed[:, range(n), range(n)] = False
        if variant == "2-D":
            return ~allowed[0]
        if variant == "float":
            return torch.zeros(t, n, n).masked_fill(~allowed, float("-inf"))
        return allowed if variant == "inverted" else ~allowed

    return class_attention_mask


def _imprint(variant: str):
    def imprinted_logits(base_weights, support_features, support_y, query_features, n_way, scale):
        f = support_features if variant == "raw mean" else F.normalize(support_features, dim=-1)
        one_hot = F.one_hot(support_y, n_way).to(f.dtype)
        novel = one_hot.transpose(1, 2) @ f / one_hot.sum(1)[..., None]
        if variant != "mean kept":
            novel = F.normalize(novel, dim=-1)
        base = base_weights if variant == "raw base" else F.normalize(base_weights, dim=-1)
        base = base.expand(len(novel), -1, -1)
        weights = {
            "novel first": [novel, base],
            "no base": [novel],
        }.get(variant, [base, novel])
        w = torch.cat(weights, 1)
        q = query_features if variant == "raw queries" else F.normalize(query_features, dim=-1)
        logits = q @ w.transpose(1, 2)
        return logits if variant == "no scale" else scale * logits

    return imprinted_logits


def _experiment(variant: str):
    def imprinting_vs_shots(encoder, data, n_way, shots, n_queries, n_episodes, seed):
        results = {"imprinted": [], "nearest neighbour": []}
        for k in shots:
            k_used = 1 if variant == "one shot" else k
            episodes = FixedEpisodes(data, n_way, k_used, n_queries, n_episodes, seed)
            ep = next(episodes.batches(n_episodes))
            with torch.no_grad():
                sf, qf = embed_tasks(encoder, ep.support_x, ep.query_x)
            if variant == "euclidean":
                one_hot = F.one_hot(ep.support_y, n_way).to(sf.dtype)
                protos = one_hot.transpose(1, 2) @ sf / one_hot.sum(1)[..., None]
                imprinted = -torch.cdist(qf, protos)
                similarity = -torch.cdist(qf, sf)
            else:
                f = sf if variant == "raw mean" else F.normalize(sf, dim=-1)
                one_hot = F.one_hot(ep.support_y, n_way).to(sf.dtype)
                w = F.normalize(one_hot.transpose(1, 2) @ f / one_hot.sum(1)[..., None], dim=-1)
                imprinted = F.normalize(qf, dim=-1) @ w.transpose(1, 2)
                similarity = F.normalize(qf, dim=-1) @ F.normalize(sf, dim=-1).transpose(1, 2)
            pick = similarity.argmin(-1) if variant == "argmin" else similarity.argmax(-1)
            accuracies = {
                "imprinted": (imprinted.argmax(-1) == ep.query_y).double().mean().item(),
                "nearest neighbour": (ep.support_y.gather(1, pick) == ep.query_y)
                .double()
                .mean()
                .item(),
            }
            for method, a in accuracies.items():
                a = {"percent": 100 * a, "error": 1 - a}.get(variant, a)
                other = "nearest neighbour" if method == "imprinted" else "imprinted"
                results[other if variant == "swapped" else method].append(a)
        return results

    return imprinting_vs_shots


WRONG = {
    "each token's own label": ("q1", _offset("own label"), "carries its own label"),
    "the next example's label": ("q1", _offset("future"), "from the future"),
    "torch.roll": ("q1", _offset("roll"), "wraps around"),
    "the code first": ("q1", _offset("code first"), "the code comes first"),
    "a one-hot as wide as the task": ("q1", _offset("task width"), "as wide as the task's"),
    "the first token dropped": ("q1", _offset("no first token"), "a token is missing"),
    "no ValueError for a label without slot": (
        "q1",
        _offset("no ValueError"),
        "expected a ValueError",
    ),
    "encodings summed": ("q2", _average("sum"), "encodings were summed"),
    "tokens averaged, then encoded": ("q2", _average("average first"), "before the encoder"),
    "encodings max-pooled": ("q2", _average("max"), "max-pooled"),
    "r over every task": ("q2", _average("all tasks"), "averaged over every task"),
    "[r, query]": ("q2", _average("r first"), "the decoder read [r, query]"),
    "under no_grad": ("q2", _average("no grad"), "carry no graph back"),
    "True for allowed": ("q3", _mask("inverted"), "True and False are swapped"),
    "the chapter's mask": ("q3", _mask("chapter"), "the chapter's mask"),
    "support sees the other classes": ("q3", _mask("other classes"), "the *other* classes"),
    "task 0's labels for every task": ("q3", _mask("task 0"), "task 0's labels"),
    "no token sees itself": ("q3", _mask("no self"), "no token can attend to itself"),
    "queries see each other": ("q3", _mask("queries see queries"), "attend to each other"),
    "one mask for every task": ("q3", _mask("2-D"), "one mask per task"),
    "a float mask": ("q3", _mask("float"), "expected torch.bool"),
    "raw features averaged": ("q4", _imprint("raw mean"), "averaged before being normalised"),
    "the mean not normalised": ("q4", _imprint("mean kept"), "after the mean"),
    "raw base weights": ("q4", _imprint("raw base"), "base weights were not normalised"),
    "novel classes first": ("q4", _imprint("novel first"), "novel classes come first"),
    "raw queries": ("q4", _imprint("raw queries"), "query features were not normalised"),
    "no scale": ("q4", _imprint("no scale"), "scale is missing"),
    "the base classes dropped": ("q4", _imprint("no base"), "only the novel classes"),
    "percentages": ("q5", _experiment("percent"), "percentages"),
    "error rates": ("q5", _experiment("error"), "error rates"),
    "the methods swapped": ("q5", _experiment("swapped"), "lists are swapped"),
    "1 shot for every k": ("q5", _experiment("one shot"), "1-shot accuracy"),
    "imprinting from raw features": ("q5", _experiment("raw mean"), "the raw features"),
    "Euclidean distances": ("q5", _experiment("euclidean"), "Euclidean distances"),
    "the least similar shot": ("q5", _experiment("argmin"), "at 1 shot imprinting and the"),
}


def _offset_by_slots(features, labels, n_slots):
    if labels.max() >= n_slots or labels.min() < 0:
        raise ValueError("every label needs a slot: use more slots")
    t, length, _ = features.shape
    label_part = features.new_zeros(t, length, n_slots)
    eye = torch.eye(n_slots, dtype=features.dtype)
    label_part[:, 1:] = eye[labels[:, :-1]]
    return torch.cat([features, label_part], -1)


def _average_task_by_task(encoder, decoder, support_tokens, query_features):
    rows = []
    for tokens, queries in zip(support_tokens, query_features, strict=True):
        r = sum(encoder(token) for token in tokens) / len(tokens)
        rows.append(decoder(torch.cat([queries, r.expand(len(queries), -1)], -1)))
    return torch.stack(rows)


def _mask_by_loops(support_y, n_query):
    t, s = support_y.shape
    n = s + n_query
    out = torch.ones(t, n, n, dtype=torch.bool)
    for task in range(t):
        for i in range(n):
            for j in range(s):
                out[task, i, j] = i < s and bool(support_y[task, i] != support_y[task, j])
            if i >= s:
                out[task, i, i] = False
    return out


def _imprint_by_loops(base_weights, support_features, support_y, query_features, n_way, scale):
    out = []
    for f, y, q in zip(support_features, support_y, query_features, strict=True):
        unit = f / f.norm(dim=-1, keepdim=True)
        novel = torch.stack([unit[y == n].mean(0) for n in range(n_way)])
        w = torch.cat([base_weights, novel])
        out.append(scale * F.cosine_similarity(q[:, None], w[None], dim=-1))
    return torch.stack(out)


def _experiment_episode_by_episode(encoder, data, n_way, shots, n_queries, n_episodes, seed):
    """One episode at a time; nearest neighbour by Euclidean distance between unit vectors (the
    same order as cosine)."""
    results = {"imprinted": [], "nearest neighbour": []}
    for k in shots:
        episodes = FixedEpisodes(data, n_way, k, n_queries, n_episodes, seed)
        right_imprinted = right_nearest = total = 0
        for i in range(len(episodes)):
            ep = episodes[i]
            with torch.no_grad():
                s = F.normalize(encoder(ep.support_x[0]), dim=-1)
                q = F.normalize(encoder(ep.query_x[0]), dim=-1)
            y = ep.support_y[0]
            w = F.normalize(torch.stack([s[y == n].mean(0) for n in range(n_way)]), dim=-1)
            right_imprinted += int(((q @ w.T).argmax(-1) == ep.query_y[0]).sum())
            right_nearest += int((y[torch.cdist(q, s).argmin(-1)] == ep.query_y[0]).sum())
            total += len(q)
        results["imprinted"].append(right_imprinted / total)
        results["nearest neighbour"].append(right_nearest / total)
    return results


OTHER = [
    ("q1", _offset_by_slots),
    ("q2", _average_task_by_task),
    ("q3", _mask_by_loops),
    ("q4", _imprint_by_loops),
    ("q5", _experiment_episode_by_episode),
]
OTHER_IDS = ["eye rows", "task by task", "loops", "loops", "episode by episode"]


(
    test_a_wrong_answer_fails_with_a_helpful_message,
    test_every_question_has_a_wrong_answer,
    test_other_right_answers_pass_every_case,
) = exercise_tests(NAME, WRONG, OTHER, OTHER_IDS)
