"""The run's whole state as one object: what a checkpoint holds, how a resume restores it, how a resize
continues it on another number of replicas.

Every piece of state that must survive a restart is registered once, in `RunState.__init__`, under the
checkpoint key it is saved as:

    self.track("schedule", self.schedule)                      # one value for the run (rank 0's)
    self.track_per_rank("rng", save, load, resize)             # one value per rank, gathered at a save

An object registered there needs `state_dict()` / `load_state_dict(state)` (`track_attribute` serves a
plain attribute such as a counter). `checkpoint()` writes exactly the registered parts and the records
in RECORDS; `restore()` reads exactly those, and refuses, naming the key, a checkpoint that holds a key
nothing restores or lacks a registered part: a forgotten piece of state fails at the first resume
instead of making it silently inexact. A part that checkpoints of this format may lack (written before
it existed) says so with `optional=True` and keeps its fresh state then.

Shared parts are identical on every rank (DDP keeps the replicas equal), so rank 0's copy is saved.
Per-rank parts (loader position, RNG states, loss totals, sample audit) are gathered from every rank.
A checkpoint written by another number of ranks hands each per-rank part the old ranks' values through
its `resize` function (trainer/loop.py's module docstring says what an elastic resize keeps).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pipeline.errors import UserError
from pipeline.loader.deals import batches_done
from pipeline.loader.loaders import TrainLoader
from pipeline.shard.manifest import read_manifest
from pipeline.shard.stats import read_stats
from trainer.audit import EpochAudit
from trainer.checkpoint import format as ckpt
from trainer.config import TrainConfig
from trainer.model import AlexNet
from trainer.optim import PaperSGD, param_groups
from trainer.precision import Precision, compile_model
from trainer.ranks import gather
from trainer.rng import capture_rng, restore_rng, seed_all
from trainer.schedule import PlateauSchedule, lr_after_resize, trust_coefficient

# Written into every checkpoint for its readers (evaluation, reports, the resume decision) and not
# restored: the config comes from the command line, the data's facts from the data, the position in
# the epoch from the loader.
RECORDS = ("format", "config", "finished", "num_classes", "classes", "stats", "world_size", "epoch_step")


@dataclass
class Part:
    """One piece of the run's state, saved under `name`."""

    name: str
    save: Callable[[], Any]
    load: Callable[[Any], None]
    per_rank: bool = False
    resize: Callable[[list], None] | None = None  # per-rank: continue the old ranks' values, in rank order
    optional: bool = False  # older checkpoints of this format may lack it: the fresh state stays


class CheckpointMismatch(UserError):
    """A checkpoint whose keys are not what this run state saves (no retry can cure it)."""


