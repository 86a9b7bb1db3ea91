"""Exercise 08_meta_knowledge: wrong answers name their mistake; other right answers pass."""

from __future__ import annotations

import math
from dataclasses import replace

import torch
import torch.nn.functional as F

from conftest import (
    exercise_tests,
    solution,
)
from metalib import hypernet, maml, reweight
from metalib.nets import forward_with

NAME = "08_meta_knowledge"


def _softmax_weights(variant: str):
    def softmax_example_weights(model, params, x, y, val_x, val_y, lr, temperature):
        if variant != "no ValueError" and not temperature > 0:
            raise ValueError("temperature must be positive")
        eps = torch.zeros(len(y), dtype=x.dtype, requires_grad=True)
        fast = reweight.weighted_step(model, params, x, y, eps, 1.0 if variant == "no lr" else lr)
        vx, vy = (x, y) if variant == "train as val" else (val_x, val_y)
        reduction = "sum" if variant == "summed" else "mean"
        val_loss = F.cross_entropy(forward_with(model, fast, vx), vy, reduction=reduction)
        (g,) = torch.autograd.grad(val_loss, eps, create_graph=variant == "graph kept")
        if variant == "chapter":
            w = (-g).clamp(min=0)
            return (w / w.sum()).detach()
        z = {"sign": g / temperature, "times": -g * temperature, "no τ": -g}.get(
            variant, -g / temperature
        )
        if variant == "naive":
            return (z.exp() / z.exp().sum()).detach()
        w = torch.softmax(z, dim=0)
        return w if variant == "graph kept" else w.detach()

    return softmax_example_weights


def _film(variant: str):
    def film_mlp(flat, gamma, beta, x, sizes):
        if variant != "no ValueError":
            solution(NAME)["film_mlp"](flat, gamma, beta, x, sizes)  # its checks
        hidden = list(sizes[1:-1])
        gammas = list(torch.split(gamma, hidden, dim=1))
        betas = list(torch.split(beta, hidden, dim=1))
        if variant == "reversed":  # layer 0 takes the last columns, and so on
            ends = [sum(hidden) - sum(hidden[:i]) for i in range(len(hidden))]
            gammas = [gamma[:, e - n : e] for e, n in zip(ends, hidden, strict=True)]
            betas = [beta[:, e - n : e] for e, n in zip(ends, hidden, strict=True)]
        if variant == "swapped":
            gammas, betas = betas, gammas
        weights = hypernet.unflatten(flat.unsqueeze(0), sizes)
        if variant == "detached":
            weights = {k: w.detach() for k, w in weights.items()}
        h = x
        for i in range(len(sizes) - 1):
            w, b = weights[f"{2 * i}.weight"][0], weights[f"{2 * i}.bias"][0]
            if i == len(sizes) - 2:
                out = h @ w.T + b
                return torch.relu(out) if variant == "relu at the end" else out
            g, s = gammas[i].unsqueeze(1), betas[i].unsqueeze(1)
            if variant == "after":
                h = g * torch.relu(h @ w.T + b) + s
            elif variant == "bias unscaled":
                h = torch.relu(g * (h @ w.T) + b + s)
            else:
                h = torch.relu((1 + g if variant == "residual" else g) * (h @ w.T + b) + s)

    return film_mlp


def _layerwise(variant: str):
    def layerwise_meta_gradient(model, params, log_lrs, episode, loss_fn, steps):
        if variant != "no ValueError":
            if set(log_lrs) != set(params) or any(s.dim() for s in log_lrs.values()):
                raise ValueError("one 0-d log step size per tensor of params")
        names = list(params)
        if variant == "by position":
            log_lrs = dict(zip(names, log_lrs.values(), strict=True))
        alphas = {k: s if variant == "no exp" else s.exp() for k, s in log_lrs.items()}
        losses = []
        for t in range(len(episode.support_x)):
            fast = dict(params)
            for _ in range(1 if variant == "one step" else steps):
                out = forward_with(model, fast, episode.support_x[t])
                support = loss_fn(out, episode.support_y[t])
                second = variant != "first order"
                grads = torch.autograd.grad(support, list(fast.values()), create_graph=second)
                fast = {k: fast[k] - alphas[k] * g for k, g in zip(names, grads, strict=True)}
            losses.append(
                loss_fn(forward_with(model, fast, episode.query_x[t]), episode.query_y[t])
            )
        loss = torch.stack(losses).sum() if variant == "sum" else torch.stack(losses).mean()
        wrt = alphas if variant == "alpha" else log_lrs
        grads = torch.autograd.grad(loss, [wrt[k] for k in names])
        return dict(zip(names, grads, strict=True)), loss.detach()

    return layerwise_meta_gradient


