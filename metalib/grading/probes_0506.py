"""Probes of exercises 05_learned_optimizers and 06_test_time_adaptation.

They follow :mod:`metalib.grading.probes` (which re-exports them, so that a case names them as
it names any probe): trusted code that builds a case's inputs from plain specs, calls the
student's function and reduces what comes back to plain data. The builders are shared with the
judges, which rebuild the same inputs to compute the reference answers.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from metalib import tta
from metalib.learned_optim import LSTMOptimizer
from metalib.nets import Conv4

State = list[tuple[torch.Tensor, torch.Tensor]]


def _plain(value: Any) -> Any:
    # probes.py imports this module at its end, so its helpers are looked up at call time.
    from metalib.grading import probes

    return probes.plain(value)


def _state(net: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in net.named_parameters()}


def _changed(before: dict[str, torch.Tensor], net: nn.Module) -> bool:
    return any(not torch.equal(before[k], p) for k, p in _state(net).items())


def _error(err: Exception) -> str:
    return f"{type(err).__name__}: {err}"[:500]


def param_grads(out: Any, net: nn.Module, seed: int) -> dict[str, torch.Tensor] | None:
    """The gradient of ``sum(out * v)`` (seeded ``v``; ``out`` itself when 0-d) with respect to
    each parameter of ``net``, zeros where unused; ``None`` when ``out`` carries no graph."""
    if not isinstance(out, torch.Tensor) or not out.requires_grad or not out.is_floating_point():
        return None
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(out.shape, generator=g, dtype=torch.float64).to(out.dtype)
    named = dict(net.named_parameters())
    grads = torch.autograd.grad((out * v).sum(), list(named.values()), allow_unused=True)
    return {
        k: torch.zeros_like(p) if gr is None else gr.detach()
        for (k, p), gr in zip(named.items(), grads, strict=True)
    }


# ---------------------------------------------------------------------------------------------
# 05_learned_optimizers: gradient preprocessing, one LSTM-optimizer step, the unrolled meta-loss.


def lopt_gradients(
    values: list[float] | None = None,
    shape: tuple[int, ...] = (8,),
    seed: int = 0,
    low: float = -8.0,
    high: float = 2.0,
    dtype: str = "float64",
) -> torch.Tensor:
    """The given ``values``, or seeded gradients of ``shape`` with random signs and magnitudes
    ``10**u``, ``u`` uniform in ``[low, high)`` (both sides of the cut-off ``e^-p``)."""
    if values is not None:
        return torch.tensor(values, dtype=getattr(torch, dtype))
    g = torch.Generator().manual_seed(seed)
    exponent = low + (high - low) * torch.rand(shape, generator=g, dtype=torch.float64)
    sign = torch.randint(0, 2, shape, generator=g).double() * 2 - 1
    return (sign * 10.0**exponent).to(getattr(torch, dtype))


def lstm_optimizer(
    hidden: int, layers: int, seed: int, p: float = 10.0, scale: float = 0.1, dtype: str = "float64"
) -> LSTMOptimizer:
    """An :class:`~metalib.learned_optim.LSTMOptimizer` whose weights depend only on ``seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        opt = LSTMOptimizer(hidden, layers, preprocess=True, p=p, output_scale=scale)
    return opt.to(getattr(torch, dtype))


def lstm_state(opt: LSTMOptimizer, n: int, kind: str, seed: int) -> State:
    """The zero state for ``n`` coordinates, or (``kind="random"``) a seeded one."""
    state = opt.initial_state(n, opt.head.weight)
    if kind == "zeros":
        return state
    g = torch.Generator().manual_seed(seed)
    dtype = opt.head.weight.dtype
    return [
        tuple(0.5 * torch.randn(h.shape, generator=g, dtype=torch.float64).to(dtype) for h in hc)
        for hc in state
    ]


