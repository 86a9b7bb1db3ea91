"""Datasets: Glyphs (rendered offline), Omniglot (the real one), sinusoids, corruptions.

Every image dataset returns :class:`~metalib.data.base.ImageClasses`: single-channel float32
images in [0, 1], ink = 1 on 0, at the dataset's image size (28 x 28 by default).
"""

from metalib.data.base import ImageClasses, to_uint8_images

__all__ = ["ImageClasses", "to_uint8_images"]
