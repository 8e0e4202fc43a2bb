"""Costs that grow with the dataset stay linear and small at ImageNet's 1.28 million samples
(benchmarks/bench_scale.py measures them; docs/benchmarks.md "Costs at ImageNet's size"). Held here at sizes the
suite affords, by the Python-heap peak (tracemalloc) of the pure functions involved."""

from __future__ import annotations

import hashlib
import json
import os
import tracemalloc

import numpy as np
import pyarrow as pa

from pipeline.loader.index import _shard_numbers
from pipeline.shard.job import _inputs_digest
from pipeline.shard.sources import Input, Source, assign_keys, find_inputs, read_source


def _peak(fn, *args):
    tracemalloc.start()
    try:
        value = fn(*args)
        return value, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_index_shard_numbers_decode_each_name_once_not_once_a_row():
    names = [f"train-{i:06d}.tar" for i in range(50)]
    rows = 200_000
    chunks = [pa.array([names[i * 50 // rows] for i in range(start, start + rows // 2)]).dictionary_encode()
              for start in (0, rows // 2)]  # two chunks, each with its own dictionary
    chunks.append(pa.array(["stranger.tar", names[0]]).dictionary_encode())
    column = pa.chunked_array(chunks)
    numbers, peak = _peak(_shard_numbers, column, {name: n for n, name in enumerate(names)})
    expected = [i * 50 // rows for i in range(rows)] + [-1, 0]
    assert numbers.tolist() == expected
    assert peak < 20 * rows  # int64 results and one lookup a chunk; a Python str a row was ~80 bytes a row


def _inputs(count: int) -> list[Input]:
    return [Input(f"n{i % 1000:08d}_{i}", f"n{i % 1000:08d}/n{i % 1000:08d}_{i}.JPEG", f"n{i % 1000:08d}",
                  Source(f"/data/train/n{i % 1000:08d}/n{i % 1000:08d}_{i}.JPEG")) for i in range(count)]


def test_the_inputs_digest_is_the_digest_of_their_json_without_building_it():
    for count in (0, 1, 4001):  # empty, one, and more than one piece
        inputs = _inputs(count)
        whole = json.dumps([[i.key, i.path, i.synset] for i in inputs], separators=(",", ":"))
        assert _inputs_digest(inputs) == hashlib.sha256(whole.encode()).hexdigest()  # reruns keep their config
    inputs = _inputs(60_000)
    _, peak = _peak(_inputs_digest, inputs)
    assert peak < 3_000_000  # the whole list of lists and its JSON were ~15 MB here (~300 MB at 1.28M)


def test_unique_stems_are_the_keys_in_one_pass():
    """ImageNet's file stems are unique: the keys are the stems, with no set of every key built (what
    made the scan's peak ~65 MB higher at 1.28M inputs); one repeated stem still gets path keys."""
    paths = [f"n{i % 100:08d}/n{i % 100:08d}_{i}.JPEG" for i in range(50_000)]
    keys, peak = _peak(assign_keys, paths)
    assert keys == [p.split("/")[1].split(".")[0] for p in paths]
    assert peak < 160 * len(paths)  # the stems and one count each (the key set and second pass were ~180 B/path)
    assert assign_keys(paths + ["x/n00000000_0.JPEG"])[-1] == "x_n00000000_0"


def test_a_folder_scan_holds_one_path_string_a_file(tmp_path):
    """A file found in a class folder is read from folder + its relative path, joined when read: the scan
    keeps ~280 bytes an input instead of ~380 (~120 MB less at 1.28M inputs)."""
    original = tmp_path / "image.JPEG"
    original.write_bytes(b"\xff\xd8 not decoded by the scan")
    tree = tmp_path / "train"
    for c in range(20):
        (tree / f"n{c:08d}").mkdir(parents=True)
        for i in range(250):
            os.link(original, tree / f"n{c:08d}" / f"n{c:08d}_{i}.JPEG")
    tracemalloc.start()
    try:
        scan = find_inputs(str(tree))
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert len(scan.inputs) == 5000 and held < 320 * 5000
    item = scan.inputs[0]
    assert item.source.member is item.path and item.source.file == str(tree / item.path)
    assert read_source(item.source) == original.read_bytes()
