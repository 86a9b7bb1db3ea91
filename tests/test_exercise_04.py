"""Exercise 04_protonet: wrong answers name their mistake; other right answers pass."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from conftest import (
    exercise_tests,
    solution,
)
from metalib import protonet
from metalib.nets import embed_tasks
from metalib.tasks import FixedEpisodes, sample_episodes
from metalib.train import episode_loss

NAME = "04_protonet"


def _refine(variant: str):
    def refine_prototypes(support_features, support_y, unlabelled_features, n_way):
        f, u = support_features, unlabelled_features
        one_hot = F.one_hot(support_y, n_way).to(f.dtype)
        counts = one_hot.sum(dim=1)
        if variant != "no ValueError" and (counts == 0).any():
            raise ValueError("a class has no labelled example")
        protos = one_hot.transpose(1, 2) @ f / counts.unsqueeze(-1)
        if variant == "not refined":
            return protos
        d = torch.cdist(u, protos) ** 2
        z = (-d).softmax(dim=1 if variant == "axis" else -1)
        if variant == "hard":
            z = F.one_hot(z.argmax(-1), n_way).to(f.dtype)
        sums = one_hot.transpose(1, 2) @ f + z.transpose(1, 2) @ u
        if variant == "counts only":
            return sums / counts.unsqueeze(-1)
        if variant == "unlabelled only":
            return z.transpose(1, 2) @ u / z.sum(1).unsqueeze(-1)
        return sums / (counts + z.sum(1)).unsqueeze(-1)

    return refine_prototypes


def _mahalanobis(variant: str):
    def mahalanobis_logits(query_features, support_features, support_y, n_way, beta):
        f, y = support_features, support_y
        one_hot = F.one_hot(y, n_way).to(f.dtype)
        counts = one_hot.sum(1).unsqueeze(-1)
        protos = one_hot.transpose(1, 2) @ f / counts
        ddof = 1 if variant == "unbiased" else 0
        squares = one_hot.transpose(1, 2) @ (f - one_hot @ protos).square()
        class_var = squares / (counts - ddof)
        task_var = f.var(1, keepdim=True, correction=ddof)
        if variant == "detached":
            class_var, task_var = class_var.detach(), task_var.detach()
        lam = 1 / (counts + 1) if variant == "swapped" else counts / (counts + 1)
        var = lam * class_var + (1 - lam) * task_var
        if variant == "task only":
            var = task_var
        var = var if variant == "no beta" else var + beta
        if variant == "std":
            var = var.sqrt()
        return -((query_features[:, :, None] - protos[:, None]) ** 2 / var[:, None]).sum(-1)

    return mahalanobis_logits


def _semi(variant: str):
    def semi_supervised_loss(encoder, episode, unlabelled_x):
        sx, qx, p = episode.support_x, episode.query_x, episode.query_x.shape[1]
        if variant == "apart":
            sf, qf = embed_tasks(encoder, sx, qx)
            uf = torch.stack([encoder(x) for x in unlabelled_x])
        elif variant == "one batch":
            x = torch.cat([sx, qx, unlabelled_x], 1)
            f = encoder(x.flatten(0, 1)).view(x.shape[0], x.shape[1], -1)
            s = sx.shape[1]
            sf, qf, uf = f[:, :s], f[:, s : s + p], f[:, s + p :]
        else:
            sf, rest = embed_tasks(encoder, sx, torch.cat([qx, unlabelled_x], 1))
            qf, uf = rest[:, :p], rest[:, p:]
        if variant == "no graph":
            sf, qf, uf = sf.detach(), qf.detach(), uf.detach()
        if variant == "transductive":
            uf = qf
        if variant == "unrefined":
            protos = protonet.prototypes(sf, episode.support_y, episode.n_way)
        elif variant == "detached":
            with torch.no_grad():
                c = protonet.prototypes(sf, episode.support_y, episode.n_way)
                z = (-(torch.cdist(uf, c) ** 2)).softmax(-1)
            one_hot = F.one_hot(episode.support_y, episode.n_way).to(sf.dtype)
            sums = one_hot.transpose(1, 2) @ sf + z.transpose(1, 2) @ uf
            protos = sums / (one_hot.sum(1) + z.sum(1)).unsqueeze(-1)
        else:
            protos = refine_prototypes(sf, episode.support_y, uf, episode.n_way)  # noqa: F821
        logits = -((qf[:, :, None] - protos[:, None]) ** 2).sum(-1)
        reduction = "sum" if variant == "summed" else "mean"
        loss = F.cross_entropy(logits.flatten(0, 1), episode.query_y.flatten(), reduction=reduction)
        right = (logits.argmax(-1) == episode.query_y).float()
        return loss, right.sum(-1) if variant == "count" else right.mean(-1)

    return semi_supervised_loss


def _experiment(variant: str):
    reference = solution(NAME)["shots_experiment"]

    def shots_experiment(encoder, train, test, n_way, shots, steps, lr, n_episodes, seed):
        if variant == "in place":  # trains the caller's encoder
            net = protonet.ProtoNet(encoder)
            opt = torch.optim.Adam(net.parameters(), lr=lr)
            g = torch.Generator().manual_seed(seed)
            for _ in range(steps):
                loss, _ = episode_loss(net, sample_episodes(train, n_way, 1, 5, 1, g))
                opt.zero_grad()
                loss.backward()
                opt.step()
            steps = 0
        if variant == "untrained":
            steps = 0
        if variant == "train split":
            test = train
        out = reference(encoder, train, test, n_way, shots, steps, lr, n_episodes, seed)
        if variant == "percent":
            out = {c: {k: 100 * a for k, a in accs.items()} for c, accs in out.items()}
        if variant == "pixel means":
            for k in shots:
                ep = next(FixedEpisodes(test, n_way, k, 5, n_episodes, seed).batches(n_episodes))
                means = protonet.prototypes(ep.support_x.flatten(2), ep.support_y, n_way)
                guess = protonet.logits(ep.query_x.flatten(2), means).argmax(-1)
                out["pixel_nn"][k] = (guess == ep.query_y).double().mean().item()
        return out

    return shots_experiment


WRONG = {
    "softmax over the unlabelled examples": ("q1", _refine("axis"), "over the unlabelled"),
    "hard assignments": ("q1", _refine("hard"), "hard assignments"),
    "labelled counts only": ("q1", _refine("counts only"), "add each class's soft weights"),
    "labelled examples dropped": ("q1", _refine("unlabelled only"), "left out of the refined"),
    "first prototypes": ("q1", _refine("not refined"), "not refined"),
    "nan for an empty class": ("q1", _refine("no ValueError"), "expected a ValueError"),
    "unbiased variances": ("q2", _mahalanobis("unbiased"), "K − 1"),
    "λ swapped": ("q2", _mahalanobis("swapped"), "swapped"),
    "no β": ("q2", _mahalanobis("no beta"), "β is missing"),
    "standard deviations": ("q2", _mahalanobis("std"), "divides by the standard deviations"),
    "task variances only": ("q2", _mahalanobis("task only"), "task's variances only"),
    "variances detached": ("q2", _mahalanobis("detached"), "carry no gradient"),
    "prototypes not refined": ("q3", _semi("unrefined"), "not refined"),
    "queries as the unlabelled set": ("q3", _semi("transductive"), "queries were used"),
    "unlabelled embedded apart": ("q3", _semi("apart"), "batch of their own"),
    "tasks embedded in one batch": ("q3", _semi("one batch"), "mixed them"),
    "summed cross-entropy": ("q3", _semi("summed"), "sum of the queries"),
    "soft assignments detached": ("q3", _semi("detached"), "soft assignments carry no gradient"),
    "features detached": ("q3", _semi("no graph"), "no graph back to the encoder"),
    "accuracy as a count": ("q3", _semi("count"), "numbers of right queries"),
    "encoder not meta-trained": ("q4", _experiment("untrained"), "not meta-trained"),
    "the caller's encoder trained": ("q4", _experiment("in place"), "changed in place"),
    "tested on the training split": ("q4", _experiment("train split"), "training split"),
    "pixel class means": ("q4", _experiment("pixel means"), "class means of pixels"),
    "percentages": ("q4", _experiment("percent"), "not %"),
}


def _refine_per_task(support_features, support_y, unlabelled_features, n_way):
    out = []
    for f, y, u in zip(support_features, support_y, unlabelled_features, strict=True):
        if any((y == n).sum() == 0 for n in range(n_way)):
            raise ValueError("every class needs a labelled example")
        c = torch.stack([f[y == n].mean(0) for n in range(n_way)])
        z = torch.softmax(-((u[:, None] - c[None]) ** 2).sum(-1), dim=1)  # (U, N)
        out.append(
            torch.stack(
                [
                    (f[y == n].sum(0) + (z[:, n : n + 1] * u).sum(0))
                    / ((y == n).sum() + z[:, n].sum())
                    for n in range(n_way)
                ]
            )
        )
    return torch.stack(out)


def _mahalanobis_by_masks(query_features, support_features, support_y, n_way, beta):
    out = []
    for q, f, y in zip(query_features, support_features, support_y, strict=True):
        task_var = ((f - f.mean(0)) ** 2).mean(0)
        logits = []
        for n in range(n_way):
            members = f[y == n]
            k = len(members)
            c = members.mean(0)
            var = k / (k + 1) * ((members - c) ** 2).mean(0) + task_var / (k + 1) + beta
            logits.append(-(((q - c) ** 2) / var).sum(-1))
        out.append(torch.stack(logits, -1))
    return torch.stack(out)


def _semi_loss_per_task(encoder, episode, unlabelled_x):
    losses, accs = [], []
    for t in range(episode.n_tasks):
        sx, qx, ux = episode.support_x[t], episode.query_x[t], unlabelled_x[t]
        f = encoder(torch.cat([sx, qx, ux]))
        sf, qf, uf = f[: len(sx)], f[len(sx) : len(sx) + len(qx)], f[len(sx) + len(qx) :]
        protos = refine_prototypes(  # noqa: F821  (the grader gives the reference)
            sf[None], episode.support_y[t : t + 1], uf[None], episode.n_way
        )[0]
        logp = (-(torch.cdist(qf, protos) ** 2)).log_softmax(-1)
        losses.append(-logp.gather(1, episode.query_y[t][:, None]).squeeze(1))
        accs.append((logp.argmax(-1) == episode.query_y[t]).double().mean())
    return torch.cat(losses).mean(), torch.stack(accs)


def _experiment_in_batches(encoder, train, test, n_way, shots, steps, lr, n_episodes, seed):
    net = copy.deepcopy(encoder)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        ep = sample_episodes(train, n_way, 1, 5, 1, g)
        sf, qf = embed_tasks(net, ep.support_x, ep.query_x)
        protos = protonet.prototypes(sf, ep.support_y, n_way)
        logits = -(torch.cdist(qf, protos) ** 2)
        loss = F.cross_entropy(logits.flatten(0, 1), ep.query_y.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    results = {"refined": {}, "protonet": {}, "pixel_nn": {}}
    for k in shots:
        right = {name: [] for name in results}
        for ep in FixedEpisodes(test, n_way, k, 5, n_episodes, seed=seed).batches(7):
            with torch.no_grad():
                sf, qf = embed_tasks(net, ep.support_x, ep.query_x)
            protos = protonet.prototypes(sf, ep.support_y, n_way)
            refined = refine_prototypes(sf, ep.support_y, qf, n_way)  # noqa: F821
            for name, c in (("protonet", protos), ("refined", refined)):
                right[name].append(torch.cdist(qf, c).argmin(-1) == ep.query_y)
            pixels = torch.cdist(ep.query_x.flatten(2), ep.support_x.flatten(2))
            right["pixel_nn"].append(ep.support_y.gather(1, pixels.argmin(-1)) == ep.query_y)
        for name in results:
            results[name][k] = torch.cat(right[name]).float().mean()  # 0-d tensors are fine
    return results


OTHER = [
    ("q1", _refine_per_task),
    ("q2", _mahalanobis_by_masks),
    ("q3", _semi_loss_per_task),
    ("q4", _experiment_in_batches),
]
OTHER_IDS = ["refine per task", "Mahalanobis by masks", "loss per task", "experiment in batches"]


(
    test_a_wrong_answer_fails_with_a_helpful_message,
    test_every_question_has_a_wrong_answer,
    test_other_right_answers_pass_every_case,
) = exercise_tests(NAME, WRONG, OTHER, OTHER_IDS)
