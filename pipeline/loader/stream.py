"""What one torch DataLoader worker runs: its share of an epoch, shards -> uint8 batches.

Each worker computes its own plan (pipeline/loader/plan.py), streams the shards covering its block,
checks each sample against the index as it is read (pipeline/loader/index.py), decodes each sample
only when it is due in the seeded order, straight into its place in the batch
(pipeline/loader/layout.py), and yields ("batch", batch number, images, labels, replaced). In a worker
process the batch buffer is normally a slot of the loader's BatchPool (pipeline/loader/pool.py) and
`images` is (worker, slot); in-process, or when the caller holds all the worker's slots, it is an NHWC
tensor (a view of a fresh buffer in that layout). A shard that cannot be read ends the stream with
("error", message): the main process re-raises it with that message (a DataLoader traceback would
bury it).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import numpy as np
import simplejpeg
import torch
from torch.utils.data import IterableDataset, get_worker_info

from pipeline import storage
from pipeline.loader.augment import crop_origin, mirror, ten_crop
from pipeline.loader.index import SampleIndex
from pipeline.loader.layout import BatchLayout
from pipeline.loader.plan import EpochShare, WorkerPlan, worker_plan
from pipeline.loader.pool import BatchPool
from pipeline.loader.tar_reader import STREAM_BUFFER, ShardReadError, iter_samples, map_file

@dataclass(frozen=True, kw_only=True)
class EpochSpec:
    """Everything a worker needs (pickled into each worker process)."""
    dataset: str
    shards: tuple[tuple[str, int], ...]  # (name, samples) as the manifest lists them
    num_classes: int
    mode: str  # "train" (random crop + flip), "centre" or "ten_crop"
    crop: int
    image_size: int  # the manifest's: images of this size are decoded in place
    share: EpochShare  # which of the epoch's samples this rank reads, in which order
    resume_batches: int  # the rank's batches already consumed this epoch
    skip_bad: bool
    index: SampleIndex  # each position's key, label and image checksum: every sample is checked against it


class EpochStream(IterableDataset):
    def __init__(self, spec: EpochSpec, pool: BatchPool | None = None):
        self.spec, self.pool = spec, pool  # pool: where workers put batches (None: in-process)

    def __iter__(self) -> Iterator[tuple]:
        spec = self.spec
        info = get_worker_info()
        worker = info.id if info is not None else 0
        train = spec.mode == "train"
        plan = worker_plan([n for _, n in spec.shards], spec.share, worker=worker, drop_last=train, shuffle=train)
        try:
            yield from _batches(spec, plan, self.pool if info is not None else None, worker)
        except ShardReadError as error:
            yield ("error", str(error))


def _batches(spec: EpochSpec, plan: WorkerPlan, pool: BatchPool | None, worker: int) -> Iterator[tuple]:
    done = sum(1 for b in plan.batch_ids if b < spec.resume_batches)  # this worker's batches already used
    first_slot = sum(plan.batch_sizes[:done])
    slot_of = np.full(plan.reads, -1, dtype=np.int64)  # -1: a hole (trained before a resize), never read
    slot_of[plan.order] = np.arange(len(plan.order))
    keep = slot_of >= first_slot  # samples yielded before the resume point are never decoded
    samples = _read_pieces(spec, plan.pieces, keep)
    order, draws, wanted = plan.order.tolist(), plan.draws.tolist(), keep.tolist()  # cheap per-sample reads
    pending: dict[int, tuple] = {}
    last_good = None
    slot = first_slot
    layout = batch_layout(spec)
    scratch = np.empty(spec.image_size**2 * 3, dtype=np.uint8)  # ten crops decode here, reused: no fresh pages
    for batch_id, size in zip(plan.batch_ids[done:], plan.batch_sizes[done:]):
        lent = pool.slot_for(worker) if pool is not None else None
        if lent is not None:
            payload, buffer = (worker, lent[0]), lent[1]
        else:
            buffer = torch.empty(layout.nbytes, dtype=torch.uint8)
            payload = layout.view(buffer, size)  # NHWC
        images = layout.view(buffer, size).numpy()
        target = (layout, buffer.numpy(), scratch)
        labels = np.empty(size, dtype=np.int64)
        bad = []
        for i in range(size):
            ordinal = order[slot]
            while ordinal not in pending:
                got, item = next(samples, (None, None))
                if got is None:
                    raise ShardReadError(f"{spec.dataset}: shards hold fewer samples than the manifest lists")
                if wanted[got]:
                    pending[got] = item
            try:
                labels[i] = _decode_into(spec, pending.pop(ordinal), draws[slot], target, i, images[i])
            except ShardReadError as error:
                if not spec.skip_bad:
                    raise
                warnings.warn(f"skipping unreadable sample: {error}", stacklevel=1)
                bad.append(i)
            slot += 1
        last_good = _fill_bad(images, labels, bad, last_good, spec)
        yield ("batch", batch_id, payload, labels, len(bad))
    for _ in samples:  # nothing left to yield, but a shard read to its listed end is checked to end there
        pass


def batch_layout(spec: EpochSpec) -> BatchLayout:
    return BatchLayout.for_mode(spec.mode, spec.share.batch_size, spec.crop, spec.image_size)


def _fill_bad(images: np.ndarray, labels: np.ndarray, bad: list[int], last_good, spec: EpochSpec):
    """Opt-in skipping keeps every batch full and every rank's batch count equal (DDP never waits on a
    missing batch): an unreadable sample's slot gets a copy of a readable one from the same batch, or
    of this worker's last readable sample. Returns the new last readable sample."""
    unreadable = set(bad)
    good = [i for i in range(len(labels)) if i not in unreadable]
    if bad and not good and last_good is None:
        raise ShardReadError(f"{spec.dataset}: a whole batch of this worker's first samples is unreadable; "
                             "nothing to stand in for them (see the warnings above)")
    for n, i in enumerate(bad):
        if good:
            source = good[n % len(good)]
            images[i], labels[i] = images[source], labels[source]
        else:
            images[i], labels[i] = last_good
    return (images[good[-1]].copy(), labels[good[-1]]) if good else last_good


