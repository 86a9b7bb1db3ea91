"""Glyphs: an Omniglot-like few-shot dataset drawn offline from the fonts matplotlib ships.

A class is one Unicode letter; its images are that letter drawn in the font faces that hold it
(DejaVu, STIX, Computer Modern: 4 to 23 faces a letter), each image bent by a random affine map
and a smooth elastic warp and given thinner or thicker strokes, so that the images of a class
differ the way different people's drawings of a character do in Omniglot (Lake, Salakhutdinov &
Tenenbaum, 2015).

How :func:`render` makes it:

1. every letter is drawn once in every face that holds it, its longer side fitted to 44 pixels
   of a 64-pixel canvas and centred; faces that draw it alike count once, and letters with fewer
   than 4 distinct faces go (:func:`metalib.data.fonts.draw_letters`);
2. a letter that looks like a letter of lower code point goes (Latin A, Greek Alpha and Cyrillic
   A become one class, the Latin one), judged over all splits at once so that no split holds a
   look-alike of another split's class;
3. image ``m`` of a class is drawn in face number ``m mod n_faces`` (faces in a seeded random
   order) under a seeded random rotation, shear, scale, stretch and shift, bent by a smooth random
   elastic field (Simard et al., 2003), with strokes eroded or dilated by a random fraction of a
   pixel, and then shrunk to ``image_size``.

Classes are split by script (:data:`SPLITS`): meta-test letters come from scripts never seen in
meta-training. :func:`load` caches the result on disk, keyed by the font files,
:data:`RENDER_VERSION` and every setting; the same seed gives the same bits.
"""

from __future__ import annotations

import unicodedata
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from metalib import runtime
from metalib.data import cache, fonts
from metalib.data.base import ImageClasses, to_uint8_images

RENDER_VERSION = 2  # bump whenever a change here or in fonts.py changes the pixels

# Scripts per split, about 60 / 15 / 25 of the classes. Scripts that share shapes stay together
# (Latin with Lisu, whose letters are turned Latin capitals; Greek with Coptic and Old Italic),
# and the test scripts (Canadian syllabics, Georgian, Lao) look like nothing in training.
SPLITS: dict[str, tuple[str, ...]] = {
    "train": ("Latin", "Cyrillic", "Arabic", "Hebrew", "Lisu"),
    "val": ("Greek", "Coptic", "Old Italic", "Armenian"),
    "test": ("Canadian Syllabics", "Georgian", "Lao"),
}

_MIN_FACES = 4
_BOX = 44 / 64  # the glyph's longer side as a fraction of the canvas: room for the distortions
# Drawings are compared by the RMS difference of 16 x 16 thumbnails (ink in [0, 1]), averaged
# over the faces two letters share. Below _SAME_FACE two faces draw a letter alike; below
# _SAME_CLASS two letters of one split are one class (A/Α/А, an Arabic letter and its isolated
# form, ὦ/ὧ), while distinct accents (Ó/Ȯ) sit at 0.04 and above. Across splits the bar is
# looser, since a look-alike there leaks a test class into training: Armenian ս and Latin u
# (0.035), Carrier syllabics ᙆ and Latin Z (0.07), Old Italic 𐌗 and X (0.1).
_SAME_FACE = 0.01
_SAME_CLASS = 0.035
_SAME_ACROSS = 0.1
# Distortion ranges (uniform): rotation and shear in radians, stretch as the log of width over
# height, shift as a fraction of the half-canvas, stroke change in pixels of a 64-pixel canvas
# (negative erodes, positive dilates).
_ROTATION = 0.2
_SHEAR = 0.2
_SCALE = (0.85, 1.1)
_STRETCH = 0.1
_SHIFT = 0.08
_STROKE = (-0.5, 1.0)
# Elastic warp (Simard, Steinkraus & Platt, 2003): a smooth random displacement field, normal
# noise on a coarse _WARP_GRID x _WARP_GRID lattice scaled by _ELASTIC (a fraction of the
# half-canvas) and interpolated bicubically, bends strokes the way a hand does.
_ELASTIC = 0.12
_WARP_GRID = 4
_CHUNK = 512  # images distorted at once: small enough (8 MB) to stay in the CPU's cache


