"""The font faces Glyphs is drawn from, the letters each one holds, and drawing them.

Only fonts that ship with matplotlib are used (``matplotlib.get_data_path()/fonts/ttf``), so the
dataset needs no download. Which files count as faces, and which of their characters are real:

* DejaVu Sans, Sans Mono and Serif, four styles each: their Unicode cmaps are honest.
* STIXGeneral, four styles: honest cmaps. (STIXNonUni holds private-use codes only, and the
  STIXSiz* fonts hold big delimiters: neither has letters.)
* Computer Modern (BaKoMa ``cm*10.ttf``): these fonts are in TeX encodings, and their cmaps map
  only ASCII letters to the right glyphs (``"Ä"`` in ``cmr10`` draws a Greek capital). So
  ``cmr10``, ``cmb10``, ``cmss10``, ``cmti10``, ``cmtt10`` and ``cmmi10`` (math italic) give
  A-Z and a-z, ``cmsy10`` gives its calligraphic A-Z, and ``cmex10`` (delimiters) nothing.
* LastResort is excluded: it draws a box naming the Unicode block for every character.
"""

from __future__ import annotations

import string
import unicodedata
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.ft2font import FT2Font, LoadFlags

from metalib import runtime

_ASCII_LETTERS = frozenset(map(ord, string.ascii_letters))
_ASCII_CAPITALS = frozenset(map(ord, string.ascii_uppercase))

# (file, the only code points it may contribute; None = every letter in its cmap)
FACE_FILES: tuple[tuple[str, frozenset[int] | None], ...] = (
    *(
        (f"DejaVu{family}{style}.ttf", None)
        for family in ("Sans", "SansMono", "Serif")
        for style in (
            ("", "-Bold", "-Oblique", "-BoldOblique")
            if family != "Serif"
            else ("", "-Bold", "-Italic", "-BoldItalic")
        )
    ),
    *((f"STIXGeneral{style}.ttf", None) for style in ("", "Bol", "Italic", "BolIta")),
    *((f"{name}.ttf", _ASCII_LETTERS) for name in ("cmr10", "cmb10", "cmss10", "cmti10")),
    ("cmtt10.ttf", _ASCII_LETTERS),
    ("cmmi10.ttf", _ASCII_LETTERS),
    ("cmsy10.ttf", _ASCII_CAPITALS),
)

# Unicode name prefixes that name a script (two-word ones first). The fonts also hold a few
# Tifinagh, N'Ko and Ogham letters, but in fewer than 4 faces each, so those scripts are left out.
SCRIPTS: tuple[str, ...] = (
    "CANADIAN SYLLABICS",
    "OLD ITALIC",
    "ARABIC",
    "ARMENIAN",
    "COPTIC",
    "CYRILLIC",
    "GEORGIAN",
    "GREEK",
    "HEBREW",
    "LAO",
    "LATIN",
    "LISU",
)

# Letter categories kept. Lm (modifier letters: superscript and subscript copies of other
# letters, tone bars) is left out: once scaled to fit a box they repeat ordinary letters.
_LETTER_CATEGORIES = ("Lu", "Ll", "Lt", "Lo")


@dataclass(frozen=True)
class Face:
    """One font file and the letters it draws.

    Attributes:
        name: the file's stem, e.g. ``"DejaVuSerif-Italic"``.
        path: the ``.ttf`` file.
        letters: code points of the letters (Unicode category L*, not Lm) this face draws.
    """

    name: str
    path: Path
    letters: frozenset[int]


def font_dir() -> Path:
    """The folder of TrueType fonts matplotlib ships."""
    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


def script_of(code: int) -> str | None:
    """The script of a letter from its Unicode name (``"Canadian Syllabics"``), or None."""
    name = unicodedata.name(chr(code), "")
    for prefix in SCRIPTS:
        if name.startswith(prefix + " "):
            return prefix.title()
    return None


def is_letter(code: int) -> bool:
    """Whether a code point is a letter of a named script (category Lu, Ll, Lt or Lo).

    Spacing forms of Arabic vowel marks (``"ﹲ"``, a space and a dammatan; ``"ﹷ"``, a tatweel
    and a fatha) are letters by category only: a mark on a blank or a bar, so they are left out.
    """
    parts = unicodedata.decomposition(chr(code)).split()
    mark_form = len(parts) > 1 and parts[0].startswith("<") and parts[1] in ("0020", "0640")
    category = unicodedata.category(chr(code))
    return category in _LETTER_CATEGORIES and script_of(code) is not None and not mark_form


def face_paths(folder: Path | None = None) -> list[Path]:
    """The files of :data:`FACE_FILES` present in ``folder`` (matplotlib's fonts by default).

    Raises:
        ValueError: fewer than 4 of the font files are there.
    """
    folder = font_dir() if folder is None else Path(folder)
    paths = [folder / file for file, _ in FACE_FILES if (folder / file).is_file()]
    if len(paths) < 4:
        raise ValueError(
            f"found {len(paths)} of the expected font files in {folder}; Glyphs needs matplotlib's "
            "bundled DejaVu/STIX/Computer Modern fonts (reinstall matplotlib)"
        )
    return paths


def faces(folder: Path | None = None) -> list[Face]:
    """The faces of :data:`FACE_FILES` present in ``folder``, each with the letters it draws."""
    allowed_by_file = dict(FACE_FILES)
    found = []
    for path in face_paths(folder):
        allowed = allowed_by_file[path.name]
        cmap = FT2Font(str(path)).get_charmap()  # {code point: glyph index}; 0 is "missing"
        letters = frozenset(
            code
            for code, glyph in cmap.items()
            if glyph != 0
            and code < 0x110000
            and (allowed is None or code in allowed)
            and is_letter(code)
        )
        found.append(Face(path.stem, path, letters))
    return found


