"""What one Ray Train worker runs, top to bottom: build, maybe resume, train epochs, validate, checkpoint.

Each worker owns one model replica on two devices (one tower each; both "cpu" without GPUs). With R
workers, DDP (device_ids=None, since the replica spans two devices) averages gradients, so a step is
one step on a global batch of batch_size x R. The run's state is one object (trainer/state.py RunState):
the loop reads and writes it, and its checkpoints, written by rank 0 after gathering every rank's loader
position and RNG states (trainer/checkpoint/format.py writes the file), let a resumed run
continue at the exact batch with the exact random numbers: on the CPU with deterministic kernels the
weights come out bitwise equal to an uninterrupted run.

An elastic run (`--workers MIN:MAX`) may resume with another number of replicas. Mid-epoch, the loader
then deals the samples no rank trained yet among the new ranks (pipeline/loader/deals.py), the new rank
0 carries the old ranks' loss totals and sample audit (trainer/audit.py), the per-replica batch stays,
and with `scale_lr` the lr follows the new replica count (the schedule's reductions kept).
"""

from __future__ import annotations

import importlib
import logging
import os
import time

import ray.train
import torch
from ray.train import Checkpoint

from pipeline.loader.augment import BatchTransform
from pipeline.loader.deals import batches_done
from pipeline.loader.loaders import EvalLoader
from trainer.checkpoint import format as ckpt
from trainer.checkpoint.resume import folder_name, load_newest_readable, unused_checkpoint_name
from trainer.config import TrainConfig, config_from_dict
from trainer.evaluate import errors_from_totals, eval_totals
from trainer.hooks import Hooks
from trainer.precision import set_up_kernels
from trainer.ranks import gather, mean_over_ranks, sum_over_ranks
from trainer.report import MetricsLog, TensorBoardLog
from trainer.schedule import set_step_lr
from trainer.state import RunState
from trainer.step import train_step


