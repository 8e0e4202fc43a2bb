"""What a new user meets first: the CLI's own help, the console while training, the files a run leaves
(their permissions, their epoch numbers), giving a finished run again, and another Ray on the machine."""

from __future__ import annotations

import json
import os
import pty
import re
import stat
import subprocess
import time
from pathlib import Path

import pytest

from conftest import alexnet_cmd, drivers_of, run_cli
from trainer.config import FIELDS
from trainer.driver.progress import ConsoleProgress
from trainer.report import MetricsLog


def test_help_version_and_config_keys():
    top = run_cli("--help", timeout=60).stdout
    assert "Parsing only" not in top and "AlexNet" in top.splitlines()[2]
    for command in ("shard", "inspect", "summary", "train", "eval", "plot", "submit", "jobs", "demo"):
        assert re.search(rf"^    {command} +\S", top, re.M), command  # a one-line description each
        usage = run_cli(command, "--help", timeout=60).stdout
        assert usage.split("\n\n")[1].strip(), f"`alexnet {command} --help` has no description"
    assert re.fullmatch(r"alexnet-ray \d+\.\d+\.\d+\n", run_cli("--version", timeout=60).stdout)
    demo = " ".join(run_cli("demo", "--help", timeout=60).stdout.split())
    assert "about 4 minutes" in demo and "DIR/val_labels.csv ('file,synset' lines, beside val/)" in demo

    listing = run_cli("train", "--list-config", timeout=60).stdout
    for name in FIELDS:  # every key of the typed config, with its default and range
        assert re.search(rf"^  {name} \(\w+, default ", listing, re.M), name
    assert "  crop (int, default 224; >= 223, <= 227)" in listing
    assert "  gpus_per_worker (int, default 0; one of 0, 1, 2)" in listing
    assert "  lr (float, default 0.01; > 0.0)" in listing


