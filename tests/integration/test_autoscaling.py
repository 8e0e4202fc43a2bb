"""Jobs on a real autoscaling cluster at rest (Ray's fake multi-node provider: the real autoscaler starts
worker nodes as local raylets), as users run the clusters in cluster/: a head without CPUs, a worker type at
zero nodes. One cluster for the module; the tiny run is the session's reference config. It starts as a
cluster someone else set up: its autoscaler runs but publishes no limits (the tests run in file order; the
last one publishes them, as the clusters in cluster/ do).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from pathlib import Path

import psutil
import pytest

from helpers.autoscaling_cluster import AutoscalingCluster
from conftest import NeverPaused, alexnet_cmd, run_cli, train_args, wait_for_pause
from pipeline import storage
from test_train import assert_bitwise_equal, checkpoint_names, records

pytestmark = pytest.mark.slow

# two replicas need two 1-CPU nodes; the third lets the autoscaler replace a lost node at once
WORKER_TYPES = {"cpu1": {"resources": {"CPU": 1}, "min_workers": 0, "max_workers": 3}}


# The lost node's run pauses rank 1 after step 13: checkpoints 8 (mid-epoch 2, its batch 1) and 12 are kept.
LOST_STEP = 13


@pytest.fixture(scope="module")
def pid_file(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("paused") / "worker.pid")


@pytest.fixture(scope="module")
def cluster(s3_server, pid_file):
    """Every process on the cluster carries the failure-test hook (a job's environment is the cluster's):
    the first run to reach step LOST_STEP pauses its rank 1 there, once, and writes that worker's pid."""
    hook = {"ALEXNET_DEBUG_PAUSE_STEP": str(LOST_STEP), "ALEXNET_DEBUG_PAUSE_RANK": "1",
            "ALEXNET_DEBUG_PID_FILE": pid_file}
    started = AutoscalingCluster(WORKER_TYPES, env={**s3_server, **hook}, publish_limits=False).start()
    yield started
    started.stop()


