"""`alexnet summary` (trainer/use/summary.py): the network layer by layer, as a table and from the CLI."""

from __future__ import annotations

import json

from conftest import run_cli
from trainer.use.summary import format_summary, model_summary


def test_summary_table_and_cli():
    table = format_summary(model_summary("paper", 224, devices=("cuda:0", "cuda:1")))
    assert "60,965,224" in table and "fc8 (t0)" in table and "conv3 (t1)" in table and "cuda:1" in table
    result = json.loads(run_cli("summary", "--variant", "one-tower", "--input", "227", "--json").stdout)
    assert result["total_params"] == 62_378_344 and result["layers"][0]["output_shape"] == [96, 55, 55]
    bad = run_cli("summary", "--input", "256", check=False)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
    assert "--input 256: AlexNet takes square inputs of 223 to 227" in bad.stderr
