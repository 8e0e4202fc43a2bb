"""`alexnet neighbours CHECKPOINT --data DATASET`: the paper's Figure 4, as a Ray job over the shards.

    alexnet neighbours runs/run1 --data out/                      # a private local Ray instance
    alexnet submit -- neighbours s3://b/runs/run1 --data s3://b/in1k --out s3://b/fig4

1. One Ray task per training shard (bounded in flight, retried; spread over the nodes, a GPU each when
   the cluster has GPUs) writes the shard's fc7 vectors (trainer/use/features.py). Finished feature files
   are kept: a killed job, given the same command again, computes only the missing ones.
2. The driver scores the queries (validation images drawn with --seed, and any --key) and finds each
   one's six nearest training vectors, streaming one feature file at a time.
3. figure4.json (queries, top-5, neighbours with keys, labels and distances) and figure4.png
   (trainer/use/figure4.py).
"""

from __future__ import annotations

import io
import json
import os

import numpy as np

from pipeline import storage
from pipeline.errors import UserError
from pipeline.ray_instance import own_ray

NEIGHBOURS = 6  # the paper's six training images per query
DIGEST_CHARS = 16


def neighbours(checkpoint: str, data: str, *, out: str | None = None, queries: int = 8,
               keys: list[str] | None = None, seed: int = 0, address: str | None = None,
               batch_size: int = 64) -> int:
    """The whole job (module docstring); everything it writes goes under `out` (default RUN/neighbours)."""
    from pipeline.shard.manifest import read_manifest
    from pipeline.shard.labels import named_classes
    from trainer.checkpoint import format as ckpt
    from trainer.evaluate import check_classes
    from trainer.use.figure4 import draw_figure4

    state = ckpt.load(checkpoint)
    train = read_manifest(data, "train")
    check_classes(state, train, data, "train")
    out = out or default_out(checkpoint)
    if not storage.is_url(out):
        out = os.path.abspath(out)  # Ray tasks may run in another working directory
    if not storage.is_url(data):
        data = os.path.abspath(data)
    network = {k: state[k] for k in ("model", "num_classes", "config", "stats")}
    folder = storage.join(out, "features-" + ckpt.weights_digest(state["model"])[:DIGEST_CHARS])
    chosen = choose_queries(data, queries, keys or [], seed)  # before any task: a bad --key fails at once
    records = compute_features(data, train, network, folder, address=address, batch_size=batch_size)
    found, images, vectors = find_neighbours(data, chosen, network, named_classes(state["classes"]), folder, train)
    png = io.BytesIO()
    figure = draw_figure4(found, images, png, title=f"The paper's Figure 4 from {_run_label(checkpoint)} (after epoch "
                                                    f"{state['epoch']}, {train['total_samples']} training images)")
    result = {"checkpoint": str(checkpoint), "data": data, "features": folder, "seed": seed, "figure": figure,
              "queries": found, "shards": records}
    vectors_file = io.BytesIO()
    np.savez(vectors_file, keys=np.array([f"{q['split']}/{q['key']}" for q in found], dtype=str), features=vectors)
    storage.write_bytes_atomic(storage.join(out, "queries.npz"), vectors_file.getvalue())
    storage.write_bytes_atomic(storage.join(out, "figure4.png"), png.getvalue())
    storage.write_bytes_atomic(storage.join(out, "figure4.json"), json.dumps(result, indent=1).encode())
    print(f"figure 4: {len(chosen)} queries, {NEIGHBOURS} neighbours each, over {train['total_samples']} "
          f"training images -> {storage.join(out, 'figure4.png')}")
    return 0


def default_out(checkpoint: str) -> str:
    """RUN/neighbours, for a checkpoint given as a run folder, a checkpoint folder or its checkpoint.pt."""
    from trainer.checkpoint import format as ckpt

    path = ckpt.resolve_location(checkpoint)  # RUN/checkpoint-N/checkpoint.pt or RUN/best/checkpoint.pt
    if not storage.is_url(path):
        path = os.path.abspath(path)
    return storage.join(path.rsplit("/", 2)[0], "neighbours")


