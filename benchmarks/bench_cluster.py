"""Latencies on an autoscaling cluster at rest (Ray's fake multi-node provider, one machine): from
`alexnet submit -- train` to its first step while the autoscaler starts the nodes, and the seconds one lost
node costs (from its raylet's death to training again, plus the steps redone since the last checkpoint).

    python benchmarks/bench_cluster.py --data DATASET     # e.g. the tests' small dataset (10 classes)

The run is the tests' tiny one (2 replicas, width 0.25, batch 8, 14 steps, checkpoints at steps 4, 7, 8);
rank 1's node is killed after step 10. Run by hand on a quiet machine; prints the numbers docs/benchmarks.md
quotes. Starts and stops its own cluster by PID (never `ray stop`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from helpers.autoscaling_cluster import AutoscalingCluster  # noqa: E402
from conftest import TINY, alexnet_cmd, train_args  # noqa: E402


def first_record(metrics: Path, kind: str, timeout: float = 600) -> float:
    """When a record of this kind first appears in metrics.jsonl (polled every 0.1 s)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if metrics.exists():
            kinds = [json.loads(line)["kind"] for line in metrics.read_text().splitlines() if line.strip()]
            if kind in kinds:
                return time.monotonic()
        time.sleep(0.1)
    raise TimeoutError(f"no {kind} record in {metrics}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    config = work / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    pid_file = work / "worker.pid"
    hook = {"ALEXNET_DEBUG_PAUSE_STEP": "10", "ALEXNET_DEBUG_PAUSE_RANK": "1", "ALEXNET_DEBUG_PID_FILE": str(pid_file)}
    cluster = AutoscalingCluster({"cpu1": {"resources": {"CPU": 1}, "min_workers": 0, "max_workers": 3}},
                                 env=hook).start()  # a job's environment is the cluster's
    try:
        started = time.monotonic()
        job = train_args(args.data, "run", str(work), str(config), cluster.address)[:-2]  # a job needs no --address
        driver = subprocess.Popen(alexnet_cmd("submit", "--address", cluster.dashboard_url, "--", *job),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        metrics = work / "run" / "metrics.jsonl"
        first_step = first_record(metrics, "step")
        while not pid_file.exists():
            time.sleep(0.1)
        worker_pid = int(pid_file.read_text())
        node = next(r for r in cluster.worker_raylets() if worker_pid in {c.pid for c in r.children(recursive=True)})
        killed = time.monotonic()
        node.send_signal(signal.SIGKILL)
        resumed = first_record(metrics, "resume")
        driver.wait(timeout=600)
        steps = [r for r in map(json.loads, metrics.read_text().splitlines()) if r["kind"] == "step"]
        step_s = 8 * 2 / min(s["images_per_s"] for s in steps)  # slowest window: batch 8 x 2 replicas a step
        print(f"`alexnet submit` to the first logged step (step 2), cluster at rest: {first_step - started:.1f} s")
        print(f"lost node: {resumed - killed:.1f} s from the kill to the resumed workers, "
              f"+ 2 steps redone (~{2 * step_s:.1f} s); exit status {driver.returncode}")
    finally:
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
