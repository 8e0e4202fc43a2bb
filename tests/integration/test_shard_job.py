"""`alexnet shard` end to end: the real CLI, a real Ray head, real photographs, real S3 (moto)."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import signal
import subprocess
import tarfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from conftest import alexnet_cmd, resize_disk, run_cli
from helpers.imagenet_trees import class_tree, odd_files, sample_files, synset_of, train_tar
from pipeline.shard.manifest import read_manifest
from pipeline.shard.tar_writer import ShardTarWriter
from pipeline.shard.stats import PixelMoments, add_moments, empty_moments, image_moments, read_stats, stats_from_moments


def _read_shard(path: Path) -> list[tuple[str, bytes, int, dict]]:
    """(key, jpeg, label, meta) per sample, checking each sample's three members sit together in order."""
    samples = []
    with tarfile.open(path) as tar:
        members = tar.getmembers()
        assert len(members) % 3 == 0
        for jpg, cls, meta in zip(members[0::3], members[1::3], members[2::3]):
            key = jpg.name[: -len(".jpg")]
            assert (jpg.name, cls.name, meta.name) == (f"{key}.jpg", f"{key}.cls", f"{key}.json")
            assert jpg.mtime == 0 and "." not in key
            samples.append((key, tar.extractfile(jpg).read(), int(tar.extractfile(cls).read()),
                            json.loads(tar.extractfile(meta).read())))
    return samples


def _shard_bytes(folder: Path, split: str = "train") -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob(f"{split}-*.tar"))}


def test_train_split_holds_every_input_once(sharded_dataset):
    folder = Path(sharded_dataset)
    manifest = read_manifest(sharded_dataset, "train")
    images = sample_files()
    synsets = sorted(synset_of(i) for i in images)
    assert manifest["num_classes"] == 317 and [c["synset"] for c in manifest["classes"]] == synsets
    assert [s["samples"] for s in manifest["shards"]] == [40] * 7 + [37]
    assert manifest["total_samples"] == manifest["inputs_found"] == 317 and manifest["skipped"] == []
    seen = []
    for entry in manifest["shards"]:
        path = folder / entry["name"]
        assert path.stat().st_size == entry["bytes"]
        for key, jpeg, label, meta in _read_shard(path):
            with Image.open(io.BytesIO(jpeg)) as img:
                assert (img.format, img.mode, img.size) == ("JPEG", "RGB", (256, 256))
            assert synsets[label] == meta["synset"] and meta["split"] == "train"
            seen.append(meta["source"])
    assert sorted(seen) == sorted(f"{synset_of(i)}/{synset_of(i)}_0.JPEG" for i in images)
    index = pq.read_table(folder / "train.index.parquet").to_pylist()
    assert len(index) == 317 and sorted(r["source"] for r in index) == sorted(seen)
    assert all(synsets[r["label"]] == r["synset"] for r in index)


def test_val_split_takes_train_indices_and_reads_with_webdataset(sharded_dataset):
    import webdataset as wds

    folder = Path(sharded_dataset)
    train_classes = {c["synset"]: c["index"] for c in read_manifest(sharded_dataset, "train")["classes"]}
    with open(folder.parent / "val_labels.csv") as f:
        truth = {row["file"]: row["synset"] for row in csv.DictReader(f)}
    manifest = read_manifest(sharded_dataset, "val")
    assert [s["samples"] for s in manifest["shards"]] == [16, 16, 16, 12]
    expected = {}
    for entry in manifest["shards"]:
        for key, _, label, meta in _read_shard(folder / entry["name"]):
            assert truth[meta["source"]] == meta["synset"] and label == train_classes[meta["synset"]]
            expected[key] = label
    assert len(expected) == len(truth) == 60
    urls = [str(folder / s["name"]) for s in manifest["shards"]]
    dataset = wds.WebDataset(urls, shardshuffle=False).decode("rgb8").to_tuple("__key__", "jpg", "cls")
    got = {}
    for key, image, label in dataset:
        assert image.shape == (256, 256, 3) and image.dtype == np.uint8
        got[key] = int(label)
    assert got == expected


