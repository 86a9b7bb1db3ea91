"""Omniglot: 1,623 handwritten characters from 50 alphabets, each drawn once by 20 people.

Reads the official files (github.com/brendenlake/omniglot, folder ``python/``) straight from the
zips, or from folders extracted from them, in a ``root`` folder:
``<set>.zip`` or ``<set>/``, holding ``<set>/<Alphabet>/characterNN/<drawer>_<NN>.png``
(105 x 105 binary PNGs, black ink on white). A class is one character of one alphabet
(``"Greek/character07"``), its group the alphabet, so splits never share an alphabet.

* ``load_set(name)`` loads one of the four sets whole; ``load(split)`` gives the meta-splits:
  ``variant="full"``: train = ``images_background`` without ``VAL_ALPHABETS`` (25 alphabets,
  813 characters), val = ``VAL_ALPHABETS`` (the last 5 of the 30 sorted, 151 characters),
  test = ``images_evaluation`` (20 alphabets, 659 characters).
  ``variant="small"`` uses only the two "background small" zips: train = all of ``small1``
  (Balinese, Early_Aramaic, Greek, Korean, Latin: 136), val = Sanskrit (42), test =
  Japanese_(katakana) and Tagalog (64), the latter three from ``small2``. ``small2``'s Greek and
  Latin are byte-for-byte ``small1``'s, so they are left out of val and test.
* Zips are checked against the official md5s (``MD5``, as torchvision lists them) before decoding;
  ``verify=False`` accepts a re-packed zip. Extracted folders are not checksummed.
* Decoded images are cached per (file content, image size): the first load of the full background
  set takes a few seconds, later loads well under one.

Lake, Salakhutdinov, Tenenbaum (2015). Human-level concept learning through probabilistic program
induction. Science 350(6266).
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch

import metalib
from metalib import runtime
from metalib.data import cache
from metalib.data.base import ImageClasses, to_uint8_images

BASE_URL = "https://github.com/brendenlake/omniglot/raw/master/python"
MD5 = {
    "images_background": "68d2efa1b9178cc56df9314c21c6e718",
    "images_evaluation": "6b91aef0f799c5bb55b94e3f2daec811",
    "images_background_small1": "e704a628b5459e08445c13499850abc4",
    "images_background_small2": "b75a71a51d3b13f821f212756fe481fd",
}
SET_NAMES = tuple(MD5)
ENV_ROOT = "METALIB_OMNIGLOT"
DRAWERS = 20
VAL_ALPHABETS = (
    "Ojibwe_(Canadian_Aboriginal_Syllabics)",
    "Sanskrit",
    "Syriac_(Estrangelo)",
    "Tagalog",
    "Tifinagh",
)
# split -> (set, alphabets); None: the set's alphabets that no other split of the variant takes
SPLITS = {
    "full": {
        "train": ("images_background", None),
        "val": ("images_background", VAL_ALPHABETS),
        "test": ("images_evaluation", None),
    },
    "small": {
        "train": ("images_background_small1", None),
        "val": ("images_background_small2", ("Sanskrit",)),
        "test": ("images_background_small2", ("Japanese_(katakana)", "Tagalog")),
    },
}
_DECODER_VERSION = 1  # bump when decoding changes, so old cache entries are not reused
_CHUNK = 1024  # images decoded and resized at once: about 60 MB of 105 x 105 pixels


def _check_name(name: str) -> None:
    if name not in MD5:
        raise ValueError(f"unknown Omniglot set {name!r}; choose one of {SET_NAMES}")


def search_roots(root: str | Path | None = None) -> list[Path]:
    """The folders searched for the data, in order; the first is where downloads go.

    ``root`` alone if given; else ``$METALIB_OMNIGLOT`` (when set), ``<cache_dir()>/omniglot``
    and ``shared/data/omniglot`` beside the repository.
    """
    if root is not None:
        return [Path(root).expanduser()]
    roots = [Path(os.environ[ENV_ROOT]).expanduser()] if os.environ.get(ENV_ROOT) else []
    shared = Path(metalib.__file__).resolve().parents[2] / "shared" / "data" / "omniglot"
    return [*roots, runtime.cache_dir() / "omniglot", shared]


def find_set(name: str, root: str | Path | None = None) -> Path:
    """The zip (preferred, it can be verified) or extracted folder of set ``name``.

    Raises:
        FileNotFoundError: listing every place looked at and how to get the data.
    """
    _check_name(name)
    tried = []
    for r in search_roots(root):
        if (r / f"{name}.zip").is_file():
            return r / f"{name}.zip"
        if (r / name).is_dir():
            return r / name
        tried += [str(r / f"{name}.zip"), str(r / name)]
    raise FileNotFoundError(
        f"Omniglot set {name!r} not found; looked for " + ", ".join(tried) + ". Download "
        f"{BASE_URL}/{name}.zip into one of those folders (or set {ENV_ROOT} to its folder), "
        "or pass download=True."
    )


def md5sum(path: Path) -> str:
    """The md5 hex digest of a file (10 MB take about 20 ms)."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def download(name: str, root: str | Path | None = None, base_url: str | None = None) -> Path:
    """Download ``<name>.zip`` into ``root``, verified by md5, atomically.

    ``root`` defaults to the first of ``search_roots()``: ``$METALIB_OMNIGLOT``, else
    ``<cache_dir()>/omniglot``.

    A file already there with the right md5 is kept, one with a wrong md5 replaced.
    ``base_url`` defaults to ``BASE_URL`` (tests point it at a ``file://`` folder).

    Raises:
        ValueError: the downloaded file's md5 is wrong (nothing is left behind).
        OSError: the URL cannot be read (no internet?).
    """
    _check_name(name)
    folder = search_roots(root)[0]
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{name}.zip"
    if target.is_file() and md5sum(target) == MD5[name]:
        return target
    url = f"{base_url or BASE_URL}/{name}.zip"
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f"{name}.", suffix=".part")
    try:
        h = hashlib.md5()
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            for block in iter(lambda: response.read(1 << 20), b""):
                h.update(block)
                out.write(block)
        if h.hexdigest() != MD5[name]:
            raise ValueError(
                f"downloaded {url} has md5 {h.hexdigest()}, expected {MD5[name]}: the download "
                f"is corrupt or the file changed upstream; it was removed, try again or fetch "
                f"it by hand into {folder}"
            )
        os.replace(tmp, target)
    except urllib.error.URLError as err:
        raise OSError(
            f"could not download {url} ({err.reason}); without internet, copy {name}.zip "
            f"into {folder} by hand"
        ) from err
    finally:
        Path(tmp).unlink(missing_ok=True)
    return target


