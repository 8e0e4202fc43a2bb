"""The paper's recipe learns real photographs: three Imagenette classes through the real CLI and Ray.

`alexnet train --config imagenette` (the paper's recipe: PaperSGD, lr 0.01, momentum 0.9, weight decay
5e-4, dropout 0.5, biases 1, random crops, flips, PCA noise from this subset's own stats.json) on
CLASSES x TRAIN_PER_CLASS photographs at width 0.25, batch 32 and lr 0.005, for EPOCHS epochs. It must
(a) lower its mean training loss every epoch, (b) reach a validation error under VAL_BOUND, set from
several seeds' measured runs, and (c) follow the stored reference curve
(tests/data/real_photos_reference.json, the epochs' mean training and validation losses) within
CURVE_TOLERANCE. With deterministic kernels a run repeats bitwise on one CPU type, not across types
(vector widths round differently), hence a tolerance rather than equality.

When the recipe or the model changes on purpose, regenerate the reference on an idle machine:

    ALEXNET_WRITE_REFERENCE=1 pytest tests/integration/test_real_photos.py

The same run also checks `alexnet plot` (curves, Figure 3 and its colour-specificity lines) on a run
that learned something. Needs the shared Imagenette photographs; a clone without them skips.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from conftest import SHARED_DATA, run_cli
from test_train import records

pytestmark = pytest.mark.slow

IMAGENETTE = SHARED_DATA / "imagenette"
REFERENCE = Path(__file__).resolve().parents[1] / "data" / "real_photos_reference.json"
SYNSETS = ("n01440764", "n03028079", "n03888257")  # tench, church, parachute
CLASSES, TRAIN_PER_CLASS, VAL_PER_CLASS, EPOCHS = len(SYNSETS), 200, 50, 5
# lr 0.005 at batch 32: with the paper's 0.01 at this batch the loss jumps at the start (the bias of 1)
# and sat at chance for three of four epochs (seed 0: validation error 0.667, 0.667, 0.667, 0.613)
SETTINGS = {"width": 0.25, "batch_size": 32, "lr": 0.005, "eval_batch_size": 50, "epochs": EPOCHS, "patience": EPOCHS,
            "loader_workers": 1, "checkpoint_every_steps": 0, "keep_checkpoints": 1, "log_every_steps": 5,
            "seed": 0}
# chance 0.67. Measured on an Intel Xeon VM (2 vCPUs, AMX) by hand with these settings, the last epoch's
# validation error was 0.467, 0.380, 0.380, 0.373 and 0.400 for seeds 0-4. The mean training loss fell
# every epoch for seeds 0, 1 and 4; it rose once for seed 2 (0.935 to 0.951, epoch 4) and seed 3 (0.869
# to 0.958, epoch 5), so (a) is a property of this seed's run, whose smallest fall is 0.10 (epoch 5)
VAL_BOUND = 0.55
CURVE_TOLERANCE = 0.15  # relative, per epoch, on the mean losses (same machine type: equal; another: near)


@pytest.fixture(scope="module")
def three_classes(ray_head, tmp_path_factory) -> str:
    if not IMAGENETTE.is_dir():
        pytest.skip(f"needs the shared Imagenette photographs {IMAGENETTE}, absent here")
    root = tmp_path_factory.mktemp("three_classes")
    for split, count in (("train", TRAIN_PER_CLASS), ("val", VAL_PER_CLASS)):
        for synset in SYNSETS:
            folder = root / split / synset
            folder.mkdir(parents=True)
            for photo in sorted((IMAGENETTE / split / synset).iterdir())[:count]:
                (folder / photo.name).symlink_to(photo)
    out = root / "dataset"
    for split in ("train", "val"):
        run_cli("shard", root / split, out, "--split", split, "--shard-size", "150", "--address", ray_head)
    return str(out)


def test_the_papers_recipe_learns_three_imagenette_classes(three_classes, ray_head, tmp_path):
    settings = [f"{key}={value}" for key, value in SETTINGS.items()]
    run_cli("train", "--config", "imagenette", "--data", three_classes, "--name", "photos", "--storage", tmp_path,
            "--address", ray_head, *[arg for s in settings for arg in ("--set", s)], timeout=900)
    run_dir = tmp_path / "photos"
    epochs = records(str(run_dir), "epoch")
    curve = {"train_loss": [e["train_loss"] for e in epochs], "val_loss": [e["val_loss"] for e in epochs],
             "val_top1_error": [e["val_top1_error"] for e in epochs]}
    assert len(epochs) == EPOCHS and all(e["decision"] != "reduce" for e in epochs)
    train = curve["train_loss"]
    assert all(later < earlier for earlier, later in zip(train, train[1:])), train  # (a)
    assert train[-1] < math.log(CLASSES), train
    assert curve["val_top1_error"][-1] < VAL_BOUND, curve  # (b)
    if os.environ.get("ALEXNET_WRITE_REFERENCE"):
        REFERENCE.parent.mkdir(exist_ok=True)
        REFERENCE.write_text(json.dumps({"settings": SETTINGS, "synsets": SYNSETS, **curve}, indent=1) + "\n")
        pytest.skip(f"wrote {REFERENCE}: review and commit it")
    reference = json.loads(REFERENCE.read_text())  # (c)
    assert reference["settings"] == SETTINGS and tuple(reference["synsets"]) == SYNSETS, \
        "the reference was made with other settings: regenerate it (module docstring)"
    for key in ("train_loss", "val_loss"):
        gaps = [abs(a - b) / b for a, b in zip(curve[key], reference[key])]
        assert max(gaps) < CURVE_TOLERANCE, (key, curve[key], reference[key])

    # `alexnet plot` on a run that learned: curves, Figure 3 and one colour line per tower
    printed = run_cli("plot", run_dir).stdout
    for name in ("loss.png", "error.png", "figure3.png"):
        assert (run_dir / "plots" / name).stat().st_size > 1000, name
    towers = json.loads((run_dir / "plots" / "figure3.json").read_text())["towers"]
    assert [t["kernels"] for t in towers] == [12, 12]
    assert f"tower 1: colour specificity mean {towers[0]['mean']:.3f}" in printed
    assert "tower 2: colour specificity" in printed
