"""BatchTransform (mean subtraction + PCA colour noise) against the formula, with the dataset's own stats."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.loader.augment import BatchTransform
from pipeline.shard.stats import read_stats


@pytest.fixture(scope="module")
def stats(sharded_dataset) -> dict:
    return read_stats(sharded_dataset)


def test_colour_noise_matches_a_direct_numpy_implementation(stats):
    transform = BatchTransform(stats, pca_std=0.1)
    images = torch.randint(0, 256, (6, 3, 20, 24), dtype=torch.uint8)
    alphas = torch.randn(6, 3, generator=torch.Generator().manual_seed(0)) * 0.1
    out = transform.apply(images, alphas).numpy()

    # the paper's formula, scale as docs/reference.md: [0, 1]-scale eigenvalues, shift times 255
    vectors = np.array(stats["eigenvectors"], dtype=np.float64)  # column j = component j
    values01 = np.array(stats["eigenvalues"], dtype=np.float64) / 255.0**2
    mean = np.array(stats["mean_rgb"], dtype=np.float64)
    pixels = images.numpy().astype(np.float64)
    for i, alpha in enumerate(alphas.numpy().astype(np.float64)):
        shift = 255.0 * vectors @ (alpha * values01)
        want = pixels[i] - mean[:, None, None] + shift[:, None, None]
        np.testing.assert_allclose(out[i], want, atol=1e-3)

    # __call__ draws the alphas from the generator it is given
    drawn = transform.draw_alphas(6, generator=torch.Generator().manual_seed(3))
    np.testing.assert_array_equal(transform(images, torch.Generator().manual_seed(3)).numpy(),
                                  transform.apply(images, drawn).numpy())


def test_noise_covariance_is_v_diag_lambda_squared_over_100_vt(stats):
    """On the [0, 1] scale the added noise has covariance V diag(0.01 lambda^2) V^T (alpha std 0.1)."""
    batch = 200_000
    images = torch.full((batch, 3, 1, 1), 128, dtype=torch.uint8)
    transform = BatchTransform(stats, pca_std=0.1)
    out = transform(images, torch.Generator().manual_seed(1))
    plain = BatchTransform(stats, pca_std=0)(images)
    noise01 = ((out - plain)[:, :, 0, 0] / 255.0).double().numpy()
    vectors = np.array(stats["eigenvectors"])
    values01 = np.array(stats["eigenvalues"]) / 255.0**2
    want = vectors @ np.diag(0.01 * values01**2) @ vectors.T
    got = np.cov(noise01, rowvar=False)
    np.testing.assert_allclose(got, want, atol=0.02 * np.abs(want).max())
    # the scale bug docs/reference.md warns about (0-255 eigenvalues used as is) would be ~255^2 times larger
    assert np.abs(noise01).max() < 0.2


def test_output_is_mean_subtracted_channels_last_in_the_asked_dtype(stats):
    images = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    mean = torch.tensor(stats["mean_rgb"])[None, :, None, None]
    for dtype in (torch.float32, torch.bfloat16):
        out = BatchTransform(stats, pca_std=0.0, dtype=dtype)(images)
        assert out.dtype == dtype and out.shape == images.shape
        assert out.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(out.float(), (images.float() - mean).to(dtype).float())
    # the loader's batches are channels_last views of NHWC storage; the result is the same
    nhwc = images.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
    assert torch.equal(BatchTransform(stats, pca_std=0)(nhwc), images.float() - mean)
    with pytest.raises(ValueError, match="B, 3, H, W"):
        BatchTransform(stats)(images[:, :2])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_transform_runs_on_the_device_with_a_device_generator(stats):
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    transform = BatchTransform(stats)
    out = transform(images.cuda(), torch.Generator("cuda").manual_seed(0))
    assert out.device.type == "cuda" and out.is_contiguous(memory_format=torch.channels_last)
    alphas = transform.draw_alphas(8, "cuda", torch.Generator("cuda").manual_seed(0))
    assert torch.allclose(out.cpu(), transform.apply(images, alphas.cpu()), atol=1e-3)