def compute_features(data: str, train: dict, network: dict, folder: str, *, address: str | None,
                     batch_size: int) -> list[dict]:
    """The feature file of every training shard, computing only the missing ones; their records."""
    import ray

    from trainer.use.features import feature_location

    for name in storage.list_names(folder):  # what a task killed mid-write left (never renamed)
        if name.startswith(".") and name.endswith(".tmp"):
            storage.delete(storage.join(folder, name))
    shards = train["shards"]
    missing = [s for s in shards if not storage.exists(feature_location(folder, s["name"]))]
    done = len(shards) - len(missing)
    if done:  # a fresh folder has no earlier work to speak of
        print(f"features: {done} of {len(shards)} shards already done in {folder}", flush=True)
    else:
        print(f"features: {len(shards)} shards to compute into {folder}", flush=True)
    if not missing:
        return _records(folder, shards)
    if ray.is_initialized():  # a caller's connection (the demo's) stays
        _compute_missing(data, missing, network, folder, batch_size)
    else:  # the instance pipeline/ray_instance.py picks, ended with the job
        with own_ray(address, include_dashboard=False):
            _compute_missing(data, missing, network, folder, batch_size)
    return _records(folder, shards)


def _compute_missing(data: str, missing: list[dict], network: dict, folder: str, batch_size: int) -> None:
    """One Ray task per missing shard, at most 2x CPUs in flight, on the connected instance."""
    import ray

    from trainer.use.features import shard_features

    gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
    task = ray.remote(num_cpus=1, num_gpus=gpus, max_retries=3, retry_exceptions=True,
                      scheduling_strategy="SPREAD")(shard_features)
    network_ref = ray.put(network)  # once into the object store, not once per task
    limit = max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))
    pending, queue = {}, list(missing)
    while queue or pending:
        while queue and len(pending) < limit:
            shard = queue.pop(0)
            pending[task.remote(data, shard["name"], shard["samples"], network_ref, folder, batch_size)] = shard
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            shard = pending.pop(ref)
            try:
                ray.get(ref)
            except ray.exceptions.RayError as error:
                cause = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
                raise UserError(f"features of {shard['name']} failed after retries: {cause}. Finished "
                                "feature files are kept: rerun the same command to continue") from None
        print(f"features: {len(missing) - len(queue) - len(pending)} of {len(missing)} shards computed",
              flush=True)


def _records(folder: str, shards: list[dict]) -> list[dict]:
    """Who computed each feature file, and when (figure4.json's "shards")."""
    from trainer.use.features import feature_location, read_features

    records = []
    for shard in shards:
        part = read_features(feature_location(folder, shard["name"]))
        records.append({name: part[name].item() for name in ("shard", "samples", "device", "node", "pid",
                                                             "started", "finished")})
    return records


def choose_queries(data: str, count: int, keys: list[str], seed: int) -> list[dict]:
    """Index rows of the queries: the given keys ([SPLIT/]KEY, val by default), then `count` validation
    samples drawn with `seed` (not already given), each of a class not yet shown while classes last: a
    plain draw from ten classes often repeats one, and the paper's figure shows as many as it can."""
    tables = {}
    chosen = []
    for given in keys:
        split, _, key = given.rpartition("/")
        split = split or "val"
        rows = tables.setdefault(split, _index_rows(data, split))
        if key not in rows:
            raise UserError(f"--key {given}: no sample {key!r} in the {split} split of {data}")
        chosen.append(rows[key])
    if count:
        rows = tables.setdefault("val", _index_rows(data, "val"))
        taken = {row["key"] for row in chosen if row["split"] == "val"}
        free = sorted(set(rows) - taken)
        if count > len(free):
            raise UserError(f"--queries {count}: the val split of {data} has only {len(free)} more samples")
        shown, new_class, seen_class = {row["label"] for row in chosen}, [], []
        for i in np.random.default_rng(seed).permutation(len(free)):
            label = rows[free[i]]["label"]
            (seen_class if label in shown else new_class).append(i)
            shown.add(label)
        chosen += [rows[free[i]] for i in sorted((new_class + seen_class)[:count])]
    if not chosen:
        raise UserError("no queries: give --queries N and/or --key KEY")
    return chosen


