"""Sharding speed and memory on the shared real images (ImageNet's own size mix), as ratios measured in
one run. Run by hand on an otherwise idle machine:

    python benchmarks/bench_shard.py [--seconds 5] [--copies 4]

1. Per-core images/s (one process, images already in memory) of
   - ours:        pipeline.images.process_image (DCT-domain downscale, crop-then-resample, libjpeg-turbo encode)
   - naive:       Pillow open, convert RGB, resize shorter side to 256, centre crop, save JPEG
   - decode-only: simplejpeg (libjpeg-turbo) full-resolution decode, the floor any path pays
   Targets: ours >= 1.6x naive, ours >= 0.6x decode-only.
2. The whole `alexnet shard` job (local Ray, workers warmed up) on 1 and on 2 CPUs. Target: >= 1.7x.
3. Peak memory (RSS of the driver and every Ray process, sampled) for 1x and Nx the images: it must not
   grow with the number of images.
"""

from __future__ import annotations

import argparse
import io
import multiprocessing
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
IMAGES = Path(os.environ.get("ALEXNET_SHARED_DATA", ROOT.parent / "shared" / "data")) / "imagenet-sample"


def naive_pillow(data: bytes, size: int = 256, quality: int = 95) -> bytes:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        rgb = img.convert("RGB")
    scale = size / min(rgb.size)
    w, h = max(size, round(rgb.width * scale)), max(size, round(rgb.height * scale))
    rgb = rgb.resize((w, h), Image.Resampling.BILINEAR)
    left, top = (w - size) // 2, (h - size) // 2
    out = io.BytesIO()
    rgb.crop((left, top, left + size, top + size)).save(out, "JPEG", quality=quality)
    return out.getvalue()


def decode_only(data: bytes):
    import simplejpeg

    return simplejpeg.decode_jpeg(data, "RGB")


def ours(data: bytes) -> bytes:
    from pipeline.images import process_image

    return process_image(data)[0]


def rates(functions: dict, blobs: list[bytes], seconds: float) -> dict[str, float]:
    """Images/s of each function over all blobs.

    Each image is timed with every function back to back, several times, and the fastest time per
    (image, function) is kept: other load on a shared machine only ever adds time, and interleaving
    keeps the functions under the same conditions, so the ratios hold even on a busy machine.
    """
    for function in functions.values():
        for blob in blobs[:10]:
            function(blob)  # warm up imports and caches
    fastest = {name: [float("inf")] * len(blobs) for name in functions}
    deadline = time.perf_counter() + seconds * len(functions)
    rounds = 0
    while rounds < 3 or time.perf_counter() < deadline:
        for i, blob in enumerate(blobs):
            for name, function in functions.items():
                start = time.perf_counter()
                function(blob)
                fastest[name][i] = min(fastest[name][i], time.perf_counter() - start)
        rounds += 1
    return {name: len(blobs) / sum(times) for name, times in fastest.items()}


def make_tree(root: Path, copies: int) -> Path:
    """train/<synset>/<synset>_<k>.JPEG: `copies` byte-identical copies of every shared image."""
    for image in sorted(IMAGES.glob("*.JPEG")):
        synset = image.name.split("_", 1)[0]
        (root / synset).mkdir(parents=True, exist_ok=True)
        for k in range(copies):
            shutil.copyfile(image, root / synset / f"{synset}_{k}.JPEG")
    return root


def job_run(src: str, out: str, cpus: int, queue) -> None:
    """In a fresh process: local Ray with `cpus` CPUs, workers warmed, then time the job and sample RSS."""
    import psutil
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=cpus, include_dashboard=False, logging_level="ERROR")

    @ray.remote(num_cpus=1)
    def warm():
        import pipeline.shards  # noqa: F401  (imports, as a shard task would, before the clock starts)

        time.sleep(0.5)
        return os.getpid()

    ray.get([warm.remote() for _ in range(cpus)])
    me = psutil.Process()
    peak, stop = [0], threading.Event()

    def sample():
        while not stop.is_set():
            total = 0
            for proc in [me, *me.children(recursive=True)]:
                try:
                    total += proc.memory_info().rss
                except psutil.Error:
                    pass
            peak[0] = max(peak[0], total)
            time.sleep(0.05)

    baseline = sum(p.memory_info().rss for p in [me, *me.children(recursive=True)])
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    from pipeline.shard_job import shard_split

    start = time.perf_counter()
    with open(os.devnull, "w") as devnull:
        saved, sys.stdout = sys.stdout, devnull
        try:
            shard_split(src=src, out=out, split="train", shard_size=64, max_in_flight=2 * cpus)
        finally:
            sys.stdout = saved
    seconds = time.perf_counter() - start
    stop.set()
    sampler.join()
    ray.shutdown()
    queue.put((seconds, baseline, peak[0]))


def run_job(src: Path, cpus: int) -> tuple[float, int, int]:
    out = tempfile.mkdtemp(prefix="bench-shard-out-")
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    proc = context.Process(target=job_run, args=(str(src), out, cpus, queue))
    proc.start()
    result = queue.get()
    proc.join()
    shutil.rmtree(out, ignore_errors=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="time per per-image measurement")
    parser.add_argument("--copies", type=int, default=4, help="copies of the images for the job runs")
    args = parser.parse_args()
    blobs = [p.read_bytes() for p in sorted(IMAGES.glob("*.JPEG"))]
    print(f"{len(blobs)} shared images, {sum(map(len, blobs)) / 1e6:.0f} MB; cpus here: {os.cpu_count()}, "
          f"load average {os.getloadavg()[0]:.1f}")

    measured = rates({"ours": ours, "naive": naive_pillow, "decode": decode_only}, blobs, args.seconds)
    r_ours, r_naive, r_decode = measured["ours"], measured["naive"], measured["decode"]
    print(f"per core: ours {r_ours:.0f} images/s, naive Pillow {r_naive:.0f}/s, decode-only {r_decode:.0f}/s")
    print(f"  ours / naive       = {r_ours / r_naive:.2f}x   (target >= 1.6)")
    print(f"  ours / decode-only = {r_ours / r_decode:.2f}    (target >= 0.6)")

    with tempfile.TemporaryDirectory(prefix="bench-shard-") as tmp:
        small = make_tree(Path(tmp) / "x1", 1)
        large = make_tree(Path(tmp) / f"x{args.copies}", args.copies)
        n_large = len(blobs) * args.copies
        t1, _, _ = run_job(large, 1)
        t2, base2, peak2 = run_job(large, 2)
        print(f"whole job, {n_large} images: 1 CPU {n_large / t1:.0f} images/s, 2 CPUs {n_large / t2:.0f} images/s"
              f" -> {t1 / t2:.2f}x  (target >= 1.7)")
        _, base1x, peak1x = run_job(small, 2)
        print(f"peak RSS (driver + Ray processes, 2 CPUs): {len(blobs)} images {peak1x / 2**20:.0f} MiB "
              f"(idle {base1x / 2**20:.0f}), {n_large} images {peak2 / 2**20:.0f} MiB (idle {base2 / 2**20:.0f}) "
              f"-> growth above idle {((peak2 - base2) / max(peak1x - base1x, 1)):.2f}x for {args.copies}x the images")


if __name__ == "__main__":
    main()
