"""Checkpoint files (weights_only-safe, local or s3://), RNG capture, and the run folder's metric files."""

import io
import os
import json
import random
import re

import numpy as np
import pytest
import torch

from pipeline import storage
from pipeline.errors import UserError
from trainer.checkpoint import format as ckpt
from trainer.checkpoint import resume
from trainer.config import TrainConfig
from trainer.optim import PaperSGD
from trainer.report import MetricsLog, TensorBoardLog, plot_run, read_metrics
from trainer.rng import capture_rng, restore_rng
from trainer.schedule import PlateauSchedule


def draws(generator):
    return (random.random(), np.random.rand(), torch.rand(3).tolist(), torch.rand(2, generator=generator).tolist())


def test_rng_states_round_trip():
    generator = torch.Generator().manual_seed(7)
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.randn()  # leaves a cached gaussian in numpy's state
    state = capture_rng(generator)
    expected = draws(generator)
    draws(generator)  # move every stream on
    restored = torch.load(io.BytesIO(ckpt.to_bytes(state)), weights_only=True)
    restore_rng(restored, generator)
    assert draws(generator) == expected


def small_state():
    model = torch.nn.Linear(4, 3)
    opt = PaperSGD(model.parameters(), lr=0.1)
    model.weight.grad, model.bias.grad = torch.ones(3, 4), torch.ones(3)
    opt.step()
    return ckpt.build(model=ckpt.cpu_state_dict(model), optimizer=ckpt.optimizer_state_cpu(opt),
                      schedule=PlateauSchedule(0.1).state_dict(), epoch=1, step=10, epoch_step=3,
                      loader=[{"epoch": 1, "batches": 3, "seed": 0}], rng=[capture_rng(None)],
                      train_totals=[torch.zeros(3, dtype=torch.float64)], config=TrainConfig().to_dict(),
                      history=[{"epoch": 0, "val_top1_error": 0.5}], finished=False, num_classes=3,
                      classes=[{"index": i, "synset": f"n{i}", "name": str(i)} for i in range(3)],
                      stats={"mean_rgb": [1.0, 2.0, 3.0]}, world_size=1)


def test_checkpoint_loads_weights_only_from_file_folder_and_s3(tmp_path, s3_bucket):
    state = small_state()
    folder = tmp_path / "checkpoint-00000010"
    path = ckpt.write_local(state, str(folder))
    plain = torch.load(path, weights_only=True)  # what any user can do, no pickled code runs
    assert plain["format"] == ckpt.FORMAT and plain["step"] == 10
    assert torch.equal(plain["model"]["weight"], state["model"]["weight"])
    assert torch.equal(plain["optimizer"]["state"][0]["velocity"], state["optimizer"]["state"][0]["velocity"])
    for location in (path, str(folder)):
        assert ckpt.load(location)["history"] == state["history"]

    run = f"s3://{s3_bucket}/runs/r1"
    best = ckpt.write_best(path, run)
    assert best == f"s3://{s3_bucket}/runs/r1/best/checkpoint.pt"
    loaded = ckpt.load(run)  # a run folder means its best checkpoint
    assert torch.equal(loaded["model"]["bias"], state["model"]["bias"]) and loaded["config"] == state["config"]


def test_bad_checkpoints_are_named(tmp_path):
    with pytest.raises(UserError, match="no checkpoint at"):
        ckpt.load(str(tmp_path))
    bad = tmp_path / "checkpoint.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match=f"{bad} is not a readable checkpoint"):
        ckpt.load(str(bad))

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))
    torch.save({"format": ckpt.FORMAT, "x": Evil()}, bad)
    with pytest.raises(UserError, match="not a readable checkpoint"):  # weights_only refuses the object
        ckpt.load(str(bad))


