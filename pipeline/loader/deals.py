"""An epoch's history of deals: how the epoch's samples were shared out before each change of world size.

A deal is (world size, loader workers per rank, batch size, batches every rank trained in it). An
epoch without a resize is one deal. When a run resumes mid-epoch with another world size (or another
number of loader workers), the deal it was in is closed with the batches its ranks had trained by the
checkpoint, and a new deal shares out the positions no rank trained (pipeline/loader/plan.py). The
list of closed deals is all a checkpoint needs to know which positions are done: a few integers per
resize, whatever the dataset's size.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple


class Deal(NamedTuple):
    world_size: int
    num_workers: int
    batch_size: int
    batches: int  # batches each rank trained in this deal (ranks step together, so one number)


def from_state(rows: Sequence[Sequence[int]]) -> tuple[Deal, ...]:
    """Deals from their stored form (lists of ints: JSON and torch.load(weights_only=True) safe)."""
    return tuple(Deal(*(int(v) for v in row)) for row in rows)


def to_state(deals: Sequence[Deal]) -> list[list[int]]:
    return [list(deal) for deal in deals]


def close(deals: Sequence[Deal], last: Deal) -> tuple[Deal, ...]:
    """The history once `last` (the deal a checkpoint was in) ends; a deal with no batch trained changed
    nothing and is left out."""
    return tuple(deals) + ((last,) if last.batches else ())


def batches_done(deals: Sequence[Deal]) -> int:
    """Steps the epoch took in its closed deals."""
    return sum(deal.batches for deal in deals)
