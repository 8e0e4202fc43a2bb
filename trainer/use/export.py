"""`alexnet export CHECKPOINT OUT`: the trained network in a folder that needs only torch, numpy and Pillow.

    OUT/program.pt2        torch.export program of the eval-mode network: float32 [B, 3, crop, crop] -> logits
    OUT/weights.pt         plain state dict of this project's AlexNet (torch.load(..., weights_only=True))
    OUT/classes.json       [{index, synset, name}], the run's class list: logit i is class i
    OUT/preprocessing.json mean_rgb (0-255), crop, the stored-image rule, every step in words
    OUT/preprocessing.py   those steps in numpy and Pillow (trainer/use/export_preprocessing.py): a photo
                           -> the program's input, so a user gets predict's probabilities, not a guess at them

The program holds the weights itself; weights.pt is for code that defines its own network. Neither
Ray nor this project is needed to use them (docs/use.md, "Export").
"""

from __future__ import annotations

import io
import json

import torch

from pipeline import storage
from pipeline.errors import UserError

PROGRAM, WEIGHTS, CLASSES, PREPROCESSING = "program.pt2", "weights.pt", "classes.json", "preprocessing.json"
PREPROCESSING_CODE = "preprocessing.py"  # a copy of trainer/use/export_preprocessing.py
MAX_BATCH = 4096  # the program's largest batch (torch.export needs a bound for the dynamic dimension)


def export(checkpoint: str, out: str) -> int:
    """Write the export folder; refuses a folder that already holds one (nothing is overwritten)."""
    from trainer.use.predict import Predictor

    if storage.exists(storage.join(out, PROGRAM)):
        raise UserError(f"{out} already holds an export ({PROGRAM}): choose another folder or delete it")
    predictor = Predictor(checkpoint, ("cpu", "cpu"))
    model, rule = predictor.model, predictor.rule
    storage.makedirs(out)
    storage.write_bytes_atomic(storage.join(out, WEIGHTS), _saved(model.state_dict()))
    storage.write_bytes_atomic(storage.join(out, CLASSES), json.dumps(predictor.classes, indent=1).encode())
    storage.write_bytes_atomic(storage.join(out, PREPROCESSING),
                               json.dumps(preprocessing(predictor.stats, rule.to_dict()), indent=1).encode())
    storage.write_bytes_atomic(storage.join(out, PREPROCESSING_CODE), preprocessing_code())
    storage.write_bytes_atomic(storage.join(out, PROGRAM), program_bytes(model, rule.crop))
    print(f"exported {checkpoint} -> {out} ({PROGRAM}, {WEIGHTS}, {CLASSES}, {PREPROCESSING}, {PREPROCESSING_CODE})")
    return 0


def preprocessing(stats: dict, rule: dict) -> dict:
    """What a user must do to an image before the program sees it, as numbers and in words."""
    return {
        "mean_rgb": stats["mean_rgb"], "crop": rule["crop"], "stored_image": rule,
        "input": f"float32 [B, 3, {rule['crop']}, {rule['crop']}] NCHW, RGB on the 0-255 scale minus mean_rgb "
                 "(no division by a std)",
        "code": f"{PREPROCESSING_CODE}: network_input(photo, folder) does every step below with numpy and Pillow; "
                "its probabilities were within 2e-4 of alexnet predict's on the test photographs (libjpeg-turbo "
                "and OpenCV round a level or two differently; tests/integration/test_predict_export.py holds it to 1e-3)",
        "steps": [f"decode to RGB (a JPEG at the largest DCT reduction, 1/2, 1/4 or 1/8, that keeps the shorter "
                  f"side >= {rule['image_size']}; transparent pixels white); take the centre square (offset "
                  f"rounded down); if it is larger than {rule['image_size']}, blur it with a Gaussian of sigma "
                  f"sqrt(((side / {rule['image_size']})^2 - 1) / 6) (3 taps below sigma 0.6), then resample "
                  f"it bilinearly to {rule['image_size']}x{rule['image_size']} (pixel centres at +0.5, "
                  "OpenCV's INTER_LINEAR)",
                  f"encode that square as JPEG quality {rule['jpeg_quality']}, chroma {rule['chroma_subsampling']}, "
                  "and decode it again (how the training images were stored)",
                  f"centre crop {rule['crop']}x{rule['crop']} (or the four corners, the centre and their "
                  "mirror images, softmax averaged)",
                  "subtract mean_rgb per channel; logits -> softmax; class i is classes.json[i]"],
    }


def preprocessing_code() -> bytes:
    """The source of trainer/use/export_preprocessing.py (numpy and Pillow only): code a user runs, since
    words alone left a user's own resize 6 points of probability from predict's."""
    from pathlib import Path

    from trainer.use import export_preprocessing

    return Path(export_preprocessing.__file__).read_bytes()


def program_bytes(model: torch.nn.Module, crop: int) -> bytes:
    """torch.export of the eval-mode model on the CPU with a dynamic batch dimension, serialised."""
    example = torch.zeros(2, 3, crop, crop)
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    program = torch.export.export(model.eval(), (example,), dynamic_shapes={"images": {0: batch}})
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    return buffer.getvalue()


def _saved(value) -> bytes:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()
