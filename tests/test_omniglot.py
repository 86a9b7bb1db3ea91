"""Tests of metalib.data.omniglot on the two "background small" zips (skipped where absent)."""

from __future__ import annotations

import io
import shutil
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from metalib.data import omniglot
from metalib.data.base import to_uint8_images

SMALL1 = "images_background_small1"
SMALL2 = "images_background_small2"
SMALL1_ALPHABETS = {"Balinese": 24, "Early_Aramaic": 22, "Greek": 24, "Korean": 40, "Latin": 26}
SMALL2_ALPHABETS = {
    "Greek": 24,
    "Japanese_(katakana)": 47,
    "Latin": 26,
    "Sanskrit": 42,
    "Tagalog": 17,
}


@pytest.fixture(scope="module")
def decoded(tmp_path_factory) -> Path:
    """One decoded-image cache shared by this file's tests, so each zip is decoded once."""
    return tmp_path_factory.mktemp("omniglot-decoded")


def _png_bytes(ink: np.ndarray) -> bytes:
    """A 1-bit PNG, black where ``ink`` is True, as in Omniglot."""
    buf = io.BytesIO()
    Image.fromarray(~ink).convert("1").save(buf, format="PNG")
    return buf.getvalue()


def _write_set(root: Path, name: str, alphabets: dict[str, int], per_class: int = 20) -> None:
    """A synthetic extracted set: each image has one ink pixel at (character, drawer)."""
    for alphabet, n_chars in alphabets.items():
        for c in range(n_chars):
            folder = root / name / alphabet / f"character{c + 1:02d}"
            folder.mkdir(parents=True)
            for d in range(per_class):
                ink = np.zeros((12, 12), dtype=bool)
                ink[c % 12, d % 12] = True
                (folder / f"{d:04d}_{c + 1:02d}.png").write_bytes(_png_bytes(ink))


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for member, data in members.items():
            z.writestr(member, data)
    return path


# --- the real small zips -------------------------------------------------------------------------


@pytest.mark.omniglot
def test_official_md5s(omniglot_dir):
    for name in (SMALL1, SMALL2):
        assert omniglot.md5sum(omniglot_dir / f"{name}.zip") == omniglot.MD5[name]


@pytest.mark.omniglot
@pytest.mark.parametrize(
    ("name", "alphabets"), [(SMALL1, SMALL1_ALPHABETS), (SMALL2, SMALL2_ALPHABETS)]
)
def test_class_counts_and_shapes(omniglot_dir, decoded, name, alphabets):
    ds = omniglot.load_set(name, root=omniglot_dir, cache_dir=decoded)
    assert Counter(ds.groups) == alphabets
    assert ds.images.shape == (sum(alphabets.values()), 20, 28, 28)
    assert ds.images.dtype == torch.uint8
    assert ds.name == f"omniglot/{name}"
    first = sorted(alphabets)[0]  # classes sorted by alphabet, then character
    assert ds.class_names[:2] == (f"{first}/character01", f"{first}/character02")
    assert len(set(ds.class_names)) == ds.n_classes
    assert all(
        c.startswith(g + "/character") for c, g in zip(ds.class_names, ds.groups, strict=True)
    )


@pytest.mark.omniglot
def test_ink_convention(omniglot_dir, decoded):
    x = omniglot.load_set(SMALL1, root=omniglot_dir, cache_dir=decoded).images.float() / 255
    ink = x.mean().item()
    assert 0.03 < ink < 0.25, f"mean ink {ink}: strokes are thin, most of the image is background"
    # background is exactly 0: the most common value, and nearly the whole image border
    assert torch.mode(x.flatten()).values.item() == 0.0
    border = torch.cat([x[..., 0, :], x[..., -1, :], x[..., :, 0], x[..., :, -1]], dim=-1)
    assert (border == 0).float().mean() > 0.97
    # every image has some ink
    assert (x.amax(dim=(-1, -2)) > 0.5).all()


