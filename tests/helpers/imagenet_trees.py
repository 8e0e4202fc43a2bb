"""Build ImageNet-shaped trees in a temporary folder from real images named `<synset>_<words>.JPEG`,
one image per class: the suite's photographs (`photos.sample_files()`).

- `class_tree`: `train/<synset>/<synset>_<n>.JPEG`, n copies or variants per class;
- `flat_val`: `val/ILSVRC2012_val_<8 digits>.JPEG` plus a label file in one of the three forms users
  have (CSV `file,synset`, Kaggle's LOC_val_solution.csv, devkit ground truth + `ID synset` map);
- `train_tar`: the ILSVRC2012_img_train.tar layout, an outer tar of `<synset>.tar` per-class tars;
- `odd_files`: the odd inputs real ImageNet (or a user's disk) has, each with whether it must convert.

Variants are deterministic crops / flips / re-encodings, so trees (and shards made from them) are
reproducible.
"""

from __future__ import annotations

import io
import random
import tarfile
from pathlib import Path

from PIL import Image

from helpers.photos import sample_files  # noqa: F401  (the tests' source of images, re-exported)


def synset_of(image: Path) -> str:
    return image.name.split("_", 1)[0]


def variant(image: Path, n: int) -> bytes:
    """Variant n of an image: 0 is the original file; others a seeded crop, maybe flipped, re-encoded."""
    if n == 0:
        return image.read_bytes()
    rng = random.Random(f"{image.name}:{n}")
    with Image.open(image) as img:
        img.draft(img.mode, (img.width // 2, img.height // 2))  # faster; still real JPEG content
        img = img.convert("RGB") if img.mode not in ("RGB", "L") else img.copy()
    width, height = img.size
    scale = rng.uniform(0.6, 0.95)
    w, h = max(16, int(width * scale)), max(16, int(height * scale))
    left, top = rng.randint(0, width - w), rng.randint(0, height - h)
    img = img.crop((left, top, left + w, top + h))
    if rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    out = io.BytesIO()
    img.save(out, "JPEG", quality=rng.choice([75, 85, 92]))
    return out.getvalue()


def class_tree(root: Path, images: list[Path], per_class: int = 1) -> Path:
    """`root/<synset>/<synset>_<n>.JPEG` with `per_class` variants of each image; returns root."""
    for image in images:
        folder = root / synset_of(image)
        folder.mkdir(parents=True, exist_ok=True)
        for n in range(per_class):
            (folder / f"{synset_of(image)}_{n}.JPEG").write_bytes(variant(image, n))
    return root


def flat_val(root: Path, images: list[Path], per_image: int = 1, *, labels: str = "csv",
             first_variant: int = 100) -> tuple[Path, Path, Path | None, dict[str, str]]:
    """A flat folder `root/val/ILSVRC2012_val_<i>.JPEG` and its label file.

    labels: "csv" (`file,synset` with a header), "loc" (LOC_val_solution.csv), "devkit" (ground truth of
    ILSVRC2012_IDs + a map `ID synset`; the IDs are deliberately not sorted-synset positions).
    Returns (folder, label file, synset map or None, {file name: synset}).
    """
    folder = root / "val"
    folder.mkdir(parents=True, exist_ok=True)
    truth = {}
    number = 0
    for image in images:
        for k in range(per_image):
            number += 1
            name = f"ILSVRC2012_val_{number:08d}.JPEG"
            (folder / name).write_bytes(variant(image, first_variant + k))
            truth[name] = synset_of(image)
    synset_map = None
    if labels == "csv":
        label_file = root / "val_labels.csv"
        label_file.write_text("file,synset\n" + "".join(f"{n},{s}\n" for n, s in truth.items()))
    elif labels == "loc":
        label_file = root / "LOC_val_solution.csv"
        label_file.write_text("ImageId,PredictionString\n" + "".join(
            f"{n.rsplit('.', 1)[0]},{s} 10 20 110 120 {s} 5 5 50 50 \n" for n, s in truth.items()))
    elif labels == "devkit":
        synsets = sorted(set(truth.values()), reverse=True)  # ID order differs from sorted order
        ids = {s: i + 1 for i, s in enumerate(synsets)}
        synset_map = root / "ilsvrc2012_id_to_synset.txt"
        synset_map.write_text("".join(f"{i} {s}\n" for s, i in ids.items()))
        label_file = root / "ILSVRC2012_validation_ground_truth.txt"
        label_file.write_text("".join(f"{ids[s]}\n" for s in truth.values()))
    else:
        raise ValueError(labels)
    return folder, label_file, synset_map, truth


def train_tar(class_root: Path, tar_path: Path) -> Path:
    """ILSVRC2012_img_train.tar's layout from a class tree: an outer tar of per-class `<synset>.tar`."""
    with tarfile.open(tar_path, "w") as outer:
        for folder in sorted(p for p in class_root.iterdir() if p.is_dir()):
            buffer = io.BytesIO()
            with tarfile.open(fileobj=buffer, mode="w") as inner:
                for file in sorted(folder.iterdir()):
                    inner.add(file, arcname=file.name)
            info = tarfile.TarInfo(f"{folder.name}.tar")
            info.size = len(buffer.getvalue())
            outer.addfile(info, io.BytesIO(buffer.getvalue()))
    return tar_path


def odd_files(folder: Path, image: Path) -> dict[str, bool]:
    """Write the odd inputs into `folder`, named `<synset>_<what>.JPEG` after the folder's synset.

    Returns {file name: True if it must be converted into a sample, False if it must be skipped}.
    """
    folder.mkdir(parents=True, exist_ok=True)
    synset = folder.name
    with Image.open(image) as img:
        rgb = img.convert("RGB")
    rgb.thumbnail((400, 400))
    data = image.read_bytes()
    cases = {
        "cmyk": (_encode(rgb.convert("CMYK"), "JPEG"), True),
        "gray": (_encode(rgb.convert("L"), "JPEG"), True),
        "png": (_encode(rgb, "PNG"), True),
        "rgba": (_encode(_with_alpha(rgb), "PNG"), True),
        "palette": (_encode(rgb.convert("P", palette=Image.Palette.ADAPTIVE), "PNG"), True),
        "truncated": (data[: len(data) // 2], False),
        "empty": (b"", False),
        "text": (b"<html><body>404 Not Found</body></html>\n", False),
    }
    out = {}
    for what, (payload, converts) in cases.items():
        name = f"{synset}_{what}.JPEG"
        (folder / name).write_bytes(payload)
        out[name] = converts
    return out


def _encode(img: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, fmt)
    return buffer.getvalue()


def _with_alpha(rgb: Image.Image) -> Image.Image:
    rgba = rgb.convert("RGBA")
    alpha = Image.new("L", rgb.size, 255)
    alpha.paste(0, (0, 0, rgb.width // 3, rgb.height // 3))  # a transparent corner
    rgba.putalpha(alpha)
    return rgba
