"""`alexnet predict`'s scoring (trainer/use/predict.py) without a checkpoint: the paper's ten-crop rule
in `Predictor.top`. The command end to end, on a trained run, is tests/integration/test_predict_export.py."""

from __future__ import annotations

import pytest
import torch

from trainer.use.predict import Predictor


def test_top_averages_the_crops_probabilities_not_their_logits():
    """The paper's ten-crop rule, through `Predictor.top` (no checkpoint needed): crop 0 is sure of
    class 0, crop 1 leans to class 1. Averaged probabilities rank class 0 first; the softmax of the
    averaged logits would rank class 1 first."""
    predictor = object.__new__(Predictor)
    predictor.classes = [{"synset": f"n0000000{i}", "name": f"class {i}"} for i in range(3)]
    logits = torch.tensor([[10.0, 0.0, 0.0], [-10.0, 1.0, 0.0]])
    top = predictor.top(logits, k=3)
    assert [entry["index"] for entry in top] == [0, 1, 2]
    want = logits.softmax(dim=1).mean(dim=0)
    assert [entry["probability"] for entry in top] == pytest.approx(want.tolist(), abs=1e-6)
    assert top[0]["synset"] == "n00000000" and top[0]["name"] == "class 0"
