"""How every cost that grows with the dataset grows: 10k, 100k and ImageNet's 1,281,167 training samples.

    python benchmarks/bench_scale.py [--sizes 10000,100000,1281167] [--work /tmp/bench-scale] [--keep]

Each size runs in processes of its own (peak RSS is per process: `ru_maxrss`), CPU-seconds of the
process with wall time beside them, and prints one table: each cost at each size and its growth from
the smallest to the largest size (linear growth is the sample ratio, 128x for 10k -> 1.28M).

What is real and what stands in:
- Sharding driver: a class-folder tree of N hard links (1,000 class folders) of the shared ImageNet
  sample images (else the bundled photos) is scanned with the job's own `find_inputs`; class list,
  configuration digest and `plan_shards` are the job's. The shard tasks are not run (their cost is per
  image, benchmarks/bench_shard.py): each shard's record is made as `write_shard` returns it (its index
  rows, real moments of one stored image) and the driver's own steps run on them: `rows_table` per
  record, then the job's `_finish` (index parquet, stats reduce, manifest). Resume: the progress
  records a killed job leaves, their size, and reading them back (a resume also re-hashes every finished
  shard: its sha256 at the measured rate over the shards' bytes is printed as an extrapolation).
- Loader and trainer: the dataset folder written above (manifest, index, stats; a val split of N/25)
  without tar files (start-up and plans never open one: `alexnet inspect` without --verify neither).
  TrainLoader start-up (manifest, index read and checks, epoch length), the per-epoch plan of one rank
  (every worker's `worker_plan` plus `batch_positions` for the audit) at world 1, 8, 64; an elastic
  re-deal (a world-8 state saved mid-epoch resumed at world 6); the checkpoint's loader state and
  EpochAudit (sizes, torch.save time); `alexnet inspect`; the train driver's dataset checks + preflight.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

from cpu_meter import cpu_model

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = Path(os.environ.get("ALEXNET_SHARED_DATA", ROOT.parent / "shared" / "data")) / "imagenet-sample"
CLASSES, SHARD_SIZE, BATCH, LOADER_WORKERS = 1000, 1000, 128, 6
STORED_BYTES = 31_000  # the shared sample's mean stored JPEG at 256 px, q95, 4:2:0 (process_image)


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Phases:
    """CPU-s, wall-s and the process's peak RSS after each named step."""

    def __init__(self):
        self.out: dict = {}

    def run(self, name: str, fn, *args, **kwargs):
        cpu, wall = time.process_time(), time.perf_counter()
        value = fn(*args, **kwargs)
        self.out[name] = {"cpu_s": time.process_time() - cpu, "wall_s": time.perf_counter() - wall,
                          "peak_mb": _peak_mb()}
        return value


def _photos() -> list[Path]:
    if SHARED.is_dir():
        return sorted(p for p in SHARED.iterdir() if p.suffix.lower() in (".jpeg", ".jpg"))
    sys.path.insert(0, str(ROOT / "tests"))
    from helpers.photos import sample_files  # JPEGs made from the bundled CC0 photos (scikit-image)

    return sample_files()  # hard links keep their bytes after the process removes the folder


def build_tree(tree: Path, samples: int) -> None:
    """N hard links in 1,000 class folders (ImageNet's layout), made once per size and kept."""
    if (tree / ".complete").exists():
        return
    shutil.rmtree(tree, ignore_errors=True)
    photos = _photos()
    for c in range(CLASSES):
        folder = tree / f"n{c:08d}"
        folder.mkdir(parents=True)
        for i in range(c, samples, CLASSES):
            os.link(photos[i % len(photos)], folder / f"n{c:08d}_{i}.JPEG")
    (tree / ".complete").touch()


def _record(number: int, shard: list, label_of: dict, moments: dict, split: str = "train") -> dict:
    """A shard's record as write_shard returns it (its tar: 3 members an image, headers and padding)."""
    from pipeline.shard.manifest import shard_name

    name = shard_name(split, number)
    rows = [[item.key, label_of[item.synset], item.synset, name, pos, item.path, 256, 256, STORED_BYTES,
             (hash(item.key) & 0xFFFFFFFF)] for pos, item in enumerate(shard)]
    return {"name": name, "samples": len(rows), "bytes": len(rows) * (STORED_BYTES + 3 * 512 + 2 * 512 + 256),
            "sha256": hashlib.sha256(name.encode()).hexdigest(), "rows": rows, "skipped": [], "moments": moments}


