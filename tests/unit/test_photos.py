"""The photographs most of the suite runs on (tests/helpers/photos.py) are there, real, and as varied as the
fixtures need: a missing or changed scikit-image file fails here by name, not as an odd error elsewhere."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from PIL import Image

from helpers.photos import PHOTOS, SAMPLE_COUNT, photo_path, sample_files


def test_each_photograph_ships_in_the_installed_wheel_as_a_real_photograph():
    for photo in PHOTOS:
        with Image.open(photo_path(photo.file)) as img:  # inside skimage/data: nothing to download
            assert img.mode == photo.mode, photo.file
            assert min(img.size) >= 300, photo.file
            pixels = np.asarray(img.convert("L"), dtype=float)
        assert pixels.std() > 15 and len(np.unique(pixels)) > 100, photo.file  # not flat, not a drawing
    assert {p.mode for p in PHOTOS} == {"RGB", "L"} and len({p.file for p in PHOTOS}) == len(PHOTOS)


def test_a_missing_photograph_is_named_with_what_to_install():
    with pytest.raises(FileNotFoundError, match=r"no_such_photo\.png is missing from the installed scikit-image"):
        photo_path("no_such_photo.png")


def test_sample_has_the_kinds_of_image_the_fixtures_need():
    files = sample_files()
    assert len(files) == SAMPLE_COUNT
    assert len({f.name.split("_", 1)[0] for f in files}) == SAMPLE_COUNT  # one class per image
    assert len({hashlib.sha256(f.read_bytes()).digest() for f in files}) == SAMPLE_COUNT  # all different
    modes, sizes, sources = [], [], set()
    for f in files:
        with Image.open(f) as img:
            assert img.format == "JPEG", f.name
            modes.append(img.mode)
            sizes.append(img.size)
        sources.add(f.stem.split("_", 1)[1])
    assert sources == {p.file.split(".")[0] for p in PHOTOS}
    assert 10 <= modes.count("L") <= SAMPLE_COUNT // 4 and set(modes) == {"RGB", "L"}
    assert any(w > h for w, h in sizes) and any(w < h for w, h in sizes) and any(w == h for w, h in sizes)
    assert sum(min(s) < 256 for s in sizes) >= 10  # stored images get upscaled...
    assert max(w * h for w, h in sizes) > 1_000_000  # ...or DCT-downscaled
    assert 150_000 < float(np.median([w * h for w, h in sizes])) < 250_000  # ImageNet's typical 500x375
