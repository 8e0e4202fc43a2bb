"""What code outside the training may do at three points of each rank's loop, handed to the loop as one
object (`train_worker(params, hooks=...)`); the loop itself holds no test machinery.

    after_step(run)           after an optimiser step (the run's counters already count it)
    before_validation(run)    as the epoch ending at `run.step` starts its validation
    checkpoint_written(run)   in a save: rank 0's file written, not yet reported to Ray Train (at an
                              epoch's end that is after validation, the epoch's record in metrics.jsonl)

`Hooks` does nothing at any of them; `FailurePause` is the failure tests' (tests/integration/), built
by `alexnet train`'s driver from the environment it was started with.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from trainer.state import RunState


class Hooks:
    """Nothing happens at any point: what a run gets unless it is handed other hooks."""

    def after_step(self, run: RunState) -> None:
        pass

    def before_validation(self, run: RunState) -> None:
        pass

    def checkpoint_written(self, run: RunState) -> None:
        pass


class FailurePause(Hooks):
    """For failure tests: rank ALEXNET_DEBUG_PAUSE_RANK (0) writes its pid to ALEXNET_DEBUG_PID_FILE and
    waits to be killed, once per file, at each point of ALEXNET_DEBUG_PAUSE_STEP: `STEP` (after that
    step), `STEP:save` (checkpoint_written at STEP) or `STEP:validate` (before_validation at STEP).
    Several points (comma-separated) pause at PID_FILE.POINT each; ALEXNET_DEBUG_PAUSE_SECONDS (120)
    is how long a rank waits."""

    PHASES = ("step", "save", "validate")

    def __init__(self, files: dict[tuple[int, str], str], rank: int = 0, seconds: float = 120.0):
        self.files, self.rank, self.seconds = files, rank, seconds

    @classmethod
    def from_environment(cls, environ: dict | None = None) -> FailurePause | None:
        """The pause the environment asks for (ALEXNET_DEBUG_*), or None when it asks for none."""
        environ = os.environ if environ is None else environ
        points = [p.strip() for p in environ.get("ALEXNET_DEBUG_PAUSE_STEP", "").split(",") if p.strip()]
        path = environ.get("ALEXNET_DEBUG_PID_FILE", "")
        files = {}
        for point in points:
            step, _, phase = point.partition(":")
            if phase not in ("", *cls.PHASES):
                raise ValueError(f"ALEXNET_DEBUG_PAUSE_STEP: {point!r} is not STEP[:{'|'.join(cls.PHASES)}]")
            files[(int(step), phase or "step")] = path if len(points) == 1 else f"{path}.{point}"
        if not path or not files:
            return None
        return cls(files, int(environ.get("ALEXNET_DEBUG_PAUSE_RANK", "0")),
                   float(environ.get("ALEXNET_DEBUG_PAUSE_SECONDS", "120")))

    def after_step(self, run: RunState) -> None:
        self._pause(run, "step")

    def before_validation(self, run: RunState) -> None:
        self._pause(run, "validate")

    def checkpoint_written(self, run: RunState) -> None:
        self._pause(run, "save")

    def _pause(self, run: RunState, phase: str) -> None:
        path = self.files.get((run.step, phase)) if run.rank == self.rank else None
        if path is None or os.path.exists(path):
            return
        with open(path + ".tmp", "w") as f:
            f.write(str(os.getpid()))
        os.replace(path + ".tmp", path)
        time.sleep(self.seconds)
