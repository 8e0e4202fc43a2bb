"""Shards -> batches: the training and evaluation loaders and what they are built from.

`TrainLoader` / `EvalLoader` (loaders.py) are the public entry points; the epoch plan and its elastic
deals (plan.py, deals.py), the index checks (index.py), tar reading (tar_reader.py), the per-worker
stream (stream.py), the batch pool (pool.py) and layout (layout.py) sit behind them, and the on-device
augmentation (augment.py) is what the trainer applies to their uint8 batches.
"""
from pipeline.loader.augment import BatchTransform
from pipeline.loader.loaders import EvalLoader, ShardReadError, TrainLoader

__all__ = ["BatchTransform", "EvalLoader", "ShardReadError", "TrainLoader"]