def _check(image_size: int, per_class: int, seed: int) -> None:
    def is_int(x: Any) -> bool:
        return isinstance(x, int) and not isinstance(x, bool)

    if not is_int(image_size) or not 8 <= image_size <= 128:
        raise ValueError(f"image_size must be an int from 8 to 128 pixels, got {image_size!r}")
    if not is_int(per_class) or per_class < 1:
        raise ValueError(f"per_class must be a positive int (images per class), got {per_class!r}")
    if not is_int(seed) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")


def _distinct(
    drawings: list[torch.Tensor], face_names: list[tuple[str, ...]], splits: list[str]
) -> list[int]:
    """Step 2: the indices of the classes kept, in order.

    A class goes if its drawings match those of a kept class before it: mean thumbnail RMS
    difference over the faces both hold under ``_SAME_CLASS`` (same split) or ``_SAME_ACROSS``.
    """
    n = len(drawings)
    thumbs = fonts.thumbnails(torch.cat(drawings))  # (sum of faces, 256)
    owner = torch.repeat_interleave(torch.arange(n), torch.tensor([len(d) for d in drawings]))
    face_of = [name for names in face_names for name in names]
    total = torch.zeros(n, n, dtype=torch.float64)  # RMS difference summed over shared faces
    for name in dict.fromkeys(face_of):
        rows = torch.tensor([r for r, f in enumerate(face_of) if f == name])
        idx = owner[rows]  # no repeats: a class holds each face once
        block = total.new_zeros(len(idx), n).index_add_(1, idx, fonts.distances(thumbs[rows]))
        total.index_add_(0, idx, block)
    held = torch.tensor([[f in names for f in dict.fromkeys(face_of)] for names in face_names])
    shared = held.double() @ held.double().T  # (n, n) number of faces both classes hold
    split = torch.tensor([list(SPLITS).index(s) for s in splits])
    bar = torch.where(split[:, None] == split[None, :], _SAME_CLASS, _SAME_ACROSS)
    like: dict[int, list[int]] = {}
    for i, j in ((shared > 0) & (total < bar * shared)).nonzero().tolist():
        like.setdefault(i, []).append(j)
    kept: list[int] = []
    gone: set[int] = set()
    for i in range(n):  # greedy, not transitive: Ý and Ÿ both stay though both look like Ϋ
        if i not in gone:
            kept.append(i)
            gone.update(like.get(i, ()))
    return kept


def _classes() -> tuple[list[int], list[torch.Tensor], list[tuple[str, ...]]]:
    """Steps 1-2: the letters of the scripts in :data:`SPLITS`, look-alikes removed.

    Always judged on 64-pixel drawings, so the classes are the same whatever the image size.

    Returns:
        Code points (ascending), each one's ``(n_faces, 64, 64)`` uint8 drawings, and the faces
        they come from (see :func:`metalib.data.fonts.draw_letters`).
    """
    box = round(_BOX * 64)
    codes, drawings, face_names = fonts.draw_letters(64, box, _MIN_FACES, _SAME_FACE)
    split_of = {script: split for split, scripts in SPLITS.items() for script in scripts}
    keep = [i for i, code in enumerate(codes) if fonts.script_of(code) in split_of]
    splits = [split_of[fonts.script_of(codes[i])] for i in keep]
    kept = _distinct([drawings[i] for i in keep], [face_names[i] for i in keep], splits)
    keep = [keep[i] for i in kept]
    return [codes[i] for i in keep], [drawings[i] for i in keep], [face_names[i] for i in keep]


def _spread(x: torch.Tensor, pick: Any) -> torch.Tensor:
    """``(..., H, W)`` ink in [0, 1] -> each pixel's 3 x 3 neighbourhood reduced by ``pick``:
    ``torch.maximum`` dilates the ink by a pixel, ``torch.minimum`` erodes it.

    Shifted extremes: a few times faster than ``max_pool2d`` with stride 1 on the CPU.
    """
    p = F.pad(x, (1, 1, 1, 1), value=0.0 if pick is torch.maximum else 1.0)  # neutral padding
    rows = pick(pick(p[..., :-2], p[..., 1:-1]), p[..., 2:])
    return pick(pick(rows[..., :-2, :], rows[..., 1:-1, :]), rows[..., 2:, :])


