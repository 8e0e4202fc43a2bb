"""`alexnet train`: check everything a user can get wrong, then run the Ray Train TorchTrainer.

    alexnet train --data out/ --name run1                          # one machine: a local Ray instance
    alexnet train --data s3://b/imagenet --name run1 --storage s3://b/runs \
        --workers 8 --gpus-per-worker 2 --address auto              # a cluster: 8 replicas x 2 GPUs
    ... --workers 4:8 ...                                           # elastic: 4 to 8 replicas as nodes come and go

The run folder is STORAGE/NAME (Ray Train's RunConfig). Giving the same command again continues the
run from its last checkpoint (Ray Train reads its own checkpoint list from the run folder); `--fresh`
deletes the run folder first. Worker failures are recovered by Ray Train (FailureConfig) from the last
checkpoint, without the driver's help.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys

from pipeline import storage
from pipeline.errors import UserError
from pipeline.ray_instance import TracebackLog, own_ray
from trainer.config import TrainConfig

# Fields a continued run must share with the run it continues (else the checkpoint does not fit).
SHAPE_FIELDS = ("data", "variant", "width", "crop")


def train(config: TrainConfig, *, address: str | None = None, fresh: bool = False) -> int:
    from trainer.driver import preflight

    config = _absolute_storage(config)
    train_manifest = check_dataset(config.data)
    preflight.check(config, train_manifest)  # what would otherwise fail in every worker
    run_dir = storage.join(config.storage, config.name)
    changed = None if fresh else _check_same_run(config, run_dir)  # another model shape is refused
    if not fresh and _finished(config, run_dir):
        return 0

    # after the checks: torch and Ray Train take ~4 CPU-s to import, which a typo should not wait for
    import ray
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from trainer.checkpoint import resume
    from trainer.driver import failures, resources
    from trainer.driver.progress import ConsoleProgress
    from trainer.precision import plan_text
    from trainer.report import plot_run

    gpu = config.gpus_per_worker > 0
    print(f"alexnet train: {plan_text(config.precision, config.deterministic, config.compile, gpu)}", flush=True)
    if changed is not None:  # a run folder with a config.json: checkpointed, or stopped before it was
        print((f"alexnet train: continuing run {run_dir} from its last checkpoint" if resume.registered(run_dir)
               else f"alexnet train: run {run_dir} stopped before its first checkpoint: starting it again")
              + (f" (changed: {', '.join(changed)})" if changed else ""), flush=True)
    from trainer.hooks import FailurePause
    from trainer.loop import train_worker  # after the checks: it imports the loaders and the model

    pause = FailurePause.from_environment()  # None unless a failure test asks for one (ALEXNET_DEBUG_*)
    worker = train_worker if pause is None else functools.partial(train_worker, hooks=pause)

    with own_ray(address, _forwarded_env(), log_to_driver=True):
        tracebacks = TracebackLog(traceback_log_path(config.name)).install()  # not on the console
        needed = dataclasses.replace(config, workers=config.fewest_workers)  # what the run needs to start
        waiting_for = resources.check(needed)  # raises if the cluster can never hold the run
        if waiting_for:  # before anything is written or deleted: a wait that times out leaves nothing behind
            resources.wait_for_nodes(needed, waiting_for)
        if fresh:  # only once everything else checked out: nothing is deleted for a typo
            _delete_run(run_dir)
        else:
            resume.repair_run(run_dir)  # unreadable or never registered checkpoints out of the run folder
        storage.makedirs(run_dir)
        # the run continues with this config (an unfinished run; a finished one returned above)
        storage.write_bytes_atomic(storage.join(run_dir, "config.json"), config.to_json().encode())
        # the path, not the ~45 lines of the file: every run would open with them
        print(f"alexnet train: run folder {run_dir}; config {storage.join(run_dir, 'config.json')}", flush=True)
        trainer = TorchTrainer(
            worker,
            train_loop_config={"config": config.to_dict(), "run_dir": run_dir},
            torch_config=TorchConfig(backend="nccl" if gpu else "gloo"),
            scaling_config=ScalingConfig(num_workers=(config.min_workers, config.workers) if config.elastic
                                         else config.workers, use_gpu=gpu,
                                         elastic_resize_monitor_interval_s=config.resize_check_seconds,
                                         resources_per_worker={"CPU": config.cpus_per_worker,
                                                               **({"GPU": config.gpus_per_worker} if gpu else {})}),
            run_config=RunConfig(name=config.name, storage_path=config.storage,
                                 failure_config=FailureConfig(max_failures=config.max_failures),
                                 callbacks=[failures.StopOnUserError()],  # user errors are never retried
                                 checkpoint_config=CheckpointConfig(num_to_keep=config.keep_checkpoints),
                                 worker_runtime_env={"env_vars": _forwarded_env()},
                                 logging_config=LoggingConfig(log_level="WARNING")),
        )
        try:
            with ConsoleProgress(run_dir, config.epochs):
                result = trainer.fit()
        except (SystemExit, KeyboardInterrupt):
            # Ray Train's own SIGINT handler (in fit) aborts the run, then leaves by sys.exit(0)
            raise KeyboardInterrupt(interrupted_text(run_dir, resume.registered(run_dir))) from None
        except ray.train.TrainingFailedError as error:
            cause = failures.user_error_in(error)
            if cause is None:
                raise
            resume.remove_unregistered(run_dir)  # e.g. a checkpoint cut off by a full disk
            where = failures.one_line(cause).replace(failures.RUN_FOLDER, run_dir)  # a storage error's location
            raise UserError(f"the run stopped at its first attempt: {where}{tracebacks.note()}") from None
    if tracebacks.count:  # failures Ray Train recovered from: said once, their tracebacks kept
        print(f"alexnet train: Ray Train restarted workers after failures; {tracebacks.count} tracebacks in "
              f"{tracebacks.path}", flush=True)
    if result.error is not None:
        raise result.error
    resume.remove_unregistered(run_dir)  # an attempt Ray Train restarted may have left one
    try:
        plots = plot_run(run_dir)
        print("alexnet train: plots " + ", ".join(plots))
    except UserError as error:
        print(f"alexnet train: no plots: {error}")
    last = result.checkpoint.path if result.checkpoint else "none"
    print(f"alexnet train: finished; last checkpoint {last}; metrics {storage.join(run_dir, 'metrics.jsonl')}")
    sys.stdout.flush()
    return 0


def traceback_log_path(name: str) -> str:
    """A local file for the run's tracebacks: not in the run folder, which may be the full disk."""
    import tempfile
    import time

    return os.path.join(tempfile.gettempdir(), f"alexnet-train-{name}-{time.strftime('%Y%m%d-%H%M%S')}.log")


