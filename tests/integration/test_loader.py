"""TrainLoader / EvalLoader on real shards written by `alexnet shard` from the sample photographs.

Samples are identified independently of the loader: the `sharded_dataset` train split has one image per
class, so a label names a sample; stored images are read back with `tarfile` and decoded with Pillow.
"""

from __future__ import annotations

import io
import json
import pickle
import random
import re
import shutil
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from pipeline.errors import UserError
from pipeline.loader.loaders import EvalLoader, ShardReadError, TrainLoader
from pipeline.loader.plan import EpochShare, shard_order, worker_plan


def stored_samples(dataset: str, split: str) -> list[tuple[str, str, np.ndarray, int]]:
    """(shard, key, HWC uint8 image, label) of every sample, in manifest order, read without our code."""
    manifest = json.loads(Path(dataset, f"{split}.manifest.json").read_text())
    samples = []
    for shard in manifest["shards"]:
        with tarfile.open(Path(dataset, shard["name"])) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}
        keys = sorted({name.split(".", 1)[0] for name in members}, key=lambda k: list(members).index(k + ".jpg"))
        for key in keys:
            image = np.asarray(Image.open(io.BytesIO(members[key + ".jpg"])).convert("RGB"))
            samples.append((shard["name"], key, image, int(members[key + ".cls"])))
    return samples


def nhwc(images) -> np.ndarray:
    return images.movedim(-3, -1).numpy()


def find_patch(source: np.ndarray, patch: np.ndarray) -> tuple[int, int, bool] | None:
    """Where `patch` sits in `source` (row, column, mirrored), searching every offset; None if nowhere."""
    crop = patch.shape[0]
    for flipped in (False, True):
        image = source[:, ::-1] if flipped else source
        limit = image.shape[0] - crop + 1, image.shape[1] - crop + 1
        corners = np.lib.stride_tricks.sliding_window_view(image[:limit[0] + 3, :limit[1] + 3], (4, 4, 3))
        hits = np.argwhere((corners[:, :, 0] == patch[:4, :4]).all(axis=(2, 3, 4)))
        for row, col in hits:
            if np.array_equal(image[row:row + crop, col:col + crop], patch):
                return int(row), int(col), flipped
    return None


def copy_split(dataset: str, split: str, to: Path) -> Path:
    to.mkdir()
    for path in Path(dataset).glob(f"{split}*"):
        shutil.copy(path, to / path.name)
    return to


# --- dealing: pure arithmetic over many shapes -------------------------------------------------------

@pytest.mark.parametrize("shard_samples", [[40] * 7 + [37], [16, 16, 16, 12], [5], [300, 7, 250, 64, 1]])
def test_plan_deals_each_sample_at_most_once_with_equal_batch_counts(shard_samples):
    total = sum(shard_samples)
    for world_size in (1, 2, 3, 5):
        for batch_size in (1, 4, 16):
            if total < world_size * batch_size:
                continue
            for workers in (1, 2, 3, 7):
                dealt, per_rank = [], []
                for rank in range(world_size):
                    batch_ids = []
                    for worker in range(workers):
                        share = EpochShare(seed=3, epoch=1, rank=rank, world_size=world_size,
                                           batch_size=batch_size, num_workers=workers, window=10)
                        plan = worker_plan(shard_samples, share, worker=worker, drop_last=True, shuffle=True)
                        read = [(s, p) for s, lo, hi in plan.pieces for p in range(lo, hi)]
                        assert sorted(plan.order) == list(range(len(read)))
                        assert len(read) == sum(plan.batch_sizes)
                        assert set(plan.batch_sizes) <= {batch_size}
                        dealt += read
                        batch_ids += plan.batch_ids
                    assert sorted(batch_ids) == list(range(len(batch_ids)))
                    per_rank.append(len(batch_ids))
                assert len(set(per_rank)) == 1  # every rank the same number of batches
                assert len(dealt) == len(set(dealt))  # no sample twice
                assert all(0 <= p < shard_samples[s] for s, p in dealt)
                assert total - len(dealt) < world_size * batch_size