def _direct_decode(zip_path: Path, name: str, class_name: str, drawer: int) -> np.ndarray:
    """The reference: PIL straight on the PNG, drawer files sorted by name, ink = 1."""
    with zipfile.ZipFile(zip_path) as z:
        prefix = f"{name}/{class_name}/"
        files = sorted(n for n in z.namelist() if n.startswith(prefix) and n.endswith(".png"))
        assert len(files) == 20
        img = Image.open(io.BytesIO(z.read(files[drawer])))
        assert img.size == (105, 105) and img.mode == "1"
        return 1.0 - np.asarray(img, dtype=np.float64)  # True (white) -> 0, False (black) -> 1


@pytest.mark.omniglot
def test_image_matches_direct_pil_decode(omniglot_dir, decoded):
    ds = omniglot.load_set(SMALL1, root=omniglot_dir, cache_dir=decoded)
    c = ds.class_names.index("Korean/character13")
    ref = torch.from_numpy(
        _direct_decode(omniglot_dir / f"{SMALL1}.zip", SMALL1, "Korean/character13", 7)
    )
    expected = to_uint8_images(ref.unsqueeze(0).float(), 28)[0]
    assert torch.equal(ds.images[c, 7], expected)
    # at the native 105 px nothing is resampled: ink is exactly 255 where the PNG is black
    full = omniglot.load_set(SMALL1, root=omniglot_dir, image_size=105, cache_dir=decoded)
    assert torch.equal(full.images[c, 7], (ref * 255).to(torch.uint8))
    assert set(full.images[c].unique().tolist()) == {0, 255}
    # area downsampling: each 28 px pixel is the mean of a 3.75 x 3.75 patch, so total ink is kept
    assert abs(full.images[c, 7].float().mean() - ds.images[c, 7].float().mean()) < 1.0


@pytest.mark.omniglot
def test_extracted_folder_gives_the_same_tensor(omniglot_dir, decoded, tmp_path, monkeypatch):
    with zipfile.ZipFile(omniglot_dir / f"{SMALL1}.zip") as z:
        z.extractall(tmp_path)
    (tmp_path / SMALL1 / ".DS_Store").write_bytes(b"junk")  # ignored, as macOS clutter is
    monkeypatch.setattr(omniglot, "_CHUNK", 97)  # chunk boundaries must not change the result
    from_folder = omniglot.load_set(SMALL1, root=tmp_path, cache_dir=tmp_path / "cache")
    from_zip = omniglot.load_set(SMALL1, root=omniglot_dir, cache_dir=decoded)
    assert omniglot.find_set(SMALL1, tmp_path) == tmp_path / SMALL1
    assert torch.equal(from_folder.images, from_zip.images)
    assert from_folder.class_names == from_zip.class_names
    assert from_folder.groups == from_zip.groups
    # with both a zip and its folder, the zip is read: it can be checked against its md5
    shutil.copy(omniglot_dir / f"{SMALL1}.zip", tmp_path)
    assert omniglot.find_set(SMALL1, tmp_path) == tmp_path / f"{SMALL1}.zip"


@pytest.mark.omniglot
def test_small_splits_are_disjoint(omniglot_dir, decoded):
    splits = {
        s: omniglot.load(s, root=omniglot_dir, variant="small", cache_dir=decoded)
        for s in ("train", "val", "test")
    }
    assert {s: d.n_classes for s, d in splits.items()} == {"train": 136, "val": 42, "test": 64}
    assert splits["train"].group_names == tuple(sorted(SMALL1_ALPHABETS))
    assert splits["val"].group_names == ("Sanskrit",)
    assert splits["test"].group_names == ("Japanese_(katakana)", "Tagalog")
    assert splits["test"].name == "omniglot-small/test"
    names = [set(d.class_names) for d in splits.values()]
    groups = [set(d.groups) for d in splits.values()]
    for i in range(3):
        for j in range(i + 1, 3):
            assert not names[i] & names[j] and not groups[i] & groups[j]


