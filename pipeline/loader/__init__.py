"""Shards -> batches: the training and evaluation loaders and what they are built from.

`TrainLoader` / `EvalLoader` (loaders.py) are the public entry points; the epoch plan and its elastic
deals (plan.py, deals.py), the index checks (index.py), tar reading (tar_reader.py), the per-worker
stream (stream.py), the batch pool (pool.py) and layout (layout.py) sit behind them, and the on-device
augmentation (augment.py) is what the trainer applies to their uint8 batches.

Imported on first use: the torch-free parts (the index, tar reading) serve `alexnet inspect`, which
should not pay for torch's import (~2.5 s).
"""
import importlib

_HOMES = {"BatchTransform": "pipeline.loader.augment", "EvalLoader": "pipeline.loader.loaders",
          "ShardReadError": "pipeline.loader.tar_reader", "TrainLoader": "pipeline.loader.loaders"}
__all__ = sorted(_HOMES)


def __getattr__(name: str) -> type:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)