def _read_pieces(spec: EpochSpec, pieces: list[tuple[int, int, int]], keep: np.ndarray) -> Iterator[tuple]:
    """(ordinal, (where, key, jpg, label, error)) for every sample of the worker's block, in reading order
    (None for a sample consumed before the resume point: it is not checked either).

    A piece whose samples were all consumed before the resume point is not even opened. A sample that is
    not the one the index lists at its position carries the error; once a shard fails, its remaining
    samples carry the error (so skipping, when asked, is per sample). A shard that holds more samples than
    the manifest lists fails the epoch (with skip_bad, a warning: the extra samples are never read).
    """
    index = spec.index
    ordinal = 0
    buffer = bytearray(STREAM_BUFFER)  # one read buffer for all of a worker's streamed shards
    for shard, lo, hi in pieces:
        end = ordinal + hi - lo
        where = storage.join(spec.dataset, spec.shards[shard][0])
        if not keep[ordinal:end].any():
            ordinal = end
            continue
        mismatch = None  # the first sample of this piece that is not the index's: it explains what follows
        try:
            with _open_shard(where) as source:
                for position, key, members in iter_samples(source, where, lo, hi, buffer, spec.shards[shard][1]):
                    item = None
                    if keep[ordinal]:
                        try:
                            item = (where, key, *index.check(where, shard, position, key, members), None)
                        except ShardReadError as failure:
                            item = (where, key, None, None, str(failure))
                            mismatch = mismatch or item[-1]
                    yield ordinal, item
                    ordinal += 1
            continue
        except FileNotFoundError:
            error = f"{where}: shard not found (the manifest lists it)"
        except ShardReadError as failure:
            if ordinal == end:  # every listed sample was read: the shard goes on past the manifest's count
                if not spec.skip_bad:
                    raise ShardReadError(mismatch or str(failure)) from None
                warnings.warn(f"samples the manifest does not list were not read: {failure}", stacklevel=1)
                continue
            error = str(failure)
        except OSError as failure:
            error = f"{where}: cannot read shard ({failure})"
        while ordinal < end:
            yield ordinal, (where, None, None, None, error)
            ordinal += 1


def _open_shard(where: str) -> AbstractContextManager:
    """Local shards are mapped (members are then views: no read calls, no copies); URLs are streamed.
    A mapping is not closed here: the samples still waiting in the shuffle window hold views of it."""
    return storage.open_input(where) if storage.is_url(where) else nullcontext(map_file(where))


def _decode_into(spec: EpochSpec, sample: tuple, draws: list[float],
                 target: tuple[BatchLayout, np.ndarray, np.ndarray], index: int, out: np.ndarray) -> int:
    """Decode sample `index` of the batch (checked against the index by `_read_pieces`: where, key, JPEG
    bytes, label, error) into `out` (its HWC view of the batch); returns the label."""
    where, key, jpg, label, error = sample
    if error is not None:
        raise ShardReadError(error)
    layout, buffer, scratch = target
    size = spec.image_size
    if spec.mode == "ten_crop":
        image = _decode(where, key, jpg, scratch, spec.crop)
        ten_crop(image, spec.crop, out)
        return label
    crop_draws = draws[:2] if spec.mode == "train" else None
    row, col = crop_origin(size, size, spec.crop, crop_draws)
    image = _decode(where, key, jpg, layout.decode_target(buffer, index, row, col), spec.crop)
    if image.shape[:2] != (size, size):  # not the manifest's size: then it was not decoded in place
        row, col = crop_origin(*image.shape[:2], spec.crop, crop_draws)
        out[...] = image[row:row + spec.crop, col:col + spec.crop].copy()  # (it may overlap `out`)
    if spec.mode == "train" and draws[2] < 0.5:
        mirror(out)
    return label


def _decode(where: str, key: str | None, jpg, buffer: np.ndarray, crop: int) -> np.ndarray:
    """JPEG -> HWC uint8 RGB, into `buffer` when it fits there."""
    try:
        try:
            image = simplejpeg.decode_jpeg(jpg, colorspace="RGB", buffer=buffer)
        except ValueError:  # larger than the buffer (or unreadable: then this raises again)
            image = simplejpeg.decode_jpeg(jpg, colorspace="RGB")
    except (ValueError, RuntimeError) as failure:
        raise ShardReadError(f"{where}: member {key}.jpg is not a readable JPEG ({failure})") from None
    if min(image.shape[:2]) < crop:
        raise ShardReadError(f"{where}: member {key}.jpg is {image.shape[1]}x{image.shape[0]}, "
                             f"smaller than the {crop}-pixel crop")
    return image