_download = download  # ``load_set``'s ``download`` flag shadows the function's name


def _index(paths: list[str], name: str, where: Path) -> dict[tuple[str, str], list[str]]:
    """Group PNG paths ``<name>/<Alphabet>/<character>/<file>.png`` by (alphabet, character)."""
    classes: dict[tuple[str, str], list[str]] = {}
    for p in paths:
        parts = p.split("/")
        # skip folders and the clutter that zipping on macOS adds
        if not p.lower().endswith(".png") or parts[0] == "__MACOSX" or parts[-1].startswith("."):
            continue
        if len(parts) != 4 or parts[0] != name:
            raise ValueError(
                f"{where}: unexpected entry {p!r}; an Omniglot set holds "
                f"{name}/<Alphabet>/<characterNN>/<drawer>_<NN>.png. Is this the right file?"
            )
        classes.setdefault((parts[1], parts[2]), []).append(p)
    if not classes:
        raise ValueError(f"{where} holds no {name}/<Alphabet>/<character>/*.png images")
    for (alphabet, character), files in classes.items():
        if len(files) != DRAWERS:
            raise ValueError(
                f"{where}: {name}/{alphabet}/{character} has {len(files)} images, but every "
                f"Omniglot character has {DRAWERS} (one per drawer); the set is incomplete, "
                f"get it again from {BASE_URL}/{name}.zip"
            )
    return {key: sorted(classes[key]) for key in sorted(classes)}


