"""The index as the loaders check it: which sample sits at each position of each shard, its label, and
the CRC32C of its stored image (`<split>.index.parquet`, written by `alexnet shard`).

A shard is trusted sample by sample, not as a whole: the sample read at position p of a shard must carry
the key the index lists there, its `.cls` must be exactly the index's label in ASCII decimal, and (with
`verify_checksums`, the default) its `.jpg` must match the index's CRC32C. A sample that fails is an error
naming shard, position and what differs, or a replaced sample under `skip_bad_samples`; it is never
training data. The cost is a few slices and compares (~1 us) plus a hardware CRC32C (~2 us for a
32 KB image), under 1% of a ~500 us decode (benchmarks/bench_checksum.py).

Held compactly (one bytes blob of keys with offsets, numpy labels and checksums: ~30 MB for ImageNet's
1.28 million samples), so forked workers share it and spawned ones unpickle it once per pass.
"""

from __future__ import annotations

import crc32c
import numpy as np

from pipeline import storage
from pipeline.errors import UserError
from pipeline.loader.tar_reader import ShardReadError
from pipeline.shard.manifest import index_location, read_index


class SampleIndex:
    def __init__(self, blob: bytes, offsets: np.ndarray, labels: np.ndarray, checksums: np.ndarray,
                 starts: list[int], verify_checksums: bool):
        self.blob, self.offsets, self.labels, self.checksums = blob, offsets, labels, checksums
        self.starts = starts  # row of each shard's position 0, in manifest order
        self.verify_checksums = verify_checksums

    @classmethod
    def read(cls, dataset: str, split: str, shards: tuple[tuple[str, int], ...], num_classes: int,
             verify_checksums: bool = True) -> SampleIndex:
        """The index in manifest order; UserError naming the file when it disagrees with the manifest."""
        location = index_location(dataset, split)
        if not storage.exists(location):
            raise UserError(f"{location} not found: the loaders check every sample against it (re-shard "
                            "the split with `alexnet shard ... --overwrite`)")
        # the shard column as a dictionary: each name decoded once, not once a row (at 1.28M rows a list
        # of names cost ~100 MB and 0.2 s per rank: benchmarks/bench_scale.py)
        table = read_index(dataset, split, ["key", "label", "shard", "position", "crc32c"], read_dictionary=["shard"])
        names = {name: number for number, (name, _) in enumerate(shards)}
        shard_of = _shard_numbers(table.column("shard"), names)
        position = table.column("position").to_numpy().astype(np.int64)
        counts = [n for _, n in shards]
        starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        order = np.lexsort((position, shard_of))
        found = np.bincount(shard_of[shard_of >= 0], minlength=len(shards))
        if (shard_of < 0).any() or found.tolist() != counts or len(order) != starts[-1] or not np.array_equal(
                position[order], np.arange(len(order)) - starts[shard_of[order]]):
            wrong = next((name for (name, n), m in zip(shards, found.tolist()) if n != m), None)
            detail = f"{wrong}: the index lists {found[names[wrong]]} samples, the manifest {counts[names[wrong]]}" \
                if wrong else "its shards and positions are not the manifest's"
            raise UserError(f"{location} does not match {split}.manifest.json ({detail}): re-shard the split "
                            "with `alexnet shard ... --overwrite`")
        keys = table.column("key").take(order).combine_chunks()
        offsets = np.frombuffer(keys.buffers()[1], dtype=np.int32)[keys.offset:keys.offset + len(keys) + 1]
        labels = table.column("label").to_numpy()[order].astype(np.int64)
        if len(labels) and not (0 <= labels.min() and labels.max() < num_classes):
            raise UserError(f"{location}: a label outside [0, {num_classes}) (the manifest's class count)")
        data = keys.buffers()[2]
        return cls(data.to_pybytes() if data is not None else b"", offsets.astype(np.int64), labels,
                   table.column("crc32c").to_numpy()[order].astype(np.int64), starts[:-1].tolist(),
                   verify_checksums)

    def expected_key(self, shard: int, position: int) -> str:
        row = self.starts[shard] + position
        return self.blob[self.offsets[row]:self.offsets[row + 1]].decode()

    def check(self, where: str, shard: int, position: int, key: str, members: dict) -> tuple:
        """(jpg, label) of the sample at `position` of shard number `shard`, or ShardReadError."""
        row = self.starts[shard] + position
        expected = self.blob[self.offsets[row]:self.offsets[row + 1]]
        if key.encode() != expected:
            raise ShardReadError(f"{where}: position {position} holds sample {key!r}, the index lists "
                                 f"{expected.decode()!r} (a sample the index does not list is never used)")
        jpg, cls = members.get("jpg"), members.get("cls")
        if jpg is None or cls is None:
            raise ShardReadError(f"{where}: sample {key} has no .{'jpg' if jpg is None else 'cls'} member")
        label = int(self.labels[row])
        if bytes(cls) != b"%d" % label:
            raise ShardReadError(f"{where}: member {key}.cls holds {bytes(cls)[:20]!r}, the index lists label "
                                 f"{label}")
        if self.verify_checksums and crc32c.crc32c(jpg) != self.checksums[row]:
            raise ShardReadError(f"{where}: member {key}.jpg does not match its CRC32C in the index (damaged "
                                 "after sharding)")
        return jpg, label


def _shard_numbers(column, names: dict[str, int]) -> np.ndarray:
    """Each row's shard number in the manifest (-1: not listed) from a dictionary-encoded column."""
    numbers = [np.zeros(0, dtype=np.int64)]
    for chunk in column.chunks:
        lookup = np.array([names.get(name, -1) for name in chunk.dictionary.to_pylist()] or [-1], dtype=np.int64)
        numbers.append(lookup[chunk.indices.to_numpy(zero_copy_only=False)])
    return np.concatenate(numbers)

