"""`alexnet inspect`: what a dataset holds, and --verify catching a damaged shard."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

from PIL import Image

from conftest import run_cli
from pipeline.shard.manifest import read_manifest
from pipeline.shard.progress import Progress


def test_inspect_summarises_every_split(sharded_dataset):
    text = run_cli("inspect", sharded_dataset).stdout
    assert "train: 317 samples in 8 shards" in text and "val: 60 samples in 4 shards" in text
    assert "317 classes" in text and "stats (0-255): mean" in text
    report = json.loads(run_cli("inspect", sharded_dataset, "--json").stdout)
    assert report["splits"]["val"]["samples"] == 60 and report["stats"]["pixel_count"] == 317 * 256 * 256


def test_verify_names_a_damaged_or_missing_shard(sharded_dataset, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(sharded_dataset, copy)
    assert "all shards match the manifest" in run_cli("inspect", copy, "--verify").stdout
    shard = copy / "val-000002.tar"
    data = bytearray(shard.read_bytes())
    data[5000] ^= 0xFF  # one flipped bit pattern inside an image: same size, different sha256
    shard.write_bytes(bytes(data))
    (copy / "train-000003.tar").unlink()
    (copy / ".train-000005.tar.k1ll3d.tmp").write_bytes(data[:700])  # what a task killed mid-write leaves
    manifest = json.loads((copy / "val.manifest.json").read_text())
    manifest["shards"][1]["samples"] = 15  # lists fewer samples than the shard holds
    (copy / "val.manifest.json").write_text(json.dumps(manifest))
    result = run_cli("inspect", copy, "--verify", check=False)
    assert result.returncode == 1
    assert "val-000002.tar: sha256 differs" in result.stdout and "train-000003.tar: missing" in result.stdout
    assert "val.index.parquet does not match val.manifest.json (val-000001.tar: the index lists 16 samples, the " \
           "manifest 15)" in result.stdout
    assert "leftover temporary file .train-000005.tar.k1ll3d.tmp" in result.stdout


def test_unfinished_split_is_reported(sharded_dataset, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(sharded_dataset, copy)
    (copy / "val.manifest.json").unlink()
    (copy / ".progress" / "val").mkdir(parents=True)
    (copy / ".progress" / "val" / "config.json").write_text("{}")
    text = run_cli("inspect", copy).stdout
    assert "val: unfinished" in text and "train: 317 samples" in text


def test_inspect_counts_the_grayscale_photographs(sharded_dataset):
    """The suite's sample has grayscale photographs (tests/photos.py): inspect's count is Pillow's."""
    report = json.loads(run_cli("inspect", sharded_dataset, "--json").stdout)["splits"]
    for split in ("train", "val"):
        source = Path(read_manifest(sharded_dataset, split)["source"])
        gray = sum(1 for f in source.rglob("*.JPEG") if Image.open(f).mode == "L")
        assert gray > 0 and report[split]["converted"] == {"L": gray}, split
    assert report["train"]["class_names"][0] == ["n00000000", ""]  # not ILSVRC-2012 synsets: unnamed
    text = run_cli("inspect", sharded_dataset).stdout
    assert f"{report['train']['converted']['L']} grayscale inputs converted to RGB" in text
    assert "(0 of 317 named)" in text


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_a_bar_on_a_terminal_and_lines_otherwise():
    bar, log = _Terminal(), io.StringIO()
    for stream in (bar, log):
        progress = Progress(100, 4, stream=stream, interval_s=0)
        for _ in range(4):
            progress.update(25)
    assert "\r[" in bar.getvalue() and "#" * 30 in bar.getvalue() and "inputs/s" in bar.getvalue()
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and lines[-1].startswith("shard: 100/100 inputs, 4/4 shards")


def test_one_shard_one_class_one_sample_are_said_in_the_singular(capsys):
    from pipeline.shard.inspect import _print_report

    split = {"samples": 1, "shards": 1, "bytes": 4e4, "classes": 1, "image_size": 256, "jpeg_quality": 95,
             "skipped": [], "inputs_found": 1, "source": "/in", "problems": []}
    _print_report({"dataset": "out", "splits": {"train": split}, "unfinished": []}, verify=False)
    assert "train: 1 sample in 1 shard (0.0 MB), 1 class, 256px" in capsys.readouterr().out
