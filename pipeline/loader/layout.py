"""How a batch lies in memory: each image is decoded straight into place, its crop where the batch wants it.

Decoding into a scratch buffer and then copying the crop into the batch is one more pass over the
pixels, into batch memory that is cold by then. So for single crops
(training, centre crop) every sample owns a stretch of the batch buffer large enough for the whole
image_size x image_size decoded image, and the image is decoded at the offset that puts the chosen
crop exactly where the batch tensor's sample begins. The batch is then a strided view of that
buffer, [B, crop, crop, 3] with a row stride of image_size * 3 bytes; the pixels around the crops are
written by the decoder and never read; a flip is done in place (its saving: docs/benchmarks.md).

Consumers see an ordinary uint8 tensor that is not dense in memory: reading it (the batch transform,
or the copy into page-locked memory that `pin_memory` makes for the GPU) costs what a dense one does;
`.contiguous()` makes a dense copy where one is needed. The price: a 128-image batch buffer takes
28 MB at 256 -> 224 (19 MB of crops), and the decoder writes whole images there. Ten crops are
copies of one decoded image, so that mode keeps dense samples.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class BatchLayout:
    batch_size: int
    sample_shape: tuple[int, ...]  # HWC, or (10, H, W, C) for ten crops
    image_size: int | None  # decoded images are image_size^2 and land in place; None: dense samples

    @classmethod
    def for_mode(cls, mode: str, batch_size: int, crop: int, image_size: int) -> BatchLayout:
        if mode == "ten_crop":
            return cls(batch_size, (10, crop, crop, 3), None)
        return cls(batch_size, (crop, crop, 3), image_size)

    @property
    def row_bytes(self) -> int:
        return self.image_size * 3

    @property
    def lead(self) -> int:
        """Bytes before sample 0's first crop pixel: room for the largest crop offset."""
        if self.image_size is None:
            return 0
        margin = self.image_size - self.sample_shape[0]
        return margin * self.row_bytes + margin * 3

    @property
    def sample_bytes(self) -> int:
        """Distance between samples: a whole decoded image plus the largest offset, so no two images'
        decodes overlap whatever their crops."""
        if self.image_size is None:
            return int(np.prod(self.sample_shape))
        return self.image_size * self.row_bytes + self.lead

    @property
    def nbytes(self) -> int:
        return self.lead + self.batch_size * self.sample_bytes

    def view(self, buffer: torch.Tensor, size: int | None = None) -> torch.Tensor:
        """The first `size` samples of a flat uint8 buffer of `nbytes` as [size, *sample_shape]."""
        size = self.batch_size if size is None else size
        if self.image_size is None:
            return buffer[:size * self.sample_bytes].view(size, *self.sample_shape)
        strides = (self.sample_bytes, self.row_bytes, 3, 1)
        return buffer.as_strided((size, *self.sample_shape), strides, buffer.storage_offset() + self.lead)

    def decode_target(self, buffer: np.ndarray, index: int, row: int, col: int) -> np.ndarray:
        """Where to decode sample `index`'s image_size^2 RGB image so that its pixel (row, col) is the
        sample's first pixel: a contiguous stretch of the flat buffer."""
        start = self.lead + index * self.sample_bytes - row * self.row_bytes - col * 3
        return buffer[start:start + self.image_size * self.row_bytes]
