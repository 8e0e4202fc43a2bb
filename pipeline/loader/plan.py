"""Which samples each rank and each loader worker reads in an epoch, and in which order: pure arithmetic.

The epoch is dealt by sample, not by shard (whole-shard dealing gives ranks unequal counts with uneven
shards, and a DDP job hangs):

1. The manifest's shards are put in an order seeded by (seed, epoch) and read as one concatenated
   sequence of N samples (positions 0..N-1).
2. Rank r takes the contiguous positions [r*P, (r+1)*P) with P = floor(N / (world_size*B)) * B, so every
   rank gets exactly P/B full batches, no position is dealt twice, and the N - world_size*P < world_size*B
   positions left over sit at the end of this epoch's shard order (different samples each epoch).
   Evaluation instead deals [r*N//world_size, (r+1)*N//world_size): every sample once, ragged last batch.
3. A rank's batches are numbered 0..P/B-1; loader worker w yields batches w, w+W, w+2W, ... (the order in
   which torch's DataLoader collects them) and reads a contiguous block of the rank's positions, so it
   streams only the shards covering its block and skips the head of the first one without decoding.
4. Inside its block a worker shuffles with a seeded sliding window: sample i goes to the place given by
   sorting i + window*u_i (u_i uniform). Like a shuffle buffer of `window` samples it only needs about
   `window` samples in memory, but the whole order is known up front, so a resumed worker knows which
   samples it already yielded and drops their raw bytes unread.
5. A change of world size (or of loader workers) mid-epoch starts a new *deal* of that epoch
   (pipeline/loader/deals.py keeps the epoch's list of finished deals). Deal k > 0 works on the sorted
   positions no rank trained in deals 0..k-1 (they are known exactly: each deal's plan and its batch
   count say which slots were yielded) exactly as deal 0 works on 0..N-1: contiguous runs of that list
   per rank, blocks per worker, the same seeded window shuffle (streams told apart by k). A worker's
   block then has holes (samples trained earlier): its pieces still cover the block's whole span, and
   the holes are skipped unread like a resumed worker's head. With no resize, deal 0 is the plan above,
   bit for bit, so a same-size restart resumes exactly as before.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.random  # noqa: F401  (now, in the parent: forked workers would import it every epoch, ~13 ms)

from pipeline.loader.deals import Deal

_ORDER, _AUGMENT = 1, 2  # independent random streams per (seed, epoch, rank, worker[, deal])


@dataclass(frozen=True, kw_only=True)
class EpochShare:
    """What decides which of an epoch's samples a rank reads, and in which order: a rank's share."""

    seed: int
    epoch: int
    rank: int
    world_size: int
    batch_size: int
    num_workers: int  # >= 1: the number of blocks the rank's share is cut into
    window: int  # the shuffle window
    deals: Sequence[Deal] = ()  # the epoch's closed deals (pipeline/loader/deals.py): non-empty after a resize


@dataclass(frozen=True)
class WorkerPlan:
    pieces: list[tuple[int, int, int]]  # (shard number in the manifest, first position, stop), in reading order
    batch_ids: list[int]  # the rank's batch numbers this worker yields, ascending
    batch_sizes: list[int]
    order: np.ndarray  # order[t] = reading ordinal of the sample yielded t-th by this worker
    draws: np.ndarray  # [samples, 3] uniforms in [0, 1) per yielded slot: crop row, crop column, flip
    first: int = 0  # epoch position of reading ordinal 0: sample t is position first + order[t]
    reads: int = 0  # reading ordinals the pieces cover (more than len(order) when the block has holes)


def shard_order(num_shards: int, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    if not shuffle:
        return np.arange(num_shards)
    return np.random.default_rng([seed, epoch]).permutation(num_shards)


def rank_span(total: int, batch_size: int, rank: int, world_size: int, drop_last: bool) -> tuple[int, int]:
    """The rank's contiguous range of epoch positions (of the deal's positions after a resize)."""
    if drop_last:
        per_rank = total // (world_size * batch_size) * batch_size
        return rank * per_rank, (rank + 1) * per_rank
    return rank * total // world_size, (rank + 1) * total // world_size


def batch_sizes(samples: int, batch_size: int, drop_last: bool) -> list[int]:
    full, rest = divmod(samples, batch_size)
    return [batch_size] * full + ([rest] if rest and not drop_last else [])


def undealt(total: int, deals: Sequence[Deal], *, seed: int, epoch: int, window: int) -> np.ndarray:
    """The sorted epoch positions that no rank trained in the epoch's finished `deals`."""
    remaining = np.arange(total)
    for k, deal in enumerate(deals):
        done = [remaining[first + order[:slots]]
                for first, order, slots in _trained(len(remaining), deal, k, seed, epoch, window)]
        remaining = np.setdiff1d(remaining, np.concatenate(done or [remaining[:0]]), assume_unique=True)
    return remaining


