"""Test-time adaptation: adapt a trained classifier to shifted test data, without labels.

Three methods, from the least to the most that changes at test time:

* **BN adaptation** (Schneider et al., 2020; Nado et al., 2020): batch norm layers normalise
  with the statistics of the test batch instead of the running statistics of the training set.
  Nothing is learned. :func:`bn_adapt`.
* **TENT** (Wang et al., 2021): BN adaptation, plus gradient steps on the BN layers' affine
  scale and shift that minimise the mean Shannon entropy of the test batch's predictions. Online
  (the adapted state carries over to the next batch) or episodic (reset after every batch).
  :func:`configure_tent`, :func:`tent_step`, :class:`Tent`.
* **Test-time training** (Sun et al., 2020): a shared encoder trained jointly with a classifier
  head and a rotation-prediction head (Gidaris et al., 2018); at test time the encoder takes
  gradient steps on the rotation loss of the test batch, and the classifier head predicts.
  :class:`TTTNet`, :func:`ttt_train_step`, :class:`TTT`.

Every adapter works on a copy of the model it is given: the source model is never modified.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from metalib.runtime import progress

_BatchNorm = nn.modules.batchnorm._BatchNorm  # BatchNorm1d/2d/3d and metalib's BatchStatNorm2d


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of the softmax of each row: ``(B, C)`` logits -> ``(B,)``.

    ``H(p) = -sum_c p_c log p_c`` with ``log p`` from ``log_softmax``, finite for any logits.
    """
    if logits.dim() != 2:
        raise ValueError(
            f"logits must have shape (B, C), got {tuple(logits.shape)}",
        )
    log_p = logits.log_softmax(dim=-1)
    return -(log_p.exp() * log_p).sum(dim=-1)


def bn_affine_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The scale (``weight``) and shift (``bias``) of every batch norm layer, in module order.

    Returns ``[bn1.weight, bn1.bias, bn2.weight, ...]``; layers without affine parameters are
    skipped. These are the only parameters TENT updates.
    """
    out: list[nn.Parameter] = []
    for module in model.modules():
        if isinstance(module, _BatchNorm) and module.affine:
            out += [module.weight, module.bias]
    return out


def use_batch_statistics(model: nn.Module) -> nn.Module:
    """Make every batch norm layer of ``model`` normalise with its input batch's statistics.

    In place; returns ``model``. The model goes to ``eval()`` (dropout and the like are off)
    and its batch norm layers to ``train()`` with ``track_running_stats = False``: they use the
    batch's mean and variance and leave the running statistics (buffers) untouched.
    """
    model.eval()
    for module in model.modules():
        if isinstance(module, _BatchNorm):
            module.train()
            module.track_running_stats = False
    return model


def bn_adapt(model: nn.Module) -> nn.Module:
    """A copy of ``model`` that normalises each test batch with its own statistics (no learning).

    Schneider et al. (2020); Nado et al. (2020). Predictions depend on the test batch: a batch
    of one image, or of a single class, gives poor statistics.
    """
    adapted = use_batch_statistics(copy.deepcopy(model))
    adapted.requires_grad_(False)
    return adapted


def configure_tent(model: nn.Module) -> nn.Module:
    """Prepare ``model`` in place for TENT: test-batch statistics, only BN affine params learn.

    Returns ``model``. Raises ``ValueError`` when it has no batch norm layer with an affine
    scale and shift (there would be nothing to adapt).
    """
    affine = bn_affine_parameters(model)
    if not affine:
        raise ValueError(
            f"{type(model).__name__} has no batch norm layer with affine "
            f"parameters; TENT adapts those only (build Conv4 with "
            "norm='running' or norm='batch')",
        )
    use_batch_statistics(model)
    model.requires_grad_(False)
    for p in affine:
        p.requires_grad_(True)
    return model


def tent_step(
    model: nn.Module,
    x: torch.Tensor,
    optimizer: torch.optim.Optimizer,
) -> torch.Tensor:
    """One TENT update on the test batch ``x``; returns the logits ``(B, C)`` of that forward pass.

    ``loss = entropy(model(x)).mean()``, one optimizer step. The returned predictions are those
    of the forward pass used for the update, before the step (Wang et al., 2021).
    """
    logits = model(x)
    loss = entropy(logits).mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return logits.detach()


class _Adapter:
    """Holds a model, its optimizer and their starting state, for online or episodic use."""

    def __init__(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, steps: int, episodic: bool
    ) -> None:
        if steps < 1:
            raise ValueError(f"steps must be at least 1 update per test batch, got {steps}")
        self.model, self.optimizer = model, optimizer
        self.steps, self.episodic = steps, episodic
        self._start = copy.deepcopy((model.state_dict(), optimizer.state_dict()))

    def reset(self) -> None:
        """Restore the model's parameters, buffers and the optimizer to their starting state."""
        model_state, optimizer_state = copy.deepcopy(self._start)
        self.model.load_state_dict(model_state)
        self.optimizer.load_state_dict(optimizer_state)


