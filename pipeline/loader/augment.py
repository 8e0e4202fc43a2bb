"""The paper's augmentation, split where each part is cheapest.

In the loader workers, on uint8 pixels (HWC arrays, 0-255): a random crop of the stored 256x256 image
plus a horizontal flip with probability 0.5 for training; the centre crop or the ten crops (four
corners, centre, and their mirror images) for evaluation.

On the training device, per batch and vectorised: mean subtraction and PCA colour noise
(`BatchTransform`). Noise follows the convention of every common implementation (docs/reference.md,
"PCA colour noise"): eigenvalues of the covariance of pixels on the [0, 1] scale, the resulting shift
multiplied by 255 because our pixels are 0-255. stats.json stores 0-255 statistics, so its eigenvalues
are divided by 255^2 here.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

# Ten-crop order: top-left, top-right, bottom-left, bottom-right, centre, then the same five mirrored.
TEN_CROP_CORNERS = ("top-left", "top-right", "bottom-left", "bottom-right", "centre")


def crop_origin(height: int, width: int, crop: int, draws: list[float] | None) -> tuple[int, int]:
    """Top-left corner (row, col) of a crop x crop patch: uniform over the image from two of the epoch
    plan's draws in [0, 1) (training), or the centre (draws None). Drawn up front by the plan, so the
    same sample gets the same patch whenever the epoch is replayed (exact resume)."""
    if draws is None:
        return (height - crop) // 2, (width - crop) // 2
    return int(draws[0] * (height - crop + 1)), int(draws[1] * (width - crop + 1))


def mirror(patch: np.ndarray) -> None:
    """Flip an HWC uint8 patch left-right in place (OpenCV: ~8x faster than torch.flip; any row stride)."""
    cv2.flip(patch, 1, dst=patch)


def ten_crop(image: np.ndarray, crop: int, out: np.ndarray) -> None:
    """Fill out[10, crop, crop, 3] in TEN_CROP_CORNERS order, then the mirrored five."""
    height, width = image.shape[:2]
    bottom, right = height - crop, width - crop
    corners = ((0, 0), (0, right), (bottom, 0), (bottom, right), (bottom // 2, right // 2))
    for i, (row, col) in enumerate(corners):
        out[i] = image[row:row + crop, col:col + crop]
    for i in range(5):
        cv2.flip(out[i], 1, dst=out[5 + i])


class BatchTransform:
    """uint8 [B, 3, H, W] batch on the training device -> float, mean-subtracted, colour-noised batch.

    Output: `dtype` (float32, or bfloat16 to halve the model's input traffic), NCHW shape in
    channels_last memory, values on the 0-255 scale minus the dataset mean (the paper subtracts the
    mean and does not divide by the std). `pca_std=0` turns the noise off (evaluation).
    """

    def __init__(self, stats: dict, *, pca_std: float = 0.1, dtype: torch.dtype = torch.float32):
        self.mean = torch.tensor(stats["mean_rgb"], dtype=torch.float32)  # 0-255
        eigenvalues = torch.tensor(stats["eigenvalues"], dtype=torch.float32) / 255.0**2  # [0, 1] scale
        self.eigenvectors = torch.tensor(stats["eigenvectors"], dtype=torch.float32)  # column j: component j
        self.eigenvalues = eigenvalues
        self.pca_std = float(pca_std)
        self.dtype = dtype

    def draw_alphas(self, batch: int, device: torch.device | str = "cpu",
                    generator: torch.Generator | None = None) -> torch.Tensor:
        """alpha ~ N(0, pca_std^2), one triple per image: [batch, 3] float32 (on the generator's device)."""
        return torch.randn(batch, 3, device=device, generator=generator) * self.pca_std

    def colour_shift(self, alphas: torch.Tensor) -> torch.Tensor:
        """Per-image RGB shift on the 0-255 scale: 255 * eigenvectors @ (alpha * eigenvalues). [B, 3]."""
        vectors = self.eigenvectors.to(alphas.device)
        return 255.0 * (alphas * self.eigenvalues.to(alphas.device)) @ vectors.T

    def apply(self, images: torch.Tensor, alphas: torch.Tensor | None) -> torch.Tensor:
        """Mean subtraction plus the colour shift of the given alphas (None: no noise)."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected a [B, 3, H, W] batch, got shape {tuple(images.shape)}")
        offset = self.mean.to(images.device).expand(images.shape[0], 3)
        if alphas is not None:
            offset = offset - self.colour_shift(alphas.to(images.device, torch.float32))
        pixels = images.to(torch.float32, memory_format=torch.channels_last)
        pixels = pixels - offset[:, :, None, None]  # one fused pass: x - mean + shift
        return pixels.to(self.dtype, memory_format=torch.channels_last)

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        alphas = None
        if self.pca_std > 0:
            device = generator.device if generator is not None else images.device
            alphas = self.draw_alphas(images.shape[0], device, generator)
        return self.apply(images, alphas)
