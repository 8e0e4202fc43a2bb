"""Long runs meet damaged checkpoints: a truncated file, a deleted folder, an upload cut off. Resume falls back
to the newest readable checkpoint, says what it skipped, and leaves a run folder Ray Train accepts; user
errors stop a run at its first attempt. Runs are copies of the session's reference run (tests/conftest.py).
A checkpoint that goes bad while the run is up is tested with a lost node in tests/integration/test_autoscaling.py; the
same command resuming past an upload cut off, end to end, with the driver's death on S3 in tests/integration/test_train.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil

import pytest

from conftest import resize_disk, run_cli, train_args
from test_train import checkpoint_names
from trainer.checkpoint import resume

pytestmark = pytest.mark.slow


def damage(run_dir: str, name: str, how: str) -> None:
    folder = os.path.join(run_dir, name)
    if how == "truncated":
        path = os.path.join(folder, "checkpoint.pt")
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
    elif how == "deleted":
        shutil.rmtree(folder)
    else:  # an upload cut off before the file arrived
        os.unlink(os.path.join(folder, "checkpoint.pt"))


def listed(run_dir: str) -> tuple[list[str], str | None]:
    with open(os.path.join(run_dir, resume.SNAPSHOT)) as f:
        snapshot = json.load(f)
    latest = snapshot["latest_checkpoint_result"]
    return [r["checkpoint_dir_name"] for r in snapshot["checkpoint_results"]], latest and latest["checkpoint_dir_name"]


@pytest.mark.parametrize("how", ["truncated", "deleted", "cut off"])
def test_repair_drops_an_unreadable_latest_checkpoint(how, reference, tmp_path):
    from ray.train import Result

    run_dir = str(tmp_path / "reference")
    shutil.copytree(reference, run_dir)
    damage(run_dir, "checkpoint-00000014", how)
    if how == "deleted":  # what Ray Train makes of it unrepaired: a run folder only --fresh can reuse
        with pytest.raises(Exception, match="does not exist anymore"):
            Result.from_path(run_dir)
    said = []
    assert resume.repair_run(run_dir, log=said.append) == ["checkpoint-00000014"]
    assert len(said) == 1 and "skipping checkpoint checkpoint-00000014" in said[0]
    assert {"truncated": "not a readable checkpoint", "deleted": "its folder is gone",
            "cut off": "no checkpoint at"}[how] in said[0] and "resuming from checkpoint-00000012" in said[0]
    assert listed(run_dir) == (["checkpoint-00000012"], "checkpoint-00000012")
    assert checkpoint_names(run_dir) == ["checkpoint-00000012"]  # nothing unreadable left behind
    assert Result.from_path(run_dir).checkpoint.path.endswith("checkpoint-00000012")  # Ray Train reads it
    assert resume.repair_run(run_dir) == []  # a sound run folder is left alone


def test_repair_removes_checkpoint_folders_ray_train_never_registered(reference, tmp_path):
    """Uploaded, but the run stopped before the controller registered them: one whole, one cut off."""
    from ray.train import Result

    run_dir = tmp_path / "reference"
    shutil.copytree(reference, run_dir)
    shutil.copytree(run_dir / "checkpoint-00000014", run_dir / "checkpoint-00000016")
    (run_dir / "checkpoint-00000015").mkdir()
    (run_dir / "checkpoint-00000015" / "checkpoint.pt").write_bytes(b"PK\x03\x04 half an upload")
    said = []
    assert resume.repair_run(str(run_dir), log=said.append) == ["checkpoint-00000015", "checkpoint-00000016"]
    assert len(said) == 2 and all("written but never registered with Ray Train" in line for line in said)
    assert checkpoint_names(str(run_dir)) == ["checkpoint-00000012", "checkpoint-00000014"]
    assert listed(str(run_dir)) == (["checkpoint-00000012", "checkpoint-00000014"], "checkpoint-00000014")
    assert Result.from_path(str(run_dir)).checkpoint.path.endswith("checkpoint-00000014")


def test_user_errors_stop_at_once_in_one_line(small_dataset, ray_head, tiny_config, tmp_path):
    runs = str(tmp_path / "runs")
    for flag, message in ((["--set", "variant=vgg"], "variant='vgg' is not a model variant"),
                          (["--set", "batch_size=64"], "fewer than batch_size=64")):
        result = run_cli(*train_args(small_dataset, "x", runs, tiny_config, ray_head), *flag, check=False,
                         timeout=120)
        assert result.returncode == 2 and message in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and not os.path.exists(runs)

    # an error only the workers see (a shard deleted after the driver's checks) and no retry can cure
    broken = tmp_path / "broken"
    shutil.copytree(small_dataset, broken)
    os.unlink(broken / "train-000003.tar")
    result = run_cli(*train_args(str(broken), "y", runs, tiny_config, ray_head), check=False, timeout=300)
    assert result.returncode == 2, result.stdout + result.stderr
    last, log = traceback_note(result.stderr.strip().splitlines()[-1])
    assert last.startswith("alexnet train: error: the run stopped at its first attempt: rank ")
    assert last.endswith("are missing: train-000003.tar (re-run `alexnet shard`, or pass skip_bad_samples=True)")
    # each failing worker says so once (one attempt of two ranks, not max_failures + 1); its traceback is in
    # the file the last line names, not on the console
    assert 1 <= (result.stdout + result.stderr).count("Error in training function") <= 2
    assert "Traceback" not in result.stdout + result.stderr and "train-000003.tar" in log


def traceback_note(line: str) -> tuple[str, str]:
    """A last line without its " (tracebacks of Ray's processes: FILE)", and that file's text."""
    match = re.fullmatch(r"(.*) \(tracebacks of Ray's processes: (\S+)\)", line)
    assert match, f"the last line names no traceback file: {line}"
    with open(match.group(2)) as f:
        return match.group(1), f.read()


def test_a_full_run_folder_stops_the_run_at_once_in_one_line(small_dataset, ray_head, tiny_config, small_disk):
    """Storage of 45 MB: the checkpoint at step 4 (28.6 MB at width 0.25) fits, the one at step 7 does not."""
    resize_disk(small_disk, "45m")
    runs = str(small_disk / "runs")
    result = run_cli(*train_args(small_dataset, "full", runs, tiny_config, ray_head), check=False, timeout=400)
    console = result.stdout + result.stderr
    assert result.returncode == 2, console[-3000:]
    last, log = traceback_note(result.stderr.strip().splitlines()[-1])
    assert "Traceback" not in console and "No space left on device" in log, console[-3000:]  # tracebacks: the file
    assert last.startswith("alexnet train: error: the run stopped at its first attempt: rank 0: no space left "
                           f"on device: {runs}/full; the checkpoints registered so far are kept"), console[-3000:]
    assert last.endswith("free space (or fix the permissions) and give the same command again to continue "
                         "from the last one")
    assert console.count("Error in training function") <= 2  # one attempt, not max_failures + 1
    assert checkpoint_names(os.path.join(runs, "full")) == ["checkpoint-00000004"]  # the cut-off one is gone
