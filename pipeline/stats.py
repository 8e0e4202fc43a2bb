"""The import path `pipeline.stats` from before the split into packages, kept for user code; the code
lives in pipeline/shard/stats.py (`from pipeline.shard import read_stats`)."""
from pipeline.shard.stats import STATS_FILE, read_stats  # noqa: F401
