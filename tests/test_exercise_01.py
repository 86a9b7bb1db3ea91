"""Exercise 01_finetuning: wrong answers fail with a message naming the mistake."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from conftest import (
    exercise,
    exercise_tests,
    hidden_cases,
    solution,
)
from metalib import train
from metalib.grading.feedback import run_case

NAME = "01_finetuning"


def _lrs(variant: str):
    def layerwise_lrs(model, lr, decay, frozen_blocks):
        if variant != "no ValueError" and not (0 <= frozen_blocks <= 4 and decay > 0):
            raise ValueError("frozen_blocks must be 0..4 and decay positive")
        frozen = frozen_blocks + {"one too many": 1, "one too few": -1}.get(variant, 0)
        rates = {}
        for name, _ in model.named_parameters():
            parts = name.split(".")
            if parts[0] == "head":
                rates[name] = lr * decay if variant == "head decayed" else lr
                continue
            i = int(parts[1])
            power = {"last at lr": 3 - i, "reversed": i + 1, "head decayed": 5 - i}.get(
                variant, 4 - i
            )
            if i >= frozen:
                rates[name] = lr * decay**power
            elif variant != "left out":
                rates[name] = 0.0
        return rates

    return layerwise_lrs


def _penalty(variant: str):
    def l2sp_penalty(model, start, alpha, beta):
        total = 0.0
        for name, p in model.named_parameters():
            if name in start:
                target = torch.zeros_like(p) if variant == "weight decay" else start[name]
                if variant == "mse":
                    term = alpha / 2 * F.mse_loss(p, target)
                else:
                    term = alpha / 2 * (p - target).square().sum()
            else:
                term = beta / 2 * p.square().sum()
            total = total + (2 * term if variant == "no half" else term)
        if variant == "item":
            return total.item()
        return total.detach() if variant == "detached" else total

    return l2sp_penalty


def _finetune(variant: str):
    def finetune_l2sp(model, support_x, support_y, lrs, steps, alpha, beta):
        l2sp_penalty = solution(NAME)["l2sp_penalty"]  # at call time: threads are pinned then
        net = model if variant == "no copy" else copy.deepcopy(model)
        keep = "" if variant == "anchor holds the head" else "head."
        start = {
            k: p.detach().clone()
            for k, p in model.named_parameters()
            if not (keep and k.startswith(keep))
        }
        if variant == "adam":
            groups = [{"params": [p], "lr": lrs[k]} for k, p in net.named_parameters()]
            opt = torch.optim.Adam(groups)
        for _ in range(steps):
            penalty = 0.0 if variant == "no penalty" else l2sp_penalty(net, start, alpha, beta)
            loss = F.cross_entropy(net(support_x), support_y) + penalty
            if variant == "adam":
                opt.zero_grad()
                loss.backward()
                opt.step()
                continue
            loss.backward()  # gradients pile up in p.grad unless cleared
            with torch.no_grad():
                for k, p in net.named_parameters():
                    p -= (lrs["head.weight"] if variant == "one rate" else lrs[k]) * p.grad
                    if variant != "grads pile up":
                        p.grad = None
        return net

    return finetune_l2sp


def _sweep(variant: str):
    def frozen_blocks_sweep(model, episode, lr, steps, alpha):
        ns = solution(NAME)
        found = {}
        for k in range(4 if variant == "k to 3" else 5):
            rates = ns["layerwise_lrs"](model, lr, 1.0, k)
            accuracies = []
            for t in range(episode.n_tasks):
                x, y = episode.support_x[t], episode.support_y[t]
                net = ns["finetune_l2sp"](model, x, y, rates, steps, alpha, 0.0)
                if variant == "before":
                    net = model
                qx, qy = (
                    (x, y) if variant == "support" else (episode.query_x[t], episode.query_y[t])
                )
                with torch.no_grad():
                    if variant == "one at a time":
                        logits = torch.cat([net(qx[i : i + 1]) for i in range(len(qx))])
                    else:
                        logits = net(qx)
                accuracies.append((logits.argmax(-1) == qy).float().mean().item())
            accuracy = sum(accuracies) / len(accuracies)
            found[k] = 1 - accuracy if variant == "error" else accuracy
        return found

    return frozen_blocks_sweep


def _accuracy_one_at_a_time(model, x, y):
    with torch.no_grad():
        predicted = torch.cat([model(x[i : i + 1]).argmax(dim=-1) for i in range(len(x))])
    return (predicted == y).float().mean().item()


def _count_right(model, x, y):
    with torch.no_grad():
        return int((model(x).argmax(dim=-1) == y).sum())


WRONG = {
    "the last block at lr": ("q1", _lrs("last at lr"), "one step below the head"),
    "the rates reversed": ("q1", _lrs("reversed"), "the wrong way round"),
    "the head decayed": ("q1", _lrs("head decayed"), "the head is decayed too"),
    "one block too many frozen": ("q1", _lrs("one too many"), "one block too many"),
    "one block too few frozen": ("q1", _lrs("one too few"), "one block too few"),
    "frozen blocks left out": ("q1", _lrs("left out"), "rate 0.0"),
    "no ValueError": ("q1", _lrs("no ValueError"), "expected a ValueError"),
    "no 1/2": ("q2", _penalty("no half"), "the 1/2 is missing"),
    "F.mse_loss": ("q2", _penalty("mse"), "F.mse_loss"),
    "weight decay": ("q2", _penalty("weight decay"), "weight decay"),
    "a Python float": ("q2", _penalty("item"), "return a 0-d tensor"),
    "detached": ("q2", _penalty("detached"), "carries no gradient"),
    "alpha and beta swapped": (
        "q2",
        lambda model, start, alpha, beta: _penalty("")(model, start, beta, alpha),
        "swapped",
    ),
    "the original fine-tuned": ("q3", _finetune("no copy"), "the original network changed"),
    "no penalty": ("q3", _finetune("no penalty"), "the penalty is missing"),
    "one rate for all": ("q3", _finetune("one rate"), "the head's rate"),
    "the head in start": ("q3", _finetune("anchor holds the head"), "start holds the head"),
    "gradients pile up": ("q3", _finetune("grads pile up"), "pile up"),
    "Adam": ("q3", _finetune("adam"), "lrs[name] * grad"),
    "error rates": ("q4", _sweep("error"), "error rates"),
    "the support set scored": ("q4", _sweep("support"), "support set"),
    "the network before fine-tuning": ("q4", _sweep("before"), "before fine-tuning"),
    "queries one at a time": ("q4", _sweep("one at a time"), "one at a time"),
    "k up to 3": ("q4", _sweep("k to 3"), "has no '4'"),
    "the number right": ("q5", _count_right, "the number right"),
    "one query at a time": ("q5", _accuracy_one_at_a_time, "one batch"),
}


def _lrs_by_blocks(model, lr, decay, frozen_blocks):
    """Another right layerwise_lrs: block by block, names rebuilt from each block's own."""
    if frozen_blocks not in range(5) or not decay > 0:
        raise ValueError("frozen_blocks must be 0..4 and decay positive")
    rates = {f"head.{n}": float(lr) for n, _ in model.head.named_parameters()}
    for i, block in enumerate(list(model.body)[:4]):
        rate = 0.0 if i < frozen_blocks else lr * decay ** (4 - i)
        rates |= {f"body.{i}.{n}": rate for n, _ in block.named_parameters()}
    return rates


