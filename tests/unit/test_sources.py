"""Finding inputs in each ImageNet layout, label files in each form users have, keys."""

from __future__ import annotations

import pytest

from helpers.imagenet_trees import class_tree, flat_val, sample_files, synset_of, train_tar
from pipeline.errors import UserError
from pipeline.shard.labels import read_class_list, read_labels
from pipeline.shard.scan_rules import HIDDEN
from pipeline.shard.sources import assign_keys, find_inputs, read_source


@pytest.fixture(scope="module")
def images():
    return sample_files()[:6]


def test_class_folders(tmp_path, images):
    root = class_tree(tmp_path / "train", images, per_class=2)
    (root / images[0].name.split("_")[0] / ".DS_Store").write_bytes(b"junk")  # hidden: skipped, reported
    scan = find_inputs(str(root))
    inputs = scan.inputs
    assert len(inputs) == 12
    assert scan.skipped == [{"path": f"{synset_of(images[0])}/.DS_Store", "reason": HIDDEN}]
    assert scan.class_folders == sorted({synset_of(image) for image in images})
    assert [i.path for i in inputs] == sorted(i.path for i in inputs)
    assert {i.synset for i in inputs} == {synset_of(image) for image in images}
    first = inputs[0]
    assert first.key == first.path.split("/")[1].split(".")[0] and "." not in first.key
    assert read_source(first.source) == (root / first.path).read_bytes()


def test_train_tar_of_class_tars_is_read_in_place(tmp_path, images):
    root = class_tree(tmp_path / "train", images, per_class=2)
    tar = train_tar(root, tmp_path / "ILSVRC2012_img_train.tar")
    from_tar, from_folder = find_inputs(str(tar)).inputs, find_inputs(str(root)).inputs
    assert [(i.key, i.path, i.synset) for i in from_tar] == [(i.key, i.path, i.synset) for i in from_folder]
    for item in from_tar:  # each byte range is exactly the original file
        assert item.source.location == str(tar) and item.source.offset > 0
        assert read_source(item.source) == (root / item.path).read_bytes()
    assert not any(p.suffix == ".JPEG" for p in tmp_path.iterdir())  # nothing unpacked


@pytest.mark.parametrize("form", ["csv", "loc", "devkit"])
def test_flat_val_with_each_label_form(tmp_path, images, form):
    folder, label_file, synset_map, truth = flat_val(tmp_path, images, per_image=2, labels=form)
    labels = read_labels(str(label_file), str(synset_map) if synset_map else None)
    inputs = find_inputs(str(folder), labels).inputs
    assert {i.path: i.synset for i in inputs} == truth
    assert [i.key for i in inputs][:2] == ["ILSVRC2012_val_00000001", "ILSVRC2012_val_00000002"]


def test_devkit_ground_truth_needs_its_id_map(tmp_path, images):
    _, label_file, _, _ = flat_val(tmp_path, images, labels="devkit")
    with pytest.raises(UserError, match="--synset-map"):
        read_labels(str(label_file))


def test_bad_label_files_name_the_file_and_line(tmp_path, images):
    folder, _, _, _ = flat_val(tmp_path, images)
    bad = tmp_path / "bad.csv"
    bad.write_text("file,synset\nILSVRC2012_val_00000001.JPEG\n")
    with pytest.raises(UserError, match=r"bad.csv, line 2"):
        read_labels(str(bad))
    partial = tmp_path / "partial.csv"
    partial.write_text("ILSVRC2012_val_00000001.JPEG,n01440764\n")
    with pytest.raises(UserError, match="no entry for 5 image"):
        find_inputs(str(folder), read_labels(str(partial)))
    with pytest.raises(UserError, match="does not exist"):
        read_labels(str(tmp_path / "missing.csv"))


def test_missing_empty_and_unlabelled_sources(tmp_path, images):
    with pytest.raises(UserError, match="does not exist"):
        find_inputs(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no image files"):
        find_inputs(str(tmp_path / "empty"))
    folder, _, _, _ = flat_val(tmp_path, images)
    with pytest.raises(UserError, match="--labels"):
        find_inputs(str(folder))


def test_keys_are_unique_dot_free_and_deterministic():
    paths = ["a/x.JPEG", "b/x.JPEG", "c/y.v2.JPEG", "c/y_v2.png", "d/z.JPEG"]
    keys = assign_keys(paths)
    assert keys == assign_keys(list(paths))
    assert len(set(keys)) == len(keys) and not any("." in k for k in keys)
    assert keys[-1] == "z"


def test_class_list_forms(tmp_path):
    tsv = tmp_path / "classes.tsv"
    tsv.write_text("index\tsynset\tname\n0\tn01440764\ttench\n1\tn01443537\tgoldfish\n")
    words = tmp_path / "LOC_synset_mapping.txt"
    words.write_text("n01440764 tench, Tinca tinca\nn01443537 goldfish, Carassius auratus\n")
    assert read_class_list(str(tsv)) == [("n01440764", "tench"), ("n01443537", "goldfish")]
    assert read_class_list(str(words))[1] == ("n01443537", "goldfish, Carassius auratus")


def test_train_tar_reports_hidden_members_and_keeps_empty_class_tars(tmp_path, images):
    root = class_tree(tmp_path / "train", images[:2])
    (root / synset_of(images[0]) / ".DS_Store").write_bytes(b"junk")
    (root / "n99999999").mkdir()  # becomes an empty per-class tar
    scan = find_inputs(str(train_tar(root, tmp_path / "ILSVRC2012_img_train.tar")))
    assert scan.skipped == [{"path": f"{synset_of(images[0])}/.DS_Store", "reason": HIDDEN}]
    assert [i.path for i in scan.inputs] == sorted(f"{synset_of(i)}/{synset_of(i)}_0.JPEG" for i in images[:2])
    assert scan.class_folders == sorted(["n99999999", *(synset_of(i) for i in images[:2])])
