"""The demo's report: report.json (the numbers), report.md (numbers, curves, first-layer filters).

The filter picture is the paper's Figure 3 (trainer/figure3.py): conv1's kernels drawn per tower, with
each tower's colour-specificity score. In the paper the tower on GPU 1 learned mostly colour-agnostic
edges and the one on GPU 2 mostly colour blobs; with a tiny model and a few minutes of training the
split is faint, but the grouping shows what each device holds.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from pipeline.errors import UserError


def write_report(out_dir: Path, run_dir: str, data: str, result: dict, timings: dict) -> dict:
    from pipeline.shard.manifest import read_manifest
    from trainer import figure3
    from trainer.checkpoint import format as ckpt
    from trainer.report import plot_run, read_metrics

    manifest = read_manifest(data, "train")
    classes = int(manifest["num_classes"])
    epochs = [r for r in read_metrics(run_dir) if r.get("kind") == "epoch"]
    if not epochs:
        raise UserError(f"{run_dir} holds no finished epoch: training did not get through one")
    state = ckpt.load(run_dir)
    report = {
        "top1_error": result["top1_error"], "top5_error": result["top5_error"],
        "chance_top1_error": 1 - 1 / classes, "chance_top5_error": max(0.0, 1 - min(5, classes) / classes),
        "crops": result["crops"], "val_images": result["samples"], "classes": classes,
        "train_images": int(manifest["total_samples"]), "epochs": len(epochs),
        "best_epoch": int(state["schedule"]["best_epoch"]) + 1,  # 1-based, as in the report's table
        "centre_crop_val_top1_error_per_epoch": [r.get("val_top1_error") for r in epochs],
        "lr_per_epoch": [r.get("lr") for r in epochs],
        "seconds": {k: round(v, 1) for k, v in timings.items()},
        "width": state["config"]["width"], "seed": state["config"]["seed"], "run": run_dir, "data": data,
    }
    report["kernels_per_tower"] = int(state["model"]["towers.0.conv1.weight"].shape[0])
    report["colour_specificity"] = [{k: v for k, v in t.items() if k != "scores"}
                                    for t in figure3.tower_scores(state["model"])]
    figure4 = out_dir / "neighbours" / "figure4.png"
    if figure4.is_file():  # `alexnet neighbours` ran (the demo runs it before the report)
        shutil.copy(figure4, out_dir / "figure4.png")
        report["figure4"] = json.loads((out_dir / "neighbours" / "figure4.json").read_text())["figure"]
    (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    for plot in plot_run(run_dir):
        shutil.copy(plot, out_dir / Path(plot).name)
    (out_dir / "figure3.png").write_bytes(figure3.draw(state["model"]))
    (out_dir / "report.md").write_text(_markdown(report, epochs))
    return report


def _markdown(report: dict, epochs: list[dict]) -> str:
    rows = "\n".join(
        f"| {r['epoch']} | {r.get('lr', float('nan')):.4g} | {r.get('train_loss', float('nan')):.3f} | "
        f"{r.get('val_loss', float('nan')):.3f} | {r.get('val_top1_error', float('nan')):.3f} | "
        f"{r.get('val_top5_error', float('nan')):.3f} | {r.get('decision', '')} |" for r in epochs)
    seconds = ", ".join(f"{k} {v:.0f} s" for k, v in report["seconds"].items())
    return f"""# alexnet demo report

{report['classes']} classes, {report['train_images']} training and {report['val_images']} validation images;
AlexNet (two towers) at width {report['width']}, {report['epochs']} epochs (best: epoch {report['best_epoch']}),
seed {report['seed']} (`alexnet demo --seed {report['seed']}`).

| validation, {report['crops']} crops | top-1 error | top-5 error |
|---|---|---|
| this run (best checkpoint) | {report['top1_error']:.3f} | {report['top5_error']:.3f} |
| chance | {report['chance_top1_error']:.3f} | {report['chance_top5_error']:.3f} |

Time: {seconds}.

## Training curves

![loss](loss.png)

![error](error.png)

| epoch | lr | train loss | val loss | val top-1 (centre) | val top-5 (centre) | schedule |
|---|---|---|---|---|---|---|
{rows}

## First-layer filters by tower (the paper's Figure 3)

![conv1 filters](figure3.png)

Colour specificity (the share of a kernel's energy outside the grey direction; random kernels: 0.67):
{_colour_lines(report)}.

What to expect at this scale: {report['kernels_per_tower']} kernels per tower trained for {report['epochs']} epochs
on {report['train_images']} images of {report['classes']} classes (the paper: 48 per tower, 90 epochs, 1.2 million
images of 1000 classes). Kernels this small and this briefly trained barely leave their random
initialisation, so they look like noise, at most with a faint orientation or tint in a few: that is
the scale, not a fault. The paper's oriented edges (tower 1) and colour blobs (tower 2) need the full run.
{_figure4_section(report)}

Run folder: `{report['run']}`; shards: `{report['data']}`.
"""


def _colour_lines(report: dict) -> str:
    return "; ".join(f"tower {t['tower']} mean {t['mean']:.3f} ({t['grey_kernels']} of {t['kernels']} kernels "
                     f"mostly grey, {t['colour_kernels']} mostly colour)" for t in report["colour_specificity"])


def _figure4_section(report: dict) -> str:
    if "figure4" not in report:
        return ""
    return """
## What the network sees (the paper's Figure 4)

![figure 4](figure4.png)

Left: validation images with the network's five most probable classes (the true class's bar in red).
Right: validation images (first column) and the six training images whose last-hidden-layer (fc7)
vectors lie nearest in Euclidean distance (`alexnet neighbours`; keys, labels and distances in
`neighbours/figure4.json`). How many neighbours share the query's class shows how far this small
network's fc7 space separates the classes, which the noise-like filters above cannot show.
"""