class Tent(_Adapter):
    """TENT: entropy minimisation on BN affine parameters, test batch by test batch.

    Wang et al., "Tent: fully test-time adaptation by entropy minimization", ICLR 2021.

    Args:
        model: the trained source model; a configured copy is adapted (``self.model``).
        lr: Adam's learning rate (the paper's 1e-3 for batches of 128).
        steps: updates per test batch; the logits come from the last update's forward pass.
        episodic: reset to the source state after every batch; else adapt online.

    Example:
        >>> tent = Tent(Conv4(n_classes=5, norm="running"))
        >>> tent(torch.rand(16, 1, 28, 28)).shape  # and its copy of the model took one step
        torch.Size([16, 5])
    """

    def __init__(
        self,
        model: nn.Module,
        lr: float = 1e-3,
        steps: int = 1,
        episodic: bool = False,
    ) -> None:
        model = configure_tent(copy.deepcopy(model))
        super().__init__(
            model,
            torch.optim.Adam(bn_affine_parameters(model), lr=lr),
            steps,
            episodic,
        )

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Adapt on the test batch ``x`` ``(B, ...)`` and return its logits ``(B, C)``."""
        for _ in range(self.steps):
            logits = tent_step(self.model, x, self.optimizer)
        if self.episodic:
            self.reset()
        return logits


def rotate_batch(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image in all four rotations, and the rotation labels (Gidaris et al., 2018).

    All four rotations of every image are taken, so nothing is drawn at random.

    Args:
        x: ``(B, C, H, W)`` square images.

    Returns:
        ``(4B, C, H, W)`` images and ``(4B,)`` labels in ``{0, 1, 2, 3}``, rotation-major: rows
        ``kB .. (k+1)B - 1`` are ``torch.rot90(x, k, dims=(2, 3))``, i.e. ``x`` turned
        ``k * 90`` degrees counter-clockwise, with label ``k``.
    """
    if x.dim() != 4 or x.shape[-1] != x.shape[-2]:
        raise ValueError(
            "rotate_batch needs square images (B, C, H, H), "
            f"got {tuple(x.shape)}"
        )  # fmt: skip
    rotated = torch.cat([torch.rot90(x, k, dims=(2, 3)) for k in range(4)])
    labels = torch.arange(4, device=x.device).repeat_interleave(x.shape[0])
    return rotated, labels


def rotation_loss(
    encoder: nn.Module,
    rotation_head: nn.Module,
    x: torch.Tensor,
) -> torch.Tensor:
    """Cross-entropy of predicting the rotation of every image of ``x`` in its four rotations."""
    rotated, labels = rotate_batch(x)
    return F.cross_entropy(rotation_head(encoder(rotated)), labels)