# --- training loader on real shards ------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore:This DataLoader will create")
@pytest.mark.parametrize("world_size,num_workers,batch_size", [(1, 0, 32), (2, 2, 16), (3, 1, 24), (4, 3, 10)])
def test_training_epoch_is_exactly_once_with_equal_batch_counts(sharded_dataset, world_size, num_workers,
                                                                batch_size):
    total = 317  # one image per class, so a label identifies a sample
    epochs = []
    for epoch in (0, 1):
        labels, counts = [], []
        for rank in range(world_size):
            loader = TrainLoader(sharded_dataset, batch_size, rank=rank, world_size=world_size, seed=7,
                                 num_workers=num_workers)
            loader.set_epoch(epoch)
            batches = list(loader)
            counts.append(len(batches))
            assert len(batches) == len(loader)
            for images, batch_labels in batches:
                assert images.shape == (batch_size, 3, 224, 224) and images.dtype.is_floating_point is False
                labels += batch_labels.tolist()
        assert len(set(counts)) == 1
        assert len(labels) == len(set(labels)) == world_size * counts[0] * batch_size
        assert 0 <= total - len(labels) < world_size * batch_size
        epochs.append(labels)
    assert epochs[0] != epochs[1]  # each epoch its own order


def test_training_crops_and_flips_are_patches_of_the_stored_image(sharded_dataset):
    sources = {label: image for _, _, image, label in stored_samples(sharded_dataset, "train")}
    places = []
    for crop, batches in ((224, None), (227, 1)):
        loader = TrainLoader(sharded_dataset, 32, num_workers=2, crop=crop, seed=1)
        for n, (images, labels) in enumerate(loader):
            if batches is not None and n >= batches:
                break
            assert images.shape == (32, 3, crop, crop)
            for patch, label in zip(nhwc(images), labels.tolist()):
                place = find_patch(sources[label], patch)
                assert place is not None, f"image of class {label} is not a crop of its stored image"
                places.append(place)
    flips = sum(flipped for _, _, flipped in places) / len(places)
    assert 0.35 < flips < 0.65
    assert len({(row, col) for row, col, _ in places}) > len(places) // 2  # offsets spread over the image
    assert max(row for row, _, _ in places) > 24 and min(col for _, col, _ in places) < 8


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
def test_resume_after_k_batches_equals_the_uninterrupted_stream(sharded_dataset):
    def loader(**kw):
        return TrainLoader(sharded_dataset, 12, rank=1, world_size=2, seed=5, epoch=2, num_workers=3, **kw)

    rng_states = torch.get_rng_state(), random.getstate(), np.random.get_state()
    full = list(loader())
    assert len(full) == 13
    # a pass leaves the global RNGs alone (torch's draws dropout masks: a resumed run must see the same)
    torch_state, py_state, np_state = rng_states
    assert torch.equal(torch.get_rng_state(), torch_state) and random.getstate() == py_state
    assert np.array_equal(np.random.get_state()[1], np_state[1]) and np.random.get_state()[2:] == np_state[2:]
    for k in (1, 4, 11, 13):
        interrupted = loader()
        for n, _ in enumerate(interrupted):
            if n == k - 1:
                state = json.loads(json.dumps(interrupted.state_dict()))  # JSON round trip
                break
        assert state["batches"] == k and state["epoch"] == 2 and state["seed"] == 5
        resumed = TrainLoader(sharded_dataset, 12, rank=1, world_size=2, seed=0, num_workers=3)
        resumed.load_state_dict(state)
        rest = list(resumed)
        assert len(rest) == len(full) - k
        for (images, labels), (want_images, want_labels) in zip(rest, full[k:]):
            assert labels.tolist() == want_labels.tolist()
            assert np.array_equal(images.numpy(), want_images.numpy())
        resumed.set_epoch(3)  # the next epoch starts from its first batch
        assert len(list(resumed)) == len(full)

    with pytest.raises(UserError, match="shuffle_window"):  # (other world sizes: tests/integration/test_elastic.py)
        TrainLoader(sharded_dataset, 12, rank=1, world_size=2, shuffle_window=5).load_state_dict(state)


