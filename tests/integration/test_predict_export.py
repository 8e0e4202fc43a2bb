"""`alexnet predict` scores a photo as `alexnet eval` scores it once sharded; `alexnet export` runs without
the project. Both on the session's trained `reference` run (no training here)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

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
from trainer.use.predict import Predictor, predict


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


def export_example() -> str:
    """docs/use.md's Python block that uses an export folder."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "use.md").read_text()
    return next(block for block in re.findall(r"^```python\n(.*?)^```", text, re.S | re.M)
                if "preprocessing.network_input" in block)


def project_free_python(folder: Path) -> str:
    """A Python with this venv's packages (torch, numpy, Pillow) but not the project: a venv without system
    packages whose one .pth line is the site-packages folder. A plain path line adds that folder but runs
    none of the .pth files inside it, so the project's editable-install hook never loads (`python -I` would
    still load it)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True, timeout=120)
    site = sysconfig.get_paths()["purelib"]
    purelib = subprocess.run([str(folder / "bin" / "python"), "-c",
                              "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    Path(purelib, "deps.pth").write_text(site + "\n")
    return str(folder / "bin" / "python")


@pytest.mark.slow
def test_predict_gives_eval_probabilities_and_names_a_bad_file(reference, small_dataset, tmp_path, capsys):
    samples = val_sources(small_dataset)
    picked = [0, 13, 27]  # three shards
    not_image = tmp_path / "notes.JPEG"
    not_image.write_text("not a photograph")
    png = tmp_path / "as.png"  # another format the sharder reads
    Image.open(samples[5][1]).save(png)
    missing = tmp_path / "x.jpg"
    inputs = [samples[0][1], str(not_image), samples[13][1], str(missing), samples[27][1], str(png)]
    result = run_cli("predict", reference, *inputs, "--json", check=False, timeout=300)
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines() == [f"alexnet predict: {not_image}: not an image (no known image format)",
                                                  f"alexnet predict: {missing}: no such file"]
    output = json.loads(result.stdout)
    assert output["checkpoint"] == os.path.join(reference, "best", "checkpoint.pt")  # the file resolved
    assert [p["input"] for p in output["predictions"]] == [samples[i][1] for i in picked] + [str(png)]
    assert output["failed"] == 2 and len(output["predictions"][3]["top5"]) == 5

    expected = eval_probabilities(reference, small_dataset, ten_crop=False, count=28)
    classes = read_manifest(small_dataset, "train")["classes"]
    for i, prediction in zip(picked, output["predictions"]):
        top = prediction["top5"]
        assert [t["index"] for t in top] == list(np.argsort(-expected[i], kind="stable")[:5])
        assert [t["probability"] for t in top] == pytest.approx(expected[i][[t["index"] for t in top]], abs=1e-6)
        assert [t["synset"] for t in top] == [classes[t["index"]]["synset"] for t in top]
    assert len({round(p["top5"][0]["probability"], 6) for p in output["predictions"][:3]}) == 3  # outputs vary

    # the text output names the checkpoint file the run folder resolved to, once, at the top
    assert predict(reference, [samples[0][1]]) == 0
    text = capsys.readouterr().out.splitlines()
    assert text[0] == f"checkpoint {os.path.join(reference, 'best', 'checkpoint.pt')}" and text[1] == samples[0][1]
    assert sum(line.startswith("checkpoint ") for line in text) == 1

    # ten crops, in-process (the CLI flag only switches `ten_crop`): eval's ten-crop average
    predictor = Predictor(reference, ("cpu", "cpu"))
    ten = eval_probabilities(reference, small_dataset, ten_crop=True, count=14)
    for i in picked[:2]:
        with open(samples[i][1], "rb") as f:
            logits = predictor.logits(predictor.rule.stored(f.read()), ten_crop=True)
        assert logits.shape[0] == 10
        assert crop_probabilities(logits[None])[0].numpy() == pytest.approx(ten[i], abs=1e-6)

    # export: docs/use.md's example, run as written in a Python with torch, numpy and Pillow but neither the
    # project nor OpenCV/simplejpeg, gets predict's probabilities from the photo files themselves
    export = tmp_path / "export"
    run_cli("export", reference, export, timeout=300)
    assert sorted(os.listdir(export)) == ["classes.json", "preprocessing.json", "preprocessing.py", "program.pt2",
                                          "weights.pt"]
    weights = torch.load(export / "weights.pt", weights_only=True)
    assert weights.keys() == predictor.model.state_dict().keys()
    with open(samples[13][1], "rb") as f:
        crop = eval_crops(predictor.rule.stored(f.read()), predictor.rule.crop, ten=False)[0]
    np.save(tmp_path / "crop.npy", crop)
    photos = [samples[0][1], samples[13][1], str(png)]  # predictions 0, 1 and 3
    runs = []
    for k, photo in enumerate(photos):
        block = export_example().replace('"exported', f'"{export}').replace('"photo.jpg"', repr(photo))
        (tmp_path / f"example{k}.py").write_text(block + "print(json.dumps(probabilities.tolist()))\n")
        runs.append(str(tmp_path / f"example{k}.py"))
    driver = (
        "import json, runpy, sys, numpy, torch\n"
        "sys.modules.update(cv2=None, simplejpeg=None)  # preprocessing.py must not need them\n"
        "try:\n    import pipeline\nexcept ImportError:\n    pass\nelse:\n    sys.exit('the project is importable')\n"
        "for example in sys.argv[3:]:\n    runpy.run_path(example, run_name='__main__')\n"
        "program = torch.export.load(sys.argv[1] + '/program.pt2').module()\n"
        "x = torch.from_numpy(numpy.load(sys.argv[2])).permute(2, 0, 1)[None].float()\n"
        "mean = json.load(open(sys.argv[1] + '/preprocessing.json'))['mean_rgb']\n"
        "x = x - torch.tensor(mean).view(1, 3, 1, 1)\n"
        "print(json.dumps(program(x).detach().numpy().tolist()))\n")
    python = project_free_python(tmp_path / "venv")
    done = subprocess.run([python, "-c", driver, str(export), str(tmp_path / "crop.npy"), *runs], capture_output=True,
                          text=True, cwd=tmp_path, env={"PATH": os.environ["PATH"]}, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    names = {c["index"]: c["name"] or c["synset"] for c in classes}
    for k, at in enumerate((0, 1, 3)):
        expected = torch.tensor(output["predictions"][at]["logits"]).softmax(1).mean(0).numpy()
        assert lines[2 * k].rsplit(" ", 1)[0] == names[output["predictions"][at]["top5"][0]["index"]]
        assert np.abs(np.array(json.loads(lines[2 * k + 1])) - expected).max() < 1e-3
    logits = np.array(json.loads(lines[-1]))[0]
    assert logits == pytest.approx(np.array(output["predictions"][1]["logits"][0]), abs=1e-4)
    assert json.loads((export / "classes.json").read_text()) == classes