def shard_side(samples: int, work: Path) -> dict:
    """The sharding driver's steps on N inputs; writes the dataset folder the loader side reads."""
    import numpy as np

    from pipeline.shard import job
    from pipeline.shard.manifest import progress_location, rows_table, write_index
    from pipeline.shard.sources import find_inputs
    from pipeline.shard.stats import add_moments, empty_moments, image_moments, stats_from_moments

    tree, out = work / f"tree-{samples}", work / f"data-{samples}"
    build_tree(tree, samples)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    p = Phases()
    base = _peak_mb()
    scan = p.run("shard: scan", find_inputs, str(tree))
    inputs = scan.inputs

    def plan_step():
        class_list = job._class_list(str(out), "train", None, scan, inputs)
        label_of = {synset: index for index, (synset, _) in enumerate(class_list)}
        job._inputs_digest(inputs)
        return class_list, label_of, job.plan_shards(inputs, 0, SHARD_SIZE)

    class_list, label_of, plan = p.run("shard: plan (classes, digest, plan_shards)", plan_step)
    moments = image_moments(np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8))
    del scan
    # results come back one a shard: the driver turns each one's rows into a table (job.py); a killed job
    # leaves each as a progress record (rows included), which a resume's tasks read back
    progress = Path(progress_location(str(out), "train", ""))
    progress.mkdir(parents=True, exist_ok=True)
    records, table_cpu = [], 0.0
    for number, shard in enumerate(plan):
        record = _record(number, shard, label_of, moments)
        (progress / f"{record['name']}.json").write_text(json.dumps(record))
        started = time.process_time()
        record["rows"] = rows_table(record["rows"])
        table_cpu += time.process_time() - started
        records.append(record)
    p.out["shard: rows_table per result"] = {"cpu_s": table_cpu, "wall_s": float("nan"), "peak_mb": _peak_mb()}
    resume_bytes = sum(f.stat().st_size for f in progress.iterdir())

    def resume():
        for record in records:
            json.loads((progress / f"{record['name']}.json").read_bytes())

    p.run("shard: resume (read progress records)", resume)
    shutil.rmtree(progress)
    tables = [r["rows"] for r in records]
    p.run("shard: index parquet", write_index, str(out), "train", tables)

    def reduce():
        total = empty_moments()
        for record in records:
            total = add_moments(total, record["moments"])
        return stats_from_moments(total)

    p.run("shard: stats reduce", reduce)
    config = {"seed": 0, "shard_size": SHARD_SIZE, "image_size": 256, "jpeg_quality": 95, "chroma_subsampling": "420"}
    p.run("shard: _finish (index + stats + manifest)", job._finish, str(out), "train", str(tree), config,
          class_list, records, [], len(inputs))
    val = [_record(n, shard, label_of, empty_moments(), "val") for n, shard in
           enumerate(job.plan_shards(inputs[:max(samples // 25, SHARD_SIZE)], 0, SHARD_SIZE))]
    for record in val:
        record["rows"] = rows_table(record["rows"])
    job._finish(str(out), "val", str(tree), config, class_list, val, [], samples)
    sizes = {"manifest KB": (out / "train.manifest.json").stat().st_size / 1e3,
             "index MB": (out / "train.index.parquet").stat().st_size / 1e6, "resume records MB": resume_bytes / 1e6}
    tar_bytes = sum(r["bytes"] for r in records)
    data = os.urandom(1 << 26)
    started = time.perf_counter()
    hashlib.sha256(data).digest()
    rate = len(data) / (time.perf_counter() - started)
    sizes["resume sha256 of shards s (extrapolated)"] = tar_bytes / rate
    sizes["driver peak MB above start"] = _peak_mb() - base
    return {"phases": p.out, "sizes": sizes}


def loader_side(samples: int, work: Path, world: int) -> dict:
    """One rank (rank 0) of a world of `world`, on the dataset folder shard_side wrote."""
    import torch

    from pipeline.loader import TrainLoader
    from pipeline.loader.deals import to_state
    from trainer.audit import EpochAudit

    data = str(work / f"data-{samples}")
    p, base = Phases(), _peak_mb()
    loader = p.run(f"loader start-up, world {world}", TrainLoader, data, BATCH, rank=0, world_size=world,
                   num_workers=LOADER_WORKERS, seed=0)
    loader.set_epoch(1)

    def epoch_plan():
        from pipeline.loader.plan import EpochShare, worker_plan

        share = EpochShare(seed=0, epoch=1, rank=0, world_size=world, batch_size=BATCH, num_workers=LOADER_WORKERS,
                           window=loader.shuffle_window, deals=loader.deals)
        for w in range(LOADER_WORKERS):
            worker_plan([n for _, n in loader.shards], share, worker=w, drop_last=True, shuffle=True)
        return loader.batch_positions()

    positions = p.run(f"loader epoch plan (workers + audit positions), world {world}", epoch_plan)
    out = {"phases": p.out, "sizes": {f"loader peak MB above start, world {world}": _peak_mb() - base}}
    if world == 8:  # an elastic re-deal: this world-8 state, saved half-way, resumed at world 6
        loader.batches = max(1, len(loader) // 2)
        state = loader.state_dict()
        smaller = TrainLoader(data, BATCH, rank=0, world_size=6, num_workers=LOADER_WORKERS, seed=0)
        p.run("elastic re-deal (8 -> 6): load state, length, plan", lambda: (
            smaller.load_state_dict(state), len(smaller), smaller.batch_positions()))
        audit = EpochAudit(loader.total_samples)
        for batch in positions[: len(positions) // 2]:
            audit.mark(batch)

        def checkpoint_share():
            buffer = io.BytesIO()
            torch.save({"loader": loader.state_dict(), "audit": audit.state_dict()}, buffer)
            return buffer.getbuffer().nbytes

        nbytes = p.run("checkpoint: loader state + audit, torch.save", checkpoint_share)
        out["sizes"]["checkpoint loader + audit KB"] = nbytes / 1e3
        out["sizes"]["loader state JSON bytes"] = len(json.dumps(loader.state_dict()))
        assert to_state(smaller.deals)
    return out


def trainer_side(samples: int, work: Path) -> dict:
    from pipeline.shard.inspect import inspect_dataset
    from pipeline.shard.manifest import read_manifest
    from trainer.driver import launch, preflight
    from trainer.config import TrainConfig

    data = str(work / f"data-{samples}")
    p = Phases()
    p.run("train driver: dataset checks + preflight", lambda: (
        launch.check_dataset(data), preflight.check(TrainConfig(data=data, name="x", workers=8),
                                                    read_manifest(data, "train"))))
    with open(os.devnull, "w") as sink:
        stdout, sys.stdout = sys.stdout, sink
        try:
            p.run("alexnet inspect (in process)", inspect_dataset, data)
        finally:
            sys.stdout = stdout
    started = time.perf_counter()
    subprocess.run([str(Path(sys.executable).parent / "alexnet"), "inspect", data], check=True,
                   capture_output=True)
    p.out["alexnet inspect (command, wall)"] = {"cpu_s": float("nan"), "wall_s": time.perf_counter() - started,
                                                "peak_mb": float("nan")}
    return {"phases": p.out, "sizes": {}}


def _child(args: list[str]) -> dict:
    result = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"bench_scale {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1281167")
    parser.add_argument("--work", default="/tmp/bench-scale")
    parser.add_argument("--keep", action="store_true", help="keep the trees and datasets")
    parser.add_argument("--side", help=argparse.SUPPRESS)  # internal: one measurement in this process
    parser.add_argument("--samples", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--world", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    work = Path(args.work)
    if args.side:
        fn = {"shard": shard_side, "trainer": trainer_side}.get(args.side)
        print(json.dumps(fn(args.samples, work) if fn else loader_side(args.samples, work, args.world)))
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    rows: dict[str, dict[int, float]] = {}
    for n in sizes:
        started = time.perf_counter()
        results = [_child(["--side", "shard", "--samples", str(n), "--work", str(work)])]
        results += [_child(["--side", "loader", "--samples", str(n), "--world", str(w), "--work", str(work)])
                    for w in (1, 8, 64)]
        results.append(_child(["--side", "trainer", "--samples", str(n), "--work", str(work)]))
        for result in results:
            for name, m in result["phases"].items():
                timed = m["cpu_s"] == m["cpu_s"]  # NaN: only wall time (a command of its own)
                rows.setdefault(f"{name} [{'CPU-s' if timed else 'wall s'}]", {})[n] = m["cpu_s" if timed else "wall_s"]
                if m["peak_mb"] == m["peak_mb"]:
                    rows.setdefault(f"{name} [peak RSS MB]", {})[n] = m["peak_mb"]
            for name, value in result["sizes"].items():
                rows.setdefault(name, {})[n] = value
        print(f"# {n} samples measured in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    load = os.getloadavg()
    print(f"CPU: {cpu_model()}; load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    print("| cost | " + " | ".join(f"{n:,}" for n in sizes) + f" | x ({sizes[-1] // sizes[0]}x samples) |")
    print("| --- |" + " ---: |" * (len(sizes) + 1))
    for name, by_size in rows.items():
        values = [by_size.get(n, float("nan")) for n in sizes]
        growth = values[-1] / values[0] if values[0] else float("nan")
        print(f"| {name} | " + " | ".join(f"{v:.3g}" for v in values) + f" | {growth:.3g} |")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
