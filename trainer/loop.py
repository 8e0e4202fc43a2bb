"""What one Ray Train worker runs, top to bottom: build, maybe resume, train epochs, validate, checkpoint.

Each worker owns one model replica on two devices (one tower each; both "cpu" without GPUs). With R
workers, DDP (device_ids=None, since the replica spans two devices) averages gradients, so a step is
one step on a global batch of batch_size x R. Checkpoints are whole-run states (trainer/checkpoint.py)
written by rank 0 after gathering every rank's loader position and RNG states, so a resumed run
continues at the exact batch with the exact random numbers: on the CPU with deterministic kernels the
weights come out bitwise equal to an uninterrupted run.

An elastic run (`--workers MIN:MAX`) may resume with another number of replicas. Mid-epoch, the loader
then deals the samples no rank trained yet among the new ranks (pipeline/loader/deals.py), the new rank
0 carries the old ranks' loss totals and sample audit (trainer/audit.py), the per-replica batch stays,
and with `scale_lr` the lr follows the new replica count (the schedule's reductions kept).
"""

from __future__ import annotations

import os
import random
import time

import numpy as np
import ray.train
import torch
import torch.distributed as dist
from ray.train import Checkpoint

from pipeline.loader.augment import BatchTransform
from pipeline.loader.loaders import EvalLoader, TrainLoader
from pipeline.loader.deals import batches_done
from pipeline.shard.manifest import read_manifest
from pipeline.shard.stats import read_stats
from trainer import checkpoint as ckpt
from trainer.audit import EpochAudit
from trainer.config import TrainConfig, config_from_dict
from trainer.evaluate import errors_from_totals, eval_totals
from trainer.model import AlexNet
from trainer.optim import PaperSGD, param_groups
from trainer.precision import Precision, compile_model, set_up_kernels, train_step
from trainer.resume import folder_name, load_newest_readable, unused_checkpoint_name
from trainer.report import MetricsLog, TensorBoardLog
from trainer.schedule import PlateauSchedule, warmup_factor


