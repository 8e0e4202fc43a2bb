"""Everything a lent GPU machine should tell us, in one call of at most ~8 minutes.

    python benchmarks/gpu_check.py                  # a GPU machine (one or two GPUs)
    python benchmarks/gpu_check.py --cpu            # the same code at a tiny size on the CPU (the suite runs it)

1. Correctness against the CPU: bench_model_gpu.check_correctness (fp32 and bf16 logits and gradients
   against a float64 CPU reference), unchanged.
2. The bare model's forward+backward images/s (bench_model_gpu.images_per_second) in IEEE fp32, TF32,
   bf16 autocast and bf16 + torch.compile, with both towers on one GPU and, when there are two, one
   tower per GPU; the peak GPU memory of each.
3. `alexnet train` end to end on a small generated dataset (jobs/synthetic.py, sharded by `alexnet
   shard`), the loader feeding it: images/s, GPU utilisation and memory sampled with nvidia-smi, the
   share of step time the worker waited for the loader; against the trainer's own step fed from memory
   (bench_trainer.measure: the same model, PaperSGD and precision, batches decoded up front).
Writes one JSON file ($OUT/gpu_check.json when OUT is set, else --json) and prints a table.

With --cpu: width 0.25, batch 4, two timed steps, and compile's `aot_eager` backend (the default,
inductor, spends minutes generating C++ on a CPU): it checks that the script runs, not the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_model_gpu  # noqa: E402  (benchmarks/ is a folder of scripts, not a package)
import bench_trainer  # noqa: E402

from trainer.model import AlexNet  # noqa: E402
from trainer.precision import compile_model  # noqa: E402

MODES = ("fp32", "tf32", "bf16", "bf16+compile")


def placements() -> dict[str, tuple[str, str]]:
    if not torch.cuda.is_available():
        return {"cpu": ("cpu", "cpu")}
    found = {"1 GPU": ("cuda:0", "cuda:0")}
    if torch.cuda.device_count() >= 2:
        found["2 GPUs"] = ("cuda:0", "cuda:1")
    return found


def bare_model(devices: tuple[str, str], mode: str, size: dict) -> dict:
    """images/s and peak memory of forward+backward in one mode; TF32 only where the mode says so."""
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = mode == "tf32"
    torch.backends.cudnn.benchmark = True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "both towers on cuda:0": intended here
        model = AlexNet(1000, "paper", devices, width=size["width"], channels_last=False)
    if mode.endswith("+compile"):
        compile_model(model, backend=size["compile_backend"])
    cuda = sorted({d for d in model.devices if d.type == "cuda"}, key=str)
    for device in cuda:
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    rate = bench_model_gpu.images_per_second(model, model.devices[0], model.devices, size["batch"],
                                             mode.startswith("bf16"), size["warmup"], size["iters"])
    peak = {str(d): round(torch.cuda.max_memory_allocated(d) / 2**20) for d in cuda}
    return {"images_per_s": round(rate, 1), "peak_mib": peak, "seconds": round(time.perf_counter() - started, 1)}


def make_dataset(root: str, size: dict, address: str | None) -> str:
    """A generated dataset, sharded with the real `alexnet shard` (train and val)."""
    from jobs.synthetic import generate

    inputs = generate(os.path.join(root, "src"), classes=size["classes"], train_per_class=size["per_class"],
                      val_per_class=max(2, size["per_class"] // 4), min_side=160, max_side=320)
    out = os.path.join(root, "shards")
    alexnet = os.path.join(os.path.dirname(sys.executable), "alexnet")
    at = ["--address", address] if address else []
    subprocess.run([alexnet, "shard", inputs["train"], out, "--split", "train", "--classes", inputs["classes"],
                    "--shard-size", "64", *at], check=True, stdout=subprocess.DEVNULL)
    subprocess.run([alexnet, "shard", inputs["val"], out, "--split", "val", "--labels", inputs["labels"],
                    "--shard-size", "32", *at], check=True, stdout=subprocess.DEVNULL)
    return out


def end_to_end(data: str, size: dict, args: argparse.Namespace) -> dict:
    gpus = torch.cuda.device_count()
    bench_args = argparse.Namespace(
        data=data, batch_size=size["train_batch"], width=size["width"], steps=size["train_steps"],
        log_every=size["log_every"], loader_workers=size["loader_workers"], cpus=size["cpus"],
        gpu=gpus > 0, gpus_per_worker=min(gpus, 2), address=args.address, deterministic="auto")
    torch.set_num_threads(size["cpus"])
    return bench_trainer.measure(bench_args, "auto")  # bf16 where the GPU has it, else fp32


def table(results: dict) -> str:
    lines = [f"{'bare model (fwd+bwd)':<28}{'mode':<16}{'images/s':>10}  peak MiB"]
    for place, modes in results["bare_model"].items():
        for mode, row in modes.items():
            peak = ", ".join(f"{d} {m}" for d, m in row["peak_mib"].items()) or "-"
            lines.append(f"{place:<28}{mode:<16}{row['images_per_s']:>10.1f}  {peak}")
    e = results["train"]
    lines += ["", f"alexnet train ({e['variant']}, {e['devices']}, batch {e['batch_size']}, width {e['width']})",
              f"  fed by the loader: {e['trainer_images_per_s']:.1f} images/s, waiting for data "
              f"{e['trainer_data_wait_pct']:.1f}% of step time"
              + "".join(f", {k} {v}" for k, v in e.items() if k.startswith("gpu")),
              f"  fed from memory:   {e['bare_images_per_s']:.1f} images/s "
              f"(trainer overhead {e['trainer_overhead_pct']:+.1f}%)"]
    checks = results["correctness"]
    lines += ["", "correctness vs CPU: " + ", ".join(f"{k} {'OK' if c['ok'] else 'FAILED'}" for k, c in checks.items())]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cpu", action="store_true", help="a tiny run on the CPU (checks the script)")
    parser.add_argument("--address", help="Ray address for sharding and training (default: local instances)")
    parser.add_argument("--data", help="train on this dataset (written by `alexnet shard`) instead of a generated one")
    parser.add_argument("--json", default="gpu_check.json", help="where the JSON goes when $OUT is not set")
    args = parser.parse_args()
    if not args.cpu and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run on a GPU machine, or pass --cpu for a quick check of the script")
    size = (dict(width=0.25, batch=4, warmup=1, iters=2, compile_backend="aot_eager", classes=2, per_class=16,
                 train_batch=4, train_steps=6, log_every=2, loader_workers=1, cpus=1) if args.cpu else
            dict(width=1.0, batch=128, warmup=5, iters=20, compile_backend="inductor", classes=10, per_class=320,
                 train_batch=128, train_steps=24, log_every=4, loader_workers=6, cpus=min(12, os.cpu_count() or 1)))
    started = time.perf_counter()
    results: dict = {"gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
                     "torch": torch.__version__, "size": size, "load_average": round(os.getloadavg()[0], 1)}
    first = next(iter(placements().values()))
    results["correctness"] = bench_model_gpu.check_correctness(
        ("cpu", "cpu") if args.cpu else tuple(placements().get("2 GPUs", first)), size["width"],
        8 if args.cpu else 32)
    results["bare_model"] = {place: {mode: bare_model(devices, mode, size) for mode in MODES
                                     if mode != "tf32" or devices[0] != "cpu"}  # no TF32 on a CPU
                             for place, devices in placements().items()}
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as root:
        results["train"] = end_to_end(args.data or make_dataset(root, size, args.address), size, args)
    results["seconds"] = round(time.perf_counter() - started, 1)
    out = os.path.join(os.environ["OUT"], "gpu_check.json") if os.environ.get("OUT") else args.json
    with open(out, "w") as f:
        json.dump(results, f, indent=2)
    print(table(results))
    print(f"({results['seconds']:.0f} s; JSON in {out})")
    return 0 if all(c["ok"] for c in results["correctness"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
