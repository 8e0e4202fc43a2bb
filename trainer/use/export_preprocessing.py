"""Photo -> network input the way `alexnet predict` prepares it, with numpy and Pillow only.

`alexnet export` copies this file into the export folder as `preprocessing.py`, so that a user of the
exported network reproduces predict's probabilities without this project, Ray, OpenCV or simplejpeg:

    import preprocessing
    x = preprocessing.network_input("photo.jpg", "exported/")   # float32 [1, 3, 224, 224]

Every step mirrors the sharder's (pipeline/shard/images.py) and the evaluation's (trainer/evaluate.py):
decode (JPEGs at the largest power-of-two DCT reduction that keeps the shorter side >= the stored size),
centre square, antialiasing Gaussian of sigma sqrt(((side/size)^2 - 1) / 6) then bilinear resampling
with pixel centres at +0.5 (OpenCV's convention), JPEG re-encoding at the dataset's quality and chroma,
decoding, centre crop (or ten crops), minus the mean RGB. Pillow's JPEG decoder interpolates chroma
where the sharder's replicates it, and the resampling here is in floating point where OpenCV's is in
fixed point, so a pixel may differ by a level or two; probabilities computed this way came within 2e-4
of predict's on the test photographs (tests/integration/test_predict_export.py holds them to 1e-3). This file must import nothing but the
standard library, numpy and Pillow (tests/integration/test_predict_export.py runs it without the project).
"""

from __future__ import annotations

import io
import json
import math
import os

import numpy as np
from PIL import Image


def settings(folder: str) -> dict:
    """The export folder's preprocessing.json: image_size, jpeg_quality, chroma_subsampling, crop, mean_rgb."""
    with open(os.path.join(folder, "preprocessing.json")) as f:
        return json.load(f)


def network_input(photo: str | bytes, folder: str, ten_crop: bool = False) -> np.ndarray:
    """A photo (path or file bytes) -> float32 [1 or 10, 3, crop, crop], RGB 0-255 minus mean_rgb: what
    the exported program takes. With `ten_crop`, average the softmax of its ten rows, as predict does."""
    pre = settings(folder)
    rule = pre["stored_image"]
    if isinstance(photo, str):
        with open(photo, "rb") as f:
            photo = f.read()
    image = stored_image(photo, rule["image_size"], rule["jpeg_quality"], rule["chroma_subsampling"])
    crops = crops_of(image, rule["crop"], ten_crop).astype(np.float32)
    crops -= np.asarray(pre["mean_rgb"], np.float32)
    return np.ascontiguousarray(crops.transpose(0, 3, 1, 2))


def stored_image(data: bytes, size: int = 256, quality: int = 95, chroma: str = "420") -> np.ndarray:
    """File bytes -> the HWC uint8 RGB square a training shard holds for it (size x size)."""
    image = Image.open(io.BytesIO(data))
    width, height = image.size
    if image.format == "JPEG":
        factor = 1
        while factor < 8 and min(width, height) // (factor * 2) >= size:
            factor *= 2
        if factor > 1:
            image.draft(image.mode, (width // factor, height // factor))
    rgb = np.asarray(_to_rgb(image))
    square = centre_square(rgb, size)
    buffer = io.BytesIO()
    Image.fromarray(square).save(buffer, "JPEG", quality=quality, subsampling=0 if chroma == "444" else 2)
    return np.asarray(Image.open(buffer).convert("RGB"))


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any mode to RGB; transparent pixels become white."""
    image.load()
    if image.mode == "RGB":
        return image
    if image.mode == "P" and "transparency" in image.info or image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        image = image.point(lambda v: v / 256).convert("L")
    return image.convert("RGB")


def centre_square(rgb: np.ndarray, size: int) -> np.ndarray:
    """Shorter side to `size`, centre size x size (the crop offset rounds down, as the sharder's)."""
    height, width = rgb.shape[:2]
    side = min(width, height)
    top, left = (height - side) // 2, (width - side) // 2
    square = rgb[top:top + side, left:left + side].astype(np.float64)
    if side == size:
        return rgb[top:top + side, left:left + side].copy()
    if side > size:
        sigma = math.sqrt(((side / size) ** 2 - 1) / 6)
        if sigma > 0.05:
            square = np.clip(np.rint(_gaussian(square, sigma)), 0, 255)
    return np.clip(np.rint(_bilinear(square, size)), 0, 255).astype(np.uint8)


def _gaussian(image: np.ndarray, sigma: float) -> np.ndarray:
    """OpenCV's GaussianBlur for uint8: 3 taps below sigma 0.6, else 2*round(3 sigma)+1; mirrored edges
    (reflect-101)."""
    taps = 3 if sigma < 0.6 else int(round(sigma * 6 + 1)) | 1
    x = np.arange(taps) - (taps - 1) / 2
    kernel = np.exp(-x * x / (2 * sigma * sigma))
    kernel /= kernel.sum()
    half = taps // 2
    for axis in (0, 1):
        padded = np.pad(image, [(half, half) if a == axis else (0, 0) for a in range(3)], mode="reflect")
        length = image.shape[axis]
        image = sum(k * np.take(padded, np.arange(i, i + length), axis=axis) for i, k in enumerate(kernel))
    return image


def _bilinear(image: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resampling of a square to size x size, pixel centres at +0.5, edges clamped (OpenCV's
    INTER_LINEAR)."""
    side = image.shape[0]
    position = (np.arange(size) + 0.5) * (side / size) - 0.5
    low = np.floor(position).astype(int)
    weight = position - low
    weight[low < 0], low[low < 0] = 0.0, 0
    high_edge = low >= side - 1
    weight[high_edge], low[high_edge] = 0.0, side - 1
    high = np.minimum(low + 1, side - 1)
    rows = image[low] * (1 - weight)[:, None, None] + image[high] * weight[:, None, None]
    return rows[:, low] * (1 - weight)[None, :, None] + rows[:, high] * weight[None, :, None]


def crops_of(image: np.ndarray, crop: int, ten: bool = False) -> np.ndarray:
    """[1 or 10, crop, crop, 3]: the centre crop; or the four corners, the centre and their mirror images
    (trainer/evaluate.py's eval_crops)."""
    height, width = image.shape[:2]
    top, left = (height - crop) // 2, (width - crop) // 2
    centre = image[top:top + crop, left:left + crop]
    if not ten:
        return centre[None]
    corners = [image[:crop, :crop], image[:crop, -crop:], image[-crop:, :crop], image[-crop:, -crop:], centre]
    return np.stack(corners + [c[:, ::-1] for c in corners])
