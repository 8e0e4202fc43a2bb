"""The console while `alexnet train` runs: one line per epoch, a live bar of the epoch's steps, and a
line wherever a restart (a lost worker, an elastic resize) went back to a checkpoint.

The driver follows the run's own metrics.jsonl (written by rank 0) in a thread. Reading the record
instead of forwarding worker prints keeps one source for the console, the file and the plots, and the
driver knows whether its stdout is a terminal (a worker's stdout is a Ray log file): on a terminal the
step records redraw one bar in place; elsewhere (a Ray job's log, a pipe) each is a plain line. How
often the bar moves is `log_every_steps`. On object storage the file is only rewritten at checkpoints,
so there the console shows epochs, not steps.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
from typing import TextIO

from pipeline import storage
from trainer.report import METRICS_FILE

BAR_WIDTH = 24


def step_text(record: dict, epochs: int) -> str:
    done, total = record.get("batch", 0), record.get("batches", 0)
    filled = BAR_WIDTH * done // total if total else 0
    bar = f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {done}/{total} steps" if total else f"step {record['step']}"
    return (f"epoch {record['epoch']}/{epochs} {bar}, loss {record['loss']:.3f}, lr {record['lr']:.4g}, "
            f"{record['images_per_s']:.0f} images/s")


def epoch_text(record: dict, epochs: int) -> str:
    return (f"epoch {record['epoch']}/{epochs}: train loss {record['train_loss']:.3f}, top-1 error "
            f"{record['train_top1_error']:.3f}; val loss {record['val_loss']:.3f}, top-1 error "
            f"{record['val_top1_error']:.3f}, top-5 error {record['val_top5_error']:.3f}; lr "
            f"{record['lr']:.4g} -> {record['decision']} ({record['seconds']:.0f} s)")


def resume_text(record: dict, epochs: int) -> str:
    world, was = record.get("world_size"), record.get("from_world_size")
    skipped = record.get("skipped") or []
    return (f"resumed from the checkpoint at step {record['step']}: epoch {record['epoch']}/{epochs}, batch "
            f"{record['batch']}, {world} replica{'s' if world != 1 else ''}"
            + (f" (was {was}: the epoch's untrained samples dealt anew)" if was and was != world else "")
            + (f"; skipped unreadable {', '.join(skipped)}" if skipped else ""))


class ConsoleProgress:
    """Follows RUN/metrics.jsonl from a thread until stopped; use as a context manager."""

    def __init__(self, run_dir: str, epochs: int, out: TextIO | None = None, interval: float = 0.5):
        self.location = storage.join(run_dir, METRICS_FILE)
        self.epochs = epochs
        self.out = out or sys.stdout
        self.live = self.out.isatty()
        self.interval = interval if not storage.is_url(run_dir) else max(interval, 10.0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="alexnet-progress", daemon=True)
        self._bar_shown = False
        self._consumed = 0  # bytes of the file already read
        self._identity: object = None  # of the file read so far: its inode, or on object storage its bytes' hash
        # what is already in the file (a continued run) is not shown again
        self._last = max((self._order(r) for r in self._records()[0] if r["kind"] != "resume"), default=(-1, -1))

    def __enter__(self) -> "ConsoleProgress":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._show_new()
        self._end_bar()

    @staticmethod
    def _order(record: dict) -> tuple[int, int]:
        return record.get("step", 0), 1 if record.get("kind") == "epoch" else 0

    def _records(self) -> tuple[list[dict], bool]:
        """The step, epoch and resume records written since the last call, and whether the file was
        rewritten since (a new inode; on object storage, other leading bytes): it is then read again from
        its start. Only the new bytes of a local file are read (a week-long run's file grows to many MB,
        polled twice a second); object storage is read whole, every 10 s."""
        rewritten = False
        try:
            if not storage.exists(self.location):
                return [], False
            whole = None
            if storage.is_url(self.location):
                whole = storage.read_bytes(self.location)
                if hashlib.sha256(whole[:self._consumed]).digest() != self._identity:
                    rewritten, self._consumed = self._identity is not None, 0
                data = whole[self._consumed:]
            else:
                with open(self.location, "rb") as file:
                    status = os.fstat(file.fileno())
                    if status.st_ino != self._identity or status.st_size < self._consumed:
                        rewritten = self._identity is not None
                        self._consumed, self._identity = 0, status.st_ino
                    file.seek(self._consumed)
                    data = file.read()
        except OSError:
            return [], False
        complete = data[:data.rfind(b"\n") + 1]  # a line without its newline is still being written
        self._consumed += len(complete)
        if whole is not None:
            self._identity = hashlib.sha256(whole[:self._consumed]).digest()
        records = []
        for line in complete.decode("utf-8", errors="replace").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if record.get("kind") in ("step", "epoch", "resume"):
                records.append(record)
        return records, rewritten

    def _follow(self) -> None:
        while not self._stop.wait(self.interval):
            self._show_new()

    def _show_new(self) -> None:
        """Records in order, each shown once. A run resumed from a checkpoint rewrites the file cut back to
        the checkpoint's step, ending with its resume record (one atomic write): what follows that record
        is new, the redone steps included, which may differ from the first try (another replica count);
        what precedes it was there before. A rewrite without one is a run started over from its first
        step (it failed before any checkpoint was registered): all of it is new."""
        records, rewritten = self._records()
        resumes = [i for i, record in enumerate(records) if record["kind"] == "resume"]
        if rewritten and not resumes and self._last > (-1, -1):
            self._last = (-1, -1)
            self._end_bar()
            self.out.write("started over from the first step: no checkpoint had been registered yet\n")
            self.out.flush()
        for i, record in enumerate(records):
            if record["kind"] != "resume":
                if self._order(record) > self._last:
                    self._last = self._order(record)
                    self._show(record)
            elif i == resumes[-1]:
                self._last = (record["step"], 1)
                self._show(record)

    def _show(self, record: dict) -> None:
        if record["kind"] in ("epoch", "resume"):
            self._end_bar()
            self.out.write((epoch_text if record["kind"] == "epoch" else resume_text)(record, self.epochs) + "\n")
        elif self.live:
            self.out.write("\r\033[K" + step_text(record, self.epochs))
            self._bar_shown = True
        else:
            self.out.write(step_text(record, self.epochs) + "\n")
        self.out.flush()

    def _end_bar(self) -> None:
        if self._bar_shown:
            self.out.write("\r\033[K")
            self.out.flush()
            self._bar_shown = False
