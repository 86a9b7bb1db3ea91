"""Black-box meta-learners: a sequence model reads the labelled support set and labels queries.

A black-box learner does not fit any weight at test time. A network f_θ reads the training set
of a task as a sequence of (input, label) pairs and answers each query, y = f_θ(D_tr, x): its
hidden state plays the part of the task parameters φ_i = f_θ(D_tr), and it need not output all
of them, only the sufficient statistics the queries need (MANN: Santoro et al., 2016,
"Meta-Learning with Memory-Augmented Neural Networks"; SNAIL: Mishra et al., 2018, "A Simple
Neural Attentive Meta-Learner"). Each support image becomes a *token*, its embedding
concatenated with the one-hot of its label (:func:`label_sequence`); a query's token carries
zeros where the label would be (:func:`query_tokens`).

Two architectures for f_θ (:class:`SequenceLearner`):

* ``"lstm"`` reads the support tokens in order, then takes each query as one more step from the
  final state, all queries in parallel from that same state: queries never see each other, and
  the cost is O(S + P). The answer depends on the order of the support set.
* ``"attention"``: a transformer encoder without positional encoding over [support; queries],
  masked so that support tokens attend to the support only and each query to the support and
  itself. Its answers are invariant to the order of the support set, by construction.

Neither is equivariant to relabelling the classes by construction (the label enters as a
one-hot, the answer leaves through a fixed head); meta-training on randomly relabelled episodes
(:func:`metalib.tasks.sample_episodes` shuffles labels) teaches it. :class:`BlackBoxClassifier`
puts an image encoder in front and is an *episodic classifier* trained end to end with
:func:`metalib.train.episode_loss`.

The book's recipe (chapters 3 and 7) is :class:`Config`, :func:`build`, :func:`train` and
:func:`predict`: a sequence learner over a frozen pre-trained backbone's embeddings
(:func:`metalib.trained.embedded`), meta-trained by :func:`fit_on_features`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from metalib.features import FeatureClasses
from metalib.nets import embed_tasks
from metalib.runtime import Budget
from metalib.tasks import Episode, check_labelled, sample_episodes
from metalib.train import History, accuracy, episode_logits, fit
from metalib.trained import Run

KINDS = ("lstm", "attention")


def label_sequence(
    support_features: torch.Tensor, support_y: torch.Tensor, n_slots: int
) -> torch.Tensor:
    """The support set as tokens: each embedding followed by the one-hot of its label.

    Args:
        support_features: ``(T, S, D)`` embeddings of the support items.
        support_y: ``(T, S)`` long labels in ``0..n_slots-1``.
        n_slots: the width of the one-hot code (the most classes the learner can tell apart).

    Returns:
        ``(T, S, D + n_slots)`` tokens, in the features' dtype.
    """
    check_labelled(support_features, support_y, n_slots, "n_slots", "S")
    one_hot = F.one_hot(support_y, n_slots).to(support_features.dtype)
    return torch.cat([support_features, one_hot], dim=-1)


def query_tokens(query_features: torch.Tensor, n_slots: int) -> torch.Tensor:
    """The queries as tokens: each embedding followed by ``n_slots`` zeros (label unknown).

    Args:
        query_features: ``(T, P, D)`` embeddings of the queries.
        n_slots: the width of the label code, as in :func:`label_sequence`.

    Returns:
        ``(T, P, D + n_slots)`` tokens.
    """
    if n_slots < 1:
        raise ValueError(f"n_slots must be at least 1, got {n_slots}")
    if query_features.dim() != 3:
        raise ValueError(
            f"query_features must be (T, P, D), got shape "
            f"{tuple(query_features.shape)}; add a task axis with "
            ".unsqueeze(0)",
        )
    zeros = query_features.new_zeros(*query_features.shape[:2], n_slots)
    return torch.cat([query_features, zeros], dim=-1)


def attention_mask(
    n_support: int, n_query: int, device: torch.device | None = None
) -> torch.Tensor:
    """Which token may not attend to which, over the sequence [support; queries].

    Returns:
        ``(S + P, S + P)`` bool, ``True`` where attention is blocked (PyTorch's convention):
        every token sees all support tokens; a query also sees itself and no other query.
    """
    n = n_support + n_query
    allowed = torch.zeros(n, n, dtype=torch.bool, device=device)
    allowed[:, :n_support] = True
    allowed.diagonal()[n_support:] = True
    return ~allowed


def spread_labels(
    support_y: torch.Tensor,
    query_y: torch.Tensor,
    n_way: int,
    n_slots: int,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Move each task's labels 0..N-1 to N random slots out of ``n_slots`` (same map for both sets).

    Training N-way tasks on spread labels trains every slot of the one-hot code and the output
    head, so a learner built with ``n_slots > N`` can be tested on tasks of up to ``n_slots``
    ways (on labels 0..n_slots-1) that it never saw in training.

    Args:
        support_y: ``(T, S)``; query_y: ``(T, P)`` long labels in ``0..n_way-1``.
        n_way, n_slots: N, and the number of slots (at least N).
        generator: draws the slots.

    Returns:
        The relabelled ``(support_y, query_y)``, labels in ``0..n_slots-1``.
    """
    if n_slots < n_way:
        raise ValueError(
            f"n_slots ({n_slots}) must be at least n_way ({n_way})",
        )
    both_2d = support_y.dim() == 2 and query_y.dim() == 2
    if not both_2d or support_y.shape[0] != query_y.shape[0]:
        raise ValueError(
            f"support_y (T, S) and query_y (T, P) must be 2-D with the same "
            f"T, got {tuple(support_y.shape)} and {tuple(query_y.shape)}",
        )
    t = support_y.shape[0]
    keys = torch.rand(t, n_slots, generator=generator)
    slots = keys.argsort(dim=1)[:, :n_way]
    slots = slots.to(support_y.device)
    return slots.gather(1, support_y), slots.gather(1, query_y)


class SequenceLearner(nn.Module):
    """f_θ(D_tr, x): logits of each query from the labelled support set, as a sequence model.

    Args:
        feature_dim: D, the size of the embeddings it reads.
        n_slots: the one-hot width and the number of outputs (N-way tasks need N <= n_slots).
        kind: ``"lstm"`` or ``"attention"`` (see the module docstring).
        hidden: the LSTM's state size, or the transformer's model width.
        layers: stacked LSTM layers, or transformer encoder layers.
        heads: attention heads (``"attention"`` only; must divide ``hidden``).
        dropout: dropout inside the LSTM stack or the transformer. 0 by default: forward
            passes stay deterministic (the tests compare outputs), and meta-training draws
            fresh tasks at every step, so there is little to regularise.

    The defaults (128 wide, 2 layers, 4 heads) fit Conv4-32/64 embeddings of 5-way 1-shot
    Glyphs: a few hundred thousand weights, small next to the encoder's cost per episode.
    """

    def __init__(
        self,
        feature_dim: int,
        n_slots: int = 5,
        kind: str = "lstm",
        hidden: int = 128,
        layers: int = 2,
        heads: int = 4,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}; choose one of {KINDS}")
        for name, value in (("feature_dim", feature_dim), ("n_slots", n_slots)):
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if hidden < 1 or layers < 1:
            raise ValueError(f"hidden and layers must be at least 1, got {hidden} and {layers}")
        if kind == "attention" and (heads < 1 or hidden % heads):
            raise ValueError(f"heads ({heads}) must be at least 1 and divide hidden ({hidden})")
        self.feature_dim, self.n_slots, self.kind = feature_dim, n_slots, kind
        width = feature_dim + n_slots
        if kind == "lstm":
            self.lstm = nn.LSTM(width, hidden, layers, batch_first=True, dropout=dropout)
        else:
            self.embed = nn.Linear(width, hidden)
            layer = nn.TransformerEncoderLayer(
                hidden, heads, dim_feedforward=2 * hidden, dropout=dropout, batch_first=True
            )
            # no nested tensors: they only pay off with padding masks, and warn with ours
            self.transformer = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(hidden, n_slots)

    def forward(
        self,
        support_features: torch.Tensor,
        support_y: torch.Tensor,
        query_features: torch.Tensor,
    ) -> torch.Tensor:
        """Logits ``(T, P, n_slots)`` of queries ``(T, P, D)`` given a labelled support set.

        Args:
            support_features: ``(T, S, D)``; support_y: ``(T, S)`` long labels in
            ``0..n_slots-1``; query_features: ``(T, P, D)``.
        """
        # the tokens: support (T, S, D + n), queries (T, P, D + n)
        support = label_sequence(support_features, support_y, self.n_slots)
        queries = query_tokens(query_features, self.n_slots)
        shapes_ok = (
            support.shape[-1] == self.feature_dim + self.n_slots
            and queries.shape[-1] == support.shape[-1]
            and queries.shape[0] == support.shape[0]
        )
        if not shapes_ok:
            raise ValueError(
                f"expected support (T, S, {self.feature_dim}) and queries (T, "
                f"P, {self.feature_dim}) with the same T, got "
                f"{tuple(support_features.shape)} and "
                f"{tuple(query_features.shape)}; build the learner with the "
                f"encoder's feature_dim",
            )
        t, p = queries.shape[:2]
        if self.kind == "lstm":
            _, (h, c) = self.lstm(support)  # (layers, T, hidden) each
            # one more step per query from the same final state:
            # (layers, T * P, hidden)
            h = h.unsqueeze(2).expand(-1, -1, p, -1)
            h = h.reshape(h.shape[0], t * p, -1)
            c = c.unsqueeze(2).expand(-1, -1, p, -1)
            c = c.reshape(c.shape[0], t * p, -1)
            out, _ = self.lstm(
                queries.reshape(t * p, 1, -1),
                (h.contiguous(), c.contiguous()),
            )
            return self.head(out.reshape(t, p, -1))
        s = support.shape[1]
        mask = attention_mask(s, p, device=support.device)
        out = self.transformer(
            self.embed(torch.cat([support, queries], dim=1)),
            mask=mask,
        )
        return self.head(out[:, s:])


class BlackBoxClassifier(nn.Module):
    """An episodic classifier: an image encoder, then a :class:`SequenceLearner` over its features.

    Args:
        encoder: ``(B, C, H, W) -> (B, D)``, e.g. ``Conv4(hidden=64).body``; trained with the
            learner, end to end.
        learner: a :class:`SequenceLearner` built with ``feature_dim = D``.

    Example:
        >>> enc = Conv4(hidden=32).body
        >>> net = BlackBoxClassifier(enc, SequenceLearner(32, n_slots=5, kind="attention"))
        >>> net(ep.support_x, ep.support_y, ep.query_x, ep.n_way).shape  # doctest: +SKIP
        torch.Size([T, N*Q, N])
    """

    def __init__(self, encoder: nn.Module, learner: SequenceLearner) -> None:
        super().__init__()
        if not isinstance(learner, SequenceLearner):
            raise ValueError(f"learner must be a SequenceLearner, got {type(learner).__name__}")
        self.encoder, self.learner = encoder, learner

    def forward(
        self,
        support_x: torch.Tensor,
        support_y: torch.Tensor,
        query_x: torch.Tensor,
        n_way: int,
    ) -> torch.Tensor:
        """Logits ``(T, P, N)`` of the queries ``(T, P, C, H, W)`` given the support set."""
        n_slots = self.learner.n_slots
        if not 1 <= n_way <= n_slots:
            raise ValueError(
                f"n_way must lie in 1..{n_slots}, got {n_way}; a learner built "
                f"with n_slots={n_slots} tells at most {n_slots} classes apart: "
                f"build it with more slots",
            )
        out_of_range = (support_y < 0) | (support_y >= n_way)
        if out_of_range.any():
            raise ValueError(
                f"support labels must lie in 0..{n_way - 1} for a {n_way}-way "
                f"task, got values from {support_y.min().item()} to "
                f"{support_y.max().item()}",
            )
        sf, qf = embed_tasks(self.encoder, support_x, query_x)
        return self.learner(sf, support_y, qf)[..., :n_way]


def fit_on_features(
    model: nn.Module,
    data: FeatureClasses,
    steps: int,
    lr: float,
    generator: torch.Generator,
    *,
    n_way: int = 5,
    queries: int = 5,
    tasks: int = 16,
    slots: int | None = None,
    desc: str = "meta-training",
) -> History:
    """Meta-train an episodic classifier on N-way 1-shot tasks of embeddings, with Adam.

    Args:
        model: ``model(support_x, support_y, query_x, n_out) -> (T, N*Q, n_out)`` logits, on the
            device the tasks are moved to.
        data: the training split's embeddings.
        steps, lr: Adam steps and learning rate.
        generator: draws the tasks (and the slots).
        n_way, queries, tasks: N, queries per class and tasks per step.
        slots: spread each task's labels over this many outputs (:func:`spread_labels`), so that
            every slot is trained (black-box learners); ``None``: labels 0..N-1.
        desc: the progress bar's label.

    Returns:
        The history: query loss and accuracy, every 10 steps.
    """
    device = next(model.parameters()).device
    opt = torch.optim.Adam(model.parameters(), lr=lr)

    def step(_: int) -> dict[str, float]:
        ep = sample_episodes(data, n_way, 1, queries, tasks, generator)
        ep = ep.to(device)
        support_y, query_y, n_out = ep.support_y, ep.query_y, n_way
        if slots:
            support_y, query_y = spread_labels(
                support_y,
                query_y,
                n_way,
                slots,
                generator,
            )
            n_out = slots
        # logits (T, N*Q, n_out)
        out = model(ep.support_x, support_y, ep.query_x, n_out)
        loss = F.cross_entropy(out.flatten(0, 1), query_y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {
            "loss": loss.item(),
            "accuracy": accuracy(out.detach(), query_y).mean().item(),
        }

    return fit(step, steps, desc=desc, log_every=10)


@dataclass(frozen=True)
class Config:
    """The book's black-box learners (chapter 3): a :class:`SequenceLearner` over embeddings,
    meta-trained on 5-way 1-shot tasks (5 queries per class, 16 tasks a step) with labels spread
    over ``slots`` outputs.

    Attributes:
        kind: ``"lstm"`` or ``"attention"``.
        feature_dim: D, the size of the embeddings (the backbone's channels).
        slots: outputs, and the widest task it can label.
        lr: Adam's learning rate.
        steps: meta-training steps.
    """

    kind: str = "attention"
    feature_dim: int = 64
    slots: int = 10
    lr: float = 1e-3
    steps: int = 2_000

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")

    @classmethod
    def preset(cls, budget: Budget, kind: str = "attention", **changes) -> Config:
        """The book's recipe for ``kind`` at ``budget`` (the LSTM needs a higher rate and more
        steps: 3,000 against 2,000, or 20,000 against 10,000 for ``long``)."""
        if kind == "lstm":
            steps, lr = budget.pick(default=3_000, long=20_000), 3e-3
        else:
            steps, lr = budget.pick(default=2_000, long=10_000), 1e-3
        return cls(**{"kind": kind, "steps": steps, "lr": lr, **changes})


def build(config: Config, data: FeatureClasses) -> BlackBoxClassifier:
    """The untrained learner; it reads embeddings, so its encoder is the identity."""
    learner = SequenceLearner(config.feature_dim, config.slots, config.kind)
    return BlackBoxClassifier(nn.Identity(), learner)


def train(
    config: Config, data: FeatureClasses, generator: torch.Generator, device: torch.device
) -> Run:
    """Meta-train :func:`build`'s learner on ``data`` (:func:`fit_on_features`, spread labels)."""
    model = build(config, data).to(device)
    desc = f"{config.kind} learner"
    history = fit_on_features(
        model, data, config.steps, config.lr, generator, slots=config.slots, desc=desc
    )
    return Run(model, history)


def predict(config: Config, model: nn.Module, episode: Episode) -> torch.Tensor:
    """Logits ``(T, N*Q, N)`` of ``episode``'s queries (embeddings): one pass, no gradient."""
    return episode_logits(model, episode)
