"""One image in, one stored image out: decode whatever the file is, shorter side to `size`, centre crop,
JPEG encode.

The fast path is libjpeg-turbo through simplejpeg: a JPEG is decoded with DCT-domain downscaling by
1/2, 1/4 or 1/8 (`min_height` / `min_width`), so a 2400x1600 photo costs roughly what a 600x400 one
does; that leaves a residual scale in (1/2, 1], done on the centre square only with OpenCV: a Gaussian
prefilter and bilinear sampling (together the spread of Pillow's antialiased bilinear triangle),
about 4x cheaper than Pillow's resize and as close to a Lanczos reference (tests/integration/test_images.py). Everything
libjpeg-turbo will not take cleanly (CMYK, PNG or GIF under a .JPEG name, palette or alpha images,
JPEGs with warnings) goes through Pillow, which either decodes it fully or tells us why it cannot.
Pixel values are uint8 RGB, 0-255, HWC. Benchmarks: benchmarks/bench_shard.py.
"""

from __future__ import annotations

import io
import math

import cv2
import numpy as np
import simplejpeg
from PIL import Image, UnidentifiedImageError

cv2.setNumThreads(1)  # one Ray task per core: OpenCV's own thread pool would only oversubscribe
# Chroma subsampling of the stored JPEGs. 4:2:0 (default) encodes ~40% faster, makes ~25% smaller shards
# and decodes faster in every epoch's loader; 4:4:4 keeps full colour resolution (4:2:0 lowers the 2nd
# and 3rd PCA eigenvalues by ~4%, docs/reference.md; stats.json is computed on the stored pixels either way).
CHROMA_SUBSAMPLING = ("420", "444")


class BadImage(ValueError):
    """The input cannot become a training image; the message is the reason recorded in the manifest."""


def process_image(data: bytes, size: int = 256, quality: int = 95, chroma: str = "420") -> tuple[bytes, int, int]:
    """(stored JPEG bytes, original width, original height) or BadImage with the reason."""
    return process_input(data, size, quality, chroma)[:3]


def process_input(data: bytes, size: int = 256, quality: int = 95, chroma: str = "420") -> tuple[bytes, int, int, str]:
    """process_image plus the input's colour mode as Pillow names it ("RGB", "L" for grayscale, "CMYK",
    "P", "RGBA", ...): the sharder counts the inputs it converted to RGB, so a user can see how many
    were not colour photographs."""
    rgb, width, height, mode = _decode(data, size, fast_chroma=chroma == "420")
    square = centre_square(rgb, size)
    return encode_jpeg(square, quality, chroma), width, height, mode


def decode_for_size(data: bytes, size: int, fast_chroma: bool = False) -> tuple[np.ndarray, int, int]:
    """Decode to RGB (HWC uint8), at the smallest power-of-two DCT scale whose shorter side is still
    >= `size`; also returns the original width and height.

    `fast_chroma` upsamples a subsampled source's chroma by replication (libjpeg-turbo's merged
    upsampler) instead of interpolating it: ~20% of the decode, the largest single cost of a shard
    task. For a 4:2:0 output, whose encoder halves the chroma again, it makes no measurable difference:
    the mean error against a full-resolution Lanczos reference is the same to 0.01 of a level (3.39;
    tests/integration/test_images.py), while a 4:4:4 output would lose 0.015; so only 4:2:0 outputs use it."""
    return _decode(data, size, fast_chroma)[:3]


def _decode(data: bytes, size: int, fast_chroma: bool) -> tuple[np.ndarray, int, int, str]:
    """decode_for_size plus the input's colour mode (Pillow's name for it)."""
    if not data:
        raise BadImage("empty file (0 bytes)")
    if data[:2] == b"\xff\xd8":
        try:
            height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
            if colorspace in ("YCbCr", "Gray"):
                min_h, min_w = _scaled_min(width, height, size)
                return simplejpeg.decode_jpeg(data, "RGB", fastupsample=fast_chroma, min_height=min_h,
                                              min_width=min_w), width, height, _JPEG_MODES[colorspace]
        except ValueError:
            pass  # CMYK/YCCK or a recoverable libjpeg warning: Pillow decides below
    return _decode_with_pillow(data, size)


