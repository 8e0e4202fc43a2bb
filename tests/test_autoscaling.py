"""`alexnet train` on a real autoscaling cluster at rest (Ray's fake multi-node provider: the real autoscaler
starts worker nodes as local raylets), as users run the clusters in cluster/: a head without CPUs, a
worker type at zero nodes. One cluster for the module; the tiny run is the session's reference config.
"""

from __future__ import annotations

import os
import signal

import pytest

from autoscaling_cluster import AutoscalingCluster
from conftest import run_cli, train_args
from test_train import assert_bitwise_equal, checkpoint_names, records, start_paused

pytestmark = pytest.mark.slow

# two replicas need two 1-CPU nodes; the third lets the autoscaler replace a lost node at once
WORKER_TYPES = {"cpu1": {"resources": {"CPU": 1}, "min_workers": 0, "max_workers": 3}}


@pytest.fixture(scope="module")
def cluster(s3_server):
    started = AutoscalingCluster(WORKER_TYPES, env=s3_server).start()
    yield started
    started.stop()


def test_run_starts_from_rest_and_survives_a_lost_node(cluster, reference, small_dataset, tiny_config, tmp_path):
    """The lost node's run also finds its last checkpoint (step 8) damaged: the restarted workers fall back to
    the one before (step 7, the end of epoch 0) and redo the steps since, to the same final weights."""
    assert cluster.worker_raylets() == []  # at rest: no worker node
    run_dir = str(tmp_path / "runs" / "spot")
    args = train_args(small_dataset, "spot", str(tmp_path / "runs"), tiny_config, cluster.address)
    driver, worker = start_paused(args, str(tmp_path / "worker.pid"), rank=1)
    raylets = cluster.worker_raylets()
    assert len(raylets) >= 2  # the autoscaler launched the nodes the run asked for
    # the node holding rank 1 disappears, as a spot node does: its raylet dies, and its workers with it
    node = next(r for r in raylets if worker.pid in {c.pid for c in r.children(recursive=True)})
    latest = os.path.join(run_dir, "checkpoint-00000008", "checkpoint.pt")
    with open(latest, "r+b") as f:  # a disk or an upload gone wrong while the run was up
        f.truncate(os.path.getsize(latest) // 2)
    node.send_signal(signal.SIGKILL)
    output, _ = driver.communicate(timeout=400)
    assert driver.returncode == 0, output[-3000:]
    assert "waiting for nodes: --workers 2 x {CPU: 1} each" in output  # said what it waited for
    assert "skipping checkpoint checkpoint-00000008" in output and "older checkpoint checkpoint-00000007" in output
    resumes = records(run_dir, "resume")
    assert [(r["epoch"], r["step"], r["batch"], r["skipped"]) for r in resumes] == [(2, 7, 0, ["checkpoint-00000008"])]
    assert_bitwise_equal(run_dir, reference)
    # the redone step-8 checkpoint had a folder of its own (checkpoint-00000008-2), so rotating the damaged
    # one out deleted only that one
    assert checkpoint_names(run_dir) == ["checkpoint-00000012", "checkpoint-00000014"]


def test_request_no_node_type_can_hold_fails_at_once(cluster, small_dataset, tiny_config, tmp_path):
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
