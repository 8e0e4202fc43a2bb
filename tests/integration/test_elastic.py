"""Elastic runs (`--workers MIN:MAX`): an epoch stays exactly-once across every change of world size.

The re-dealing is pure arithmetic (pipeline/loader/plan.py, pipeline/loader/deals.py), checked here over
many resize sequences; a real loader resumed at another world size reads real shards; the end-to-end
run shrinks and grows on a multi-node cluster (tests/integration/test_multinode.py's cluster).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from pipeline.loader.loaders import TrainLoader
from pipeline.loader.deals import Deal, close
from pipeline.loader.plan import EpochShare, deal_size, rank_batch_positions, worker_plan
from trainer.config import resolve_config
from trainer.optim import PaperSGD
from trainer.schedule import PlateauSchedule, lr_after_resize, set_step_lr, warmup_factor


def train_deal(shards, deals, world, workers, batch, trained_batches, seed=4, epoch=1, window=7):
    """The positions each rank trains in the current deal when it stops after `trained_batches` batches
    (None: all of them), and the deal as a checkpoint closes it."""
    per_rank = [rank_batch_positions(shards, EpochShare(seed=seed, epoch=epoch, rank=r, world_size=world,
                                                        batch_size=batch, num_workers=workers, window=window,
                                                        deals=deals)) for r in range(world)]
    batches = len(per_rank[0]) if trained_batches is None else min(trained_batches, len(per_rank[0]))
    assert {len(p) for p in per_rank} == {len(per_rank[0])}  # equal whole batches per rank
    trained = [b for p in per_rank for b in p[:batches]]
    assert all(len(b) == batch for b in trained)
    dealt = deal_size(sum(shards), deals, seed=seed, epoch=epoch, window=window)
    assert dealt - world * len(per_rank[0]) * batch < world * batch  # left out of this deal
    return trained, Deal(world, workers, batch, batches)


SHARDS = [13, 40, 7, 40, 29]  # 129 samples, uneven shards


@pytest.mark.parametrize("batch", [1, 4])
def test_resizes_mid_epoch_train_every_sample_at_most_once(batch):
    rng = np.random.default_rng(batch)
    sizes = [(w, lw) for w in (1, 2, 3, 5) for lw in (1, 3)]
    cases = 0
    for first, second in itertools.product(sizes, sizes):
        for third in (None, sizes[int(rng.integers(len(sizes)))]):
            sequence = [first, second] + ([third] if third else [])
            deals, seen = (), []
            for i, (world, workers) in enumerate(sequence):
                last = i == len(sequence) - 1
                trained_batches = None if last else int(rng.integers(0, 129 // (world * batch) + 1))
                trained, deal = train_deal(SHARDS, deals, world, workers, batch, trained_batches)
                seen += trained
                deals = close(deals, deal)
            positions = np.concatenate(seen) if seen else np.zeros(0, int)
            assert len(np.unique(positions)) == len(positions), sequence  # no sample twice
            assert 129 - len(positions) < world * batch, sequence  # left out: fewer than the last deal's share
            cases += 1
    assert cases == 2 * len(sizes) ** 2


def test_an_unresized_epoch_is_dealt_as_before():
    # deal 0 is today's plan: contiguous spans per rank, the same seeded order (same-size resumes stay exact)
    share = dict(seed=4, epoch=1, world_size=2, batch_size=5, num_workers=2, window=7)
    plan = worker_plan(SHARDS, EpochShare(rank=1, **share), worker=1, drop_last=True, shuffle=True)
    assert plan.reads == len(plan.order) and sorted(plan.order.tolist()) == list(range(len(plan.order)))
    assert plan.first == 60 + 30  # rank 1 starts at 12 batches x 5; worker 1 after worker 0's 6 batches
    resized = [worker_plan(SHARDS, EpochShare(rank=rank, deals=(Deal(3, 1, 5, 2),), **share), worker=worker,
                           drop_last=True, shuffle=True)
               for rank in range(2) for worker in range(2)]
    assert any(p.reads > len(p.order) for p in resized)  # blocks span holes: samples trained before the resize


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
def test_a_real_loader_resumed_at_another_world_size_reads_only_untrained_samples(sharded_dataset):
    # sharded_dataset's training classes hold one photograph each: a label names its sample
    batch, seen = 8, []
    for rank in range(2):
        loader = TrainLoader(sharded_dataset, batch, rank=rank, world_size=2, seed=3, epoch=1, num_workers=0)
        for n, (_, labels) in enumerate(loader):
            seen += labels.tolist()
            if n == 4:
                state = loader.state_dict()
                break
    for rank in range(3):
        loader = TrainLoader(sharded_dataset, batch, rank=rank, world_size=3, seed=0, num_workers=2)
        loader.load_state_dict(state)
        positions = loader.batch_positions()
        assert len(loader) == len(positions) == (317 - 2 * 5 * batch) // (3 * batch)
        seen += [label for _, labels in loader for label in labels.tolist()]
    assert len(seen) == len(set(seen)) and 317 - len(seen) < 3 * batch
    # a resize while validating or saving at the end of an epoch resumes from the epoch-end checkpoint
    # (the next epoch at batch 0, or the latest mid-epoch one): the next epoch is one whole deal
    loader.load_state_dict({**state, "epoch": 2, "batches": 0, "deals": []})
    assert loader.deals == () and len(loader) == 317 // (3 * batch)


def test_with_scale_lr_the_lr_follows_the_replicas_and_keeps_the_schedules_reductions():
    config = resolve_config(None, ["scale_lr=true", "lr=0.01"], data="d", name="n", workers="2:8")
    assert (config.min_workers, config.workers) == (2, 8)
    schedule = PlateauSchedule(config.lr_for(4), factor=0.1, patience=1, threshold=0.0)
    for error in (0.5, 0.5, 0.5):  # two plateaus: two reductions
        schedule.step(error)
    assert len(schedule.reductions) == 2
    assert lr_after_resize(config, 3, schedule) == pytest.approx(0.03 * 0.1 ** 2, rel=1e-12)
    fixed = resolve_config(None, ["lr=0.01"], data="d", name="n", workers="2:8")
    assert lr_after_resize(fixed, 3, schedule) == schedule.lr


def test_mid_warmup_a_resize_moves_the_ramps_target_to_the_new_replica_count():
    config = resolve_config(None, ["scale_lr=true", "lr=0.01", "warmup_epochs=2", "warmup_start=0.2"],
                            data="d", name="n", workers="2:8")
    schedule = PlateauSchedule(config.lr_for(4), warmup_epochs=config.warmup_epochs)
    optimizer = PaperSGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    set_step_lr(optimizer, schedule, config, 0.5)  # a quarter through the warmup, on 4 replicas
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.04 * (0.2 + 0.8 * 0.25), rel=1e-12)
    schedule.lr = lr_after_resize(config, 6, schedule)  # the loop's resize, then its next step
    set_step_lr(optimizer, schedule, config, 0.75)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.06 * (0.2 + 0.8 * 0.375), rel=1e-12)
    set_step_lr(optimizer, schedule, config, 2.0)  # the warmup over: the target itself
    assert optimizer.param_groups[0]["lr"] == 0.06 and warmup_factor(2.0, 2.0, 0.2) == 1.0


def test_the_audit_counts_samples_trained_once_and_again_across_checkpoints_and_resizes():
    from trainer.audit import EpochAudit

    old = [EpochAudit(40), EpochAudit(40)]  # two ranks of a first deal
    old[0].mark(np.array([0, 1, 2, 3]))
    old[1].mark(np.array([4, 5, 6, 7]))
    saved = [a.state_dict() for a in old]
    resumed = EpochAudit(40)  # the new rank 0 after a resize to one replica
    resumed.close_ranks(saved)
    resumed.mark(np.array([8, 9, 10, 11]))
    assert resumed.summary(world=1) == {"samples_trained": 12, "samples_repeated": 0, "samples_left_out": 28}
    same_size = EpochAudit(40)  # a restart at the same size keeps its own bits
    same_size.load_state_dict(resumed.state_dict())
    same_size.mark(np.array([11, 12, 5, 12]))  # 11 and 5 again, and 12 twice in one batch
    assert same_size.summary(world=1) == {"samples_trained": 13, "samples_repeated": 3, "samples_left_out": 27}
    same_size.reset()
    assert same_size.summary(world=1)["samples_trained"] == 0