def train_worker(params: dict) -> None:
    """The Ray Train loop function; `params` = {"config": dict, "run_dir": str}."""
    config = config_from_dict(params["config"])
    run_dir = params["run_dir"]
    _quiet_ray_reports()
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    devices = _devices(config)
    torch.set_num_threads(config.cpus_per_worker)
    kernels = set_up_kernels(config.deterministic, devices[0])

    # --- the model, identical on every rank (same seed), then the run's state if resuming ---
    manifest, stats = read_manifest(config.data, "train"), read_stats(config.data)
    _seed_all(config.seed)
    model = AlexNet(manifest["num_classes"], config.variant, devices, width=config.width,
                    dropout=config.dropout, positive_bias=config.positive_bias, init=config.init)
    precision = Precision(config.precision, devices[0])
    if config.compile:
        compile_model(model)  # in place: the state_dict keys stay the eager model's
    if rank == 0:
        print(f"[rank 0] {precision.describe()}, {kernels}{', compiled' if config.compile else ''}")
    optimizer = PaperSGD(param_groups(model, config.weight_decay, config.decay_biases, trust_coefficient(config)),
                         lr=config.lr_for(world), momentum=config.momentum,
                         weight_decay=config.weight_decay)
    schedule = PlateauSchedule(config.lr_for(world), factor=config.lr_factor, patience=config.patience,
                               threshold=config.threshold, max_reductions=config.max_reductions,
                               max_epochs=config.epochs, warmup_epochs=config.warmup_epochs)
    loader = TrainLoader(config.data, config.batch_size, rank=rank, world_size=world, seed=config.seed,
                         epoch=0, num_workers=config.loader_workers, crop=config.crop,
                         pin_memory=config.gpus_per_worker > 0)
    augment = BatchTransform(stats, pca_std=config.pca_std)
    plain = BatchTransform(stats, pca_std=0.0)
    generator = torch.Generator(device=devices[0])
    _seed_all(config.seed * 1000 + rank + 1, generator)  # dropout and colour noise differ per rank

    audit = EpochAudit(loader.total_samples)
    epoch, step, epoch_step, history = 0, 0, 0, []
    # loss sum, top-1 correct, count on this rank; on the device so a step never waits for a .item()
    train_totals = torch.zeros(3, dtype=torch.float64, device=devices[0])
    resumed, skipped = ray.train.get_checkpoint(), []
    if resumed is not None:  # Ray Train's latest, or else the newest older one that can be read
        state, skipped = load_newest_readable(folder_name(resumed.path), run_dir,
                                              log=lambda line: print(f"[rank {rank}] {line}"))
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        precision.load_state_dict(state.get("scaler", {}))  # (older checkpoints: none)
        epoch, step, history = state["epoch"], state["step"], state["history"]
        if state.get("finished"):
            print(f"[rank {rank}] the run finished at epoch {epoch} (step {step}): nothing to do")
            return
        if state["world_size"] == world:
            loader.load_state_dict(state["loader"][rank])  # (a new deal only if loader_workers changed)
            ckpt.restore_rng(state["rng"][rank], generator)
            train_totals = state["train_totals"][rank].to(devices[0])
            if "audit" in state:
                audit.load_state_dict(state["audit"][rank])
        else:
            _resize(state, world, rank, loader, audit, schedule, optimizer, generator, config)
            if rank == 0:  # the old ranks' loss totals join rank 0's, as their audits did
                train_totals = torch.stack(list(state["train_totals"])).sum(0).to(devices[0])
        epoch_step = batches_done(loader.deals) + loader.batches
        print(f"[rank {rank}] resumed at epoch {epoch + 1}, step {step}, batch {epoch_step}")
    else:
        loader.set_epoch(0)
    replica = torch.nn.parallel.DistributedDataParallel(model, device_ids=None) if world > 1 else model

    resume_record = None if resumed is None else {
        "kind": "resume", "epoch": epoch + 1, "step": step, "batch": epoch_step, "world_size": world,
        "from_world_size": state["world_size"], "skipped": skipped}
    logs = _Logs(run_dir, resume_record) if rank == 0 else None
    pause = _DebugPause(rank)
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
            set_step_lr(optimizer, schedule, config, epoch + epoch_step / batches_per_epoch)
            loss, logits = train_step(replica, optimizer, precision, augment(images, generator), labels)
            audit.mark(positions[loader.batches - 1])
            step += 1
            epoch_step += 1
            with torch.no_grad():
                count = torch.tensor(float(labels.numel()), dtype=torch.float64, device=devices[0])
                train_totals += torch.stack([loss.detach().double() * count,
                                             (logits.argmax(1) == labels).sum().double(), count])
            window_images += labels.numel() * world
            if step % config.log_every_steps == 0:
                now = time.perf_counter()
                # epochs are numbered from 1 in every record (the checkpoint's counter is epochs done)
                record = {"kind": "step", "epoch": epoch + 1, "step": step, "batch": epoch_step,
                          "batches": batches_per_epoch, "world_size": world, "loss": _mean_over_ranks(loss, world),
                          "lr": optimizer.param_groups[0]["lr"],
                          "images_per_s": window_images / max(now - window_start, 1e-9),
                          "data_wait": window_wait / max(now - window_start, 1e-9)}
                window_start, window_images, window_wait = now, 0, 0.0
                if logs:
                    logs.add(record)
                ray.train.report({k: v for k, v in record.items() if k != "kind"})
            pause.maybe(step)
            last_batch = epoch_step >= batches_per_epoch
            if config.checkpoint_every_steps and step % config.checkpoint_every_steps == 0 and not last_batch:
                _save(rank, world, logs, {"kind": "checkpoint", "epoch": epoch, "step": step}, model,
                      optimizer, schedule, loader, generator, train_totals, audit, config, manifest, stats,
                      history, epoch, step, epoch_step, pause, scaler=precision.state_dict())
            if last_batch:
                break
            waited_from = time.perf_counter()
        # --- end of epoch: validate (centre crop), step the schedule, checkpoint ---
        pause.maybe(step, "validate")
        val = errors_from_totals(_sum_over_ranks(
            eval_totals(model, EvalLoader(config.data, config.eval_batch_size, rank=rank, world_size=world,
                                          crop=config.crop, num_workers=config.loader_workers,
                                          pin_memory=config.gpus_per_worker > 0),
                        plain, devices[0]), world))
        train = _sum_over_ranks(train_totals.cpu(), world)
        samples = audit.summary(world)
        decision = schedule.step(val["top1_error"])
        for group in optimizer.param_groups:
            group["lr"] = schedule.lr
        record = {"kind": "epoch", "epoch": epoch + 1, "step": step, "lr": schedule.lr,
                  "train_loss": train[0].item() / max(train[2].item(), 1),
                  "train_top1_error": 1 - train[1].item() / max(train[2].item(), 1),
                  "val_loss": val["loss"], "val_top1_error": val["top1_error"],
                  "val_top5_error": val["top5_error"], **samples, "decision": decision,
                  "seconds": time.perf_counter() - started}
        history.append({k: v for k, v in record.items() if k != "kind"})
        digests = _replica_digests(model, world)
        finished_epoch = epoch
        epoch, epoch_step = epoch + 1, 0
        train_totals.zero_()
        audit.reset()
        if decision != "stop":
            loader.set_epoch(epoch)
        _save(rank, world, logs, record, model, optimizer, schedule, loader, generator, train_totals, audit,
              config, manifest, stats, history, epoch, step, epoch_step, pause, best=schedule.is_best(finished_epoch),
              scaler=precision.state_dict())
    if logs:
        logs.add({"kind": "end", "step": step, "epochs": epoch, "reason": "schedule" if epoch < config.epochs
                  else "max epochs", "replica_digests": digests})
        logs.close()


