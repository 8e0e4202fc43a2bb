"""A run's whole state as one file, `checkpoint.pt`, loadable with `torch.load(weights_only=True)`.

Contents (docs/design.md "Checkpoints and runs"), every value a tensor, number, string, list or dict; what
goes in, and how it comes back, is decided in one place, trainer/state.py (RunState):
    format          integer version of this layout (FORMAT)
    model           the model's state_dict, device-agnostic (CPU tensors)
    optimizer       PaperSGD's state_dict (velocities, param groups with the current lr)
    schedule        PlateauSchedule.state_dict()
    scaler          the fp16 gradient scaler's state_dict ({} under fp32 and bf16; absent before it existed)
    epoch, step     the epoch in progress and the global step count (optimiser steps done)
    loader          one TrainLoader.state_dict() per rank (epoch, batches consumed in the current deal, seed,
                    the epoch's closed deals: what a resized run needs to deal only untrained samples)
    audit           one EpochAudit.state_dict() per rank: the epoch's samples trained so far, a bit each
    rng             one dict per rank: python, numpy, torch CPU, CUDA devices, augmentation generator
                    (trainer/rng.py captures and restores them)
    config          the resolved TrainConfig as a dict
    history         one dict of metrics per finished epoch
    num_classes, classes, stats    what evaluation needs to rebuild the model and its input
    world_size      the number of ranks that wrote `loader`, `rng`, `train_totals` and `audit`
    train_totals    one tensor per rank: the epoch's loss sum, top-1 correct, count so far
    epoch_step, finished    the batch of the epoch in progress; whether the schedule ended the run

Ray Train's checkpoint folders live in the run folder, which may be an `s3://` URL: reading goes
through pipeline.storage (pyarrow filesystems), writing through `ray.train.report`.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from typing import Any

import torch

from pipeline import storage
from pipeline.errors import UserError
from trainer.checkpoint.checkpoint_location import BEST_FOLDER, FILE_NAME, resolve_location

FORMAT = 1


def cpu_state_dict(module: torch.nn.Module) -> dict:
    """A copy on the CPU, so saving never holds GPU memory and loads anywhere."""
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def optimizer_state_cpu(optimizer: torch.optim.Optimizer) -> dict:
    state = optimizer.state_dict()
    state["state"] = {k: {n: (t.detach().to("cpu", copy=True) if torch.is_tensor(t) else t)
                          for n, t in s.items()} for k, s in state["state"].items()}
    return state


def to_bytes(state: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def write_local(state: dict, folder: str) -> str:
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, FILE_NAME)
    torch.save(state, path)
    return path


STAGING_PREFIX = "alexnet-ckpt-"


@contextlib.contextmanager
def staging_folder() -> Iterator[str]:
    """A local folder to write a checkpoint in before Ray Train uploads it, deleted afterwards.

    A worker killed while saving (OOM killer, lost node) cannot delete its folder: a whole model, 456 MB
    at width 1. The folder's name carries the writer's PID, and every save first deletes the folders
    of writers that are gone, so at most one stale folder per dead worker lives until the next save.
    """
    remove_stale_staging()
    folder = tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-")
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def remove_stale_staging(parent: str | None = None) -> list[str]:
    """Delete staging folders whose writer process no longer exists; return them."""
    parent = parent or tempfile.gettempdir()
    removed = []
    for name in os.listdir(parent):
        pid = name[len(STAGING_PREFIX):].split("-", 1)[0] if name.startswith(STAGING_PREFIX) else ""
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(os.path.join(parent, name), ignore_errors=True)
            removed.append(name)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive, and not ours to clean
        return True
    return True


def load(location: str) -> dict:
    """Read a checkpoint safely (no pickled code runs); errors name the file."""
    path = resolve_location(location)
    try:
        state = torch.load(io.BytesIO(storage.read_bytes(path)), map_location="cpu", weights_only=True)
    except Exception as error:  # a truncated or foreign file: say which, and why
        raise _unreadable(path, error) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"{path}: unknown checkpoint format {state.get('format') if isinstance(state, dict) else '?'}"
                        f" (this version reads format {FORMAT})")
    return state


def check_readable(location: str) -> None:
    """What a driver deciding where to resume needs, without reading the tensors (a whole model and its
    momenta, ~0.5 GB at width 1, maybe from object storage, which every worker then reads again):
    torch.save writes a zip archive whose directory is at its end, so a file cut short (an upload cut
    off, a full disk) has none. Reads the directory and the pickled index (a few KB, its CRC checked).
    A full `torch.load` would tell no more about the tensors (it checks no CRC of their bytes); what only
    unpickling finds is left to the workers' `load`, which fall back to an older checkpoint."""
    path = resolve_location(location)
    fs, inner = storage.resolve(path)
    try:
        with fs.open_input_file(inner) as file, zipfile.ZipFile(file) as archive:
            index = [name for name in archive.namelist() if name.rpartition("/")[2] == "data.pkl"]
            if len(index) != 1:
                raise zipfile.BadZipFile(f"{len(index)} pickled indexes (data.pkl) in the archive, not 1")
            archive.read(index[0])
    except ValueError:  # pyarrow's, seeking to a directory before the file's start: too short for a zip
        raise _unreadable(path, "File is not a zip file") from None
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise _unreadable(path, error) from None


def _unreadable(path: str, why: object) -> UserError:
    """One line naming the file (resume.py shows it with the folder cut off)."""
    return UserError(f"{path} is not a readable checkpoint: {why}".splitlines()[0])


# what this file's readers need beyond a resume (`alexnet eval`, the demo's report); what a resume
# needs is the run state's business (trainer/state.py), which refuses a checkpoint lacking any of it
READERS_NEED = {"model", "config", "num_classes", "classes", "stats"}


def build(**parts: Any) -> dict:
    """A checkpoint's contents with its format number."""
    missing = READERS_NEED - parts.keys()
    if missing:
        raise ValueError(f"checkpoint parts missing: {sorted(missing)}")
    return {"format": FORMAT, **parts}


def write_best(local_file: str, run_dir: str) -> str:
    """A copy of the best checkpoint (by validation error) outside Ray's keep-last-K rotation."""
    location = storage.join(run_dir, BEST_FOLDER, FILE_NAME)
    with open(local_file, "rb") as f:
        storage.write_bytes_atomic(location, f.read())
    return location


def weights_digest(model_state: dict) -> str:
    """sha256 over names and raw bytes of every tensor: equal digests mean bitwise-equal weights."""
    digest = hashlib.sha256()
    for key, value in sorted(model_state.items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