def train_worker(params: dict, hooks: Hooks | None = None) -> None:
    """The Ray Train loop function; `params` = {"config": dict, "run_dir": str}. `hooks` (trainer/hooks.py)
    are called after each step, before each validation and in each save; by default nothing is."""
    hooks = hooks or Hooks()
    config = config_from_dict(params["config"])
    run_dir = params["run_dir"]
    _quiet_ray_reports()
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    devices = _devices(config)
    torch.set_num_threads(config.cpus_per_worker)
    kernels = set_up_kernels(config.deterministic, devices[0])

    # --- build: the model identical on every rank (same seed), loader, RNGs, counters ---
    run = RunState(config, rank, world, devices)
    if rank == 0:
        print(f"[rank 0] {run.precision.describe()}, {kernels}{', compiled' if config.compile else ''}")
    augment = BatchTransform(run.stats, pca_std=config.pca_std)
    plain = BatchTransform(run.stats, pca_std=0.0)

    # --- resume: Ray Train's latest checkpoint, or else the newest older one that can be read ---
    resume_record = None
    if (resumed := ray.train.get_checkpoint()) is not None:
        state, skipped = load_newest_readable(folder_name(resumed.path), run_dir,
                                              log=lambda line: print(f"[rank {rank}] {line}"))
        source = folder_name(resumed.path) if not skipped else f"the newest readable checkpoint of {run_dir}"
        run.check(state, source)  # before anything is restored: a key nothing restores, or a part missing
        if state.get("finished"):
            print(f"[rank {rank}] the run finished at epoch {state['epoch']} (step {state['step']}): nothing to do")
            return
        run.restore(state, source)
        print(f"[rank {rank}] resumed at epoch {run.epoch + 1}, step {run.step}, batch {run.epoch_step}")
        resume_record = {"kind": "resume", "epoch": run.epoch + 1, "step": run.step, "batch": run.epoch_step,
                         "world_size": world, "from_world_size": state["world_size"], "skipped": skipped}
        del state
    else:
        run.loader.set_epoch(0)
    replica = torch.nn.parallel.DistributedDataParallel(run.model, device_ids=None) if world > 1 else run.model
    logs = _Logs(run_dir, resume_record) if rank == 0 else None
    model, optimizer, loader, generator = run.model, run.optimizer, run.loader, run.generator

    # --- epochs: steps (with checkpoints every N steps), validation, schedule, checkpoint ---
    decision = "continue"
    while decision != "stop":
        model.train()
        # a resized epoch ends when its last deal does (or at steps_per_epoch, counted over its deals)
        batches_per_epoch = min(batches_done(loader.deals) + len(loader), config.steps_per_epoch or 2**62)
        positions = loader.batch_positions()  # the epoch positions of this deal's batches, for the audit
        started = window_start = time.perf_counter()
        window_images, window_wait, waited_from = 0, 0.0, started
        for images, labels in loader:  # a pass never touches the global RNGs (tested)
            window_wait += time.perf_counter() - waited_from  # host time spent waiting for this batch
            images = images.to(devices[0], non_blocking=True)  # uint8 NCHW, 0-255
            labels = labels.to(devices[0], non_blocking=True)
            set_step_lr(optimizer, run.schedule, config, run.epochs_done(batches_per_epoch))
            loss, logits = train_step(replica, optimizer, run.precision, augment(images, generator), labels)
            run.audit.mark(positions[loader.batches - 1])
            run.step += 1
            run.epoch_step += 1
            with torch.no_grad():
                count = torch.tensor(float(labels.numel()), dtype=torch.float64, device=devices[0])
                run.train_totals += torch.stack([loss.detach().double() * count,
                                                 (logits.argmax(1) == labels).sum().double(), count])
            window_images += labels.numel() * world
            if run.step % config.log_every_steps == 0:
                now = time.perf_counter()
                # epochs are numbered from 1 in every record (the checkpoint's counter is epochs done)
                record = {"kind": "step", "epoch": run.epoch + 1, "step": run.step, "batch": run.epoch_step,
                          "batches": batches_per_epoch, "world_size": world, "loss": mean_over_ranks(loss, world),
                          "lr": optimizer.param_groups[0]["lr"],
                          "images_per_s": window_images / max(now - window_start, 1e-9),
                          "data_wait": window_wait / max(now - window_start, 1e-9)}
                window_start, window_images, window_wait = now, 0, 0.0
                if logs:
                    logs.add(record)
                ray.train.report({k: v for k, v in record.items() if k != "kind"})
            hooks.after_step(run)
            last_batch = run.epoch_step >= batches_per_epoch
            if config.checkpoint_every_steps and run.step % config.checkpoint_every_steps == 0 and not last_batch:
                _save(run, logs, {"kind": "checkpoint", "epoch": run.epoch, "step": run.step}, hooks)
            if last_batch:
                break
            waited_from = time.perf_counter()

        # --- end of epoch: validate (centre crop), step the schedule, checkpoint ---
        hooks.before_validation(run)
        val = errors_from_totals(sum_over_ranks(
            eval_totals(model, EvalLoader(config.data, config.eval_batch_size, rank=rank, world_size=world,
                                          crop=config.crop, num_workers=config.loader_workers,
                                          pin_memory=config.gpus_per_worker > 0),
                        plain, devices[0]), world))
        train = sum_over_ranks(run.train_totals.cpu(), world)
        samples = run.audit.summary(world)
        decision = run.schedule.step(val["top1_error"])
        run.set_lr(run.schedule.lr)
        record = {"kind": "epoch", "epoch": run.epoch + 1, "step": run.step, "lr": run.schedule.lr,
                  "train_loss": train[0].item() / max(train[2].item(), 1),
                  "train_top1_error": 1 - train[1].item() / max(train[2].item(), 1),
                  "val_loss": val["loss"], "val_top1_error": val["top1_error"],
                  "val_top5_error": val["top5_error"], **samples, "decision": decision,
                  "seconds": time.perf_counter() - started}
        run.history.append({k: v for k, v in record.items() if k != "kind"})
        digests = _replica_digests(model, world)
        best = run.schedule.is_best(run.epoch)
        run.epoch, run.epoch_step = run.epoch + 1, 0
        run.train_totals.zero_()
        run.audit.reset()
        if decision != "stop":
            loader.set_epoch(run.epoch)
        _save(run, logs, record, hooks, best=best)

    # --- end ---
    if logs:
        logs.add({"kind": "end", "step": run.step, "epochs": run.epoch,
                  "reason": "schedule" if run.epoch < config.epochs else "max epochs", "replica_digests": digests})
        logs.close()


