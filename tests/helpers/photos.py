"""The suite's real images: public-domain and CC0 photographs that scikit-image ships inside its wheel.

ImageNet's images may not go into this repository (non-commercial research use), and a clone has no
`../shared/data` beside it, so the tests that are not about ImageNet itself run on these photographs,
on CI and in a bare clone alike. scikit-image comes with the `dev` extra; only files inside its wheel
are used (`skimage.data` downloads some others on first use, which would fail offline).

`sample_files()` turns them into an ImageNet-shaped sample: SAMPLE_COUNT JPEGs named
`<synset>_<photo>.JPEG`, one per made-up class, each a seeded crop of one photograph at a size drawn
from a mix like ImageNet's (mostly about 500x375, landscape and portrait, some under 256 pixels, a
few large), at several JPEG qualities, an eighth of them grayscale. The count equals the shared
ImageNet sample's, so fixtures built from it (shard counts, strides) have the same shape as before.

PHOTOS lists the photographs with their licence and author, as `skimage.data`'s documentation gives
them; only public-domain and CC0 ones are used.
"""

from __future__ import annotations

import atexit
import importlib.util
import io
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

SAMPLE_COUNT = 317


@dataclass(frozen=True)
class Photo:
    file: str  # in skimage/data/ inside the wheel
    mode: str  # "RGB" or "L", as shipped
    source: str  # licence and author


PHOTOS = (
    Photo("astronaut.png", "RGB", "public domain; NASA, astronaut Eileen Collins"),
    Photo("chelsea.png", "RGB", "CC0; a cat photographed by Stefan van der Walt"),
    Photo("coffee.png", "RGB", "CC0; a cup of coffee photographed by Rachel Michetti"),
    Photo("rocket.jpg", "RGB", "public domain; a SpaceX launch photograph"),
    Photo("hubble_deep_field.jpg", "RGB", "public domain; NASA's Hubble eXtreme Deep Field"),
    Photo("retina.jpg", "RGB", "CC0; fundus photograph by Mikael Haggstrom, Wikimedia Commons"),
    Photo("camera.png", "L", "CC0; a cameraman photographed by Lav Varshney"),
    Photo("clock_motion.png", "L", "public domain; a motion-blurred clock by Stefan van der Walt"),
    Photo("cell.png", "L", "CC0; a cell in saline, quantitative phase image (qpformat authors)"),
    Photo("brick.png", "L", "CC0; brick wall texture from CC0Textures (Bricks25)"),
    Photo("grass.png", "L", "CC0; grass texture by linolafett, DeviantArt"),
    Photo("gravel.png", "L", "CC0; gravel texture from CC0Textures (Gravel04)"),
)

_COLOUR = [p for p in PHOTOS if p.mode == "RGB"]
_GRAY = [p for p in PHOTOS if p.mode == "L"]
_folder: Path | None = None


def photo_path(file: str) -> Path:
    """The shipped file, or a one-line error saying what to install (every image test needs it)."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or spec.origin is None:
        raise RuntimeError("the test photographs come from scikit-image, which is not installed: "
                           "pip install -e '.[dev]'")
    path = Path(spec.origin).parent / "data" / file
    if not path.is_file():
        raise FileNotFoundError(f"test photograph {path} is missing from the installed scikit-image "
                                "(pyproject's dev extra names the versions that ship it)")
    return path


def sample_folder() -> Path:
    """A temporary folder of SAMPLE_COUNT JPEGs, made once per process and removed at its exit."""
    global _folder
    if _folder is None:
        folder = Path(tempfile.mkdtemp(prefix="alexnet-photos-"))
        atexit.register(shutil.rmtree, folder, True)
        sources = {p.file: _open(p) for p in PHOTOS}
        for i in range(SAMPLE_COUNT):
            photo = _GRAY[i // 8 % len(_GRAY)] if i % 8 == 3 else _COLOUR[i % len(_COLOUR)]
            data = _sample(sources[photo.file], random.Random(f"sample:{i}"))
            (folder / f"n{i:08d}_{photo.file.split('.')[0]}.JPEG").write_bytes(data)
        _folder = folder
    return _folder


def sample_files() -> list[Path]:
    """The sample's JPEGs, sorted by name (so by class)."""
    return sorted(sample_folder().glob("*.JPEG"))


def _open(photo: Photo) -> Image.Image:
    with Image.open(photo_path(photo.file)) as img:
        img.load()
        if img.mode != photo.mode:
            raise ValueError(f"test photograph {photo.file} is {img.mode}, expected {photo.mode}")
        return img.copy()


def _sample(img: Image.Image, rng: random.Random) -> bytes:
    """A crop of `img` with an ImageNet-like shape and size, JPEG-encoded at a drawn quality."""
    aspect = rng.choice([4 / 3, 4 / 3, 4 / 3, 3 / 2, 1.0, 5 / 4])
    if rng.random() < 0.2:
        aspect = 1 / aspect  # portrait
    kind = rng.random()
    long_side = rng.randint(60, 250) if kind < 0.12 else rng.randint(900, 1600) if kind > 0.95 else 500
    if aspect >= 1:
        width, height = long_side, round(long_side / aspect)
    else:
        width, height = round(long_side * aspect), long_side
    # the largest box of that aspect inside the photo, scaled down by a drawn factor, at a drawn place
    scale = rng.uniform(0.45, 1.0) * min(img.width / width, img.height / height)
    w, h = max(1, round(width * scale)), max(1, round(height * scale))
    left, top = rng.randint(0, img.width - w), rng.randint(0, img.height - h)
    crop = img.resize((width, height), Image.Resampling.BICUBIC, box=(left, top, left + w, top + h))
    if rng.random() < 0.5:
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    out = io.BytesIO()
    crop.save(out, "JPEG", quality=rng.choice([75, 85, 90, 95]))
    return out.getvalue()