def _stroke(x: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    """Erode (radius < 0) or dilate (radius > 0) each image by a fractional number of pixels.

    Args:
        x: ``(N, H, W)`` ink in [0, 1].
        radius: ``(N,)`` pixels; a fraction blends the two nearest whole-pixel results.

    Returns:
        ``(N, H, W)``.
    """
    radius = radius.view(-1, 1, 1)
    out = torch.zeros_like(x)
    lo, hi = int(radius.min().floor()), int(radius.max().ceil())
    for step, pick, stop in ((1, torch.maximum, hi), (-1, torch.minimum, lo)):
        level = x
        for k in range(0, stop + step, step):
            if k != 0:
                level = _spread(level, pick)
            if k != 0 or step == 1:  # the identity (k = 0) is counted once
                out += (1 - (radius - k).abs()).clamp(min=0) * level  # hat weight of level k
    return out


def _distort(x: torch.Tensor, u: torch.Tensor, warp: torch.Tensor) -> torch.Tensor:
    """Random affine and elastic distortion and stroke change, as different drawers would draw.

    Args:
        x: ``(N, H, W)`` ink in [0, 1], square.
        u: ``(N, 7)`` uniform numbers in [0, 1) that set each image's affine map and strokes.
        warp: ``(N, 2, G, G)`` standard normal numbers: the coarse elastic displacement field.

    Returns:
        ``(N, H, W)`` ink in [0, 1].
    """

    def span(lo: float, hi: float, v: torch.Tensor) -> torch.Tensor:
        return lo + (hi - lo) * v

    angle = span(-_ROTATION, _ROTATION, u[:, 0])
    shear = span(-_SHEAR, _SHEAR, u[:, 1])
    scale = span(*_SCALE, u[:, 2])
    stretch = span(-_STRETCH, _STRETCH, u[:, 3]).exp()
    shift = span(-_SHIFT, _SHIFT, u[:, 4:6])  # (N, 2)
    radius = span(*_STROKE, u[:, 6]) * x.shape[-1] / 64
    cos, sin, one, zero = angle.cos(), angle.sin(), torch.ones_like(angle), torch.zeros_like(angle)
    rotate = torch.stack([cos, -sin, sin, cos], 1).view(-1, 2, 2)
    slant = torch.stack([one, shear, zero, one], 1).view(-1, 2, 2)
    resize = torch.diag_embed(torch.stack([scale * stretch, scale / stretch], 1))
    forward = rotate @ slant @ resize  # (N, 2, 2): where each point of the glyph goes
    # Sampling needs the inverse map (output pixel -> input pixel): the closed-form 2 x 2 inverse.
    a, b, c, d = forward[:, 0, 0], forward[:, 0, 1], forward[:, 1, 0], forward[:, 1, 1]
    inverse = torch.stack([d, -b, -c, a], 1).view(-1, 2, 2) / (a * d - b * c).view(-1, 1, 1)
    theta = torch.cat([inverse, -inverse @ shift.unsqueeze(-1)], 2).view(-1, 6, 1, 1)
    # The grid F.affine_grid(theta) would make (align_corners=False), without its batched matrix
    # product, which costs more here than the sampling itself.
    n, h, w = x.shape
    xs = (torch.arange(w, dtype=x.dtype) * 2 + 1) / w - 1  # pixel centres in [-1, 1]
    ys = (torch.arange(h, dtype=x.dtype)[:, None] * 2 + 1) / h - 1
    gx = theta[:, 0] * xs + theta[:, 1] * ys + theta[:, 2]  # (N, H, W)
    gy = theta[:, 3] * xs + theta[:, 4] * ys + theta[:, 5]
    field = F.interpolate(warp * _ELASTIC, size=(h, w), mode="bicubic", align_corners=True)
    gx, gy = gx + field[:, 0], gy + field[:, 1]
    x = F.grid_sample(x.unsqueeze(1), torch.stack([gx, gy], -1), align_corners=False)
    return _stroke(x.squeeze(1), radius)


def render(image_size: int = 28, per_class: int = 20, seed: int = 0) -> dict[str, Any]:
    """Draw the whole dataset (every split) without the cache; :func:`load` caches this.

    Args:
        image_size: the side of the images, 8 to 128 pixels.
        per_class: images per class.
        seed: sets the faces' order and every distortion.

    Returns:
        A dict: ``images`` ``(C, per_class, image_size, image_size)`` uint8, ink = 255 on 0;
        ``codes`` ``(C,)`` int64 code points; ``faces`` ``(C,)`` int64, distinct faces per class;
        ``names`` the C Unicode names; ``scripts`` the C scripts (as in :data:`SPLITS`);
        ``face_names`` the faces each class is drawn in.
    """
    _check(image_size, per_class, seed)
    canvas = 64 if image_size <= 64 else 128  # fine enough that shrinking averages the strokes
    codes, drawings, face_names = _classes()
    if canvas != 64:
        drawings = fonts.redraw(codes, face_names, canvas, round(_BOX * canvas))

    generator = torch.Generator().manual_seed(seed)
    source = torch.empty(len(codes), per_class, dtype=torch.long)  # each image's row of `stack`
    offset = 0
    for c, d in enumerate(drawings):
        order = torch.randperm(len(d), generator=generator)
        source[c] = offset + order[torch.arange(per_class) % len(d)]
        offset += len(d)
    stack = torch.cat(drawings)  # (sum of faces, canvas, canvas) uint8
    source = source.flatten()
    u = torch.rand(len(source), 7, generator=generator)
    warp = torch.randn(len(source), 2, _WARP_GRID, _WARP_GRID, generator=generator)
    images = torch.empty(len(source), image_size, image_size, dtype=torch.uint8)
    for s in runtime.progress(range(0, len(source), _CHUNK), desc="Glyphs: distorting"):
        x = stack[source[s : s + _CHUNK]].float() / 255
        images[s : s + _CHUNK] = to_uint8_images(
            _distort(x, u[s : s + _CHUNK], warp[s : s + _CHUNK]), image_size
        )
    return {
        "images": images.view(len(codes), per_class, image_size, image_size),
        "codes": torch.tensor(codes, dtype=torch.long),
        "faces": torch.tensor([len(d) for d in drawings], dtype=torch.long),
        "names": tuple(unicodedata.name(chr(c)) for c in codes),
        "scripts": tuple(fonts.script_of(c) for c in codes),
        "face_names": tuple(face_names),
    }


def _cache_path(folder: Path, image_size: int, per_class: int, seed: int) -> Path:
    recipe = (_MIN_FACES, _BOX, _SAME_FACE, _SAME_CLASS, _SAME_ACROSS, _ROTATION, _SHEAR)
    recipe += (_SCALE, _STRETCH, _SHIFT, _STROKE, _ELASTIC, _WARP_GRID)
    recipe += (tuple(SPLITS.items()), fonts.FACE_FILES)
    key = cache.digest(*fonts.face_paths(), RENDER_VERSION, recipe, image_size, per_class, seed)
    return folder / f"glyphs-{key}.pt"


def load(
    split: str = "train",
    image_size: int = 28,
    per_class: int = 20,
    seed: int = 0,
    cache_dir: Path | None = None,
) -> ImageClasses:
    """One split of Glyphs: drawn on first use (seconds), then read from the disk cache.

    Args:
        split: ``"train"``, ``"val"`` or ``"test"``; their scripts are :data:`SPLITS`.
        image_size: the side of the images, 8 to 128 pixels.
        per_class: images per class (Omniglot has 20).
        seed: sets the faces' order and every distortion; the same seed gives the same bits.
        cache_dir: where the drawn dataset is kept (default :func:`metalib.runtime.cache_dir`).

    Returns:
        :class:`ImageClasses` named ``"glyphs/<split>"``: images ``(C, per_class, image_size,
        image_size)`` uint8 (ink = 255 on 0), class names the letters' Unicode names, groups
        their scripts.

    Example:
        >>> train = load("train")  # doctest: +SKIP
        >>> train.get(torch.tensor([0, 1]), torch.tensor([0, 0])).shape  # doctest: +SKIP
        torch.Size([2, 1, 28, 28])
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {tuple(SPLITS)}")
    _check(image_size, per_class, seed)
    folder = runtime.cache_dir() if cache_dir is None else Path(cache_dir)
    path = _cache_path(folder, image_size, per_class, seed)
    data = cache.cached(path, lambda: render(image_size, per_class, seed))
    keep = [i for i, script in enumerate(data["scripts"]) if script in SPLITS[split]]
    return ImageClasses(
        name=f"glyphs/{split}",
        images=data["images"][keep],
        class_names=tuple(data["names"][i] for i in keep),
        groups=tuple(data["scripts"][i] for i in keep),
    )