def _decode(source: Path, name: str, image_size: int) -> dict:
    """Decode every PNG of a zip or folder to ``(C, 20, image_size, image_size)`` uint8, ink 255."""
    from PIL import Image  # pillow comes with matplotlib

    archive = None
    try:
        archive = zipfile.ZipFile(source) if source.is_file() else None
        if archive is not None:
            paths, read = archive.namelist(), archive.read
        else:
            paths = [p.relative_to(source.parent).as_posix() for p in source.rglob("*.png")]
            read = lambda p: (source.parent / p).read_bytes()  # noqa: E731
        classes = _index(paths, name, source)
        flat = [p for files in classes.values() for p in files]
        resized, pixels, shape = [], [], None
        for i, p in enumerate(runtime.progress(flat, desc=f"decoding {name}", leave=False)):
            try:
                img = np.asarray(Image.open(io.BytesIO(read(p))).convert("L"))
            except OSError as err:  # PIL's UnidentifiedImageError is an OSError
                raise ValueError(f"{source}: {p} is not a readable PNG ({err})") from err
            shape = shape or img.shape
            if img.shape != shape:
                raise ValueError(f"{source}: {p} is {img.shape}, the others are {shape}")
            pixels.append(img)
            if len(pixels) == _CHUNK or i == len(flat) - 1:  # resize in chunks to bound memory
                white = torch.from_numpy(np.stack(pixels)).float() / 255.0  # (n, H, W), ink = 0
                resized.append(to_uint8_images(1.0 - white, image_size))  # ink = 1 on 0
                pixels = []
    except (zipfile.BadZipFile, EOFError, zlib.error) as err:
        raise ValueError(
            f"{source} is not a readable zip ({err}); delete it and download it again from "
            f"{BASE_URL}/{name}.zip (or pass download=True)"
        ) from err
    finally:
        if archive is not None:
            archive.close()
    images = torch.cat(resized).view(len(classes), DRAWERS, image_size, image_size)
    return {
        "images": images,
        "class_names": [f"{a}/{c}" for a, c in classes],
        "groups": [a for a, _ in classes],
    }


def _fingerprint(source: Path, name: str, verify: bool) -> str:
    """A content key for the cache; for zips also the md5 check against the official file."""
    if source.is_dir():  # sizes and times of 32k files take a fraction of a second to read
        stats = sorted(
            (p.relative_to(source).as_posix(), p.stat().st_size, p.stat().st_mtime_ns)
            for p in source.rglob("*.png")
        )
        return cache.digest("folder", stats)
    md5 = md5sum(source)
    if verify and md5 != MD5[name]:
        raise ValueError(
            f"{source} has md5 {md5}, but the official {name}.zip has {MD5[name]}: the file is "
            f"incomplete or not the official one. Delete it and download it again from "
            f"{BASE_URL}/{name}.zip (or delete it and pass download=True), or pass "
            "verify=False to use a re-packed zip as it is."
        )
    return md5


