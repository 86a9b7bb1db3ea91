"""Tests of metalib.data.base: the ImageClasses container (validation, batches, subsets) and the
uint8 conversion with area downsampling, checked against hand-computed pixels."""

from __future__ import annotations

import pytest
import torch

from metalib.data.base import ImageClasses, join, to_uint8_images, with_rotations


def _classes(c: int = 4, m: int = 3, size: int = 8) -> ImageClasses:
    images = torch.arange(c * m * size * size).remainder(256).to(torch.uint8)
    return ImageClasses(
        name="toy/train",
        images=images.view(c, m, size, size),
        class_names=tuple(f"char{i}" for i in range(c)),
        groups=("latin", "greek", "latin", "runic", "greek", "runic")[:c],
    )


# validation --------------------------------------------------------------------------------------


def test_rejects_non_uint8_images():
    with pytest.raises(ValueError, match="toy: images must be a uint8 tensor"):
        ImageClasses("toy", torch.zeros(2, 3, 8, 8), ("a", "b"), ("g", "g"))
    with pytest.raises(ValueError, match="uint8 tensor"):
        ImageClasses("toy", torch.zeros(2, 3, 8, 8, dtype=torch.int64), ("a", "b"), ("g", "g"))
    with pytest.raises(ValueError, match="uint8 tensor"):
        ImageClasses("toy", [[0]], ("a",), ("g",))  # not a tensor at all


@pytest.mark.parametrize("shape", [(2, 8, 8), (2, 3, 1, 8, 8), (16,)])
def test_rejects_wrong_dims(shape):
    with pytest.raises(
        ValueError, match=r"toy: images must have shape \(classes, per_class, H, W\)"
    ):
        ImageClasses("toy", torch.zeros(shape, dtype=torch.uint8), ("a", "b"), ("g", "g"))


def test_rejects_wrong_name_counts():
    images = torch.zeros(2, 3, 8, 8, dtype=torch.uint8)
    with pytest.raises(ValueError, match="2 classes of images but 1 class names and 2 groups"):
        ImageClasses("toy", images, ("a",), ("g", "g"))
    with pytest.raises(ValueError, match="2 classes of images but 2 class names and 3 groups"):
        ImageClasses("toy", images, ("a", "b"), ("g", "g", "g"))


def test_properties_and_repr():
    data = _classes(c=4, m=3, size=8)
    assert (data.n_classes, data.per_class, data.image_size) == (4, 3, 8)
    assert data.group_names == ("latin", "greek", "runic")  # distinct, in order of appearance
    assert repr(data) == "ImageClasses('toy/train': 4 classes x 3 images, 8x8, 3 groups)"


def test_is_frozen():
    data = _classes()
    with pytest.raises(AttributeError):
        data.name = "other"


# get ---------------------------------------------------------------------------------------------


def test_get_values_shapes_and_dtype():
    images = torch.zeros(3, 2, 8, 8, dtype=torch.uint8)
    images[1, 0] = 255
    images[2, 1, 3, 4] = 51  # 51 / 255 = 0.2
    data = ImageClasses("toy", images, ("a", "b", "c"), ("g", "g", "h"))
    x = data.get(torch.tensor([1, 2, 0]), torch.tensor([0, 1, 1]))
    assert x.shape == (3, 1, 8, 8) and x.dtype == torch.float32 and x.device.type == "cpu"
    torch.testing.assert_close(x[0], torch.ones(1, 8, 8), rtol=0, atol=0)  # 255 -> exactly 1.0
    expected = torch.zeros(1, 8, 8)
    expected[0, 3, 4] = 0.2
    torch.testing.assert_close(x[1], expected, rtol=0, atol=1e-7)
    torch.testing.assert_close(x[2], torch.zeros(1, 8, 8), rtol=0, atol=0)


