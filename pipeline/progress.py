"""Progress of a sharding job: a one-line bar on a terminal, plain periodic log lines otherwise
(Ray job logs, CI, `| tee`)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    def __init__(self, total_images: int, total_shards: int, *, stream: TextIO | None = None,
                 interval_s: float = 10.0):
        self.total_images, self.total_shards = total_images, total_shards
        self.images = self.shards = 0
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.interval_s = 0.2 if self.tty else interval_s
        self.start = self.last = time.monotonic()

    def update(self, images: int, shards: int = 1) -> None:
        self.images += images
        self.shards += shards
        now = time.monotonic()
        if now - self.last >= self.interval_s or self.shards == self.total_shards:
            self.last = now
            self._show(now)

    def _show(self, now: float) -> None:
        elapsed = max(now - self.start, 1e-9)
        rate = self.images / elapsed
        left = self.total_images - self.images
        eta = f"{left / rate:.0f}s" if rate > 0 else "?"
        text = (f"{self.images}/{self.total_images} images, {self.shards}/{self.total_shards} shards, "
                f"{rate:.0f} images/s, ETA {eta}")
        if self.tty:
            done = int(30 * self.shards / max(self.total_shards, 1))
            print(f"\r[{'#' * done}{'.' * (30 - done)}] {text}", end="", file=self.stream, flush=True)
            if self.shards == self.total_shards:
                print(file=self.stream, flush=True)
        else:
            print(f"shard: {text}", file=self.stream, flush=True)
