"""Backbones that can run on a swapped-in parameter dict: Conv4 for images, an MLP for regression.

Every learner in the book adapts a network *functionally*: it keeps the weights in a dict, makes
new dicts (``fast = {k: w - lr * g[k] ...}``) and runs the same module on them with
:func:`forward_with` (``torch.func.functional_call``). So second-order MAML, its first-order
variant and ``torch.func.vmap`` over tasks share one code path, and no module is ever mutated.

Both networks split into a ``body`` (the features) and a ``head`` (one ``nn.Linear``), the split
that fine-tuning, prototypical networks and "re-initialise the head" (:func:`with_new_head`) use.
Weights start from torch's default initialisation, which draws from the global generator: call
``metalib.runtime.seed_everything`` before building a network to make it repeatable.
"""

from __future__ import annotations

import copy
import math
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn


class BatchStatNorm2d(nn.BatchNorm2d):
    """Batch normalisation that always uses the statistics of the current batch.

    ``nn.BatchNorm2d(track_running_stats=False)`` computed from plain tensor operations, with the
    same parameters (``weight``, ``bias``) and the same outputs. Why not ``nn.BatchNorm2d``
    itself: backpropagating through ``torch.func.vmap`` of a second-order inner loop over
    ``nn.BatchNorm2d`` gives a wrong meta-gradient, silently (its fused double backward has a
    faulty batching rule; functorch issue #534). Written out, autograd derives it correctly.
    Batch statistics in training and evaluation alike is the MAML convention (Finn et al., 2017):
    each task is normalised by its own support or query batch, and no running state is mutated.

    The kernel is chosen when the layer is built (``fused``), never by the code that calls it.
    PyTorch's fused kernel (``F.batch_norm(training=True)``: one pass for the statistics, one for
    the output, one fused backward) gives the same values and gradients up to rounding (in
    float32 on channels-last tensors its sums round a few times more) and is several times faster
    on a CPU; its double backward is right too, but slower than the plain operations'. It must
    not run under ``torch.func.vmap``, whose batching rule for it is wrong (the plain operations
    are what the vectorised paths of :mod:`metalib.maml` run: they take a plain copy with
    :func:`with_batch_norm_kernel`).

    Args:
        num_features: channels ``C``.
        eps: added to the variance.
        fused: use PyTorch's fused kernel (faster; not under ``vmap``).
    """

    def __init__(self, num_features: int, eps: float = 1e-5, fused: bool = False) -> None:
        super().__init__(num_features, eps=eps, affine=True, track_running_stats=False)
        if not isinstance(fused, bool):
            raise ValueError(f"fused must be True or False, got {fused!r}")
        self.fused = fused

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, fused={self.fused}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise ``(B, C, H, W)`` per channel over the batch and the pixels."""
        if self.fused:
            return F.batch_norm(x, None, None, self.weight, self.bias, training=True, eps=self.eps)
        # Centred first, then the mean square: the two-pass variance, as stable as x.var() but
        # several times faster on a CPU (x.var's reduction over (0, 2, 3) is slow there). Sums
        # divided by n, as mean()'s backward would divide every element of the big tensor.
        n = x.shape[0] * x.shape[2] * x.shape[3]
        x = x - x.sum(dim=(0, 2, 3), keepdim=True) / n
        var = x.square().sum(dim=(0, 2, 3), keepdim=True) / n  # biased, as nn.BatchNorm2d
        scale = torch.rsqrt(var + self.eps) * self.weight.view(1, -1, 1, 1)
        return x * scale + self.bias.view(1, -1, 1, 1)


class Conv4(nn.Module):
    """The four-block convolutional backbone of few-shot learning ("Conv4").

    Each block is conv 3x3 (padding 1) -> batch norm (batch statistics) -> ReLU -> max-pool 2,
    then the features are flattened and a linear ``head`` gives the logits (Vinyals et al.,
    2016; Finn et al., 2017). A 28 x 28 image shrinks 28 -> 14 -> 7 -> 3 -> 1, so
    ``feature_dim = hidden``; in general ``hidden * (image_size // 16) ** 2``.

    Args:
        n_classes: outputs of the head (N for N-way episodes).
        in_channels: channels of the input images (1 for every dataset here).
        hidden: channels of every block (64 in the papers).
        image_size: side of the square input images; at least 16 to survive four poolings.
        norm: ``"batch"`` (the default) normalises every batch with its own statistics, in
            training and evaluation alike (:class:`BatchStatNorm2d`); ``"running"`` uses
            ``nn.BatchNorm2d``, which keeps running statistics in training and normalises with
            them in ``eval()`` mode: the usual classifier, and the source model of test-time
            adaptation (:mod:`metalib.tta`), whose BN adaptation swaps them for the test batch's.
        fused_norm: with ``norm="batch"``, PyTorch's fused batch-norm kernel (several times faster
            on a CPU, same values up to rounding; see :class:`BatchStatNorm2d`). The learners
            that never run under ``torch.func.vmap`` build their networks with it.

    Example:
        >>> net = Conv4(n_classes=5)
        >>> net(torch.rand(10, 1, 28, 28)).shape
        torch.Size([10, 5])
    """

    def __init__(
        self,
        n_classes: int = 5,
        in_channels: int = 1,
        hidden: int = 64,
        image_size: int = 28,
        norm: str = "batch",
        fused_norm: bool = False,
    ) -> None:
        super().__init__()
        for name, value in (("n_classes", n_classes), ("in_channels", in_channels)):
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if hidden < 1:
            raise ValueError(f"hidden (channels per block) must be at least 1, got {hidden}")
        if image_size < 16:
            raise ValueError(
                f"image_size {image_size} does not survive four 2x2 poolings; use images of "
                "at least 16 x 16 pixels"
            )
        norms = {"batch": partial(BatchStatNorm2d, fused=fused_norm), "running": nn.BatchNorm2d}
        if norm not in norms:
            raise ValueError(f"norm must be one of {tuple(norms)}, got {norm!r}")
        if fused_norm and norm != "batch":
            raise ValueError(
                'fused_norm chooses the kernel of norm="batch"; nn.BatchNorm2d (norm="running") '
                "always uses the fused kernel"
            )
        self.in_channels, self.image_size = in_channels, image_size
        blocks = []
        for i in range(4):
            blocks.append(
                nn.Sequential(
                    nn.Conv2d(in_channels if i == 0 else hidden, hidden, 3, padding=1),
                    norms[norm](hidden),
                    nn.ReLU(),
                    nn.MaxPool2d(2),
                )
            )
        self.body = nn.Sequential(*blocks, nn.Flatten())
        self.feature_dim = hidden * (image_size // 16) ** 2
        self.head = nn.Linear(self.feature_dim, n_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Embed ``(B, in_channels, H, W)`` images into ``(B, feature_dim)`` features."""
        expected = (self.in_channels, self.image_size, self.image_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"Conv4 expects images of shape (B, {', '.join(map(str, expected))}), got "
                f"{tuple(x.shape)}; flatten the task axis first (x.flatten(0, 1)) or build "
                "Conv4 with matching in_channels and image_size"
            )
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, n_classes)`` for images ``(B, in_channels, H, W)``."""
        return self.head(self.features(x))


def fast_conv4(n_classes: int = 5, hidden: int = 64, image_size: int = 28) -> Conv4:
    """A :class:`Conv4` built for speed, the book's one choice of it: PyTorch's fused batch-norm
    kernel (``fused_norm``) and channels-last weights, the layout oneDNN's convolutions and
    pooling run fastest in on a CPU (``benchmarks/maml_speed.py``). The same values as a plain
    ``Conv4`` up to rounding; not for ``torch.func.vmap`` (see :class:`BatchStatNorm2d`)."""
    net = Conv4(n_classes, hidden=hidden, image_size=image_size, fused_norm=True)
    return net.to(memory_format=torch.channels_last)


class MLP(nn.Module):
    """A ReLU multilayer perceptron: the regression network of MAML's sinusoid experiment.

    Two hidden layers of 40 units by default (Finn et al., 2017, section 5.1).

    Args:
        in_features: size of the input's last axis.
        out_features: outputs of the linear ``head``.
        hidden: widths of the hidden layers (``()`` gives a linear model).

    Example:
        >>> MLP()(torch.zeros(10, 1)).shape
        torch.Size([10, 1])
    """

    def __init__(
        self, in_features: int = 1, out_features: int = 1, hidden: tuple[int, ...] = (40, 40)
    ) -> None:
        super().__init__()
        widths = (in_features, *hidden)
        if min(widths) < 1 or out_features < 1:
            raise ValueError(
                f"every layer needs at least 1 unit; got in_features={in_features}, "
                f"hidden={tuple(hidden)}, out_features={out_features}"
            )
        layers: list[nn.Module] = []
        for a, b in zip(widths[:-1], widths[1:], strict=True):
            layers += [nn.Linear(a, b), nn.ReLU()]
        self.in_features = in_features
        self.body = nn.Sequential(*layers)
        self.feature_dim = widths[-1]
        self.head = nn.Linear(self.feature_dim, out_features)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Hidden features ``(*B, feature_dim)`` of inputs ``(*B, in_features)``."""
        if x.dim() < 1 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"MLP expects inputs of shape (..., {self.in_features}), got {tuple(x.shape)}; "
                "a batch of scalars needs a trailing axis (x.unsqueeze(-1))"
            )
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Outputs ``(*B, out_features)`` for inputs ``(*B, in_features)``."""
        return self.head(self.features(x))


def params(module: nn.Module) -> dict[str, torch.Tensor]:
    """The module's own parameters by name (the live tensors, not copies)."""
    return dict(module.named_parameters())


