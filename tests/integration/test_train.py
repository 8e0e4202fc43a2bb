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
import yaml

from conftest import TINY, alexnet_cmd, run_cli, train_args, wait_for_pause
from pipeline import storage
from trainer.checkpoint import format as ckpt

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

    # checkpoint contents (docs/design.md), loadable with weights_only=True by anyone
    assert {"model", "optimizer", "schedule", "epoch", "step", "loader", "rng", "config", "history",
            "world_size"} <= state.keys()
    assert state["world_size"] == 2 and len(state["loader"]) == len(state["rng"]) == 2
    assert (state["loader"][0]["epoch"], state["loader"][0]["batches"]) == (1, 7)  # stopped after epoch 1
    assert state["config"]["width"] == 0.25 and state["num_classes"] == 10 and len(state["history"]) == 2
    # keep the last K=2 checkpoints, plus the best one apart
    assert checkpoint_names(reference) == ["checkpoint-00000012", "checkpoint-00000014"]
    best = ckpt.load(reference)
    best_epoch = min(state["history"], key=lambda h: h["val_top1_error"])["epoch"]  # numbered from 1
    assert best["epoch"] == best_epoch  # epochs done when the best checkpoint was written

    epochs = records(reference, "epoch")
    assert [e["epoch"] for e in epochs] == [1, 2] and [e["decision"] for e in epochs] == ["continue", "stop"]
    assert all(0 <= e["val_top1_error"] <= 1 and e["val_loss"] > 0 for e in epochs)
    steps = records(reference, "step")
    assert all(s["images_per_s"] > 0 for s in steps)
    # warmup: step s trains at 0.01 x (0.1 + 0.9 x epochs done / 1.5), epochs done = (s - 1) / 7, then 0.01
    assert [s["lr"] for s in steps] == pytest.approx(
        [0.01 * min(1.0, 0.1 + 0.9 * (s["step"] - 1) / 7 / 1.5) for s in steps], rel=1e-12)
    assert steps[0]["lr"] < 0.002 and steps[-1]["lr"] == 0.01
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


def start_paused(args: list[str], pid_file: str, rank: int, points: str = str(KILL_STEP),
                 env: dict | None = None, new_session: bool = False) -> tuple[subprocess.Popen, psutil.Process]:
    """Start `alexnet train` whose rank `rank` stops at the hook's `points` (after step KILL_STEP unless
    given; several, comma-separated, pause at PID_FILE.POINT each); return the driver and the worker
    paused at the first."""
    env = {**os.environ, **(env or {}), "ALEXNET_DEBUG_PAUSE_STEP": points, "ALEXNET_DEBUG_PAUSE_RANK": str(rank),
           "ALEXNET_DEBUG_PID_FILE": pid_file}
    driver = subprocess.Popen(alexnet_cmd(*args), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, start_new_session=new_session)
    first = pid_file if "," not in points else f"{pid_file}.{points.split(',')[0]}"
    worker = psutil.Process(wait_for_pause(driver, first))
    assert worker.pid != driver.pid and "RayTrainWorker" in worker.name()
    return driver, worker


# A worker killed mid-epoch (its node lost) resumes at the exact batch from the last checkpoint it can read,
# bitwise: tests/integration/test_autoscaling.py, on the autoscaling cluster.