def _learn(variant: str):
    def learn_inner_lr(model, params, episodes, eval_episode, alpha0, meta_lr, inner_steps):
        step = solution(NAME)["layerwise_meta_gradient"]
        start = alpha0 if variant == "alpha" else math.log(alpha0)
        s = torch.tensor(start, dtype=torch.float64, requires_grad=True)
        kind = torch.optim.SGD if variant == "sgd" else torch.optim.Adam
        theta = {k: p.detach().clone().requires_grad_() for k, p in params.items()}
        optimizer = kind([s, *theta.values()] if variant == "theta" else [s], lr=meta_lr)

        def meta_loss(episode):
            lrs = {k: (s.log() if variant == "alpha" else s).detach().clone() for k in theta}
            lrs = {k: v.requires_grad_() for k, v in lrs.items()}
            grads, loss = step(model, theta, lrs, episode, F.mse_loss, inner_steps)
            total = sum(grads.values())
            return (total / s if variant == "alpha" else total), loss

        before, losses = meta_loss(eval_episode)[1].item(), []
        for episode in episodes:
            optimizer.zero_grad()
            s.grad, loss = meta_loss(episode)
            if variant == "theta":  # one more backward for θ's gradient
                cfg = maml.MAMLConfig(inner_steps, 1.0, vectorise=False, fast_loop=False)
                lrs = dict.fromkeys(theta, s.detach().exp())
                maml.task_losses(
                    model, theta, episode, F.mse_loss, replace(cfg, inner_lr=lrs)
                ).mean().backward()
            losses.append(loss.item())
            optimizer.step()
        after = before if variant == "after at start" else meta_loss(eval_episode)[1].item()
        alpha = s.item() if variant in ("log", "alpha") else s.exp().item()
        return {
            "alpha": alpha,
            "train losses": losses,
            "eval loss before": before,
            "eval loss after": after,
        }

    return learn_inner_lr


WRONG = {
    "sign of g flipped": ("q1", _softmax_weights("sign"), "the sign is flipped"),
    "τ multiplied": ("q1", _softmax_weights("times"), "τ multiplied"),
    "no temperature": ("q1", _softmax_weights("no τ"), "temperature was left out"),
    "the chapter's weights": ("q1", _softmax_weights("chapter"), "the chapter's weights"),
    "validation loss summed": ("q1", _softmax_weights("summed"), "validation loss was summed"),
    "g without lr": ("q1", _softmax_weights("no lr"), "missing its factor lr"),
    "exp overflows": ("q1", _softmax_weights("naive"), "exp overflowed"),
    "validation loss on the training batch": (
        "q1",
        _softmax_weights("train as val"),
        "use (val_x, val_y)",
    ),
    "weights not detached": ("q1", _softmax_weights("graph kept"), "return them detached"),
    "temperature not checked": ("q1", _softmax_weights("no ValueError"), "expected a ValueError"),
    "γ and β swapped": ("q2", _film("swapped"), "are swapped"),
    "modulated after the activation": ("q2", _film("after"), "after the activation"),
    "bias not scaled": ("q2", _film("bias unscaled"), "not the bias"),
    "scaled by 1 + γ": ("q2", _film("residual"), "1 + γ"),
    "layers from the wrong end": ("q2", _film("reversed"), "wrong end"),
    "relu after the output layer": ("q2", _film("relu at the end"), "output layer has a relu"),
    "shared weights detached": ("q2", _film("detached"), "no gradient back to the shared"),
    "shapes not checked": ("q2", _film("no ValueError"), "expected a ValueError"),
    "gradient with respect to α": ("q3", _layerwise("alpha"), "with respect to α_k"),
    "s used as the step size": ("q3", _layerwise("no exp"), "s_k itself"),
    "paired by position": ("q3", _layerwise("by position"), "by position"),
    "first order": ("q3", _layerwise("first order"), "this is first order"),
    "one inner step": ("q3", _layerwise("one step"), "only one inner step"),
    "task losses summed": ("q3", _layerwise("sum"), "task losses were summed"),
    "names not checked": ("q3", _layerwise("no ValueError"), "expected a ValueError"),
    "log α returned": ("q4", _learn("log"), "this is s = log α"),
    "Adam on α": ("q4", _learn("alpha"), "Adam updated α itself"),
    "plain SGD": ("q4", _learn("sgd"), "plain SGD"),
    "θ trained too": ("q4", _learn("theta"), "θ was meta-trained too"),
    "eval after at α0": ("q4", _learn("after at start"), "computed with α0"),
}