def test_closed_pipe_and_a_bad_input_size_give_no_traceback():
    # `alexnet summary --json | head`, with the reader gone before a byte is written, every time
    piped = subprocess.Popen(alexnet_cmd("summary", "--json", "--width", "0.25"), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    piped.stdout.close()
    assert piped.stderr.read() == "" and piped.wait(timeout=120) == 141  # 128 + SIGPIPE, as `head` expects
    result = run_cli("summary", "--input", "200", check=False, timeout=60)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == ("alexnet summary: error: --input 200: AlexNet takes square inputs of 223 to 227 "
                             "pixels (224, the paper's crop, or 227, Caffe's)\n")


def _step(epoch: int, step: int, batch: int) -> dict:
    return {"kind": "step", "epoch": epoch, "step": step, "batch": batch, "batches": 4, "loss": 2.0, "lr": 0.01,
            "images_per_s": 123.4}


def _epoch(epoch: int, step: int) -> dict:
    return {"kind": "epoch", "epoch": epoch, "step": step, "lr": 0.01, "train_loss": 2.0,
            "train_top1_error": 0.9, "val_loss": 2.1, "val_top1_error": 0.8, "val_top5_error": 0.4,
            "decision": "continue", "seconds": 3.0}


def test_progress_is_a_bar_on_a_terminal_and_lines_elsewhere(tmp_path):
    """The console follows metrics.jsonl as rank 0 writes it; a resumed run's old records stay unshown."""
    run = str(tmp_path / "run")
    log = MetricsLog(run)
    log.append(_step(1, 2, 2))  # from before this command: not shown again
    leader, follower = pty.openpty()
    terminal = os.fdopen(follower, "w")
    plain = open(tmp_path / "console.txt", "w")
    with ConsoleProgress(run, epochs=2, out=terminal, interval=0.05), \
            ConsoleProgress(run, epochs=2, out=plain, interval=0.05):
        for record in (_step(1, 4, 4), _epoch(1, 4), _step(2, 6, 2)):
            log.append(record)
            time.sleep(0.3)  # each record reaches the console while the run goes on
    log.close()
    terminal.close()
    plain.close()
    shown = os.read(leader, 65536).decode()
    os.close(leader)
    bar = "epoch 2/2 [############............] 2/4 steps, loss 2.000, lr 0.01, 123 images/s"
    assert f"\r\x1b[K{bar}" in shown  # redrawn in place
    assert "epoch 1/2: train loss 2.000, top-1 error 0.900; val loss 2.100, top-1 error 0.800, top-5 error " \
           "0.400; lr 0.01 -> continue (3 s)" in shown
    assert "epoch 1/2 [############." not in shown  # the record from before
    lines = (tmp_path / "console.txt").read_text().splitlines()
    assert "\r" not in "".join(lines) and len(lines) == 3
    assert lines[0].startswith("epoch 1/2 [########################] 4/4 steps") and lines[2] == bar


@pytest.mark.parametrize("where", ["local", "s3"])
def test_progress_after_a_resume_shows_the_redone_steps_not_the_first_try(where, tmp_path, request):
    """A run that goes back to a checkpoint (a lost worker, a resize) cuts metrics.jsonl back and redoes the
    steps after it, maybe with other numbers: the console says so and shows what was redone, once."""
    run = str(tmp_path / "run") if where == "local" else f"s3://{request.getfixturevalue('s3_bucket')}/run"
    out = open(tmp_path / "console.txt", "w")
    log = MetricsLog(run)
    progress = ConsoleProgress(run, epochs=2, out=out)  # polled by hand here: no thread, no timing
    for record in (_step(1, 2, 2), _step(1, 4, 4), _epoch(1, 4), _step(2, 6, 2)):
        log.append(record)
    log.close()
    progress._show_new()
    resumed = {"kind": "resume", "epoch": 1, "step": 2, "batch": 2, "world_size": 1, "from_world_size": 2,
               "skipped": ["checkpoint-00000004"]}
    log = MetricsLog(run, resumed)  # back to step 2, with one replica
    progress._show_new()
    for record in ({**_step(1, 3, 3), "loss": 1.0}, {**_step(1, 4, 4), "loss": 0.5}):
        log.append(record)
    log.flush()
    progress._show_new()
    log.append(_epoch(1, 4))
    log.close()
    progress._show_new()
    out.close()
    lines = (tmp_path / "console.txt").read_text().splitlines()
    assert [line.split(",")[0] for line in lines] == [
        "epoch 1/2 [############............] 2/4 steps", "epoch 1/2 [########################] 4/4 steps",
        "epoch 1/2: train loss 2.000", "epoch 2/2 [############............] 2/4 steps",
        "resumed from the checkpoint at step 2: epoch 1/2", "epoch 1/2 [##################......] 3/4 steps",
        "epoch 1/2 [########################] 4/4 steps", "epoch 1/2: train loss 2.000"]
    assert lines[4] == ("resumed from the checkpoint at step 2: epoch 1/2, batch 2, 1 replica (was 2: the epoch's "
                        "untrained samples dealt anew); skipped unreadable checkpoint-00000004")
    assert "loss 1.000" in lines[5] and "loss 0.500" in lines[6]


def test_progress_after_a_restart_before_any_checkpoint_shows_the_run_starting_over(tmp_path):
    run = str(tmp_path / "run")
    out = open(tmp_path / "console.txt", "w")
    log = MetricsLog(run)
    progress = ConsoleProgress(run, epochs=2, out=out)
    for step in (1, 2, 3):
        log.append(_step(1, step, step))
    progress._show_new()
    log.close()
    log = MetricsLog(run)  # a worker died before the first checkpoint: Ray Train starts the run again
    for step in (1, 2):
        log.append({**_step(1, step, step), "loss": 3.0})
    log.close()
    progress._show_new()
    out.close()
    lines = (tmp_path / "console.txt").read_text().splitlines()
    steps = [line.split(",")[0][-9:] for line in lines[:3] + lines[4:]]
    assert steps == ["1/4 steps", "2/4 steps", "3/4 steps", "1/4 steps", "2/4 steps"]
    assert lines[3] == "started over from the first step: no checkpoint had been registered yet"
    assert "loss 3.000" in lines[4] and "loss 3.000" in lines[5]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.slow
def test_a_run_beside_another_ray_its_console_files_and_a_second_call(small_dataset, ray_head, foreign_ray,
                                                                     tmp_path):
    """No --address: the run starts its own local Ray while the session's head and another job's head
    (the one Ray's temp folder records) run; the relative --storage is the user's. Under umask 027
    every file it writes is 0640; epochs count from 1 everywhere; giving the finished run again with a
    larger `epochs` says how to extend it, before Ray starts, and changes nothing."""
    runs = tmp_path / "runs"
    settings = {"width": 0.25, "batch_size": 8, "eval_batch_size": 20, "epochs": 2, "steps_per_epoch": 3,
                "log_every_steps": 1, "loader_workers": 0, "checkpoint_every_steps": 0}
    args = ["train", "--data", small_dataset, "--name", "r", "--storage", runs,
            *[a for k, v in settings.items() for a in ("--set", f"{k}={v}")]]
    # Ray's own auth default (the suite pins it off), its token in a home of its own
    env = {**{k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")},
           "HOME": str(tmp_path / "home")}
    relative = [a if a != runs else "runs" for a in args]
    # stdout read by lines to its end (communicate() would skip what the line reader had buffered)
    errors = tmp_path / "stderr.txt"
    with errors.open("w") as stderr:
        driver = subprocess.Popen(["sh", "-c", 'umask 027 && exec "$@"', "sh", *alexnet_cmd(*relative)], env=env,
                                  stdout=subprocess.PIPE, stderr=stderr, text=True, cwd=tmp_path)
    try:
        lines = []
        for line in driver.stdout:
            lines.append(line)
            if line.startswith("epoch 1/2:"):  # the first epoch's line arrives while the run goes on
                assert driver.poll() is None
        driver.wait(timeout=600)
    finally:
        driver.kill()
    out, err = "".join(lines), errors.read_text()
    assert driver.returncode == 0, err[-3000:]
    console = out + err
    assert "multiple active Ray" not in console and "PlacementGroupCleaner" not in console, err[-3000:]
    assert driver.pid not in drivers_of(foreign_ray["session"])  # the run never joined the foreign head
    # no alarm that is not one: Ray's note that it turned token auth on, its PreemptionWatcher error line
    assert "Token authentication" not in console and "PreemptionWatcher" not in console, err[-3000:]
    # the one traceback Ray Train prints by design: its warning that a 5 s request to its autoscaling
    # actor timed out on an overloaded CPU ("safe to ignore"); any other is a failure
    assert console.count("Traceback") <= console.count("Failed to send resource request"), err[-3000:]
    assert re.search(r"^epoch 2/2 \[#{8}\.{16}\] 1/3 steps, loss [\d.]+, lr 0.01, \d+ images/s$", out, re.M)
    assert re.search(r"^epoch 2/2: train loss .* -> stop \(\d+ s\)$", out, re.M)

    run = runs / "r"
    written = [run / "config.json", run / "metrics.jsonl", run / "best" / "checkpoint.pt",
               run / "plots" / "loss.png", run / "plots" / "error.png"]
    assert {p.name: oct(_mode(p)) for p in written} == {p.name: "0o640" for p in written}
    # the session's dataset (manifests, indexes, stats) was written under this process's umask, 022 usually
    umask = os.umask(0)
    os.umask(umask)
    dataset = [p for p in Path(small_dataset).iterdir() if not p.name.endswith(".tar")]
    assert len(dataset) >= 5
    assert {p.name: oct(_mode(p)) for p in dataset} == {p.name: oct(0o666 & ~umask) for p in dataset}

    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if r["kind"] == "epoch"] == [1, 2]
    assert [r["epoch"] for r in records if r["kind"] == "step"] == [1, 1, 1, 2, 2, 2]
    best = min((r for r in records if r["kind"] == "epoch"), key=lambda r: (r["val_top1_error"], r["epoch"]))
    scored = json.loads(run_cli("eval", "--checkpoint", run, "--data", small_dataset, "--json",
                                timeout=120).stdout.strip().splitlines()[-1])
    assert scored["epoch"] == best["epoch"]  # the best checkpoint names the epoch metrics.jsonl names

    config = (run / "config.json").read_bytes()
    again = run_cli(*args, "--set", "epochs=5", env={"RAY_ADDRESS": ""}, timeout=120)
    assert again.stdout.strip() == (
        f"alexnet train: run {run} finished after 2 epochs (max epochs); nothing to do. A finished run is not "
        "extended in place: to train longer, start it over with --fresh and a larger epochs (e.g. --set "
        "epochs=5), or under another --name")
    assert (run / "config.json").read_bytes() == config


def test_cli_lists_subcommands():
    result = subprocess.run(alexnet_cmd("--help"), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert "shard" in result.stdout and "inspect" in result.stdout


def test_cli_reports_a_bad_value_in_one_line_before_starting_anything(tmp_path):
    result = run_cli("train", "--data", str(tmp_path), "--name", "r", "--set", "epochs=-1", check=False,
                     timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip() == ("alexnet train: error: --set epochs=-1: epochs=-1 is out of range: "
                                     "must be at least 1")
    result = run_cli("train", "--data", str(tmp_path / "nothing"), "--name", "r", check=False, timeout=60)
    assert result.returncode == 2 and "train.manifest.json" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
