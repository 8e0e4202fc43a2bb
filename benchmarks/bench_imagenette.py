"""The paper's recipe on real photographs: Imagenette through the whole system, one command.

    python benchmarks/bench_imagenette.py --data ../shared/data/imagenette --out ~/imagenette     # full width
    python benchmarks/bench_imagenette.py --data ../shared/data/imagenette --out ~/imagenette --width 0.25
    python benchmarks/bench_imagenette.py ... --seeds 0 1 2 --update README.md docs/imagenette.md

Every step is the public command line a user would type, in a subprocess:
    alexnet shard DATA/train OUT/shards --split train     (and DATA/val --split val)
    alexnet train --config imagenette --data OUT/shards --storage OUT/runs --name widthW-seedS[-KEYVALUE] --set width=W ...
    alexnet eval --checkpoint RUN --data OUT/shards --json            (centre crop, then --ten-crop)
    alexnet predict RUN <one validation photograph per class> --json
    alexnet neighbours RUN --data OUT/shards --out OUT/neighbours/RUN_NAME
    alexnet plot RUN                                                   (curves, Figure 3 and its scores)
then OUT/results.json and OUT/results.md (one column per run OUT holds: --set KEY=VALUE of a recipe key
names its own runs, so a departure and the run that measured the paper's value sit side by side), and, with --update, the table between the
`<!-- imagenette-results:start -->` / `end -->` markers of the files named. --figures copies the
curves, Figure 3 and Figure 4 of the first run (or of --figures-of RUN_NAME, one still training too)
into a folder (small palette PNGs) for the docs.

Killed and given again, it continues: finished splits are kept, a run resumes from its last checkpoint
(a finished run is not redone, nor evaluated again: OUT/reports/), and each sitting's wall-clock and CPU
seconds add to OUT/ledger.json (a sitting killed mid-step too: a step writes its figures every minute).
CPU seconds are every process of a step (Ray's workers included), counted by a cgroup of the step's
own (benchmarks/cpu_meter.py; needs root), else left out. Nothing here knows Imagenette: DATA is any
tree of train/<synset>/ and val/<synset>/ folders, and --config any recipe.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cpu_meter import CpuCgroup, cpu_model  # noqa: E402

from trainer.config import read_config_file  # noqa: E402
from trainer.report import read_metrics  # noqa: E402
from trainer.schedule import PlateauSchedule  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- imagenette-results:start -->", "<!-- imagenette-results:end -->"
# Keys of a run's config that say where and how it ran, not what it learned: never a recipe departure
MACHINE_KEYS = {"data", "name", "storage", "workers", "min_workers", "resize_check_seconds", "gpus_per_worker",
                "cpus_per_worker", "wait_timeout", "loader_workers", "eval_batch_size", "checkpoint_every_steps",
                "keep_checkpoints", "log_every_steps", "max_failures", "seed", "deterministic", "precision",
                "compile"}
# fastai's Imagenette leaderboard (another network, random init, centre crop, full 3,925-image validation set)
FASTAI = [("xresnet, 128 px, 5 epochs", 0.858), ("xresnet, 128 px, 20 epochs", 0.916),
          ("xresnet, 128 px, 80 epochs", 0.936), ("xresnet, 256 px, 20 epochs", 0.935),
          ("xresnet, 256 px, 80 epochs", 0.949)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="DATA/train/<synset>/ and DATA/val/<synset>/ photographs")
    parser.add_argument("--out", required=True, help="folder for shards, runs, results (kept between sittings)")
    parser.add_argument("--config", default="imagenette", help="recipe name or file (default imagenette)")
    parser.add_argument("--width", type=float, nargs="+", default=[1.0],
                        help="model width(s), one run per width and seed (default 1: the paper's)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="one run per seed (default 0)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="more config keys for every run (machine settings such as precision=bf16)")
    parser.add_argument("--cpus", type=int, default=os.cpu_count(), help="CPUs per training worker (default all)")
    parser.add_argument("--why", action="append", default=[], metavar="KEY=TEXT",
                        help="why a config key departs from the paper's recipe, for the table (repeatable; "
                             "kept in OUT/departures.json for later reports)")
    parser.add_argument("--update", nargs="*", default=[], metavar="FILE",
                        help="replace the table between the imagenette-results markers of these files")
    parser.add_argument("--figures", help="copy the first run's curves, Figure 3 and Figure 4 here")
    parser.add_argument("--figures-of", metavar="RUN_NAME", help="copy this run's figures instead (with --figures)")
    parser.add_argument("--skip-train", action="store_true", help="report on the runs as they stand now")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    shards = out / "shards"
    ledger = Ledger(out / "ledger.json")

    for split in ("train", "val"):
        ledger.step(f"shard {split}", ["shard", str(Path(args.data, split)), str(shards), "--split", split])
    recipe = [s for s in args.set if s.split("=", 1)[0] not in MACHINE_KEYS]  # part of a run's name
    reasons = out / "departures.json"  # a reason given once stays with OUT for every later report
    why = {**(json.loads(reasons.read_text()) if reasons.is_file() else {}), **dict(w.split("=", 1) for w in args.why)}
    if args.why:
        reasons.parent.mkdir(parents=True, exist_ok=True)
        reasons.write_text(json.dumps(why, indent=1) + "\n")
    for width, seed in [(w, s) for w in args.width for s in args.seeds]:
        name = "-".join([f"width{width:g}-seed{seed}", *(s.replace("=", "") for s in recipe)])
        run = out / "runs" / name
        if not args.skip_train:
            settings = [f"width={width}", f"seed={seed}", f"cpus_per_worker={args.cpus}", *args.set]
            before = len(_epochs(run))  # it resumes at its last epoch's end (a checkpoint within an epoch: from its start)
            ledger.step(f"train {name}", ["train", "--config", args.config, "--data", str(shards), "--storage",
                                          str(out / "runs"), "--name", name, *[a for s in settings for a in ("--set", s)]],
                        epochs=lambda: trained(run) - before)  # what this sitting's seconds bought
    results = []
    for run in sorted((out / "runs").iterdir()) if (out / "runs").is_dir() else []:  # every run OUT holds
        records = read_metrics(str(run), missing_ok=True)
        if any(r["kind"] == "end" for r in records):
            results.append(cached_report(run, shards, Path(args.data), out, ledger, why))
        elif _epochs(run):  # still training (or given up): what its epochs say so far, nothing evaluated
            results.append(progress_of(run, ledger, why))
    summary = {"cpu": cpu_model(), "commit": _commit(), "data": str(Path(args.data).resolve()),
               "config": args.config, "runs": results, "fastai": FASTAI}
    (out / "results.json").write_text(json.dumps(summary, indent=1) + "\n")
    table = markdown(summary)
    (out / "results.md").write_text(table)
    print(table)
    for file in args.update:
        replace_between_markers(Path(file), table)
        print(f"updated {file}")
    if args.figures:
        drawn = {Path(r["run"]).name: r for r in results if "figures" in r}
        if args.figures_of and args.figures_of not in drawn:
            raise SystemExit(f"--figures-of {args.figures_of}: no such run with figures in {out / 'runs'} "
                             f"(runs with figures: {', '.join(drawn) or 'none'})")
        copy_figures(drawn[args.figures_of or next(iter(drawn))], Path(args.figures))
    return 0


class Ledger:
    """Each step's wall-clock and CPU seconds, summed over every sitting that ran it (OUT/ledger.json).

    A long step writes its figures so far every minute under "open"; a sitting killed before the step
    ended (the machine or the session went) leaves them there, and the next sitting adds them in.
    A sitting writes back only the steps it ran, so a second one on the same OUT (a --skip-train
    report while a run trains) loses neither's seconds."""

    POLL_S = 60.0

    def __init__(self, path: Path):
        self.path = path
        self.steps = self._read()
        self.ran: set[str] = set()

    def _read(self) -> dict:
        return json.loads(self.path.read_text()) if self.path.is_file() else {}

    def step(self, label: str, command: list[str], capture: bool = False, cwd: Path | None = None,
             epochs: Callable[[], float] | None = None) -> str:
        """Run `alexnet COMMAND...`; a failure stops the benchmark with the command's own message.
        `epochs` counts what the step has trained so far in this sitting, summed like its seconds."""
        self._take_others()
        self.ran.add(label)
        entry = self.steps.setdefault(label, {"wall_s": 0.0, "cpu_s": 0.0, "sittings": 0, "cpu_metered": True})
        _add_sitting(entry, entry.pop("open", None))  # a sitting killed before this step ended
        argv = [str(Path(sys.executable).parent / "alexnet"), *command]
        print(f"$ alexnet {' '.join(command)}", flush=True)
        started = time.perf_counter()
        try:
            group = CpuCgroup()
        except SystemExit:  # no writable cgroup mount: wall-clock only
            group = None
        with group or contextlib.nullcontext():
            pipe = subprocess.PIPE if capture else None
            process = subprocess.Popen(argv, stdout=pipe, stderr=pipe, text=True, cwd=cwd)
            interrupted = False
            while True:
                try:
                    stdout, stderr = process.communicate(timeout=self.POLL_S)
                    break
                except subprocess.TimeoutExpired:  # retrying communicate loses no output
                    entry["open"] = self._sitting(started, group, epochs)
                    self._write()
                except KeyboardInterrupt:  # the command had the same Ctrl-C: it stops as it does alone
                    interrupted, stdout, stderr = True, "", ""
                    process.wait()
                    break
            sitting = self._sitting(started, group, epochs)
        entry.pop("open", None)
        _add_sitting(entry, sitting)
        self._write()
        if interrupted:
            raise SystemExit(f"interrupted in `alexnet {command[0]}`: its seconds are counted and what it "
                             "finished is kept; give the same command again to continue")
        if process.returncode != 0:
            raise SystemExit(f"alexnet {command[0]} failed (exit {process.returncode})"
                             + (f": {stderr.strip()[-2000:]}" if capture else ""))
        return stdout if capture else ""

    @staticmethod
    def _sitting(started: float, group: CpuCgroup | None, epochs: Callable[[], float] | None) -> dict:
        return {"wall_s": time.perf_counter() - started, "cpu_s": group.seconds() if group else None,
                **({"epochs": epochs()} if epochs else {})}

    def _take_others(self) -> None:
        """The ledger as another sitting may have written it since, with this sitting's steps kept."""
        self.steps = {**self._read(), **{k: self.steps[k] for k in self.ran}}

    def _write(self) -> None:
        self._take_others()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        partial.write_text(json.dumps(self.steps, indent=1) + "\n")
        os.replace(partial, self.path)  # a sitting killed mid-write leaves the last whole ledger


