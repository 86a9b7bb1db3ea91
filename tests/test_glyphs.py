"""Tests of metalib.data.glyphs and metalib.data.fonts: the Glyphs dataset drawn from fonts."""

from __future__ import annotations

import functools
import math
import string
import unicodedata
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from matplotlib.ft2font import FT2Font

from metalib.data import cache, fonts, glyphs

SMALL = {"image_size": 12, "per_class": 2}  # a cheap configuration for the cache and seed tests


@pytest.fixture(scope="module", autouse=True)
def _classes_once():
    """Every render in this module reuses one drawing and selection of the classes (the slow,
    seed-independent steps), so that each further render costs only its distortions."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(glyphs, "_classes", functools.cache(glyphs._classes))
        yield


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("glyphs-cache")


@pytest.fixture(scope="module")
def splits(cache_root) -> dict:
    """The three default splits through load(): the first renders and caches, the others read."""
    return {split: glyphs.load(split, cache_dir=cache_root) for split in glyphs.SPLITS}


@pytest.fixture(scope="module")
def rendered(splits, cache_root) -> dict:
    """The whole default dataset (every split) as render() made it, read back from the cache."""
    (path,) = cache_root.glob("glyphs-*.pt")
    return cache.load(path)


# --- the splits ------------------------------------------------------------------------------


def test_split_table_assigns_each_script_once():
    scripts = [s for names in glyphs.SPLITS.values() for s in names]
    assert len(scripts) == len(set(scripts))
    assert set(glyphs.SPLITS) == {"train", "val", "test"}


def test_splits_share_no_class_and_no_script(splits, rendered):
    names = {split: set(data.class_names) for split, data in splits.items()}
    assert not names["train"] & names["val"]
    assert not names["train"] & names["test"]
    assert not names["val"] & names["test"]
    for split, data in splits.items():
        assert data.name == f"glyphs/{split}"
        assert set(data.group_names) == set(glyphs.SPLITS[split])  # every listed script is there
        assert data.n_classes >= 100, "each split must allow 20-way episodes with room to spare"
    assert sum(d.n_classes for d in splits.values()) == len(rendered["codes"])
    assert len(rendered["codes"]) >= 2000


def test_shapes_dtype_and_range(splits):
    train = splits["train"]
    assert train.images.dtype == torch.uint8
    assert train.images.shape[1:] == (20, 28, 28)
    x = train.get(torch.tensor([0, train.n_classes - 1]), torch.tensor([0, 19]))
    assert x.shape == (2, 1, 28, 28) and x.dtype == torch.float32
    assert 0.0 <= x.min() and x.max() <= 1.0


def test_ink_is_one_on_a_background_of_zero(rendered):
    x = rendered["images"].float() / 255  # (C, M, 28, 28)
    border = torch.cat([x[..., 0, :], x[..., -1, :], x[..., :, 0], x[..., :, -1]], -1)
    assert border.mean() < 0.01  # glyphs are centred with a margin
    assert (x == 0).float().mean() > 0.5  # most pixels are background
    assert 0.05 < x.mean() < 0.35  # strokes, not blobs
    assert x[..., 10:18, 10:18].mean() > 1.5 * x.mean()  # ink gathers in the centre
    per_image = x.mean((-1, -2))
    assert per_image.min() > 0.005, "no image is blank"


def test_classes_are_letters_named_by_unicode(rendered):
    for code, name, script in zip(
        rendered["codes"].tolist(), rendered["names"], rendered["scripts"], strict=True
    ):
        assert unicodedata.category(chr(code)) in ("Lu", "Ll", "Lt", "Lo")
        assert unicodedata.name(chr(code)) == name
        assert name.startswith(script.upper() + " ")


def test_look_alikes_are_one_class(rendered):
    codes = set(rendered["codes"].tolist())
    for group in ["AΑА", "OΟО", "uս", "XΧХ𐌗", "HΗНᕼ"]:  # Latin, Greek, Cyrillic, Armenian, ...
        present = [ch for ch in group if ord(ch) in codes]
        assert present == [group[0]], f"{group}: {present}"
    assert ord("ب") in codes and ord("ﺏ") not in codes  # an Arabic letter and its isolated form


# --- faces --------------------------------------------------------------------------------------


def test_every_class_is_drawn_in_at_least_four_faces_that_hold_it(rendered):
    faces = rendered["faces"]
    assert faces.min() >= 4
    cmaps = {face.name: face.letters for face in fonts.faces()}
    for code, names, n in zip(
        rendered["codes"].tolist(), rendered["face_names"], faces.tolist(), strict=True
    ):
        assert len(names) == n == len(set(names))
        assert all(code in cmaps[name] for name in names)


def test_faces_that_draw_a_letter_alike_count_once(splits):
    codes, drawings, _ = glyphs._classes()  # the drawings behind the cached dataset
    for d in drawings:
        far = fonts.distances(fonts.thumbnails(d)) + torch.eye(len(d))
        assert far.min() >= glyphs._SAME_FACE
        assert d.flatten(1).sum(1).min() >= 4 * 255  # no blank glyph counts as a face
    # DejaVu Sans Mono draws Arabic ain like DejaVu Sans does: 3 distinct faces, too few.
    assert ord("ع") not in codes


def test_faces_read_only_real_letters_from_each_font():
    by_name = {face.name: face for face in fonts.faces()}
    assert "LastResortHE-Regular" not in by_name and "cmex10" not in by_name
    assert not any(name.startswith(("STIXSiz", "STIXNonUni")) for name in by_name)
    # Computer Modern's TeX encodings: only ASCII letters sit at their Unicode positions.
    assert by_name["cmr10"].letters == set(map(ord, string.ascii_letters))
    assert by_name["cmsy10"].letters == set(map(ord, string.ascii_uppercase))
    assert ord("ᐁ") in by_name["DejaVuSans"].letters
    charmap = FT2Font(str(by_name["DejaVuSerif"].path)).get_charmap()
    assert all(code in charmap for code in by_name["DejaVuSerif"].letters)


def test_script_of_reads_the_unicode_name():
    assert fonts.script_of(ord("A")) == "Latin"
    assert fonts.script_of(ord("ᐁ")) == "Canadian Syllabics"
    assert fonts.script_of(ord("𐌀")) == "Old Italic"
    assert fonts.script_of(ord("1")) is None
    assert not fonts.is_letter(ord("ʰ"))  # modifier letters repeat other letters
    assert not fonts.is_letter(ord("ﹲ")) and not fonts.is_letter(ord("ﹷ"))  # Arabic marks
    assert fonts.is_letter(ord("ب")) and fonts.is_letter(ord("ﺑ"))  # a letter, its initial form


def test_render_glyph_fits_the_box_and_centres_it():
    face = next(f for f in fonts.faces() if f.name == "DejaVuSans")
    font = FT2Font(str(face.path))
    for ch in "IWgᐁ":
        image = fonts.render_glyph(font, ord(ch), canvas=64, box=44)
        assert image.shape == (64, 64) and image.dtype == torch.uint8
        rows, cols = torch.nonzero(image, as_tuple=True)
        height = int(rows.max() - rows.min() + 1)
        width = int(cols.max() - cols.min() + 1)
        assert 42 <= max(height, width) <= 46, (ch, height, width)
        assert abs((rows.max() + rows.min()) / 2 - 31.5) <= 1
        assert abs((cols.max() + cols.min()) / 2 - 31.5) <= 1
        assert torch.equal(image, fonts.render_glyph(font, ord(ch), canvas=64, box=44))


# --- randomness -------------------------------------------------------------------------------


def test_render_is_deterministic():
    first, second = glyphs.render(**SMALL), glyphs.render(**SMALL)
    assert torch.equal(first["images"], second["images"])
    assert torch.equal(first["codes"], second["codes"])
    assert first["images"].shape[1:] == (2, 12, 12)


def test_different_seeds_give_different_images_of_the_same_classes():
    first, other = glyphs.render(**SMALL), glyphs.render(seed=1, **SMALL)
    assert torch.equal(other["codes"], first["codes"])  # the classes do not depend on the seed
    differs = (other["images"] != first["images"]).flatten(2).any(-1)  # (C, M)
    assert differs.float().mean() > 0.95


@pytest.mark.slow  # draws every face again at 128 pixels (about 6 s)
def test_large_images_are_drawn_finer_from_the_same_classes():
    small, large = glyphs.render(**SMALL), glyphs.render(image_size=96, per_class=1)
    assert torch.equal(large["codes"], small["codes"])
    assert large["images"].shape[1:] == (1, 96, 96)
    x = large["images"].float() / 255
    assert (x == 0).float().mean() > 0.5 and 0.05 < x.mean() < 0.35


def test_instances_within_a_class_all_differ(rendered):
    x = rendered["images"].flatten(2).double()  # (C, M, 784)
    code = x @ torch.rand(
        x.shape[-1], dtype=torch.float64, generator=torch.Generator().manual_seed(0)
    )
    gaps = code.sort(dim=1).values.diff(dim=1)  # equal images would give a gap of 0
    assert gaps.min() > 0


def test_identity_distortion_leaves_the_image_alone():
    def u_for(value, lo, hi):
        return (value - lo) / (hi - lo)

    x = torch.rand(3, 64, 64)
    u = torch.tensor(
        [0.5, 0.5, u_for(1.0, *glyphs._SCALE), 0.5, 0.5, 0.5, u_for(0.0, *glyphs._STROKE)]
    ).repeat(3, 1)
    still = torch.zeros(3, 2, glyphs._WARP_GRID, glyphs._WARP_GRID)
    torch.testing.assert_close(glyphs._distort(x, u, still), x, atol=1e-5, rtol=0)
    # A shift of 2/64 in [-1, 1] coordinates moves the image one pixel right.
    u[:, 4] = u_for(2 / 64, -glyphs._SHIFT, glyphs._SHIFT)
    x[..., :, 0] = 0  # so the pixel pushed off the edge does not matter
    x[..., :, -1] = 0
    shifted = torch.roll(x, shifts=1, dims=-1)
    torch.testing.assert_close(glyphs._distort(x, u, still), shifted, atol=1e-5, rtol=0)


def test_constant_elastic_field_is_a_shift():
    """A warp field that is the same everywhere moves every pixel alike: sampling 2/64 to the
    right (one pixel of a 64-pixel canvas) moves the image one pixel left."""
    x = torch.rand(2, 64, 64)
    x[..., :, 0] = 0
    x[..., :, -1] = 0
    u = torch.tensor(
        [
            0.5,
            0.5,
            (1.0 - glyphs._SCALE[0]) / (glyphs._SCALE[1] - glyphs._SCALE[0]),
            0.5,
            0.5,
            0.5,
            (0.0 - glyphs._STROKE[0]) / (glyphs._STROKE[1] - glyphs._STROKE[0]),
        ]
    ).repeat(2, 1)
    warp = torch.zeros(2, 2, glyphs._WARP_GRID, glyphs._WARP_GRID)
    warp[:, 0] = (2 / 64) / glyphs._ELASTIC
    expected = torch.roll(x, shifts=-1, dims=-1)
    torch.testing.assert_close(glyphs._distort(x, u, warp), expected, atol=1e-5, rtol=0)


def test_stroke_blends_erosion_and_dilation_like_pooling():
    x = torch.rand(5, 12, 12, dtype=torch.float64)
    radius = torch.tensor([-0.5, 0.0, 0.25, 1.0, 1.75], dtype=torch.float64)
    levels = {
        -1: -F.max_pool2d(-x[:, None], 3, 1, 1)[:, 0],
        0: x,
        1: F.max_pool2d(x[:, None], 3, 1, 1)[:, 0],
        2: F.max_pool2d(x[:, None], 5, 1, 2)[:, 0],
    }
    expected = []
    for i, r in enumerate(radius.tolist()):
        k, frac = math.floor(r), r - math.floor(r)
        expected.append(levels[k][i] * (1 - frac) + levels[k + 1][i] * frac)
    torch.testing.assert_close(glyphs._stroke(x, radius), torch.stack(expected))


# --- the cache ----------------------------------------------------------------------------------


def test_cache_hit_reads_the_file_without_rendering(splits, cache_root, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("render() called on a cache hit")

    monkeypatch.setattr(glyphs, "render", fail)
    again = glyphs.load("val", cache_dir=cache_root)
    assert torch.equal(again.images, splits["val"].images)
    assert again.class_names == splits["val"].class_names


def test_cache_key_covers_the_settings(tmp_path):
    key = functools.partial(glyphs._cache_path, tmp_path)
    assert key(28, 20, 0) == key(28, 20, 0)
    assert len({key(28, 20, 0), key(32, 20, 0), key(28, 10, 0), key(28, 20, 1)}) == 4


def test_corrupt_cache_warns_and_is_rebuilt_identically(tmp_path, monkeypatch):
    monkeypatch.setenv("METALIB_CACHE", str(tmp_path))  # cache_dir=None reads METALIB_CACHE
    first = glyphs.load("test", **SMALL)
    (path,) = tmp_path.glob("glyphs-*.pt")
    data = bytearray(path.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = bytes(64)  # a damaged block in the payload
    path.write_bytes(bytes(data))
    with pytest.warns(RuntimeWarning, match="corrupt"):
        rebuilt = glyphs.load("test", **SMALL)
    assert torch.equal(rebuilt.images, first.images)
    assert cache.load(path) is not None  # the rebuilt file is whole again


# --- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"split": "validation"}, "unknown split"),
        ({"image_size": 7}, "image_size"),
        ({"image_size": 129}, "image_size"),
        ({"image_size": 28.0}, "image_size"),
        ({"per_class": 0}, "per_class"),
        ({"per_class": True}, "per_class"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_input_raises_value_error(kwargs, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        glyphs.load(cache_dir=tmp_path, **kwargs)
    if "split" not in kwargs:
        with pytest.raises(ValueError, match=message):
            glyphs.render(**kwargs)


def test_missing_fonts_raise_value_error(tmp_path):
    with pytest.raises(ValueError, match="font files"):
        fonts.face_paths(tmp_path)