def _submit(cluster: AutoscalingCluster, *job: str) -> subprocess.Popen:
    """`alexnet submit` of one job to the cluster's jobs API, which follows the job and streams its log."""
    return subprocess.Popen(alexnet_cmd("submit", "--address", cluster.dashboard_url, "--", *job),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _succeeded(follower: subprocess.Popen, timeout: float = 400) -> str:
    log, _ = follower.communicate(timeout=timeout)
    return _assert_succeeded(follower, log)


def _assert_succeeded(follower: subprocess.Popen, log: str) -> str:
    job_id = re.search(r"submitted (alexnet-\S+):", log).group(1)
    assert follower.returncode == 0 and f"job {job_id} succeeded" in log, log[-3000:]
    return log


# how a task's import looks when the fake cluster's shared package folder was re-extracted under it
IMPORT_CUT_SHORT = ("ModuleNotFoundError: No module named 'pipeline", "ModuleNotFoundError: No module named 'trainer",
                    "ModuleNotFoundError: No module named 'jobs", "partially initialized module",
                    # the job's working directory deleted under its driver: torch's lazy imports ask
                    # inspect.getmodule for every module's absolute path, and os.getcwd() then fails
                    "in getabsfile\n",
                    # a worker process on the head dying while it started (its working directory was
                    # re-extracted under it): seen as the Train controller "never ran" on CI
                    "Worker unexpectedly exits with a connection error code 2. End of file")


def _job_succeeds(cluster: AutoscalingCluster, *job: str, timeout: float = 400) -> str:
    """Submit one job and wait for its success, resubmitting it once if it met the fake cluster's shared
    package folder: Ray's fake multi-node provider starts every node in the head's session folder, so
    all nodes share one runtime_resources/working_dir_files, and a node that sets a job's working_dir up
    for the first time deletes and re-extracts it there (Ray 2.60 working_dir.py, overwrite=True) while a
    worker of another node may be importing from it (seen while nodes joined during a job: a
    ModuleNotFoundError of a module the package holds; "partially initialized module 'torch'" in a task
    whose first import was cut short that way). Real nodes each have their own folder. Every command
    here redoes or continues its work exactly when given again, as a user would rerun it."""
    follower = _submit(cluster, *job)
    log, _ = follower.communicate(timeout=timeout)
    if follower.returncode != 0 and any(sign in log for sign in IMPORT_CUT_SHORT):
        print(f"resubmitting {job[0]}: it met the fake cluster's shared package folder", flush=True)
        follower = _submit(cluster, *job)
        log, _ = follower.communicate(timeout=timeout)
    return _assert_succeeded(follower, log)


def test_jobs_on_a_cluster_at_rest_survive_a_lost_node_and_a_damaged_checkpoint(
        cluster, pid_file, reference, small_dataset, tiny_config, s3_bucket):
    """Train (2 workers), shard and eval as jobs, as users run them on the clusters in cluster/: each is
    `alexnet submit` to the jobs API of a head without CPUs, dataset and runs on S3. Mid-epoch the node
    holding rank 1 disappears, as a spot node does, and the latest checkpoint's upload was cut off: the
    restarted workers fall back to the one before (mid-epoch) and redo the steps since, to the bit."""
    assert cluster.worker_raylets() == []  # at rest: no worker node
    data, runs = f"s3://{s3_bucket}/imagenet", f"s3://{s3_bucket}/runs"
    local = Path(small_dataset)
    for name in sorted(os.listdir(local)):
        storage.write_bytes_atomic(f"{data}/{name}", (local / name).read_bytes())

    job = train_args(data, "spot", runs, tiny_config, cluster.address)[:-2]
    follower = _submit(cluster, *job)
    first_try = ""  # the log of a first submission cut short, which met the cluster at rest
    try:
        worker = psutil.Process(wait_for_pause(follower, pid_file))
    except NeverPaused as failure:  # resubmitted once when it met the shared package folder
        if not any(sign in failure.log for sign in IMPORT_CUT_SHORT):
            raise
        first_try = failure.log
        print("resubmitting train: it met the fake cluster's shared package folder", flush=True)
        follower = _submit(cluster, *job)
        worker = psutil.Process(wait_for_pause(follower, pid_file))
    raylets = cluster.worker_raylets()
    assert len(raylets) >= 2  # the autoscaler launched the nodes the run asked for
    node = next(r for r in raylets if worker.pid in {c.pid for c in r.children(recursive=True)})
    run_dir = f"{runs}/spot"
    assert {"checkpoint-00000008", "checkpoint-00000012"} <= set(checkpoint_names(run_dir))
    latest = f"{run_dir}/checkpoint-00000012/checkpoint.pt"
    whole = storage.read_bytes(latest)
    fs, path = storage.resolve(latest)
    with fs.open_output_stream(path) as f:  # an upload gone wrong while the run was up
        f.write(whole[:len(whole) // 2])
    node.send_signal(signal.SIGKILL)  # its raylet dies, and its workers with it
    log = _succeeded(follower)
    # said what it waited for, what was up, whose autoscaler it waited on, and what it cannot know (a
    # resubmission finds the nodes the first try brought up, so then the first try's log says it)
    waited = first_try + log
    assert "waiting for nodes: --workers 2 x {CPU: 1} each; up now: 1 node(s) with {}; the cluster publishes no autoscaling " \
           "limits but runs an autoscaler (Ray autoscaler v1, node types up or launching: ray.head.default)" in waited
    assert "cannot tell nodes not started yet from nodes that never will: giving up after 1800 s" in waited
    assert "skipping checkpoint checkpoint-00000012" in log and "older checkpoint checkpoint-00000008" in log
    # a job's log is no terminal: plain progress lines, one per step record, then each epoch's line
    assert re.search(r"^epoch 1/2 \[#*\.*\] \d+/7 steps, loss [\d.]+, lr [\d.]+, \d+ images/s$", log, re.M)
    assert re.search(r"^epoch 2/2: train loss [\d.]+, top-1 error .* -> stop \(\d+ s\)$", log, re.M)
    resumes = records(run_dir, "resume")  # epoch 2 (from 1), mid-epoch: its batch 1, with the saved RNG states
    assert [(r["epoch"], r["step"], r["batch"], r["skipped"]) for r in resumes] == [
        (2, 8, 1, ["checkpoint-00000012"])]
    assert_bitwise_equal(run_dir, reference)
    # the redone step-12 checkpoint had a folder of its own, so rotating the damaged one out deleted only it
    assert checkpoint_names(run_dir) == ["checkpoint-00000012-2", "checkpoint-00000014"]

    # the nodes are up now; the same inputs give the local shards' bytes
    log = _job_succeeds(cluster, "shard", str(local.parent / "train"), f"{data}-again", "--split", "train",
                        "--shard-size", "16")
    assert "train: 120 samples written in 8 shards" in log, log[-3000:]
    for name in sorted(os.listdir(local)):
        if name.startswith("train") or name == "stats.json":
            assert storage.read_bytes(f"{data}-again/{name}") == (local / name).read_bytes(), name

    log = _job_succeeds(cluster, "eval", "--checkpoint", run_dir, "--data", data, "--json")
    scored = json.loads([line for line in log.splitlines() if line.startswith("{")][-1])
    best = min(records(run_dir, "epoch"), key=lambda r: (r["val_top1_error"], r["epoch"]))
    assert (scored["epoch"], scored["top1_error"]) == (best["epoch"], pytest.approx(best["val_top1_error"]))
    job_id = re.search(r"submitted (alexnet-\S+):", log).group(1)
    status = run_cli("jobs", "status", job_id, "--address", cluster.dashboard_url, timeout=60)
    assert f"{job_id}: SUCCEEDED" in status.stdout
    assert job_id in run_cli("jobs", "list", "--address", cluster.dashboard_url, timeout=60).stdout
    logs = run_cli("jobs", "logs", job_id, "--address", cluster.dashboard_url, timeout=60).stdout
    assert logs.strip() and logs.strip() in log  # the streamed output is the job's log

    # Figure 4 as a job: feature files and figure on S3 beside the run, the shards' tasks over several nodes
    log = _job_succeeds(cluster, "neighbours", run_dir, "--data", data, "--queries", "2")
    # (a resubmitted job finds the first try's feature files done: count them in the figure, not the log)
    assert "figure 4: 2 queries, 6 neighbours each, over 120 training images" in log, log[-3000:]
    figure = json.loads(storage.read_bytes(f"{run_dir}/neighbours/figure4.json"))
    assert len(figure["shards"]) == 8, figure["shards"]  # a feature file of every training shard
    assert len(figure["queries"]) == 2 and all(len(q["neighbours"]) == 6 for q in figure["queries"])
    assert figure["features"].startswith(f"{run_dir}/neighbours/features-")
    assert len({shard["node"] for shard in figure["shards"]}) >= 2, figure["shards"]
    assert storage.read_bytes(f"{run_dir}/neighbours/figure4.png")[:8] == b"\x89PNG\r\n\x1a\n"


def test_without_published_limits_a_request_that_never_fits_ends_at_the_wait_timeout(
        cluster, small_dataset, tiny_config, tmp_path):
    """4 workers on a cluster that can grow to 3 1-CPU nodes but does not say so: the run waits, then
    ends with one line naming what never came."""
    result = run_cli(*train_args(small_dataset, "never", str(tmp_path / "runs"), tiny_config, cluster.address),
                     "--workers", "4", "--wait-timeout", "3", check=False, timeout=180)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "waiting for nodes: --workers 4 x {CPU: 1} each" in result.stdout
    assert "giving up after 3 s (--wait-timeout)" in result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert re.fullmatch(r"alexnet train: error: gave up after waiting \d+ s \(wait_timeout\) for nodes that never "
                        r"came: --workers 4 x \{CPU: 1\} each; up: \d node\(s\) with \{.*\}", lines[0]), lines[0]
    assert not os.path.exists(tmp_path / "runs" / "never")  # it waited before writing anything


def test_request_no_node_type_can_hold_fails_at_once(cluster, small_dataset, tiny_config, tmp_path):
    cluster.publish()  # as the clusters in cluster/ do: now the limits are known
    result = run_cli(*train_args(small_dataset, "big", str(tmp_path / "runs"), tiny_config, cluster.address),
                     "--workers", "4", check=False, timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--workers 4 x {CPU: 1} each" in lines[0]
    assert "can grow to at most 3 x {CPU: 1} nodes" in lines[0]
    assert not os.path.exists(tmp_path / "runs" / "big")
    result = run_cli(*train_args(small_dataset, "gpu", str(tmp_path / "runs"), tiny_config, cluster.address),
                     "--gpus-per-worker", "1", check=False, timeout=120)
    assert result.returncode == 2 and "room for 0 such worker(s)" in result.stderr