def test_stats_equal_numpy_over_the_stored_images(sharded_dataset):
    images = []  # every stored image decoded with Pillow (not the pipeline's decoder), uint8 0-255
    for path in sorted(Path(sharded_dataset).glob("train-*.tar")):
        for _, jpeg, _, _ in _read_shard(path):
            with Image.open(io.BytesIO(jpeg)) as img:
                images.append(np.asarray(img.convert("RGB")))
    x = np.stack(images).reshape(-1, 3)
    mean = x.mean(axis=0, dtype=np.float64)
    covariance = np.zeros((3, 3))
    for chunk in np.array_split(x, 32):  # two-pass, centred: a different computation from the pipeline's
        centred = chunk - mean
        covariance += centred.T @ centred
    covariance /= len(x)
    stats = read_stats(sharded_dataset)
    assert stats["pixel_count"] == len(x) == 317 * 256 * 256
    np.testing.assert_allclose(stats["mean_rgb"], mean, rtol=1e-9)
    # both agree to ~1e-14; 1e-10 is far tighter than the 1/(N-1) = 5e-8 of a sample covariance
    np.testing.assert_allclose(stats["std_rgb"], np.sqrt(np.diag(covariance)), rtol=1e-10)
    np.testing.assert_allclose(stats["covariance_rgb"], covariance, rtol=1e-10)
    values, vectors = np.linalg.eigh(covariance)
    np.testing.assert_allclose(stats["eigenvalues"], values[::-1], rtol=1e-10)
    for j in range(3):  # eigenvectors up to sign
        assert abs(abs(np.dot(np.array(stats["eigenvectors"])[:, j], vectors[:, 2 - j])) - 1) < 1e-6