def test_resume_does_not_decode_the_skipped_samples(sharded_dataset, monkeypatch):
    import pipeline.loader.stream as stream

    decoded = []
    real_decode = stream.simplejpeg.decode_jpeg
    monkeypatch.setattr(stream.simplejpeg, "decode_jpeg", lambda data, **kw: decoded.append(1) or
                        real_decode(data, **kw))
    loader = TrainLoader(sharded_dataset, 16, seed=2, num_workers=0)  # in-process, so the count is visible
    loader.load_state_dict({"epoch": 0, "batches": 15, "seed": 2})
    assert len(list(loader)) == len(loader) - 15 == 4
    assert len(decoded) == 4 * 16


def test_worker_batches_are_lent_slots_that_come_back_when_dropped(sharded_dataset):
    # Workers' batches are views of reused shared-memory slots. A plain loop drops each batch before the
    # next arrives, so every batch travels in a slot; a pass left half-way must give its slots back.
    want = [(images.clone(), labels) for images, labels in TrainLoader(sharded_dataset, 8, seed=3, num_workers=2)]
    loader = TrainLoader(sharded_dataset, 8, seed=3, num_workers=2, prefetch_factor=1)
    for _ in range(3):  # each time, workers hold slots for batches never received
        for n, (images, _) in enumerate(loader):
            if n == 2:
                break
        del images
        loader.set_epoch(1)
        loader.set_epoch(0)  # from the first batch again
    for _ in range(2):  # those slots are free again: no batch falls back
        loader.set_epoch(1)
        loader.set_epoch(0)
        for (images, labels), (want_images, want_labels) in zip(loader, want, strict=True):
            assert torch.equal(labels, want_labels) and torch.equal(images, want_images)
        del images, labels
    assert loader.fallback_batches == 0


def test_batches_the_caller_keeps_stay_intact(sharded_dataset):
    # list() keeps every batch: the workers run out of slots and send the rest the DataLoader's way
    want = [(images.clone(), labels) for images, labels in TrainLoader(sharded_dataset, 8, seed=3, num_workers=2)]
    loader = TrainLoader(sharded_dataset, 8, seed=3, num_workers=2, prefetch_factor=1)
    kept = list(loader)
    assert loader.fallback_batches > 0
    loader.set_epoch(1)
    for _ in loader:  # a whole further pass must not write into the slots of batches still kept
        pass
    assert len(kept) == len(want)
    for (images, labels), (want_images, want_labels) in zip(kept, want):
        assert torch.equal(labels, want_labels) and torch.equal(images, want_images)


def test_one_pass_at_a_time(sharded_dataset):
    loader = TrainLoader(sharded_dataset, 8, num_workers=1)
    first = iter(loader)
    next(first)
    with pytest.raises(UserError, match="already in a pass"):
        next(iter(loader))
    first.close()
    assert len(list(loader)) == len(loader)


def test_spawned_workers_give_the_in_process_batches(sharded_dataset):
    spawned = list(EvalLoader(sharded_dataset, 16, num_workers=1, multiprocessing_context="spawn"))
    in_process = list(EvalLoader(sharded_dataset, 16, num_workers=0))
    assert len(spawned) == len(in_process) > 1
    for (images, labels), (want_images, want_labels) in zip(spawned, in_process):
        assert torch.equal(labels, want_labels) and torch.equal(images, want_images)
        assert images.stride(1) == 1 and images.stride(3) == 3  # NHWC memory (rows padded: pipeline/loader/layout.py)


# --- evaluation loaders ------------------------------------------------------------------------------

