"""Loader throughput: shards -> uint8 training batches, per core, against two baselines in the same run.

    python benchmarks/bench_loader.py                      # shards the shared images first (local Ray)
    python benchmarks/bench_loader.py --dataset out/       # any folder `alexnet shard` wrote

Each variant runs in its own process (torch and OpenMP pinned to one thread) so its peak memory is its
own. Per core = images per CPU-second of the process and its loader workers (wall-clock rates are shown
too, but on a shared machine they measure the neighbours). Ratios against
  (a) decode only: simplejpeg (libjpeg-turbo) decoding the same JPEG bytes already in memory, the
      practical limit of any JPEG loader on one core (target: the loader reaches >= 80% of it);
  (b) a torchvision-style per-sample Pillow pipeline on the same in-memory bytes: decode, random crop,
      flip, to float tensor, normalise, collate (target: the loader is >= 2x faster).
The loader itself reads the tar shards from disk (memory-mapped; page cache after the first pass) and
includes tar parsing, label parsing, crop, flip, batching and, with workers, handing each batch to the main
process (whose CPU counts too). An epoch links each shard `--copies` times so that starting worker
processes (~0.1-0.2 s of CPU per epoch) weighs as little as on ImageNet's long epochs; a short
untimed pass first leaves out what happens once per loader (its batch memory's first page faults),
as a week-long run does. Decode-only and Pillow runs are shorter: `--copies / 4` passes over the
source split's bytes (Pillow on every 8th image); a rate per core does not depend on the count.

On a shared machine a variant's rate swings by 10-25% from one minute to the next, with the
neighbours' load. So each round runs decode-only, Pillow, then every loader row followed by another
decode-only run, and a loader row's ratio is taken against the mean of the decode-only runs just
before and just after it (seconds away); the median over rounds is reported, with the lowest and
highest.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from statistics import median

ROOT = Path(__file__).resolve().parents[1]
SHARED_IMAGES = Path(os.environ.get("ALEXNET_SHARED_DATA", ROOT.parent / "shared" / "data")) / "imagenet-sample"


def jpeg_bytes(dataset: str) -> list[bytes]:
    manifest = json.loads(Path(dataset, "train.manifest.json").read_text())
    out = []
    for shard in manifest["shards"]:
        with tarfile.open(Path(dataset, shard["name"])) as tar:
            out += [tar.extractfile(m).read() for m in tar if m.name.endswith(".jpg")]
    return out


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (loader workers): on a shared machine this
    measures per-core cost where wall-clock time measures the neighbours."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


def run_decode(dataset: str, epochs: int, batch_size: int, workers: int) -> int:
    import simplejpeg

    data = jpeg_bytes(dataset)
    start, cpu = time.perf_counter(), cpu_seconds()
    for _ in range(epochs):
        for item in data:
            simplejpeg.decode_jpeg(item, colorspace="RGB")
    return len(data) * epochs, time.perf_counter() - start, cpu_seconds() - cpu


def run_pillow(dataset: str, epochs: int, batch_size: int, workers: int) -> int:
    import random

    import numpy as np
    import torch
    from PIL import Image

    data = jpeg_bytes(dataset)[::8]
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    rng = random.Random(0)
    start, cpu = time.perf_counter(), cpu_seconds()
    count, batch = 0, []
    for n, item in enumerate(data * epochs, 1):
        image = Image.open(io.BytesIO(item)).convert("RGB")
        x, y = rng.randint(0, image.width - 224), rng.randint(0, image.height - 224)
        image = image.crop((x, y, x + 224, y + 224))
        if rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        tensor = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).float().div(255)
        batch.append((tensor - mean) / std)
        if len(batch) == batch_size or n == len(data) * epochs:  # the last batch may be short
            torch.stack(batch)
            count += len(batch)
            batch = []
    return count, time.perf_counter() - start, cpu_seconds() - cpu


def run_loader(dataset: str, epochs: int, batch_size: int, workers: int) -> int:
    from pipeline.loader.loaders import TrainLoader

    loader = TrainLoader(dataset, batch_size, num_workers=workers)
    for n, _ in enumerate(loader):  # a short untimed pass: one-time costs (the batch memory's first
        if n == 8:                  # pages) stay out; what every epoch costs (starting workers...) is in
            break
    start, cpu = time.perf_counter(), cpu_seconds()
    count = 0
    for epoch in range(1, epochs + 1):
        loader.set_epoch(epoch)
        for images, _ in loader:
            count += images.shape[0]
    return count, time.perf_counter() - start, cpu_seconds() - cpu


VARIANTS = {"decode": run_decode, "pillow": run_pillow, "loader": run_loader}


def one_variant(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(1)
    images, seconds, cpu = VARIANTS[args.only](args.dataset, args.epochs, args.batch_size, args.workers)
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB on Linux
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps({"images": images, "seconds": seconds, "cpu_seconds": cpu, "peak_mib": own,
                      "peak_child_mib": children}))


def build_dataset(folder: Path) -> str:
    """Shard the shared images with the real CLI (train/<synset>/ tree, shard size 64)."""
    tree = folder / "train"
    for image in sorted(SHARED_IMAGES.glob("*.JPEG")):
        synset = image.name.split("_", 1)[0]
        (tree / synset).mkdir(parents=True, exist_ok=True)
        (tree / synset / image.name).write_bytes(image.read_bytes())
    out = folder / "dataset"
    subprocess.run([str(Path(sys.executable).parent / "alexnet"), "shard", str(tree), str(out), "--split", "train",
                    "--shard-size", "64"], check=True)
    return str(out)


def repeat_dataset(dataset: str, copies: int, folder: Path) -> str:
    """A train split made of `copies` links to each shard, so an epoch is long enough that starting the
    loader's worker processes (about 0.5 s per epoch) does not dominate, as on ImageNet's 1.28M."""
    manifest = json.loads(Path(dataset, "train.manifest.json").read_text())
    out = folder / "repeated"
    out.mkdir()
    shards, source_shards = [], manifest["shards"]
    for copy in range(copies):
        for shard in source_shards:
            name = f"train-{len(shards):06d}.tar"
            (out / name).symlink_to(Path(dataset, shard["name"]).resolve())
            shards.append({**shard, "name": name})
    manifest.update(shards=shards, total_samples=sum(s["samples"] for s in shards))
    (out / "train.manifest.json").write_text(json.dumps(manifest))
    import pyarrow as pa
    import pyarrow.parquet as pq

    index = pq.read_table(Path(dataset, "train.index.parquet"))  # the loader checks each sample against it
    column, originals = index.schema.get_field_index("shard"), index.column("shard").to_pylist()
    number = {shard["name"]: n for n, shard in enumerate(source_shards)}
    tables = [index.set_column(column, "shard", pa.array(
        [f"train-{copy * len(number) + number[name]:06d}.tar" for name in originals])) for copy in range(copies)]
    pq.write_table(pa.concat_tables(tables), out / "train.index.parquet")
    return str(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", help="folder written by `alexnet shard` (default: shard the shared images)")
    parser.add_argument("--epochs", type=int, default=1, help="passes over the split per measurement")
    parser.add_argument("--copies", type=int, default=64, help="each shard appears this many times in an epoch")
    parser.add_argument("--batch-size", type=int, default=128, help="the paper's and `alexnet train`'s default")
    parser.add_argument("--workers", type=int, default=2, help="loader workers for the multi-process row")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--only", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.only:
        one_variant(args)
        return

    loaders = {"loader, in-process": 0, "loader, 1 worker": 1, f"loader, {args.workers} workers": args.workers}
    runs: dict[str, list[dict]] = {row: [] for row in ("decode", "pillow", *loaders)}
    vs_decode: dict[str, list[float]] = {row: [] for row in runs}
    vs_pillow: dict[str, list[float]] = {row: [] for row in runs}
    with tempfile.TemporaryDirectory(prefix="bench_loader_") as scratch:
        source = args.dataset or build_dataset(Path(scratch))
        dataset = repeat_dataset(source, args.copies, Path(scratch))
        env = {**os.environ, "OMP_NUM_THREADS": "1"}

        def run(variant: str, workers: int = 0) -> dict:
            # decode and Pillow read the source split's bytes, each pass over it a quarter of the loader's
            folder, epochs = (dataset, args.epochs) if variant == "loader" else (source, max(args.copies // 4, 1))
            command = [sys.executable, __file__, "--only", variant, "--dataset", folder, "--epochs", str(epochs),
                       "--batch-size", str(args.batch_size), "--workers", str(workers)]
            result = json.loads(subprocess.run(command, check=True, capture_output=True, text=True, env=env,
                                               cwd=ROOT).stdout.strip().splitlines()[-1])
            result["rate"] = result["images"] / result["cpu_seconds"]  # images per CPU-second = per core
            result["wall"] = result["images"] / result["seconds"]
            return result

        for _ in range(args.rounds):
            before = run("decode")
            runs["decode"].append(before)
            pillow = run("pillow")
            runs["pillow"].append(pillow)
            vs_decode["pillow"].append(pillow["rate"] / before["rate"])
            vs_pillow["decode"].append(before["rate"] / pillow["rate"])
            for row, workers in loaders.items():
                loader, after = run("loader", workers), run("decode")
                runs[row].append(loader)
                runs["decode"].append(after)
                vs_decode[row].append(loader["rate"] / ((before["rate"] + after["rate"]) / 2))
                vs_pillow[row].append(loader["rate"] / pillow["rate"])
                before = after
    vs_decode["decode"], vs_pillow["pillow"] = [1.0], [1.0]
    print(f"{'variant':20s} {'img/s/core':>10s} {'vs decode (min-max)':>20s} {'vs pillow':>9s} {'wall img/s':>10s}"
          "  peak RSS MiB")
    for row, results in runs.items():
        ratios = vs_decode[row]
        peak = max(result["peak_mib"] for result in results)
        child = max(result["peak_child_mib"] for result in results)
        memory = f"{peak:.0f}" + (f" + {child:.0f} per worker" if loaders.get(row) else "")
        print(f"{row:20s} {median(r['rate'] for r in results):10.0f} {median(ratios):9.2f} "
              f"({min(ratios):.2f}-{max(ratios):.2f}) {median(vs_pillow[row]):9.2f} "
              f"{median(r['wall'] for r in results):10.0f}  {memory}")


if __name__ == "__main__":
    main()
