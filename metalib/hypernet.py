"""A hypernetwork: a set encoder that reads K points of a function and outputs a whole MLP.

A function f (a sinusoid x -> y, or a glyph as (row, col) -> ink) is represented by a small
MLP, the *target network*. Instead of fitting its weights to the K observed points by gradient
steps (MAML: Finn et al., 2017), a meta-trained network reads the K points as a set and
predicts all the target's weights in one forward pass, φ = h_θ(D_tr) (Ha, Dai and Le, 2017,
"HyperNetworks"; for implicit neural representations, Chen and Wang, 2022, "Transformers as
Meta-Learners for Implicit Neural Representations": "all layer weights are predicted from the
given image/views").

The target network's weights travel as one flat vector per function, ``(B, P)``, in the order
of ``nn.Sequential(Linear, act, Linear, act, ..., Linear).parameters()`` (each layer's weight
row by row, then its bias) -- the same order as :class:`metalib.nets.MLP`'s parameters, so a
predicted vector loads into chapter 2's network unchanged. :func:`functional_mlp` runs B
different MLPs on B batches of inputs at once with batched matrix products.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from metalib.train import History, fit

Sampler = Callable[[int, torch.Generator], tuple[torch.Tensor, ...]]
"""``sample(k, generator) -> (support_x (B, k, d_in), support_y (B, k, d_out), query_x
(B, Q, d_in), query_y (B, Q, d_out))``: a batch of functions, each with k observed points."""


def _check_sizes(sizes: Sequence[int]) -> tuple[int, ...]:
    sizes = tuple(sizes)
    if len(sizes) < 2 or not all(isinstance(s, int) and not isinstance(s, bool) for s in sizes):
        raise ValueError(
            f"sizes must list at least two int layer widths (input, ..., output), e.g. "
            f"(1, 40, 40, 1); got {sizes!r}"
        )
    if min(sizes) < 1:
        raise ValueError(f"every layer width must be at least 1, got sizes={sizes}")
    return sizes


def mlp_shapes(sizes: Sequence[int]) -> list[tuple[str, torch.Size]]:
    """Names and shapes of the target MLP's parameters, in flat-vector order.

    Names are those of ``nn.Sequential(Linear, act, ..., Linear)``: ``"0.weight"``,
    ``"0.bias"``, ``"2.weight"``, ...; a weight is ``(out, in)``, a bias ``(out,)``.

    Example:
        >>> [(n, tuple(s)) for n, s in mlp_shapes((1, 40, 1))]
        [('0.weight', (40, 1)), ('0.bias', (40,)), ('2.weight', (1, 40)), ('2.bias', (1,))]
    """
    sizes = _check_sizes(sizes)
    shapes = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        shapes += [(f"{2 * i}.weight", torch.Size((b, a))), (f"{2 * i}.bias", torch.Size((b,)))]
    return shapes


def n_weights(sizes: Sequence[int]) -> int:
    """P, the number of weights and biases of the MLP with layer widths ``sizes``."""
    return sum(shape.numel() for _, shape in mlp_shapes(sizes))


def unflatten(flat: torch.Tensor, sizes: Sequence[int]) -> dict[str, torch.Tensor]:
    """Split flat weights ``(B, P)`` into named tensors ``(B, *shape)`` (names of mlp_shapes)."""
    shapes = mlp_shapes(sizes)
    p = sum(s.numel() for _, s in shapes)
    if flat.dim() != 2 or flat.shape[1] != p:
        raise ValueError(
            f"flat weights must be (B, {p}) for sizes {tuple(sizes)}, got {tuple(flat.shape)}"
        )
    chunks = flat.split([s.numel() for _, s in shapes], dim=1)
    return {name: c.reshape(-1, *s) for (name, s), c in zip(shapes, chunks, strict=True)}


def functional_mlp(
    flat: torch.Tensor,
    x: torch.Tensor,
    sizes: Sequence[int],
    activation: Callable[[torch.Tensor], torch.Tensor] = torch.relu,
) -> torch.Tensor:
    """Run B MLPs, each with its own weights, on its own inputs: ``(B, n, d_out)``.

    Args:
        flat: ``(B, P)`` weights, one row per function (order of :func:`mlp_shapes`).
        x: ``(B, n, d_in)`` inputs, ``n`` points per function.
        sizes: layer widths ``(d_in, hidden..., d_out)``.
        activation: between layers (none after the last).
    """
    params = unflatten(flat, sizes)
    sizes = tuple(sizes)
    if x.dim() != 3 or x.shape[0] != flat.shape[0] or x.shape[2] != sizes[0]:
        raise ValueError(
            f"x must be (B, n, {sizes[0]}) with B = {flat.shape[0]} "
            f"functions, got {tuple(x.shape)}",
        )
    h, n_layers = x, len(sizes) - 1
    for i in range(n_layers):
        # weights (B, out, in) and biases (B, out), one per function
        w, b = params[f"{2 * i}.weight"], params[f"{2 * i}.bias"]
        # h W^T + b, per function
        h = torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))
        if i < n_layers - 1:
            h = activation(h)
    return h


class HyperNetwork(nn.Module):
    """h_θ: K observed points (x, y) of a function -> all P weights of an MLP that represents it.

    The set encoder is chapter 3's attention learner without its label slots: each point
    becomes a token ``Linear([x, y])``, a transformer encoder without positional encoding
    (the layer settings of :class:`metalib.blackbox.SequenceLearner`, ``kind="attention"``)
    lets every point attend to every other, and the mean over the K tokens (then a LayerNorm)
    is the set's summary z. Attention without positions is permutation-equivariant and the
    mean is invariant, so the prediction does not depend on the order of the points, and any
    K >= 1 works.

    The output layer predicts weights around a learned base, per layer of the target:

        φ = base + s ⊙ head(z),    s = 1 / sqrt(fan_in of the layer each weight belongs to).

    ``base`` starts as a draw of ``nn.Linear``'s default initialisation of the target MLP and
    ``head`` starts small (``init_scale``), so before training every predicted network is a
    well-scaled random MLP whose outputs neither vanish nor explode with depth; ``s`` keeps a
    unit change of ``head(z)`` an equally sized change of every layer's outputs. ``base`` is a
    learned initialisation shared by all functions -- what MAML learns -- and the head learns
    the function-specific offset from it.

    Args:
        sizes: the target MLP's layer widths, e.g. ``(1, 40, 40, 1)``.
        hidden: the encoder's width; layers: transformer layers (at least 1); heads: attention
            heads (must divide ``hidden``).
        init_scale: the spread of the head's initial weights relative to ``1/sqrt(hidden)``.
        generator: draws ``base`` and the head (``None``: torch's global generator); the
            encoder's layers take PyTorch's default initialisation from the global generator.
    """

    def __init__(
        self,
        sizes: Sequence[int],
        hidden: int = 64,
        layers: int = 2,
        heads: int = 4,
        init_scale: float = 0.1,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.sizes = _check_sizes(sizes)
        if hidden < 1 or layers < 1 or heads < 1 or hidden % heads:
            raise ValueError(
                f"need hidden >= 1, layers >= 1 and heads dividing hidden; "
                f"got hidden={hidden}, layers={layers}, heads={heads}",
            )
        if not init_scale >= 0:
            raise ValueError(
                f"init_scale must be 0 or more, got {init_scale}",
            )
        # layer a -> b holds b * a weights and b biases, all with fan-in a
        layer_pairs = zip(self.sizes[:-1], self.sizes[1:], strict=True)
        fans = [torch.full((b * a + b,), float(a)) for a, b in layer_pairs]
        fan_in = torch.cat(fans)
        self.register_buffer("scale", fan_in.rsqrt())  # s: (P,)
        # nn.Linear's default: weights and biases uniform in ±1/sqrt(fan_in)
        u = torch.rand(len(fan_in), generator=generator) * 2 - 1
        self.base = nn.Parameter(u * self.scale)
        self.embed = nn.Linear(self.sizes[0] + self.sizes[-1], hidden)
        layer = nn.TransformerEncoderLayer(
            hidden,
            heads,
            dim_feedforward=2 * hidden,
            dropout=0.0,
            batch_first=True,
        )
        # no nested tensors: they only pay off with padding masks, and warn
        # without one
        self.encoder = nn.TransformerEncoder(
            layer,
            layers,
            enable_nested_tensor=False,
        )
        self.norm = nn.LayerNorm(hidden)
        self.head = nn.Linear(hidden, len(fan_in))
        with torch.no_grad():
            bound = init_scale / math.sqrt(hidden)
            u = torch.rand(self.head.weight.shape, generator=generator)
            u = u * 2 - 1
            self.head.weight.copy_(u * bound)
            self.head.bias.zero_()

    def _check_points(self, x: torch.Tensor, y: torch.Tensor) -> None:
        d_in, d_out = self.sizes[0], self.sizes[-1]
        both_3d = x.dim() == 3 and y.dim() == 3
        if not both_3d or x.shape[2] != d_in or y.shape[2] != d_out:
            raise ValueError(
                f"points must be x (B, K, {d_in}) and y (B, K, {d_out}), "
                f"got {tuple(x.shape)} and {tuple(y.shape)}",
            )
        if x.shape[:2] != y.shape[:2] or x.shape[1] < 1:
            raise ValueError(
                f"x and y must hold the same K >= 1 points of the same B "
                f"functions, got {tuple(x.shape)} and {tuple(y.shape)}",
            )

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Predicted flat weights ``(B, P)`` from K points per function, x ``(B, K, d_in)`` and
        y ``(B, K, d_out)``."""
        self._check_points(x, y)
        # one token per point: (B, K, hidden)
        tokens = self.encoder(self.embed(torch.cat([x, y], dim=-1)))
        z = self.norm(tokens.mean(dim=1))  # (B, hidden): the set's summary
        return self.base + self.scale * self.head(z)

    def predict(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        query_x: torch.Tensor,
    ) -> torch.Tensor:
        """The predicted MLPs' outputs ``(B, Q, d_out)`` at ``query_x`` ``(B, Q, d_in)``."""
        return functional_mlp(self(x, y), query_x, self.sizes)


def query_mse(
    model: HyperNetwork,
    support_x: torch.Tensor,
    support_y: torch.Tensor,
    query_x: torch.Tensor,
    query_y: torch.Tensor,
) -> torch.Tensor:
    """Each function's mean squared error on its queries, ``(B,)``, from K support points.

    Shapes as in :data:`Sampler`. Differentiable; wrap in ``torch.no_grad()`` to evaluate.
    """
    pred = model.predict(support_x, support_y, query_x)
    if pred.shape != query_y.shape:
        raise ValueError(f"query_y must be {tuple(pred.shape)}, got {tuple(query_y.shape)}")
    return (pred - query_y).pow(2).flatten(1).mean(dim=1)


def fit_hypernet(
    model: HyperNetwork,
    sample: Sampler,
    steps: int,
    k_range: tuple[int, int],
    lr: float = 1e-3,
    generator: torch.Generator | None = None,
    desc: str = "hypernetwork",
    log_every: int = 50,
) -> History:
    """Meta-train ``model`` with Adam on the mean query MSE over batches from ``sample``.

    Each step draws K uniformly from ``k_range`` (both ends included), so one network learns
    to read any K in the range, then a batch ``sample(K, generator)``.

    Args:
        model: trained in place.
        sample: ``sample(k, generator) -> (support_x, support_y, query_x, query_y)``, see
            :data:`Sampler`, on the model's device.
        steps: meta-iterations (one batch each).
        k_range: ``(low, high)``, the numbers of observed points to train on.
        lr: Adam's step size.
        generator: draws K and is passed to ``sample`` (``None``: a generator seeded with 0).
        desc, log_every: the progress bar's label and how often the history records.

    Returns:
        The :class:`~metalib.train.History` of ``loss`` (query MSE) and ``k``.
    """
    lo, hi = k_range
    if not 1 <= lo <= hi:
        raise ValueError(
            "k_range must be (low, high) with 1 <= low <= high, "
            f"got {k_range}"
        )  # fmt: skip
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr}")
    gen = generator
    if gen is None:
        gen = torch.Generator().manual_seed(0)
    # the fused kernel updates all P-sized tensors in one pass: about 2x
    # faster on a CPU here
    fused = next(model.parameters()).device.type in ("cpu", "cuda")
    opt = torch.optim.Adam(model.parameters(), lr=lr, fused=fused)

    def step(_: int) -> dict[str, float]:
        k = int(torch.randint(lo, hi + 1, (1,), generator=gen))
        loss = query_mse(model, *sample(k, gen)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"loss": loss.item(), "k": k}

    return fit(step, steps, desc=desc, log_every=log_every)


