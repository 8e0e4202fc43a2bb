"""`alexnet predict CHECKPOINT IMAGE|FOLDER|URL...`: what the trained network sees in photos.

    alexnet predict runs/run1 photo.jpg holiday/ https://example.org/cat.png [--ten-crop] [--json]

Each input goes the way a validation image went before the network scored it in `alexnet eval`: the
sharder's own `process_image` (decode any format it accepts, shorter side to the stored size, centre
square, JPEG at the dataset's quality and chroma), decoded as the loader decodes a stored sample, then
the evaluation's centre crop or ten crops (trainer/evaluate.py). No second implementation, so a photo
scored here and the same photo sharded and scored by `alexnet eval` get the same probabilities.
"""

from __future__ import annotations

import json
import sys
import urllib.request
from dataclasses import asdict, dataclass

import numpy as np
import torch

from pipeline import storage
from pipeline.errors import UserError
from pipeline.shard.labels import named_classes

TOP = 5


@dataclass(frozen=True)
class StoredImageRule:
    """How `alexnet shard` stored the training images: what an input must become before it is cropped."""

    image_size: int = 256  # shorter side to this, then the centre square
    jpeg_quality: int = 95
    chroma_subsampling: str = "420"
    crop: int = 224  # the evaluation crop of the stored square

    @classmethod
    def of_run(cls, state: dict) -> StoredImageRule:
        """The rule of the dataset the checkpoint was trained on (its train manifest); the sharder's
        defaults, with a note, when that dataset cannot be read here."""
        from pipeline.shard.manifest import read_manifest

        crop = int(state["config"]["crop"])
        try:
            manifest = read_manifest(state["config"]["data"], "train")
        except (UserError, OSError):
            rule = cls(crop=crop)
            print(f"note: the run's dataset {state['config']['data']} has no readable train manifest here; "
                  f"images are stored the sharder's default way ({rule.image_size} pixels, JPEG quality "
                  f"{rule.jpeg_quality}, chroma {rule.chroma_subsampling})", file=sys.stderr)
            return rule
        return cls(int(manifest["image_size"]), int(manifest["jpeg_quality"]),
                   manifest.get("chroma_subsampling", "420"), crop)

    def stored(self, data: bytes) -> np.ndarray:
        """Input file bytes -> the HWC uint8 RGB image a shard would hold (BadImage if it is none)."""
        from pipeline.shard.images import decode_stored, process_image

        jpeg, _, _ = process_image(data, self.image_size, self.jpeg_quality, self.chroma_subsampling)
        return decode_stored(jpeg)

    def to_dict(self) -> dict:
        return asdict(self)


class Predictor:
    """A checkpoint's eval-mode network with its input transform, class list and stored-image rule."""

    def __init__(self, checkpoint: str, devices: tuple[str, str] | None = None):
        from pipeline.loader.augment import BatchTransform
        from trainer.evaluate import load_model

        self.model, state = load_model(checkpoint, devices)
        self.device = self.model.devices[0]
        self.classes = named_classes(state["classes"])
        self.stats = state["stats"]
        self.rule = StoredImageRule.of_run(state)
        self.transform = BatchTransform(state["stats"], pca_std=0.0)

    @torch.no_grad()
    def logits(self, image: np.ndarray, ten_crop: bool = False) -> torch.Tensor:
        """A stored HWC uint8 image -> float logits [crops, classes] on the CPU."""
        from trainer.evaluate import crop_logits, eval_crops

        crops = torch.from_numpy(eval_crops(image, self.rule.crop, ten_crop)).permute(0, 3, 1, 2)  # NCHW view
        return crop_logits(self.model, crops[None].to(self.device), self.transform)[0].cpu()

    def top(self, logits: torch.Tensor, k: int = TOP) -> list[dict]:
        """The k most probable classes of [crops, classes] logits (softmax averaged over the crops)."""
        from trainer.evaluate import crop_probabilities

        probs = crop_probabilities(logits[None])[0]
        best = probs.topk(min(k, probs.numel()))
        return [{"index": int(i), "synset": self.classes[i]["synset"], "name": self.classes[i].get("name", ""),
                 "probability": float(p)} for p, i in zip(best.values.tolist(), best.indices.tolist())]


def expand_inputs(inputs: list[str]) -> list[str]:
    """Files as given, a folder's files (sorted, not recursive, hidden ones left out), URLs as given."""
    found = []
    for item in inputs:
        if not _is_web(item) and storage.is_dir(item):
            names = sorted(n for n in storage.list_names(item) if not n.startswith("."))
            found += [storage.join(item, n) for n in names if not storage.is_dir(storage.join(item, n))]
        else:
            found.append(item)
    return found


def read_input(location: str) -> bytes:
    """The bytes of a local file, an object-store URL (pipeline.storage) or an http(s) URL."""
    if _is_web(location):
        with urllib.request.urlopen(location, timeout=60) as response:
            return response.read()
    return storage.read_bytes(location)


def _is_web(location: str) -> bool:
    return location.startswith(("http://", "https://"))


def predict(checkpoint: str, inputs: list[str], *, ten_crop: bool = False, as_json: bool = False) -> int:
    """`alexnet predict`: top-5 per image. Exit status 0 when every input was scored, 1 when some were
    not (each of those named on stderr in one line; the others are still scored)."""
    from pipeline.shard.images import BadImage
    from trainer.checkpoint.checkpoint_location import resolve_location

    checkpoint = resolve_location(checkpoint)  # a run or checkpoint folder names one file: say which
    if not as_json:
        print(f"checkpoint {checkpoint}", flush=True)
    predictor = Predictor(checkpoint)
    results, failed = [], 0
    for location in expand_inputs(inputs):
        try:
            image = predictor.rule.stored(read_input(location))
        except (BadImage, OSError) as error:
            print(f"alexnet predict: {location}: {unreadable_reason(error)}", file=sys.stderr, flush=True)
            failed += 1
            continue
        logits = predictor.logits(image, ten_crop)
        result = {"input": location, "crops": logits.shape[0], "top5": predictor.top(logits),
                  "logits": logits.tolist()}
        results.append(result)
        if not as_json:
            _print_result(result)
    if as_json:
        print(json.dumps({"checkpoint": str(checkpoint), "predictions": results, "failed": failed}))
    if not results and not failed:
        raise UserError(f"no images found in {', '.join(inputs)}")
    return 1 if failed else 0


def unreadable_reason(error: Exception) -> str:
    """Why an input could not be scored, in words and without repeating its name: an OSError's own text
    ("[Errno 2] No such file or directory: 'x.jpg'") names the file a second time, in Python's terms."""
    if isinstance(error, FileNotFoundError):
        return "no such file"
    if isinstance(error, IsADirectoryError):
        return "a folder, not a file"
    if isinstance(error, PermissionError):
        return "not readable (permission denied)"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror[0].lower() + error.strerror[1:]
    return str(error).splitlines()[0] if str(error) else type(error).__name__


def _print_result(result: dict) -> None:
    print(f"{result['input']}" + (" (ten crops)" if result["crops"] > 1 else ""))
    for rank, entry in enumerate(result["top5"], 1):
        name = f" {entry['name']}" if entry["name"] else ""
        print(f"  {rank}. {entry['probability']:7.2%}  {entry['synset']}{name}")
    sys.stdout.flush()

