"""Class names from WordNet's ILSVRC-2012 table, shipped with its notice (docs/design.md, "Class indices"), and
the inputs converted to RGB counted per colour mode: in the manifest, the shard summary and `alexnet inspect`."""

from __future__ import annotations

import io
import json
import tomllib
from importlib.resources import files
from pathlib import Path

import pytest
from PIL import Image

from conftest import ROOT, SHARED_DATA, run_cli
from helpers.imagenet_trees import sample_files
from pipeline.shard.labels import SYNSET_TABLE, WORDNET_ID, read_class_list, wordnet_names, with_names
from pipeline.shard.manifest import read_manifest

NOTICE = "WORDNET-LICENSE.txt"


def _table() -> list[list[str]]:
    return [line.split("\t") for line in files("pipeline.shard").joinpath(SYNSET_TABLE).read_text().splitlines()]


def test_the_shipped_table_names_the_1000_ilsvrc_synsets_with_wordnets_notice():
    header, *rows = _table()
    assert header == ["synset", "name", "lemmas"] and all(len(row) == 3 for row in rows)
    synsets = [synset for synset, _, _ in rows]
    assert len(synsets) == len(set(synsets)) == 1000 and synsets == sorted(synsets)
    assert all(WORDNET_ID.fullmatch(s) for s in synsets)
    assert all(name and name == lemmas.split(", ")[0] for _, name, lemmas in rows)  # name: the first lemma
    names = wordnet_names()
    assert (names["n01440764"], names["n03888257"], names["n02102040"]) == ("tench", "parachute", "English springer")
    notice = files("pipeline.shard").joinpath(NOTICE).read_text()
    assert "WordNet 3.0 Copyright 2006 by Princeton University.  All rights reserved." in notice
    assert 'THIS SOFTWARE AND DATABASE IS PROVIDED "AS IS"' in notice and SYNSET_TABLE in notice
    # the table is also a class list a user can pass to --classes
    assert read_class_list(str(files("pipeline.shard").joinpath(SYNSET_TABLE))) == [(s, n) for s, n, _ in rows]


def test_the_table_and_its_notice_are_package_data():
    """A wheel (non-editable install) carries both: `pip wheel .` lists them only when pyproject says so."""
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert {SYNSET_TABLE, NOTICE} <= set(package_data["pipeline.shard"])


def test_the_tables_synsets_are_the_shared_class_lists():
    classes = SHARED_DATA / "imagenet-classes.tsv"
    if not classes.is_file():
        pytest.skip(f"needs {classes}, absent here")
    assert [s for s, _ in read_class_list(str(classes))] == [row[0] for row in _table()[1:]]


def test_a_name_given_wins_and_an_unknown_synset_stays_unnamed():
    given = [("n00000007", ""), ("n01440764", ""), ("n03888257", "my chute"), ("cats", "")]
    assert with_names(given) == [("n00000007", ""), ("n01440764", "tench"), ("n03888257", "my chute"), ("cats", "")]


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


@pytest.mark.slow
def test_synset_folders_get_wordnet_names_and_converted_inputs_are_counted(tmp_path, ray_head):
    """Real photographs in folders named by ILSVRC-2012 synsets (and one that is not), one of them saved
    again as a grayscale and as a CMYK JPEG: names from the table (a --classes file's own names win), the
    conversions counted in the manifest, the shard summary and inspect; a val split keeps train's names."""
    colour = [f for f in sample_files() if Image.open(f).mode == "RGB"][:3]
    train = tmp_path / "train"
    for synset, photo in zip(("n01440764", "n03888257", "n00000007"), colour):
        (train / synset).mkdir(parents=True)
        (train / synset / f"{synset}_0.JPEG").write_bytes(photo.read_bytes())
    with Image.open(colour[0]) as img:
        (train / "n01440764" / "n01440764_gray.JPEG").write_bytes(_jpeg(img.convert("L")))
        (train / "n01440764" / "n01440764_cmyk.JPEG").write_bytes(_jpeg(img.convert("CMYK")))
    val = tmp_path / "val"
    val.mkdir()
    (val / "ILSVRC2012_val_00000001.JPEG").write_bytes(colour[1].read_bytes())
    (tmp_path / "val.csv").write_text("file,synset\nILSVRC2012_val_00000001.JPEG,n03888257\n")
    out, address = tmp_path / "out", ["--address", ray_head]

    summary = run_cli("shard", train, out, "--split", "train", *address).stdout
    run_cli("shard", val, out, "--split", "val", "--labels", tmp_path / "val.csv", *address)
    manifest = read_manifest(str(out), "train")
    assert [(c["synset"], c["name"]) for c in manifest["classes"]] == [
        ("n00000007", ""), ("n01440764", "tench"), ("n03888257", "parachute")]
    assert read_manifest(str(out), "val")["classes"] == manifest["classes"]
    assert manifest["converted"] == {"CMYK": 1, "L": 1} and manifest["total_samples"] == 5
    assert "1 CMYK and 1 grayscale inputs converted to RGB" in summary
    text = run_cli("inspect", out).stdout
    assert "classes: n00000007, n01440764 tench, n03888257 parachute (2 of 3 named)" in text
    assert "1 CMYK and 1 grayscale inputs converted to RGB" in text
    assert "no input converted to RGB (all were RGB)" in text  # the val split's one colour photograph

    # a manifest written before the count was kept still reads; inspect says it was not counted
    del manifest["converted"]
    (out / "train.manifest.json").write_text(json.dumps(manifest, indent=1))
    text = run_cli("inspect", out).stdout
    assert "inputs converted to RGB: not counted" in text and "train: 5 samples" in text
    assert json.loads(run_cli("inspect", out, "--json").stdout)["splits"]["train"]["converted"] is None

    classes = tmp_path / "classes.tsv"  # its own names win; the one it leaves empty comes from WordNet
    classes.write_text("index\tsynset\tname\n0\tn00000007\tmy own class\n1\tn01440764\tTinca tinca\n"
                       "2\tn03888257\t\n")
    run_cli("shard", train, tmp_path / "named", "--split", "train", "--classes", classes, *address)
    assert [c["name"] for c in read_manifest(str(tmp_path / "named"), "train")["classes"]] == [
        "my own class", "Tinca tinca", "parachute"]



def test_a_class_list_without_names_is_named_for_display():
    """Data sharded before classes were named, and checkpoints trained on it, still print names."""
    from pipeline.shard.labels import named_classes

    stored = [{"index": 0, "synset": "n01440764", "name": ""}, {"index": 1, "synset": "n99999999", "name": ""},
              {"index": 2, "synset": "n03888257", "name": "my parachutes"}]
    assert [c["name"] for c in named_classes(stored)] == ["tench", "", "my parachutes"]
    assert [c["index"] for c in named_classes(stored)] == [0, 1, 2] and stored[0]["name"] == ""  # a copy
