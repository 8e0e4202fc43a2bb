"""ImageNet tree -> WebDataset shards: sources and scan rules, labels, one image, tar writing, the Ray
job, per-shard moments -> stats.json, progress, inspect.

The public names: `read_manifest` (a finished split's manifest) and
`read_stats` (the training split's pixel statistics); the job itself is `pipeline.shard.job.shard_split`.
"""
from pipeline.shard.manifest import read_manifest
from pipeline.shard.stats import read_stats

__all__ = ["read_manifest", "read_stats"]
