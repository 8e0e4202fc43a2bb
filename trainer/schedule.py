"""The paper's learning-rate schedule: divide by 10 when validation error stops improving.

Krizhevsky et al. (2012): "divide the learning rate by 10 when the validation error rate stopped
improving with the current learning rate ... reduced three times prior to termination". Here, after
every epoch the centre-crop validation top-1 error is compared with the best so far; an epoch counts
as an improvement when the error drops by more than `threshold` (absolute, 0-1 scale). After
`patience` epochs without one, the lr is multiplied by `factor` and the count restarts (the best error
is kept). Once `max_reductions` reductions have happened, the next plateau ends training instead; the
run also ends at `max_epochs`.

Large global batches (Goyal et al. 2017, "Accurate, Large Minibatch SGD"): `warmup_factor` ramps the
lr linearly from `start` x the target to the target over the first `warmup_epochs` epochs, measured in
steps (a fraction of an epoch counts), and the plateau count starts once the warmup is over: an epoch
that ends within the warmup never counts as one without improvement. The target is the schedule's lr,
so with `scale_lr` it follows the replica count, after an elastic resize too.

Every lr rule of a run lives here: the plateau schedule, the warmup ramp, the lr of each step
(`set_step_lr`), the lr after an elastic resize (`lr_after_resize`) and LARS's trust coefficient
(`trust_coefficient`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import torch

    from trainer.config import TrainConfig

Decision = Literal["continue", "reduce", "stop"]


class PlateauSchedule:
    def __init__(self, lr: float, *, factor: float = 0.1, patience: int = 3, threshold: float = 1e-3,
                 max_reductions: int = 3, max_epochs: int = 90, warmup_epochs: float = 0.0):
        self.lr = lr
        self.factor = factor
        self.patience = patience
        self.threshold = threshold
        self.max_reductions = max_reductions
        self.max_epochs = max_epochs
        self.warmup_epochs = warmup_epochs
        self.best_error = math.inf
        self.best_epoch = -1
        self.bad_epochs = 0
        self.reductions: list[int] = []  # epochs after which the lr was reduced
        self.epochs_seen = 0

    def step(self, val_error: float) -> Decision:
        """Feed one epoch's validation error; returns what to do before the next epoch."""
        epoch = self.epochs_seen
        self.epochs_seen += 1
        if val_error < self.best_error - self.threshold:
            self.best_error, self.best_epoch, self.bad_epochs = val_error, epoch, 0
        elif self.epochs_seen > self.warmup_epochs:  # a plateau counts once the warmup is over
            self.bad_epochs += 1
        decision: Decision = "continue"
        if self.epochs_seen >= self.max_epochs:
            decision = "stop"
        elif self.bad_epochs >= self.patience:
            if len(self.reductions) >= self.max_reductions:
                decision = "stop"
            else:
                self.lr *= self.factor
                self.reductions.append(epoch)
                self.bad_epochs = 0
                decision = "reduce"
        return decision

    def is_best(self, epoch: int) -> bool:
        return self.best_epoch == epoch

    def state_dict(self) -> dict:
        best = None if math.isinf(self.best_error) else self.best_error  # JSON and weights_only safe
        return {"lr": self.lr, "best_error": best, "best_epoch": self.best_epoch,
                "bad_epochs": self.bad_epochs, "reductions": list(self.reductions),
                "epochs_seen": self.epochs_seen}

    def load_state_dict(self, state: dict) -> None:
        self.lr = state["lr"]
        self.best_error = math.inf if state["best_error"] is None else state["best_error"]
        self.best_epoch = state["best_epoch"]
        self.bad_epochs = state["bad_epochs"]
        self.reductions = list(state["reductions"])
        self.epochs_seen = state["epochs_seen"]


def warmup_factor(epochs_done: float, warmup_epochs: float, start: float) -> float:
    """The lr multiplier after `epochs_done` epochs (steps done / steps per epoch, so fractional):
    `start` at 0, rising linearly to 1 at `warmup_epochs`, then 1."""
    if epochs_done >= warmup_epochs:
        return 1.0
    return start + (1.0 - start) * epochs_done / warmup_epochs


def trust_coefficient(config: TrainConfig) -> float:
    """LARS's eta for the weights' group, 0 (the plain paper update) unless optimizer=lars."""
    return config.lars_coefficient if config.optimizer == "lars" else 0.0


def set_step_lr(optimizer: torch.optim.Optimizer, schedule: PlateauSchedule, config: TrainConfig,
                epochs_done: float) -> None:
    """The lr of the next step: the schedule's, times the warmup's ramp while it lasts. Computed from
    the run's counters (epoch, batch of the epoch), which the checkpoint holds: a resume mid-warmup
    continues the ramp exactly, and after a resize the ramp's target is the new replica count's lr."""
    lr = schedule.lr * warmup_factor(epochs_done, config.warmup_epochs, config.warmup_start)
    for group in optimizer.param_groups:
        group["lr"] = lr


def lr_after_resize(config: TrainConfig, world: int, schedule: PlateauSchedule) -> float:
    """With `scale_lr` the lr follows the replica count, the schedule's reductions so far kept; else it
    stays where the schedule left it."""
    if not config.scale_lr:
        return schedule.lr
    return config.lr_for(world) * schedule.factor ** len(schedule.reductions)
