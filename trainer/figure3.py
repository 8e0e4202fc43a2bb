"""The paper's Figure 3: conv1's kernels drawn per tower, and how colour-specific each tower came out.

Krizhevsky et al. (2012, section 6.1) found the 48 kernels on one GPU "largely colour-agnostic" and the
48 on the other "largely colour-specific", on every run, whatever the initialisation. To tell whether a
run shows that split, each kernel gets a colour-specificity score: the share of its energy (sum of
squared weights) that lies outside the grey direction, where the grey direction is the same weight in
R, G and B at a pixel (the kernel responds to a pattern of brightness, not of colour):

    score = 1 - 3 * sum_pixels(mean_rgb(w)^2) / sum_pixels_rgb(w^2)      (0 = grey pattern, 1 = no grey part)

Kernels drawn at random with independent channels score 2/3 on average (so does a kernel that sees one
channel alone: a third of its energy is grey), an opponent kernel (red minus green) scores 1, so a tower whose mean falls
well below 2/3 has learned mostly colour-agnostic kernels, and one above it mostly colour-opponent ones.
The grey axis is (1, 1, 1) and not a luminance weighting such as (0.299, 0.587, 0.114): the network
sees mean-subtracted RGB with no colour-space weighting, so "the same in every channel" is what
colour-agnostic means to it.
"""

from __future__ import annotations

import json
import math

import numpy as np

from pipeline import storage
from pipeline.errors import UserError

RANDOM_SCORE = 2 / 3  # the mean score of kernels with independent, identically distributed channels


def tower_weights(model_state: dict) -> list[np.ndarray]:
    """conv1 weights per tower, each [kernels, 3 (RGB), 11, 11] as float64, from a model state dict."""
    towers, index = [], 0
    while f"towers.{index}.conv1.weight" in model_state:
        towers.append(model_state[f"towers.{index}.conv1.weight"].double().numpy())
        index += 1
    if not towers:
        raise UserError("the checkpoint's model has no towers.N.conv1.weight: not an alexnet-ray AlexNet")
    return towers


def colour_specificity(weight: np.ndarray) -> np.ndarray:
    """Per-kernel scores in [0, 1] for conv1 weights [kernels, 3, height, width] (see the module's doc)."""
    flat = weight.reshape(weight.shape[0], 3, -1)
    total = (flat ** 2).sum(axis=(1, 2))
    grey = 3 * (flat.mean(axis=1) ** 2).sum(axis=1)
    return 1 - grey / np.maximum(total, 1e-30)


def tower_scores(model_state: dict) -> list[dict]:
    """Each tower's scores: mean, median, and how many kernels are mostly grey (grey holds over 2/3 of the
    energy, twice a random kernel's share: score < 1/3) or mostly colour (grey holds under 1/6, half a
    random kernel's share: score > 5/6), with every kernel's score for whoever wants to look closer."""
    summary = []
    for index, weight in enumerate(tower_weights(model_state)):
        scores = colour_specificity(weight)
        summary.append({"tower": index + 1, "kernels": len(scores), "mean": round(float(scores.mean()), 4),
                        "median": round(float(np.median(scores)), 4),
                        "grey_kernels": int((scores < 1 / 3).sum()), "colour_kernels": int((scores > 5 / 6).sum()),
                        "scores": [round(float(s), 4) for s in scores]})
    return summary


def describe(summary: list[dict]) -> str:
    """One line per tower, as `alexnet plot` prints it and the reports quote it."""
    lines = [f"tower {t['tower']}: colour specificity mean {t['mean']:.3f}, median {t['median']:.3f}; "
             f"{t['grey_kernels']} of {t['kernels']} kernels mostly grey (< 0.33), {t['colour_kernels']} "
             f"mostly colour (> 0.83)" for t in summary]
    return "\n".join(lines) + f"\n(random kernels score {RANDOM_SCORE:.3f} on average)"


def draw(model_state: dict, title: str = "") -> bytes:
    """The kernels of each tower side by side as a PNG, each scaled to 0-1 on its own for display, each
    panel titled with its tower's mean score."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    towers = tower_weights(model_state)
    summary = tower_scores(model_state)
    count = len(towers[0])
    per_row = max(1, math.ceil(math.sqrt(count * 4 / 3)))  # 48 kernels: 8 x 6, as in the paper
    rows = math.ceil(count / per_row)
    fig, axes = plt.subplots(1, len(towers), figsize=(0.5 * per_row * len(towers) + 0.4, 0.5 * rows + 0.9),
                             squeeze=False, dpi=110, layout="constrained")  # room for the titles
    for weight, tower, ax in zip(towers, summary, axes[0]):
        ax.imshow(_tile(_display(weight), per_row), interpolation="nearest")
        ax.set_title(f"tower {tower['tower']}: {tower['kernels']} kernels 11x11x3\n"
                     f"colour specificity {tower['mean']:.2f} (random 0.67)", fontsize=8)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def write(model_state: dict, folder: str, title: str = "") -> tuple[str, list[dict]]:
    """figure3.png and figure3.json (the scores) into `folder` (local or URL); returns the PNG's location."""
    summary = tower_scores(model_state)
    png = storage.join(folder, "figure3.png")
    storage.write_bytes_atomic(png, draw(model_state, title))
    storage.write_bytes_atomic(storage.join(folder, "figure3.json"),
                               (json.dumps({"towers": summary}, indent=1) + "\n").encode())
    return png, summary


def _display(weight: np.ndarray) -> np.ndarray:
    """[kernels, 3, h, w] -> [kernels, h, w, 3] in 0-1, each kernel stretched to the full range."""
    pictures = weight.transpose(0, 2, 3, 1)
    low = pictures.min(axis=(1, 2, 3), keepdims=True)
    high = pictures.max(axis=(1, 2, 3), keepdims=True)
    return (pictures - low) / np.maximum(high - low, 1e-12)


def _tile(pictures: np.ndarray, per_row: int) -> np.ndarray:
    count, size = len(pictures), pictures.shape[1]
    rows, cols = -(-count // per_row), min(count, per_row)
    grid = np.ones((rows * (size + 1) + 1, cols * (size + 1) + 1, 3))
    for i, kernel in enumerate(pictures):
        r, c = divmod(i, per_row)
        grid[1 + r * (size + 1):1 + r * (size + 1) + size, 1 + c * (size + 1):1 + c * (size + 1) + size] = kernel
    return grid