@pytest.mark.parametrize("world_size,num_workers", [(1, 0), (3, 2)])
def test_eval_centre_crops_cover_every_sample_once(sharded_dataset, world_size, num_workers):
    stored = stored_samples(sharded_dataset, "val")
    expected = Counter((image[16:240, 16:240].tobytes(), label) for _, _, image, label in stored)
    seen = Counter()
    for rank in range(world_size):
        loader = EvalLoader(sharded_dataset, 7, rank=rank, world_size=world_size, num_workers=num_workers)
        batches = list(loader)
        assert len(batches) == len(loader)
        for images, labels in batches:
            seen.update(zip((p.tobytes() for p in nhwc(images)), labels.tolist()))
    assert seen == expected


def test_ten_crop_patches_are_the_corner_centre_and_mirrored_slices(sharded_dataset):
    stored = {image[16:240, 16:240].tobytes(): (image, label) for _, _, image, label in
              stored_samples(sharded_dataset, "val")}
    count = 0
    for rank in range(2):
        for images, labels in EvalLoader(sharded_dataset, 8, ten_crop=True, rank=rank, world_size=2):
            assert images.shape[1:] == (10, 3, 224, 224)
            for crops, label in zip(nhwc(images), labels.tolist()):
                image, want_label = stored[crops[4].tobytes()]
                assert label == want_label
                slices = [image[:224, :224], image[:224, 32:], image[32:, :224], image[32:, 32:],
                          image[16:240, 16:240]]
                for i, patch in enumerate(slices):
                    assert np.array_equal(crops[i], patch)
                    assert np.array_equal(crops[5 + i], patch[:, ::-1])
                count += 1
    assert count == len(stored)


def test_images_not_of_the_manifest_size_are_cropped_from_their_own_pixels(sharded_dataset, tmp_path):
    """Images of the manifest's size are decoded in place (pipeline/loader/layout.py); any other size takes the
    copying path, and one smaller than the crop is named."""
    folder = copy_split(sharded_dataset, "train", tmp_path / "data")
    shard = folder / "train-000003.tar"
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar]
    jpgs = [m.name for m, _ in members if m.name.endswith(".jpg")]
    wide, small = jpgs[2], jpgs[5]
    sources = {}
    for name, size in ((wide, (300, 260)), (small, (300, 200))):
        original = dict((m.name, d) for m, d in members)[name]
        encoded = io.BytesIO()
        Image.open(io.BytesIO(original)).convert("RGB").resize(size).save(encoded, "JPEG", quality=90)
        sources[name] = encoded.getvalue()

    def write(replace: set[str]) -> None:
        with tarfile.open(shard, "w") as out:
            for member, data in members:
                data = sources[member.name] if member.name in replace else data
                member.size = len(data)
                out.addfile(member, io.BytesIO(data))

    write({wide, small})
    with pytest.raises(ShardReadError, match=rf"train-000003\.tar: member {small} is 300x200, smaller than the "
                                              "224-pixel crop"):
        list(TrainLoader(str(folder), 16, num_workers=2, verify_checksums=False))  # replaced images: new CRCs

    write({wide})
    label = int(dict((m.name, d) for m, d in members)[wide.replace(".jpg", ".cls")])
    source = np.asarray(Image.open(io.BytesIO(sources[wide])).convert("RGB"))
    assert source.shape == (260, 300, 3)
    seen = 0
    for num_workers in (0, 2):
        for images, labels in TrainLoader(str(folder), 16, num_workers=num_workers, seed=4, verify_checksums=False):
            for patch, got in zip(nhwc(images), labels.tolist()):
                if got == label:
                    assert find_patch(source, patch) is not None
                    seen += 1
    assert seen == 2
    (images, labels), = [b for b in EvalLoader(str(folder), 317, split="train", num_workers=1, verify_checksums=False)]
    centre = nhwc(images)[labels.tolist().index(label)]
    assert np.array_equal(centre, source[18:242, 38:262])


# --- bad shards --------------------------------------------------------------------------------------

