"""Tests of metalib.data.cache: keys computed by hand, round trips, atomic writes, and corrupt files
that are reported, removed and rebuilt."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import torch

from metalib.data import cache
from metalib.data.cache import cached, digest, load, save

# a payload whose raw bytes are printable ASCII, so they appear verbatim inside the file (pickle
# protocol 2 stores bytes as latin-1 text, which re-encodes bytes >= 0x80)
MARKER = torch.arange(32, 127, dtype=torch.uint8)


def _obj() -> dict:
    return {
        "images": torch.arange(24, dtype=torch.uint8).view(2, 3, 4),
        "weights": torch.linspace(-1, 1, 5, dtype=torch.float64),
        "marker": MARKER.clone(),
        "name": "glyphs/train",
        "count": 3,
        "ratio": 0.25,
        "names": ("a", "b"),
        "sizes": [1, 2, 3],
        "nested": {"flag": True, "none": None},
    }


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], torch.Tensor):
            assert b[key].dtype == a[key].dtype
            torch.testing.assert_close(b[key], a[key], rtol=0, atol=0)
        else:
            assert b[key] == a[key]


# digest ------------------------------------------------------------------------------------------


def test_digest_matches_a_hand_computed_sha256(tmp_path):
    f = tmp_path / "font.ttf"
    f.write_bytes(b"\x01\x02font")
    expected = hashlib.sha256(
        b"str:10:'omniglot'" + b"int:2:28" + b"bytes:3:raw" + b"path:6:\x01\x02font"
    )
    assert digest("omniglot", 28, b"raw", f) == expected.hexdigest()[:16]
    assert digest() == hashlib.sha256(b"").hexdigest()[:16]


def test_digest_is_stable_and_short():
    key = digest("glyphs", 28, 0.5, ("a", 1))
    assert key == digest("glyphs", 28, 0.5, ("a", 1))
    assert len(key) == 16 and int(key, 16) >= 0  # 16 hex digits


def test_digest_separates_different_parts():
    keys = {
        digest("a"),
        digest("b"),
        digest("ab"),
        digest("a", "b"),
        digest("b", "a"),
        digest(1),
        digest("1"),
        digest(1.0),
        digest(b"2"),
        digest(28, 64),
        digest(28, 65),
    }
    assert len(keys) == 11


def test_digest_hashes_paths_by_content(tmp_path):
    f = tmp_path / "source.py"
    f.write_text("x = 1\n")
    before = digest("render", f)
    g = tmp_path / "other_name.py"
    g.write_text("x = 1\n")
    assert digest("render", g) == before  # same content, other name: same key
    f.write_text("x = 2\n")
    assert digest("render", f) != before  # edited content: new key
    assert digest("render", str(f)) != digest("render", f)  # a str is hashed as text, not read


def test_digest_parts_cannot_collide():
    assert digest(b"1") != digest(1)  # bytes equal to the repr of a number
    assert digest(b"'x'") != digest("x")  # bytes equal to the repr of a str
    assert digest(b"a\x00", b"b") != digest(b"a", b"\x00b")  # NUL inside a bytes part


# save / load -------------------------------------------------------------------------------------


def test_round_trip(tmp_path):
    path = tmp_path / "deep" / "er" / "entry.pt"  # missing folders are created
    obj = _obj()
    save(path, obj)
    _assert_same(obj, load(path))
    save(str(path), {"count": 4})  # str paths work too, and overwrite
    assert load(str(path)) == {"count": 4}


def test_save_leaves_no_temporary_files(tmp_path):
    for i in range(3):
        save(tmp_path / "entry.pt", {"i": i})
    assert sorted(os.listdir(tmp_path)) == ["entry.pt"]
    assert load(tmp_path / "entry.pt") == {"i": 2}


def test_failed_write_keeps_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "entry.pt"
    save(path, {"version": 1})

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(cache.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        save(path, {"version": 2})
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["entry.pt"]
    assert load(path) == {"version": 1}


def test_load_missing_is_none(tmp_path):
    assert load(tmp_path / "absent.pt") is None


def _expect_corrupt(path: Path) -> None:
    with pytest.warns(RuntimeWarning, match="is corrupt") as record:
        assert load(path) is None
    assert str(path) in str(record[0].message)
    assert not path.exists()


def test_load_flipped_payload_byte(tmp_path):
    path = tmp_path / "entry.pt"
    save(path, _obj())
    data = bytearray(path.read_bytes())
    start = data.find(MARKER.numpy().tobytes())
    assert start > 0 and data.count(MARKER.numpy().tobytes()) == 1
    data[start + len(MARKER) // 2] ^= 0x01  # one bit of the payload, in the middle of the tensor
    path.write_bytes(bytes(data))
    with pytest.warns(RuntimeWarning, match="checksum mismatch"):
        assert load(path) is None
    assert not path.exists()


def test_load_truncated(tmp_path):
    path = tmp_path / "entry.pt"
    save(path, _obj())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    _expect_corrupt(path)


@pytest.mark.parametrize(
    "content",
    [b"", b"not a torch file at all", bytes(range(256)) * 4],
    ids=["empty", "text", "binary"],
)
def test_load_garbage(tmp_path, content):
    path = tmp_path / "entry.pt"
    path.write_bytes(content)
    _expect_corrupt(path)


def test_load_a_torch_file_without_the_wrapper(tmp_path):
    path = tmp_path / "entry.pt"
    torch.save({"images": torch.zeros(2)}, path)  # written by something else than save()
    _expect_corrupt(path)


# cached ------------------------------------------------------------------------------------------


def test_cached_builds_once_then_loads(tmp_path):
    calls = []

    def build():
        calls.append(1)
        return _obj()

    path = tmp_path / "entry.pt"
    first = cached(path, build)
    _assert_same(_obj(), first)
    second = cached(path, build)
    _assert_same(_obj(), second)
    assert len(calls) == 1


def test_cached_rebuilds_a_corrupt_entry(tmp_path):
    calls = []

    def build():
        calls.append(1)
        return {"n": len(calls)}

    path = tmp_path / "entry.pt"
    assert cached(path, build) == {"n": 1}
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.warns(RuntimeWarning, match="removing it and rebuilding"):
        assert cached(path, build) == {"n": 2}
    assert cached(path, build) == {"n": 2}  # the rebuilt entry was saved
    assert len(calls) == 2
    assert sorted(os.listdir(tmp_path)) == ["entry.pt"]
