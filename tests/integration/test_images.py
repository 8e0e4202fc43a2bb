"""One image: every mode and container ImageNet has becomes a 256x256 RGB JPEG, or a clear reason."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from helpers.imagenet_trees import odd_files, sample_files
from pipeline.shard.images import (BadImage, centre_square, decode_for_size, decode_stored, encode_jpeg,
                                   process_image, process_input)


def _pillow_centre_square(data: bytes, resample: Image.Resampling, size: int = 256) -> np.ndarray:
    """Full-resolution decode, the centre square of side min(w, h) (integer offset, as documented),
    resampled to `size`: with Lanczos the high-quality answer at any cost; with bilinear what a careful
    Pillow user writes."""
    with Image.open(io.BytesIO(data)) as img:
        rgb = img.convert("RGB")
    side = min(rgb.size)
    left, top = (rgb.width - side) // 2, (rgb.height - side) // 2
    out = rgb.resize((size, size), resample, box=(left, top, left + side, top + side))
    return np.asarray(out, dtype=np.float64)


def test_real_images_are_as_faithful_as_a_full_resolution_pillow_resize():
    ours_error, pillow_error, default_error, interpolated_error = [], [], [], []
    for image in sample_files()[::12]:
        data = image.read_bytes()
        jpeg, width, height = process_image(data, chroma="444")  # full chroma: judge the resampling
        with Image.open(image) as original:
            assert (width, height) == original.size
        stored = decode_stored(jpeg)
        assert stored.shape == (256, 256, 3) and stored.dtype == np.uint8
        reference = _pillow_centre_square(data, Image.Resampling.LANCZOS)
        ours_error.append(np.abs(stored - reference).mean())
        pillow_error.append(np.abs(_pillow_centre_square(data, Image.Resampling.BILINEAR) - reference).mean())
        default_error.append(np.abs(decode_stored(process_image(data)[0]) - reference).mean())
        interpolated = centre_square(decode_for_size(data, 256, fast_chroma=False)[0], 256)
        interpolated_error.append(np.abs(decode_stored(encode_jpeg(interpolated, 95, "420")) - reference).mean())
    # DCT-domain downscaling + the cheap antialiased resample (+ JPEG q95) lose no more than Pillow's
    # full-resolution antialiased resize does; aliasing or a misplaced crop would show up here
    assert np.mean(ours_error) < np.mean(pillow_error) + 0.75, (np.mean(ours_error), np.mean(pillow_error))
    assert max(ours_error) < max(pillow_error) + 3
    assert np.mean(default_error) < np.mean(ours_error) + 1.5  # what 4:2:0 chroma costs on top
    # a 4:2:0 output decodes its source's chroma by replication (cheaper): no loss against interpolating it
    assert np.mean(default_error) < np.mean(interpolated_error) + 0.02, (np.mean(default_error),
                                                                         np.mean(interpolated_error))


def test_largest_and_smallest_images_and_grayscale():
    files = sample_files()
    sizes = {f: Image.open(f).size for f in files}
    for image in (max(files, key=lambda f: sizes[f][0] * sizes[f][1]), min(files, key=lambda f: min(sizes[f]))):
        jpeg, width, height = process_image(image.read_bytes())
        assert (width, height) == sizes[image]
        assert decode_stored(jpeg).shape == (256, 256, 3)
    gray = next(f for f in files if Image.open(f).mode == "L")
    stored = decode_stored(process_image(gray.read_bytes())[0]).astype(int)
    assert np.abs(stored[..., 0] - stored[..., 1]).max() <= 2  # grey stays grey, as RGB


def test_output_is_deterministic_and_follows_size_and_quality():
    data = sample_files()[7].read_bytes()
    assert process_image(data, 256, 95) == process_image(data, 256, 95)
    small, _, _ = process_image(data, 128, 95)
    assert decode_stored(small).shape == (128, 128, 3)
    import simplejpeg

    assert simplejpeg.decode_jpeg_header(process_image(data)[0])[3] == "420"
    assert simplejpeg.decode_jpeg_header(process_image(data, chroma="444")[0])[3] == "444"
    assert len(process_image(data, 256, 50)[0]) < len(process_image(data, 256, 95)[0])


def test_odd_files_convert_or_fail_with_a_reason(tmp_path):
    cases = odd_files(tmp_path / "n01440764", sample_files()[0])
    reasons = {}
    for name, converts in cases.items():
        data = (tmp_path / "n01440764" / name).read_bytes()
        if converts:
            stored = decode_stored(process_image(data)[0])
            assert stored.shape == (256, 256, 3), name
        else:
            with pytest.raises(BadImage) as error:
                process_image(data)
            reasons[name.split("_", 1)[1]] = str(error.value)
    assert "truncated" in reasons["truncated.JPEG"]
    assert "empty" in reasons["empty.JPEG"]
    assert "not an image" in reasons["text.JPEG"]


def test_the_input_colour_mode_is_reported_on_both_decode_paths(tmp_path):
    """The mode the sharder counts as converted: a grayscale JPEG (libjpeg-turbo's path) says L, a CMYK
    one (Pillow's) CMYK, as Pillow's own header reader says; and the stored image is process_image's."""
    cases = odd_files(tmp_path / "n01440764", sample_files()[0])
    modes = {}
    for name in (n for n, converts in cases.items() if converts):
        data = (tmp_path / "n01440764" / name).read_bytes()
        jpeg, width, height, mode = process_input(data)
        assert (jpeg, width, height) == process_image(data)
        with Image.open(io.BytesIO(data)) as img:
            assert mode == img.mode, name
        modes[name.split("_", 1)[1]] = mode
    assert modes == {"cmyk.JPEG": "CMYK", "gray.JPEG": "L", "png.JPEG": "RGB", "rgba.JPEG": "RGBA",
                     "palette.JPEG": "P"}
    assert process_input(sample_files()[0].read_bytes())[3] == "RGB"  # a colour JPEG: nothing converted


def test_cmyk_and_alpha_keep_their_colours(tmp_path):
    cases = odd_files(tmp_path / "n01440764", sample_files()[0])
    folder = tmp_path / "n01440764"
    rgb = decode_stored(process_image((folder / "n01440764_png.JPEG").read_bytes())[0]).astype(float)
    cmyk = decode_stored(process_image((folder / "n01440764_cmyk.JPEG").read_bytes())[0]).astype(float)
    assert np.abs(rgb - cmyk).mean() < 8  # not inverted, not garbled
    rgba = decode_stored(process_image((folder / "n01440764_rgba.JPEG").read_bytes())[0]).astype(float)
    assert rgba[:40, :40].mean() > 245  # the transparent corner is white
    assert np.abs(rgb[128:, 128:] - rgba[128:, 128:]).mean() < 4
    assert set(cases) >= {"n01440764_cmyk.JPEG", "n01440764_palette.JPEG"}


def test_dct_scaled_decode_keeps_the_shorter_side_at_least_the_target():
    for image in sample_files()[::20]:
        pixels, width, height = decode_for_size(image.read_bytes(), 256)
        shape = pixels.shape[:2] if isinstance(pixels, np.ndarray) else pixels.size[::-1]
        assert min(shape) >= min(256, width, height)
