"""What the scan meets on real disks: hidden folders, FIFOs, sockets, dangling symlinks, symlink loops,
folders linked into other classes, stray files, empty class folders. Each is skipped and reported with its
reason, never followed, never a hang, never a failed job, and class indices never shift."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import run_cli
from helpers.imagenet_trees import class_tree, sample_files, synset_of
from pipeline.errors import UserError
from pipeline.shard.images import BadImage
from pipeline.shard.labels import check_class_names
from pipeline.shard.job import shard_split
from pipeline.shard.options import ShardOptions
from pipeline.shard.scan_rules import HIDDEN
from pipeline.shard.sources import find_inputs, read_source

LINKED_FOLDER = "symlink to a folder: not followed (only a class folder that links outside the input is)"
STRAY = "not inside a class folder (class folders label their images; this file has none)"


def faulty_tree(tmp_path: Path) -> tuple[Path, dict]:
    """Three real classes of two images, a fourth linked in from outside, one empty class folder between
    them, and one of each fault. Returns (root, names)."""
    images = sample_files()[:8:2]  # every other class: there is room for a class name between two
    a, b, c, d = (synset_of(image) for image in images)
    root = class_tree(tmp_path / "train", images[:3], per_class=2)
    outside = class_tree(tmp_path / "elsewhere", images[3:4])
    os.symlink(outside / d, root / d)  # a class folder kept elsewhere: followed
    empty = f"n{int(a[1:]) + 1:08d}"  # sorts between a and b
    assert a < empty < b
    (root / empty).mkdir()
    (root / ".ipynb_checkpoints").mkdir()
    (root / ".ipynb_checkpoints" / f"{a}_0.JPEG").write_bytes((root / a / f"{a}_0.JPEG").read_bytes())
    (root / a / ".Trash").mkdir()
    (root / a / ".Trash" / "x.JPEG").write_bytes((root / b / f"{b}_0.JPEG").read_bytes())
    (root / a / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / "README.txt").write_text("ImageNet train\n")
    os.mkfifo(root / a / "fifo.JPEG")
    os.symlink("missing.JPEG", root / a / "dangling.JPEG")
    os.symlink("loop.JPEG", root / a / "loop.JPEG")
    os.symlink("..", root / b / "up")  # a loop through the tree
    os.symlink(f"../{c}", root / b / "other")  # into another class
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(root / c / "sock.JPEG"))
    return root, {"a": a, "b": b, "c": c, "d": d, "empty": empty}


def expected_scan_skips(n: dict) -> list[dict]:
    return [{"path": ".ipynb_checkpoints/", "reason": HIDDEN}, {"path": "README.txt", "reason": STRAY},
            {"path": f"{n['a']}/.DS_Store", "reason": HIDDEN}, {"path": f"{n['a']}/.Trash/", "reason": HIDDEN},
            {"path": f"{n['b']}/other/", "reason": LINKED_FOLDER}, {"path": f"{n['b']}/up/", "reason": LINKED_FOLDER}]


def expected_unreadable(n: dict) -> dict[str, str]:
    return {f"{n['a']}/dangling.JPEG": "dangling symlink (its target missing.JPEG does not exist)",
            f"{n['a']}/fifo.JPEG": "not a regular file (a FIFO)", f"{n['a']}/loop.JPEG": "symlink loop",
            f"{n['c']}/sock.JPEG": "not a regular file (a socket)"}


def test_scan_reports_what_it_leaves_out_and_odd_files_never_block(tmp_path):
    root, n = faulty_tree(tmp_path)
    scan = find_inputs(str(root))
    assert scan.skipped == expected_scan_skips(n)
    assert scan.class_folders == sorted([n["a"], n["b"], n["c"], n["d"], n["empty"]])
    images = [f"{s}/{s}_{k}.JPEG" for s in (n["a"], n["b"], n["c"]) for k in (0, 1)] + [f"{n['d']}/{n['d']}_0.JPEG"]
    assert sorted(i.path for i in scan.inputs) == sorted(images + list(expected_unreadable(n)))
    assert all(i.synset == i.path.split("/")[0] for i in scan.inputs)  # nothing relabelled
    signal.signal(signal.SIGALRM, lambda *_: pytest.fail("reading an input blocked"))
    signal.alarm(10)  # a FIFO opened for reading would wait for a writer forever
    try:
        reasons = {}
        for item in scan.inputs:
            try:
                assert read_source(item.source) == (root / item.path).read_bytes()
            except BadImage as error:
                reasons[item.path] = str(error)
    finally:
        signal.alarm(0)
    assert reasons == expected_unreadable(n)


@pytest.mark.slow
def test_shard_a_faulty_tree_reports_every_entry_and_keeps_indices(tmp_path, ray_head):
    root, n = faulty_tree(tmp_path)
    out = tmp_path / "out"
    result = run_cli("shard", root, out, "--split", "train", "--shard-size", "20", "--max-skip-fraction", "0.5",
                     "--address", ray_head, timeout=240)  # a FIFO hang would end in TimeoutExpired
    manifest = json.loads((out / "train.manifest.json").read_text())
    classes = sorted([n["a"], n["b"], n["c"], n["d"], n["empty"]])
    assert [c["synset"] for c in manifest["classes"]] == classes and classes.index(n["empty"]) == 1
    assert f"1 class folder holds no input: {n['empty']} (class 1)" in result.stderr
    assert manifest["skipped"][:6] == expected_scan_skips(n)
    assert {e["path"]: e["reason"] for e in manifest["skipped"][6:]} == expected_unreadable(n)
    assert manifest["inputs_found"] == 17 and manifest["total_samples"] == 7 and "created" not in manifest

    index = pq.read_table(out / "train.index.parquet").to_pylist()
    with tarfile.open(out / "train-000000.tar") as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar]
    assert [name for name, _ in members] == [f"{r['key']}{ext}" for r in index for ext in (".jpg", ".cls", ".json")]
    for row, (jpg, cls, meta) in zip(index, zip(members[0::3], members[1::3], members[2::3])):
        assert row["label"] == classes.index(row["synset"]) and cls[1] == str(row["label"]).encode()
        assert json.loads(meta[1])["source"] == row["source"] and row["source"].startswith(row["synset"] + "/")
        assert row["bytes"] == len(jpg[1])
    assert sorted(r["source"] for r in index) == sorted(
        f"{s}/{s}_{k}.JPEG" for s in (n["a"], n["b"], n["c"]) for k in (0, 1)) + [f"{n['d']}/{n['d']}_0.JPEG"]

    # the console agrees with itself: the bar's last line and the summary count and rate the same inputs
    bar = re.findall(r"shard: (\d+)/(\d+) inputs, 1/1 shard, ([\d.]+) inputs/s", result.stderr)[-1]
    summary = re.search(r"train: 7 samples written in 1 shard -> .*; 10 entries skipped \((\d+) inputs in "
                        r"[\d.]+s, ([\d.]+) inputs/s\)", result.stdout)
    assert summary and bar == ("11", "11", summary.group(2)) and summary.group(1) == "11", (result.stdout, bar)


def test_split_names_and_split_folders_are_refused_with_the_way_out(tmp_path):
    root = tmp_path / "imagenet"
    class_tree(root / "train", sample_files()[:1])
    class_tree(root / "val", sample_files()[1:2])
    with pytest.raises(UserError, match=r"include train, val: that looks like a folder of splits.*--classes FILE"):
        shard_split(ShardOptions(src=str(root), out=str(tmp_path / "out"), split="train"))
    with pytest.raises(UserError, match=r"--split trian: use train or val .*--custom-split"):
        shard_split(ShardOptions(src=str(root / "train"), out=str(tmp_path / "out"), split="trian"))
    with pytest.raises(UserError, match="does not exist"):  # past the flag checks
        shard_split(ShardOptions(src=str(tmp_path / "missing"), out=str(tmp_path / "out"), split="test",
                                 custom_split=True))
    assert not (tmp_path / "out").exists()
    warnings = check_class_names(["cats", "n01440764"], [])
    assert len(warnings) == 1 and "1 class name(s) are not WordNet ids" in warnings[0] and "'cats'" in warnings[0]
