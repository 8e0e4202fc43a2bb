"""The trainer's step time against a bare PyTorch loop over the same model and batches.

    python benchmarks/bench_trainer.py --make-data /tmp/bench-data          # shard test images (once)
    python benchmarks/bench_trainer.py --data /tmp/bench-data               # CPU, small model
    python benchmarks/bench_trainer.py --data /tmp/bench-data --gpu --width 1 --batch-size 128 \
        --loader-workers 8 --cpus 8 --gpus-per-worker 2                     # a GPU machine, end to end
    (--gpus-per-worker 1 on a one-GPU machine: both towers on that GPU; --synthetic 100 with
    --make-data where ../shared/data is absent)

Bare loop: batches decoded up front (untimed) and kept on the host; per step: copy to the device,
BatchTransform (mean + PCA noise), forward, cross-entropy, backward, torch.optim.SGD. Trainer: the real
`alexnet train` path (Ray Train worker, streaming loader, PaperSGD, metrics, ray.train.report every
log step) for one truncated epoch; its step time comes from the run's own images/s records, first
window dropped. With --gpu, nvidia-smi is sampled during the trainer phase for GPU utilisation.
Target: the trainer within 5% of the bare loop where the loader keeps up (see README "## Training").
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), "shared", "data", "imagenet-sample")


def make_data(out: str, synthetic: int) -> None:
    """Class folders of JPEGs (the shared sample images, or random ones) sharded into OUT."""
    from PIL import Image

    src = tempfile.mkdtemp(prefix="bench-src-")
    names = sorted(os.listdir(SHARED)) if os.path.isdir(SHARED) and not synthetic else []
    if names:
        for name in names:
            os.makedirs(os.path.join(src, "train", name.split("_")[0]))
            os.symlink(os.path.join(SHARED, name), os.path.join(src, "train", name.split("_")[0], name))
    else:
        generator = torch.Generator().manual_seed(0)
        for c in range(max(synthetic, 10)):
            folder = os.path.join(src, "train", f"n{c:08d}")
            os.makedirs(folder)
            for i in range(32):
                pixels = torch.randint(0, 256, (300, 400, 3), dtype=torch.uint8, generator=generator)
                Image.fromarray(pixels.numpy()).save(os.path.join(folder, f"n{c:08d}_{i}.JPEG"), quality=90)
    for split in ("train", "val"):  # val: the same images, enough for the epoch-end validation
        subprocess.run([os.path.join(os.path.dirname(sys.executable), "alexnet"), "shard",
                        os.path.join(src, "train"), out, "--split", split, "--shard-size", "64"], check=True)


def bare_step_seconds(args, batches, stats, devices) -> float:
    from pipeline.loader.augment import BatchTransform
    from trainer.model import AlexNet

    torch.manual_seed(0)
    model = AlexNet(args.classes, "paper", devices, width=args.width)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    transform = BatchTransform(stats)
    times = []
    for images, labels in batches:
        start = time.perf_counter()
        x = transform(images.to(devices[0], non_blocking=True))
        loss = F.cross_entropy(model(x), labels.to(devices[0], non_blocking=True))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss.item()  # the trainer's images/s windows end on a host sync too
        times.append(time.perf_counter() - start)
    return sum(times[2:]) / len(times[2:])  # mean, like the trainer's images/s windows


def trainer_step_seconds(args, storage: str) -> tuple[float, dict]:
    from trainer.config import resolve_config
    from trainer.launch import train
    from trainer.report import read_metrics

    config = resolve_config(None, [f"batch_size={args.batch_size}", f"width={args.width}", "epochs=1",
                                   f"steps_per_epoch={args.steps}", f"log_every_steps={args.log_every}",
                                   "checkpoint_every_steps=0", f"loader_workers={args.loader_workers}",
                                   f"cpus_per_worker={args.cpus}", f"eval_batch_size={args.batch_size}"],
                            data=args.data, name="bench", storage=storage,
                            gpus_per_worker=args.gpus_per_worker if args.gpu else 0)
    sampler = GpuSampler() if args.gpu else None
    train(config, address=args.address, fresh=True)
    utilisation = sampler.stop() if sampler else {}
    rates = [r["images_per_s"] for r in read_metrics(os.path.join(storage, "bench")) if r["kind"] == "step"]
    rates = rates[1:] or rates  # the first window holds the start-up
    return statistics.mean(args.batch_size / r for r in rates), utilisation  # mean step time, seconds


class GpuSampler:
    """nvidia-smi utilisation every 0.5 s while the trainer runs."""

    def __init__(self):
        self.samples: list[list[int]] = []
        self.running = True
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while self.running:
            out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True).stdout
            self.samples.append([int(v) for v in out.split()])
            time.sleep(0.5)

    def stop(self) -> dict:
        self.running = False
        self.thread.join()
        busy = [s for s in self.samples if any(s)]
        return {f"gpu{i}_util_mean_pct": round(statistics.mean(s[i] for s in busy), 1)
                for i in range(len(busy[0]))} if busy else {}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", help="dataset written by `alexnet shard` (train + val)")
    parser.add_argument("--make-data", metavar="DIR", help="shard test images into DIR, then exit")
    parser.add_argument("--synthetic", type=int, default=0, help="with --make-data: N classes of random JPEGs")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--loader-workers", type=int, default=1)
    parser.add_argument("--cpus", type=int, default=1, help="torch threads (CPU) per side")
    parser.add_argument("--log-every", type=int, default=5)
    parser.add_argument("--gpu", action="store_true", help="run both sides on CUDA")
    parser.add_argument("--gpus-per-worker", type=int, default=2)
    parser.add_argument("--address", help="Ray address (default: a local instance)")
    parser.add_argument("--json", help="also write the numbers to this file")
    args = parser.parse_args()
    if args.make_data:
        make_data(args.make_data, args.synthetic)
        return 0
    if not args.data:
        parser.error("--data is required (make one with --make-data DIR)")

    from pipeline.loader.loaders import TrainLoader
    from pipeline.shard.manifest import read_manifest
    from pipeline.shard.stats import read_stats
    from trainer.model import default_devices

    torch.set_num_threads(args.cpus)
    args.classes = read_manifest(args.data, "train")["num_classes"]
    devices = default_devices() if args.gpu else ("cpu", "cpu")
    loader = TrainLoader(args.data, args.batch_size, num_workers=args.loader_workers)
    batches = []
    while len(batches) < args.steps:
        batches += [b for _, b in zip(range(args.steps - len(batches)), loader)]
        loader.set_epoch(loader.epoch + 1)
    # bare, trainer, bare again: a shared machine's load drifts; the two bare runs bracket the trainer
    bare_before = bare_step_seconds(args, batches, read_stats(args.data), devices)
    with tempfile.TemporaryDirectory(prefix="bench-runs-") as storage:
        trainer, utilisation = trainer_step_seconds(args, storage)
    bare_after = bare_step_seconds(args, batches, read_stats(args.data), devices)
    bare = (bare_before + bare_after) / 2
    result = {"device": torch.cuda.get_device_name(0) if args.gpu else "cpu", "devices": [str(d) for d in devices],
              "batch_size": args.batch_size, "width": args.width, "steps": args.steps,
              "bare_step_ms": round(bare * 1000, 1), "bare_before_ms": round(bare_before * 1000, 1),
              "bare_after_ms": round(bare_after * 1000, 1), "trainer_step_ms": round(trainer * 1000, 1),
              "trainer_overhead_pct": round((trainer / bare - 1) * 100, 1),
              "bare_images_per_s": round(args.batch_size / bare, 1),
              "trainer_images_per_s": round(args.batch_size / trainer, 1), **utilisation}
    for key, value in result.items():
        print(f"{key:>24}: {value}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