def _resize(state: dict, world: int, rank: int, loader: TrainLoader, audit: EpochAudit, schedule: PlateauSchedule,
            optimizer: torch.optim.Optimizer, generator: torch.Generator, config: TrainConfig) -> None:
    """Continue a checkpoint written by another number of replicas (an elastic run's resize)."""
    old = state["world_size"]
    loader.load_state_dict(state["loader"][0])  # mid-epoch: closes the old deal, deals the untrained rest
    if rank == 0 and "audit" in state:
        audit.close_ranks(list(state["audit"]))
    # seeded by (seed, step, rank): two runs resized at the same checkpoints draw the same numbers
    _seed_all(int(np.random.SeedSequence([config.seed, state["step"], rank]).generate_state(1)[0]), generator)
    schedule.lr = lr_after_resize(config, world, schedule)
    for group in optimizer.param_groups:
        group["lr"] = schedule.lr
    ranks = f"{world} rank{'s' if world != 1 else ''}"
    print(f"[rank {rank}] resized from {old} to {world} replicas at step {state['step']}: epoch "
          f"{state['epoch'] + 1} goes on with its untrained samples dealt to {ranks} "
          f"({len(loader)} batches each), lr {schedule.lr:g}")


def trust_coefficient(config: TrainConfig) -> float:
    """LARS's eta for the weights' group, 0 (the plain paper update) unless optimizer=lars."""
    return config.lars_coefficient if config.optimizer == "lars" else 0.0


def set_step_lr(optimizer: torch.optim.Optimizer, schedule: PlateauSchedule, config: TrainConfig,
                epochs_done: float) -> None:
    """The lr of the next step: the schedule's, times the warmup's ramp while it lasts. Computed from
    the run's counters (epoch, batch of the epoch), which the checkpoint holds: a resume mid-warmup
    continues the ramp exactly."""
    lr = schedule.lr * warmup_factor(epochs_done, config.warmup_epochs, config.warmup_start)
    for group in optimizer.param_groups:
        group["lr"] = lr


def lr_after_resize(config: TrainConfig, world: int, schedule: PlateauSchedule) -> float:
    """With `scale_lr` the lr follows the replica count, the schedule's reductions so far kept; else it
    stays where the schedule left it."""
    if not config.scale_lr:
        return schedule.lr
    return config.lr_for(world) * schedule.factor ** len(schedule.reductions)