def test_truncated_shard_names_shard_and_member(small_dataset, tmp_path):
    folder = copy_split(small_dataset, "train", tmp_path / "data")
    shard = folder / "train-000002.tar"
    with tarfile.open(shard) as tar:
        member = [m for m in tar if m.name.endswith(".jpg")][3]
    data = shard.read_bytes()
    shard.write_bytes(data[:member.offset_data + member.size // 2])
    with pytest.raises(ShardReadError, match=rf"train-000002\.tar.*{member.name}"):
        for _ in TrainLoader(str(folder), 8, num_workers=2):
            pass

    shard.write_bytes(data)  # whole again, but one member's header garbled
    with tarfile.open(shard) as tar:
        members = [m for m in tar]
    garbled = bytearray(data)
    garbled[members[4].offset + 3] ^= 0x55  # a byte of the member's name: only the checksum notices
    shard.write_bytes(bytes(garbled))
    with pytest.raises(ShardReadError, match=rf"train-000002\.tar: corrupt tar header .*after {members[3].name}"):
        list(TrainLoader(str(folder), 8, num_workers=2, seed=3))


def test_corrupt_jpeg_fails_clearly_or_is_replaced_when_asked(small_dataset, tmp_path):
    folder = copy_split(small_dataset, "train", tmp_path / "data")
    shard = folder / "train-000001.tar"
    with tarfile.open(shard) as tar:
        member = [m for m in tar if m.name.endswith(".jpg")][5]
    data = bytearray(shard.read_bytes())
    data[member.offset_data:member.offset_data + 64] = bytes(64)  # no JPEG markers left
    shard.write_bytes(bytes(data))

    with pytest.raises(ShardReadError, match=rf"train-000001\.tar: member {member.name} is not a readable JPEG"):
        list(TrainLoader(str(folder), 8, num_workers=2, verify_checksums=False))  # the decoder's own error
    with pytest.raises(ShardReadError, match=rf"train-000001\.tar: member {member.name} does not match its CRC32C"):
        list(TrainLoader(str(folder), 8, num_workers=2))

    loader = TrainLoader(str(folder), 8, num_workers=2, skip_bad_samples=True)
    with pytest.warns(UserWarning, match="1 unreadable samples were replaced"):
        batches = list(loader)
    assert len(batches) == len(loader) == 15 and all(len(labels) == 8 for _, labels in batches)
    assert loader.replaced_samples == 1


def test_missing_shard_is_named_before_any_work(small_dataset, tmp_path):
    folder = copy_split(small_dataset, "train", tmp_path / "data")
    (folder / "train-000004.tar").unlink()
    with pytest.raises(ShardReadError, match=r"missing: train-000004\.tar"):
        list(TrainLoader(str(folder), 8, num_workers=2))


def test_other_members_are_never_unpickled(small_dataset, tmp_path):
    class Trap:
        def __reduce__(self):
            return (Path(tmp_path / "unpickled").touch, ())

    folder = copy_split(small_dataset, "train", tmp_path / "data")
    shard = folder / "train-000000.tar"
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar]
    with tarfile.open(shard, "w") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data))
            if info.name.endswith(".json"):
                for ext in ("pyd", "pickle"):
                    trap = pickle.dumps(Trap())
                    extra = tarfile.TarInfo(info.name.replace(".json", f".{ext}"))
                    extra.size = len(trap)
                    tar.addfile(extra, io.BytesIO(trap))
    assert len(list(TrainLoader(str(folder), 8, num_workers=0))) == 15
    assert not (tmp_path / "unpickled").exists()


# --- object storage ----------------------------------------------------------------------------------

def test_streams_from_s3_and_matches_local(small_dataset, s3_bucket):
    import pyarrow.fs as pafs

    from pipeline import storage

    fs, root = storage.resolve(f"s3://{s3_bucket}/data")
    for path in Path(small_dataset).glob("train*"):
        with fs.open_output_stream(f"{root}/{path.name}") as out:
            out.write(path.read_bytes())
    assert isinstance(fs, pafs.S3FileSystem)
    remote = list(TrainLoader(f"s3://{s3_bucket}/data", 16, seed=4, num_workers=2))
    local = list(TrainLoader(small_dataset, 16, seed=4, num_workers=2))
    assert len(remote) == len(local) == 7
    for (images, labels), (want_images, want_labels) in zip(remote, local):
        assert labels.tolist() == want_labels.tolist() and np.array_equal(images.numpy(), want_images.numpy())