def test_stats_are_population_moments_of_few_pixels():
    """Over 3 x 35 pixels the sample covariance (divisor N - 1) is ~1% larger than the population one
    (divisor N) that stats.json holds: a tolerance far tighter than that tells the two apart, as the
    whole-dataset test above cannot (there 1/(N-1) is 5e-8)."""
    patches = []
    for image in sample_files()[:3]:  # real pixels, decoded with Pillow
        with Image.open(image) as img:
            patches.append(np.asarray(img.convert("RGB"))[40:45, 60:67])
    total = empty_moments()
    for patch in patches:  # one moment record per image, summed as the shard tasks' are
        total = add_moments(total, image_moments(patch))
    stats = stats_from_moments(total)
    x = np.concatenate([p.reshape(-1, 3) for p in patches]).astype(np.float64)
    assert stats["pixel_count"] == len(x) == 105
    population, sample = np.cov(x, rowvar=False, bias=True), np.cov(x, rowvar=False, ddof=1)
    np.testing.assert_allclose(stats["mean_rgb"], x.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(stats["covariance_rgb"], population, rtol=1e-9)
    np.testing.assert_allclose(stats["std_rgb"], x.std(axis=0), rtol=1e-9)
    assert not np.allclose(stats["covariance_rgb"], sample, rtol=1e-3, atol=0)
    np.testing.assert_allclose(stats["eigenvalues"], np.linalg.eigvalsh(population)[::-1], rtol=1e-9)


def test_pixel_moments_are_exact_integers():
    """The shard tasks' moments equal int64 sums exactly (not to a tolerance): on stored images of real
    photographs, on several images summed in one accumulator, and at the extremes, where a float32 or a
    rounded accumulation would be off (all-255 pixels; a 2-megapixel image of noise)."""
    from pipeline.shard.images import decode_stored, process_image

    def exact(rgb: np.ndarray) -> dict:
        x = rgb.reshape(-1, 3).astype(np.int64)
        return {"sum": x.sum(axis=0).tolist(), "outer": (x.T @ x).tolist(), "count": len(x)}

    stored = [decode_stored(process_image(path.read_bytes())[0]) for path in sample_files()[:6]]
    running, expected = PixelMoments(), empty_moments()
    for rgb in stored:
        assert image_moments(rgb) == exact(rgb)
        running.add(rgb)
        expected = add_moments(expected, exact(rgb))
    assert running.record() == expected
    extremes = [np.full((256, 256, 3), 255, np.uint8),
                np.random.default_rng(0).integers(0, 256, (1200, 1600, 3), dtype=np.uint8)]
    for rgb in extremes:
        assert image_moments(rgb) == exact(rgb)


def test_shard_tar_writer_writes_what_tarfile_writes():
    """Shards are written without tarfile's header code; byte for byte the same as tarfile's PAX output
    (so a shard's sha256 does not depend on the writer), names too long or not ASCII included."""
    jpeg = sample_files()[0].read_bytes()
    members = [("n01440764_10026.jpg", jpeg), ("n01440764_10026.cls", b"0"), ("n01440764_10026.json", b"{}"),
               ("x" * 96 + ".jpg", b"y" * 512), ("x" * 97 + ".json", b""), ("caf\u00e9_1.jpg", jpeg[:1000])]
    for count in (0, 1, len(members)):
        expected = io.BytesIO()
        with tarfile.open(fileobj=expected, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for name, data in members[:count]:
                info = tarfile.TarInfo(name)
                info.size, info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = \
                    len(data), 0, 0o644, 0, 0, "", ""
                tar.addfile(info, io.BytesIO(data))
        written = io.BytesIO()
        writer = ShardTarWriter(written)
        for name, data in members[:count]:
            writer.add(name, data)
        writer.close()
        assert written.getvalue() == expected.getvalue()
        assert writer.sha256 == hashlib.sha256(expected.getvalue()).hexdigest()


@pytest.mark.slow
def test_ray_data_reads_the_shards(sharded_dataset, ray_head):
    import ray

    ray.init(address=ray_head, logging_level="ERROR")
    try:
        names = [s["name"] for s in read_manifest(sharded_dataset, "val")["shards"]]
        rows = ray.data.read_webdataset([os.path.join(sharded_dataset, n) for n in names]).take_all()
    finally:
        ray.shutdown()
    assert len(rows) == 60 and len({r["__key__"] for r in rows}) == 60
    assert all(r["jpg"].shape == (256, 256, 3) for r in rows[:5])


def _settled_count(folder: Path, pattern: str, quiet_s: float = 5.0, timeout_s: float = 60.0) -> int:
    """The files in `folder` once none has come for `quiet_s`: the shard task in flight when its driver
    was killed may still finish and keep its shard (under load, seconds later), as a user's would."""
    count, changed, deadline = -1, time.time(), time.time() + timeout_s
    while time.time() < deadline:
        now = len(list(folder.glob(pattern)))
        if now != count:
            count, changed = now, time.time()
        elif time.time() - changed >= quiet_s:
            break
        time.sleep(0.1)
    return count


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_bytes_and_reruns_are_idempotent(tmp_path, ray_head):
    src = class_tree(tmp_path / "train", sample_files()[::20], per_class=2)  # 16 classes, 32 images
    args = ["--split", "train", "--shard-size", "2", "--max-in-flight", "1", "--address", ray_head]
    run_cli("shard", src, tmp_path / "a", *args)

    killed = tmp_path / "b"
    proc = subprocess.Popen(alexnet_cmd("shard", src, killed, *args), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    records = killed / ".progress" / "train"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(records.glob("*.tar.json"))) < 3 and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_at_kill = _settled_count(records, "*.tar.json")
    assert 3 <= done_at_kill < 16 and not (killed / "train.manifest.json").exists()

    (killed / ".train-000015.tar.k1ll3d.tmp").write_bytes(b"half a shard")  # a task killed mid-write
    inspected = run_cli("inspect", killed, "--verify", check=False, timeout=60)
    assert inspected.returncode == 1, inspected.stderr  # a leftover temporary file
    assert f"verify: {done_at_kill} finished shards kept (size and sha256 match their records)" in inspected.stdout
    assert "leftover temporary file .train-000015.tar.k1ll3d.tmp" in inspected.stdout
    result = run_cli("shard", src, killed, *args)
    assert "16 shards" in result.stdout
    # the rate is this run's own work; the kept shards are said apart
    assert f"({32 - 2 * done_at_kill} inputs in " in result.stdout, result.stdout
    assert f"inputs/s; {done_at_kill} shards kept from an earlier run)" in result.stdout, result.stdout
    assert _shard_bytes(killed) == _shard_bytes(tmp_path / "a") and len(_shard_bytes(killed)) == 16
    assert (killed / "train.index.parquet").read_bytes() == (tmp_path / "a" / "train.index.parquet").read_bytes()
    assert read_stats(str(killed)) == read_stats(str(tmp_path / "a"))
    assert (killed / "train.manifest.json").read_bytes() == (tmp_path / "a" / "train.manifest.json").read_bytes()
    assert not list(killed.glob(".*.tmp")) and not (killed / ".progress").exists()

    again = run_cli("shard", src, killed, *args)
    assert "nothing to do" in again.stdout
    refused = run_cli("shard", src, killed, *args, "--seed", "1", check=False)
    assert refused.returncode == 2 and "--overwrite" in refused.stderr and "seed 0 -> 1" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert _shard_bytes(killed) == _shard_bytes(tmp_path / "a")


@pytest.mark.slow
def test_odd_files_in_the_train_tar_are_converted_or_skipped_with_reasons(tmp_path, ray_head):
    images = sample_files()[:6]
    root = class_tree(tmp_path / "train", images, per_class=2)
    odd = odd_files(root / synset_of(images[0]), images[1])
    tar = train_tar(root, tmp_path / "ILSVRC2012_img_train.tar")
    out = tmp_path / "out"
    args = ["shard", tar, out, "--split", "train", "--shard-size", "5", "--address", ray_head]

    failed = run_cli(*args, check=False)  # 3 of 20 unreadable: over the default 1% threshold
    assert failed.returncode == 2 and "3 of 20 inputs could not be used" in failed.stderr
    assert not (out / "train.manifest.json").exists()

    run_cli(*args, "--max-skip-fraction", "0.2")
    manifest = read_manifest(str(out), "train")
    skipped = {Path(e["path"]).name: e["reason"] for e in manifest["skipped"]}
    assert set(skipped) == {name for name, converts in odd.items() if not converts}
    assert "truncated" in skipped[f"{synset_of(images[0])}_truncated.JPEG"]
    assert manifest["inputs_found"] == 20 == manifest["total_samples"] + len(skipped)
    sources = {r["source"] for r in pq.read_table(out / "train.index.parquet").to_pylist()}
    converted = {f"{synset_of(images[0])}/{name}" for name, converts in odd.items() if converts}
    assert converted <= sources and len(sources) == 17
    # each input that was not RGB counted under its mode, as Pillow's header reader names it
    modes = Counter(Image.open(root / source).mode for source in sources)
    assert manifest["converted"] == {mode: modes[mode] for mode in sorted(modes) if mode != "RGB"}
    assert {"CMYK", "L", "P", "RGBA"} <= set(manifest["converted"])


@pytest.mark.slow
def test_writes_to_s3_and_verifies_there(tmp_path, ray_head, s3_bucket):
    src = class_tree(tmp_path / "train", sample_files()[:8])
    out = f"s3://{s3_bucket}/imagenet"
    run_cli("shard", src, out, "--split", "train", "--shard-size", "3", "--address", ray_head)
    manifest = read_manifest(out, "train")
    assert manifest["total_samples"] == 8 and len(manifest["shards"]) == 3
    assert read_stats(out)["pixel_count"] == 8 * 256 * 256
    result = run_cli("inspect", out, "--verify")  # re-reads every shard from S3 against its sha256
    assert "all shards match" in result.stdout
    from pipeline import storage

    with tarfile.open(fileobj=io.BytesIO(storage.read_bytes(f"{out}/train-000000.tar"))) as tar:
        assert len(tar.getnames()) == 9


def test_user_errors_are_one_line_and_leave_nothing_finished(tmp_path):
    src = class_tree(tmp_path / "train", sample_files()[:2])
    (tmp_path / "empty").mkdir()
    (tmp_path / "a_file").write_text("x")
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "ILSVRC2012_val_00000001.JPEG").write_bytes(sample_files()[0].read_bytes())
    bad_labels = tmp_path / "labels.csv"
    bad_labels.write_text("file,synset\nILSVRC2012_val_00000001.JPEG\n")
    out = tmp_path / "out"
    cases = [
        (["shard", tmp_path / "missing", out, "--split", "train"], "does not exist"),
        (["shard", tmp_path / "empty", out, "--split", "train"], "holds no image files"),
        (["shard", src, tmp_path / "a_file" / "out", "--split", "train"], "cannot write to output"),
        (["shard", flat, out, "--split", "val", "--labels", bad_labels], "labels.csv, line 2"),
        (["shard", flat, out, "--split", "val"], "--labels"),
        (["shard", src, out, "--split", "val"], "shard the train split"),
        (["shard", src, out, "--split", "train", "--quality", "0"], "--quality"),
        (["inspect", out], "not a folder"),
    ]
    for args, message in cases:
        result = run_cli(*args, check=False)
        assert result.returncode == 2, (args, result.stderr)
        assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (out / "train.manifest.json").exists() and not (out / "val.manifest.json").exists()


def test_small_dataset_fixture_is_what_training_tests_expect(small_dataset):
    train, val = read_manifest(small_dataset, "train"), read_manifest(small_dataset, "val")
    assert train["num_classes"] == val["num_classes"] == 10 and train["classes"] == val["classes"]
    assert [s["samples"] for s in train["shards"]] == [16] * 7 + [8]
    assert [s["samples"] for s in val["shards"]] == [8] * 5
    labels = pq.read_table(Path(small_dataset) / "train.index.parquet").column("label").to_pylist()
    assert sorted(set(labels)) == list(range(10)) and all(labels.count(c) == 12 for c in range(10))


@pytest.mark.slow
def test_a_full_disk_is_said_once_not_retried_and_leaves_no_partial_shard(small_disk, ray_head, tmp_path):
    tree = class_tree(tmp_path / "train", sample_files()[:3], per_class=3)  # 9 shards of one image, ~40 KB each
    out = small_disk / "out"
    args = ["shard", tree, out, "--split", "train", "--shard-size", "1", "--address", ray_head]
    result = run_cli(*args, check=False, timeout=300)
    console = result.stdout + result.stderr
    assert result.returncode == 2, console
    last = result.stderr.strip().splitlines()[-1]
    assert "no space left on device" in last and str(out) in last, last
    assert last.endswith("Finished shards are kept and no partial one is left: free space (or fix the "
                         "permissions) and give the same command again to continue")
    assert "Traceback" not in console and "retr" not in console.replace(last, "")  # no retry, no stack
    assert not [n for n in os.listdir(out) if n.endswith(".tmp")] and not (out / "train.manifest.json").exists()
    resize_disk(small_disk, "8m")  # space freed: the same command finishes the split
    run_cli(*args, timeout=300)
    assert read_manifest(str(out), "train")["total_samples"] == 9
