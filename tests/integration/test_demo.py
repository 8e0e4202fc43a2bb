"""`alexnet demo`: the generated dataset on its own, then the whole demo through the real CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import run_cli
from jobs.synthetic import generate, synset_of


def _spectrum(path: Path) -> np.ndarray:
    """A colour-blind feature: the magnitude spectrum of the grayscale centre, 64x64."""
    image = Image.open(path).convert("L")
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    pixels = np.asarray(image.crop((left, top, left + side, top + side)).resize((64, 64)), dtype=np.float32)
    spectrum = np.abs(np.fft.fftshift(np.fft.fft2(pixels - pixels.mean())))
    return (spectrum / (spectrum.sum() + 1e-9)).ravel()


def test_generated_dataset_is_imagenet_shaped_and_learnable(tmp_path):
    paths = generate(tmp_path, classes=10, train_per_class=6, val_per_class=3, seed=1)
    train = Path(paths["train"])
    assert sorted(p.name for p in train.iterdir()) == [synset_of(i) for i in range(10)]
    files = sorted(train.glob("*/*.JPEG"))
    assert len(files) == 60
    opened = [Image.open(f) for f in files]
    assert {im.format for im in opened} == {"JPEG", "PNG"}  # one PNG named .JPEG, as in ImageNet
    assert {"RGB", "L", "CMYK"} <= {im.mode for im in opened}
    assert len({im.size for im in opened}) > 30  # varied sizes and aspect ratios
    with open(paths["labels"]) as f:
        rows = list(csv.reader(f))[1:]
    assert sorted(r[0] for r in rows) == sorted(p.name for p in Path(paths["val"]).iterdir())
    assert len(rows) == 30 and {r[1] for r in rows} == {synset_of(i) for i in range(10)}
    assert Path(paths["classes"]).read_text().splitlines()[3] == f"3\t{synset_of(3)}\tconcentric rings"

    # Visible structure, independent of colour: nearest class-mean spectrum beats chance (0.1) by far.
    means = np.stack([np.mean([_spectrum(f) for f in sorted((train / synset_of(c)).glob("*"))], axis=0)
                      for c in range(10)])
    label_of = {name: int(synset[-5:]) for name, synset in rows}
    hits = [int(np.argmin(((means - _spectrum(Path(paths["val"]) / name)) ** 2).sum(1))) == label
            for name, label in label_of.items()]
    assert np.mean(hits) >= 0.5, np.mean(hits)

    again = generate(tmp_path / "again", classes=10, train_per_class=6, val_per_class=3, seed=1)
    assert (Path(again["val"]) / rows[0][0]).read_bytes() == (Path(paths["val"]) / rows[0][0]).read_bytes()


def test_bad_budget_fails_before_any_work(tmp_path):
    result = run_cli("demo", "--out", tmp_path / "d", "--classes", "40", check=False, timeout=60)
    assert result.returncode == 2 and "--classes 40" in result.stderr
    assert not (tmp_path / "d" / "images").exists()


@pytest.mark.slow
def test_demo_end_to_end_through_the_cli(ray_head, tmp_path):
    out = tmp_path / "demo"
    # 8 steps per epoch at the demo's batch 32 (batch 16 is unstable at lr 0.01), 48 steps in all
    result = run_cli("demo", "--out", out, "--classes", "4", "--train-per-class", "64", "--val-per-class", "6",
                     "--epochs", "6", "--batch-size", "32", "--lr", "0.01", "--address", ray_head, timeout=600)
    assert "alexnet demo: done" in result.stdout
    report = json.loads((out / "report.json").read_text())
    assert report["classes"] == 4 and report["train_images"] == 256 and report["val_images"] == 24
    assert report["crops"] == 10 and 1 <= report["epochs"] <= 6
    assert report["chance_top1_error"] == pytest.approx(3 / 4)
    assert report["chance_top5_error"] == pytest.approx(0)
    assert 0 <= report["top5_error"] <= report["top1_error"]
    assert report["top1_error"] <= 0.5, report  # accuracy at least twice chance's 0.25: it learned
    per_epoch = report["centre_crop_val_top1_error_per_epoch"]
    assert per_epoch[report["best_epoch"] - 1] == min(per_epoch)  # the evaluated checkpoint is the best epoch
    markdown = (out / "report.md").read_text()
    for picture in ("loss.png", "error.png", "figure3.png", "figure4.png"):
        assert f"({picture})" in markdown
        assert Image.open(out / picture).format == "PNG"
    assert f"{report['top1_error']:.3f}" in markdown
    assert report["figure4"]["image_panels"] == 8 + 5 * 7 and report["figure4"]["bar_panels"] == 8  # Figure 4
    assert "12 kernels per tower" in markdown and "look like noise" in markdown  # Figure 3 at this scale
    assert report["seed"] == 0 and "seed 0 (`alexnet demo --seed 0`)" in markdown
    epochs = [json.loads(line) for line in (out / "runs" / "demo" / "metrics.jsonl").read_text().splitlines()]
    numbers = [r["epoch"] for r in epochs if r["kind"] == "epoch"]
    assert numbers == list(range(1, report["epochs"] + 1))  # the report's table rows are these numbers
    assert all(f"\n| {n} | " in markdown for n in numbers) and "\n| 0 | " not in markdown
    manifest = json.loads((out / "shards" / "train.manifest.json").read_text())
    assert manifest["total_samples"] == 256  # the grayscale, CMYK and PNG inputs were all converted
    assert [c["name"] for c in manifest["classes"]][:2] == ["horizontal stripes", "vertical stripes"]

    from trainer import checkpoint, figure3

    scores = figure3.tower_scores(checkpoint.load(str(out / "runs" / "demo"))["model"])
    assert [t["kernels"] for t in scores] == [12, 12]  # 48 x 0.25 kernels per tower, both scored
    assert report["colour_specificity"] == [{k: v for k, v in t.items() if k != "scores"} for t in scores]
    assert f"tower 2 mean {scores[1]['mean']:.3f}" in markdown


def _without_clocks(record: dict) -> dict:
    """A report or metrics record minus what a clock or a folder name decides."""
    return {k: v for k, v in record.items()
            if k not in ("run", "data") and not any(w in k for w in ("second", "per_s", "wait", "time"))}


@pytest.mark.slow
def test_one_seed_gives_the_same_demo_twice(ray_head, tmp_path):
    """`--seed` draws every random choice and the kernels are deterministic: two runs of one seed, at a
    small size, give the same report numbers, the same loss at every logged step and the same shards."""
    runs = []
    for name in ("first", "second"):
        out = tmp_path / name
        run_cli("demo", "--out", out, "--classes", "2", "--train-per-class", "12", "--val-per-class", "4",
                "--epochs", "2", "--batch-size", "8", "--seed", "3", "--address", ray_head, timeout=600)
        metrics = [json.loads(line) for line in (out / "runs" / "demo" / "metrics.jsonl").read_text().splitlines()]
        manifest = json.loads((out / "shards" / "train.manifest.json").read_text())
        runs.append({"report": _without_clocks(json.loads((out / "report.json").read_text())),
                     "metrics": [_without_clocks(r) for r in metrics],
                     "shards": [s["sha256"] for s in manifest["shards"]]})
    first, second = runs
    assert any(r.get("kind") == "step" and "loss" in r for r in first["metrics"])  # the losses are compared
    assert first["report"]["seed"] == 3 and first["report"]["train_images"] == 24
    assert first == second