# --- issue 18: what an epoch leaves out, and every crop offset -----------------------------------------

@pytest.mark.filterwarnings("ignore:This DataLoader will create")
def test_samples_left_out_of_an_epoch_change_with_the_epoch(sharded_dataset):
    """317 samples, 2 ranks x batch 32: 61 are left out of each epoch. They sit at the end of the epoch's
    shard order, so a shard order that ignored the epoch would leave out the same 61 every epoch."""
    shard_of = {label: shard for shard, _, _, label in stored_samples(sharded_dataset, "train")}
    left_out = []
    for epoch in (0, 1, 2):
        seen = []
        for rank in range(2):
            loader = TrainLoader(sharded_dataset, 32, rank=rank, world_size=2, seed=7, num_workers=2)
            loader.set_epoch(epoch)
            seen += [label for _, labels in loader for label in labels.tolist()]
        assert len(seen) == len(set(seen)) == 256
        left_out.append(set(shard_of) - set(seen))
    assert [len(s) for s in left_out] == [61] * 3
    assert len({frozenset(s) for s in left_out}) == 3  # each epoch leaves out others
    shards = [sorted({shard_of[label] for label in s}) for s in left_out]
    assert len({tuple(s) for s in shards}) > 1, shards  # ...from other shards: the shard order moved
    orders = {tuple(shard_order(8, 7, epoch, shuffle=True)) for epoch in range(5)}
    assert len(orders) == 5


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
def test_training_crops_take_every_offset(sharded_dataset):
    """The 224 crop of a 256 image may start at any of rows and columns 0..32 (33 values each); a
    range one short never reaches 32. A 255 crop has only offsets 0 and 1: both must occur."""
    sources = {label: image for _, _, image, label in stored_samples(sharded_dataset, "train")}
    for crop, batches in ((224, None), (255, 1)):
        rows, cols = set(), set()
        for n, (images, labels) in enumerate(TrainLoader(sharded_dataset, 32, num_workers=2, crop=crop, seed=5)):
            if batches is not None and n >= batches:
                break
            for patch, label in zip(nhwc(images), labels.tolist()):
                row, col, flipped = find_patch(sources[label], patch)
                rows.add(row)
                cols.add(256 - crop - col if flipped else col)  # the column in the unmirrored image
        assert rows == cols == set(range(256 - crop + 1)), (crop, sorted(rows), sorted(cols))


# --- every sample checked against the index ----------------------------------------------------------

def rewrite_shard(shard: Path, edit) -> list[tuple[tarfile.TarInfo, bytes]]:
    """Rewrite a shard with `edit(members)` applied to its [(info, data)]; returns the original members."""
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar]
    with tarfile.open(shard, "w") as out:
        for info, data in edit(list(members)):
            info = tarfile.TarInfo(info) if isinstance(info, str) else info
            info.size = len(data)
            out.addfile(info, io.BytesIO(data))
    return members


def test_a_sample_the_index_does_not_list_is_never_trained_on(small_dataset, tmp_path):
    from pipeline.shard.inspect import verify_split
    from pipeline.shard.manifest import read_manifest

    folder = copy_split(small_dataset, "train", tmp_path / "data")
    shard = folder / "train-000002.tar"

    def insert_foreign(members):  # a foreign sample at position 5, made of another sample's image
        foreign = [("../../tmp/x.jpg", members[0][1]), ("../../tmp/x.cls", b"3"), ("../../tmp/x.json", b"{}")]
        return members[:15] + foreign + members[15:]

    members = rewrite_shard(shard, insert_foreign)
    key5 = members[15][0].name.split(".")[0]
    message = rf"train-000002\.tar: position 5 holds sample '\.\./\.\./tmp/x', the index lists '{key5}'"
    with pytest.raises(ShardReadError, match=message):
        list(TrainLoader(str(folder), 8, num_workers=0))
    manifest = read_manifest(str(folder), "train")
    listed = next(s["bytes"] for s in manifest["shards"] if s["name"] == "train-000002.tar")
    size, sample = verify_split(str(folder), "train", manifest)  # inspect --verify
    assert f"train-000002.tar: {shard.stat().st_size} bytes, manifest says {listed}" in size
    assert shard.stat().st_size > listed and re.search(message, sample)

    loader = TrainLoader(str(folder), 8, num_workers=0, skip_bad_samples=True)  # in-process: warnings seen here
    with pytest.warns(UserWarning) as caught:
        batches = list(loader)
    assert len(batches) == 15 and loader.replaced_samples == 11  # positions 5..15 of the 16 the index lists
    assert any("holds more than the 16 samples the manifest lists" in str(w.message) for w in caught)