def _add_sitting(entry: dict, sitting: dict | None) -> None:
    if sitting is None:
        return
    entry["wall_s"] += sitting["wall_s"]
    entry["sittings"] += 1
    if sitting["cpu_s"] is None:
        entry["cpu_metered"] = False
    else:
        entry["cpu_s"] += sitting["cpu_s"]
    if "epochs" in sitting:
        entry["epochs"] = entry.get("epochs", 0) + sitting["epochs"]


def trained(run: Path) -> float:
    """Epochs trained so far, a started epoch counted by the batches its last record reached: a sitting
    stopped mid-epoch spent its CPU on those batches, so CPU-seconds an epoch divides by them too."""
    records = [r for r in read_metrics(str(run), missing_ok=True) if r["kind"] in ("epoch", "step", "resume")]
    batches = next((r["batches"] for r in reversed(records) if r["kind"] == "step"), None)
    if not records:
        return 0.0
    last = records[-1]
    if last["kind"] == "epoch":
        return float(last["epoch"])
    return last["epoch"] - 1 + (last["batch"] / batches if batches else 0.0)


def _epochs(run: Path) -> list[dict]:
    """The run's epoch records so far (none before its first epoch ends)."""
    return [r for r in read_metrics(str(run), missing_ok=True) if r["kind"] == "epoch"]


