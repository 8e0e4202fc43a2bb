"""How a batch gets from a loader worker process to the caller: reused shared-memory slots, lent out.

torch's DataLoader sends every tensor a worker yields through a fresh shared-memory segment, and the
kernel maps and zero-fills each new page on first touch (a 224x224 crop is ~37 pages; its cost is in
docs/benchmarks.md, loaders). So each worker writes its
batches into a few slots mapped once per loader and yields only the slot number.

The caller gets the slot itself (no copy): the batch tensor is a view of the slot, and the slot goes
back to its worker when the last tensor sharing that memory is freed (a finalizer on the numpy array
under the tensor's storage). A caller that keeps batches (`list(loader)`) keeps their slots; when a
worker finds none free it sends that batch the DataLoader's way instead (a fresh segment), so holding
batches costs speed, never a hang. With `pin_memory` the batch is copied into page-locked memory at
once (a CUDA copy needs it) and the slot is freed there and then.

Flow control: a worker has at most `prefetch_factor` batches requested at a time; the caller's loop
holds about two more (the batch it works on and, briefly, the one just received), hence
prefetch_factor + 2 slots per worker. Per worker, a shared flag per slot says which are taken and a
semaphore counts the free ones (its release and acquire also order the memory accesses between the
processes).
"""

from __future__ import annotations

import multiprocessing
import threading
import weakref

import numpy as np
import torch

from pipeline.loader.layout import BatchLayout


class BatchPool:
    """`slots` batch buffers per worker in shared memory (each one batch in `layout`), reused every pass."""

    def __init__(self, workers: int, slots: int, layout: BatchLayout):
        self.shape, self.layout = (workers, slots), layout
        self.buffers = torch.empty((workers, slots, layout.nbytes), dtype=torch.uint8).share_memory_()
        self.taken = torch.zeros((workers, slots), dtype=torch.uint8).share_memory_()
        self.free: list = []
        self.lent: set[tuple[int, int]] = set()  # (worker, slot) the caller holds
        self._lock = threading.Lock()  # main process: a batch may be freed on another thread

    def __getstate__(self) -> dict:  # pickled into spawned workers, which never free slots
        return {key: value for key, value in self.__dict__.items() if key != "_lock"}

    def open_pass(self, context: str | None) -> None:
        """Fresh semaphores for a pass whose workers start after this (from `context`'s start method);
        slots the caller still holds from an earlier pass stay taken."""
        mp = multiprocessing.get_context(context)
        with self._lock:
            self.free = [mp.Semaphore(self.shape[1] - int(row.sum())) for row in self.taken]

    def end_pass(self) -> None:
        """After the pass's workers are gone: slots taken for batches the caller never received (the
        pass was left early) are free again."""
        with self._lock:
            self.taken.zero_()
            for worker, slot in self.lent:
                self.taken[worker, slot] = 1

    # --- in a worker ---
    def slot_for(self, worker: int) -> tuple[int, torch.Tensor] | None:
        """A free slot of this worker, now taken: (slot, its flat buffer); None if all are held (the
        caller keeps batches), never waiting."""
        if not self.free[worker].acquire(block=False):
            return None
        taken = self.taken[worker].numpy()
        slot = int(np.flatnonzero(taken == 0)[0])
        taken[slot] = 1
        return slot, self.buffers[worker, slot]

    # --- in the main process ---
    def take(self, worker: int, slot: int, size: int, pin_memory: bool) -> torch.Tensor:
        """The first `size` samples of a slot as the caller's batch: the slot itself, freed when the
        batch's memory is (or a page-locked copy with `pin_memory`, the slot freed at once)."""
        batch = self.layout.view(self.buffers[worker, slot], size)
        if pin_memory:
            batch = pinned_copy(batch)
            self._release(worker, slot)
            return batch
        view = batch.numpy()  # a new array object, owned by the batch alone
        with self._lock:
            self.lent.add((worker, slot))
        weakref.finalize(view, self._release, worker, slot).atexit = False
        return torch.from_numpy(view)

    def _release(self, worker: int, slot: int) -> None:
        with self._lock:
            self.lent.discard((worker, slot))
            self.taken[worker, slot] = 0
            self.free[worker].release()


def pinned_copy(batch: torch.Tensor) -> torch.Tensor:
    """A dense copy in page-locked memory: the GPU transfer then needs no other copy."""
    return torch.empty(batch.shape, dtype=batch.dtype, pin_memory=True).copy_(batch)
