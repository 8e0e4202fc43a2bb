"""The trainer's step time against a bare PyTorch loop over the same model and batches.

    python benchmarks/bench_trainer.py --make-data /tmp/bench-data          # shard test images (once)
    python benchmarks/bench_trainer.py --data /tmp/bench-data               # CPU, small model
    python benchmarks/bench_trainer.py --data /tmp/bench-data --gpu --width 1 --batch-size 128 \
        --loader-workers 8 --cpus 8 --gpus-per-worker 2                     # a GPU machine, end to end
    python benchmarks/bench_trainer.py --data /tmp/bench-data --variants fp32,bf16,fp32+compile
    (--gpus-per-worker 1 on a one-GPU machine: both towers on that GPU; --synthetic 100 with
    --make-data where ../shared/data is absent)

Bare loop ("fed from memory"): batches decoded up front (untimed) and kept on the host; per step: copy
to the device, BatchTransform (mean + PCA noise), then the trainer's own step (trainer/precision.py
train_step: forward under the variant's autocast, fp32 cross-entropy, backward, PaperSGD). Trainer: the
real `alexnet train` path (Ray Train worker, streaming loader, metrics, ray.train.report every log
step) for one truncated epoch; its step time and the share of it spent waiting for the loader come from
the run's own step records, first window dropped. With --gpu, nvidia-smi is sampled during the trainer
phase for GPU utilisation and memory. Each variant (`--variants`: PRECISION[+compile], comma-separated)
runs bare, trainer, bare again, so ratios between variants come from one run on one machine's load.
Target: the trainer within 5% of the bare loop where the loader keeps up (docs/benchmarks.md, "Overhead against a bare loop").
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


def bare_step_seconds(args, batches, stats, devices, precision: str, compiled: bool) -> float:
    from pipeline.loader.augment import BatchTransform
    from trainer.model import AlexNet
    from trainer.optim import PaperSGD, param_groups
    from trainer.precision import Precision, compile_model, set_up_kernels
    from trainer.step import train_step

    set_up_kernels(args.deterministic, torch.device(devices[0]))
    torch.manual_seed(0)
    model = AlexNet(args.classes, "paper", devices, width=args.width)
    if compiled:
        compile_model(model)
    optimizer = PaperSGD(param_groups(model, 5e-4, False), lr=0.01)
    steps = Precision(precision, torch.device(devices[0]))
    transform = BatchTransform(stats)
    times = []
    for images, labels in batches:
        start = time.perf_counter()
        x = transform(images.to(devices[0], non_blocking=True))
        loss, _ = train_step(model, optimizer, steps, x, labels.to(devices[0], non_blocking=True))
        loss.item()  # the trainer's images/s windows end on a host sync too
        times.append(time.perf_counter() - start)
    skip = 3 if compiled else 2  # compiling happens in the first steps
    return sum(times[skip:]) / len(times[skip:])  # mean, like the trainer's images/s windows


def trainer_step_seconds(args, storage: str, precision: str, compiled: bool) -> tuple[float, float, dict]:
    from trainer.config import resolve_config
    from trainer.driver.launch import train
    from trainer.report import read_metrics

    config = resolve_config(None, [f"batch_size={args.batch_size}", f"width={args.width}", "epochs=1",
                                   f"steps_per_epoch={args.steps}", f"log_every_steps={args.log_every}",
                                   "checkpoint_every_steps=0", f"loader_workers={args.loader_workers}",
                                   f"cpus_per_worker={args.cpus}", f"eval_batch_size={args.batch_size}",
                                   f"precision={precision}", f"compile={compiled}",
                                   f"deterministic={args.deterministic}"],
                            data=args.data, name="bench", storage=storage,
                            gpus_per_worker=args.gpus_per_worker if args.gpu else 0)
    sampler = GpuSampler() if args.gpu else None
    train(config, address=args.address, fresh=True)
    utilisation = sampler.stop() if sampler else {}
    steps = [r for r in read_metrics(os.path.join(storage, "bench")) if r["kind"] == "step"]
    steps = steps[1:] or steps  # the first window holds the start-up (and compiling)
    step_s = statistics.mean(args.batch_size / r["images_per_s"] for r in steps)  # mean step time, seconds
    return step_s, statistics.mean(r["data_wait"] for r in steps), utilisation


class GpuSampler:
    """nvidia-smi utilisation and memory every 0.5 s while the trainer runs."""

    def __init__(self):
        self.samples: list[list[int]] = []
        self.memory: list[list[int]] = []  # MiB per GPU
        self.running = True
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while self.running:
            out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used",
                                  "--format=csv,noheader,nounits"], capture_output=True, text=True).stdout
            rows = [line.split(",") for line in out.strip().splitlines()]
            self.samples.append([int(row[0]) for row in rows])
            self.memory.append([int(row[1]) for row in rows])
            time.sleep(0.5)

    def stop(self) -> dict:
        self.running = False
        self.thread.join()
        busy = [s for s in self.samples if any(s)]
        result = {f"gpu{i}_util_mean_pct": round(statistics.mean(s[i] for s in busy), 1)
                  for i in range(len(busy[0]))} if busy else {}
        if self.memory:
            result.update({f"gpu{i}_peak_mib": max(m[i] for m in self.memory) for i in range(len(self.memory[0]))})
        return result


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
    parser.add_argument("--variants", default="fp32",
                        help="comma-separated PRECISION[+compile] (fp32, bf16, fp16, auto), measured in turn")
    parser.add_argument("--deterministic", default="auto", choices=("auto", "true", "false"))
    parser.add_argument("--bare-only", action="store_true",
                        help="only the steps fed from memory, the variants interleaved --repeat times")
    parser.add_argument("--repeat", type=int, default=3, help="with --bare-only: rounds over the variants")
    parser.add_argument("--json", help="also write the numbers to this file")
    args = parser.parse_args()
    if args.make_data:
        make_data(args.make_data, args.synthetic)
        return 0
    if not args.data:
        parser.error("--data is required (make one with --make-data DIR)")

    torch.set_num_threads(args.cpus)
    if args.bare_only:
        return bare_only(args)
    results = [measure(args, variant) for variant in args.variants.split(",")]
    for result in results:
        print(f"--- {result['variant']}")
        for key, value in result.items():
            print(f"{key:>24}: {value}")
    if len(results) > 1:
        base = results[0]
        for result in results[1:]:
            print(f"{result['variant']} / {base['variant']}: trainer images/s x"
                  f"{result['trainer_images_per_s'] / base['trainer_images_per_s']:.2f}, bare x"
                  f"{result['bare_images_per_s'] / base['bare_images_per_s']:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results if len(results) > 1 else results[0], f, indent=2)
    return 0


def bare_only(args) -> int:
    """The variants' steps fed from memory, interleaved `--repeat` times (A B A B ...) so a shared
    machine's drifting load hits each alike; medians and ratios to the first variant."""
    from pipeline.shard.manifest import read_manifest
    from pipeline.shard.stats import read_stats

    args.classes = read_manifest(args.data, "train")["num_classes"]
    batches, stats = memory_batches(args), read_stats(args.data)
    variants = args.variants.split(",")
    times: dict[str, list[float]] = {v: [] for v in variants}
    for _ in range(args.repeat):
        for variant in variants:
            precision, _, extra = variant.partition("+")
            times[variant].append(bare_step_seconds(args, batches, stats, ("cpu", "cpu"), precision, extra == "compile"))
    base = statistics.median(times[variants[0]])
    result = {v: {"step_ms": [round(t * 1000, 1) for t in ts], "median_ms": round(statistics.median(ts) * 1000, 1),
                  "images_per_s": round(args.batch_size / statistics.median(ts), 1),
                  "speed_vs_first": round(base / statistics.median(ts), 2)} for v, ts in times.items()}
    result["load_average"] = round(os.getloadavg()[0], 1)
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


