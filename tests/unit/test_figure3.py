"""Figure 3's colour-specificity score on kernels whose answer is known, and the picture it draws."""

import io

import numpy as np
import torch
from PIL import Image

from trainer import figure3


def test_colour_specificity_of_known_kernels():
    rng = np.random.default_rng(0)
    pattern = rng.normal(size=(11, 11))
    grey = np.stack([pattern] * 3)[None]  # the same weights in R, G and B: colour-agnostic
    opponent = np.stack([pattern, -pattern, np.zeros_like(pattern)])[None]  # red minus green
    red_only = np.stack([pattern, 0 * pattern, 0 * pattern])[None]
    scores = figure3.colour_specificity(np.concatenate([grey, opponent, red_only, 5 * grey]))
    np.testing.assert_allclose(scores, [0.0, 1.0, 2 / 3, 0.0], atol=1e-12)  # scale does not matter
    random = figure3.colour_specificity(rng.normal(size=(2000, 3, 11, 11)))
    assert abs(random.mean() - figure3.RANDOM_SCORE) < 0.01


def test_tower_scores_and_picture_from_a_model_state():
    rng = np.random.default_rng(1)
    pattern = torch.tensor(rng.normal(size=(6, 1, 11, 11)))
    state = {"towers.0.conv1.weight": pattern.repeat(1, 3, 1, 1).float(),  # all grey
             "towers.1.conv1.weight": torch.cat([pattern, -pattern, 0 * pattern], 1).float()}  # all opponent
    towers = figure3.tower_scores(state)
    assert [(t["tower"], t["kernels"], t["grey_kernels"], t["colour_kernels"]) for t in towers] == \
        [(1, 6, 6, 0), (2, 6, 0, 6)]
    assert towers[0]["mean"] < 1e-6 and towers[1]["mean"] > 1 - 1e-6
    assert "tower 2: colour specificity mean 1.000" in figure3.describe(towers)
    picture = Image.open(io.BytesIO(figure3.draw(state, title="test")))
    assert picture.format == "PNG" and picture.width > picture.height  # the towers side by side
