"""Validation error: centre crop (every epoch, in the loop) or the paper's ten crops (`alexnet eval`).

Ten-crop: the four corner patches, the centre one and their reflections; the model's softmax is
averaged over the ten and the average is scored (top-1 / top-5 error, and the cross-entropy of the
averaged probabilities). Every validation sample is seen exactly once across ranks (EvalLoader).
`alexnet predict` and `alexnet export` reuse the crops (`eval_crops`), the model call (`crop_logits`) and
the model's loading (`load_model`) from here, the Figure 4 features the crops and the loading, so all of
them see an image alike.
"""

from __future__ import annotations

import json
import sys
from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.loader.augment import crop_origin, ten_crop

TOTALS = ("loss_sum", "top1_correct", "top5_correct", "count")


def crop_logits(model: torch.nn.Module, images: torch.Tensor, transform) -> torch.Tensor:
    """uint8 [B, 3, H, W] (one crop) or [B, n, 3, H, W] (ten crops) -> float logits [B, n, classes].

    The one place a batch of evaluation crops meets the model: `alexnet eval` and `alexnet predict`
    both go through it, so they score an image identically.
    """
    crops = images if images.dim() == 5 else images[:, None]
    b, n = crops.shape[:2]
    return model(transform(crops.flatten(0, 1))).float().view(b, n, -1)


def crop_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """[B, n, classes] logits -> [B, classes]: the softmax averaged over the crops (the paper's ten-crop rule)."""
    return logits.softmax(dim=2).mean(dim=1)


def eval_crops(image: np.ndarray, crop: int, ten: bool) -> np.ndarray:
    """A stored HWC uint8 image -> its evaluation crops, uint8 [n, crop, crop, 3]: the centre crop
    (n = 1) or the ten crops in augment.TEN_CROP_CORNERS order, as the EvalLoader cuts them."""
    if ten:
        out = np.empty((10, crop, crop, 3), dtype=np.uint8)
        ten_crop(image, crop, out)
        return out
    row, col = crop_origin(*image.shape[:2], crop, None)
    return np.ascontiguousarray(image[None, row:row + crop, col:col + crop])


def load_model(checkpoint: str, devices: tuple[str, str] | None = None) -> tuple[torch.nn.Module, dict]:
    """A checkpoint (file, checkpoint folder or run folder; local or URL), read safely, as an eval-mode
    model on `devices` (default: the GPUs present, else the CPU) and the checkpoint's state."""
    from trainer.checkpoint import format as ckpt

    state = ckpt.load(checkpoint)
    return build_model(state, devices), state


def build_model(state: dict, devices: tuple[str, str] | None = None) -> torch.nn.Module:
    """The eval-mode network of a checkpoint's state (its "model", "num_classes" and "config" suffice)."""
    from trainer.model import AlexNet, default_devices

    config = state["config"]
    model = AlexNet(state["num_classes"], config["variant"], devices or default_devices(), width=config["width"],
                    dropout=config["dropout"])
    model.load_state_dict(state["model"])
    return model.eval()


@torch.no_grad()
def eval_totals(model: torch.nn.Module, batches: Iterable, transform, device: torch.device | str,
                ten_crop: bool = False) -> torch.Tensor:
    """Sums over the batches, float64 [loss_sum, top1_correct, top5_correct, count] on the CPU.

    Sums (not means) so ranks with different sample counts can be all-reduced exactly.
    """
    was_training = model.training
    model.eval()
    totals = torch.zeros(4, dtype=torch.float64)
    for images, labels in batches:  # uint8 [B,3,H,W] or [B,10,3,H,W]
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        logits = crop_logits(model, images, transform)
        if ten_crop:
            probs = crop_probabilities(logits)
            loss = F.nll_loss(probs.clamp_min(1e-12).log(), labels, reduction="sum")
            scores = probs
        else:
            scores = logits[:, 0]
            loss = F.cross_entropy(scores, labels, reduction="sum")
        top = scores.topk(min(5, scores.shape[1]), dim=1).indices
        hits = top == labels[:, None]
        totals += torch.tensor([loss.item(), hits[:, 0].sum().item(), hits.any(dim=1).sum().item(),
                                labels.numel()], dtype=torch.float64)
    model.train(was_training)
    return totals


def errors_from_totals(totals: torch.Tensor) -> dict:
    loss_sum, top1, top5, count = totals.tolist()
    count = max(count, 1.0)
    return {"loss": loss_sum / count, "top1_error": 1 - top1 / count, "top5_error": 1 - top5 / count,
            "samples": int(totals[3].item())}


def evaluate_checkpoint(checkpoint: str, data: str, *, ten_crop: bool = False, as_json: bool = False,
                        batch_size: int = 64, split: str = "val", num_workers: int = 2) -> int:
    """`alexnet eval`: load a checkpoint safely, rebuild its model here (GPUs if present), score a split."""
    from pipeline.loader.augment import BatchTransform
    from pipeline.loader.loaders import EvalLoader
    from pipeline.shard.manifest import read_manifest
    from trainer.checkpoint import format as ckpt
    from trainer.model import default_devices

    scored = ckpt.resolve_location(checkpoint)  # a run folder means its best copy: say which file is scored
    state = ckpt.load(scored)
    config = state["config"]
    manifest = read_manifest(data, split)
    check_classes(state, manifest, data, split)
    devices = default_devices()
    model = build_model(state, devices)
    transform = BatchTransform(state["stats"], pca_std=0.0)
    loader = EvalLoader(data, batch_size, ten_crop=ten_crop, split=split, crop=config["crop"],
                        num_workers=num_workers, pin_memory=devices[0].startswith("cuda"))
    result = errors_from_totals(eval_totals(model, loader, transform, devices[0], ten_crop))
    # "epoch": the epochs the checkpoint had finished, i.e. the number (from 1, as in metrics.jsonl)
    # of the last one; an end-of-epoch checkpoint, such as the best, is that epoch's
    result.update(checkpoint=scored, data=data, split=split, crops=10 if ten_crop else 1,
                  epoch=state["epoch"], step=state["step"])
    if as_json:
        print(json.dumps(result))
    else:
        print(f"checkpoint {scored} (epoch {result['epoch']}, step {result['step']})")
        crops = "1 crop" if result["crops"] == 1 else f"{result['crops']} crops"
        print(f"{split}: {result['samples']} images, {crops}: top-1 error "
              f"{result['top1_error']:.4f}, top-5 error {result['top5_error']:.4f}, loss {result['loss']:.4f}")
    sys.stdout.flush()
    return 0


def check_classes(state: dict, manifest: dict, data: str, split: str) -> None:
    from pipeline.errors import UserError

    ours = [c["synset"] for c in state["classes"]]
    theirs = [c["synset"] for c in manifest["classes"]]
    if ours != theirs:
        raise UserError(f"{data} split {split!r} has {len(theirs)} classes that differ from the "
                        f"checkpoint's {len(ours)} training classes: evaluate on a dataset sharded "
                        f"with the same class list")