def memory_batches(args) -> list:
    """`args.steps` training batches decoded up front: the bare loop's input, fed from memory."""
    from pipeline.loader.loaders import TrainLoader

    loader = TrainLoader(args.data, args.batch_size, num_workers=args.loader_workers)
    batches = []
    while len(batches) < args.steps:
        batches += [b for _, b in zip(range(args.steps - len(batches)), loader)]
        loader.set_epoch(loader.epoch + 1)
    return batches


def measure(args, variant: str, batches: list | None = None) -> dict:
    """One variant (PRECISION[+compile]): bare loop, trainer, bare loop again."""
    from pipeline.shard.manifest import read_manifest
    from pipeline.shard.stats import read_stats
    from trainer.model import default_devices

    precision, _, extra = variant.partition("+")
    if extra not in ("", "compile"):
        raise SystemExit(f"--variants: {variant!r} is not PRECISION[+compile]")
    compiled = extra == "compile"
    args.classes = read_manifest(args.data, "train")["num_classes"]
    devices = default_devices() if args.gpu else ("cpu", "cpu")
    batches = batches or memory_batches(args)
    stats = read_stats(args.data)
    # bare, trainer, bare again: a shared machine's load drifts; the two bare runs bracket the trainer
    bare_before = bare_step_seconds(args, batches, stats, devices, precision, compiled)
    with tempfile.TemporaryDirectory(prefix="bench-runs-") as storage:
        trainer, data_wait, utilisation = trainer_step_seconds(args, storage, precision, compiled)
    bare_after = bare_step_seconds(args, batches, stats, devices, precision, compiled)
    bare = (bare_before + bare_after) / 2
    return {"variant": variant, "device": torch.cuda.get_device_name(0) if args.gpu else "cpu",
            "devices": [str(d) for d in devices], "batch_size": args.batch_size, "width": args.width,
            "steps": args.steps, "load_average": round(os.getloadavg()[0], 1),
            "bare_step_ms": round(bare * 1000, 1), "bare_before_ms": round(bare_before * 1000, 1),
            "bare_after_ms": round(bare_after * 1000, 1), "trainer_step_ms": round(trainer * 1000, 1),
            "trainer_overhead_pct": round((trainer / bare - 1) * 100, 1),
            "trainer_data_wait_pct": round(data_wait * 100, 1),
            "bare_images_per_s": round(args.batch_size / bare, 1),
            "trainer_images_per_s": round(args.batch_size / trainer, 1), **utilisation}


if __name__ == "__main__":
    sys.exit(main())
