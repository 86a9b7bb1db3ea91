"""Exercise 05_learned_optimizers: wrong answers name their mistake; other right answers pass."""

from __future__ import annotations

import copy
import math

import torch

from conftest import (
    exercise_tests,
    solution,
)
from metalib.optimizees import torch_curve

NAME = "05_learned_optimizers"


def _sol(function: str):
    return solution(NAME)[function]


def _features(variant: str):
    def lopt_features(grad, theta, momenta, betas, t, timescales):
        if len(betas) != len(momenta) and variant != "no ValueError":
            raise ValueError("one momentum per beta")
        new = []
        for k, b in enumerate(betas):
            m = b * momenta[k] + (grad if variant == "no 1-β" else (1 - b) * grad)
            if variant == "in place":
                momenta[k] = m
            new.append(m)
        new = torch.stack(new)
        fed = momenta if variant == "old momenta" else new
        x = torch.stack([grad, theta, *fed], dim=-1)
        time = torch.tanh(
            t / torch.tensor(timescales, dtype=grad.dtype) - (0 if variant == "no -1" else 1)
        )
        time = time.expand(*grad.shape, len(timescales))
        if variant == "time normalised":
            x = torch.cat([x, time], dim=-1)
        dims = (0, 1) if variant == "batch" else 1
        square = x.square().sum(dims, keepdim=True)
        if variant != "l2":
            square = square / (x.shape[1] * (x.shape[0] if variant == "batch" else 1))
        x = x / (square.sqrt() if variant == "no eps" else (square + 1e-5).sqrt())
        if variant != "time normalised":
            x = torch.cat([x, time], dim=-1)
        return (x.movedim(-1, 0) if variant == "first axis" else x), new

    return lopt_features


def _step(variant: str):
    def lopt_step(mlp, grad, theta, momenta, t, hyper):
        x, new = _sol("lopt_features")(grad, theta, momenta, hyper["betas"], t, hyper["timescales"])
        if variant == "no graph":
            with torch.no_grad():
                out = mlp(x)
        else:
            out = mlp(x)
        d, m = out.unbind(-1)
        if variant == "swapped":
            d, m = m, d
        size = m if variant == "no exp" else torch.exp(hyper["exp_mult"] * m)
        step = (1.0 if variant == "no step_mult" else hyper["step_mult"]) * d * size
        return -step if variant == "minus" else step, momenta if variant == "old" else new

    return lopt_step


