"""A three-node Ray cluster on one machine (ray.cluster_utils.Cluster): a CPU-less head and two 1-CPU
worker nodes. `alexnet shard` must spread its tasks over both workers, and `alexnet train --workers 2`
must place one Ray Train worker on each: what the cluster configs in cluster/ rely on.

This test cannot use the session's `ray_head` (a single node); its cluster is stopped at the end.
"""

from __future__ import annotations

import json
import shutil

import pytest

from conftest import free_port, run_cli


@pytest.fixture
def three_nodes():
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "include_dashboard": True, "dashboard_host": "127.0.0.1",
        "dashboard_port": free_port(), "dashboard_agent_listen_port": free_port()})
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    try:
        yield cluster, [node.node_id for node in workers]
    finally:
        cluster.shutdown()


@pytest.mark.slow
def test_shard_tasks_and_train_workers_spread_over_both_nodes(three_nodes, sample_images, tmp_path):
    from ray.util.state import list_actors, list_tasks

    cluster, worker_ids = three_nodes
    images = sorted(sample_images.iterdir())[:8]
    for split in ("train", "val"):
        for i, image in enumerate(images):
            folder = tmp_path / split / image.name[:9]
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copy(image, folder / f"{image.name[:9]}_{i}.JPEG")
    data = tmp_path / "shards"
    address = cluster.address
    run_cli("shard", tmp_path / "train", data, "--split", "train", "--shard-size", "1", "--address", address,
            timeout=300)
    run_cli("shard", tmp_path / "val", data, "--split", "val", "--shard-size", "4", "--address", address,
            timeout=300)
    run_cli("train", "--data", data, "--name", "two-nodes", "--storage", tmp_path / "runs", "--workers", "2",
            "--set", "epochs=1", "--set", "steps_per_epoch=2", "--set", "width=0.25", "--set", "batch_size=2",
            "--set", "eval_batch_size=4", "--set", "loader_workers=0", "--set", "deterministic=false",
            "--address", address, timeout=400)

    api = f"http://{cluster.webui_url}"
    shard_nodes = {t.node_id for t in list_tasks(address=api, filters=[("name", "=", "write_shard")],
                                                  detail=True, limit=1000) if t.node_id}
    assert shard_nodes == set(worker_ids)  # 8 one-image shards, 1 CPU per node: both nodes did some
    train_nodes = [a.node_id for a in list_actors(address=api, filters=[("class_name", "=", "RayTrainWorker")],
                                                  detail=True, limit=100)]
    assert sorted(train_nodes) == sorted(worker_ids)  # two workers, one on each node
    records = [json.loads(line) for line in (tmp_path / "runs" / "two-nodes" / "metrics.jsonl").read_text().splitlines()]
    assert any(r["kind"] == "epoch" for r in records)
