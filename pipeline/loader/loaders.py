"""Streaming loaders over the shards `alexnet shard` wrote: exact epochs, equal batch counts, exact resume.

    loader = TrainLoader("s3://bucket/imagenet", 128, rank=rank, world_size=world, num_workers=6)
    transform = BatchTransform(read_stats("s3://bucket/imagenet"))
    for epoch in range(start_epoch, epochs):
        loader.set_epoch(epoch)
        for images, labels in loader:  # uint8 [B, 3, 224, 224] (NHWC memory), int64 [B]
            x = transform(images.to(device, non_blocking=True))

How samples are dealt to ranks and workers, and why that gives exactly-once epochs with the same
number of batches on every rank: pipeline/loader/plan.py. What a worker does: pipeline/loader/stream.py.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Generator, Iterator
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader

from pipeline import storage
from pipeline.errors import UserError
from pipeline.loader.index import SampleIndex
from pipeline.loader.deals import Deal, close, from_state, to_state
from pipeline.loader.plan import EpochShare, batch_sizes, deal_size, rank_batch_positions, rank_span
from pipeline.loader.layout import BatchLayout
from pipeline.loader.pool import BatchPool, pinned_copy
from pipeline.loader.stream import EpochSpec, EpochStream, batch_layout
from pipeline.loader.tar_reader import ShardReadError
from pipeline.shard.manifest import read_manifest

__all__ = ["TrainLoader", "EvalLoader", "LoaderOptions", "ShardReadError"]


@dataclass(frozen=True, kw_only=True)
class LoaderOptions:
    """How a loader reads a split: which rank's share, in which order, with how many worker processes.
    Either loader takes these as keywords (`TrainLoader(data, 128, rank=1, num_workers=6)`) or as one
    object (`TrainLoader(data, 128, options)`); EvalLoader takes the ones an evaluation has."""

    rank: int = 0
    world_size: int = 1
    seed: int = 0
    epoch: int = 0
    num_workers: int = 2
    crop: int = 224
    split: str = "train"
    shuffle_window: int = 1000
    skip_bad_samples: bool = False
    pin_memory: bool = False
    prefetch_factor: int = 2
    multiprocessing_context: str | None = None
    verify_checksums: bool = True


def _options(loader: str, options: LoaderOptions | None, settings: dict, base: LoaderOptions,
             allowed: frozenset[str]) -> LoaderOptions:
    """`options` (or `base`) with the keyword `settings` on top; a keyword the loader does not take is
    the TypeError a misspelt argument always was."""
    for name in settings:
        if name not in allowed:
            raise TypeError(f"{loader}() got an unexpected keyword argument {name!r}")
    return dataclasses.replace(options or base, **settings)


class _ShardLoader:
    """The machinery both loaders share: one DataLoader per pass, batches put back in rank order."""

    _mode = "train"

    def __init__(self, dataset: str, batch_size: int, options: LoaderOptions):
        rank, world_size, seed, epoch = options.rank, options.world_size, options.seed, options.epoch
        num_workers, crop, split = options.num_workers, options.crop, options.split
        shuffle_window = options.shuffle_window
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise UserError(f"need batch_size >= 1 and 0 <= rank < world_size; got batch_size={batch_size}, "
                            f"rank={rank}, world_size={world_size}")
        if num_workers < 0 or seed < 0 or epoch < 0 or shuffle_window < 0:
            raise UserError("num_workers, seed, epoch and shuffle_window must not be negative")
        self.dataset, self.split = str(dataset), split
        self.manifest = read_manifest(self.dataset, split)
        self.image_size = int(self.manifest.get("image_size", 256))
        if not 1 <= crop <= self.image_size:
            raise UserError(f"crop {crop} does not fit the dataset's {self.image_size}-pixel images")
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.seed, self.epoch, self.crop = seed, epoch, crop
        self.num_workers, self.shuffle_window = num_workers, shuffle_window
        self.skip_bad_samples, self.pin_memory = options.skip_bad_samples, options.pin_memory
        self.prefetch_factor, self.multiprocessing_context = options.prefetch_factor, options.multiprocessing_context
        self.shards = tuple((s["name"], int(s["samples"])) for s in self.manifest["shards"])
        self.total_samples = sum(n for _, n in self.shards)
        self.index = SampleIndex.read(self.dataset, split, self.shards, int(self.manifest["num_classes"]),
                                      options.verify_checksums)
        self.batches = 0  # batches of the current epoch's current deal handed to the caller
        self.deals: tuple[Deal, ...] = ()  # the epoch's closed deals (pipeline/loader/deals.py)
        self._deal_size: tuple[tuple, int] | None = None  # ((epoch, deals), positions the current deal shares)
        self.replaced_samples = 0  # unreadable samples stood in for (skip_bad_samples=True), all epochs
        self._resume_at = 0
        self._pool: BatchPool | None = None  # workers' batch slots, mapped once, reused by every pass
        # batches a worker sent through a fresh shared-memory segment because the caller held all its slots
        self.fallback_batches = 0
        self._running = False  # a pass is under way (its workers write into the pool)

    def _rank_samples(self) -> int:
        key = (self.seed, self.epoch, self.deals)
        if self._deal_size is None or self._deal_size[0] != key:
            self._deal_size = key, deal_size(self.total_samples, self.deals, seed=self.seed, epoch=self.epoch,
                                             window=self.shuffle_window)
        start, stop = rank_span(self._deal_size[1], self.batch_size, self.rank, self.world_size,
                                drop_last=self._mode == "train")
        return stop - start

    def __len__(self) -> int:
        return len(batch_sizes(self._rank_samples(), self.batch_size, drop_last=self._mode == "train"))

    def _share(self) -> EpochShare:
        """This rank's share of the epoch in progress (pipeline/loader/plan.py)."""
        return EpochShare(seed=self.seed, epoch=self.epoch, rank=self.rank, world_size=self.world_size,
                          batch_size=self.batch_size, num_workers=max(self.num_workers, 1),
                          window=self.shuffle_window, deals=self.deals)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self._running:
            raise UserError("this loader is already in a pass: one iterator at a time (finish the other pass, "
                            "or break out of its loop, first)")
        start, self._resume_at = self._resume_at, 0
        self.batches = start
        if start >= len(self):
            return
        self._check_shards_present()
        spec = EpochSpec(dataset=self.dataset, shards=self.shards, num_classes=int(self.manifest["num_classes"]),
                         mode=self._mode, crop=self.crop, image_size=self.image_size,
                         share=self._share(), resume_batches=start, skip_bad=self.skip_bad_samples, index=self.index)
        pool = self._open_pool(batch_layout(spec))
        # A private generator: starting a pass then never draws from the global torch RNG (which dropout
        # uses), so a run resumed mid-epoch sees the same dropout masks as the uninterrupted one.
        workers = DataLoader(EpochStream(spec, pool), batch_size=None, num_workers=self.num_workers,
                             prefetch_factor=self.prefetch_factor if self.num_workers else None,
                             multiprocessing_context=self.multiprocessing_context if self.num_workers else None,
                             generator=torch.Generator(), collate_fn=_as_sent)
        items = iter(workers)
        self._running = True
        try:
            replaced = yield from self._in_order(items, pool)
        finally:
            self._running = False
            if pool is not None:  # join the workers now, not when the iterator is collected: the slots
                join_workers(items)  # they took for batches never received are then free again
                pool.end_pass()
        if self.batches != len(self):
            raise RuntimeError(f"loader yielded {self.batches} of {len(self)} batches (a bug: please report)")
        if replaced:
            self.replaced_samples += replaced
            warnings.warn(f"{self.dataset} {self.split} epoch {self.epoch}: {replaced} unreadable samples were "
                          "replaced by copies of readable ones (skip_bad_samples=True)", stacklevel=2)

    def _in_order(self, items: Iterator[tuple], pool: BatchPool | None) -> Generator[tuple, None, int]:
        """The workers' batches as the caller's tensors, in batch order; returns how many samples stood
        in for unreadable ones."""
        pin = self.pin_memory and torch.cuda.is_available()
        arrived: dict[int, tuple] = {}  # batches that came in ahead of their turn (after a resume)
        replaced = 0
        for item in items:
            if item[0] == "error":
                raise ShardReadError(item[1]) from None
            _, batch_id, images, labels, bad = item
            if isinstance(images, tuple):  # (worker, slot) of the pool
                images = pool.take(*images, len(labels), pin)
            else:
                self.fallback_batches += pool is not None
                if pin:
                    images = pinned_copy(images)
            labels = torch.from_numpy(labels)
            # NHWC memory handed out as an NCHW view (rows padded unless pinned: pipeline/loader/layout.py)
            arrived[batch_id] = images.movedim(-1, -3), labels.pin_memory() if pin else labels
            del item, images, labels  # only the caller holds a batch: its slot is free once the caller drops it
            replaced += bad
            while self.batches in arrived:
                ready = arrived.pop(self.batches)
                self.batches += 1  # count before yielding: a state_dict() taken now resumes after it
                yield ready
                del ready
        return replaced

    def _open_pool(self, layout: BatchLayout) -> BatchPool | None:
        if not self.num_workers:
            return None
        shape = (self.num_workers, self.prefetch_factor + 2)
        if self._pool is None or (self._pool.shape, self._pool.layout) != (shape, layout):
            self._pool = None  # free the old slots first
            self._pool = BatchPool(*shape, layout)
        self._pool.open_pass(self.multiprocessing_context)
        return self._pool

    def _check_shards_present(self) -> None:
        """Fail before any worker starts when a listed shard is gone (one listing, also for URLs)."""
        present = set(storage.list_names(self.dataset))
        missing = [name for name, _ in self.shards if name not in present]
        if missing and not self.skip_bad_samples:
            shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
            raise ShardReadError(f"{self.dataset}: {len(missing)} shard(s) listed in {self.split}.manifest.json "
                                 f"are missing: {shown} (re-run `alexnet shard`, or pass skip_bad_samples=True)")