class RunState:
    """Model, optimiser, schedule, loader, RNGs, loss totals, sample audit, counters and history of one
    rank, built identically on every rank (same seed) from the config."""

    def __init__(self, config: TrainConfig, rank: int, world: int, devices: tuple[torch.device, torch.device]):
        self.config, self.rank, self.world, self.device = config, rank, world, devices[0]
        self.manifest, self.stats = read_manifest(config.data, "train"), read_stats(config.data)
        seed_all(config.seed)
        self.model = AlexNet(self.manifest["num_classes"], config.variant, devices, width=config.width,
                             dropout=config.dropout, positive_bias=config.positive_bias, init=config.init)
        if config.compile:
            compile_model(self.model)  # in place: the state_dict keys stay the eager model's
        self.precision = Precision(config.precision, self.device)  # autocast, and fp16's gradient scaler
        self.optimizer = PaperSGD(param_groups(self.model, config.weight_decay, config.decay_biases,
                                               trust_coefficient(config)),
                                  lr=config.lr_for(world), momentum=config.momentum,
                                  weight_decay=config.weight_decay)
        self.schedule = PlateauSchedule(config.lr_for(world), factor=config.lr_factor, patience=config.patience,
                                        threshold=config.threshold, max_reductions=config.max_reductions,
                                        max_epochs=config.epochs, warmup_epochs=config.warmup_epochs)
        self.loader = TrainLoader(config.data, config.batch_size, rank=rank, world_size=world, seed=config.seed,
                                  epoch=0, num_workers=config.loader_workers, crop=config.crop,
                                  pin_memory=config.gpus_per_worker > 0)
        self.generator = torch.Generator(device=self.device)
        seed_all(config.seed * 1000 + rank + 1, self.generator)  # dropout and colour noise differ per rank
        self.audit = EpochAudit(self.loader.total_samples)
        # loss sum, top-1 correct, count on this rank; on the device so a step never waits for a .item()
        self.train_totals = torch.zeros(3, dtype=torch.float64, device=self.device)
        self.epoch = 0  # epochs done (records number epochs from 1: the one in progress is epoch + 1)
        self.step = 0  # optimiser steps done, over the whole run
        self.epoch_step = 0  # batches of the epoch in progress trained, over all its deals
        self.history: list[dict] = []  # one dict of metrics per finished epoch

        # --- what a checkpoint holds: one line per piece of state ---
        self.parts: dict[str, Part] = {}
        self.track("model", self.model, save=lambda: ckpt.cpu_state_dict(self.model))
        self.track("optimizer", self.optimizer, save=lambda: ckpt.optimizer_state_cpu(self.optimizer))
        self.track("schedule", self.schedule)
        self.track("scaler", self.precision, optional=True)  # {} unless fp16; absent before it existed
        self.track_attribute("epoch")
        self.track_attribute("step")
        self.track_attribute("history", copy=list)
        self.track_per_rank("loader", self.loader.state_dict, self.loader.load_state_dict, self._resize_loader)
        self.track_per_rank("rng", lambda: capture_rng(self.generator),
                            lambda state: restore_rng(state, self.generator), self._reseed)
        self.track_per_rank("train_totals", lambda: self.train_totals.cpu(), self._load_totals, self._join_totals)
        self.track_per_rank("audit", self.audit.state_dict, self.audit.load_state_dict, self._close_audits,
                            optional=True)

    # --- registration ---
    def track(self, name: str, component: Any, save: Callable[[], Any] | None = None,
              optional: bool = False) -> None:
        """A component with state_dict() / load_state_dict(), the same on every rank: rank 0's is saved."""
        self._add(Part(name, save or component.state_dict, component.load_state_dict, optional=optional))

    def track_attribute(self, name: str, copy: Callable[[Any], Any] = lambda value: value,
                        optional: bool = False) -> None:
        """A plain attribute of this object (a counter, a list), saved under its own name."""
        self._add(Part(name, lambda: copy(getattr(self, name)), lambda value: setattr(self, name, copy(value)),
                       optional=optional))

    def track_per_rank(self, name: str, save: Callable[[], Any], load: Callable[[Any], None],
                       resize: Callable[[list], None], optional: bool = False) -> None:
        """A part every rank has its own value of, gathered at a save; `resize` continues the old ranks'
        values (in rank order) when the checkpoint was written by another number of ranks."""
        self._add(Part(name, save, load, per_rank=True, resize=resize, optional=optional))

    def _add(self, part: Part) -> None:
        if part.name in self.parts or part.name in RECORDS:
            raise ValueError(f"checkpoint key {part.name!r} is taken (registered twice, or one of RECORDS)")
        self.parts[part.name] = part

    # --- save ---
    def checkpoint(self, finished: bool, share: Any = None) -> tuple[dict | None, Any]:
        """A collective (every rank calls it): gathers the per-rank parts, and returns the whole
        checkpoint on rank 0 (None elsewhere) and rank 0's `share` on every rank."""
        mine = {name: part.save() for name, part in self.parts.items() if part.per_rank}
        everyone = gather((mine, share), self.world)
        if self.rank != 0:
            return None, everyone[0][1]
        parts = {name: [theirs[name] for theirs, _ in everyone] if part.per_rank else part.save()
                 for name, part in self.parts.items()}
        records = {"config": self.config.to_dict(), "finished": finished, "num_classes": self.manifest["num_classes"],
                   "classes": self.manifest["classes"], "stats": self.stats, "world_size": self.world,
                   "epoch_step": self.epoch_step}
        return ckpt.build(**parts, **records), everyone[0][1]

    # --- restore ---
    def check(self, checkpoint: dict, source: str) -> None:
        """Refuse a checkpoint whose keys this state does not restore exactly, naming them."""
        unknown = sorted(set(checkpoint) - set(self.parts) - set(RECORDS))
        missing = sorted(name for name, part in self.parts.items() if not part.optional and name not in checkpoint)
        problems = ([f"holds {', '.join(unknown)}, which this version does not restore"] if unknown else []) + \
                   ([f"lacks {', '.join(missing)}"] if missing else [])
        if problems:
            raise CheckpointMismatch(f"{source}: {'; '.join(problems)} (a resume would not be exact)")

    def restore(self, checkpoint: dict, source: str) -> None:
        """Continue from a checkpoint: shared parts first (a resize reseeds from the restored step), then
        each rank's own (or, written by another number of ranks, the old ranks' values through each
        part's resize)."""
        self.check(checkpoint, source)
        old_world = checkpoint["world_size"]
        for part in sorted(self.parts.values(), key=lambda part: part.per_rank):  # stable: registration order
            name = part.name
            if name not in checkpoint:
                continue
            if not part.per_rank:
                part.load(checkpoint[name])
            elif old_world == self.world:
                part.load(checkpoint[name][self.rank])
            else:
                part.resize(list(checkpoint[name]))
        if old_world != self.world:
            self.schedule.lr = lr_after_resize(self.config, self.world, self.schedule)
            self.set_lr(self.schedule.lr)
            ranks = f"{self.world} rank{'s' if self.world != 1 else ''}"
            print(f"[rank {self.rank}] resized from {old_world} to {self.world} replicas at step {self.step}: "
                  f"epoch {self.epoch + 1} goes on with its untrained samples dealt to {ranks} "
                  f"({len(self.loader)} batches each), lr {self.schedule.lr:g}")
        self.epoch_step = batches_done(self.loader.deals) + self.loader.batches

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def epochs_done(self, batches_per_epoch: int) -> float:
        """Epochs trained so far, the one in progress counted by its batches: what the warmup ramps by."""
        return self.epoch + self.epoch_step / batches_per_epoch

    def _load_totals(self, totals: torch.Tensor) -> None:
        self.train_totals = totals.to(self.device)

    # --- an elastic resize: each per-rank part given the old ranks' values ---
    def _resize_loader(self, old: list[dict]) -> None:
        self.loader.load_state_dict(old[0])  # mid-epoch: closes the old deal, deals the untrained rest

    def _close_audits(self, old: list[dict]) -> None:
        if self.rank == 0:  # the old ranks' audits join this epoch's count on rank 0
            self.audit.close_ranks(old)

    def _reseed(self, old: list[dict]) -> None:
        # seeded by (seed, step, rank): two runs resized at the same checkpoints draw the same numbers
        seed = np.random.SeedSequence([self.config.seed, self.step, self.rank]).generate_state(1)[0]
        seed_all(int(seed), self.generator)

    def _join_totals(self, old: list[torch.Tensor]) -> None:
        if self.rank == 0:  # the old ranks' loss totals join rank 0's, as their audits did
            self.train_totals = torch.stack(old).sum(0).to(self.device)
