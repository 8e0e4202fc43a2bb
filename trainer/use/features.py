"""fc7 feature vectors of a sharded split, one feature file per shard, and the nearest of them to queries.

A feature file `<out>/features-<weights digest>/<split>-NNNNNN.npz` holds, for the shard of the same
number, every sample's key, label and fc7 vector (float16, [samples, fc7 width]) from the centre crop
the evaluation uses (trainer/evaluate.py), plus who computed it. The folder is named after the weights,
so features of two checkpoints never mix; a file is written whole or not at all (pipeline.storage), so
a job killed half-way keeps what it finished. At width 1, ImageNet's 1.28M training images give
1.28M x 4096 x 2 bytes = ~10.5 GB: the search reads one file at a time and keeps only each query's
running nearest k (`nearest`).
"""

from __future__ import annotations

import io
import os
import socket
import time
from collections.abc import Iterator
from contextlib import nullcontext

import numpy as np
import torch

from pipeline import storage
from pipeline.errors import UserError


def feature_location(folder: str, shard_name: str) -> str:
    return storage.join(folder, shard_name.removesuffix(".tar") + ".npz")


def read_samples(dataset: str, shard_name: str, total: int, positions: list[int] | None = None
                 ) -> Iterator[tuple[str, int, bytes]]:
    """(key, label, stored JPEG bytes) of a shard's samples in order, or of the given positions only."""
    from pipeline.loader.tar_reader import iter_samples, map_file

    where = storage.join(dataset, shard_name)
    wanted = set(positions) if positions is not None else None
    start, stop = (min(wanted), max(wanted) + 1) if wanted else (0, total)
    # a local shard is mapped (left to the garbage collector, as the loader does: members are views of
    # it until the caller has copied them); a URL is streamed
    source = map_file(where) if not storage.is_url(where) else storage.open_input(where)
    with source if storage.is_url(where) else nullcontext():
        for position, key, members in iter_samples(source, where, start, stop,
                                                   total=total if stop == total else None):
            if wanted is None or position in wanted:
                yield key, int(bytes(members["cls"])), bytes(members["jpg"])


@torch.no_grad()
def fc7_of_jpegs(model: torch.nn.Module, transform, jpegs: list[bytes], crop: int,
                 batch_size: int = 64) -> np.ndarray:
    """Stored JPEGs -> float16 fc7 vectors [n, width], each from the evaluation's centre crop."""
    from pipeline.shard.images import decode_stored
    from trainer.evaluate import eval_crops

    device = model.devices[0]
    out = []
    for begin in range(0, len(jpegs), batch_size):
        crops = np.concatenate([eval_crops(decode_stored(j), crop, ten=False) for j in jpegs[begin:begin + batch_size]])
        images = torch.from_numpy(crops).permute(0, 3, 1, 2).to(device)  # uint8 NCHW view of NHWC
        out.append(model.features(transform(images)).to(torch.float16).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float16)


def shard_features(dataset: str, shard_name: str, total: int, network: dict, folder: str,
                   batch_size: int = 64) -> dict:
    """One Ray task: the fc7 file of one shard (GPU when the task was given one). Returns its record."""
    from pipeline.loader.augment import BatchTransform
    from trainer.evaluate import build_model

    started = time.time()
    device = "cuda:0" if torch.cuda.is_available() else "cpu"
    model = build_model(network, (device, device))
    transform = BatchTransform(network["stats"], pca_std=0.0)
    keys, labels, jpegs = zip(*read_samples(dataset, shard_name, total)) if total else ((), (), ())
    features = fc7_of_jpegs(model, transform, list(jpegs), network["config"]["crop"], batch_size)
    record = {"shard": shard_name, "samples": len(keys), "device": device, "node": _node(), "pid": os.getpid(),
              "started": started, "finished": time.time()}
    buffer = io.BytesIO()
    np.savez(buffer, keys=np.array(keys, dtype=str), labels=np.array(labels, dtype=np.int32), features=features,
             **{name: np.array(value) for name, value in record.items()})
    storage.write_bytes_atomic(feature_location(folder, shard_name), buffer.getvalue())
    return record


def _node() -> str:
    """The Ray node this runs on (its id), or the host name outside Ray."""
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else socket.gethostname()


def read_features(location: str) -> dict:
    """A feature file as arrays (never unpickled); UserError naming it when it is damaged."""
    try:
        with np.load(io.BytesIO(storage.read_bytes(location)), allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except (ValueError, OSError, KeyError) as error:
        raise UserError(f"{location} is not a readable feature file ({error}): delete it and rerun") from None


def nearest(queries: np.ndarray, locations: list[str], k: int) -> list[list[tuple[float, str, int]]]:
    """For each query vector, the k nearest training vectors over all feature files by Euclidean
    distance: [(distance, key, label)] nearest first. One file in memory at a time; ties go to the
    earlier file and position, so the answer does not depend on how the files are grouped."""
    queries = queries.astype(np.float32)
    best = [[] for _ in queries]  # per query: (distance, order, key, label), at most k
    order = 0
    for location in locations:
        part = read_features(location)
        vectors = part["features"].astype(np.float32)
        for q, query in enumerate(queries):
            distances = np.sqrt(np.square(vectors - query).sum(axis=1))
            take = np.argsort(distances, kind="stable")[:k]
            best[q] = sorted(best[q] + [(float(distances[i]), order + int(i), str(part["keys"][i]),
                                         int(part["labels"][i])) for i in take])[:k]
        order += len(vectors)
    return [[(d, key, label) for d, _, key, label in row] for row in best]