def load_set(
    name: str,
    root: str | Path | None = None,
    image_size: int = 28,
    *,
    download: bool = False,
    verify: bool = True,
    cache_dir: str | Path | None = None,
) -> ImageClasses:
    """One whole Omniglot set, every alphabet of it.

    Args:
        name: one of ``SET_NAMES`` (``"images_background"``, ``"images_evaluation"``,
            ``"images_background_small1"``, ``"images_background_small2"``).
        root: the folder holding ``<name>.zip`` or ``<name>/``; None searches ``search_roots()``.
        image_size: side of the returned images (area-downsampled from 105).
        download: fetch the zip from the official repository when it is not found.
        verify: check a zip's md5 against the official one.
        cache_dir: where decoded images are cached (default ``<cache_dir()>/omniglot/decoded``).

    Returns:
        ``ImageClasses`` named ``omniglot/<name>`` with images ``(C, 20, image_size, image_size)``,
        classes sorted by alphabet then character, images by drawer file name.
    """
    _check_name(name)
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 8:
        raise ValueError(f"image_size must be an int of at least 8 pixels, got {image_size!r}")
    try:
        source = find_set(name, root)
    except FileNotFoundError:
        if not download:
            raise
        source = _download(name, root)
    key = cache.digest("omniglot", _DECODER_VERSION, name, _fingerprint(source, name, verify))
    folder = (
        Path(cache_dir) if cache_dir is not None else runtime.cache_dir() / "omniglot" / "decoded"
    )
    entry = cache.cached(
        folder / f"{name}-{image_size}px-{key}.pt", lambda: _decode(source, name, image_size)
    )
    return ImageClasses(
        name=f"omniglot/{name}",
        images=entry["images"],
        class_names=tuple(entry["class_names"]),
        groups=tuple(entry["groups"]),
    )


def load(
    split: str,
    root: str | Path | None = None,
    image_size: int = 28,
    download: bool = False,
    cache_dir: str | Path | None = None,
    *,
    variant: str = "full",
    verify: bool = True,
) -> ImageClasses:
    """The ``train``, ``val`` or ``test`` meta-split of Omniglot, split by alphabet.

    Args:
        split: ``"train"``, ``"val"`` or ``"test"``.
        variant: ``"full"`` (the official background/evaluation zips) or ``"small"`` (only the
            two "background small" zips); the splits of each are listed in the module docstring.
        root, image_size, download, cache_dir, verify: as in ``load_set``.

    Returns:
        ``ImageClasses`` named ``omniglot/<split>`` (or ``omniglot-small/<split>``).
    """
    if variant not in SPLITS:
        raise ValueError(f"variant must be one of {tuple(SPLITS)}, got {variant!r}")
    if split not in SPLITS[variant]:
        raise ValueError(f"split must be one of {tuple(SPLITS[variant])}, got {split!r}")
    set_name, wanted = SPLITS[variant][split]
    whole = load_set(
        set_name, root, image_size, download=download, verify=verify, cache_dir=cache_dir
    )
    present = whole.group_names
    if wanted is None:
        taken = {
            a for s, alphabets in SPLITS[variant].values() if s == set_name for a in alphabets or ()
        }
        wanted = tuple(a for a in present if a not in taken)
    missing = [a for a in wanted if a not in present]
    if missing:
        raise ValueError(
            f"{set_name} has no alphabet {missing}; it is not the official set. Get it again "
            f"from {BASE_URL}/{set_name}.zip"
        )
    keep = [i for i, group in enumerate(whole.groups) if group in wanted]
    prefix = "omniglot" if variant == "full" else "omniglot-small"
    return whole.subset(keep, name=f"{prefix}/{split}")


def load_available(
    *splits: str, root: str | Path | None = None, cache_dir: str | Path | None = None
) -> tuple[ImageClasses, ...] | None:
    """``splits`` of the full Omniglot where its two official zips are found, else of the small
    variant (the two "background small" zips), else ``None``: the chapters' Omniglot sections
    then say the data is missing and skip.

    Example: ``load_available("train", "test")`` gives ``(background, test)``; neither ever
    holds an alphabet of the other.
    """
    if not splits:
        raise ValueError('name at least one split, e.g. load_available("test")')
    for variant in ("full", "small"):
        try:
            return tuple(load(s, root, cache_dir=cache_dir, variant=variant) for s in splits)
        except FileNotFoundError:
            continue
    return None