def _index_rows(data: str, split: str) -> dict[str, dict]:
    from pipeline.shard.manifest import read_index, read_manifest

    sizes = {s["name"]: s["samples"] for s in read_manifest(data, split)["shards"]}
    table = read_index(data, split, ["key", "label", "synset", "shard", "position"]).to_pylist()
    return {row["key"]: {**row, "split": split, "shard_samples": sizes[row["shard"]]} for row in table}


def find_neighbours(data: str, chosen: list[dict], network: dict, classes: list[dict], folder: str,
                    train: dict) -> tuple[list[dict], dict, np.ndarray]:
    """The queries' top-5 and fc7 vectors (here on the driver: a few images), then the nearest training
    vectors over every feature file. Returns the queries as figure4.json lists them, the stored JPEGs
    the figure shows ({("q", i): ..., ("n", i, j): ...}) and the query vectors (float16)."""
    import torch

    from pipeline.loader.augment import BatchTransform
    from trainer.evaluate import build_model
    from trainer.use.features import fc7_of_jpegs, feature_location, nearest

    model = build_model(network, ("cpu", "cpu"))
    transform = BatchTransform(network["stats"], pca_std=0.0)
    jpegs = [_stored_jpeg(data, row) for row in chosen]
    vectors = fc7_of_jpegs(model, transform, jpegs, network["config"]["crop"])
    with torch.no_grad():
        probs = model.fc8(torch.from_numpy(vectors.astype(np.float32))).softmax(dim=1)
    found = nearest(vectors, [feature_location(folder, s["name"]) for s in train["shards"]], NEIGHBOURS)
    train_rows = _index_rows(data, "train") if found else {}
    name = lambda i: classes[i].get("name") or classes[i]["synset"]  # noqa: E731
    queries = []
    for row, p, near in zip(chosen, probs, found):
        top = p.topk(min(5, p.numel()))
        queries.append({
            "split": row["split"], "key": row["key"], "label": row["label"], "class": name(row["label"]),
            "top5": [{"label": int(i), "class": name(int(i)), "probability": float(v)}
                     for v, i in zip(top.values.tolist(), top.indices.tolist())],
            "neighbours": [{"key": key, "label": label, "class": name(label), "distance": distance}
                           for distance, key, label in near]})
    images = {("q", i): jpegs[i] for i in range(len(chosen))}
    for i, query in enumerate(queries[:5]):
        for j, hit in enumerate(query["neighbours"]):
            images[("n", i, j)] = _stored_jpeg(data, train_rows[hit["key"]])
    return queries, images, vectors


def _run_label(checkpoint: str) -> str:
    """The run a checkpoint belongs to, for the figure's title: RUN for a run folder, RUN/best or
    RUN/checkpoint-N for a checkpoint in one (never the machine's whole path)."""
    parts = [p for p in str(checkpoint).rstrip("/").split("/") if p]
    if parts and parts[-1].endswith(".pt"):
        parts = parts[:-1]
    if len(parts) >= 2 and (parts[-1] == "best" or parts[-1].startswith("checkpoint-")):
        return "/".join(parts[-2:])
    return parts[-1] if parts else str(checkpoint)


def _stored_jpeg(data: str, row: dict) -> bytes:
    from trainer.use.features import read_samples

    ((_, _, jpeg),) = read_samples(data, row["shard"], row["shard_samples"], [row["position"]])
    return jpeg
