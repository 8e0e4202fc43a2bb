"""What the driver can check about a run before any worker starts.

Ray Train retries a worker's failure up to max_failures times, each time restarting every worker; a
mistake found by the workers costs half a minute and a traceback per attempt. Everything decided by
the config and the dataset's manifests alone is checked here, once, in one line.
"""

from __future__ import annotations

from pipeline.errors import UserError
from trainer.config import VARIANTS, TrainConfig


def check(config: TrainConfig, train_manifest: dict) -> None:
    if config.variant not in VARIANTS:
        raise UserError(f"variant={config.variant!r} is not a model variant: choose one of {', '.join(VARIANTS)} "
                        f"(see `alexnet summary`)")
    samples = int(train_manifest["total_samples"])
    if samples < config.workers * config.batch_size:
        raise UserError(f"{config.data}: the train split's {samples} samples give each of the {config.workers} "
                        f"worker(s) {samples // config.workers}, fewer than batch_size={config.batch_size}: "
                        f"lower batch_size or --workers")