def _penalty_flat(model, start, alpha, beta):
    """Another right l2sp_penalty: the parameters flattened into two vectors."""
    named = dict(model.named_parameters())
    near = [(named[k] - v).flatten() for k, v in start.items()]
    new = [p.flatten() for k, p in named.items() if k not in start]
    return alpha / 2 * torch.cat(near).pow(2).sum() + beta / 2 * torch.cat(new).pow(2).sum()


def _finetune_sgd(model, support_x, support_y, lrs, steps, alpha, beta):
    """Another right finetune_l2sp: torch.optim.SGD with one group per parameter."""
    l2sp_penalty = solution(NAME)["l2sp_penalty"]
    net = copy.deepcopy(model)
    start = {k: v.detach().clone() for k, v in model.state_dict().items() if k.startswith("body")}
    opt = torch.optim.SGD([{"params": [p], "lr": lrs[k]} for k, p in net.named_parameters()])
    for _ in range(steps):
        opt.zero_grad()
        loss = F.cross_entropy(net(support_x), support_y) + l2sp_penalty(net, start, alpha, beta)
        loss.backward()
        opt.step()
    return net


def _sweep_pooled(model, episode, lr, steps, alpha):
    """Another right frozen_blocks_sweep: all tasks' hits pooled (equal query sets), tensors."""
    ns = solution(NAME)
    found = {}
    for k in range(5):
        rates = ns["layerwise_lrs"](model, lr, 1.0, k)
        hits = []
        for t in range(len(episode)):
            x, y = episode.support_x[t], episode.support_y[t]
            net = ns["finetune_l2sp"](model, x, y, rates, steps, alpha, 0.0)
            with torch.no_grad():
                logits = net(episode.query_x[t])
            hits.append(train.accuracy(logits[None], episode.query_y[t][None]))
        found[k] = torch.cat(hits).mean()
    return found


def _accuracy_counted(model, x, y):
    """Another right query_accuracy: the count over the batch size."""
    with torch.no_grad():
        return (model(x).argmax(1) == y).sum().item() / len(y)


OTHER = {
    "block by block": ("q1", _lrs_by_blocks),
    "flattened vectors": ("q2", _penalty_flat),
    "torch.optim.SGD": ("q3", _finetune_sgd),
    "pooled hits, tensors": ("q4", _sweep_pooled),
    "count over size": ("q5", _accuracy_counted),
}


(
    test_a_wrong_answer_fails_with_a_helpful_message,
    test_every_question_has_a_wrong_answer,
    test_other_right_answers_pass_every_case,
) = exercise_tests(NAME, WRONG, OTHER)


def _hidden(qname: str, text: str):
    question = exercise(NAME).question(qname)
    return question, next(c for c in hidden_cases(NAME)[qname] if text in c.label)


def test_a_penalty_that_reads_the_head_by_name_fails_a_hidden_case():
    """The parameters outside start are the new ones, whatever their names."""
    question, case = _hidden("q2", "blocks 0 and 1")
    assert run_case(question, case, solution(NAME)["l2sp_penalty"]) is None

    def by_name(model, start, alpha, beta):
        total = 0.0
        for name, p in model.named_parameters():
            if name.startswith("head."):
                total = total + beta / 2 * p.square().sum()
            else:
                total = total + alpha / 2 * (p - start.get(name, p.detach())).square().sum()
        return total

    assert "the penalty" in run_case(question, case, by_name)


def test_a_sweep_that_ignores_alpha_is_named():
    question = exercise(NAME).question("q4")
    sweep = solution(NAME)["frozen_blocks_sweep"]

    def no_alpha(model, episode, lr, steps, alpha):
        return sweep(model, episode, lr, steps, 0.0)

    case = question.visible[0]
    assert case.kwargs["alpha"] > 0
    assert "alpha is ignored" in run_case(question, case, no_alpha)