def forward_with(
    module: nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor
) -> torch.Tensor:
    """Run ``module`` on ``x`` with the tensors of ``params`` in place of its own.

    Args:
        module: the network; it is not modified.
        params: tensors by parameter (or buffer) name, e.g. adapted "fast weights". Names that
            are missing fall back to the module's own tensors, so a dict holding only the
            head's weights adapts only the head.
        x: the input batch, as ``module`` expects it.

    Returns:
        ``module(x)`` computed with ``params``; gradients flow to the tensors in ``params``.

    Raises:
        ValueError: ``params`` names a tensor the module does not have (a typo, or the dict of
            another network), which ``functional_call`` would otherwise ignore silently.
    """
    known = set(dict(module.named_parameters())) | set(dict(module.named_buffers()))
    unknown = sorted(set(params) - known)
    if unknown:
        raise ValueError(
            f"params has names that {type(module).__name__} does not have: {unknown}; "
            f"its parameters are named like {sorted(known)[:4]}"
        )
    return torch.func.functional_call(module, params, (x,))


def with_batch_norm_kernel(module: nn.Module, fused: bool) -> nn.Module:
    """``module`` with every :class:`BatchStatNorm2d` on the kernel ``fused`` asks for.

    ``module`` itself when they all are already; otherwise a shallow copy of its layers that
    shares its parameter and buffer tensors (so :func:`forward_with` and gradients see the same
    weights), ``module`` unchanged. How :mod:`metalib.maml` runs its support steps on plain
    operations and its fast loop's queries on the fused kernel, whatever a network was built
    with.
    """
    norms = [m for m in module.modules() if isinstance(m, BatchStatNorm2d)]
    if all(m.fused == fused for m in norms):
        return module
    return _with_kernel(module, fused)