def _scaled_min(width: int, height: int, size: int) -> tuple[int, int]:
    """The decoded size for the largest power-of-two DCT reduction (1/2, 1/4, 1/8) that keeps the shorter
    side >= `size`. Power-of-two only: libjpeg's other M/8 scales alias visibly on fine texture."""
    factor = 1
    while factor < 8 and min(width, height) // (factor * 2) >= size:
        factor *= 2
    if factor == 1:
        return 0, 0
    return math.ceil(height / factor), math.ceil(width / factor)


_JPEG_MODES = {"YCbCr": "RGB", "Gray": "L"}  # libjpeg-turbo's colour spaces as Pillow names the modes


def _decode_with_pillow(data: bytes, size: int) -> tuple[np.ndarray, int, int, str]:
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise BadImage("not an image (no known image format)") from None
    except Exception as error:  # e.g. DecompressionBombError for absurd sizes
        raise BadImage(f"cannot open image ({type(error).__name__}: {error})") from None
    width, height = image.size
    try:
        if image.format == "JPEG":
            scale = max(size / min(width, height), 1e-9)
            image.draft(image.mode, (math.ceil(width * scale), math.ceil(height * scale)))
        image.load()
    except Exception as error:  # Pillow says OSError for truncation, but decoders raise other types too
        message = str(error).strip() or type(error).__name__
        if "truncated" in message or "premature" in message.lower():
            raise BadImage(f"truncated {image.format or 'image'} file ({message})") from None
        raise BadImage(f"cannot decode {image.format or 'image'} ({message})") from None
    return np.asarray(_to_rgb(image)), width, height, image.mode


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode to RGB; transparent pixels become white (what a viewer shows on a page)."""
    if image.mode == "RGB":
        return image
    if image.mode == "P" and "transparency" in image.info or image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        image = image.point(lambda v: v / 256).convert("L")  # 16-bit greyscale to 8-bit
    return image.convert("RGB")  # L, CMYK (Adobe-inverted handled by Pillow), YCbCr, P, 1, ...


def centre_square(rgb: np.ndarray, size: int) -> np.ndarray:
    """Shorter side to `size`, centre `size` x `size` crop (HWC uint8); resamples only the crop.

    The crop starts at the integer offset floor((W - side) / 2): at most half a source pixel from the
    exact centre, which no training image notices.
    """
    height, width = rgb.shape[:2]
    side = min(width, height)
    top, left = (height - side) // 2, (width - side) // 2
    square = rgb[top:top + side, left:left + side]
    if side == size:
        return np.ascontiguousarray(square)
    if side > size:
        # antialiasing: a triangle filter of half-width side/size (Pillow's bilinear when shrinking) has
        # variance (side/size)^2 / 6 source pixels^2; bilinear sampling itself supplies about 1/6 of it
        sigma = math.sqrt(((side / size) ** 2 - 1) / 6)
        if sigma > 0.05:  # a 3x3 kernel holds +-1.7 sigma below 0.6, the usual case after DCT scaling
            kernel = (3, 3) if sigma < 0.6 else (0, 0)
            square = cv2.GaussianBlur(square, kernel, sigmaX=sigma, sigmaY=sigma)
    return cv2.resize(square, (size, size), interpolation=cv2.INTER_LINEAR)


def encode_jpeg(rgb: np.ndarray, quality: int, chroma: str = "420") -> bytes:
    return simplejpeg.encode_jpeg(np.ascontiguousarray(rgb), quality=quality, colorspace="RGB",
                                  colorsubsampling=chroma)


def decode_stored(data: bytes, buffer: np.ndarray | None = None) -> np.ndarray:
    """Decode a stored sample to HWC uint8 RGB the way a loader will (libjpeg-turbo, accurate DCT), into
    `buffer` (uint8, large enough) when given: a shard task reuses one instead of faulting in fresh pages."""
    return simplejpeg.decode_jpeg(data, "RGB", buffer=buffer)