def progress_of(run: Path, ledger: Ledger, why: dict) -> dict:
    """A run still training: its epochs so far and the pictures of its best checkpoint so far (Figure 4
    if `alexnet neighbours` drew one), no evaluation (a full-width ten-crop pass is not cheap)."""
    print(ledger.step(f"plot {run.name}", ["plot", str(run)], capture=True), end="")
    figure4 = run.parents[1] / "neighbours" / run.name / "figure4.png"
    figures = {"error": str(run / "plots" / "error.png"), "loss": str(run / "plots" / "loss.png"),
               "figure3": str(run / "plots" / "figure3.png"), **({"figure4": str(figure4)} if figure4.is_file() else {})}
    towers = json.loads((run / "plots" / "figure3.json").read_text())["towers"]
    return {**_from_records(run, ledger, why), "finished": False, "figures": figures,
            "colour_specificity": [{k: v for k, v in t.items() if k != "scores"} for t in towers]}


def _from_records(run: Path, ledger: Ledger, why: dict) -> dict:
    """What the run folder's own records say: epochs, schedule, losses, speed, departures."""
    records = read_metrics(str(run))
    epochs = [r for r in records if r["kind"] == "epoch"]
    steps = [r for r in records if r["kind"] == "step"]
    ends = [r for r in records if r["kind"] == "end"]
    config = json.loads((run / "config.json").read_text())
    train_steps = dict(ledger.steps.get(f"train {run.name}", {}))
    _add_sitting(train_steps, train_steps.pop("open", None))  # a sitting still going counts so far
    paper = read_config_file("imagenet")
    departures = {k: {"value": config[k], "paper": paper.get(k), "why": why.get(k, "")}
                  for k in sorted(config) if k not in MACHINE_KEYS and k in paper and config[k] != paper[k]}
    best = _best_epoch(epochs, config["threshold"])
    return {
        "run": str(run), "width": config["width"], "seed": config["seed"], "precision": config["precision"],
        "departures": departures, "finished": bool(ends), "end_reason": ends[-1]["reason"] if ends else None,
        "epochs_run": len(epochs), "best_epoch": best["epoch"],
        "best_epoch_centre_top1_error": best["val_top1_error"], "best_epoch_centre_top5_error": best["val_top5_error"],
        "lr_reduced_after_epochs": [r["epoch"] for r in epochs if r["decision"] == "reduce"],
        "train_loss_end": epochs[-1]["train_loss"], "val_loss_end": epochs[-1]["val_loss"],
        "val_top1_error_per_epoch": [r["val_top1_error"] for r in epochs],
        "train_top1_error_per_epoch": [r["train_top1_error"] for r in epochs],
        "training_seconds": sum(r["seconds"] for r in epochs),
        "train_wall_s": train_steps.get("wall_s"), "train_sittings": train_steps.get("sittings"),
        # CPU seconds of the sittings this script metered, and the epochs those sittings trained
        "train_cpu_s": train_steps.get("cpu_s") if train_steps.get("cpu_metered") else None,
        "train_cpu_epochs": train_steps.get("epochs", 0),
        "images_per_s": statistics.median(r["images_per_s"] for r in steps) if steps else None,
        "data_wait": statistics.mean(r.get("data_wait", 0.0) for r in steps) if steps else None,
    }


