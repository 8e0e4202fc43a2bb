"""The run state (trainer/state.py) without Ray Train: it restores exactly what it saves, refuses a
checkpoint it would restore inexactly, naming the key, and continues another world size's checkpoint.

The end-to-end proofs (bitwise-equal weights after kills, elastic exactly-once) are tests/integration/test_resume.py,
tests/integration/test_elastic.py and tests/integration/test_multinode.py; these catch a forgotten piece of state in a second."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from trainer.checkpoint import format as ckpt
from trainer.config import TrainConfig
from trainer.driver.failures import user_error_in
from trainer.schedule import set_step_lr
from trainer.state import CheckpointMismatch, RunState
from trainer.step import train_step

CPU = (torch.device("cpu"), torch.device("cpu"))
# what trainer/loop.py's checkpoints held before the run state existed: they must still load unchanged;
# a new key means a registration, and either `optional=True` or a new checkpoint.FORMAT
FORMAT_1 = {"format", "model", "optimizer", "schedule", "epoch", "step", "epoch_step", "loader", "rng",
            "train_totals", "audit", "config", "history", "finished", "num_classes", "classes", "stats",
            "world_size"}


def config(data: str, **overrides) -> TrainConfig:
    return TrainConfig(data=data, batch_size=8, width=0.25, loader_workers=0, epochs=2, **overrides)


def train_batches(run: RunState, batches: int) -> None:
    """What the loop does to the state in `batches` steps (one plain SGD step each)."""
    run.loader.set_epoch(0)
    positions = run.loader.batch_positions()
    for images, labels in run.loader:
        logits = run.model(images.float() - 120.0)
        loss = torch.nn.functional.cross_entropy(logits, labels)
        run.optimizer.zero_grad()
        loss.backward()
        run.optimizer.step()
        run.audit.mark(positions[run.loader.batches - 1])
        run.step += 1
        run.epoch_step += 1
        run.train_totals += torch.tensor([loss.item() * len(labels), 0.0, float(len(labels))], dtype=torch.float64)
        torch.rand(3, generator=run.generator)
        if run.loader.batches == batches:
            break


def same(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if torch.is_tensor(a):
        return torch.is_tensor(b) and a.dtype == b.dtype and torch.equal(a, b)
    return a == b


@pytest.fixture(scope="module")
def saved(small_dataset) -> dict:
    """A checkpoint of a world-1 run three batches into its first epoch, through a file and back."""
    run = RunState(config(small_dataset), 0, 1, CPU)
    train_batches(run, 3)
    state, share = run.checkpoint(finished=False, share="checkpoint-00000003")
    assert share == "checkpoint-00000003" and state["epoch_step"] == 3
    assert set(state) == FORMAT_1 | {"scaler"} and state["format"] == ckpt.FORMAT == 1  # scaler: optional
    return torch.load(io.BytesIO(ckpt.to_bytes(state)), weights_only=True)


def test_a_restored_state_saves_the_same_checkpoint(small_dataset, saved):
    run = RunState(config(small_dataset), 0, 1, CPU)
    run.restore(saved, "checkpoint-00000003")
    assert (run.step, run.epoch, run.epoch_step, run.loader.batches) == (3, 0, 3, 3)
    again, _ = run.checkpoint(finished=False)
    assert same(again, saved)  # every part, RNG states and loss totals included


@pytest.mark.parametrize("change, named", [
    (lambda s: s.update(ema={"decay": 0.999}), "holds ema, which this version does not restore"),
    (lambda s: s.pop("schedule"), "lacks schedule"),
    (lambda s: s.pop("rng"), "lacks rng"),
])
def test_a_checkpoint_the_state_would_not_restore_exactly_is_refused_naming_the_key(small_dataset, saved,
                                                                                    change, named):
    state = dict(saved)
    change(state)
    run = RunState(config(small_dataset), 0, 1, CPU)
    with pytest.raises(CheckpointMismatch, match=f"checkpoint-00000003: {named}") as refused:
        run.restore(state, "checkpoint-00000003")
    assert user_error_in(refused.value) is refused.value  # so Ray Train does not retry it (trainer/driver/failures.py)
    assert run.step == 0 and run.loader.batches == 0  # refused before anything was restored


def test_a_newly_registered_part_is_saved_restored_and_demanded(small_dataset, saved):
    """How a new piece of state joins (a GradScaler and a counter): one registration each."""
    def with_new_parts(scale: float) -> RunState:
        run = RunState(config(small_dataset), 0, 1, CPU)
        run.loss_scale, run.warmup_steps = torch.amp.GradScaler("cpu", init_scale=scale), 0
        run.track("loss_scale", run.loss_scale)
        run.track_attribute("warmup_steps")
        return run

    run = with_new_parts(1024.0)
    with pytest.raises(CheckpointMismatch, match="lacks loss_scale, warmup_steps"):  # a checkpoint from before
        run.restore(saved, "checkpoint-00000003")
    run.warmup_steps = 17
    state, _ = run.checkpoint(finished=False)
    state = torch.load(io.BytesIO(ckpt.to_bytes(state)), weights_only=True)
    fresh = with_new_parts(65536.0)
    fresh.restore(state, "new")
    assert fresh.warmup_steps == 17 and fresh.loss_scale.get_scale() == 1024.0
    with pytest.raises(ValueError, match="registered twice"):
        fresh.track_attribute("warmup_steps")


def test_an_optional_part_missing_from_an_older_checkpoint_keeps_its_fresh_state(small_dataset, saved):
    state = {k: v for k, v in saved.items() if k != "audit"}  # audits came after format 1's first checkpoints
    run = RunState(config(small_dataset), 0, 1, CPU)
    run.restore(state, "old")
    assert run.step == 3 and not run.audit.seen.any()


def test_a_checkpoint_of_one_rank_continues_on_two(small_dataset, saved):
    ranks = [RunState(config(small_dataset, scale_lr=True), rank, 2, CPU) for rank in (0, 1)]
    for run in ranks:
        run.restore(saved, "checkpoint-00000003")
    zero, one = ranks
    assert torch.equal(zero.train_totals, saved["train_totals"][0]) and not one.train_totals.any()
    assert len(zero.audit.closed) == 1 and one.audit.closed == []  # the old rank's samples, on rank 0
    assert zero.schedule.lr == one.schedule.lr == 2 * 0.01  # scale_lr: the lr follows two replicas
    assert all(g["lr"] == 0.02 for g in zero.optimizer.param_groups)
    assert zero.epoch_step == one.epoch_step == 3 and len(zero.loader) == len(one.loader)
    assert not torch.equal(zero.generator.get_state(), one.generator.get_state())  # reseeded per rank
    trained = set(np.flatnonzero(np.unpackbits(saved["audit"][0]["bits"].numpy(), count=zero.audit.samples)))
    dealt = [set(np.concatenate(list(run.loader.batch_positions())).tolist()) for run in ranks]
    assert len(trained) == 24 and not dealt[0] & dealt[1] and not (dealt[0] | dealt[1]) & trained


def test_a_resume_mid_warmup_continues_the_ramp(small_dataset):
    run = RunState(config(small_dataset, warmup_epochs=2.0), 0, 1, CPU)
    train_batches(run, 3)
    batches = len(run.loader)  # 15: 120 samples, batch 8
    set_step_lr(run.optimizer, run.schedule, run.config, run.epochs_done(batches))
    want = 0.01 * (0.1 + 0.9 * (3 / batches) / 2.0)  # the 4th step of a 2-epoch ramp from 0.1 x 0.01
    assert run.optimizer.param_groups[0]["lr"] == pytest.approx(want, rel=1e-12)
    state, _ = run.checkpoint(finished=False)
    fresh = RunState(config(small_dataset, warmup_epochs=2.0), 0, 1, CPU)
    fresh.restore(torch.load(io.BytesIO(ckpt.to_bytes(state)), weights_only=True), "mid-warmup")
    set_step_lr(fresh.optimizer, fresh.schedule, fresh.config, fresh.epochs_done(len(fresh.loader)))
    assert [g["lr"] for g in fresh.optimizer.param_groups] == [g["lr"] for g in run.optimizer.param_groups]


def test_an_fp16_run_restores_its_gradient_scaler(small_dataset):
    """Every other test here runs in fp32, whose scaler state is empty: an fp16 scaler saved and not
    restored would pass them all."""
    run = RunState(config(small_dataset, precision="fp16"), 0, 1, CPU)
    run.loader.set_epoch(0)
    for images, labels in run.loader:
        train_step(run.model, run.optimizer, run.precision, images.float() - 120.0, labels)
        if run.loader.batches == 2:
            break
    run.precision.scaler.update(2.0**11)  # as after a few overflows: not the fresh scaler's 2**16
    saved, _ = run.checkpoint(finished=False)
    assert saved["scaler"]["scale"] == 2.0**11
    fresh = RunState(config(small_dataset, precision="fp16"), 0, 1, CPU)
    fresh.restore(torch.load(io.BytesIO(ckpt.to_bytes(saved)), weights_only=True), "fp16")
    assert fresh.precision.scaler.get_scale() == 2.0**11
    assert fresh.precision.state_dict() == run.precision.state_dict()  # growth tracker and all
