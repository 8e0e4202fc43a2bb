"""A small ImageNet-shaped dataset, generated: the demo's input when the user has no ImageNet at hand.

It is shaped like the real thing so the demo runs the real code paths: `train/<synset>/<synset>_N.JPEG`
class folders, a flat `val/` folder with a `file,synset` CSV, a class list in imagenet-classes.tsv form,
JPEGs of varied sizes and aspect ratios, and the odd inputs ImageNet holds (grayscale and CMYK JPEGs, a
PNG named .JPEG). Each class is a texture with visible structure (stripes at a class-specific angle,
rings, checks, dots, ...) drawn with random period, phase, position and colours, plus a loose class
tint and pixel noise: a small network can learn it in minutes, but not from colour alone.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.errors import UserError

# (name, pattern): the pattern is a function of normalised coordinates, see _pattern.
CLASSES = ["horizontal stripes", "vertical stripes", "diagonal stripes", "concentric rings",
           "checkerboard", "polka dots", "single disc", "plus sign", "radial spokes", "anti-diagonal stripes"]
MAX_CLASSES = len(CLASSES)


def synset_of(index: int) -> str:
    """WordNet-style ids outside the real ImageNet range (n09xxxxxx is unused by ILSVRC-2012's classes)."""
    return f"n099{index:05d}"


def generate(root: str | Path, *, classes: int = 8, train_per_class: int = 100, val_per_class: int = 25,
             seed: int = 0, min_side: int = 120, max_side: int = 420) -> dict:
    """Write the dataset under root; returns the paths the sharding step needs."""
    check_budget(classes, train_per_class, val_per_class)
    root = Path(root)
    rng = np.random.default_rng(seed)
    classes_file = root / "classes.tsv"
    root.mkdir(parents=True, exist_ok=True)
    classes_file.write_text("".join(f"{i}\t{synset_of(i)}\t{CLASSES[i]}\n" for i in range(classes)))
    for c in range(classes):
        folder = root / "train" / synset_of(c)
        folder.mkdir(parents=True, exist_ok=True)
        for n in range(train_per_class):
            _write(folder / f"{synset_of(c)}_{n}.JPEG", _image(c, rng, min_side, max_side), rng,
                   png=(c == 0 and n == 0))
    val = root / "val"
    val.mkdir(parents=True, exist_ok=True)
    rows = []
    order = rng.permutation(classes * val_per_class)  # val files are not grouped by class, as in ImageNet
    for number, item in enumerate(order, 1):
        c = int(item) // val_per_class
        name = f"DEMO_val_{number:08d}.JPEG"
        _write(val / name, _image(c, rng, min_side, max_side), rng)
        rows.append((name, synset_of(c)))
    with open(root / "val_labels.csv", "w", newline="") as f:
        csv.writer(f).writerows([("file", "synset"), *rows])
    return {"train": str(root / "train"), "val": str(val), "labels": str(root / "val_labels.csv"),
            "classes": str(classes_file)}


def check_budget(classes: int, train_per_class: int, val_per_class: int) -> None:
    if not 2 <= classes <= MAX_CLASSES:
        raise UserError(f"--classes {classes}: the generated dataset has 2 to {MAX_CLASSES} classes")
    if train_per_class < 1 or val_per_class < 1:
        raise UserError("--train-per-class and --val-per-class must be at least 1")


def _image(label: int, rng: np.random.Generator, min_side: int, max_side: int) -> np.ndarray:
    """An RGB uint8 image [H, W, 3] of the class's texture."""
    height, width = (int(v) for v in rng.integers(min_side, max_side + 1, size=2))
    short = min(height, width)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32) / short  # short side spans 0..1
    cy, cx = height / short * rng.uniform(0.35, 0.65), width / short * rng.uniform(0.35, 0.65)
    mask = _pattern(label, x - cx, y - cy, rng)  # 0..1
    tint = np.array(_hsv_to_rgb(label / MAX_CLASSES + rng.normal(0, 0.04), 0.6, 0.9), dtype=np.float32)
    fg = np.clip(tint + rng.normal(0, 0.15, 3).astype(np.float32), 0, 1)
    bg = np.clip(1 - fg + rng.normal(0, 0.15, 3).astype(np.float32), 0, 1)  # contrasting background
    image = bg + mask[..., None].astype(np.float32) * (fg - bg)
    # Pixel noise from a tiled 64x64 patch: looks the same after JPEG, costs a tenth of a full draw.
    tile = rng.standard_normal((64, 64, 3), dtype=np.float32) * 0.05
    image += np.tile(tile, (-(-height // 64), -(-width // 64), 1))[:height, :width]
    return (np.clip(image, 0, 1) * 255).astype(np.uint8)


def _pattern(label: int, x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    period = rng.uniform(0.10, 0.18)  # in short-side units: 5-10 cycles across the 256 px crop
    phase = rng.uniform(0, 2 * np.pi)
    wave = lambda t: 0.5 + 0.5 * np.sin(2 * np.pi * t / period + phase)  # noqa: E731
    radius = np.hypot(x, y)
    if label == 0:
        return wave(y)
    if label == 1:
        return wave(x)
    if label == 2:
        return wave((x + y) / np.sqrt(2))
    if label == 3:
        return wave(radius)
    if label == 4:
        return ((np.floor(x / period) + np.floor(y / period)) % 2).astype(np.float32)
    if label == 5:
        return (np.hypot((x / period) % 1 - 0.5, (y / period) % 1 - 0.5) < 0.3).astype(np.float32)
    if label == 6:
        return (radius < rng.uniform(0.2, 0.35)).astype(np.float32)
    if label == 7:
        arm = rng.uniform(0.06, 0.1)
        return (((np.abs(x) < arm) | (np.abs(y) < arm)) & (radius < 0.4)).astype(np.float32)
    if label == 8:
        return 0.5 + 0.5 * np.sin(rng.integers(6, 12) * np.arctan2(y, x) + phase)
    return wave((x - y) / np.sqrt(2))


def _write(path: Path, rgb: np.ndarray, rng: np.random.Generator, png: bool = False) -> None:
    """Mostly RGB JPEGs; some grayscale and CMYK ones; `png` writes PNG bytes under a .JPEG name."""
    image = Image.fromarray(rgb)
    buffer = io.BytesIO()
    if png:
        image.save(buffer, format="PNG")
    else:
        mode = rng.choice(["RGB", "L", "CMYK"], p=[0.8, 0.12, 0.08])
        image.convert(str(mode)).save(buffer, format="JPEG", quality=int(rng.integers(75, 96)))
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(buffer.getvalue())
    os.replace(tmp, path)


def _hsv_to_rgb(h: float, s: float, v: float) -> tuple[float, float, float]:
    import colorsys

    return colorsys.hsv_to_rgb(h % 1.0, s, v)
