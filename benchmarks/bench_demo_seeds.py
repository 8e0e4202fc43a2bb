"""The demo's ten-crop error over seeds: the figures docs/demo.md, "Results by seed", quotes come from this script.

    python benchmarks/bench_demo_seeds.py --out /tmp/demo-seeds              # seeds 0-4, ~5 x 4 min on 2 idle cores
    python benchmarks/bench_demo_seeds.py --out /tmp/demo-seeds --seeds 0 1  # a subset
    python benchmarks/bench_demo_seeds.py --out /tmp/demo-det --deterministic-cost  # kernels' cost, small size

Each seed is a whole `alexnet demo --seed S` run in a subprocess (the same command a user types), so
every random choice differs between seeds: generated images, shard order, init, augmentation. One
seed's figure says little about a recipe; the median and the worst over five say whether it learns.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="folder for one demo output per seed")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--reuse", action="store_true",
                        help="take a seed's finished report.json from an earlier call instead of rerunning it")
    parser.add_argument("demo_args", nargs="*", help="more `alexnet demo` arguments, after --")
    parser.add_argument("--deterministic-cost", action="store_true",
                        help="instead: seed 0 at a small size with deterministic kernels off, on, on, off; "
                        "prints training seconds, the ratio, and whether the four reports agree")
    args = parser.parse_args()
    if args.deterministic_cost:
        return deterministic_cost(Path(args.out))
    rows = []
    for seed in args.seeds:
        out = Path(args.out) / f"seed-{seed}"
        if args.reuse and (out / "report.json").is_file():
            report = json.loads((out / "report.json").read_text())
            rows.append({k: report[k] for k in ("seed", "top1_error", "top5_error", "epochs", "best_epoch")})
            continue
        command = [sys.executable, "-m", "jobs.cli", "demo", "--out", str(out), "--seed", str(seed),
                   *args.demo_args]
        print("$ " + " ".join(command[2:]), flush=True)
        if subprocess.run(command).returncode != 0:
            print(f"seed {seed}: the demo failed", flush=True)
            rows.append({"seed": seed, "top1_error": float("nan"), "top5_error": float("nan"), "epochs": 0})
            continue
        report = json.loads((out / "report.json").read_text())
        rows.append({k: report[k] for k in ("seed", "top1_error", "top5_error", "epochs", "best_epoch")})
    print("\n| seed | ten-crop top-1 error | ten-crop top-5 error | epochs (best) |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['seed']} | {r['top1_error']:.3f} | {r['top5_error']:.3f} | "
              f"{r['epochs']} ({r.get('best_epoch')}) |")
    top1 = [r["top1_error"] for r in rows]
    top5 = [r["top5_error"] for r in rows]
    print(f"| median | {statistics.median(top1):.3f} | {statistics.median(top5):.3f} | |")
    print(f"| worst | {max(top1):.3f} | {max(top5):.3f} | |")
    return 0


SMALL = "classes=4, train_per_class=64, val_per_class=6, epochs=3, batch_size=32, lr=0.01, seed=0"


def deterministic_cost(out: Path) -> int:
    """run_demo (the CLI has no switch: the demo is always deterministic) off/on/on/off, interleaved so a
    load that drifts over the runs falls on both sides."""
    seconds, reports = {False: [], True: []}, []
    for n, deterministic in enumerate((False, True, True, False)):
        folder = out / f"{n}-{deterministic}"
        code = f"from jobs.demo import run_demo; run_demo({str(folder)!r}, {SMALL}, deterministic={deterministic})"
        subprocess.run([sys.executable, "-c", code], check=True, stdout=subprocess.DEVNULL)
        report = json.loads((folder / "report.json").read_text())
        seconds[deterministic].append(report["seconds"]["train"])
        reports.append({k: v for k, v in report.items() if k not in ("seconds", "run", "data")})
        print(f"deterministic={deterministic}: training {report['seconds']['train']:.1f} s", flush=True)
    off, on = statistics.mean(seconds[False]), statistics.mean(seconds[True])
    print(f"deterministic / not: {on / off:.2f} ({on:.1f} s / {off:.1f} s); the four reports "
          f"{'agree' if all(r == reports[0] for r in reports) else 'DIFFER'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
