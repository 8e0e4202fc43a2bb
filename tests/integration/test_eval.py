"""`alexnet eval`: ten-crop error equals averaging the model's softmax over the ten patches by hand."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import tarfile

import numpy as np
import simplejpeg
import torch

from conftest import run_cli
from pipeline.shard.manifest import read_manifest
from pipeline.shard.stats import read_stats
from trainer.checkpoint import format as ckpt
from trainer.config import TrainConfig
from trainer.model import AlexNet
from trainer.optim import PaperSGD
from trainer.schedule import PlateauSchedule


def make_checkpoint(dataset: str, folder) -> tuple[AlexNet, dict, str]:
    """A small model whose outputs differ clearly between images (the paper's init gives near-uniform
    softmax, which would make any averaging look right), saved as a real checkpoint."""
    manifest, stats = read_manifest(dataset, "train"), read_stats(dataset)
    torch.manual_seed(0)
    config = TrainConfig(data=dataset, name="eval", width=0.25)
    model = AlexNet(manifest["num_classes"], "paper", ("cpu", "cpu"), width=0.25)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim > 1:
                p.normal_(0, 1.4 / math.sqrt(p[0].numel()) / (60 if "conv1" in name else 1))  # inputs ~ +-60
            else:
                p.zero_()
    state = ckpt.build(model=ckpt.cpu_state_dict(model), optimizer=PaperSGD(model.parameters(), 0.01).state_dict(),
                       schedule=PlateauSchedule(0.01).state_dict(), epoch=1, step=5, epoch_step=0, loader=[],
                       rng=[], train_totals=[], config=config.to_dict(), history=[], finished=False,
                       num_classes=manifest["num_classes"], classes=manifest["classes"], stats=stats,
                       world_size=1)
    return model.eval(), stats, ckpt.write_local(state, str(folder))


def val_samples(dataset: str):
    """(HWC uint8 image, label) for every val sample, straight from the tar shards."""
    for shard in read_manifest(dataset, "val")["shards"]:
        with tarfile.open(f"{dataset}/{shard['name']}") as tar:
            members = {}
            for member in tar.getmembers():
                key, ext = member.name.split(".", 1)
                members.setdefault(key, {})[ext] = tar.extractfile(member).read()
            for key, parts in members.items():
                yield simplejpeg.decode_jpeg(parts["jpg"], colorspace="RGB"), int(parts["cls"])


def ten_patches(image: np.ndarray, crop: int) -> np.ndarray:
    h, w = image.shape[:2]
    corners = [(0, 0), (0, w - crop), (h - crop, 0), (h - crop, w - crop), ((h - crop) // 2, (w - crop) // 2)]
    patches = [image[r:r + crop, c:c + crop] for r, c in corners]
    patches += [p[:, ::-1] for p in patches]  # the horizontal reflections
    return np.stack(patches)


def test_ten_crop_equals_softmax_averaged_by_hand(small_dataset, tmp_path):
    model, stats, path = make_checkpoint(small_dataset, tmp_path / "ckpt")
    result = run_cli("eval", "--checkpoint", path, "--data", small_dataset, "--ten-crop", "--json",
                     "--batch-size", "7", timeout=300)
    scored = json.loads(result.stdout.strip().splitlines()[-1])

    mean = torch.tensor(stats["mean_rgb"]).view(1, 3, 1, 1)
    losses, top1, top5, labels_seen = [], 0, 0, []
    with torch.no_grad():
        for image, label in val_samples(small_dataset):
            x = torch.from_numpy(ten_patches(image, 224).copy()).permute(0, 3, 1, 2).float() - mean
            probs = model(x).softmax(dim=1).mean(dim=0)  # the paper: average the ten softmax outputs
            losses.append(-math.log(probs[label].item()))
            order = probs.argsort(descending=True)
            top1 += int(order[0] == label)
            top5 += int(label in order[:5])
            labels_seen.append(label)
    n = len(losses)
    assert scored["samples"] == n == 40 and scored["crops"] == 10
    assert len(set(labels_seen)) == 10
    assert scored["top1_error"] == 1 - top1 / n and scored["top5_error"] == 1 - top5 / n
    assert scored["loss"] == __import__("pytest").approx(sum(losses) / n, rel=1e-4)
    assert 0 < scored["top1_error"] < 1  # outputs that really vary, so the comparison means something

    # a checkpoint folder works too; centre crop gives another number (the eval path really switches)
    text = run_cli("eval", "--checkpoint", str(tmp_path / "ckpt"), "--data", small_dataset, timeout=300).stdout
    assert "40 images, 1 crop: top-1 error" in text and f"loss {scored['loss']:.4f}" not in text
    assert text.startswith(f"checkpoint {tmp_path / 'ckpt' / 'checkpoint.pt'} (epoch ")  # the file it scored
    assert scored["checkpoint"] == path


def test_eval_errors_are_one_line(small_dataset, tmp_path):
    result = run_cli("eval", "--checkpoint", str(tmp_path), "--data", small_dataset, check=False, timeout=120)
    assert result.returncode == 2 and "no checkpoint at" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_missing_checkpoint_fails_before_torch_is_imported(tmp_path):
    """eval, predict, export and neighbours resolve --checkpoint first: a mistyped path costs no torch
    import (~3 s); each says so in its one line."""
    script = ("import sys; from jobs.cli import main\n"
              "for command in sys.argv[1:]:\n"
              "    assert main(command.split()) == 2, command\n"
              "print(sorted(name for name in ('torch', 'ray') if name in sys.modules))")
    nowhere = tmp_path / "no-such-run"
    commands = [f"eval --checkpoint {nowhere} --data {tmp_path}", f"predict {nowhere} {tmp_path}/a.jpg",
                f"export {nowhere} {tmp_path}/out", f"neighbours {nowhere} --data {tmp_path}"]
    result = subprocess.run([sys.executable, "-c", script, *commands], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"  # neither torch nor Ray was imported
    lines = result.stderr.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == ["alexnet eval", "alexnet predict", "alexnet export",
                                                       "alexnet neighbours"]
    assert all(f"no checkpoint at {nowhere}" in line for line in lines)