def deal_size(total: int, deals: Sequence[Deal], *, seed: int, epoch: int, window: int) -> int:
    """How many positions the current deal shares out (all of them before any resize)."""
    return len(undealt(total, deals, seed=seed, epoch=epoch, window=window)) if deals else total


def worker_plan(shard_samples: list[int], share: EpochShare, *, worker: int, drop_last: bool,
                shuffle: bool) -> WorkerPlan:
    """Everything one loader worker needs to know about its share of the epoch's current deal."""
    seed, epoch, rank, world_size = share.seed, share.epoch, share.rank, share.world_size
    batch_size, num_workers, window, deals = share.batch_size, share.num_workers, share.window, share.deals
    total = sum(shard_samples)
    remaining = undealt(total, deals, seed=seed, epoch=epoch, window=window) if deals else None
    first, count, batch_ids, sizes = _block(total if remaining is None else len(remaining), batch_size, rank,
                                            world_size, num_workers, worker, drop_last)
    order = _order(count, seed, epoch, rank, worker, len(deals), shuffle, window)
    if remaining is not None:  # reading ordinals count from the block's first position, holes included
        block = remaining[first:first + count]
        first = int(block[0]) if count else 0
        order = block[order] - first
    reads = int(order.max()) + 1 if count else 0

    order_of_shards = shard_order(len(shard_samples), seed, epoch, shuffle)
    pieces, cursor = [], 0  # cursor: epoch position of the current shard's first sample
    for shard in order_of_shards:
        n = shard_samples[shard]
        lo, hi = max(first, cursor), min(first + reads, cursor + n)
        if lo < hi:
            pieces.append((int(shard), lo - cursor, hi - cursor))
        cursor += n
    draws = np.random.default_rng(_key(seed, epoch, rank, worker, len(deals), _AUGMENT)).random((count, 3))
    return WorkerPlan(pieces, batch_ids, sizes, order, draws, first, reads)


def rank_batch_positions(shard_samples: list[int], share: EpochShare) -> list[np.ndarray]:
    """The epoch positions of each of the rank's training batches in the current deal, by batch number
    (what the training loop marks in its audit of the epoch)."""
    batches: dict[int, np.ndarray] = {}
    for worker in range(share.num_workers):
        plan = worker_plan(shard_samples, share, worker=worker, drop_last=True, shuffle=True)
        positions = plan.first + plan.order
        ends = np.cumsum(plan.batch_sizes)
        for batch_id, end, size in zip(plan.batch_ids, ends, plan.batch_sizes):
            batches[batch_id] = positions[end - size:end]
    return [batches[b] for b in range(len(batches))]


def _block(n: int, batch_size: int, rank: int, world_size: int, num_workers: int, worker: int,
           drop_last: bool) -> tuple[int, int, list[int], list[int]]:
    """Where the worker's block starts among the deal's n positions, its length, its batch numbers and sizes."""
    start, stop = rank_span(n, batch_size, rank, world_size, drop_last)
    sizes = batch_sizes(stop - start, batch_size, drop_last)
    block_lengths = [sum(sizes[w::num_workers]) for w in range(num_workers)]
    return (start + sum(block_lengths[:worker]), block_lengths[worker], list(range(worker, len(sizes), num_workers)),
            sizes[worker::num_workers])


def _order(count: int, seed: int, epoch: int, rank: int, worker: int, deal: int, shuffle: bool,
           window: int) -> np.ndarray:
    """order[t] = index in the block of the sample yielded t-th (the seeded sliding-window shuffle)."""
    if not (shuffle and window > 0):
        return np.arange(count)
    rng = np.random.default_rng(_key(seed, epoch, rank, worker, deal, _ORDER))
    return np.argsort(np.arange(count) + window * rng.random(count), kind="stable")


def _key(seed: int, epoch: int, rank: int, worker: int, deal: int, stream: int) -> list[int]:
    """Deal 0 keeps the key it had before resizes existed, so unresized epochs are unchanged."""
    return [seed, epoch, rank, worker, stream] + ([deal] if deal else [])


def _trained(n: int, deal: Deal, k: int, seed: int, epoch: int,
             window: int) -> list[tuple[int, np.ndarray, int]]:
    """(block start, shuffled order, slots yielded) of every worker of every rank in finished deal k."""
    out = []
    for rank in range(deal.world_size):
        for worker in range(deal.num_workers):
            first, count, batch_ids, sizes = _block(n, deal.batch_size, rank, deal.world_size, deal.num_workers,
                                                    worker, drop_last=True)
            done = sum(1 for b in batch_ids if b < deal.batches)
            out.append((first, _order(count, seed, epoch, rank, worker, k, True, window), sum(sizes[:done])))
    return out