def _with_kernel(module: nn.Module, fused: bool) -> nn.Module:
    twin = copy.copy(module)  # a new object; its parameters and buffers are the same tensors
    if isinstance(twin, BatchStatNorm2d):
        twin.fused = fused
    twin._modules = {k: _with_kernel(m, fused) for k, m in module._modules.items()}
    return twin


def embed_tasks(
    encoder: nn.Module, support_x: torch.Tensor, query_x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Embed each task's support and query images, one batch per task.

    Args:
        encoder: maps ``(B, C, H, W)`` images to ``(B, D)`` features (e.g. ``Conv4().body``).
        support_x: ``(T, S, C, H, W)``; query_x: ``(T, P, C, H, W)``.

    Returns:
        ``(T, S, D)`` and ``(T, P, D)``. Support and queries of a task go through the encoder
        together, so a batch-statistics norm sees one task at a time (never two tasks mixed).
    """
    if support_x.dim() < 3 or query_x.dim() != support_x.dim():
        raise ValueError(
            f"support_x (T, S, ...) and query_x (T, P, ...) need a task axis and the same item "
            f"shape, got {tuple(support_x.shape)} and {tuple(query_x.shape)}"
        )
    s = support_x.shape[1]
    out = [encoder(torch.cat([sx, qx])) for sx, qx in zip(support_x, query_x, strict=True)]
    features = torch.stack(out)  # (T, S + P, D)
    return features[:, :s], features[:, s:]


def with_new_head(
    model: nn.Module, n_classes: int, generator: torch.Generator | None = None
) -> nn.Module:
    """A copy of ``model`` with a freshly initialised head ``Linear(feature_dim, n_classes)``.

    The original is left untouched (the body is deep-copied). The new head is drawn like
    ``nn.Linear``'s default: weights and bias uniform in ``±1/sqrt(feature_dim)``.

    Args:
        model: a network with a ``head`` and a ``feature_dim`` (``Conv4``, ``MLP``).
        n_classes: outputs of the new head.
        generator: the source of randomness for the head (``None``: torch's global generator).
    """
    head = getattr(model, "head", None)
    if not isinstance(head, nn.Linear) or not hasattr(model, "feature_dim"):
        raise ValueError(
            f"{type(model).__name__} has no linear `head` and `feature_dim`; "
            "with_new_head works on Conv4 and MLP"
        )
    if n_classes < 1:
        raise ValueError(f"n_classes must be at least 1, got {n_classes}")
    fresh = nn.Linear(model.feature_dim, n_classes, dtype=head.weight.dtype)
    bound = 1.0 / math.sqrt(model.feature_dim)
    with torch.no_grad():
        # drawn on the CPU so that a CPU generator works for a model on any device
        fresh.weight.uniform_(-bound, bound, generator=generator)
        fresh.bias.uniform_(-bound, bound, generator=generator)
    new = copy.deepcopy(model)
    new.head = fresh.to(head.weight.device)
    return new