def render_glyph(font: FT2Font, code: int, canvas: int, box: int) -> torch.Tensor:
    """One character drawn by FreeType, scaled to fit a ``box``-pixel square, centred on a canvas.

    The glyph's outline box is measured first and the font size chosen to make its longer side
    ``box`` pixels, so the glyph is rasterised once, at its final size (sharper than resizing),
    then centred by its ink's bounding box.

    Args:
        font: an open face.
        code: the code point.
        canvas: the side of the output image.
        box: the side of the square the glyph is fitted into (``box < canvas``).

    Returns:
        ``(canvas, canvas)`` uint8 tensor, ink = 255 on 0 (FreeType's antialiased coverage);
        all zeros if the glyph has no outline.
    """
    reference = 64.0
    font.set_size(reference, 72)  # 72 dpi: one point is one pixel
    xmin, ymin, xmax, ymax = font.load_char(code, LoadFlags.NO_HINTING).bbox  # 26.6 fixed point
    extent = max(xmax - xmin, ymax - ymin) / 64.0
    out = np.zeros((canvas, canvas), dtype=np.uint8)
    if extent > 0:
        font.set_size(reference * box / extent, 72)
        font.set_text(chr(code), 0.0, LoadFlags.NO_HINTING)
        font.draw_glyphs_to_bitmap(antialiased=True)
        image = np.asarray(font.get_image())
        rows, cols = np.nonzero(image)
        if rows.size:
            ink = image[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1][:canvas, :canvas]
            h, w = ink.shape
            top, left = (canvas - h) // 2, (canvas - w) // 2
            out[top : top + h, left : left + w] = ink
    return torch.from_numpy(out)


def thumbnails(x: torch.Tensor) -> torch.Tensor:
    """Drawings to compare: ``(N, H, W)`` uint8 -> ``(N, 256)`` 16 x 16 thumbnails, scaled so
    that the distance of two rows is the RMS difference of their pixels (ink in [0, 1])."""
    return F.adaptive_avg_pool2d(x.unsqueeze(1).float() / 255, 16).flatten(1) / 16


def distances(x: torch.Tensor) -> torch.Tensor:
    """``(N, D)`` -> ``(N, N)`` float64 Euclidean distances.

    In float64 so that the matrix product's rounding, which depends on the thread count, stays
    ~1e-16 from the thresholds applied to these (the dataset must not change with the machine).
    """
    x = x.double()
    return torch.cdist(x, x)


def draw_letters(
    canvas: int, box: int, min_faces: int, same_face: float
) -> tuple[list[int], list[torch.Tensor], list[tuple[str, ...]]]:
    """Every letter drawn in every face that holds it (:func:`render_glyph`).

    A face counts for a letter only if its drawing has ink and differs from the drawings of the
    faces before it (thumbnail RMS difference at least ``same_face``: DejaVu Sans Mono copies
    its Arabic from DejaVu Sans, for one); letters left with fewer than ``min_faces`` go.

    Args:
        canvas, box: as for :func:`render_glyph`.
        min_faces: the fewest distinct faces a letter needs.
        same_face: the thumbnail RMS difference under which two faces draw a letter alike.

    Returns:
        Code points (ascending), each one's ``(n_faces, canvas, canvas)`` uint8 drawings, and the
        names of the faces those drawings come from, in :data:`FACE_FILES` order.
    """
    face_list = faces()
    holders: dict[int, int] = defaultdict(int)
    for face in face_list:
        for code in face.letters:
            holders[code] += 1
    wanted = {code for code, n in holders.items() if n >= min_faces}
    drawn: dict[int, list[tuple[str, torch.Tensor]]] = defaultdict(list)
    for face in runtime.progress(face_list, desc="Glyphs: drawing fonts"):
        font = FT2Font(str(face.path))
        for code in sorted(face.letters & wanted):
            drawn[code].append((face.name, render_glyph(font, code, canvas, box)))

    codes, drawings, face_names = [], [], []
    for code in sorted(drawn):
        images = torch.stack([image for _, image in drawn[code]])
        far = (distances(thumbnails(images)) >= same_face).tolist()
        ink = images.flatten(1).sum(1).tolist()
        kept: list[int] = []
        for i in range(len(images)):
            # Less ink than four full pixels is a blank glyph, not a drawing.
            if ink[i] >= 255 * 4 and all(far[i][j] for j in kept):
                kept.append(i)
        if len(kept) >= min_faces:
            codes.append(code)
            drawings.append(images[kept])
            face_names.append(tuple(drawn[code][i][0] for i in kept))
    return codes, drawings, face_names


def redraw(
    codes: list[int], face_names: list[tuple[str, ...]], canvas: int, box: int
) -> list[torch.Tensor]:
    """The drawings :func:`draw_letters` returned, made again at another size.

    Args:
        codes: C code points.
        face_names: the faces of each, as :func:`draw_letters` returns them.
        canvas, box: as for :func:`render_glyph`.

    Returns:
        C tensors ``(n_faces, canvas, canvas)`` uint8.
    """
    paths = {path.stem: path for path in face_paths()}
    out = [torch.empty(len(names), canvas, canvas, dtype=torch.uint8) for names in face_names]
    for name in runtime.progress(paths, desc="Glyphs: drawing fonts"):
        font = FT2Font(str(paths[name]))
        for c, names in enumerate(face_names):
            if name in names:
                out[c][names.index(name)] = render_glyph(font, codes[c], canvas, box)
    return out
