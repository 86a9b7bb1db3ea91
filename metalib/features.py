"""A dataset seen through a frozen feature map: every image embedded once, episodes of vectors.

When a learner sits on top of a *fixed* pre-trained encoder (the black-box learners and the
weight predictor of chapter 3), running the encoder again for every episode wastes nearly all
of the compute: the embeddings never change. :func:`embed_classes` runs it once over a split and
returns :class:`FeatureClasses`, which episodes are drawn from exactly like images
(:func:`metalib.tasks.sample_episodes` and :class:`~metalib.tasks.FixedEpisodes` accept it), with
``support_x`` ``(T, N*K, D)`` instead of ``(T, N*K, 1, H, W)``.

The images go through the encoder in batches of randomly mixed classes: with a batch-statistics
norm (``Conv4``) a large mixed batch normalises with nearly the statistics of the whole split,
so an image's embedding does not depend on which task it later appears in.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from metalib.data.base import ImageClasses
from metalib.runtime import progress


@dataclass(frozen=True, eq=False)
class FeatureClasses:
    """Embeddings of a split, by class: ``features[c, m]`` is the vector of image m of class c.

    Attributes:
        name: e.g. ``"glyphs/train (features)"``.
        features: ``(C, M, D)`` float.
    """

    name: str
    features: torch.Tensor

    def __post_init__(self) -> None:
        if self.features.dim() != 3 or not self.features.is_floating_point():
            raise ValueError(
                f"features must be a float tensor (classes, per_class, D), got "
                f"{self.features.dtype} of shape {tuple(self.features.shape)}"
            )

    @property
    def n_classes(self) -> int:
        return self.features.shape[0]

    @property
    def per_class(self) -> int:
        return self.features.shape[1]

    @property
    def feature_dim(self) -> int:
        return self.features.shape[2]

    def get(self, classes: torch.Tensor, samples: torch.Tensor) -> torch.Tensor:
        """Vectors ``(*S, D)`` of the images at ``(classes, samples)`` (two long ``(*S)``)."""
        return self.features[classes, samples]

    def __repr__(self) -> str:
        return (
            f"FeatureClasses({self.name!r}: {self.n_classes} classes x {self.per_class} vectors "
            f"of {self.feature_dim})"
        )


def embed_classes(
    data: ImageClasses,
    encoder: nn.Module,
    batch_size: int = 1024,
    generator: torch.Generator | None = None,
) -> FeatureClasses:
    """Run ``encoder`` once over every image of ``data``, in randomly mixed batches, no gradients.

    Args:
        data: the split (images ``(C, M, H, W)``).
        encoder: ``(B, 1, H, W) -> (B, D)``, e.g. a pre-trained ``Conv4``'s ``.body``; its device
            is used.
        batch_size: about this many images per forward pass (the split is cut into equal
            chunks); large batches give stable batch statistics.
        generator: draws the order of the images (``None``: a fixed order from seed 0).

    Returns:
        :class:`FeatureClasses` with ``features`` ``(C, M, D)`` on the CPU.
    """
    if batch_size < 2:
        raise ValueError(f"batch_size must be at least 2 (batch statistics), got {batch_size}")
    device = next(iter(encoder.parameters()), torch.empty(0)).device
    c, m = data.n_classes, data.per_class
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    order = torch.randperm(c * m, generator=generator)
    # nearly equal chunks: no small last batch with noisy statistics
    chunks = order.tensor_split(max(1, round(c * m / batch_size)))
    out = None
    with torch.no_grad():
        for idx in progress(chunks, desc=f"embedding {data.name}"):
            x = data.get(idx // m, idx % m).to(device)  # (B, 1, H, W)
            f = encoder(x).float().cpu()
            if out is None:
                out = torch.empty(c * m, f.shape[-1])
            out[idx] = f
    return FeatureClasses(f"{data.name} (features)", out.view(c, m, -1))