def test_get_any_index_shape(tiny_classes):
    classes = torch.tensor([[[3, 5, 7]], [[0, 11, 2]]])  # (2, 1, 3)
    samples = torch.tensor([[[0, 1, 2]], [[5, 4, 3]]], dtype=torch.int32)  # any integer dtype
    x = tiny_classes.get(classes, samples)
    assert x.shape == (2, 1, 3, 1, 8, 8)
    assert 0.0 <= x.min() and x.max() <= 1.0
    # conftest encodes the class id in pixel (0, 0) and the sample id in pixel (0, 1)
    torch.testing.assert_close(x[..., 0, 0, 0] * 255, classes.float(), rtol=0, atol=1e-4)
    torch.testing.assert_close(x[..., 0, 0, 1] * 255, samples.float(), rtol=0, atol=1e-4)


def test_get_does_not_alias_the_stored_images(tiny_classes):
    before = tiny_classes.images.clone()
    x = tiny_classes.get(torch.tensor([0]), torch.tensor([0]))
    x.fill_(0.5)
    assert torch.equal(tiny_classes.images, before)


def test_get_shape_mismatch(tiny_classes):
    with pytest.raises(ValueError, match=r"classes \(3,\) and samples \(2,\) must have the same"):
        tiny_classes.get(torch.tensor([0, 1, 2]), torch.tensor([0, 1]))


# subset ------------------------------------------------------------------------------------------


def test_subset_keeps_the_given_order(tiny_classes):
    sub = tiny_classes.subset([5, 0, 7], name="tiny/val")
    assert sub.name == "tiny/val" and sub.n_classes == 3 and sub.per_class == 6
    assert sub.class_names == ("class5", "class0", "class7")
    assert sub.groups == ("script2", "script0", "script1")
    assert sub.group_names == ("script2", "script0", "script1")
    assert torch.equal(sub.images, tiny_classes.images[[5, 0, 7]])
    x = sub.get(torch.tensor([0, 1, 2]), torch.tensor([0, 0, 0]))
    torch.testing.assert_close(
        x[:, 0, 0, 0] * 255, torch.tensor([5.0, 0.0, 7.0]), atol=1e-4, rtol=0
    )


def test_subset_from_tensor_keeps_the_name(tiny_classes):
    sub = tiny_classes.subset(torch.tensor([11, 1]))
    assert sub.name == tiny_classes.name
    assert sub.class_names == ("class11", "class1")
    assert tiny_classes.n_classes == 12  # the original is untouched


# to_uint8_images ---------------------------------------------------------------------------------


def test_join_stacks_classes_in_order_and_keeps_same_named_groups_apart():
    a = _classes(c=2)
    b = ImageClasses("other/train", a.images[:1].flip(-1), ("x",), ("latin",))
    both = join(a, b)
    assert both.name == "toy/train + other/train" and both.n_classes == 3
    assert torch.equal(both.images[:2], a.images) and torch.equal(both.images[2], b.images[0])
    assert both.class_names == ("char0", "char1", "x")
    # "latin" of each dataset stays its own group
    assert both.groups == ("toy:latin", "toy:greek", "other:latin")
    assert join(a, b, name="mixed").name == "mixed"


def test_join_rejects_what_cannot_be_stacked():
    a = _classes(c=2, m=3, size=8)
    with pytest.raises(ValueError, match="two or more"):
        join(a)
    with pytest.raises(ValueError, match="same image_size"):
        join(a, _classes(c=2, m=3, size=6))
    with pytest.raises(ValueError, match="number of images per class"):
        join(a, _classes(c=2, m=4, size=8))