def lopt_preprocess(fn: Callable[..., Any], grad: dict[str, Any], p: float) -> dict[str, Any]:
    """``fn(grad, p)`` on :func:`lopt_gradients`; also whether ``grad`` was changed in place."""
    g = lopt_gradients(**grad)
    keep = g.clone()
    with torch.random.fork_rng(devices=[]):
        out = fn(g, p)
    return {"out": _plain(out), "inputs_changed": not torch.equal(g, keep)}


def lopt_step(
    fn: Callable[..., Any], optimizer: dict[str, Any], grad: dict[str, Any], state: str, seed: int
) -> dict[str, Any]:
    """``fn(cells, head, grad, state, p, output_scale)`` with the layers of
    :func:`lstm_optimizer`; returns the update, the new state, the gradient of ``sum(update * v)``
    with respect to the optimizer's weights, the update for permuted coordinates (and states),
    and whether the weights or the state changed; an error is returned as text."""
    opt, g = lstm_optimizer(**optimizer), lopt_gradients(**grad)
    n = g.numel()
    st = lstm_state(opt, n, state, seed)
    before, keep = _state(opt), [tuple(t.clone() for t in hc) for hc in st]
    args = (optimizer.get("p", 10.0), optimizer.get("scale", 0.1))
    try:
        with torch.random.fork_rng(devices=[]):
            out = fn(opt.cells, opt.head, g, st, *args)
    except NotImplementedError:
        raise
    except Exception as err:  # the judge explains shape errors in terms of coordinates
        return {"raised": _error(err)}
    result: dict[str, Any] = {
        "model_changed": _changed(before, opt),
        "state_changed": not all(
            torch.equal(a, b)
            for hc, kc in zip(st, keep, strict=True)
            for a, b in zip(hc, kc, strict=True)
        ),
    }
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        what = f"a {type(out).__name__}" + (
            f" of length {len(out)}" if isinstance(out, (tuple, list)) else ""
        )
        return {**result, "problem": f"it returned {what}; return a pair (update, new_state)"}
    update, new_state = out
    result.update(update=_plain(update), state=_plain(new_state))
    result["grads"] = param_grads(update, opt, seed + 1)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 2))
    try:
        with torch.random.fork_rng(devices=[]):
            moved = fn(opt.cells, opt.head, g[perm], [(h[perm], c[perm]) for h, c in keep], *args)
        result["permuted"] = _plain(moved[0])
    except Exception:  # the unpermuted call worked; the judge only needs to know this failed
        result["permuted"] = None
    result["perm"] = perm
    return result


def lopt_problems(
    B: int, M: int, D: int, seed: int, dtype: str = "float64"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``W (B, M, D)``, ``y (B, M)``, ``theta0 (B, D)``: standard normal, as in the paper, with
    ``W`` scaled by ``1/sqrt(D)`` so the losses stay of order ``M``."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(B, M, D, generator=g, dtype=torch.float64) / math.sqrt(D)
    y = torch.randn(B, M, generator=g, dtype=torch.float64)
    theta0 = torch.randn(B, D, generator=g, dtype=torch.float64)
    return tuple(t.to(getattr(torch, dtype)) for t in (W, y, theta0))


def lopt_meta_loss(
    fn: Callable[..., Any], optimizer: dict[str, Any], problems: dict[str, Any], steps: int
) -> dict[str, Any]:
    """``fn(optimizer, W, y, theta0, steps)``: the meta-loss, its gradient with respect to the
    optimizer's weights (``None`` without a graph), whether the weights or inputs changed."""
    opt = lstm_optimizer(**optimizer)
    W, y, theta0 = lopt_problems(**problems)
    before, keep = _state(opt), (W.clone(), y.clone(), theta0.clone())
    with torch.random.fork_rng(devices=[]):
        out = fn(opt, W, y, theta0, steps)
    result: dict[str, Any] = {
        "model_changed": _changed(before, opt),
        "inputs_changed": not all(
            torch.equal(a, b) for a, b in zip((W, y, theta0), keep, strict=True)
        ),
    }
    if not isinstance(out, torch.Tensor) or out.dim() != 0:
        got = f"shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else type(out).__name__
        return {**result, "problem": f"the meta-loss should be a scalar tensor (0-d), got {got}"}
    return {**result, "loss": _plain(out), "grads": param_grads(out, opt, 0)}


# ---------------------------------------------------------------------------------------------
# 06_test_time_adaptation: entropy, the BN parameters TENT updates, a TENT step, the rotation
# loss. Models are small and seeded, with batch norm layers whose affine parameters and running
# statistics are moved off their initial values (so that a wrong choice of statistics shows).


def tta_logits(
    B: int, C: int, seed: int, scale: float = 3.0, dtype: str = "float64"
) -> torch.Tensor:
    """Seeded logits ``(B, C)``: ``scale`` times standard normal (huge for ``scale`` 1000)."""
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(B, C, generator=g, dtype=torch.float64)).to(getattr(torch, dtype))


