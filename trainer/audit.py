"""Which samples an epoch trained, and how often: the audit written into every epoch record.

Each rank keeps one bit per sample of the epoch (the samples it trained since the epoch began) and the
positions it trained while their bit was already set (normally none). The bits go into every
checkpoint, so a restart keeps them; a resize hands the old ranks' bits to the new rank 0 as closed
entries. At the end of the epoch every rank turns its bits into per-sample counts, the counts are
summed over ranks, and the epoch record says how many samples were trained at least once and how
many more than once. The bits come from the batch numbers each rank trained and the plan that deals
them (TrainLoader.batch_positions), so a restart that retrains a batch, or a deal that hands a sample
to two ranks, shows up as a repeat; a loader that yields other samples than planned is the loader
tests' business.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist


class EpochAudit:
    def __init__(self, samples: int):
        self.samples = samples
        self.seen = np.zeros(samples, dtype=bool)
        self.again = np.zeros(0, dtype=np.int64)  # positions this rank trained again (one entry per repeat)
        self.closed: list[dict] = []  # states of ranks of earlier deals in this epoch (kept by rank 0)

    def mark(self, positions: np.ndarray) -> None:
        """The samples at these epoch positions were just trained by this rank."""
        positions = np.asarray(positions, dtype=np.int64)
        unique, counts = np.unique(positions, return_counts=True)
        repeats = np.concatenate([unique[self.seen[unique]], np.repeat(unique, counts - 1)])
        if len(repeats):
            self.again = np.concatenate([self.again, repeats])
        self.seen[unique] = True

    def reset(self) -> None:
        self.seen[:] = False
        self.again = self.again[:0]
        self.closed = []

    def state_dict(self) -> dict:
        """weights_only-safe: ~samples/8 bytes."""
        return {"samples": self.samples, "bits": torch.from_numpy(np.packbits(self.seen)),
                "again": torch.from_numpy(self.again.copy()), "closed": list(self.closed)}

    def load_state_dict(self, state: dict) -> None:
        self._check(state)
        self.seen = np.unpackbits(state["bits"].numpy(), count=self.samples).astype(bool)
        self.again = state["again"].numpy().astype(np.int64)
        self.closed = list(state["closed"])

    def close_ranks(self, states: list[dict]) -> None:
        """After a resize (on the new rank 0): the old ranks' audits, closed, join this epoch's count."""
        for state in states:
            self._check(state)
            self.closed += state["closed"] + [{**state, "closed": []}]

    def summary(self, world: int) -> dict:
        """Summed over ranks (a collective: every rank calls it): samples trained once or more, more
        than once, and not at all this epoch."""
        counts = self.seen.astype(np.int32) + np.bincount(self.again, minlength=self.samples).astype(np.int32)
        for state in self.closed:
            counts += np.unpackbits(state["bits"].numpy(), count=self.samples)
            counts += np.bincount(state["again"].numpy(), minlength=self.samples).astype(np.int32)
        total = torch.from_numpy(counts)
        if world > 1:
            dist.all_reduce(total)
        trained = int((total > 0).sum())
        return {"samples_trained": trained, "samples_repeated": int((total > 1).sum()),
                "samples_left_out": self.samples - trained}

    def _check(self, state: dict) -> None:
        if int(state["samples"]) != self.samples:
            raise ValueError(f"an audit of {state['samples']} samples does not fit an epoch of {self.samples}")
