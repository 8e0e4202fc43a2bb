"""`alexnet predict` scores a photo as `alexnet eval` scores it once sharded; `alexnet export` runs without
the project. Both on the session's trained `reference` run (no training here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from conftest import run_cli
from pipeline.loader.augment import BatchTransform
from pipeline.loader.loaders import EvalLoader
from pipeline.shard.manifest import read_manifest
from trainer.evaluate import crop_logits, crop_probabilities, eval_crops, load_model
from trainer.use.predict import Predictor


def val_sources(dataset: str) -> list[tuple[str, str, int]]:
    """(key, original file, label) of every val sample in the order the EvalLoader yields them."""
    root = read_manifest(dataset, "val")["source"]
    rows = pq.read_table(os.path.join(dataset, "val.index.parquet")).to_pylist()
    rows.sort(key=lambda r: (r["shard"], r["position"]))
    return [(r["key"], os.path.join(root, r["source"]), r["label"]) for r in rows]


def eval_probabilities(checkpoint: str, dataset: str, ten_crop: bool, count: int) -> np.ndarray:
    """Probabilities of the first `count` val samples computed the way `alexnet eval` computes them
    (evaluate.py's eval_totals): its loader, its crops, its model call."""
    model, state = load_model(checkpoint, ("cpu", "cpu"))
    transform = BatchTransform(state["stats"], pca_std=0.0)
    scored = []
    with torch.no_grad():
        for images, _ in EvalLoader(dataset, 8, split="val", ten_crop=ten_crop, num_workers=0):
            scored.append(crop_probabilities(crop_logits(model, images, transform)))
            if sum(map(len, scored)) >= count:
                break
    return torch.cat(scored).numpy()


@pytest.mark.slow
def test_predict_gives_eval_probabilities_and_names_a_bad_file(reference, small_dataset, tmp_path):
    samples = val_sources(small_dataset)
    picked = [0, 13, 27]  # three shards
    not_image = tmp_path / "notes.JPEG"
    not_image.write_text("not a photograph")
    png = tmp_path / "as.png"  # another format the sharder reads
    Image.open(samples[5][1]).save(png)
    inputs = [samples[0][1], str(not_image), samples[13][1], samples[27][1], str(png)]
    result = run_cli("predict", reference, *inputs, "--json", check=False, timeout=300)
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip() == f"alexnet predict: {not_image}: not an image (no known image format)"
    output = json.loads(result.stdout)
    assert [p["input"] for p in output["predictions"]] == [samples[i][1] for i in picked] + [str(png)]
    assert output["failed"] == 1 and len(output["predictions"][3]["top5"]) == 5

    expected = eval_probabilities(reference, small_dataset, ten_crop=False, count=28)
    classes = read_manifest(small_dataset, "train")["classes"]
    for i, prediction in zip(picked, output["predictions"]):
        top = prediction["top5"]
        assert [t["index"] for t in top] == list(np.argsort(-expected[i], kind="stable")[:5])
        assert [t["probability"] for t in top] == pytest.approx(expected[i][[t["index"] for t in top]], abs=1e-6)
        assert [t["synset"] for t in top] == [classes[t["index"]]["synset"] for t in top]
    assert len({round(p["top5"][0]["probability"], 6) for p in output["predictions"][:3]}) == 3  # outputs vary

    # ten crops, in-process (the CLI flag only switches `ten_crop`): eval's ten-crop average
    predictor = Predictor(reference, ("cpu", "cpu"))
    ten = eval_probabilities(reference, small_dataset, ten_crop=True, count=14)
    for i in picked[:2]:
        with open(samples[i][1], "rb") as f:
            logits = predictor.logits(predictor.rule.stored(f.read()), ten_crop=True)
        assert logits.shape[0] == 10
        assert crop_probabilities(logits[None])[0].numpy() == pytest.approx(ten[i], abs=1e-6)

    # export: a fresh interpreter that cannot import this project gets predict's logits
    export = tmp_path / "export"
    run_cli("export", reference, export, timeout=300)
    assert sorted(os.listdir(export)) == ["classes.json", "preprocessing.json", "program.pt2", "weights.pt"]
    weights = torch.load(export / "weights.pt", weights_only=True)
    assert weights.keys() == predictor.model.state_dict().keys()
    with open(samples[13][1], "rb") as f:
        crop = eval_crops(predictor.rule.stored(f.read()), predictor.rule.crop, ten=False)[0]
    np.save(tmp_path / "crop.npy", crop)
    script = (
        "import json, sys, numpy, torch\n"
        "try:\n    import trainer\nexcept ImportError:\n    pass\nelse:\n    sys.exit('the project is importable')\n"
        "folder = sys.argv[1]\n"
        "pre = json.load(open(folder + '/preprocessing.json'))\n"
        "program = torch.export.load(folder + '/program.pt2').module()\n"
        "x = torch.from_numpy(numpy.load(sys.argv[2])).permute(2, 0, 1)[None].float()\n"
        "x = x - torch.tensor(pre['mean_rgb']).view(1, 3, 1, 1)\n"
        "numpy.save(sys.argv[3], program(x).detach().numpy())\n")
    site = sysconfig.get_paths()["purelib"]  # torch and numpy; with -S no .pth file adds the project
    subprocess.run([sys.executable, "-I", "-S", "-c", f"import sys; sys.path.append({site!r})\n" + script,
                    str(export), str(tmp_path / "crop.npy"), str(tmp_path / "logits.npy")],
                   check=True, cwd=tmp_path, env={"PATH": os.environ["PATH"]}, timeout=300)
    logits = np.load(tmp_path / "logits.npy")[0]
    assert logits == pytest.approx(np.array(output["predictions"][1]["logits"][0]), abs=1e-4)
    assert json.loads((export / "classes.json").read_text()) == classes