def _best_epoch(epochs: list[dict], threshold: float) -> dict:
    """The epoch of the run's best checkpoint, by the schedule's own rule: an epoch is better only when
    its error drops by more than `threshold`, so a later tie or a half-photograph gain is not it."""
    rule = PlateauSchedule(1.0, threshold=threshold)
    for record in epochs:
        rule.step(record["val_top1_error"])
    return epochs[rule.best_epoch]


def cached_report(run: Path, shards: Path, data: Path, out: Path, ledger: Ledger, why: dict) -> dict:
    """A finished run is evaluated once: its report is kept in OUT/reports/ beside the run's end record
    it was made from, and made again only when that record changes (the run was started over)."""
    cache = out / "reports" / f"{run.name}.json"
    end = [r for r in read_metrics(str(run)) if r["kind"] == "end"][-1]
    if cache.is_file() and json.loads(cache.read_text()).get("end_record") == end:
        # the records' and the ledger's figures are cheap: taken fresh, with today's reasons
        return {**json.loads(cache.read_text())["report"], **_from_records(run, ledger, why)}
    report = report_run(run, shards, data, out, ledger, why)
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({"end_record": end, "report": report}, indent=1) + "\n")
    return report


def report_run(run: Path, shards: Path, data: Path, out: Path, ledger: Ledger, why: dict) -> dict:
    """A finished run: its best checkpoint evaluated (centre and ten crops), asked about one validation
    photograph per class, its figures drawn; with what its records say."""
    centre = json.loads(ledger.step(f"eval {run.name}", ["eval", "--checkpoint", str(run), "--data", str(shards),
                                                         "--json"], capture=True))
    ten = json.loads(ledger.step(f"eval ten-crop {run.name}", ["eval", "--checkpoint", str(run), "--data",
                                                               str(shards), "--ten-crop", "--json"], capture=True))
    photos = sorted(next(iter(sorted(folder.iterdir()))) for folder in sorted((data / "val").iterdir()))
    predicted = json.loads(ledger.step(f"predict {run.name}", ["predict", str(run), *map(str, photos), "--json"],
                                       capture=True))
    examples = [str(p.relative_to(data)) for p in photos[:3]]  # printed as a user in DATA would type them
    neighbours_out = out / "neighbours" / run.name
    ledger.step(f"neighbours {run.name}", ["neighbours", str(run), "--data", str(shards), "--out", str(neighbours_out)])
    plot_text = ledger.step(f"plot {run.name}", ["plot", str(run)], capture=True)
    print(plot_text, end="")
    figure3 = json.loads((run / "plots" / "figure3.json").read_text())["towers"]
    return {
        **_from_records(run, ledger, why),
        "centre_crop": {k: centre[k] for k in ("top1_error", "top5_error", "samples", "checkpoint") if k in centre},
        "ten_crop": {k: ten[k] for k in ("top1_error", "top5_error", "samples") if k in ten},
        "predict": [{"photo": str(Path(p).relative_to(data)), "true": Path(p).parent.name,
                     "top1": result["top5"][0]["synset"], "top1_name": result["top5"][0]["name"],
                     "probability": result["top5"][0]["probability"]} for p, result in zip(photos, predicted["predictions"])],
        "predict_example": {"command": f"alexnet predict OUT/runs/{run.name} " + " ".join(examples),
                            "printed": ledger.step(f"predict {run.name}", ["predict", str(run), *examples],
                                                   capture=True, cwd=data).replace(str(out), "OUT")},
        "colour_specificity": [{k: v for k, v in t.items() if k != "scores"} for t in figure3],
        "figures": {"error": str(run / "plots" / "error.png"), "loss": str(run / "plots" / "loss.png"),
                    "figure3": str(run / "plots" / "figure3.png"), "figure4": str(neighbours_out / "figure4.png")},
    }