def test_same_command_continues_after_driver_death_past_a_cut_off_upload(reference, small_dataset, ray_head,
                                                                         tiny_config, s3_bucket, tmp_path):
    storage_url = f"s3://{s3_bucket}/runs"
    run_dir = f"{storage_url}/restarted"
    args = train_args(small_dataset, "restarted", storage_url, tiny_config, ray_head)
    driver, worker = start_paused(args, str(tmp_path / "worker.pid"), rank=0)
    driver.send_signal(signal.SIGINT)  # Ctrl-C: Ray Train aborts the run, its workers go with it
    console = driver.communicate(timeout=120)[0]
    worker.wait(timeout=120)
    assert driver.returncode == 130, console[-3000:]
    assert console.strip().splitlines()[-1] == (
        f"alexnet train: interrupted; the run folder {run_dir} keeps its last checkpoint: give the same "
        "command again to continue from it")
    assert checkpoint_names(run_dir)[-1] == "checkpoint-00000008"  # what survived, on S3
    # a checkpoint uploaded, its registration with Ray Train cut off by the interrupt (what a Ctrl-C
    # between a worker's upload and the controller's next poll leaves): never resumed from, never pruned
    fs, root = storage.resolve(run_dir)
    fs.copy_file(f"{root}/checkpoint-00000008/checkpoint.pt", f"{root}/checkpoint-00000010/checkpoint.pt")
    # and the latest checkpoint's upload was cut off half way: resume falls back to the one before it
    fs, root = storage.resolve(f"{run_dir}/checkpoint-00000008/checkpoint.pt")
    with fs.open_input_file(root) as f:
        whole = f.read()
    with fs.open_output_stream(root) as f:
        f.write(whole[:len(whole) // 2])

    result = run_cli(*args, timeout=400)  # the same command again
    assert "continuing run" in result.stdout
    assert "skipping checkpoint checkpoint-00000008: checkpoint.pt is not a readable checkpoint" in result.stdout
    assert "removing checkpoint checkpoint-00000010: written but never registered with Ray Train" in result.stdout
    assert [(r["epoch"], r["step"], r["batch"]) for r in records(run_dir, "resume")] == [(2, 7, 0)]
    assert_bitwise_equal(run_dir, reference)
    # keep_checkpoints=2, plus the best copy apart: nothing left behind by the interrupted attempt
    assert checkpoint_names(run_dir) == ["checkpoint-00000012", "checkpoint-00000014"]
    assert storage.exists(f"{run_dir}/best/checkpoint.pt")


def test_ctrl_c_before_the_first_checkpoint_says_there_is_none(small_dataset, ray_head, tiny_config, tmp_path):
    """Interrupted before any checkpoint, the run says nothing of one, quietly, and the same command
    again says it starts over rather than continues. The second time it runs on a private local instance
    in a session of its own, and Ctrl-C goes to the whole process group, as a terminal sends it: the
    instance's processes ignore it (else the dashboard's processes die of it, and Ray Train's abort waits
    on the state API they served), so only the driver acts on it."""
    runs = str(tmp_path / "runs")
    run_dir = os.path.join(runs, "early")
    args = train_args(small_dataset, "early", runs, tiny_config, ray_head)
    for attempt in range(2):
        local = attempt == 1
        driver, _ = start_paused(args[:-2] if local else args, str(tmp_path / f"worker{attempt}.pid"), rank=0,
                                 points="1", new_session=local)  # paused after step 1 of 14
        if local:
            group = [p for p in psutil.Process(driver.pid).children(recursive=True) if _group_of(p) == driver.pid]
            assert any("raylet" in p.name() for p in group), [p.name() for p in group]
            deaf = [p for p in group if _deaf_to_sigint(p)]
            assert deaf == group, f"would take Ctrl-C: {[p.name() for p in group if p not in deaf]}"
        started = time.monotonic()
        if local:
            os.killpg(driver.pid, signal.SIGINT)
        else:
            driver.send_signal(signal.SIGINT)
        console = driver.communicate(timeout=120)[0]
        print(f"attempt {attempt}: exit {time.monotonic() - started:.1f} s after Ctrl-C")
        assert driver.returncode == 130, console[-3000:]
        assert console.strip().splitlines()[-1] == (
            f"alexnet train: interrupted; no checkpoint was written yet: the same command starts the run "
            f"{run_dir} again from the beginning")
        assert "last checkpoint" not in console and "PlacementGroupCleaner" not in console, console[-3000:]
        assert "\x1b[" not in console  # no colour codes where the console is not a terminal
        assert checkpoint_names(run_dir) == []
        if attempt:
            assert f"alexnet train: run {run_dir} stopped before its first checkpoint: starting it again" in console


def _group_of(process: psutil.Process) -> int | None:
    try:
        return os.getpgid(process.pid)
    except ProcessLookupError:
        return None


def _deaf_to_sigint(process: psutil.Process) -> bool:
    """SIGINT ignored (SigIgn in /proc/PID/status), or blocked in every thread (SigBlk of each task, as
    Ray starts its own processes): masks in hex, bit N-1 for signal N."""
    bit = 1 << (signal.SIGINT - 1)

    def mask(path: str, field: str) -> int:
        with open(path) as f:
            return int(next(line.split()[1] for line in f if line.startswith(field + ":")), 16)

    try:
        if mask(f"/proc/{process.pid}/status", "SigIgn") & bit:
            return True
        return all(mask(f"/proc/{process.pid}/task/{task}/status", "SigBlk") & bit
                   for task in os.listdir(f"/proc/{process.pid}/task"))
    except (FileNotFoundError, ProcessLookupError):  # gone meanwhile: nothing left to interrupt
        return True


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


# --- issue 18: a run forced into plateaus, and what its batches carry -----------------------------------
# No epoch can improve by more than threshold 1 (errors are in [0, 1]), so with patience 1 every epoch
# after the first is a plateau: the lr is divided by 10 after epochs 1, 2 and 3, and the fourth plateau
# (epoch 4) ends the run. An lr of 1e-20 cannot move a float32 weight (w + 1e-20 * g == w), so every
# epoch trains and validates the same weights: the losses then show what each pass fed the model.
PLATEAU = {**TINY, "warmup_epochs": 0, "lr": 1e-20, "threshold": 1.0, "patience": 1, "max_reductions": 3, "epochs": 10,
           "steps_per_epoch": 2, "log_every_steps": 1, "checkpoint_every_steps": 0, "keep_checkpoints": 1,
           "dropout": 0.0}


@pytest.fixture(scope="module")
def plateau_run(small_dataset, ray_head, tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("plateau")
    (folder / "plateau.yaml").write_text(yaml.safe_dump(PLATEAU))
    run_cli(*train_args(small_dataset, "plateau", str(folder / "runs"), str(folder / "plateau.yaml"), ray_head),
            timeout=400)
    return str(folder / "runs" / "plateau")


def lrs_equal(values) -> object:
    """pytest.approx for lrs of 1e-20 and less: its default absolute tolerance (1e-12) would accept any."""
    return pytest.approx(values, rel=1e-9, abs=0)


def test_plateaus_reduce_the_lr_three_times_then_stop(plateau_run):
    epochs = records(plateau_run, "epoch")
    assert [e["decision"] for e in epochs] == ["continue", "reduce", "reduce", "reduce", "stop"]
    assert [e["lr"] for e in epochs] == lrs_equal([1e-20, 1e-21, 1e-22, 1e-23, 1e-23])  # after each epoch
    steps = records(plateau_run, "step")  # the optimiser's lr at every step: the reductions reached it
    assert [(s["epoch"], s["step"]) for s in steps] == [(e, 2 * (e - 1) + n) for e in range(1, 6) for n in (1, 2)]
    trained_with = [1e-20, 1e-20, 1e-21, 1e-22, 1e-23]  # epoch e (from 1) trains with the lr set after epoch e - 1
    assert [s["lr"] for s in steps] == lrs_equal([lr for lr in trained_with for _ in (1, 2)])
    end = records(plateau_run, "end")[-1]
    assert (end["step"], end["epochs"], end["reason"]) == (10, 5, "schedule")

    state = final_state(plateau_run)
    assert (state["epoch"], state["step"]) == (5, 10)
    assert [g["lr"] for g in state["optimizer"]["param_groups"]] == lrs_equal([1e-23] * 2)
    assert state["schedule"]["reductions"] == [1, 2, 3] and state["schedule"]["lr"] == lrs_equal(1e-23)
    json.dumps(state["schedule"], allow_nan=False)


def test_training_batches_carry_colour_noise_and_validation_batches_do_not(plateau_run, small_dataset):
    """The weights never move (lr 1e-20), so: step 1's logged loss, on the batch each rank's loader gives
    first, differs from the loss of the same batches without colour noise; and every epoch's validation
    loss is the same, and is that of a pass without noise over the val split."""
    import torch.nn.functional as F

    from pipeline.loader.augment import BatchTransform
    from pipeline.loader.loaders import EvalLoader, TrainLoader
    from trainer.evaluate import errors_from_totals, eval_totals
    from trainer.model import AlexNet

    state = final_state(plateau_run)
    config = state["config"]
    model = AlexNet(state["num_classes"], config["variant"], ("cpu", "cpu"), width=config["width"],
                    dropout=config["dropout"])
    model.load_state_dict(state["model"])
    plain = BatchTransform(state["stats"], pca_std=0.0)
    with torch.no_grad():
        plain_losses = []
        for rank in range(2):
            images, labels = next(iter(TrainLoader(small_dataset, 8, rank=rank, world_size=2, seed=0,
                                                   num_workers=0)))
            plain_losses.append(F.cross_entropy(model(plain(images)), labels).item())
    plain_loss = sum(plain_losses) / 2
    logged = records(plateau_run, "step")[0]
    assert logged["step"] == 1 and logged["loss"] != pytest.approx(plain_loss, rel=1e-6, abs=0)
    assert abs(logged["loss"] - plain_loss) < 0.01 * plain_loss  # a nudge to the same images, not others

    val_losses = [e["val_loss"] for e in records(plateau_run, "epoch")]
    scored = errors_from_totals(eval_totals(model, EvalLoader(small_dataset, 16, num_workers=0), plain, "cpu"))
    assert val_losses == pytest.approx([scored["loss"]] * 5, rel=1e-6, abs=0)


# --- issue 25: a compiled run through DDP, the failure-test hook and resumes, then eager again ----------
def test_a_compiled_run_survives_a_lost_worker_and_an_eager_run_continues_it(reference, small_dataset, ray_head,
                                                                           tmp_path):
    """compile: true on two DDP replicas: a worker killed after step 6 is restarted by Ray Train from the
    compiled run's step-4 checkpoint; a Ctrl-C after step 10 stops the run; the same run continued with
    compile: false resumes the compiled step-8 checkpoint and ends bitwise where the eager reference
    ends. The backend is aot_eager (ALEXNET_DEBUG_COMPILE_BACKEND): the same capture, DDP graph breaks and
    state_dict as inductor's, and eager's numbers. With inductor this test took 205 s here against 91 s,
    and its fused kernels round differently (not bitwise); benchmarks/bench_trainer.py --variants
    fp32+compile runs it."""
    config = tmp_path / "compiled.yaml"
    config.write_text(yaml.safe_dump({**TINY, "compile": True}))
    runs = str(tmp_path / "runs")
    run_dir = os.path.join(runs, "compiled")
    args = train_args(small_dataset, "compiled", runs, str(config), ray_head)
    pid_file = str(tmp_path / "worker.pid")
    driver, worker = start_paused(args, pid_file, rank=1, points="6,10",
                                  env={"ALEXNET_DEBUG_COMPILE_BACKEND": "aot_eager"})
    try:
        worker.kill()  # the failure Ray Train recovers from
        wait_for_pause(driver, f"{pid_file}.10")
        driver.send_signal(signal.SIGINT)
        console = driver.communicate(timeout=120)[0]
    finally:
        driver.kill()
    assert driver.returncode == 130, console[-3000:]
    assert console.splitlines()[0] == ("alexnet train: precision fp32, deterministic kernels (bitwise "
                                       "reproducible), compiled")
    assert checkpoint_names(run_dir)[-1] == "checkpoint-00000008"

    result = run_cli(*args, "--set", "compile=false", timeout=400)  # eager, from the compiled checkpoint
    assert "compiled" not in result.stdout.splitlines()[0]
    assert [(r["step"], r["batch"]) for r in records(run_dir, "resume")] == [(4, 4), (8, 1)]
    assert list(final_state(run_dir)["model"]) == list(final_state(reference)["model"])  # no `_orig_mod.`
    assert_bitwise_equal(run_dir, reference)  # aot_eager computes what eager does
