"""Exact RGB pixel statistics of the training split, from per-shard integer moments.

Each shard task sums, over every pixel of every stored (decoded) image, x (3 sums) and x x^T (3x3 sums)
as integers on the 0-255 scale. Integer sums are exact and order-free, so the reduction on the driver
gives the same stats.json whatever order shards finish in. stats.json (0-255 scale):
mean_rgb, std_rgb, covariance_rgb (population, divisor N), eigenvalues (descending), eigenvectors
(column j belongs to eigenvalue j; sign fixed so each column's largest-magnitude entry is positive),
pixel_count.
"""

from __future__ import annotations

import json

import cv2
import numpy as np

from pipeline import storage
from pipeline.errors import UserError

STATS_FILE = "stats.json"
_PAIRS = [(i, j) for i in range(3) for j in range(i, 3)]  # the upper triangle of x x^T


class PixelMoments:
    """Running exact moments of a shard's stored images (integers, so the reduction is order-free).

    Per image, a strip of rows at a time: each channel of the strip copied into a float64 plane, six
    dot products of the planes (BLAS ddot) and OpenCV's channel sums straight off the uint8 pixels.
    Every product and partial sum is an integer below 2^53, so float64 holds it exactly in any
    summation order. Strips of ~16k pixels keep the planes (384 KB) in the core's own cache: whole-image
    planes (1.5 MB) were pushed out by the decode between images and cost ~0.3 ms an image more on an
    Intel VM, a tenth of a shard task's CPU (benchmarks/bench_shard.py). One 3xN @ Nx3 matrix product
    (a shape BLAS runs poorly) cost 3x the dot products.
    """

    STRIP_PIXELS = 1 << 14

    def __init__(self) -> None:
        self.sum, self.outer, self.count = [0, 0, 0], [[0] * 3 for _ in range(3)], 0
        self._planes = np.empty((3, 0))

    def add(self, rgb: np.ndarray) -> None:
        """Add one HWC uint8 RGB image."""
        height, width = rgb.shape[:2]
        rows = max(1, self.STRIP_PIXELS // width)
        if self._planes.shape[1] != rows * width:
            self._planes = np.empty((3, rows * width))
        products = [0] * 6
        for top in range(0, height, rows):
            pixels = rgb[top:top + rows].reshape(-1, 3)
            planes = self._planes[:, :len(pixels)]
            for channel in range(3):
                np.copyto(planes[channel], pixels[:, channel])  # uint8 -> float64, exact
            for k, (i, j) in enumerate(_PAIRS):
                products[k] += int(np.dot(planes[i], planes[j]))
        for (i, j), product in zip(_PAIRS, products):
            self.outer[i][j] += product
            if j != i:
                self.outer[j][i] += product
        for channel, total in enumerate(cv2.sumElems(rgb)[:3]):
            self.sum[channel] += int(total)
        self.count += height * width

    def record(self) -> dict:
        return {"sum": list(self.sum), "outer": [list(row) for row in self.outer], "count": self.count}


def image_moments(rgb: np.ndarray) -> dict:
    """Moments of one HWC uint8 image."""
    moments = PixelMoments()
    moments.add(rgb)
    return moments.record()


def empty_moments() -> dict:
    return {"sum": [0, 0, 0], "outer": [[0] * 3 for _ in range(3)], "count": 0}


def add_moments(total: dict, part: dict) -> dict:
    """Sum of two moment records (Python ints: no overflow however many pixels)."""
    return {"sum": [a + b for a, b in zip(total["sum"], part["sum"])],
            "outer": [[a + b for a, b in zip(ra, rb)] for ra, rb in zip(total["outer"], part["outer"])],
            "count": total["count"] + part["count"]}


def stats_from_moments(moments: dict) -> dict:
    count = moments["count"]
    if count == 0:
        raise ValueError("no pixels: cannot compute statistics of an empty split")
    total = np.array(moments["sum"], dtype=np.float64)
    outer = np.array(moments["outer"], dtype=np.float64)
    mean = total / count
    covariance = outer / count - np.outer(mean, mean)
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    order = np.argsort(eigenvalues)[::-1]
    eigenvalues, eigenvectors = eigenvalues[order], eigenvectors[:, order]
    for j in range(3):
        if eigenvectors[np.argmax(np.abs(eigenvectors[:, j])), j] < 0:
            eigenvectors[:, j] *= -1
    return {"mean_rgb": mean.tolist(), "std_rgb": np.sqrt(np.diag(covariance)).tolist(),
            "covariance_rgb": covariance.tolist(), "eigenvalues": eigenvalues.tolist(),
            "eigenvectors": eigenvectors.tolist(), "pixel_count": count, "scale": "0-255"}


def write_stats(dataset: str, stats: dict) -> None:
    storage.write_bytes_atomic(storage.join(dataset, STATS_FILE), json.dumps(stats, indent=2).encode())


def read_stats(dataset: str) -> dict:
    """stats.json of a dataset folder or URL (0-255 scale); UserError naming the file when absent."""
    location = storage.join(dataset, STATS_FILE)
    if not storage.exists(location):
        raise UserError(f"{location} not found: shard the training split first (alexnet shard ... --split train)")
    try:
        return json.loads(storage.read_bytes(location))
    except json.JSONDecodeError as error:
        raise UserError(f"{location} is not valid JSON ({error})") from None