@pytest.mark.parametrize("where", ["local", "s3"])
def test_the_drivers_check_tells_a_cut_off_checkpoint_without_reading_its_tensors(where, tmp_path, request):
    """What `alexnet train` checks before resuming (trainer/checkpoint/resume.py): the archive's directory and index."""
    import zipfile

    state = {"format": ckpt.FORMAT, "model": {"w": torch.randn(64, 1024)}, "step": 7}
    whole = ckpt.to_bytes(state)
    folder = str(tmp_path) if where == "local" else f"s3://{request.getfixturevalue('s3_bucket')}/run"

    def saved(name: str, data: bytes) -> str:
        location = storage.join(folder, name, ckpt.FILE_NAME)
        storage.write_bytes_atomic(location, data)
        return location

    ckpt.check_readable(saved("whole", whole))
    ckpt.check_readable(storage.join(folder, "whole"))  # a checkpoint folder, as for `load`
    index = io.BytesIO()
    with zipfile.ZipFile(index, "w") as archive:  # a zip, but not torch.save's
        archive.writestr("archive/version", "3")
    for name, data in (("half", whole[:len(whole) // 2]), ("one-byte-short", whole[:-1]), ("empty", b""),
                       ("text", b"not a checkpoint"), ("other-zip", index.getvalue())):
        with pytest.raises(UserError, match=re.escape(f"{saved(name, data)} is not a readable checkpoint: ")):
            ckpt.check_readable(storage.join(folder, name))
    with pytest.raises(UserError, match="no checkpoint at"):
        ckpt.check_readable(storage.join(folder, "absent"))


@pytest.mark.parametrize("where", ["local", "s3"])
def test_metrics_log_appends_and_cuts_back_on_resume(where, tmp_path, request):
    run = str(tmp_path / "run") if where == "local" else f"s3://{request.getfixturevalue('s3_bucket')}/r"
    log = MetricsLog(run)
    for step in (1, 2, 3, 4):
        log.append({"kind": "step", "epoch": 0, "step": step, "loss": 5.0 - step})
    log.flush()
    assert [r["step"] for r in read_metrics(run)] == [1, 2, 3, 4]
    log.close()
    resumed = MetricsLog(run, {"kind": "resume", "step": 2})  # steps 3 and 4 will be redone: not twice
    assert [r["step"] for r in read_metrics(run)] == [1, 2, 2]  # the resume record in the same rewrite
    resumed.append({"kind": "step", "epoch": 0, "step": 3, "loss": 1.5})
    resumed.close()
    assert [(r["kind"], r["step"], r.get("loss")) for r in read_metrics(run)] == [
        ("step", 1, 4.0), ("step", 2, 3.0), ("resume", 2, None), ("step", 3, 1.5)]
    MetricsLog(run).close()  # a new run (no resume step) starts the file over
    assert read_metrics(run) == []


def test_plots_and_tensorboard(tmp_path):
    run = str(tmp_path / "run")
    log, board = MetricsLog(run), TensorBoardLog(run)
    for epoch in range(5):
        record = {"kind": "epoch", "epoch": epoch, "step": 10 * (epoch + 1), "lr": 0.01,
                  "train_loss": 5 - epoch, "train_top1_error": 0.9 - 0.1 * epoch, "val_loss": 5.5 - epoch,
                  "val_top1_error": 0.95 - 0.1 * epoch, "val_top5_error": 0.8 - 0.1 * epoch,
                  "decision": "reduce" if epoch == 2 else "continue"}
        log.append(record)
        board.add(record)
    log.close()
    board.close()
    written = plot_run(run)
    assert [w.rsplit("/", 1)[-1] for w in written] == ["loss.png", "error.png"]
    for location in written:
        from PIL import Image

        with Image.open(location) as image:
            assert image.format == "PNG" and image.size == (700, 450)

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(storage.join(run, "tensorboard"))
    events.Reload()
    assert [e.value for e in events.Scalars("epoch/val_top1_error")] == pytest.approx([0.95, 0.85, 0.75, 0.65, 0.55])

    with pytest.raises(UserError, match="does not exist"):
        plot_run(str(tmp_path / "nothing"))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "metrics.jsonl").write_text(json.dumps({"kind": "step"}) + "\n{oops\n")
    with pytest.raises(UserError, match="metrics.jsonl:2 is not JSON"):
        plot_run(str(tmp_path / "bad"))


def test_a_killed_savers_staging_folder_goes_at_the_next_save(tmp_path, monkeypatch):
    """A worker killed while writing a checkpoint leaves its staging folder (a whole model); the next save
    on that machine deletes it, and never a folder whose writer is still alive."""
    import subprocess
    import sys
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    saver = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    for pid in (saver.pid, dead.pid):
        (tmp_path / f"{ckpt.STAGING_PREFIX}{pid}-x1y2").mkdir()
        (tmp_path / f"{ckpt.STAGING_PREFIX}{pid}-x1y2" / ckpt.FILE_NAME).write_bytes(b"half a checkpoint")
    (tmp_path / "alexnet-ckpt-notapid").mkdir()  # not one of ours by name: left alone
    try:
        with ckpt.staging_folder() as folder:
            assert os.path.dirname(folder) == str(tmp_path) and str(os.getpid()) in os.path.basename(folder)
            ckpt.write_local(small_state(), folder)
        names = sorted(n for n in os.listdir(tmp_path) if n.startswith("alexnet-ckpt-"))
        assert names == sorted([f"{ckpt.STAGING_PREFIX}{saver.pid}-x1y2", "alexnet-ckpt-notapid"])
    finally:
        saver.kill()
        saver.wait()


def test_a_worker_falls_back_to_the_newest_readable_checkpoint(tmp_path):
    """Ray Train's latest cannot be read, nor the one before it: the worker takes the newest of the
    readable ones (a redone checkpoint's `-2` is newer than its first), not the oldest."""
    def write(name: str, readable: bool = True) -> None:
        (tmp_path / name).mkdir()
        path = tmp_path / name / ckpt.FILE_NAME
        if readable:
            torch.save({"format": ckpt.FORMAT, "name": name}, path)
        else:
            path.write_bytes(b"cut off")

    for name in ("checkpoint-00000002", "checkpoint-00000004", "checkpoint-00000004-2"):
        write(name)
    write("checkpoint-00000006", readable=False)
    write("checkpoint-00000008", readable=False)
    lines = []
    state, skipped = resume.load_newest_readable("checkpoint-00000008", str(tmp_path), log=lines.append)
    assert state["name"] == "checkpoint-00000004-2"
    assert skipped == ["checkpoint-00000008", "checkpoint-00000006"]
    assert lines[-1] == "resuming from the older checkpoint checkpoint-00000004-2"