def _as_sent(item: tuple) -> tuple:
    """No conversion: labels travel as a numpy array (pickled inline, no shared-memory segment)."""
    return item


class TrainLoader(_ShardLoader):
    """Training batches: uint8 [B, 3, crop, crop] images (0-255 RGB; NCHW shape over NHWC memory, a
    strided view of the buffer the images were decoded into, dense with `pin_memory`: use `.reshape`,
    not `.view`, to flatten) and int64 labels [B].

    Every rank yields `len(loader)` full batches per epoch; across ranks no sample repeats within an
    epoch and fewer than world_size * batch_size samples are left out. The order depends on (seed,
    epoch, world_size, batch_size, num_workers, shuffle_window) only. A state saved mid-epoch with
    another world size, batch size or number of workers resumes with the epoch's untrained samples
    dealt anew (pipeline/loader/deals.py): still no sample twice in the epoch.

    Every sample is checked against `<split>.index.parquet` (key at its position, label, and with
    `verify_checksums` the image's CRC32C): a sample that fails is an error naming shard and position,
    or with `skip_bad_samples` is replaced by a copy of a readable one (counted, warned about).
    """

    _mode = "train"

    _TAKES = frozenset(field.name for field in dataclasses.fields(LoaderOptions))

    def __init__(self, dataset: str, batch_size: int, options: LoaderOptions | None = None, **settings):
        super().__init__(dataset, batch_size, _options("TrainLoader", options, settings, LoaderOptions(),
                                                       self._TAKES))
        if len(self) == 0:
            raise UserError(f"{self.dataset} {self.split}: {self.total_samples} samples are fewer than one batch "
                            f"per rank (world_size {self.world_size} x batch_size {batch_size})")

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch the next pass yields; a resumed position in that same epoch is kept."""
        if epoch != self.epoch:
            self.epoch, self.batches, self._resume_at, self.deals = epoch, 0, 0, ()

    def state_dict(self) -> dict:
        """Where this rank stands; small and JSON-serialisable. The same on every rank (rank not stored)."""
        return {"epoch": self.epoch, "batches": self.batches, "seed": self.seed, "world_size": self.world_size,
                "batch_size": self.batch_size, "num_workers": max(self.num_workers, 1),
                "shuffle_window": self.shuffle_window, "deals": to_state(self.deals)}

    def load_state_dict(self, state: dict) -> None:
        """The next pass starts at batch `state["batches"]` of `state["epoch"]`, exactly as uninterrupted;
        or, when the state was saved with another world size, batch size or number of workers, at the
        first batch of a new deal of the positions not trained yet in that epoch."""
        mine = self.state_dict()
        if state.get("shuffle_window", mine["shuffle_window"]) != mine["shuffle_window"]:
            raise UserError(f"loader state was saved with shuffle_window={state['shuffle_window']}, this loader "
                            f"has {mine['shuffle_window']}: the epoch's order depends on it, so resume with it")
        self.epoch, self.seed = int(state["epoch"]), int(state["seed"])
        deals, batches = from_state(state.get("deals", [])), int(state["batches"])
        dealt = Deal(*(int(state.get(field, mine[field])) for field in ("world_size", "num_workers", "batch_size")),
                     batches)
        if dealt[:3] != (self.world_size, mine["num_workers"], self.batch_size):
            deals, batches = close(deals, dealt), 0
        self.deals = deals
        if not 0 <= batches <= len(self):
            raise UserError(f"loader state has batches={batches}; an epoch here has {len(self)}")
        self.batches = self._resume_at = batches

    def batch_positions(self) -> list:
        """Epoch positions of the samples in each of this rank's batches of the current deal, by batch
        number (numpy int arrays): what an audit of the epoch marks as trained."""
        return rank_batch_positions([n for _, n in self.shards], self._share())


class EvalLoader(_ShardLoader):
    """Evaluation batches in shard order: every sample of the split exactly once across all ranks (ranks
    may differ by one sample and in batch count; the last batch may be short). Images are the centre
    crop, uint8 [B, 3, crop, crop], or with `ten_crop` uint8 [B, 10, 3, crop, crop] in
    augment.TEN_CROP_CORNERS order then mirrored (average the softmax over dim 1); labels int64 [B]."""

    # in shard order, every sample once: no seed, epoch, shuffle or skipping to choose
    _TAKES = frozenset({"rank", "world_size", "split", "crop", "num_workers", "pin_memory", "prefetch_factor",
                        "multiprocessing_context", "verify_checksums"})

    def __init__(self, dataset: str, batch_size: int, options: LoaderOptions | None = None, *,
                 ten_crop: bool = False, **settings):
        self._mode = "ten_crop" if ten_crop else "centre"
        options = _options("EvalLoader", options, settings, LoaderOptions(split="val"), self._TAKES)
        super().__init__(dataset, batch_size, dataclasses.replace(options, seed=0, epoch=0, shuffle_window=0,
                                                                  skip_bad_samples=False))


def join_workers(items: Iterator) -> None:
    """Stop and join the worker processes of a DataLoader iterator now. torch has no public call for it
    (the iterator joins them when collected); `_shutdown_workers` is its private one in torch 2.13
    (tests/unit/test_private_apis.py fails, naming the torch version, where it is gone)."""
    items._shutdown_workers()
