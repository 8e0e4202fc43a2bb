"""benchmarks/bench_imagenette.py's own bookkeeping: the results table's figures must name what was
evaluated, and its seconds must survive two sittings on one output folder (docs/imagenette.md)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import bench_imagenette as bench  # noqa: E402


def _epoch(number: int, error: float) -> dict:
    return {"kind": "epoch", "epoch": number, "val_top1_error": error}


def test_the_best_epoch_is_the_one_the_schedule_kept_as_its_checkpoint():
    # epoch 3 is lower than epoch 2 by one photograph in 2,000: not better by the schedule's rule, so
    # the run's best/ checkpoint, the one the table's errors come from, is epoch 2's
    epochs = [_epoch(1, 0.5), _epoch(2, 0.3), _epoch(3, 0.2995), _epoch(4, 0.31)]
    assert bench._best_epoch(epochs, threshold=1e-3)["epoch"] == 2
    assert bench._best_epoch(epochs, threshold=0.0)["epoch"] == 3


def test_two_sittings_on_one_output_folder_keep_each_others_steps(tmp_path):
    """A report made while a run trains: each sitting loaded the ledger before the other wrote."""
    path = tmp_path / "ledger.json"
    path.write_text(json.dumps({"train w": {"wall_s": 100.0, "cpu_s": 150.0, "sittings": 1, "cpu_metered": True,
                                            "epochs": 2}}))
    training, report = bench.Ledger(path), bench.Ledger(path)
    training.step("shard train", ["--help"], capture=True)
    report.step("plot w", ["--help"], capture=True)
    training.step("shard val", ["--help"], capture=True)
    steps = json.loads(path.read_text())
    assert set(steps) == {"train w", "shard train", "plot w", "shard val"}
    assert steps["train w"]["wall_s"] == 100.0 and steps["train w"]["epochs"] == 2
    assert all(steps[label]["sittings"] == 1 and steps[label]["wall_s"] > 0
               for label in ("shard train", "plot w", "shard val"))
    assert [p.name for p in tmp_path.iterdir()] == ["ledger.json"]  # no partial file left behind


def _evaluated(width: float, seed: int, centre: float, ten: float, departures: dict | None = None) -> dict:
    return {"width": width, "seed": seed, "departures": departures or {}, "best_epoch": 40, "epochs_run": 45,
            "centre_crop": {"top1_error": centre}, "ten_crop": {"top1_error": ten},
            "colour_specificity": [{"mean": 0.5}, {"mean": 0.25}]}


def test_seeds_of_one_recipe_get_their_spread_and_other_recipes_do_not():
    bias = {"positive_bias": {"value": 0.1, "paper": 1.0, "why": ""}}
    runs = [_evaluated(0.25, 0, 0.22, 0.20), _evaluated(0.25, 1, 0.24, 0.23), _evaluated(0.25, 2, 0.23, 0.21),
            _evaluated(0.25, 0, 0.30, 0.28, bias), _evaluated(1.0, 0, 0.15, 0.13)]
    (line,) = bench.seed_spreads(runs)
    assert line.startswith("Over the seeds of width 0.25 (0, 1, 2): top-1 error 22.0% to 24.0% (mean 23.0%, "
                           "2.0 points apart) with the centre crop, 20.0% to 23.0% (mean 21.3%, 3.0 points apart) "
                           "with ten crops")
    assert bench.seed_spreads(runs[3:]) == []


def _reported(width: float, seed: int, centre: float, departures: dict | None = None) -> dict:
    """An evaluated run as bench_imagenette's summary holds it, with its predict example."""
    name = f"width{width:g}-seed{seed}"
    return _evaluated(width, seed, centre, centre - 0.02, departures) | {
        "finished": True, "lr_reduced_after_epochs": [20, 30, 40], "train_loss_end": 0.2, "val_loss_end": 0.6,
        "training_seconds": 3600.0, "train_cpu_s": 7200.0, "train_cpu_epochs": 45.0, "images_per_s": 100.0,
        "data_wait": 0.01, "predict": [{"photo": "val/a/1.JPEG", "true": "a", "top1": "a", "probability": 0.9}],
        "centre_crop": {"top1_error": centre, "top5_error": 0.02, "samples": 1966},
        "ten_crop": {"top1_error": centre - 0.02, "top5_error": 0.01},
        "predict_example": {"command": f"alexnet predict OUT/runs/{name} val/a/1.JPEG",
                            "printed": f"checkpoint OUT/runs/{name}/best/checkpoint.pt\n"}}


def test_the_predict_example_comes_from_the_run_with_the_lowest_error():
    bias = {"positive_bias": {"value": 0.1, "paper": 1.0, "why": "chance at full width"}}
    summary = {"runs": [_reported(0.25, 0, 0.22), _reported(1.0, 0, 0.18, bias), _reported(0.25, 1, 0.24)],
               "config": "imagenette", "cpu": "a CPU", "commit": "abc1234", "fastai": [("xresnet", 0.858)]}
    table = bench.markdown(summary)
    assert "(the best checkpoint of width 1, seed 0, positive_bias 0.1):" in table
    assert "$ alexnet predict OUT/runs/width1-seed0 val/a/1.JPEG" in table
    assert "| | width 0.25, seed 0 | width 1, seed 0, positive_bias 0.1 | width 0.25, seed 1 |" in table


def test_a_sitting_stopped_mid_epoch_counts_the_batches_it_trained(tmp_path):
    """CPU-seconds an epoch divides by what the seconds bought, a started epoch included."""
    def write(*records):
        (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))

    assert bench.trained(tmp_path) == 0.0
    step = {"kind": "step", "epoch": 18, "step": 1261, "batch": 20, "batches": 73}
    write(_epoch(17, 0.24) | {"step": 1241}, step)
    assert bench.trained(tmp_path) == 17 + 20 / 73
    write(_epoch(17, 0.24) | {"step": 1241}, step | {"batch": 60, "step": 1301}, _epoch(18, 0.23) | {"step": 1314})
    assert bench.trained(tmp_path) == 18.0
    write(step | {"epoch": 14, "batch": 40, "step": 989}, {"kind": "resume", "epoch": 14, "step": 1000, "batch": 51})
    assert bench.trained(tmp_path) == 13 + 51 / 73  # resumed from a checkpoint within the epoch


def test_a_cgroup_left_by_a_killed_benchmark_is_no_obstacle():
    """A benchmark killed hard leaves its empty cgroup, named by its pid; a later process given the same
    pid (CI on a long-lived machine) must still meter, and the dead one's cgroup is cleared away."""
    import os
    import subprocess

    from cpu_meter import PREFIX, CpuCgroup

    try:
        probe = CpuCgroup()
    except SystemExit:
        return  # no writable cgroup mount here: nothing to meter
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = [os.path.join(probe.parent, f"{PREFIX}{os.getpid()}"), os.path.join(probe.parent, f"{PREFIX}{dead.pid}")]
    for path in stale:
        os.makedirs(path, exist_ok=True)
    try:
        with CpuCgroup() as group:
            sum(range(10**6))
            assert group.seconds() > 0
        assert os.path.isdir(stale[0]) and not os.path.exists(stale[1])  # only the dead pid's is removed
    finally:
        for path in stale:
            if os.path.isdir(path):
                os.rmdir(path)


def test_durations_read_in_the_unit_that_suits_them():
    assert [bench.duration(s) for s in (24_444.0, 3600.0, 3348.0, 59.4, 7.0)] == \
        ["6.79 h", "1.00 h", "56 min", "59 s", "7 s"]
