"""Shards: the seeded plan, writing one tar (what a Ray task does), per-shard records, manifests.

A shard's bytes are a pure function of its inputs and the image settings: members in a fixed order,
every tar header field fixed (mtime 0, uid/gid 0, no user names, mode 0644), JSON with sorted keys.
After a shard lands (written under a temporary name, then renamed or uploaded whole), its task writes
a small record `.progress/<split>/<shard>.json` (size, sha256, index rows, skipped inputs, inputs
converted to RGB per colour mode, pixel moments). A rerun trusts a shard only when the record exists
and the shard's size and sha256 match it, so a run killed at any point is completed by rerunning it,
with the same bytes.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import re
import tempfile
from typing import TYPE_CHECKING

import crc32c
import numpy as np

from pipeline import storage
from pipeline.errors import UserError
from pipeline.shard.images import BadImage, decode_stored, process_input
from pipeline.shard.sources import Input, read_source
from pipeline.shard.tar_writer import ShardTarWriter
from pipeline.shard.stats import PixelMoments, empty_moments

if TYPE_CHECKING:  # for annotations: the functions import pyarrow where they use it
    import pyarrow as pa

# 2: the index holds a CRC32C of every stored image (`crc32c`); the manifest no longer has `created`
FORMAT_VERSION = 2
PROGRESS_DIR = ".progress"


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:06d}.tar"


def manifest_location(dataset: str, split: str) -> str:
    return storage.join(dataset, f"{split}.manifest.json")


def index_location(dataset: str, split: str) -> str:
    return storage.join(dataset, f"{split}.index.parquet")


def progress_location(dataset: str, split: str, name: str = "") -> str:
    return storage.join(dataset, PROGRESS_DIR, split, name) if name else storage.join(dataset, PROGRESS_DIR, split)


def plan_shards(inputs: list[Input], seed: int, shard_size: int) -> list[list[Input]]:
    """Seeded shuffle of the key-sorted inputs, cut into shards of `shard_size` (the last one short)."""
    order = sorted(inputs, key=lambda item: item.key)
    random.Random(seed).shuffle(order)
    return [order[i:i + shard_size] for i in range(0, len(order), shard_size)]


def write_shard(out: str, split: str, shard_index: int, samples: list[tuple[Input, int]], *,
                size: int, quality: int, chroma: str, with_stats: bool) -> dict:
    """Write one shard (or reuse it when its record proves it complete); return its record."""
    name = shard_name(split, shard_index)
    location = storage.join(out, name)
    existing = valid_record(out, split, name)
    if existing is not None:
        return {**existing, "kept": True}
    rows, skipped, moments, converted = [], [], PixelMoments(), {}
    stored = np.empty(size * size * 3, dtype=np.uint8)  # each stored image is decoded here for the statistics
    folder = None if storage.is_url(out) else os.path.abspath(out)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
    os.chmod(tmp, 0o644)  # mkstemp makes 0600; a dataset is for every user of the machine
    try:
        with os.fdopen(fd, "wb") as raw:
            tar = ShardTarWriter(raw)
            for item, label in samples:
                try:
                    jpeg, width, height, mode = process_input(read_source(item.source), size, quality, chroma)
                except BadImage as error:
                    skipped.append({"path": item.path, "reason": str(error)})
                    continue
                if mode != "RGB":  # grayscale, CMYK, palette, alpha ...: stored as RGB, counted per mode
                    converted[mode] = converted.get(mode, 0) + 1
                meta = {"synset": item.synset, "source": item.path, "width": width, "height": height,
                        "split": split}
                tar.add(f"{item.key}.jpg", jpeg)
                tar.add(f"{item.key}.cls", str(label).encode())
                tar.add(f"{item.key}.json", json.dumps(meta, sort_keys=True).encode())
                rows.append([item.key, label, item.synset, name, len(rows), item.path, width, height, len(jpeg),
                             image_checksum(jpeg)])
                if with_stats:
                    moments.add(decode_stored(jpeg, stored))
            tar.close()
        record = {"name": name, "samples": len(rows), "bytes": tar.offset, "sha256": tar.sha256,
                  "rows": rows, "skipped": skipped, "moments": moments.record() if with_stats else empty_moments(),
                  "converted": converted}
        storage.upload_file_atomic(tmp, location)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    storage.write_bytes_atomic(progress_location(out, split, f"{name}.json"), json.dumps(record).encode())
    return record


def image_checksum(jpeg) -> int:
    """CRC32C of a stored image (hardware-accelerated: ~2 us for a 32 KB image against a ~500 us decode,
    benchmarks/bench_checksum.py), so loaders can afford to check every image they decode."""
    return crc32c.crc32c(jpeg)


def stale_temporaries(dataset: str, split: str | None = None) -> list[str]:
    """Names of temporary files a killed run left in the output (all of them, or one split's)."""
    names = [n for n in storage.list_names(dataset) if n.endswith(".tmp")]
    if split is None:
        return names
    own = re.compile(rf"^\.?({re.escape(split)}-\d+\.tar|{re.escape(split)}\.(manifest\.json|index\.parquet)"
                     rf"{'|stats[.]json' if split == 'train' else ''})\..+\.tmp$")
    return [n for n in names if own.match(n)]


def sha256_of(location: str) -> str:
    digest = hashlib.sha256()
    with storage.open_input(location) as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def valid_record(out: str, split: str, name: str) -> dict | None:
    """The shard's record when the shard on storage matches it in size and sha256, else None."""
    record_location = progress_location(out, split, f"{name}.json")
    shard_location = storage.join(out, name)
    if not storage.exists(record_location) or not storage.exists(shard_location):
        return None
    try:
        record = json.loads(storage.read_bytes(record_location))
    except (json.JSONDecodeError, OSError):
        return None
    if storage.size(shard_location) != record.get("bytes") or sha256_of(shard_location) != record.get("sha256"):
        return None
    return record


def read_manifest(dataset: str, split: str) -> dict:
    """The finished split's manifest; UserError naming the file when it is missing or unreadable."""
    location = manifest_location(dataset, split)
    if not storage.exists(location):
        partial = storage.exists(progress_location(dataset, split))
        hint = ("the split was started but not finished: rerun the same `alexnet shard` command" if partial
                else f"shard it first: alexnet shard SRC {dataset} --split {split}")
        raise UserError(f"{location} not found ({hint})")
    try:
        manifest = json.loads(storage.read_bytes(location))
    except json.JSONDecodeError as error:
        raise UserError(f"{location} is not valid JSON ({error})") from None
    if manifest.get("format") != FORMAT_VERSION:
        raise UserError(f"{location} has format {manifest.get('format')}; this version reads {FORMAT_VERSION} "
                        "(its index holds image checksums): re-shard the split with the same `alexnet shard` "
                        "command plus --overwrite")
    return manifest


def write_manifest(dataset: str, split: str, manifest: dict) -> None:
    storage.write_bytes_atomic(manifest_location(dataset, split), json.dumps(manifest, indent=1).encode())


INDEX_COLUMNS = ["key", "label", "synset", "shard", "position", "source", "width", "height", "bytes", "crc32c"]


def rows_table(rows: list[list]):
    """A shard's index rows as a pyarrow table: ~10x smaller on the driver than Python lists, which
    matters at 1.28 million rows."""
    import pyarrow as pa

    columns = list(zip(*rows)) if rows else [[] for _ in INDEX_COLUMNS]
    return pa.Table.from_arrays([_arrow_column(list(values), dtype) for values, dtype in zip(columns, _INDEX_TYPES)],
                                names=INDEX_COLUMNS)


_INDEX_TYPES = [str, np.int32, str, str, np.int32, str, np.int32, np.int32, np.int64, np.uint32]


def _arrow_column(values: list, dtype):
    """The pyarrow array of `values` (str, or numbers of numpy type `dtype`), built from its buffers:
    pa.array() imports pandas on its first call (~1 CPU-s of every shard command's driver)."""
    import pyarrow as pa

    if dtype is str:
        data = [value.encode() for value in values]
        offsets = np.zeros(len(data) + 1, dtype=np.int64)
        np.cumsum([len(item) for item in data], out=offsets[1:])
        return pa.Array.from_buffers(pa.large_string(), len(data), [None, pa.py_buffer(offsets),
                                                                    pa.py_buffer(b"".join(data))]).cast(pa.string())
    return pa.Array.from_buffers(pa.from_numpy_dtype(dtype), len(values), [None, pa.py_buffer(np.array(values, dtype))])


def write_index(dataset: str, split: str, tables: list) -> None:
    """`<split>.index.parquet`: one row per sample, queryable without opening a tar."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(pa.concat_tables(tables) if tables else rows_table([]), buffer)
    storage.write_bytes_atomic(index_location(dataset, split), buffer.getvalue())


def read_index(dataset: str, split: str, columns: list[str], read_dictionary: list[str] | None = None) -> pa.Table:
    """Columns of `<split>.index.parquet` as a pyarrow Table.

    Read through Arrow's own file (local, or ranged reads on object storage), not a Python bytes
    object: Arrow's read-ahead releases its buffers on its own threads, sometimes after the read has
    returned, and releasing a Python-owned one takes the GIL. A thread that asks for the GIL while the
    interpreter exits is ended by Python, and the C++ unwinding aborts the process ("terminate called
    without an active exception", exit -6) after the command's work is done. Arrow's own file leaves
    no Python-owned buffer to release."""
    import pyarrow.parquet as pq

    fs, path = storage.resolve(index_location(dataset, split))
    with fs.open_input_file(path) as file:
        return pq.read_table(file, columns=columns, read_dictionary=read_dictionary)


def check_writable(dataset: str) -> None:
    """Fail early, with one line, when the output cannot be written."""
    probe = storage.join(dataset, f".write-check-{os.getpid()}")
    try:
        storage.makedirs(dataset)
        storage.write_bytes_atomic(probe, b"")
        storage.delete(probe)
    except OSError as error:
        raise UserError(f"cannot write to output {dataset}: {error.strerror or error}") from None


def clear_progress(dataset: str, split: str) -> None:
    storage.delete_tree(progress_location(dataset, split))
    folder = storage.join(dataset, PROGRESS_DIR)
    if not storage.is_url(dataset) and os.path.isdir(folder) and not os.listdir(folder):
        os.rmdir(folder)


def clear_split(dataset: str, split: str, *, with_stats: bool) -> None:
    """Remove a split (manifest first, so nothing half-removed looks finished)."""
    storage.delete(manifest_location(dataset, split))
    for name in storage.list_names(dataset):
        if name.startswith(f"{split}-") and name.endswith(".tar"):
            storage.delete(storage.join(dataset, name))
    storage.delete(index_location(dataset, split))
    if with_stats:
        storage.delete(storage.join(dataset, "stats.json"))
    clear_progress(dataset, split)
