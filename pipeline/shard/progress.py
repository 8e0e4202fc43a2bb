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


# Pillow's colour modes in words; a mode not listed is said by its name
_MODE_WORDS = {"L": "grayscale", "LA": "grayscale+alpha", "1": "1-bit", "I;16": "16-bit grayscale",
               "I;16B": "16-bit grayscale", "I;16L": "16-bit grayscale", "I": "32-bit grayscale",
               "F": "float grayscale", "P": "palette", "PA": "palette+alpha", "CMYK": "CMYK", "RGBA": "RGBA"}


def converted_text(converted: dict[str, int]) -> str:
    """'37 grayscale and 2 CMYK inputs converted to RGB' from a manifest's {mode: count}: the manifest
    keeps Pillow's exact mode names for programs, people read words (the shard summary and inspect)."""
    counts: dict[str, int] = {}
    for mode, count in converted.items():
        words = _MODE_WORDS.get(mode, mode)
        counts[words] = counts.get(words, 0) + count
    parts = [f"{count} {words}" for words, count in sorted(counts.items(), key=lambda item: (-item[1], item[0]))]
    if not parts:
        return "no input converted to RGB (all were RGB)"
    listed = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return f"{listed} input{'' if sum(counts.values()) == 1 else 's'} converted to RGB"


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
        self.last = self.now = self.work_start = time.monotonic()
        self.kept_inputs = self.kept_shards = 0  # finished by an earlier run, checked and kept: no work here

    def begin_work(self) -> None:
        """The first task goes out now: the ETA counts from here, not from Ray's start-up (the first
        ETA of a 17 s job was 109 s)."""
        self.work_start = time.monotonic()

    def update(self, inputs: int, shards: int = 1, kept: bool = False) -> None:
        self.inputs += inputs
        self.shards += shards
        if kept:
            self.kept_inputs += inputs
            self.kept_shards += shards
        self.now = time.monotonic()
        if self.now - self.last >= self.interval_s or self.shards == self.total_shards:
            self.last = self.now
            self._show()

    def rate_text(self) -> str:
        """This run's own inputs, seconds and rate as of the last update (the bar's final line gives the
        same rate), and the shards an earlier run had finished."""
        elapsed = max(self.now - self.start, 1e-9)
        done = self.inputs - self.kept_inputs
        kept = f"; {plural(self.kept_shards, 'shard')} kept from an earlier run" if self.kept_shards else ""
        return f"{plural(done, 'input')} in {elapsed:.1f}s, {rate_text(done / elapsed)} inputs/s{kept}"

    def _show(self) -> None:
        done = self.inputs - self.kept_inputs
        rate = done / max(self.now - self.start, 1e-9)
        working_rate = done / max(self.now - self.work_start, 1e-9)
        left = self.total_inputs - self.inputs
        eta = f"{left / working_rate:.0f}s" if working_rate > 0 else "?"
        text = (f"{self.inputs}/{plural(self.total_inputs, 'input')}, {self.shards}/"
                f"{plural(self.total_shards, 'shard')}, {rate_text(rate)} inputs/s, ETA {eta}")
        if self.tty:
            done = int(30 * self.shards / max(self.total_shards, 1))
            print(f"\r[{'#' * done}{'.' * (30 - done)}] {text}", end="", file=self.stream, flush=True)
            if self.shards == self.total_shards:
                print(file=self.stream, flush=True)
        else:
            print(f"shard: {text}", file=self.stream, flush=True)
