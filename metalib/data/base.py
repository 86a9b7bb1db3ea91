"""The one container every few-shot image dataset returns: classes of equally many images.

Convention shared by every image dataset (so a model trained on one transfers to another):
single-channel float32 in [0, 1], ink = 1 on a background of 0, ``image_size`` x ``image_size``.
Images are *stored* as uint8 (ink = 255) to keep a 3,000-class split in tens of megabytes, and
converted when a batch is taken (``ImageClasses.get``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def to_uint8_images(x: torch.Tensor, size: int) -> torch.Tensor:
    """Resize float images in [0, 1] (ink = 1) to ``size`` x ``size`` and store them as uint8.

    Args:
        x: ``(N, H, W)`` float tensor in [0, 1].
        size: the side of the output images.

    Returns:
        ``(N, size, size)`` uint8 tensor, ink = 255. Downsizing averages over areas, so thin strokes
        fade to grey instead of vanishing.
    """
    if x.dim() != 3:
        raise ValueError(f"expected (N, H, W) images, got shape {tuple(x.shape)}")
    if size < 8:
        raise ValueError(f"image size must be at least 8 pixels, got {size}")
    if x.shape[-1] != size or x.shape[-2] != size:
        mode = "area" if x.shape[-1] >= size else "bilinear"
        kw = {} if mode == "area" else {"align_corners": False}
        x = F.interpolate(x.unsqueeze(1).float(), size=(size, size), mode=mode, **kw).squeeze(1)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


@dataclass(frozen=True)
class ImageClasses:
    """One split of a few-shot image dataset.

    Attributes:
        name: e.g. ``"glyphs/train"`` or ``"omniglot/test"``.
        images: ``(C, M, H, W)`` uint8 tensor, ink = 255 on 0; C classes of M images each.
        class_names: C readable names (``"GREEK SMALL LETTER ALPHA"``, ``"Latin/character07"``).
        groups: C group names (the script or alphabet of each class); splits never share a group.
    """

    name: str
    images: torch.Tensor
    class_names: tuple[str, ...]
    groups: tuple[str, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.images, torch.Tensor) or self.images.dtype != torch.uint8:
            raise ValueError(f"{self.name}: images must be a uint8 tensor (ink = 255 on 0)")
        if self.images.dim() != 4:
            raise ValueError(
                f"{self.name}: images must have shape (classes, per_class, H, W), "
                f"got {tuple(self.images.shape)}"
            )
        c = self.images.shape[0]
        if len(self.class_names) != c or len(self.groups) != c:
            raise ValueError(
                f"{self.name}: {c} classes of images but {len(self.class_names)} class names "
                f"and {len(self.groups)} groups"
            )

    @property
    def n_classes(self) -> int:
        return self.images.shape[0]

    @property
    def per_class(self) -> int:
        """Images per class (M)."""
        return self.images.shape[1]

    @property
    def image_size(self) -> int:
        return self.images.shape[-1]

    @property
    def group_names(self) -> tuple[str, ...]:
        """The distinct groups (scripts, alphabets), in order of first appearance."""
        return tuple(dict.fromkeys(self.groups))

    def get(self, classes: torch.Tensor, samples: torch.Tensor) -> torch.Tensor:
        """Images as float32 in [0, 1] with a channel axis.

        Args:
            classes: integer tensor of class indices, any shape ``S``.
            samples: integer tensor of image indices within each class, the same shape ``S``.

        Returns:
            ``(*S, 1, H, W)`` float32 tensor on the CPU.
        """
        if classes.shape != samples.shape:
            raise ValueError(
                f"classes {tuple(classes.shape)} and samples {tuple(samples.shape)} "
                "must have the same shape"
            )
        x = self.images[classes.long(), samples.long()]  # (*S, H, W) uint8
        return x.unsqueeze(-3).float().div_(255.0)

    def subset(self, classes: list[int] | torch.Tensor, name: str | None = None) -> ImageClasses:
        """A new split holding only the given classes (in the given order)."""
        idx = torch.as_tensor(classes, dtype=torch.long)
        return ImageClasses(
            name=name or self.name,
            images=self.images[idx],
            class_names=tuple(self.class_names[i] for i in idx.tolist()),
            groups=tuple(self.groups[i] for i in idx.tolist()),
        )

    def __repr__(self) -> str:
        return (
            f"ImageClasses({self.name!r}: {self.n_classes} classes x {self.per_class} images, "
            f"{self.image_size}x{self.image_size}, {len(self.group_names)} groups)"
        )


def join(*splits: ImageClasses, name: str | None = None) -> ImageClasses:
    """One split holding every class of ``splits``, e.g. Glyphs' training scripts and Omniglot's
    background alphabets, to meta-train on both.

    Each group is prefixed with the dataset it came from (``"glyphs:Latin"``,
    ``"omniglot:Latin"``): two datasets may name a script alike, and their classes stay apart.

    Args:
        splits: two or more splits with the same images per class and image size.
        name: the new split's name; by default the names joined by ``" + "``.

    Returns:
        The classes of ``splits`` in order, ``(sum C, M, H, W)``.
    """
    if len(splits) < 2 or not all(isinstance(s, ImageClasses) for s in splits):
        raise ValueError("join needs two or more ImageClasses splits")
    first = splits[0]
    for s in splits[1:]:
        if s.images.shape[1:] != first.images.shape[1:]:
            raise ValueError(
                f"cannot join {first.name!r} ({first.per_class} images of "
                f"{first.image_size}x{first.image_size} per class) and {s.name!r} "
                f"({s.per_class} of {s.image_size}x{s.image_size}): load them at the same "
                "image_size, and keep the same number of images per class"
            )
    return ImageClasses(
        name=name or " + ".join(s.name for s in splits),
        images=torch.cat([s.images for s in splits]),
        class_names=tuple(c for s in splits for c in s.class_names),
        groups=tuple(f"{s.name.split('/')[0]}:{g}" for s in splits for g in s.groups),
    )


def with_rotations(split: ImageClasses) -> ImageClasses:
    """``split`` and its classes rotated by 90, 180 and 270 degrees, each rotation a new class:
    four times the classes, the augmentation of the Omniglot experiments of Santoro et al. (2016)
    and Finn et al. (2017). A rotated character is a new character; its group is its script's
    (``"Latin"`` for every rotation of a Latin letter), so splits by group stay apart.

    Returns:
        ``(4C, M, H, W)``: the C classes as they are, then each rotation of all C in turn.
    """
    if split.images.shape[-1] != split.images.shape[-2]:
        raise ValueError(f"{split.name}: rotations need square images, got {split.images.shape}")
    names = tuple(
        f"{c} (rotated {90 * k})" if k else c for k in range(4) for c in split.class_names
    )
    return ImageClasses(
        name=f"{split.name} + rotations",
        images=torch.cat([torch.rot90(split.images, k, dims=(-2, -1)) for k in range(4)]),
        class_names=names,
        groups=split.groups * 4,
    )