class TTTNet(nn.Module):
    """A shared encoder with a classifier head and a rotation head (Sun et al., 2020).

    ``forward`` gives the class logits ``classifier(encoder(x))``; the rotation head sees the
    same features. Build it from a ``Conv4``: ``TTTNet.from_conv4(net)``.
    """

    def __init__(self, encoder: nn.Module, classifier: nn.Module, rotation_head: nn.Module):
        super().__init__()
        self.encoder, self.classifier, self.rotation_head = encoder, classifier, rotation_head

    @classmethod
    def from_conv4(cls, net: nn.Module, shared_blocks: int = 4) -> TTTNet:
        """Split a fresh ``Conv4`` after ``shared_blocks`` blocks; each head gets the rest.

        The rotation branch copies the classifier branch's later blocks (own weights), then a
        ``Linear(feature_dim, 4)``. ``net`` itself is not modified.
        """
        if not 1 <= shared_blocks <= 4:
            raise ValueError(
                "shared_blocks must be 1 to 4 (Conv4 has 4), "
                f"got {shared_blocks}"
            )  # fmt: skip
        net = copy.deepcopy(net)
        like = {"dtype": net.head.weight.dtype, "device": net.head.weight.device}
        rest = list(net.body[shared_blocks:])  # the remaining blocks and Flatten
        rotation = copy.deepcopy(nn.Sequential(*rest))
        for module in rotation.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
        return cls(
            nn.Sequential(*net.body[:shared_blocks]),
            nn.Sequential(*rest, net.head),
            nn.Sequential(*rotation, nn.Linear(net.feature_dim, 4, **like)),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits ``(B, n_classes)`` of images ``(B, C, H, W)``."""
        return self.classifier(self.encoder(x))


def ttt_train_step(
    model: TTTNet,
    x: torch.Tensor,
    y: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    rotation_images: int | None = None,
) -> dict[str, float]:
    """One joint training step: class cross-entropy plus rotation loss (Sun et al., 2020).

    Args:
        model: the network, trained in place (``train()`` mode).
        x: ``(B, C, H, W)`` images; y: ``(B,)`` their class labels.
        optimizer: over all of ``model``'s parameters.
        rotation_images: the rotation loss uses the first this many images of ``x`` (in all
            four rotations); ``None``: all ``B``. Fewer save time: the rotation batch is 4x.

    Returns:
        ``loss`` (classification), ``rotation_loss`` and the batch's ``accuracy``, for ``fit``.
    """
    if rotation_images is not None and not 1 <= rotation_images <= len(x):
        raise ValueError(
            f"rotation_images must be 1 to {len(x)} (the batch), "
            f"got {rotation_images}"
        )  # fmt: skip
    model.train()
    logits = model(x)
    class_loss = F.cross_entropy(logits, y)
    rot_loss = rotation_loss(
        model.encoder,
        model.rotation_head,
        x[:rotation_images],
    )
    optimizer.zero_grad(set_to_none=True)
    (class_loss + rot_loss).backward()
    optimizer.step()
    accuracy = (logits.argmax(-1) == y).float().mean()
    return {
        "loss": class_loss.item(),
        "rotation_loss": rot_loss.item(),
        "accuracy": accuracy.item(),
    }


class TTT(_Adapter):
    """Test-time training: rotation-loss steps on the shared encoder, then the classifier predicts.

    Sun et al., "Test-time training with self-supervision for generalization under distribution
    shifts", ICML 2020. The copy keeps the train/eval modes of ``model``: pass a model in
    ``eval()`` mode for source statistics, or ``use_batch_statistics(model)`` to combine TTT with
    BN adaptation.

    Args:
        model: a trained :class:`TTTNet`; only its encoder changes.
        lr: the learning rate of SGD with momentum 0.9.
        steps: rotation-loss updates per test batch, before predicting.
        episodic: reset after every batch (the paper's standard version); else online
            ("TTT-Online").
        rotation_images: the rotation loss uses the first this many images of each test batch
            (``None``: all); its batch is four times larger, so this bounds the cost.
    """

    def __init__(
        self,
        model: TTTNet,
        lr: float = 1e-3,
        steps: int = 1,
        episodic: bool = True,
        rotation_images: int | None = None,
    ) -> None:
        if not isinstance(model, TTTNet):
            raise ValueError(f"TTT adapts a TTTNet, got {type(model).__name__}")
        if rotation_images is not None and rotation_images < 1:
            raise ValueError(f"rotation_images must be at least 1 (or None), got {rotation_images}")
        self.rotation_images = rotation_images
        model = copy.deepcopy(model)
        model.requires_grad_(False)
        model.encoder.requires_grad_(True)
        optimizer = torch.optim.SGD(model.encoder.parameters(), lr=lr, momentum=0.9)
        super().__init__(model, optimizer, steps, episodic)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Adapt the encoder on the test batch ``x`` and return its class logits ``(B, C)``."""
        for _ in range(self.steps):
            some = x[: self.rotation_images]
            loss = rotation_loss(
                self.model.encoder,
                self.model.rotation_head,
                some,
            )
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        with torch.no_grad():
            logits = self.model(x)
        if self.episodic:
            self.reset()
        return logits


def batch_errors(
    predict: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int = 128,
    desc: str = "evaluating",
) -> torch.Tensor:
    """Error rate of ``predict`` on each consecutive test batch, in order (shuffle beforehand).

    Args:
        predict: maps a batch ``(b, ...)`` to logits ``(b, C)`` (a model, ``Tent``, ``TTT``);
            called once per batch, in order, so online adapters see the stream as it comes.
        images: ``(N, ...)``; labels: ``(N,)``.
        batch_size: images per test batch (the last one may be smaller).

    Returns:
        ``(ceil(N / batch_size),)`` error rates in ``[0, 1]``, on the CPU (a measurement, for
        tables and figures).
    """
    if batch_size < 1 or len(images) != len(labels) or len(images) == 0:
        raise ValueError(
            f"need batch_size >= 1 and as many labels as images (> 0); got "
            f"batch_size={batch_size}, {len(images)} images and "
            f"{len(labels)} labels",
        )
    out = []
    for start in progress(
        range(0, len(images), batch_size),
        desc=desc,
        leave=False,
    ):
        x, y = (
            images[start : start + batch_size],
            labels[start : start + batch_size],
        )
        out.append((predict(x).argmax(-1) != y).double().mean())
    return torch.stack(out).cpu()


def error(
    predict: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int = 128,
    desc: str = "evaluating",
) -> float:
    """Error rate of ``predict`` over the whole test set, fed in consecutive batches."""
    errors = batch_errors(predict, images, labels, batch_size, desc)
    sizes = torch.full_like(errors, batch_size)
    sizes[-1] = len(images) - batch_size * (len(errors) - 1)
    return float((errors * sizes).sum() / len(images))
