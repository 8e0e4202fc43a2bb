"""`alexnet train` end to end: real shards, a real Ray instance, the real CLI, two DDP replicas.

Ray Train costs ~20 s to start per trainer, so the runs are shared: one uninterrupted reference run,
against which a run whose worker is SIGKILLed mid-epoch and a run whose driver is killed and the same
command given again (on S3 storage) are compared bitwise.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time

import psutil
import pyarrow.fs as pafs
import pytest
import torch

from conftest import alexnet_cmd, run_cli, train_args
from pipeline import storage
from trainer import checkpoint as ckpt

pytestmark = pytest.mark.slow

STEPS = 14
KILL_STEP = 10


def checkpoint_names(run_dir: str) -> list[str]:
    fs, path = storage.resolve(run_dir)
    infos = fs.get_file_info(pafs.FileSelector(path))
    return sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory
                  and i.base_name.startswith("checkpoint-"))


def final_state(run_dir: str) -> dict:
    return ckpt.load(storage.join(run_dir, checkpoint_names(run_dir)[-1]))


def records(run_dir: str, kind: str) -> list[dict]:
    text = storage.read_bytes(storage.join(run_dir, "metrics.jsonl")).decode()
    return [r for r in map(json.loads, text.splitlines()) if r["kind"] == kind]


def assert_bitwise_equal(run_dir: str, reference_dir: str) -> None:
    mine, theirs = final_state(run_dir), final_state(reference_dir)
    assert (mine["epoch"], mine["step"]) == (theirs["epoch"], theirs["step"]) == (2, STEPS)
    for key, value in theirs["model"].items():
        assert torch.equal(mine["model"][key], value), f"{key} differs from the uninterrupted run"
    for index, state in theirs["optimizer"]["state"].items():
        assert torch.equal(mine["optimizer"]["state"][index]["velocity"], state["velocity"])
    assert mine["history"] == [{**h, "seconds": m["seconds"]} for h, m in zip(theirs["history"], mine["history"])]
    # every step appears once in the metrics file even though steps 9-10 ran twice
    steps = [r["step"] for r in records(run_dir, "step")]
    assert steps == list(range(2, STEPS + 1, 2))


def test_two_replicas_train_and_fill_the_run_folder(reference, small_dataset):
    end = records(reference, "end")[-1]
    state = final_state(reference)
    # both DDP replicas computed the same weights, and the checkpoint holds exactly those weights
    assert len(end["replica_digests"]) == 2 and len(set(end["replica_digests"])) == 1
    assert end["replica_digests"][0] == ckpt.weights_digest(state["model"])
    assert (end["step"], end["epochs"], end["reason"]) == (STEPS, 2, "max epochs")

    # checkpoint contents (DESIGN.md), loadable with weights_only=True by anyone
    assert {"model", "optimizer", "schedule", "epoch", "step", "loader", "rng", "config", "history",
            "world_size"} <= state.keys()
    assert state["world_size"] == 2 and len(state["loader"]) == len(state["rng"]) == 2
    assert (state["loader"][0]["epoch"], state["loader"][0]["batches"]) == (1, 7)  # stopped after epoch 1
    assert state["config"]["width"] == 0.25 and state["num_classes"] == 10 and len(state["history"]) == 2
    # keep the last K=2 checkpoints, plus the best one apart
    assert checkpoint_names(reference) == ["checkpoint-00000012", "checkpoint-00000014"]
    best = ckpt.load(reference)
    best_epoch = min(state["history"], key=lambda h: h["val_top1_error"])["epoch"]
    assert best["epoch"] == best_epoch + 1

    epochs = records(reference, "epoch")
    assert [e["epoch"] for e in epochs] == [0, 1] and [e["decision"] for e in epochs] == ["continue", "stop"]
    assert all(0 <= e["val_top1_error"] <= 1 and e["val_loss"] > 0 for e in epochs)
    steps = records(reference, "step")
    assert all(s["lr"] == 0.01 and s["images_per_s"] > 0 for s in steps)
    for name in ("config.json", "plots/loss.png", "plots/error.png"):
        assert os.path.getsize(os.path.join(reference, name)) > 0
    assert any(n.startswith("events.out.tfevents") for n in os.listdir(os.path.join(reference, "tensorboard")))

    # the loop's validation (centre crop, split over 2 ranks, all-reduced) = `alexnet eval` on one process
    result = run_cli("eval", "--checkpoint", storage.join(reference, "checkpoint-00000014"),
                     "--data", small_dataset, "--json", timeout=120)
    scored = json.loads(result.stdout.strip().splitlines()[-1])
    assert scored["samples"] == 40
    assert scored["top1_error"] == pytest.approx(epochs[-1]["val_top1_error"], abs=1e-9)
    assert scored["top5_error"] == pytest.approx(epochs[-1]["val_top5_error"], abs=1e-9)
    assert scored["loss"] == pytest.approx(epochs[-1]["val_loss"], rel=1e-4)


def start_paused(args: list[str], pid_file: str, rank: int) -> tuple[subprocess.Popen, psutil.Process]:
    """Start `alexnet train` whose rank `rank` stops after step KILL_STEP; return the driver and it."""
    env = {**os.environ, "ALEXNET_DEBUG_PAUSE_STEP": str(KILL_STEP), "ALEXNET_DEBUG_PAUSE_RANK": str(rank),
           "ALEXNET_DEBUG_PID_FILE": pid_file}
    driver = subprocess.Popen(alexnet_cmd(*args), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
    deadline = time.time() + 300
    while not os.path.exists(pid_file):
        if driver.poll() is not None or time.time() > deadline:
            driver.kill()
            pytest.fail(f"the run never reached step {KILL_STEP}:\n{driver.communicate()[0][-3000:]}")
        time.sleep(0.5)
    worker = psutil.Process(int(open(pid_file).read()))
    assert worker.pid != driver.pid and "RayTrainWorker" in worker.name()
    return driver, worker


def test_killed_worker_recovers_by_itself_bitwise(reference, small_dataset, ray_head, tiny_config, tmp_path):
    run_dir = str(tmp_path / "runs" / "killed")
    args = train_args(small_dataset, "killed", str(tmp_path / "runs"), tiny_config, ray_head)
    driver, worker = start_paused(args, str(tmp_path / "worker.pid"), rank=1)
    worker.send_signal(signal.SIGKILL)  # from outside, like the OOM killer or a lost node
    output, _ = driver.communicate(timeout=400)
    assert driver.returncode == 0, output[-3000:]
    resumes = records(run_dir, "resume")
    assert [(r["epoch"], r["step"], r["batch"]) for r in resumes] == [(1, 8, 1)]  # mid-epoch, exact batch
    assert_bitwise_equal(run_dir, reference)


def test_same_command_continues_a_run_whose_driver_died_on_s3(reference, small_dataset, ray_head, tiny_config,
                                                              s3_bucket, tmp_path):
    storage_url = f"s3://{s3_bucket}/runs"
    run_dir = f"{storage_url}/restarted"
    args = train_args(small_dataset, "restarted", storage_url, tiny_config, ray_head)
    driver, worker = start_paused(args, str(tmp_path / "worker.pid"), rank=0)
    driver.send_signal(signal.SIGKILL)  # the driver dies: its Ray job and workers go with it
    driver.communicate(timeout=60)
    worker.wait(timeout=120)
    assert checkpoint_names(run_dir)[-1] == "checkpoint-00000008"  # what survived, on S3

    result = run_cli(*args, timeout=400)  # the same command again
    assert "continuing run" in result.stdout
    assert [(r["epoch"], r["step"], r["batch"]) for r in records(run_dir, "resume")] == [(1, 8, 1)]
    assert_bitwise_equal(run_dir, reference)


def test_clear_errors_before_any_worker_starts(reference, small_dataset, ray_head, tiny_config, tmp_path):
    runs = str(tmp_path / "runs")
    result = run_cli(*train_args(small_dataset, "gpus", runs, tiny_config, ray_head), "--gpus-per-worker", "2",
                     check=False, timeout=120)
    assert result.returncode == 2
    assert "asks for 4 GPUs; the Ray cluster has 0" in result.stderr
    assert not os.path.exists(os.path.join(runs, "gpus"))

    unfinished = tmp_path / "unfinished"
    shutil.copytree(small_dataset, unfinished)
    os.unlink(unfinished / "val.manifest.json")  # the val split never finished
    result = run_cli(*train_args(str(unfinished), "x", runs, tiny_config, ray_head), check=False, timeout=60)
    assert result.returncode == 2 and "val.manifest.json" in result.stderr

    # the same run name with another model shape cannot continue that run
    result = run_cli(*train_args(small_dataset, "reference", os.path.dirname(reference), tiny_config, ray_head),
                     "--set", "width=0.5", check=False, timeout=60)
    assert result.returncode == 2 and "width: 0.25 -> 0.5" in result.stderr and "--fresh" in result.stderr