def _softmax_weights_by_dot_products(model, params, x, y, val_x, val_y, lr, temperature):
    """g_i = −lr ∇L_val(θ)·∇ℓ_i(θ), each ∇ℓ_i a row of the Jacobian of the batch's losses (a
    batch norm makes ℓ_i depend on the whole batch), then log-softmax."""
    if temperature <= 0:
        raise ValueError("temperature must be positive")

    def val_loss(p):
        return F.cross_entropy(torch.func.functional_call(model, p, (val_x,)), val_y)

    def losses(p):
        out = torch.func.functional_call(model, p, (x,))
        return F.cross_entropy(out, y, reduction="none")

    val_grad = torch.func.grad(val_loss)(params)
    per_example = torch.func.jacrev(losses)(params)  # {k: (n, *shape)}
    g = -lr * sum((per_example[k] * val_grad[k]).flatten(1).sum(1) for k in params)
    return torch.log_softmax(-g.detach() / temperature, dim=0).exp()


def _film_batched(flat, gamma, beta, x, sizes):
    """Every layer's weights expanded to B, torch.baddbmm, and the modulations split up front."""
    hidden = list(sizes[1:-1])
    if gamma.shape != (x.shape[0], sum(hidden)) or beta.shape != gamma.shape:
        raise ValueError("gamma and beta must be (B, H)")
    weights = hypernet.unflatten(flat.expand(x.shape[0], -1), sizes)
    gammas, betas = torch.split(gamma, hidden, dim=1), torch.split(beta, hidden, dim=1)
    h = x
    for i in range(len(sizes) - 1):
        w, b = weights[f"{2 * i}.weight"], weights[f"{2 * i}.bias"]
        h = torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))
        if i < len(hidden):
            h = F.relu(torch.addcmul(betas[i].unsqueeze(1), gammas[i].unsqueeze(1), h))
    return h


def _layerwise_with_adapt(model, params, log_lrs, episode, loss_fn, steps):
    """metalib.maml.adapt per task with 0-d step sizes exp(s), then one backward."""
    maml.check_step_sizes(params, log_lrs)
    if any(s.dim() != 0 for s in log_lrs.values()):
        raise ValueError("one 0-d step size per tensor")
    lrs = {k: s.exp() for k, s in log_lrs.items()}
    total = 0.0
    for t in range(len(episode)):
        fast = maml.adapt(
            model, params, episode.support_x[t], episode.support_y[t], loss_fn, steps, lrs
        )
        total = total + loss_fn(forward_with(model, fast, episode.query_x[t]), episode.query_y[t])
    loss = total / len(episode)
    grads = torch.autograd.grad(loss, list(log_lrs.values()))  # log_lrs' own order
    return {k: g for k, g in zip(log_lrs, grads, strict=True)}, loss.detach()


def _learn_with_one_s(model, params, episodes, eval_episode, alpha0, meta_lr, inner_steps):
    """One s shared by every tensor, differentiated directly (loss.backward), no question 3."""
    s = torch.tensor(math.log(alpha0), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.Adam([s], lr=meta_lr)
    config = maml.MAMLConfig(inner_steps, 1.0, vectorise=True)

    def meta_loss(episode):
        lrs = {k: s.exp() for k in params}
        return maml.task_losses(
            model, params, episode, F.mse_loss, replace(config, inner_lr=lrs)
        ).mean()

    with torch.no_grad():
        before = meta_loss(eval_episode).item()
    losses = []
    for episode in episodes:
        loss = meta_loss(episode)
        optimizer.zero_grad()
        loss.backward(inputs=[s])
        optimizer.step()
        losses.append(loss.item())
    with torch.no_grad():
        after = meta_loss(eval_episode).item()
    return {
        "eval loss after": torch.tensor(after),
        "eval loss before": before,
        "train losses": torch.tensor(losses),
        "alpha": math.exp(s.item()),
    }


OTHER = [
    ("q1", _softmax_weights_by_dot_products),
    ("q2", _film_batched),
    ("q3", _layerwise_with_adapt),
    ("q4", _learn_with_one_s),
]
OTHER_IDS = ["dot products and log-softmax", "baddbmm", "maml.adapt", "one s and backward"]


(
    test_a_wrong_answer_fails_with_a_helpful_message,
    test_every_question_has_a_wrong_answer,
    test_other_right_answers_pass_every_case,
) = exercise_tests(NAME, WRONG, OTHER, OTHER_IDS)