def tta_entropy(
    fn: Callable[..., Any],
    B: int,
    C: int,
    seed: int,
    scale: float = 3.0,
    dtype: str = "float64",
    learnable: bool = False,
) -> dict[str, Any]:
    """``fn(logits)`` on :func:`tta_logits`; with ``learnable`` the logits require gradients
    and the gradient of ``sum(out * v)`` (seeded ``v``) with respect to them is returned."""
    z = tta_logits(B, C, seed, scale, dtype)
    keep = z.clone()
    if learnable:
        z.requires_grad_(True)
    with torch.random.fork_rng(devices=[]):
        out = fn(z)
    result: dict[str, Any] = {"out": _plain(out), "grad": None}
    result["inputs_changed"] = not torch.equal(z.detach(), keep)
    if learnable and isinstance(out, torch.Tensor) and out.requires_grad:
        g = torch.Generator().manual_seed(seed + 1)
        v = torch.randn(out.shape, generator=g, dtype=torch.float64).to(out.dtype)
        (grad,) = torch.autograd.grad((out * v).sum(), [z], allow_unused=True)
        result["grad"] = None if grad is None else grad.detach()
    return result


def _perturb_norms(net: nn.Module, seed: int) -> nn.Module:
    """Move every normalisation layer's affine parameters and running statistics off their
    initial values (as training would), seeded."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in net.modules():
            for name in ("weight", "bias", "running_mean", "running_var"):
                t = getattr(module, name, None)
                is_norm = isinstance(module, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm))
                if t is None or not (is_norm or isinstance(module, nn.LayerNorm)):
                    continue
                noise = torch.randn(t.shape, generator=g, dtype=torch.float64).to(t.dtype)
                if name == "running_var":
                    t.copy_(0.5 + noise.abs())
                elif name == "weight":
                    t.copy_(1 + 0.3 * noise)
                else:
                    t.copy_(0.3 * noise)
    return net


def tta_model(
    kind: str,
    seed: int,
    n_classes: int = 5,
    hidden: int = 4,
    image_size: int = 16,
    dtype: str = "float32",
) -> nn.Module:
    """A seeded classifier of ``(B, 1, S, S)`` images for 06_test_time_adaptation.

    ``kind``: ``"conv4"`` (a :class:`~metalib.nets.Conv4` with ``nn.BatchNorm2d``, running
    statistics), ``"conv4-batch"`` (batch-statistics norm), ``"mlp"`` (``BatchNorm1d`` layers,
    one of them without affine parameters), ``"mixed"`` (convolutions with ``BatchNorm2d``, a
    ``GroupNorm``, a ``LayerNorm``, a ``BatchNorm2d(affine=False)`` and a ``BatchNorm1d``). The
    model is in ``eval()`` mode.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if kind in ("conv4", "conv4-batch"):
            norm = "running" if kind == "conv4" else "batch"
            net: nn.Module = Conv4(n_classes, 1, hidden, image_size, norm=norm)
        elif kind == "mlp":
            net = nn.Sequential(
                nn.Flatten(),
                nn.Linear(image_size * image_size, 4 * hidden),
                nn.BatchNorm1d(4 * hidden),
                nn.ReLU(),
                nn.Linear(4 * hidden, 2 * hidden),
                nn.BatchNorm1d(2 * hidden, affine=False),
                nn.Tanh(),
                nn.Linear(2 * hidden, n_classes),
            )
        elif kind == "mixed":
            net = nn.Sequential(
                nn.Conv2d(1, hidden, 3, padding=1),
                nn.BatchNorm2d(hidden),
                nn.ReLU(),
                nn.Conv2d(hidden, 2 * hidden, 3, stride=2, padding=1),
                nn.GroupNorm(2, 2 * hidden),
                nn.ReLU(),
                nn.Conv2d(2 * hidden, hidden, 3, stride=2, padding=1),
                nn.BatchNorm2d(hidden, affine=False),
                nn.ReLU(),
                nn.Flatten(),
                nn.LayerNorm(hidden * (image_size // 4) ** 2),
                nn.Linear(hidden * (image_size // 4) ** 2, 4 * hidden),
                nn.BatchNorm1d(4 * hidden),
                nn.ReLU(),
                nn.Linear(4 * hidden, n_classes),
            )
        else:
            raise ValueError(f"unknown model kind {kind!r}; use conv4, conv4-batch, mlp or mixed")
    return _perturb_norms(net, seed + 1).to(getattr(torch, dtype)).eval()


def tta_images(
    B: int, seed: int, image_size: int = 16, dtype: str = "float32", shift: float = 0.3
) -> torch.Tensor:
    """Seeded test images ``(B, 1, S, S)``: uniform noise, dimmed and shifted by ``shift`` (a
    covariate shift: their statistics are not the running statistics of the models)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(B, 1, image_size, image_size, generator=g, dtype=torch.float64)
    return (shift + 0.5 * x).to(getattr(torch, dtype))


def _buffers(net: nn.Module) -> dict[str, torch.Tensor]:
    return {name: b.detach().clone() for name, b in net.named_buffers()}


def tta_collect(
    fn: Callable[..., Any], model: dict[str, Any], start_frozen: bool = False
) -> dict[str, Any]:
    """``fn(model)`` on :func:`tta_model` (every parameter frozen first if ``start_frozen``):
    what it returned, each item named (``param:<name>``, ``buffer:<name>`` or
    ``other:<type and shape>``), the ``requires_grad`` flags after, whether any value changed."""
    net = tta_model(**model)
    if start_frozen:
        net.requires_grad_(False)
    before, buffers = _state(net), _buffers(net)
    with torch.random.fork_rng(devices=[]):
        out = fn(net)
    result: dict[str, Any] = {
        "changed": _changed(before, net)
        or any(not torch.equal(buffers[k], b) for k, b in _buffers(net).items()),
        "requires_grad": {name: p.requires_grad for name, p in net.named_parameters()},
    }
    if isinstance(out, dict):
        return {**result, "problem": "it returned a dict; return a list of the parameters"}
    try:
        items = list(out)
    except TypeError:
        return {**result, "problem": f"it returned a {type(out).__name__}, not a list"}
    params = {id(p): name for name, p in net.named_parameters()}
    bufs = {id(b): name for name, b in net.named_buffers()}
    names = []
    for item in items:
        if id(item) in params:
            names.append(f"param:{params[id(item)]}")
        elif id(item) in bufs:
            names.append(f"buffer:{bufs[id(item)]}")
        elif isinstance(item, torch.Tensor):
            names.append(f"other:a tensor of shape {tuple(item.shape)} (not one of the model's)")
        else:
            names.append(f"other:a {type(item).__name__}")
    return {**result, "items": names}


def tent_model(
    model: dict[str, Any], optim: dict[str, Any]
) -> tuple[nn.Module, torch.optim.Optimizer]:
    """:func:`tta_model` prepared by :func:`metalib.tta.configure_tent`, and a ``torch.optim``
    optimizer (``optim``: ``{"kind": "sgd" | "adam", "lr": .., "momentum": ..}``) over its BN
    affine parameters."""
    net = tta.configure_tent(tta_model(**model))
    settings = dict(optim)
    kind = settings.pop("kind")
    if kind not in ("sgd", "adam"):
        raise ValueError(f"unknown optimizer kind {kind!r}; use sgd or adam")
    make = torch.optim.SGD if kind == "sgd" else torch.optim.Adam
    return net, make(tta.bn_affine_parameters(net), **settings)


def tta_tent(
    fn: Callable[..., Any],
    model: dict[str, Any],
    optim: dict[str, Any],
    batches: list[int],
    seed: int,
) -> dict[str, Any]:
    """``fn(model, x, optimizer)`` once per test batch (``batches`` gives their sizes) on the
    model and optimizer of :func:`tent_model`; returns each call's output, then the model's
    parameters and buffers."""
    net, opt = tent_model(model, optim)
    size, dtype = model.get("image_size", 16), model.get("dtype", "float32")
    outs = []
    with torch.random.fork_rng(devices=[]):
        for i, b in enumerate(batches):
            outs.append(_plain(fn(net, tta_images(b, seed + i, size, dtype), opt)))
    return {"logits": outs, "params": _state(net), "buffers": _buffers(net)}


def tta_encoder(
    kind: str, seed: int, hidden: int = 4, image_size: int = 16, dtype: str = "float32"
) -> tuple[nn.Module, nn.Module]:
    """A seeded encoder ``(N, 1, S, S) -> (N, D)`` and rotation head ``Linear(D, 4)``: a Conv4
    body with batch-statistics norm (``"conv4"``) or a perceptron on the pixels (``"mlp"``)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if kind == "conv4":
            net = Conv4(4, 1, hidden, image_size, norm="batch")
            encoder, dim = net.body, net.feature_dim
        elif kind == "mlp":
            dim = 4 * hidden
            encoder = nn.Sequential(nn.Flatten(), nn.Linear(image_size**2, dim), nn.Tanh())
        else:
            raise ValueError(f"unknown encoder kind {kind!r}; use conv4 or mlp")
        head = nn.Linear(dim, 4)
    kind_dtype = getattr(torch, dtype)
    return _perturb_norms(encoder, seed + 1).to(kind_dtype), head.to(kind_dtype)


def tta_rotation_images(B: int, seed: int, image_size: int = 16, dtype: str = "float32"):
    """Seeded images ``(B, 1, S, S)`` with a bright top-left corner: no two rotations alike."""
    x = tta_images(B, seed, image_size, dtype, shift=0.0)
    x[:, :, : image_size // 4, : image_size // 2] += 0.5
    return x


def tta_rotation(
    fn: Callable[..., Any], encoder: dict[str, Any], B: int, seed: int
) -> dict[str, Any]:
    """``fn(encoder, rotation_head, x)``: the loss, the gradient of the loss with respect to
    the encoder's and the head's weights (``None`` without a graph), whether they changed; an
    error is returned as text."""
    enc, head = tta_encoder(**encoder)
    both = nn.ModuleDict({"encoder": enc, "head": head})
    x = tta_rotation_images(B, seed, encoder.get("image_size", 16), encoder.get("dtype", "float32"))
    before = _state(both)
    try:
        with torch.random.fork_rng(devices=[]):
            out = fn(enc, head, x)
    except NotImplementedError:
        raise
    except Exception as err:  # the judge explains shape errors in terms of rotation axes
        return {"raised": _error(err)}
    result: dict[str, Any] = {"model_changed": _changed(before, both)}
    if not isinstance(out, torch.Tensor) or out.dim() != 0:
        got = f"shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else type(out).__name__
        return {**result, "problem": f"the loss should be a scalar tensor (0-d), got {got}"}
    return {**result, "loss": _plain(out), "grads": param_grads(out, both, 0)}