def _save(run: RunState, logs: _Logs | None, record: dict, hooks: Hooks, best: bool = False) -> None:
    """Every rank's part of the state gathered, rank 0 writes the file, everyone reports it to Ray Train."""
    name = unused_checkpoint_name(logs.run_dir, run.step) if run.rank == 0 else None
    state, name = run.checkpoint(finished=record.get("decision") == "stop", share=name)  # rank 0's name
    metrics = {k: v for k, v in record.items() if k != "kind"}
    if state is None:  # not rank 0
        hooks.checkpoint_written(run)
        ray.train.report(metrics, checkpoint=None, checkpoint_dir_name=name)
        return
    if record["kind"] == "epoch":
        logs.add(record)
    logs.flush()
    with ckpt.staging_folder() as folder:
        ckpt.write_local(state, folder)
        hooks.checkpoint_written(run)
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(folder), checkpoint_dir_name=name)
        if best:  # once uploaded: a save cut short must not leave its state as the run's best
            ckpt.write_best(os.path.join(folder, ckpt.FILE_NAME), logs.run_dir)


class _Logs:
    """Rank 0's metrics file and TensorBoard events."""

    def __init__(self, run_dir: str, resume_record: dict | None):
        self.run_dir = run_dir
        self.metrics = MetricsLog(run_dir, resume_record)
        self.board = TensorBoardLog(run_dir)

    def add(self, record: dict) -> None:
        self.metrics.append(record)
        if record["kind"] in ("step", "epoch"):
            self.board.add(record)

    def flush(self) -> None:
        self.metrics.flush()
        self.board.flush()

    def close(self) -> None:
        self.metrics.close()
        self.board.close()


def _quiet_ray_reports() -> None:
    """Ray Train 2.60 logs every ray.train.report (metrics included) at INFO under a logger named
    after its source file, out of LoggingConfig's reach; our metrics have their own files."""
    ray_train_report_logger().setLevel(logging.WARNING)


# Ray Train 2.60's private module whose logger (named after its file, not its module) logs each report;
# tests/unit/test_private_apis.py fails, naming the Ray version, where it is gone or logs under another name
RAY_TRAIN_REPORT_MODULE = "ray.train.v2._internal.execution.context"


def ray_train_report_logger() -> logging.Logger:
    """The logger Ray Train logs every `ray.train.report` under (no public API reaches it)."""
    return logging.getLogger(importlib.import_module(RAY_TRAIN_REPORT_MODULE).__file__)


def _devices(config: TrainConfig) -> tuple[torch.device, torch.device]:
    if config.gpus_per_worker == 0:
        return torch.device("cpu"), torch.device("cpu")
    from ray.train.torch import get_devices

    found = get_devices()
    torch.cuda.set_device(found[0])
    return (found[0], found[1]) if len(found) >= 2 else (found[0], found[0])


def _replica_digests(model: torch.nn.Module, world: int) -> list[str]:
    """sha256 of each replica's weights; DDP must keep them identical, so a difference is an error."""
    everyone = gather(ckpt.weights_digest(model.state_dict()), world)
    if len(set(everyone)) != 1:
        raise RuntimeError(f"model replicas diverged: weight digests {everyone}")
    return everyone