@pytest.mark.omniglot
def test_small2_greek_and_latin_are_small1s(omniglot_dir, decoded):
    """Why the small variant takes Greek and Latin from small1 only: they are the same images."""
    one = omniglot.load_set(SMALL1, root=omniglot_dir, cache_dir=decoded)
    two = omniglot.load_set(SMALL2, root=omniglot_dir, cache_dir=decoded)
    for alphabet in ("Greek", "Latin"):
        a = [i for i, g in enumerate(one.groups) if g == alphabet]
        b = [i for i, g in enumerate(two.groups) if g == alphabet]
        assert torch.equal(one.images[a], two.images[b])


@pytest.mark.omniglot
def test_cache_hit_is_identical_and_skips_decoding(omniglot_dir, tmp_path, monkeypatch):
    first = omniglot.load_set(SMALL2, root=omniglot_dir, cache_dir=tmp_path)
    assert len(list(tmp_path.glob(f"{SMALL2}-28px-*.pt"))) == 1

    def no_decoding(*args):
        raise AssertionError("a cached set was decoded again")

    monkeypatch.setattr(omniglot, "_decode", no_decoding)
    second = omniglot.load_set(SMALL2, root=omniglot_dir, cache_dir=tmp_path)
    assert torch.equal(first.images, second.images)
    assert first.class_names == second.class_names and first.groups == second.groups
    with pytest.raises(AssertionError, match="decoded again"):  # another size is another entry
        omniglot.load_set(SMALL2, root=omniglot_dir, image_size=14, cache_dir=tmp_path)


# --- finding and downloading ---------------------------------------------------------------------