def test_with_rotations_adds_three_rotated_copies_of_every_class():
    data = ImageClasses("toy/train", torch.zeros(2, 1, 3, 3, dtype=torch.uint8), ("a", "b"),
                        ("latin", "greek"))  # fmt: skip
    data.images[0, 0, 0, 2] = 255  # class a: ink at the top right corner
    four = with_rotations(data)
    assert four.n_classes == 8 and four.name == "toy/train + rotations"
    assert four.class_names[:3] == ("a", "b", "a (rotated 90)")
    assert four.groups == ("latin", "greek") * 4
    # counter-clockwise: top right -> top left -> bottom left -> bottom right
    corners = [(0, 2), (0, 0), (2, 0), (2, 2)]
    for k, (r, c) in enumerate(corners):
        img = four.images[2 * k, 0]
        assert img[r, c] == 255 and int(img.sum()) == 255, k
        assert four.images[2 * k + 1].sum() == 0  # class b stays blank
    with pytest.raises(ValueError, match="square"):
        wide = torch.zeros(1, 1, 3, 4, dtype=torch.uint8)
        with_rotations(ImageClasses("t", wide, ("a",), ("g",)))


def test_to_uint8_same_size_rounds_and_clamps():
    x = torch.zeros(1, 8, 8)
    x[0, 0, :5] = torch.tensor([1.0, 0.5, 0.2, -0.3, 1.7])
    y = to_uint8_images(x, 8)
    assert y.shape == (1, 8, 8) and y.dtype == torch.uint8
    # 0.5 * 255 = 127.5 rounds half to even: 128; 0.2 * 255 = 51; out of range values clamp
    assert y[0, 0, :5].tolist() == [255, 128, 51, 0, 255]
    assert int(y[0, 1:].sum()) == 0


def test_to_uint8_area_downsampling_gives_block_means():
    g = torch.Generator().manual_seed(0)
    levels = torch.randint(2, 253, (3, 8, 8), generator=g).double()  # target value of each block
    a = torch.randint(0, 3, (3, 8, 8), generator=g).double()
    b = torch.randint(0, 3, (3, 8, 8), generator=g).double()
    # each 2 x 2 block holds level - a, level + a, level - b, level + b: its mean is the level
    block = torch.stack([levels - a, levels + a, levels - b, levels + b], -1).view(3, 8, 8, 2, 2)
    x = block.permute(0, 1, 3, 2, 4).reshape(3, 16, 16) / 255
    assert x.shape == (3, 16, 16)
    torch.testing.assert_close(x[:, 0:2, 2:4].mean((1, 2)), levels[:, 0, 1] / 255)  # layout check
    y = to_uint8_images(x.float(), 8)
    assert y.shape == (3, 8, 8) and y.dtype == torch.uint8
    assert torch.equal(y, levels.to(torch.uint8))


def test_to_uint8_thin_stroke_fades_to_grey():
    x = torch.zeros(1, 16, 16)
    x[0, :, 4] = 1.0  # a one-pixel vertical stroke
    y = to_uint8_images(x, 8)
    # the stroke covers half of each 2 x 2 block in column 2: 127.5 -> 128
    assert y[0, :, 2].tolist() == [128] * 8
    assert int(y.sum()) == 128 * 8


def test_to_uint8_upsampling_is_bilinear():
    x = torch.zeros(2, 8, 8)
    x[0] = 0.4  # a constant image stays constant
    x[1, :, :4] = 1.0  # left half ink
    y = to_uint8_images(x, 16)
    assert y.shape == (2, 16, 16)
    assert torch.equal(y[0], torch.full((16, 16), 102, dtype=torch.uint8))  # 0.4 * 255
    # output column j samples input column (j + 0.5) / 2 - 0.5: column 7 -> 3.25 (0.75 ink),
    # column 8 -> 3.75 (0.25 ink); 0.75 * 255 = 191.25 and 0.25 * 255 = 63.75
    row = [255] * 7 + [191, 64] + [0] * 7
    assert y[1].tolist() == [row] * 16


def test_to_uint8_errors():
    with pytest.raises(ValueError, match=r"expected \(N, H, W\) images, got shape \(8, 8\)"):
        to_uint8_images(torch.zeros(8, 8), 8)
    with pytest.raises(ValueError, match=r"expected \(N, H, W\)"):
        to_uint8_images(torch.zeros(1, 1, 8, 8), 8)
    with pytest.raises(ValueError, match="image size must be at least 8 pixels, got 4"):
        to_uint8_images(torch.zeros(1, 16, 16), 4)
