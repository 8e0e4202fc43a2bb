"""`alexnet neighbours` (the paper's Figure 4) on the session's trained `reference` run: one job killed
after its first feature shard, the same command again, and everything checked on what they wrote."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from conftest import alexnet_cmd, run_cli
from pipeline.shard.manifest import read_manifest
from trainer.checkpoint import format as ckpt
from trainer.use.features import read_features, shard_features


@pytest.mark.slow
def test_killed_figure4_job_resumes_and_finds_the_exact_neighbours(reference, small_dataset, ray_head, tmp_path):
    out = tmp_path / "figure"
    train_rows = pq.read_table(os.path.join(small_dataset, "train.index.parquet")).to_pylist()
    own = train_rows[20]["key"]  # a training image as a query must find itself first
    args = ["neighbours", reference, "--data", small_dataset, "--out", out, "--key", f"train/{own}",
            "--queries", "8", "--batch-size", "8", "--address", ray_head]

    driver = subprocess.Popen(alexnet_cmd(*args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while not list(out.glob("features-*/*.npz")):
        assert driver.poll() is None and time.time() < deadline, driver.communicate()[0]
        time.sleep(0.05)
    driver.kill()
    first = driver.communicate()[0]
    assert "features: 8 shards to compute into" in first and "already done" not in first  # no earlier work
    kept = {p.name: p.stat().st_mtime_ns for p in out.glob("features-*/*.npz")}
    assert 1 <= len(kept) < 8 and not (out / "figure4.json").exists()

    (next(out.glob("features-*")) / ".train-000007.npz.k1ll3d.tmp").write_bytes(b"half a file")  # killed mid-write
    rerun = run_cli(*args, timeout=300)
    done = int(re.search(r"features: (\d+) of 8 shards already done", rerun.stdout).group(1))
    assert len(kept) <= done  # (a task of the killed driver may have finished one more)
    assert not list(out.glob("features-*/.*.tmp"))
    files = sorted(out.glob("features-*/*.npz"))
    assert len(files) == 8 and all(p.stat().st_mtime_ns == kept[p.name] for p in files if p.name in kept)
    # a kept shard holds what computing it afresh gives: resuming changes nothing
    state = ckpt.load(reference)
    network = {k: state[k] for k in ("model", "num_classes", "config", "stats")}
    again = tmp_path / "again"
    name = sorted(kept)[0]
    samples = {s["name"]: s["samples"] for s in read_manifest(small_dataset, "train")["shards"]}
    shard_features(small_dataset, name.replace(".npz", ".tar"), samples[name.replace(".npz", ".tar")], network,
                   str(again), 8)
    fresh, old = read_features(str(again / name)), read_features(str(files[0].parent / name))
    assert np.array_equal(fresh["features"], old["features"]) and list(fresh["keys"]) == list(old["keys"])

    result = json.loads((out / "figure4.json").read_text())
    queries = result["queries"]
    assert len(queries) == 9 and queries[0]["key"] == own and queries[0]["split"] == "train"
    assert queries[0]["neighbours"][0]["key"] == own and queries[0]["neighbours"][0]["distance"] == 0.0
    assert queries[0]["neighbours"][1]["distance"] > 0

    # the streamed, merged top-6 equals a brute-force search over all features at once
    parts = [read_features(str(p)) for p in files]
    features = np.concatenate([p["features"] for p in parts]).astype(np.float32)
    keys = np.concatenate([p["keys"] for p in parts])
    assert features.shape == (120, 2 * 512) and len(set(keys)) == 120
    vectors = np.load(out / "queries.npz")["features"].astype(np.float32)
    for query, vector in zip(queries, vectors):
        distances = np.linalg.norm(features - vector, axis=1)
        order = np.argsort(distances, kind="stable")[:6]
        assert [n["key"] for n in query["neighbours"]] == list(keys[order])
        assert [n["distance"] for n in query["neighbours"]] == pytest.approx(distances[order], rel=1e-5, abs=1e-4)

    # two tasks ran at once on the head's 2 CPUs, in different worker processes
    shards = result["shards"]
    overlapping = [(a, b) for a in shards for b in shards if a["pid"] != b["pid"]
                   and a["started"] < b["finished"] and b["started"] < a["finished"]]
    assert overlapping, shards

    # the paper's layout: 8 images with top-5 bars, 5 rows of a query and its 6 neighbours
    figure = result["figure"]
    assert figure["left_images"] == 8 and figure["bar_panels"] == 8
    # each true class among its photograph's five is named in red, its bar however short
    assert figure["true_names_marked"] == sum(any(t["label"] == q["label"] for t in q["top5"]) for q in queries[:8])
    assert figure["right_rows"] == 5 and figure["right_columns"] == 7
    assert figure["image_panels"] == 8 + 5 * 7
    with Image.open(out / "figure4.png") as png:
        assert list(png.size) == figure["pixels"]


def test_queries_show_as_many_classes_as_they_can(small_dataset):
    """Figure 4 of a ten-class set: a plain draw of 8 from 40 photographs (4 a class) nearly always
    repeats a class; the queries take a new class each until every class is shown."""
    from trainer.use.neighbours import choose_queries

    for seed in range(5):
        labels = [row["label"] for row in choose_queries(small_dataset, 8, [], seed)]
        assert len(set(labels)) == 8, (seed, labels)
    given = pq.read_table(os.path.join(small_dataset, "val.index.parquet")).to_pylist()[0]
    rows = choose_queries(small_dataset, 11, [given["key"]], 0)
    keys, labels = [row["key"] for row in rows], [row["label"] for row in rows]
    assert keys[0] == given["key"] and len(set(keys)) == 12
    assert set(labels) == set(range(10))  # the given key's class 0, then the nine others before repeats
    assert choose_queries(small_dataset, 8, [], 3) == choose_queries(small_dataset, 8, [], 3)
