"""Non-parametric few-shot learners: pixel nearest neighbour and prototypical networks.

A non-parametric learner does not adapt any weight to a new task: it compares each query with
the support set in some space, with some distance. The simplest choice is the pixels themselves
and the Euclidean distance (:func:`pixel_nearest_neighbour`). Prototypical networks (Snell et al.,
2017, "Prototypical Networks for Few-shot Learning") learn the space instead: an encoder
f_θ maps images to embeddings, each class's *prototype* is the mean embedding of its support
images,

    c_n = (1 / K) Σ_{(x, y) ∈ D_tr, y = n} f_θ(x),

and a query is classified by a softmax over negative distances to the prototypes,
p(y = n | x) ∝ exp(−d(f_θ(x), c_n)), with d the squared Euclidean distance or a scaled cosine
distance (Chen et al., 2019; Oreshkin et al., 2018 for the learned temperature). Meta-training
minimises the cross-entropy of the query labels over episodes. Adapting to a task costs one
forward pass: nothing is fitted at test time.

The functions are stateless (:func:`prototypes`, :func:`logits`); :class:`ProtoNet` holds only the
encoder and the temperature, and is an *episodic classifier* (``model(support_x, support_y,
query_x, n_way) -> logits``), trained and scored with :func:`metalib.train.episode_loss` and
:func:`metalib.train.episode_accuracy_fn`. BatchNorm in the encoder uses batch statistics (as in
chapter 2): :func:`metalib.nets.embed_tasks` normalises each task's support and query images
together, one batch per task.

The book's recipe (chapter 4, and chapter 7's comparison) is :class:`Config`, :func:`build`,
:func:`train` and :func:`predict`; :func:`metalib.trained.train_once` trains it once for the book.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from metalib.data.base import ImageClasses, with_rotations
from metalib.nets import embed_tasks, fast_conv4
from metalib.runtime import Budget
from metalib.tasks import Episode, check_labelled, sample_episodes
from metalib.train import episode_logits, episode_loss, fit
from metalib.trained import Run, with_snapshots

METRICS = ("euclidean", "cosine")


def prototypes(
    support_features: torch.Tensor,
    support_y: torch.Tensor,
    n_way: int,
) -> torch.Tensor:
    """The mean embedding of each class's support examples (Snell et al., 2017, eq. 1).

    Args:
        support_features: ``(T, N*K, D)`` embeddings of the support set.
        support_y: ``(T, N*K)`` long labels in ``0..N-1``; every class needs at least one example.
        n_way: N, the number of classes.

    Returns:
        ``(T, N, D)`` prototypes; ``[t, n]`` is the mean of task t's class-n embeddings.
    """
    check_labelled(support_features, support_y, n_way)
    # one_hot (T, N*K, N)
    one_hot = F.one_hot(support_y, n_way).to(support_features.dtype)
    counts = one_hot.sum(dim=1)  # (T, N)
    if (counts == 0).any():
        t, n = (counts == 0).nonzero()[0].tolist()
        raise ValueError(
            f"class {n} of task {t} has no support example; "
            "every class needs at least one shot"
        )  # fmt: skip
    sums = one_hot.transpose(1, 2) @ support_features  # (T, N, D)
    return sums / counts.unsqueeze(-1)


def logits(
    query_features: torch.Tensor,
    protos: torch.Tensor,
    metric: str = "euclidean",
    temperature: float | torch.Tensor = 1.0,
) -> torch.Tensor:
    """Scores of each query for each class: the negative distance to its prototype, scaled.

    Args:
        query_features: ``(T, P, D)`` embeddings of the queries.
        protos: ``(T, N, D)`` class prototypes.
        metric: ``"euclidean"``: ``-temperature * ||q - c||^2`` (Snell et al., 2017, squared
            distance); ``"cosine"``: ``temperature * cos(q, c)`` (cosine similarity in [-1, 1],
            which needs a temperature of about 10 to give a confident softmax).
        temperature: a positive scale, a float or a one-element tensor (learnable).

    Returns:
        ``(T, P, N)`` logits: ``softmax`` over the last axis is p(y = n | x).
    """
    if metric not in METRICS:
        raise ValueError(
            f"unknown metric {metric!r}; choose one of {METRICS}",
        )
    if query_features.dim() != 3 or protos.dim() != 3:
        raise ValueError(
            f"query_features (T, P, D) and protos (T, N, D) must be 3-D, "
            f"got {tuple(query_features.shape)} and {tuple(protos.shape)}",
        )
    q_shape, p_shape = query_features.shape, protos.shape
    if q_shape[0] != p_shape[0] or q_shape[2] != p_shape[2]:
        raise ValueError(
            f"query_features {tuple(query_features.shape)} and protos "
            f"{tuple(protos.shape)} must agree on the number of tasks T and "
            "the embedding size D",
        )
    if metric == "euclidean":
        # ||q||^2 - 2 q.c + ||c||^2 computed directly
        # (cdist's matmul shortcut is less exact)
        diff = query_features.unsqueeze(2) - protos.unsqueeze(1)
        scores = -diff.square().sum(-1)
    else:
        q = F.normalize(query_features, dim=-1)
        c = F.normalize(protos, dim=-1)
        scores = q @ c.transpose(1, 2)
    return temperature * scores


class ProtoNet(nn.Module):
    """A prototypical network: an encoder, a metric and a temperature (fixed or learned).

    Args:
        encoder: ``(B, C, H, W) -> (B, D)``, e.g. ``Conv4(hidden=64).body``.
        metric: ``"euclidean"`` or ``"cosine"``.
        temperature: initial scale of the logits (1 for Euclidean, ~10 for cosine).
        learn_temperature: make the temperature a parameter (stored as its logarithm, so it
            stays positive).

    Example:
        >>> net = ProtoNet(Conv4().body)
        >>> net(ep.support_x, ep.support_y, ep.query_x, ep.n_way).shape  # doctest: +SKIP
        torch.Size([T, N*Q, N])
    """

    def __init__(
        self,
        encoder: nn.Module,
        metric: str = "euclidean",
        temperature: float = 1.0,
        learn_temperature: bool = False,
    ) -> None:
        super().__init__()
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r}; choose one of {METRICS}")
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.encoder, self.metric = encoder, metric
        log_t = torch.tensor(math.log(temperature))
        if learn_temperature:
            self.log_temperature = nn.Parameter(log_t)
        else:
            self.register_buffer("log_temperature", log_t)

    @property
    def temperature(self) -> torch.Tensor:
        """The current scale of the logits (a 0-d tensor)."""
        return self.log_temperature.exp()

    def forward(
        self,
        support_x: torch.Tensor,
        support_y: torch.Tensor,
        query_x: torch.Tensor,
        n_way: int,
    ) -> torch.Tensor:
        """Logits ``(T, P, N)`` of the queries ``(T, P, C, H, W)`` given the support set."""
        sf, qf = embed_tasks(self.encoder, support_x, query_x)
        return logits(
            qf,
            prototypes(sf, support_y, n_way),
            self.metric,
            self.temperature,
        )


def pixel_nearest_neighbour(episode: Episode) -> torch.Tensor:
    """Classify each query as the label of its nearest support image in pixel space (ℓ2).

    The no-learning baseline of the non-parametric family: no training, no embedding.

    Returns:
        ``(T, P)`` long predicted labels for the queries of ``episode``.
    """
    s = episode.support_x.flatten(2)  # (T, S, pixels)
    q = episode.query_x.flatten(2)  # (T, P, pixels)
    d = (q.unsqueeze(2) - s.unsqueeze(1)).square().sum(-1)  # (T, P, S)
    return episode.support_y.gather(1, d.argmin(-1))


@dataclass(frozen=True)
class Config:
    """How the book meta-trains a ProtoNet (chapter 4): one episode per step, more ways than at
    test time (Snell et al. train 20-way and more to test 5-way), Adam with a cosine schedule.

    Attributes:
        metric: ``"euclidean"`` (temperature 1, fixed) or ``"cosine"`` (temperature learned,
            starting at 10).
        hidden: channels of the Conv4 encoder.
        train_way: N of the training episodes (1 shot each).
        queries: queries per class in the training episodes.
        lr: Adam's learning rate, annealed to 0 over ``steps`` (cosine).
        steps: training episodes.
        rotations: train on every class and its rotations by 90, 180 and 270 degrees as new
            classes (:func:`~metalib.data.base.with_rotations`), as Snell et al. did on Omniglot.
        snapshots: how many times the weights are kept (every ``steps // snapshots`` episodes),
            with the training seconds so far, for an accuracy-against-time curve; 0 for none.
    """

    metric: str = "euclidean"
    hidden: int = 32
    train_way: int = 20
    queries: int = 5
    lr: float = 2e-3
    steps: int = 2_000
    rotations: bool = False
    snapshots: int = 8

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(
                f"unknown metric {self.metric!r}; choose one of {METRICS}",
            )
        for name in ("hidden", "train_way", "queries", "steps"):
            if getattr(self, name) < 1:
                raise ValueError(
                    f"{name} must be at least 1, got {getattr(self, name)}",
                )
        if self.snapshots < 0 or not self.lr > 0:
            raise ValueError(
                "need snapshots >= 0 and lr > 0, "
                f"got {self.snapshots}, {self.lr}"
            )  # fmt: skip

    @classmethod
    def preset(cls, budget: Budget, **changes) -> Config:
        """The book's recipe at ``budget``: 2,000 episodes, or 20,000 for ``long``, of the training
        classes and their rotations (+1.4 points at 5-way and +3.0 at 20-way 1-shot on Glyphs for
        3 more seconds, ``benchmarks/results/accuracy_budget.md``)."""
        steps = budget.pick(default=2_000, long=20_000)
        return cls(**{"steps": steps, "rotations": True, **changes})


def build(config: Config, data: ImageClasses) -> ProtoNet:
    """The untrained ProtoNet of ``config`` for ``data``'s image size; its encoder is the body of
    :func:`metalib.nets.fast_conv4`."""
    encoder = fast_conv4(hidden=config.hidden, image_size=data.image_size).body
    cosine = config.metric == "cosine"
    return ProtoNet(encoder, config.metric, 10.0 if cosine else 1.0, learn_temperature=cosine)


def train(
    config: Config,
    data: ImageClasses,
    generator: torch.Generator,
    device: torch.device,
) -> Run:
    """Meta-train :func:`build`'s network on ``config.train_way``-way 1-shot episodes of ``data``
    (with its rotations where ``config.rotations``).

    Returns:
        The :class:`~metalib.trained.Run`: the network, its history (loss and accuracy of every
        episode; ``seconds`` of training so far where a snapshot was taken) and the snapshots.
    """
    net = build(config, data).to(device)
    data = with_rotations(data) if config.rotations else data
    opt = torch.optim.Adam(net.parameters(), lr=config.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, config.steps)

    def step(_: int) -> dict[str, float]:
        episode = sample_episodes(
            data,
            config.train_way,
            1,
            config.queries,
            1,
            generator,
        )
        loss, acc = episode_loss(net, episode.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        return {"loss": loss.item(), "accuracy": acc.mean().item()}

    step, snapshots = with_snapshots(
        step,
        net,
        config.steps,
        config.snapshots,
    )

    history = fit(step, config.steps, desc=f"ProtoNet ({config.metric})")
    return Run(net, history, snapshots)


def predict(
    config: Config,
    model: ProtoNet,
    episode: Episode,
) -> torch.Tensor:
    """Logits ``(T, N*Q, N)`` of ``episode``'s queries: one forward pass, no gradient."""
    return episode_logits(model, episode)
