"""Resume from the newest checkpoint that can be read, and keep the run folder one Ray Train accepts.

Ray Train 2.60 lists a run's checkpoints in `<run>/checkpoint_manager_snapshot.json` (one entry per
kept checkpoint: its folder name and metrics, the report index of each, and which one is the latest).
At start it refuses the whole run folder if a listed folder is gone, and `ray.train.get_checkpoint()`
hands workers the latest entry whether or not its file can be read. A truncated file, a deleted folder
or an upload cut off would then end the run (or leave a folder only `--fresh` can reuse), although an
older checkpoint would do.

Two places deal with it. The driver, before Ray Train reads the list (`repair_run`): it drops the
entries that cannot be read (judged by the archive's structure, not by reading the tensors), newest
first, until the newest readable one, deletes their folders, rewrites the list, and says what it
skipped and why. A worker (`load_newest_readable`), in case a
checkpoint goes bad while the run is up: it falls back to the newest older checkpoint folder it can
read, and says so.
"""

from __future__ import annotations

import json

from pipeline import storage
from pipeline.errors import UserError
from trainer.checkpoint import format as ckpt

# Ray Train 2.60's list of a run's checkpoints: its file name (ray.train.v2._internal.constants) and the
# fields of its _CheckpointManagerState this module reads or rewrites, both private to Ray Train;
# tests/unit/test_private_apis.py fails, naming the Ray version, where either changed
SNAPSHOT = "checkpoint_manager_snapshot.json"
SNAPSHOT_FIELDS = ("checkpoint_results", "checkpoint_report_indices", "latest_checkpoint_result",
                   "pending_training_results", "pending_validation_specs", "validated_checkpoint_dir_names",
                   "timed_out_validation_checkpoint_dir_names", "failed_validation_checkpoint_dir_names")
PREFIX = "checkpoint-"


def repair_run(run_dir: str, log=print) -> list[str]:
    """Before Ray Train reads the run folder: drop unreadable checkpoints from the newest end of its list
    and remove the folders it never listed; return the names skipped or removed."""
    return _drop_unreadable(run_dir, log) + remove_unregistered(run_dir, log)


def remove_unregistered(run_dir: str, log=print) -> list[str]:
    """Delete the checkpoint folders Ray Train's list does not hold, and return their names.

    A worker uploads a checkpoint before the controller registers it; a run stopped in between (Ctrl-C,
    a killed driver, a full disk) leaves a folder, whole or cut off, that Ray Train never resumes from
    and never prunes: it would stay for good beside `keep_checkpoints` others (and `alexnet eval`
    would score it as part of the run). The run goes on from the last registered one."""
    listed = set(registered(run_dir))
    removed = sorted((name for name in _checkpoint_names(run_dir) if name not in listed), key=_step_key)
    for name in removed:
        log(f"alexnet train: removing checkpoint {name}: written but never registered with Ray Train "
            f"(the run stopped before it was); the run goes on from its last registered checkpoint")
        storage.delete_tree(storage.join(run_dir, name))
    return removed


def registered(run_dir: str) -> list[str]:
    """The checkpoint folder names Ray Train's list holds (kept or still pending), oldest first."""
    location = storage.join(run_dir, SNAPSHOT)
    if not storage.exists(location):
        return []
    snapshot = json.loads(storage.read_bytes(location))
    entries = snapshot["checkpoint_results"] + snapshot.get("pending_training_results", [])
    return [entry["checkpoint_dir_name"] for entry in entries]


