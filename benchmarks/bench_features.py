"""Figure 4's feature pass per CPU core: stored JPEGs -> fc7 vectors, at width 1 and the demo's width.

    python benchmarks/bench_features.py                 # the suite's photographs (tests/helpers/photos.py)
    python benchmarks/bench_features.py --images 256 --widths 1 0.25

What one `alexnet neighbours` task does per image (trainer/use/features.py `fc7_of_jpegs`: decode the
stored 256x256 JPEG, centre crop, mean subtraction, the network up to fc7, float16), on one thread
(torch and OpenMP pinned to 1), timed by process CPU time so a shared machine's neighbours do not
count. Baseline in the same run: decoding and cropping alone, so the ratio says how much of a task
the network is. Then the arithmetic for ImageNet's 1,281,167 training images on N cores.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

IMAGENET_TRAIN = 1_281_167


def stored_jpegs(count: int) -> list[bytes]:
    """`count` stored training images (the sharder's process_image of the suite's photographs)."""
    from helpers.photos import sample_files

    from pipeline.shard.images import process_image

    files = sample_files()
    return [process_image(files[i % len(files)].read_bytes())[0] for i in range(count)]


def cpu_rate(work, count: int, repeats: int) -> float:
    """Images per CPU-second of this process: the best of `repeats` runs (least disturbed)."""
    best = 0.0
    for _ in range(repeats):
        started = time.process_time()
        work()
        best = max(best, count / (time.process_time() - started))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=128, help="images per timed pass (default 128)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default 64)")
    parser.add_argument("--widths", type=float, nargs="+", default=[1.0, 0.25], help="model widths (default 1 0.25)")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per row, best kept (default 3)")
    args = parser.parse_args()
    torch.set_num_threads(1)

    from pipeline.loader.augment import BatchTransform
    from pipeline.shard.images import decode_stored
    from trainer.evaluate import eval_crops
    from trainer.use.features import fc7_of_jpegs
    from trainer.model import AlexNet

    jpegs = stored_jpegs(args.images)
    stats = {"mean_rgb": [120.0, 115.0, 100.0], "eigenvalues": [1.0, 1.0, 1.0], "eigenvectors": np.eye(3).tolist()}
    transform = BatchTransform(stats, pca_std=0.0)
    decode = cpu_rate(lambda: [eval_crops(decode_stored(j), 224, False) for j in jpegs], len(jpegs), args.repeats)
    print(f"decode + centre crop only: {decode:8.1f} images per CPU-second (baseline)")
    for width in args.widths:
        model = AlexNet(1000, "paper", ("cpu", "cpu"), width=width).eval()
        fc7_of_jpegs(model, transform, jpegs[:args.batch_size], 224, args.batch_size)  # warm-up (allocator, kernels)
        rate = cpu_rate(lambda: fc7_of_jpegs(model, transform, jpegs, 224, args.batch_size), len(jpegs), args.repeats)
        width_out = model.features(torch.zeros(1, 3, 224, 224)).shape[1]
        hours = IMAGENET_TRAIN / rate / 3600
        print(f"width {width:g} (fc7 {width_out}): {rate:8.1f} features per CPU-second = {rate / decode:.3f} x "
              f"decode-only; ImageNet train: {hours:,.1f} core-hours, {hours / 16:.2f} h on 16 cores, "
              f"{hours / 64 * 60:.0f} min on 64; features {IMAGENET_TRAIN * width_out * 2 / 1e9:.1f} GB (fp16)")


if __name__ == "__main__":
    main()
