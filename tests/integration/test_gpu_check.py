"""benchmarks/gpu_check.py --cpu: the GPU machine's one check runs end to end at a tiny size on the CPU,
so the script cannot rot between the sessions that have a GPU to run it on."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # it starts Ray Train (`alexnet train` on the session's Ray head)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_gpu_check_runs_on_the_cpu_and_writes_its_json_to_out(small_dataset, ray_head, tmp_path):
    result = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "gpu_check.py"), "--cpu",
                             "--data", small_dataset, "--address", ray_head],
                            env={**os.environ, "OUT": str(tmp_path)}, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert {name: check["ok"] for name, check in report["correctness"].items()} == {"fp32": True, "bf16": True}
    modes = report["bare_model"]["cpu"]
    assert list(modes) == ["fp32", "bf16", "bf16+compile"] and all(m["images_per_s"] > 0 for m in modes.values())
    train = report["train"]
    assert train["trainer_images_per_s"] > 0 and train["bare_images_per_s"] > 0
    assert 0 <= train["trainer_data_wait_pct"] <= 100
    assert "fed by the loader" in result.stdout and "fed from memory" in result.stdout
