"""Where a checkpoint file is, from what a user gives (`--checkpoint`, a run folder), without torch:
`alexnet eval`, `predict`, `export` and `neighbours` resolve it before importing torch (~3 s), so a
mistyped path fails at once. trainer/checkpoint/format.py reads and writes the file itself."""

from __future__ import annotations

from pipeline import storage
from pipeline.errors import UserError

FILE_NAME = "checkpoint.pt"
BEST_FOLDER = "best"


def resolve_location(location: str) -> str:
    """A checkpoint file from a file, a checkpoint folder, or a run folder (its best checkpoint)."""
    location = str(location)
    candidates = [location, storage.join(location, FILE_NAME),
                  storage.join(location, BEST_FOLDER, FILE_NAME)]
    for candidate in candidates:
        if storage.exists(candidate) and not storage.is_dir(candidate):
            return candidate
    raise UserError(f"no checkpoint at {location}: give a {FILE_NAME} file, a checkpoint folder holding "
                    f"one, or a run folder with {BEST_FOLDER}/{FILE_NAME}")