def test_cls_must_be_exactly_the_index_label(sharded_dataset, tmp_path):
    folder = copy_split(sharded_dataset, "train", tmp_path / "data")
    rows = pq.read_table(folder / "train.index.parquet").to_pylist()
    for label, lenient in ((10, b"1_0"), (5, b" +5 ")):  # int() would read both as the label
        row = next(r for r in rows if r["label"] == label)
        shard = folder / row["shard"]
        members = rewrite_shard(shard, lambda ms: [(i, lenient if i.name == f"{row['key']}.cls" else d) for i, d in ms])
        with pytest.raises(ShardReadError, match=rf"{row['shard']}: member {row['key']}\.cls holds "
                                                  rf"{re.escape(repr(lenient))}, the index lists label {label}"):
            list(EvalLoader(str(folder), 64, split="train", num_workers=0))
        rewrite_shard(shard, lambda _: members)


def test_silent_jpeg_damage_is_caught_by_the_index_checksum(small_dataset, tmp_path):
    folder = copy_split(small_dataset, "train", tmp_path / "data")
    shard = folder / "train-000003.tar"
    with tarfile.open(shard) as tar:
        member = [m for m in tar if m.name.endswith(".jpg")][2]
    data = bytearray(shard.read_bytes())
    data[member.offset_data + member.size // 2] ^= 0x10  # one bit in the entropy-coded data: same size
    shard.write_bytes(bytes(data))
    with pytest.raises(ShardReadError, match=rf"train-000003\.tar: member {member.name} does not match its "
                                              "CRC32C in the index"):
        list(TrainLoader(str(folder), 8, num_workers=0))
    loader = TrainLoader(str(folder), 8, num_workers=0, skip_bad_samples=True)
    with pytest.warns(UserWarning, match="1 unreadable samples were replaced"):
        assert len(list(loader)) == 15
    assert loader.replaced_samples == 1


def test_manifest_and_index_disagreeing_with_a_shard_are_refused(small_dataset, tmp_path):
    folder = copy_split(small_dataset, "train", tmp_path / "data")
    manifest_path = folder / "train.manifest.json"
    original = json.loads(manifest_path.read_text())
    manifest = json.loads(manifest_path.read_text())
    manifest["shards"][1]["samples"] = 15  # lists fewer samples than the shard holds
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(UserError, match=r"train\.index\.parquet does not match train\.manifest\.json "
                                         r"\(train-000001\.tar: the index lists 16 samples, the manifest 15\)"):
        TrainLoader(str(folder), 8)
    index = pq.read_table(folder / "train.index.parquet")  # the index edited the same way: the shard tells
    keep = [not (r["shard"] == "train-000001.tar" and r["position"] == 15) for r in index.to_pylist()]
    pq.write_table(index.filter(keep), folder / "train.index.parquet")
    with pytest.raises(ShardReadError, match=r"train-000001\.tar: holds more than the 15 samples the manifest lists"):
        list(EvalLoader(str(folder), 16, split="train", num_workers=0))

    original["format"] = 1  # a dataset made by the previous version
    manifest_path.write_text(json.dumps(original))
    with pytest.raises(UserError, match=r"train\.manifest\.json has format 1; .*--overwrite"):
        TrainLoader(str(folder), 8)
