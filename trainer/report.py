"""A run's metrics as files: JSON lines (the record), TensorBoard event files, PNG plots.

`metrics.jsonl` in the run folder holds one JSON object per line, `kind` first:
    step   epoch, step, batch (of the epoch), batches (in the epoch), loss, lr, images_per_s
           (every log_every_steps steps)
    epoch  epoch, step, lr, train_loss, train_top1_error, val_loss, val_top1_error, val_top5_error,
           decision ("continue" | "reduce" | "stop"), seconds
    resume epoch, step, batch, world_size                  (a restart continued from a checkpoint)
    end    step, epochs, reason, replica_digests (sha256 of each replica's weights)
Epochs are numbered from 1, here as on plots, in reports and in `alexnet eval`. On resume the file is cut back to the
checkpoint's step and the resume record added in one atomic rewrite, so a step that was redone after a failure
appears once, and whoever follows the file (the console) sees a rewrite end with the record that explains it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

from pipeline import storage
from pipeline.errors import UserError

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_FOLDER = "tensorboard"
PLOTS_FOLDER = "plots"


class MetricsLog:
    """Appends records; on object storage (no append) the whole file is rewritten at each flush."""

    def __init__(self, run_dir: str, resumed: dict | None = None):
        """`resumed`: the resume record of a run continued from a checkpoint (its `step`), or None for a
        new run, which starts the file over."""
        self.run_dir = run_dir
        self.location = storage.join(run_dir, METRICS_FILE)
        self.remote = storage.is_url(run_dir)
        records = []
        if resumed is not None:
            records = [r for r in read_metrics(run_dir, missing_ok=True)
                       if r.get("step", 0) <= resumed["step"] and r.get("kind") != "end"] + [resumed]
        self.lines = [json.dumps(r) for r in records]
        self._write_all()
        self._file = None if self.remote else open(self.location, "a", encoding="utf-8")

    def _write_all(self) -> None:
        storage.makedirs(self.run_dir)
        storage.write_bytes_atomic(self.location, "".join(line + "\n" for line in self.lines).encode())

    def append(self, record: dict) -> None:
        line = json.dumps(record)
        self.lines.append(line)
        if self._file is not None:
            self._file.write(line + "\n")
            self._file.flush()

    def flush(self) -> None:
        if self.remote:
            self._write_all()

    def close(self) -> None:
        self.flush()
        if self._file is not None:
            self._file.close()
            self._file = None


class TensorBoardLog:
    """Event files under RUN/tensorboard; written locally and copied up when the run is on a URL."""

    def __init__(self, run_dir: str):
        from torch.utils.tensorboard import SummaryWriter

        self.remote_dir = storage.join(run_dir, TENSORBOARD_FOLDER) if storage.is_url(run_dir) else None
        local = tempfile.mkdtemp(prefix="alexnet-tb-") if self.remote_dir else storage.join(run_dir, TENSORBOARD_FOLDER)
        self.writer = SummaryWriter(log_dir=local)

    def add(self, record: dict) -> None:
        step = record["step"]
        prefix = "step" if record["kind"] == "step" else "epoch"
        for key, value in record.items():
            if key not in ("kind", "step", "epoch") and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(f"{prefix}/{key}", value, step)

    def flush(self) -> None:
        self.writer.flush()
        if self.remote_dir:
            folder = self.writer.log_dir
            for name in os.listdir(folder):
                with open(os.path.join(folder, name), "rb") as f:
                    storage.write_bytes_atomic(storage.join(self.remote_dir, name), f.read())

    def close(self) -> None:
        self.flush()
        self.writer.close()
        if self.remote_dir:
            shutil.rmtree(self.writer.log_dir, ignore_errors=True)


def read_metrics(run_dir: str, missing_ok: bool = False) -> list[dict]:
    location = storage.join(run_dir, METRICS_FILE)
    if not storage.exists(location):
        if missing_ok:
            return []
        raise UserError(f"{location} does not exist: is {run_dir} a run folder written by `alexnet train`?")
    records = []
    for number, line in enumerate(storage.read_bytes(location).decode().splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                raise UserError(f"{location}:{number} is not JSON: {line[:80]!r}") from None
    return records


def plot_run(run_dir: str) -> list[str]:
    """loss.png and error.png in RUN/plots: curves against epochs, lr reductions as dashed lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = [r for r in read_metrics(run_dir) if r.get("kind") == "epoch"]
    if not epochs:
        raise UserError(f"{storage.join(run_dir, METRICS_FILE)} holds no finished epoch yet: nothing to plot")
    x = [r["epoch"] for r in epochs]
    reductions = [r["epoch"] for r in epochs if r.get("decision") == "reduce"]
    written = []
    panels = {"loss": [("train_loss", "train loss"), ("val_loss", "validation loss")],
              "error": [("train_top1_error", "train top-1"), ("val_top1_error", "validation top-1"),
                        ("val_top5_error", "validation top-5")]}
    for name, series in panels.items():
        fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
        for key, label in series:
            ax.plot(x, [r.get(key, float("nan")) for r in epochs], marker="o", markersize=3, label=label)
        for i, epoch in enumerate(reductions):
            ax.axvline(epoch + 0.5, color="grey", linestyle="--", linewidth=1,
                       label="lr / 10" if i == 0 else None)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers, even in a 2-epoch run
        ax.set_ylabel("cross-entropy" if name == "loss" else "error (0-1)")
        ax.set_title(f"{name} — {run_dir.rstrip('/').rsplit('/', 1)[-1]}")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        buffer = _png(fig)
        plt.close(fig)
        location = storage.join(run_dir, PLOTS_FOLDER, f"{name}.png")
        storage.write_bytes_atomic(location, buffer)
        written.append(location)
    return written


def _png(fig) -> bytes:
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()