def _save(rank, world, logs, record, model, optimizer, schedule, loader, generator, train_totals, audit, config,
          manifest, stats, history, epoch, step, epoch_step, pause: _DebugPause, best: bool = False,
          scaler: dict | None = None) -> None:
    """Gather every rank's position and RNG, rank 0 writes the file, everyone reports it to Ray Train."""
    mine = {"loader": loader.state_dict(), "rng": ckpt.capture_rng(generator), "totals": train_totals.cpu(),
            "audit": audit.state_dict(), "name": unused_checkpoint_name(logs.run_dir, step) if rank == 0 else None}
    everyone = [None] * world
    if world > 1:
        dist.all_gather_object(everyone, mine)
    else:
        everyone = [mine]
    metrics = {k: v for k, v in record.items() if k != "kind"}
    name = everyone[0]["name"]  # rank 0's choice, the same on every rank
    if rank != 0:
        pause.maybe(step, "save")
        ray.train.report(metrics, checkpoint=None, checkpoint_dir_name=name)
        return
    state = ckpt.build(model=ckpt.cpu_state_dict(model), optimizer=ckpt.optimizer_state_cpu(optimizer),
                       schedule=schedule.state_dict(), scaler=scaler or {}, epoch=epoch, step=step, epoch_step=epoch_step,
                       loader=[e["loader"] for e in everyone], rng=[e["rng"] for e in everyone],
                       train_totals=[e["totals"] for e in everyone], audit=[e["audit"] for e in everyone],
                       config=config.to_dict(),
                       history=list(history), finished=record.get("decision") == "stop",
                       num_classes=manifest["num_classes"],
                       classes=manifest["classes"], stats=stats, world_size=world)
    if record["kind"] == "epoch":
        logs.add(record)
    logs.flush()
    with ckpt.staging_folder() as folder:
        ckpt.write_local(state, folder)
        pause.maybe(step, "save")
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
    import logging

    from ray.train.v2._internal.execution import context as ray_train_context

    logging.getLogger(ray_train_context.__file__).setLevel(logging.WARNING)


def _devices(config: TrainConfig) -> tuple[torch.device, torch.device]:
    if config.gpus_per_worker == 0:
        return torch.device("cpu"), torch.device("cpu")
    from ray.train.torch import get_devices

    found = get_devices()
    torch.cuda.set_device(found[0])
    return (found[0], found[1]) if len(found) >= 2 else (found[0], found[0])


def _seed_all(seed: int, generator: torch.Generator | None = None) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if generator is not None:
        generator.manual_seed(seed)


def _sum_over_ranks(totals: torch.Tensor, world: int) -> torch.Tensor:
    if world > 1:
        totals = totals.clone()
        dist.all_reduce(totals)  # float64 sums on the CPU (gloo); exact for counts
    return totals


def _mean_over_ranks(loss: torch.Tensor, world: int) -> float:
    value = loss.detach().float().cpu().reshape(1)
    return (_sum_over_ranks(value, world) / world).item() if world > 1 else value.item()


def _replica_digests(model: torch.nn.Module, world: int) -> list[str]:
    """sha256 of each replica's weights; DDP must keep them identical, so a difference is an error."""
    mine = ckpt.weights_digest(model.state_dict())
    everyone = [None] * world
    if world > 1:
        dist.all_gather_object(everyone, mine)
    else:
        everyone = [mine]
    if len(set(everyone)) != 1:
        raise RuntimeError(f"model replicas diverged: weight digests {everyone}")
    return everyone


class _DebugPause:
    """For failure tests: rank ALEXNET_DEBUG_PAUSE_RANK (0) writes its pid to ALEXNET_DEBUG_PID_FILE and
    waits to be killed, once per file, at each point of ALEXNET_DEBUG_PAUSE_STEP: `STEP` (after that
    step), `STEP:save` (in the save at STEP, its file written and not yet reported to Ray Train; at an
    epoch's end that is after validation, the epoch's record in metrics.jsonl) or `STEP:validate`
    (as the epoch ending at STEP starts its validation). Several points (comma-separated) pause at
    PID_FILE.POINT each."""

    PHASES = ("step", "save", "validate")

    def __init__(self, rank: int):
        points = [p.strip() for p in os.environ.get("ALEXNET_DEBUG_PAUSE_STEP", "").split(",") if p.strip()]
        path = os.environ.get("ALEXNET_DEBUG_PID_FILE", "")
        self.files = {}
        for point in points:
            step, _, phase = point.partition(":")
            if phase not in ("", *self.PHASES):
                raise ValueError(f"ALEXNET_DEBUG_PAUSE_STEP: {point!r} is not STEP[:{'|'.join(self.PHASES)}]")
            self.files[(int(step), phase or "step")] = path if len(points) == 1 else f"{path}.{point}"
        self.active = bool(path) and rank == int(os.environ.get("ALEXNET_DEBUG_PAUSE_RANK", "0"))

    def maybe(self, step: int, phase: str = "step") -> None:
        path = self.files.get((step, phase)) if self.active else None
        if path is None or os.path.exists(path):
            return
        with open(path + ".tmp", "w") as f:
            f.write(str(os.getpid()))
        os.replace(path + ".tmp", path)
        time.sleep(float(os.environ.get("ALEXNET_DEBUG_PAUSE_SECONDS", "120")))
