"""Progress of a sharding job: a one-line bar on a terminal, plain periodic log lines otherwise
(Ray job logs, CI, `| tee`).

One count and one rate, defined here and used by the bar and the job's summary alike: inputs handed to
shard tasks (images or not), and inputs done per second since the job started (scan included).
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    return f"{count} {noun if count == 1 else nouns or noun + 's'}"


def rate_text(rate: float) -> str:
    """Three significant figures below 100 (a small job's 1.05 inputs/s), whole numbers above."""
    return f"{rate:.0f}" if rate >= 100 else f"{rate:.3g}"


class Progress:
    def __init__(self, total_inputs: int, total_shards: int, *, stream: TextIO | None = None,
                 interval_s: float = 10.0, start: float | None = None):
        self.total_inputs, self.total_shards = total_inputs, total_shards
        self.inputs = self.shards = 0
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.interval_s = 0.2 if self.tty else interval_s
        self.start = time.monotonic() if start is None else start  # time.monotonic() of the job's start
        self.last = self.now = time.monotonic()

    def update(self, inputs: int, shards: int = 1) -> None:
        self.inputs += inputs
        self.shards += shards
        self.now = time.monotonic()
        if self.now - self.last >= self.interval_s or self.shards == self.total_shards:
            self.last = self.now
            self._show()

    def rate_text(self) -> str:
        """Inputs done, seconds and rate as of the last update (the bar's final line says the same)."""
        elapsed = max(self.now - self.start, 1e-9)
        return f"{plural(self.inputs, 'input')} in {elapsed:.1f}s, {rate_text(self.inputs / elapsed)} inputs/s"

    def _show(self) -> None:
        elapsed = max(self.now - self.start, 1e-9)
        rate = self.inputs / elapsed
        left = self.total_inputs - self.inputs
        eta = f"{left / rate:.0f}s" if rate > 0 else "?"
        text = (f"{self.inputs}/{plural(self.total_inputs, 'input')}, {self.shards}/"
                f"{plural(self.total_shards, 'shard')}, {rate_text(rate)} inputs/s, ETA {eta}")
        if self.tty:
            done = int(30 * self.shards / max(self.total_shards, 1))
            print(f"\r[{'#' * done}{'.' * (30 - done)}] {text}", end="", file=self.stream, flush=True)
            if self.shards == self.total_shards:
                print(file=self.stream, flush=True)
        else:
            print(f"shard: {text}", file=self.stream, flush=True)