def _meta(variant: str):
    def truncated_meta_loss(mlp, hyper, problems, steps, truncation):
        if truncation < 1 and variant != "no ValueError":
            raise ValueError("truncation must be at least 1")
        lopt_step = _sol("lopt_step")
        theta = problems.theta0.detach()
        momenta = theta.new_zeros(len(hyper["betas"]), *theta.shape)
        total, chunk = theta.new_zeros(()), theta.new_zeros(())
        if variant == "θ0 counted":
            total = problems.loss(theta).mean()
        for t in range(steps):
            if t % truncation == 0 and variant != "full":
                theta = theta.detach()
                total, chunk = total + chunk / (truncation if variant == "chunk mean" else 1), 0
            if variant == "second order":
                theta = theta if theta.requires_grad else theta.detach().requires_grad_()
                (g,) = torch.autograd.grad(problems.loss(theta).sum(), theta, create_graph=True)
            else:
                leaf = theta.detach().requires_grad_()
                (g,) = torch.autograd.grad(problems.loss(leaf).sum(), leaf)
            fed = theta.detach() if variant == "θ detached" else theta
            clock = t % truncation if variant == "clock" else t
            step, momenta = lopt_step(mlp, g, fed, momenta, clock, hyper)
            theta = theta - step
            chunk = chunk + problems.loss(theta).mean()
        last = steps - truncation * ((steps - 1) // truncation)
        total = total + chunk / (last if variant == "chunk mean" else 1)
        return torch.tensor(total.item(), dtype=total.dtype) if variant == "item" else total

    return truncated_meta_loss


def _race(variant: str):
    def optimizer_race(mlp, hyper, train, test, steps, truncation, meta_steps, meta_lr, lrs):
        lopt_step, meta_loss = _sol("lopt_step"), _sol("truncated_meta_loss")

        def final(curve):
            value = curve[1:].mean() if variant == "mean over steps" else curve[-1].mean()
            value = value.item()
            if variant == "nan":
                return value if math.isfinite(value) else math.nan
            return value if math.isfinite(value) and value <= 1e6 else math.inf

        def run(net, problems):
            theta = problems.theta0.detach()
            momenta = theta.new_zeros(len(hyper["betas"]), *theta.shape)
            losses = [problems.loss(theta).detach()]
            for t in range(steps):
                leaf = theta.detach().requires_grad_()
                (g,) = torch.autograd.grad(problems.loss(leaf).sum(), leaf)
                with torch.no_grad():
                    step, momenta = lopt_step(net, g, theta, momenta, t, hyper)
                    theta = theta - step
                losses.append(problems.loss(theta).detach())
            return final(torch.stack(losses))

        seen = train if variant == "train" else test
        result = {
            name: [final(torch_curve(cls, lr, seen.loss, seen.theta0, steps)) for lr in lrs]
            for name, cls in (("sgd", torch.optim.SGD), ("adam", torch.optim.Adam))
        }
        lopt = mlp if variant == "in place" else copy.deepcopy(mlp)
        result["untrained"] = run(lopt, seen)
        opt = torch.optim.Adam(lopt.parameters(), lr=meta_lr)
        for _ in range(0 if variant == "untrained" else meta_steps):
            if variant == "per chunk":
                theta, state = train.theta0.detach(), None
                for start in range(0, steps, truncation):
                    length = min(truncation, steps - start)
                    loss, theta, state = _chunk(lopt, hyper, train, theta, state, start, length)
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                continue
            loss = meta_loss(lopt, hyper, train, steps, steps if variant == "full" else truncation)
            opt.zero_grad()
            loss.backward()
            opt.step()
        result["meta_trained"] = run(lopt, seen)
        return result

    return optimizer_race


def _chunk(mlp, hyper, problems, theta, momenta, start, length):
    """One chunk of the unroll from step ``start``: its loss, θ detached, the momenta after it."""
    theta = theta.detach()
    if momenta is None:
        momenta = theta.new_zeros(len(hyper["betas"]), *theta.shape)
    total = theta.new_zeros(())
    for t in range(start, start + length):
        leaf = theta.detach().requires_grad_()
        (g,) = torch.autograd.grad(problems.loss(leaf).sum(), leaf)
        step, momenta = _sol("lopt_step")(mlp, g, theta, momenta, t, hyper)
        theta = theta - step
        total = total + problems.loss(theta).mean()
    return total, theta.detach(), momenta


WRONG = {
    "momentum without 1 − β": ("q1", _features("no 1-β"), "the (1 − β) is missing"),
    "features of the old momenta": ("q1", _features("old momenta"), "old momenta"),
    "normalised over the batch": ("q1", _features("batch"), "not the batch's"),
    "normalised by the L2 norm": ("q1", _features("l2"), "the L2 norm"),
    "no ε": ("q1", _features("no eps"), "the ε is missing"),
    "time features normalised": ("q1", _features("time normalised"), "are not normalised"),
    "tanh(t / τ)": ("q1", _features("no -1"), "the −1 is missing"),
    "features on the first axis": ("q1", _features("first axis"), "on the last axis"),
    "momenta changed in place": ("q1", _features("in place"), "changed in place"),
    "no ValueError for mismatched betas": ("q1", _features("no ValueError"), "a ValueError"),
    "outputs swapped": ("q2", _step("swapped"), "the outputs are swapped"),
    "magnitude without exp": ("q2", _step("no exp"), "is a log-magnitude"),
    "no step_mult": ("q2", _step("no step_mult"), "not multiplied by step_mult"),
    "step to add": ("q2", _step("minus"), "the sign is flipped"),
    "old momenta returned": ("q2", _step("old"), "old momenta"),
    "MLP under no_grad": ("q2", _step("no graph"), "no graph back to the MLP"),
    "no truncation": ("q3", _meta("full"), "nothing was truncated"),
    "clock restarted per chunk": ("q3", _meta("clock"), "the step number restarted"),
    "chunk sums divided by K": ("q3", _meta("chunk mean"), "divided by its length"),
    "f(θ_0) counted": ("q3", _meta("θ0 counted"), "f(θ_0) was counted"),
    "second-order meta-gradient": ("q3", _meta("second order"), "create_graph"),
    "θ fed detached": ("q3", _meta("θ detached"), "fed to the MLP detached"),
    "meta-loss from .item()": ("q3", _meta("item"), "no graph back to the MLP"),
    "no ValueError for truncation 0": ("q3", _meta("no ValueError"), "a ValueError"),
    "mean loss over the steps": ("q4", _race("mean over steps"), "mean loss over the steps"),
    "final losses on the training problems": ("q4", _race("train"), "the training problems"),
    "the caller's MLP meta-trained": ("q4", _race("in place"), "meta-train a copy"),
    "nan for a diverged run": ("q4", _race("nan"), "counts as inf"),
    "meta-training without truncation": ("q4", _race("full"), "did not truncate"),
    "an Adam step per chunk": ("q4", _race("per chunk"), "after every chunk"),
    "no meta-training": ("q4", _race("untrained"), "meta-training lowered the final loss"),
}


def _features_by_norms(grad, theta, momenta, betas, t, timescales):
    if len(betas) != momenta.shape[0]:
        raise ValueError("one momentum per beta")
    beta = torch.as_tensor(betas, dtype=grad.dtype).view(-1, 1, 1)
    new = torch.lerp(grad.expand_as(momenta), momenta, beta)  # g + β (m − g)
    x = torch.cat([grad[None], theta[None], new]).permute(1, 2, 0)  # (B, P, 2 + K)
    rms = torch.sqrt(torch.linalg.vector_norm(x, dim=1, keepdim=True) ** 2 / x.shape[1] + 1e-5)
    time = [math.tanh(t / tau - 1) for tau in timescales]
    time = torch.tensor(time, dtype=grad.dtype).repeat(*grad.shape, 1)
    return torch.cat([x / rms, time], dim=-1), new


def _step_flat(mlp, grad, theta, momenta, t, hyper):
    x, new = _sol("lopt_features")(grad, theta, momenta, hyper["betas"], t, hyper["timescales"])
    out = mlp(x.reshape(-1, x.shape[-1])).view(*grad.shape, 2)
    log_size = math.log(hyper["step_mult"]) + hyper["exp_mult"] * out[..., 1]
    return out[..., 0] * log_size.exp(), new


def _meta_by_chunks(mlp, hyper, problems, steps, truncation):
    if truncation < 1:
        raise ValueError("truncation must be at least 1")
    W, y = problems.W, problems.y
    theta = problems.theta0
    momenta = theta.new_zeros(len(hyper["betas"]), *theta.shape)
    chunks = []
    for start in range(0, steps, truncation):
        theta, losses = theta.detach(), []
        for t in range(start, min(start + truncation, steps)):
            residual = torch.einsum("bij,bj->bi", W, theta.detach()) - y
            g = 2 * torch.einsum("bij,bi->bj", W, residual)  # ∇ ||Wθ − y||², by hand
            step, momenta = _sol("lopt_step")(mlp, g, theta, momenta, t, hyper)
            theta = theta - step
            losses.append(problems.loss(theta))
        chunks.append(torch.stack(losses).sum(0))  # (B,)
    return torch.stack(chunks).sum(0).mean()


def _race_by_hand(mlp, hyper, train, test, steps, truncation, meta_steps, meta_lr, lrs):
    """SGD by hand, gradients of the quadratics by hand, Adam from torch.optim."""

    def grad(problems, theta):
        residual = torch.einsum("bij,bj->bi", problems.W, theta) - problems.y
        return 2 * torch.einsum("bij,bi->bj", problems.W, residual)

    def final(theta):
        loss = test.loss(theta).mean().item()
        return loss if math.isfinite(loss) and loss <= 1e6 else math.inf

    sgd = []
    for lr in lrs:
        theta = test.theta0.clone()
        for _ in range(steps):
            theta = theta - lr * grad(test, theta)
        sgd.append(final(theta))
    curves = [torch_curve(torch.optim.Adam, lr, test.loss, test.theta0, steps) for lr in lrs]
    adam = torch.stack([c[-1] for c in curves]).mean(1)  # (lrs,)
    adam = torch.where(adam.isfinite() & (adam <= 1e6), adam, torch.inf)

    def learned(net):
        theta = test.theta0.clone()
        momenta = theta.new_zeros(len(hyper["betas"]), *theta.shape)
        with torch.no_grad():
            for t in range(steps):
                step, momenta = _sol("lopt_step")(net, grad(test, theta), theta, momenta, t, hyper)
                theta = theta - step
        return final(theta)

    net = copy.deepcopy(mlp)
    before = learned(net)
    opt = torch.optim.Adam(net.parameters(), lr=meta_lr)
    for _ in range(meta_steps):
        opt.zero_grad()
        _meta_by_chunks(net, hyper, train, steps, truncation).backward()
        opt.step()
    return {
        "sgd": torch.tensor(sgd),
        "adam": adam,
        "untrained": before,
        "meta_trained": learned(net),
    }


OTHER = [
    ("q1", _features_by_norms),
    ("q2", _step_flat),
    ("q3", _meta_by_chunks),
    ("q4", _race_by_hand),
]
OTHER_IDS = ["features by norms", "step on flat rows", "meta-loss by chunks", "race by hand"]


(
    test_a_wrong_answer_fails_with_a_helpful_message,
    test_every_question_has_a_wrong_answer,
    test_other_right_answers_pass_every_case,
) = exercise_tests(NAME, WRONG, OTHER, OTHER_IDS)
