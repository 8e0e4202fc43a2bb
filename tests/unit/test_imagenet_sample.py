"""ImageNet's own images (the shared sample, ../shared/data/imagenet-sample): what no photograph stands in for,
the size and mode mix of real ImageNet files and the colour statistics the paper's PCA noise was fitted to.
A clone without the shared set skips these; the rest of the suite runs on tests/helpers/photos.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pipeline.shard.images import decode_stored, process_image
from pipeline.shard.stats import add_moments, empty_moments, image_moments, stats_from_moments

# docs/reference.md "Colour statistics in common use", pixels on the [0, 1] scale
MEAN_RGB = (0.485, 0.456, 0.406)
EIGENVALUES = (0.2175, 0.0188, 0.0045)
EIGENVECTORS = np.array([(-0.5675, -0.5808, -0.5836), (0.7192, -0.0045, -0.6948), (0.4009, -0.8140, 0.4203)]).T


@pytest.fixture(scope="module")
def stored(imagenet_sample) -> list[tuple[Image.Image, tuple[int, int], np.ndarray]]:
    """(original file's mode, its recorded size, the stored 256x256 image) for every image of the sample."""
    out = []
    for path in sorted(imagenet_sample.glob("*.JPEG")):
        jpeg, width, height = process_image(path.read_bytes())
        with Image.open(path) as original:
            assert (width, height) == original.size, path.name
            out.append((original.mode, (width, height), decode_stored(jpeg)))
    return out


def test_every_size_and_mode_of_the_sample_becomes_a_256_square(stored):
    sizes = [size for _, size, _ in stored]
    # the sample spans ImageNet's range: thumbnails to multi-megapixel photographs, some grayscale
    assert min(map(min, sizes)) <= 100 and max(map(max, sizes)) > 1500
    assert all(pixels.shape == (256, 256, 3) for _, _, pixels in stored)
    gray = [pixels.astype(int) for mode, _, pixels in stored if mode == "L"]
    assert gray and all(np.abs(p[..., 0] - p[..., 2]).max() <= 2 for p in gray)  # grey stays grey


def test_colour_statistics_are_the_papers_imagenet_ones(stored):
    moments = empty_moments()
    for _, _, pixels in stored:
        moments = add_moments(moments, image_moments(pixels))
    stats = stats_from_moments(moments)
    np.testing.assert_allclose(np.array(stats["mean_rgb"]) / 255, MEAN_RGB, atol=0.02)
    # 4:2:0 chroma lowers the smaller eigenvalues a little (docs/reference.md), and 317 images are not 1.2M
    relative = np.array(stats["eigenvalues"]) / 255**2 / EIGENVALUES - 1
    assert np.all(np.abs(relative) < [0.1, 0.15, 0.3]), relative
    alignment = np.abs(np.array(stats["eigenvectors"]).T @ EIGENVECTORS)  # up to sign
    assert np.all(np.diag(alignment) > 0.99), alignment