def duration(seconds: float) -> str:
    """Hours for the long runs the table is for, minutes and seconds for a short one (not "0.00 h")."""
    if seconds >= 3600:
        return f"{seconds / 3600:.2f} h"
    return f"{seconds / 60:.0f} min" if seconds >= 60 else f"{seconds:.0f} s"


def run_label(r: dict) -> str:
    """A run as the table's reader tells it apart: its width, its seed and any other departure."""
    return ", ".join([f"width {r['width']:g}", f"seed {r['seed']}",
                      *(f"{k} {d['value']}" for k, d in r["departures"].items() if k != "width")])


def markdown(summary: dict) -> str:
    """One column per run (a run still training shows its epochs so far); the fastai figures for scale."""
    runs = summary["runs"]
    head = "| | " + " | ".join(run_label(r) for r in runs) + " |"
    rows = [head, "|---|" + "---|" * len(runs)]

    def row(label: str, cell) -> None:
        rows.append(f"| {label} | " + " | ".join(cell(r) if r["finished"] or "predict" in r or label in ALWAYS
                                                  else "-" for r in runs) + " |")

    def centre_top1(r: dict) -> str:
        if "centre_crop" in r:
            return f"**{r['centre_crop']['top1_error']:.1%}**"
        return f"{r['best_epoch_centre_top1_error']:.1%} (best epoch so far)"

    ALWAYS = {"top-1 error, centre crop", "best epoch / epochs run", "lr divided by 10 after epochs",
              "conv1 colour specificity, tower 1 / 2",
              "train / val loss at the end", "training wall-clock (epochs' own time)", "training CPU-seconds",
              "images/s (median) / data wait", "departures from the paper's recipe"}
    row("top-1 error, centre crop", centre_top1)
    row("top-1 error, ten crops", lambda r: f"**{r['ten_crop']['top1_error']:.1%}**")
    row("top-5 error, centre / ten crops", lambda r: f"{r['centre_crop']['top5_error']:.1%} / "
        f"{r['ten_crop']['top5_error']:.1%}")
    row("best epoch / epochs run", lambda r: f"{r['best_epoch']} / {r['epochs_run']}"
        + ("" if r["finished"] else " (not finished)"))
    row("lr divided by 10 after epochs", lambda r: ", ".join(map(str, r["lr_reduced_after_epochs"])) or "none yet")
    row("train / val loss at the end", lambda r: f"{r['train_loss_end']:.3f} / {r['val_loss_end']:.3f}")
    row("training wall-clock (epochs' own time)", lambda r: duration(r["training_seconds"]))
    row("training CPU-seconds", lambda r: f"{r['train_cpu_s']:,.0f} over {r['train_cpu_epochs']:,.1f} epochs "
        f"({r['train_cpu_s'] / r['train_cpu_epochs']:,.0f} an epoch)" if r["train_cpu_s"] and r["train_cpu_epochs"]
        else "not metered")
    row("images/s (median) / data wait", lambda r: f"{r['images_per_s']:.0f} / {r['data_wait']:.1%}"
        if r["images_per_s"] else "-")
    row("predict: photos right (one per class)", lambda r: f"{sum(p['top1'] == p['true'] for p in r['predict'])} "
        f"of {len(r['predict'])}")
    row("conv1 colour specificity, tower 1 / 2", lambda r: " / ".join(f"{t['mean']:.2f}"
                                                                      for t in r["colour_specificity"]))
    row("departures from the paper's recipe", lambda r: "; ".join(
        f"{k} {d['value']} (paper {d['paper']})" for k, d in r["departures"].items()) or "none")
    evaluated = [r for r in runs if "centre_crop" in r]
    val = f"{evaluated[0]['centre_crop']['samples']:,}" if evaluated and "samples" in evaluated[0]["centre_crop"] \
        else "the"
    reasons = {k: d["why"] for r in runs for k, d in r["departures"].items() if d["why"]}
    lines = ["\n".join(rows), *[line for spread in seed_spreads(evaluated) for line in ("", spread)],
             *(["", "Why each departure: " + "; ".join(f"**{k}**: {why}" for k, why in reasons.items()) + "."]
               if reasons else []), "",
             f"{val} validation photographs; `python benchmarks/bench_imagenette.py --data DATA --out OUT "
             f"--width W --seeds S` (recipe `{summary['config']}`), on {summary['cpu']}, commit "
             f"{summary['commit']}. Random kernels score 0.67 colour specificity.", "",
             "For scale, fastai's Imagenette leaderboard (another network, centre crop, top-1 accuracy): "
             + "; ".join(f"{name} {accuracy:.1%}" for name, accuracy in summary["fastai"]) + "."]
    if evaluated:
        # the example a reader copies should come from the strongest model the table shows
        best = min(evaluated, key=lambda r: r["centre_crop"]["top1_error"])
        example = best["predict_example"]
        lines += ["", "What `alexnet predict` printed for three validation photographs (the best checkpoint of "
                  + run_label(best) + "):",
                  "", "```", f"$ {example['command']}", example["printed"].rstrip(), "```"]
    return "\n".join(lines) + "\n"