def interrupted_text(run_dir: str, checkpoints: list[str]) -> str:
    """What an interrupted run leaves, in words: a run stopped before its first checkpoint has nothing to
    continue from, and must not be told it has."""
    if checkpoints:
        return f"the run folder {run_dir} keeps its last checkpoint: give the same command again to continue from it"
    return f"no checkpoint was written yet: the same command starts the run {run_dir} again from the beginning"


def check_dataset(data: str) -> dict:
    """Both splits finished (manifests written last) and the statistics present, before any worker;
    returns the train split's manifest."""
    from pipeline.shard.manifest import read_manifest
    from pipeline.shard.stats import read_stats

    train = read_manifest(data, "train")
    val = read_manifest(data, "val")
    read_stats(data)
    if [c["synset"] for c in val["classes"]] != [c["synset"] for c in train["classes"]]:
        raise UserError(f"{data}: the val split's class list differs from the train split's; shard val "
                        f"into the same folder after train so it takes the train class indices")
    return train


def _absolute_storage(config: TrainConfig) -> TrainConfig:
    """Ray workers do not share the driver's working directory: local paths must be absolute."""
    return dataclasses.replace(config, storage=storage.absolute(config.storage), data=storage.absolute(config.data))


def _delete_run(run_dir: str) -> None:
    if not storage.exists(run_dir):
        return
    print(f"alexnet train: --fresh: deleting {run_dir}", flush=True)
    storage.delete_tree(run_dir)


def _check_same_run(config: TrainConfig, run_dir: str) -> list[str] | None:
    """UserError if the run folder holds a run of another shape; else the config keys that differ from
    its stored config (None when there is no run yet)."""
    import json

    stored_location = storage.join(run_dir, "config.json")
    if not storage.exists(stored_location):
        return None
    stored = json.loads(storage.read_bytes(stored_location))
    changed = [f"{k}: {stored.get(k)!r} -> {getattr(config, k)!r}" for k in SHAPE_FIELDS
               if stored.get(k) != getattr(config, k)]
    if changed:
        raise UserError(f"run {run_dir} exists with a different {', '.join(changed)}; continue it with "
                        f"the same settings, or start over with --fresh or another --name")
    return [k for k in stored if k in config.to_dict() and stored[k] != getattr(config, k)]


def _finished(config: TrainConfig, run_dir: str) -> bool:
    """A run that ended (its `end` record) is reported before Ray starts, and its config.json is kept:
    nothing would run, so nothing may claim the run was made with other settings."""
    from trainer.report import read_metrics

    ends = [r for r in read_metrics(run_dir, missing_ok=True) if r.get("kind") == "end"]
    if not ends:
        return False
    end = ends[-1]
    suggested = config.epochs if config.epochs > end["epochs"] else 2 * end["epochs"]
    print(f"alexnet train: run {run_dir} finished after {end['epochs']} epochs ({end['reason']}); nothing to "
          f"do. A finished run is not extended in place: to train longer, start it over with --fresh and "
          f"a larger epochs (e.g. --set epochs={suggested}), or under another "
          f"--name", flush=True)
    return True


def _forwarded_env() -> dict:
    """What workers must see: deterministic cuBLAS, the test settings (ALEXNET_DEBUG_*), and Ray
    Train's print patch off (it sends each worker print to the driver twice: once as printed, once logged)."""
    env = {"CUBLAS_WORKSPACE_CONFIG": ":4096:8", "RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}
    env.update({k: v for k, v in os.environ.items() if k.startswith("ALEXNET_DEBUG_")})
    return env