def _drop_unreadable(run_dir: str, log) -> list[str]:
    """Drop unreadable checkpoints from the newest end of Ray Train's list; return the skipped names."""
    location = storage.join(run_dir, SNAPSHOT)
    if not storage.exists(location):
        return []
    snapshot = json.loads(storage.read_bytes(location))
    entries = list(zip(snapshot["checkpoint_results"], snapshot["checkpoint_report_indices"]))
    entries.sort(key=lambda pair: pair[1])
    skipped = []
    while entries:
        name = entries[-1][0]["checkpoint_dir_name"]
        problem = unreadable(storage.join(run_dir, name))
        if problem is None:
            break
        log(f"alexnet train: skipping checkpoint {name}: {problem}; resuming from "
            f"{entries[-2][0]['checkpoint_dir_name'] if len(entries) > 1 else 'the start'}")
        skipped.append(name)
        entries.pop()
    if not skipped:
        return []
    for name in skipped:
        folder = storage.join(run_dir, name)
        if storage.exists(folder):
            storage.delete_tree(folder)
    snapshot["checkpoint_results"] = [entry for entry, _ in entries]
    snapshot["checkpoint_report_indices"] = [index for _, index in entries]
    snapshot["latest_checkpoint_result"] = entries[-1][0] if entries else None
    pending = [(r, v) for r, v in zip(snapshot.get("pending_training_results", []),
                                      snapshot.get("pending_validation_specs", []))
               if r["checkpoint_dir_name"] not in skipped]
    snapshot["pending_training_results"] = [r for r, _ in pending]
    snapshot["pending_validation_specs"] = [v for _, v in pending]
    for key in ("validated_checkpoint_dir_names", "timed_out_validation_checkpoint_dir_names",
                "failed_validation_checkpoint_dir_names"):
        snapshot[key] = [name for name in snapshot.get(key, []) if name not in skipped]
    storage.write_bytes_atomic(location, json.dumps(snapshot).encode())
    return skipped


def unreadable(folder: str) -> str | None:
    """Why a checkpoint folder cannot be resumed from, or None if it can (as far as the archive's
    structure tells: `checkpoint.check_readable`)."""
    if not storage.exists(folder):
        return "its folder is gone"
    try:
        ckpt.check_readable(storage.join(folder, ckpt.FILE_NAME))
    except UserError as error:
        return str(error).replace(folder.rstrip("/") + "/", "")
    return None


def load_newest_readable(latest_name: str, run_dir: str, log=print) -> tuple[dict, list[str]]:
    """The state in checkpoint folder `latest_name` of the run (Ray Train's latest), or else in the
    newest older checkpoint folder that can be read; also the names skipped."""
    skipped = []
    try:
        return ckpt.load(storage.join(run_dir, latest_name, ckpt.FILE_NAME)), skipped
    except UserError as error:
        problem = str(error)
    older = sorted((n for n in _checkpoint_names(run_dir) if _step_key(n) < _step_key(latest_name)),
                   key=_step_key, reverse=True)
    log(f"skipping checkpoint {latest_name}: {problem}")
    skipped.append(latest_name)
    for name in older:
        try:
            state = ckpt.load(storage.join(run_dir, name, ckpt.FILE_NAME))
        except UserError as error:
            log(f"skipping checkpoint {name}: {error}")
            skipped.append(name)
            continue
        log(f"resuming from the older checkpoint {name}")
        return state, skipped
    raise UserError(f"no readable checkpoint in {run_dir} (skipped {', '.join(skipped)}); start over with --fresh")


def folder_name(path: str) -> str:
    return str(path).rstrip("/").rsplit("/", 1)[-1]


def _step_key(name: str) -> tuple[int, int]:
    """checkpoint-00000012 < checkpoint-00000012-2 < checkpoint-00000014; others sort first."""
    parts = name[len(PREFIX):].split("-") if name.startswith(PREFIX) else []
    try:
        return int(parts[0]), int(parts[1]) if len(parts) > 1 else 1
    except (ValueError, IndexError):
        return -1, 0


def _checkpoint_names(run_dir: str) -> list[str]:
    import pyarrow.fs as pafs

    fs, path = storage.resolve(run_dir)
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    return [i.base_name for i in infos if i.type == pafs.FileType.Directory and i.base_name.startswith(PREFIX)]


def unused_checkpoint_name(run_dir: str, step: int) -> str:
    """`checkpoint-<step>`, or with a suffix when a folder of that name exists already (a checkpoint
    redone after a fallback, or the leftovers of an upload cut off): Ray Train deletes a checkpoint by
    its folder, so two checkpoints must never share one."""
    name = f"{PREFIX}{step:08d}"
    existing = set(_checkpoint_names(run_dir))
    suffix = 2
    candidate = name
    while candidate in existing:
        candidate, suffix = f"{name}-{suffix}", suffix + 1
    return candidate