def pixel_coords(size: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Pixel centres of a ``size`` x ``size`` image as (row, col) in [-1, 1]: ``(size², 2)``.

    Row-major, in the order of ``image.flatten()``.
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}")
    c = (torch.arange(size, dtype=dtype) + 0.5) / size * 2 - 1
    return torch.cartesian_prod(c, c)


def image_points(
    images: torch.Tensor, k: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """K random pixels of each image as points of a function (row, col) -> ink.

    Args:
        images: ``(B, 1, H, H)`` or ``(B, H, H)`` ink in [0, 1].
        k: pixels per image, drawn without replacement (each image its own).
        generator: draws the pixels.

    Returns:
        ``coords (B, k, 2)`` in [-1, 1] (:func:`pixel_coords`) and ``ink (B, k, 1)``.
    """
    if images.dim() == 4 and images.shape[1] == 1:
        images = images[:, 0]
    if images.dim() != 3 or images.shape[1] != images.shape[2]:
        raise ValueError(f"images must be (B, 1, H, H) or (B, H, H), got {tuple(images.shape)}")
    b, size = images.shape[0], images.shape[1]
    if not 1 <= k <= size * size:
        raise ValueError(f"k must lie in 1..{size * size} for {size}x{size} images, got {k}")
    idx = torch.rand(b, size * size, generator=generator).argsort(dim=1)[:, :k]
    idx = idx.to(images.device)
    coords = pixel_coords(size, images.dtype).to(images.device)[idx]  # (B, k, 2)
    ink = images.reshape(b, -1).gather(1, idx).unsqueeze(-1)
    return coords, ink