def seed_spreads(evaluated: list[dict]) -> list[str]:
    """How far apart the seeds of one recipe landed: a single seed's error says little without it."""
    groups: dict[tuple, list[dict]] = {}
    for r in evaluated:
        recipe = tuple(sorted((k, str(d["value"])) for k, d in r["departures"].items()))
        groups.setdefault((r["width"], recipe), []).append(r)

    def spread(values: list[float]) -> str:
        return (f"{min(values):.1%} to {max(values):.1%} (mean {statistics.mean(values):.1%}, "
                f"{(max(values) - min(values)) * 100:.1f} points apart)")

    lines = []
    for (width, _), group in groups.items():
        if len(group) < 2:
            continue
        lines.append(
            f"Over the seeds of width {width:g} ({', '.join(str(r['seed']) for r in group)}): top-1 error "
            f"{spread([r['centre_crop']['top1_error'] for r in group])} with the centre crop, "
            f"{spread([r['ten_crop']['top1_error'] for r in group])} with ten crops; best epoch / epochs run "
            + ", ".join(f"{r['best_epoch']} / {r['epochs_run']}" for r in group) + "; "
            "conv1 colour specificity by tower " + ", ".join(
                " / ".join(f"{t['mean']:.2f}" for t in r["colour_specificity"]) for r in group) + ".")
    return lines


def replace_between_markers(path: Path, table: str) -> None:
    text = path.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"{path}: no {START} ... {END} markers to put the table between")
    before, rest = text.split(START, 1)
    _, after = rest.split(END, 1)
    path.write_text(f"{before}{START}\n{table}{END}{after}")


def copy_figures(result: dict, folder: Path) -> None:
    """Palette PNGs (a few hundred KB) of the run's curves and figures, for docs and README."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for name, source in result["figures"].items():
        with Image.open(source) as picture:
            picture.convert("RGB").quantize(256).save(folder / f"{name}.png", optimize=True)
        print(f"figure {folder / f'{name}.png'}")


def _commit() -> str:
    try:
        return subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
