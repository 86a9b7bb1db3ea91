"""Embedding a split once through a frozen encoder (metalib.features)."""

import pytest
import torch
from torch import nn

from metalib.features import FeatureClasses, embed_classes
from metalib.tasks import FixedEpisodes, sample_episodes


class PixelSum(nn.Module):
    """A stand-in encoder: (B, 1, H, W) -> (B, 2) = (pixel (0, 0), pixel (0, 1)) * 255."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(()))

    def forward(self, x):
        return torch.stack([x[:, 0, 0, 0], x[:, 0, 0, 1]], -1) * 255 * self.w


def test_every_image_lands_at_its_class_and_sample(tiny_classes):
    feats = embed_classes(tiny_classes, PixelSum(), batch_size=10)
    assert feats.features.shape == (12, 6, 2)
    classes, samples = torch.meshgrid(torch.arange(12), torch.arange(6), indexing="ij")
    torch.testing.assert_close(feats.features, torch.stack([classes, samples], -1).float())


def test_batches_mix_classes_and_are_nearly_equal(tiny_classes):
    seen = []

    class Spy(PixelSum):
        def forward(self, x):
            seen.append(x[:, 0, 0, 0] * 255)
            return super().forward(x)

    embed_classes(tiny_classes, Spy(), batch_size=20)
    sizes = [len(s) for s in seen]
    assert sum(sizes) == 72 and max(sizes) - min(sizes) <= 1
    assert all(len(s.round().unique()) > 3 for s in seen)  # not one class per batch


def test_episodes_of_vectors(tiny_classes, generator):
    feats = embed_classes(tiny_classes, PixelSum())
    ep = sample_episodes(feats, 3, 2, 1, 4, generator)
    assert ep.support_x.shape == (4, 6, 2) and ep.query_x.shape == (4, 3, 2)
    # the vector's first entry is its class: labels follow the episode's classes
    torch.testing.assert_close(
        ep.support_x[..., 0].long(), ep.classes.gather(1, ep.support_y), check_dtype=False
    )
    fixed = FixedEpisodes(feats, 3, 1, 2, n_episodes=5, seed=1)
    assert fixed[0].query_x.shape == (1, 6, 2)


def test_bad_input():
    with pytest.raises(ValueError, match="float tensor"):
        FeatureClasses("x", torch.zeros(3, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="at least 2"):
        embed_classes(None, PixelSum(), batch_size=1)
