"""Classifier weights predicted from activations, on a frozen pre-trained feature map.

Qiao et al. (2018), "Few-Shot Image Recognition by Predicting Parameters from Activations": the
last-layer weights of a well trained classifier look like the mean activations of their
classes, so a new class's weights can be *predicted* from its few support activations instead
of fitted. For each support class n, with a(x) the unit-length activation of image x under a
pre-trained feature map,

    ā_n = mean of a(x) over class n's support,    w_n = φ(ā_n),

and a query is scored ``scale * <a(q), w_n / ||w_n||>``, a cosine classifier with a learnable
scale. φ is category-agnostic (one map for every class) and is meta-trained on episodes while
the feature map stays frozen, so gradients reach φ only through the support activations (the
predicted weights); the query activations are constants. φ here is a linear map started at the
identity, so the untrained predictor is exactly a cosine-prototype classifier on the
pre-trained features (Snell et al., 2017; Chen et al., 2019) and meta-training can only move
away from that baseline where it helps.

:class:`WeightPredictor` is an *episodic classifier* (``model(support_x, support_y, query_x,
n_way) -> logits``), trained and scored with :func:`metalib.train.episode_loss` and
:func:`metalib.train.episode_accuracy_fn`.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from metalib.blackbox import fit_on_features
from metalib.features import FeatureClasses
from metalib.nets import embed_tasks
from metalib.protonet import logits, prototypes
from metalib.runtime import Budget
from metalib.tasks import Episode
from metalib.train import episode_logits
from metalib.trained import Run


class WeightPredictor(nn.Module):
    """Cosine classifier whose class weights φ(ā_n) come from a frozen feature map's activations.

    Args:
        encoder: a pre-trained ``(B, C, H, W) -> (B, D)`` feature map, e.g. the ``.body`` of a
            Conv4 trained with :func:`metalib.finetune.pretrain` on all meta-training classes.
            The predictor keeps a frozen copy (``requires_grad=False``, run under
            ``torch.no_grad``), so the network passed in is left as it was.
        feature_dim: D, the size of the activations.
        scale: the initial scale of the cosine logits (about 10 gives a confident softmax).
        learn_scale: make the scale a parameter (stored as its logarithm, to stay positive).

    Attributes:
        phi: ``nn.Linear(D, D)`` with weight = identity and bias = 0 at initialisation.
    """

    def __init__(
        self, encoder: nn.Module, feature_dim: int, scale: float = 10.0, learn_scale: bool = True
    ) -> None:
        super().__init__()
        if feature_dim < 1:
            raise ValueError(f"feature_dim must be at least 1, got {feature_dim}")
        if not scale > 0:
            raise ValueError(f"scale must be positive, got {scale}")
        self.encoder = copy.deepcopy(encoder).requires_grad_(False)
        self.feature_dim = feature_dim
        self.phi = nn.Linear(feature_dim, feature_dim)
        with torch.no_grad():
            self.phi.weight.copy_(torch.eye(feature_dim))
            self.phi.bias.zero_()
        log_s = torch.tensor(math.log(scale))
        if learn_scale:
            self.log_scale = nn.Parameter(log_s)
        else:
            self.register_buffer("log_scale", log_s)

    @property
    def scale(self) -> torch.Tensor:
        """The current scale of the logits (a 0-d tensor)."""
        return self.log_scale.exp()

    def activations(
        self, support_x: torch.Tensor, query_x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Frozen features ``(T, S, D)`` and ``(T, P, D)`` of the images, as constants."""
        with torch.no_grad():
            sf, qf = embed_tasks(self.encoder, support_x, query_x)
        if sf.shape[-1] != self.feature_dim:
            raise ValueError(
                f"the encoder gives {sf.shape[-1]} features, but the predictor was built with "
                f"feature_dim={self.feature_dim}"
            )
        return sf, qf

    def predict_weights(
        self,
        support_features: torch.Tensor,
        support_y: torch.Tensor,
        n_way: int,
    ) -> torch.Tensor:
        """Unit-length classifier weights w_n / ||w_n|| with w_n = φ(ā_n), one per class.

        Args:
            support_features: ``(T, N*K, D)`` activations of the support images.
            support_y: ``(T, N*K)`` long labels in ``0..N-1``; every class needs a shot.
            n_way: N.

        Returns:
            ``(T, N, D)``; row n depends on class n's support only. At the identity
            initialisation it is the normalised mean of the normalised activations.
        """
        shape = support_features.shape
        if len(shape) != 3 or shape[-1] != self.feature_dim:
            raise ValueError(
                f"support_features must be (T, N*K, {self.feature_dim}), got "
                f"{tuple(support_features.shape)}",
            )
        normed = F.normalize(support_features, dim=-1)
        mean = prototypes(normed, support_y, n_way)  # ā (T, N, D)
        return F.normalize(self.phi(mean), dim=-1)

    def forward(
        self,
        support_x: torch.Tensor,
        support_y: torch.Tensor,
        query_x: torch.Tensor,
        n_way: int,
    ) -> torch.Tensor:
        """Logits ``(T, P, N)`` of the queries ``(T, P, C, H, W)`` given the support set."""
        sf, qf = self.activations(support_x, query_x)
        weights = self.predict_weights(sf, support_y, n_way)
        return logits(qf, weights, "cosine", self.scale)


@dataclass(frozen=True)
class Config:
    """The book's weight predictor (chapter 3): φ meta-trained on 5-way 1-shot tasks of a frozen
    backbone's embeddings (5 queries per class, 16 tasks a step, Adam).

    Attributes:
        feature_dim: D, the size of the embeddings.
        lr: Adam's learning rate.
        steps: meta-training steps.
    """

    feature_dim: int = 64
    lr: float = 1e-3
    steps: int = 1_000

    @classmethod
    def preset(cls, budget: Budget, **changes) -> Config:
        """The book's recipe at ``budget``: 1,000 steps, or 5,000 for ``long``."""
        return cls(**{"steps": budget.pick(default=1_000, long=5_000), **changes})


def build(config: Config, data: FeatureClasses) -> WeightPredictor:
    """The untrained predictor (φ = identity: cosine prototypes); it reads embeddings."""
    return WeightPredictor(nn.Identity(), config.feature_dim)


def train(
    config: Config, data: FeatureClasses, generator: torch.Generator, device: torch.device
) -> Run:
    """Meta-train the predictor on ``data`` (:func:`metalib.blackbox.fit_on_features`)."""
    model = build(config, data).to(device)
    history = fit_on_features(
        model, data, config.steps, config.lr, generator, desc="weight predictor"
    )
    return Run(model, history)


def predict(config: Config, model: nn.Module, episode: Episode) -> torch.Tensor:
    """Logits ``(T, N*Q, N)`` of ``episode``'s queries (embeddings): one pass, no gradient."""
    return episode_logits(model, episode)
