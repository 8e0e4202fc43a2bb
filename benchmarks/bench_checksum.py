"""What the loaders' per-image checksum costs, against the JPEG decode it guards, in the same run.

    python benchmarks/bench_checksum.py            # the shared ImageNet images, stored as `alexnet shard` stores them

Each image is made into a stored 256x256 JPEG (the sharding path), then timed per image, best of several
passes over all of them, on one core: simplejpeg's decode into a reused buffer (what a loader worker
does for every sample), CRC32C (the `crc32c` package, hardware instructions; what the index holds and the
loaders check) and zlib's CRC-32 (the stdlib alternative). The loaders verify by default when the
checksum costs under 2% of the decode.
"""

from __future__ import annotations

import argparse
import time
import zlib
from pathlib import Path

import crc32c
import numpy as np
import simplejpeg

from pipeline.shard.images import process_image

IMAGES = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenet-sample"


def per_image_us(function, payloads: list, passes: int) -> float:
    best = float("inf")
    for _ in range(passes):
        start = time.perf_counter()
        for payload in payloads:
            function(payload)
        best = min(best, time.perf_counter() - start)
    return best / len(payloads) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=Path, default=IMAGES, help="folder of JPEGs (default: the shared sample)")
    parser.add_argument("--passes", type=int, default=5, help="passes per measurement; the best counts")
    args = parser.parse_args()
    stored = [memoryview(process_image(path.read_bytes())[0]) for path in sorted(args.images.glob("*.JPEG"))]
    buffer = np.empty((256, 256, 3), dtype=np.uint8)
    decode = per_image_us(lambda jpg: simplejpeg.decode_jpeg(jpg, "RGB", buffer=buffer), stored, args.passes)
    hardware = per_image_us(crc32c.crc32c, stored, args.passes * 4)
    stdlib = per_image_us(zlib.crc32, stored, args.passes * 4)
    print(f"{len(stored)} stored images, {np.mean([len(s) for s in stored]) / 1e3:.1f} KB on average")
    print(f"decode          {decode:8.1f} us/image")
    print(f"crc32c          {hardware:8.1f} us/image   {hardware / decode:6.2%} of the decode")
    print(f"zlib.crc32      {stdlib:8.1f} us/image   {stdlib / decode:6.2%} of the decode")


if __name__ == "__main__":
    main()
