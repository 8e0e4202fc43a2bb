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


class PixelMoments:
    """Running exact moments of a shard's stored images (integers, so the reduction is order-free).

    Per image, all in OpenCV on the uint8 pixels: the image times itself and times a copy with its
    channels rotated (R,G,B -> B,R,G), each into uint16 (a product of two bytes is at most 65025), and
    the channel sums of those products and of the image. OpenCV sums 16-bit values in int32 blocks
    short enough not to overflow, then in float64, where every partial sum is an integer below 2^53:
    exact in any order (tests/integration/test_shard_job.py checks it against int64 at the extremes). No BLAS:
    OpenBLAS threads a dot product of this length wherever OMP_NUM_THREADS or OPENBLAS_NUM_THREADS
    allows (a user's environment, a cluster image), and those threads fight the other shard tasks for
    the node's CPUs (docs/benchmarks.md, sharding).
    """

    def __init__(self) -> None:
        self.sum, self.outer, self.count = [0, 0, 0], [[0] * 3 for _ in range(3)], 0
        self._rotated = self._products = np.empty((0, 0, 3))

    def add(self, rgb: np.ndarray) -> None:
        """Add one HWC uint8 RGB image."""
        rgb = np.ascontiguousarray(rgb)
        if self._rotated.shape != rgb.shape:
            self._rotated, self._products = np.empty_like(rgb), np.empty(rgb.shape, np.uint16)
        sums = cv2.sumElems(rgb)
        cv2.multiply(rgb, rgb, dst=self._products, dtype=cv2.CV_16U)
        squares = cv2.sumElems(self._products)  # RR, GG, BB
        cv2.mixChannels([rgb], [self._rotated], [0, 1, 1, 2, 2, 0])  # rotated = (B, R, G)
        cv2.multiply(rgb, self._rotated, dst=self._products, dtype=cv2.CV_16U)
        rb, rg, gb = cv2.sumElems(self._products)[:3]  # R*B, G*R, B*G
        outer = self.outer
        for channel in range(3):
            self.sum[channel] += int(sums[channel])
            outer[channel][channel] += int(squares[channel])
        for (i, j), product in (((0, 1), int(rg)), ((0, 2), int(rb)), ((1, 2), int(gb))):
            outer[i][j] += product
            outer[j][i] += product
        self.count += rgb.shape[0] * rgb.shape[1]

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
