"""A run's files: one checkpoint file's format (format.py), which file a `--checkpoint` names
(checkpoint_location.py, no torch), and the run folder Ray Train keeps, with its repair and the worker's
fallback to the newest readable checkpoint (resume.py).

`from trainer import checkpoint; checkpoint.load(path)` reads a checkpoint as before the package
existed: the file format's names are imported on first use, so `trainer.checkpoint.checkpoint_location`
stays free of torch's import (~3 s) for the commands that resolve `--checkpoint` first.
"""
import importlib

_FORMAT = "trainer.checkpoint.format"
_HOMES = {name: _FORMAT for name in ("FORMAT", "READERS_NEED", "STAGING_PREFIX", "build", "check_readable",
                                     "cpu_state_dict", "load", "optimizer_state_cpu", "remove_stale_staging",
                                     "staging_folder", "to_bytes", "weights_digest", "write_best", "write_local")}
_HOMES.update({name: "trainer.checkpoint.checkpoint_location"
               for name in ("BEST_FOLDER", "FILE_NAME", "resolve_location")})
__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)