def test_missing_data_error_lists_every_place(tmp_path, monkeypatch):
    monkeypatch.setenv("METALIB_OMNIGLOT", str(tmp_path / "env"))
    monkeypatch.setenv("METALIB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError) as err:
        omniglot.load("test")  # images_evaluation: not in the shared folder
    message = str(err.value)
    for place in (tmp_path / "env", tmp_path / "cache" / "omniglot", omniglot.search_roots()[-1]):
        assert str(place / "images_evaluation.zip") in message
        assert str(place / "images_evaluation") in message
    assert f"{omniglot.BASE_URL}/images_evaluation.zip" in message and "download=True" in message
    # an explicit root is the only place looked at
    with pytest.raises(FileNotFoundError) as err:
        omniglot.find_set(SMALL1, tmp_path / "mine")
    assert str(tmp_path / "mine") in str(err.value) and str(tmp_path / "env") not in str(err.value)


@pytest.mark.omniglot
def test_env_root_is_searched_first(omniglot_dir, tmp_path, monkeypatch):
    shutil.copy(omniglot_dir / f"{SMALL1}.zip", tmp_path / f"{SMALL1}.zip")
    monkeypatch.setenv("METALIB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("METALIB_OMNIGLOT", str(tmp_path))
    assert omniglot.find_set(SMALL1) == tmp_path / f"{SMALL1}.zip"
    monkeypatch.delenv("METALIB_OMNIGLOT")
    assert omniglot.find_set(SMALL1) == omniglot_dir / f"{SMALL1}.zip"


@pytest.fixture
def server(omniglot_dir, tmp_path) -> Path:
    """A folder served by file:// URLs, holding a good small1 and a corrupted small2."""
    folder = tmp_path / "server"
    folder.mkdir()
    shutil.copy(omniglot_dir / f"{SMALL1}.zip", folder / f"{SMALL1}.zip")
    data = bytearray((omniglot_dir / f"{SMALL2}.zip").read_bytes())
    data[1000] ^= 0xFF
    (folder / f"{SMALL2}.zip").write_bytes(bytes(data))
    return folder


@pytest.mark.omniglot
def test_download_good_file(server, tmp_path):
    dest = tmp_path / "dest"
    path = omniglot.download(SMALL1, dest, base_url=server.as_uri())
    assert path == dest / f"{SMALL1}.zip" and omniglot.md5sum(path) == omniglot.MD5[SMALL1]
    assert sorted(p.name for p in dest.iterdir()) == [f"{SMALL1}.zip"]  # no temporary left
    # a right file already there is kept: no request is made (this URL would fail)
    assert omniglot.download(SMALL1, dest, base_url=(tmp_path / "nowhere").as_uri()) == path
    # a wrong one is replaced
    path.write_bytes(b"not the zip")
    omniglot.download(SMALL1, dest, base_url=server.as_uri())
    assert omniglot.md5sum(path) == omniglot.MD5[SMALL1]


@pytest.mark.omniglot
def test_download_bad_md5_leaves_nothing(server, tmp_path):
    dest = tmp_path / "dest"
    with pytest.raises(ValueError, match="md5"):
        omniglot.download(SMALL2, dest, base_url=server.as_uri())
    assert list(dest.iterdir()) == []


def test_download_unreachable_url(tmp_path):
    with pytest.raises(OSError, match="could not download"):
        omniglot.download(SMALL1, tmp_path, base_url=(tmp_path / "nowhere").as_uri())
    assert list(tmp_path.iterdir()) == []


@pytest.mark.omniglot
def test_load_with_download_uses_base_url(server, tmp_path, monkeypatch, decoded):
    monkeypatch.setattr(omniglot, "BASE_URL", server.as_uri())
    ds = omniglot.load(
        "train", root=tmp_path / "dl", download=True, variant="small", cache_dir=decoded
    )
    assert ds.n_classes == 136 and (tmp_path / "dl" / f"{SMALL1}.zip").is_file()


# --- broken files --------------------------------------------------------------------------------


@pytest.mark.omniglot
def test_corrupt_zips_raise_value_errors(omniglot_dir, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    target = root / f"{SMALL1}.zip"
    good = (omniglot_dir / f"{SMALL1}.zip").read_bytes()
    target.write_bytes(good[: len(good) // 2])  # truncated, as an interrupted download
    with pytest.raises(ValueError, match=f"{target}.*md5.*download"):
        omniglot.load_set(SMALL1, root=root, cache_dir=tmp_path / "c")
    with pytest.raises(ValueError, match=f"{target} is not a readable zip"):
        omniglot.load_set(SMALL1, root=root, cache_dir=tmp_path / "c", verify=False)
    target.write_bytes(b"<html>404 Not Found</html>")  # not a zip at all
    with pytest.raises(ValueError, match="not a readable zip"):
        omniglot.load_set(SMALL1, root=root, cache_dir=tmp_path / "c", verify=False)


@pytest.mark.omniglot
def test_damaged_member_raises(omniglot_dir, tmp_path):
    data = bytearray((omniglot_dir / f"{SMALL1}.zip").read_bytes())
    data[2000] ^= 0xFF  # inside a compressed member: CRC or inflate error
    (tmp_path / f"{SMALL1}.zip").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="not a readable"):
        omniglot.load_set(SMALL1, root=tmp_path, cache_dir=tmp_path / "c", verify=False)


def test_wrong_layout_raises(tmp_path):
    png = _png_bytes(np.zeros((12, 12), dtype=bool))
    _zip(tmp_path / f"{SMALL1}.zip", {"other_folder/Greek/character01/0001_01.png": png})
    with pytest.raises(ValueError, match="unexpected entry 'other_folder"):
        omniglot.load_set(SMALL1, root=tmp_path, cache_dir=tmp_path / "c", verify=False)
    _zip(tmp_path / f"{SMALL1}.zip", {f"{SMALL1}/readme.txt": b"no images"})
    with pytest.raises(ValueError, match="holds no"):
        omniglot.load_set(SMALL1, root=tmp_path, cache_dir=tmp_path / "c", verify=False)


def test_incomplete_character_names_its_folder(tmp_path):
    png = _png_bytes(np.zeros((12, 12), dtype=bool))
    members = {f"{SMALL1}/Greek/character03/{d:04d}_03.png": png for d in range(19)}
    _zip(tmp_path / f"{SMALL1}.zip", members)
    with pytest.raises(ValueError, match=f"{SMALL1}/Greek/character03 has 19 images"):
        omniglot.load_set(SMALL1, root=tmp_path, cache_dir=tmp_path / "c", verify=False)


def test_unreadable_png_names_the_file(tmp_path):
    members = {f"{SMALL1}/Greek/character01/{d:04d}_01.png": b"not a png" for d in range(20)}
    _zip(tmp_path / f"{SMALL1}.zip", members)
    with pytest.raises(ValueError, match="character01/0000_01.png is not a readable PNG"):
        omniglot.load_set(SMALL1, root=tmp_path, cache_dir=tmp_path / "c", verify=False)


# --- the full split, on a synthetic extracted layout ---------------------------------------------


def test_full_splits_by_alphabet_on_synthetic_folders(tmp_path):
    train_alphabets = {f"Alphabet{i:02d}": 1 + i % 3 for i in range(25)}
    _write_set(
        tmp_path,
        "images_background",
        {**train_alphabets, **dict.fromkeys(omniglot.VAL_ALPHABETS, 2)},
    )
    _write_set(tmp_path, "images_evaluation", {"Keble": 2, "Tengwar": 1})
    kw = {"root": tmp_path, "image_size": 12, "cache_dir": tmp_path / "c"}
    train, val, test = (omniglot.load(s, **kw) for s in ("train", "val", "test"))
    assert train.group_names == tuple(train_alphabets)
    assert train.n_classes == sum(train_alphabets.values())
    assert val.group_names == omniglot.VAL_ALPHABETS and val.n_classes == 10
    assert test.group_names == ("Keble", "Tengwar") and test.name == "omniglot/test"
    # the synthetic ink pixel sits at (character, drawer): the order of classes and drawers
    keble2 = test.class_names.index("Keble/character02")
    assert test.images[keble2, 5, 1, 5] == 255 and test.images[keble2, 5].sum() == 255


def test_background_without_the_val_alphabets_is_rejected(tmp_path):
    _write_set(tmp_path, "images_background", {"Greek": 1, "Latin": 1})
    with pytest.raises(ValueError, match="has no alphabet.*Tifinagh"):
        omniglot.load("val", root=tmp_path, image_size=12, cache_dir=tmp_path / "c")


# --- arguments -----------------------------------------------------------------------------------


def test_bad_arguments_raise(tmp_path):
    with pytest.raises(ValueError, match="unknown Omniglot set"):
        omniglot.load_set("images_background.zip", root=tmp_path)
    with pytest.raises(ValueError, match="unknown Omniglot set"):
        omniglot.download("omniglot", tmp_path)
    with pytest.raises(ValueError, match="image_size"):
        omniglot.load_set(SMALL1, root=tmp_path, image_size=4)
    with pytest.raises(ValueError, match="split must be one of"):
        omniglot.load("training", root=tmp_path)
    with pytest.raises(ValueError, match="variant must be one of"):
        omniglot.load("train", root=tmp_path, variant="tiny")


def test_load_available_prefers_the_full_set_then_the_small_one(monkeypatch, tmp_path):
    tried = []

    def fake(split, root=None, cache_dir=None, variant="full"):
        tried.append((split, variant))
        if variant in missing:
            raise FileNotFoundError(variant)
        return f"{variant}/{split}"

    monkeypatch.setattr(omniglot, "load", fake)
    missing = set()
    assert omniglot.load_available("train", "test") == ("full/train", "full/test")
    missing, tried[:] = {"full"}, []
    assert omniglot.load_available("test") == ("small/test",)
    assert tried == [("test", "full"), ("test", "small")]
    missing = {"full", "small"}
    assert omniglot.load_available("train", "test") is None
    with pytest.raises(ValueError, match="at least one split"):
        omniglot.load_available()


@pytest.mark.omniglot
def test_load_available_finds_the_small_zips(omniglot_dir, decoded, tmp_path):
    background, test = omniglot.load_available("train", "test", root=omniglot_dir,
                                                cache_dir=decoded)  # fmt: skip
    assert (background.name, test.name) == ("omniglot-small/train", "omniglot-small/test")
    assert not set(background.group_names) & set(test.group_names)
    assert omniglot.load_available("test", root=tmp_path) is None  # an empty folder
