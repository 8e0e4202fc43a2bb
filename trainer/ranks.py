"""Sums and gathers over the run's ranks (torch.distributed, gloo on the CPU); with one rank, no collective."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist


def gather(value: Any, world: int) -> list:
    """Every rank's `value` (any picklable object), in rank order, on every rank."""
    if world == 1:
        return [value]
    everyone = [None] * world
    dist.all_gather_object(everyone, value)
    return everyone


def sum_over_ranks(totals: torch.Tensor, world: int) -> torch.Tensor:
    if world > 1:
        totals = totals.clone()
        dist.all_reduce(totals)  # float64 sums on the CPU (gloo); exact for counts
    return totals


def mean_over_ranks(loss: torch.Tensor, world: int) -> float:
    value = loss.detach().float().cpu().reshape(1)
    return (sum_over_ranks(value, world) / world).item() if world > 1 else value.item()
