"""The paper's Figure 4, drawn from what `alexnet neighbours` found (trainer/neighbours.py finds it).

Left, as in the paper: eight validation photographs, each with the network's five most probable
classes as bars, the class names beside the bars, each bar's probability at its end, and the true
class's bar and name in red (the caption says when the true class is not among the five). Right: five
of those photographs in the first column, each followed by the six training photographs whose fc7
vectors lie nearest (class and Euclidean distance under each, on two lines so that long class names
stay apart), captioned green where the neighbour shares the query's class.
"""

from __future__ import annotations

import io
from typing import BinaryIO

TRUE_COLOUR, OTHER_COLOUR = "#d62728", "#1f77b4"
SAME_CLASS, OTHER_CLASS = "#1a7f37", "#57606a"


def draw_figure4(queries: list[dict], images: dict, out: BinaryIO, title: str = "") -> dict:
    """Figure 4 as PNG into `out`. `queries`: neighbours.py's records (class, label, top5, neighbours);
    `images` holds stored JPEG bytes: ("q", i) for query i, ("n", i, j) for its j-th neighbour. Returns
    what was drawn, counted off the figure itself (figure4.json records it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    from pipeline.shard.images import decode_stored

    left, right = queries[:8], queries[:5]
    columns = 1 + max((len(q["neighbours"]) for q in right), default=0)
    fig = plt.figure(figsize=(19, 8.6), dpi=80)
    if title:
        fig.suptitle(title, fontsize=13, y=1.035)
    panel_left, panel_right = fig.subfigures(1, 2, width_ratios=[1, 1.2], wspace=0.02)
    panel_left.suptitle("Top-5 predictions on validation photographs (true class in red)", fontsize=11)
    panel_right.suptitle("Each query, then the six training photographs nearest in fc7 space", fontsize=11)
    grid = panel_left.add_gridspec(4, 4, height_ratios=[3, 1.6, 3, 1.6], hspace=0.22, wspace=0.12,
                                   left=0.01, right=0.99, top=0.93, bottom=0.02)
    for i, query in enumerate(left):
        row, col = 2 * (i // 4), i % 4
        _show(panel_left.add_subplot(grid[row, col]), decode_stored(images[("q", i)]), _true_caption(query),
              weight="bold")
        cell = grid[row + 1, col].subgridspec(1, 2, width_ratios=[1, 1.15], wspace=0)
        _bars(panel_left.add_subplot(cell[0, 1]), query)
    grid = panel_right.add_gridspec(len(right) or 1, columns, wspace=0.04, hspace=0.28,
                                    left=0.01, right=0.99, top=0.93, bottom=0.02)
    for i, query in enumerate(right):
        _show(panel_right.add_subplot(grid[i, 0]), decode_stored(images[("q", i)]), f"query: {query['class']}",
              weight="bold")
        for j, hit in enumerate(query["neighbours"]):
            colour = SAME_CLASS if hit["label"] == query["label"] else OTHER_CLASS
            _show(panel_right.add_subplot(grid[i, 1 + j]), decode_stored(images[("n", i, j)]),
                  f"{hit['class']}\n{hit['distance']:.3g}", colour=colour)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight", pad_inches=0.08)
    drawn = {"image_panels": sum(len(ax.images) for ax in fig.axes),
             "bar_panels": sum(1 for ax in fig.axes if ax.patches), "left_images": len(left),
             "true_names_marked": sum(1 for ax in fig.axes if ax.patches for name in ax.get_yticklabels()
                                      if name.get_color() == TRUE_COLOUR),
             "right_rows": len(right), "right_columns": columns,
             "pixels": list(Image.open(io.BytesIO(buffer.getvalue())).size)}
    plt.close(fig)
    out.write(buffer.getvalue())
    return drawn


def _true_caption(query: dict) -> str:
    named = any(t["label"] == query["label"] for t in query["top5"])
    return f"true: {query['class']}" + ("" if named else "\nnot in the top 5")


def _bars(ax, query: dict) -> None:
    """Five bars, most probable at the top, the class names as the bars' labels on the left."""
    top = query["top5"][::-1]
    ax.barh(range(len(top)), [t["probability"] for t in top], height=0.7,
            color=[TRUE_COLOUR if t["label"] == query["label"] else OTHER_COLOUR for t in top])
    for y, t in enumerate(top):
        inside = t["probability"] > 0.72  # a long bar carries its number inside, in white
        ax.text(t["probability"] - 0.02 if inside else t["probability"] + 0.02, y, f"{t['probability']:.2f}",
                va="center", ha="right" if inside else "left", fontsize=7.5, color="white" if inside else "black")
    ax.set_yticks(range(len(top)), [_short(t["class"], 22) for t in top], fontsize=8)
    for name, t in zip(ax.get_yticklabels(), top):  # the true class stays marked when its bar is too short to see
        if t["label"] == query["label"]:
            name.set_color(TRUE_COLOUR)
            name.set_fontweight("bold")
    ax.set_xlim(0, 1)
    ax.set_xticks([])
    ax.tick_params(axis="y", length=0, pad=3)
    for side in ("top", "right", "bottom"):
        ax.spines[side].set_visible(False)


def _show(ax, image, caption: str, colour: str = "black", weight: str = "normal") -> None:
    ax.imshow(image)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel("\n".join(_short(line, 26) for line in caption.split("\n")), fontsize=8, color=colour, fontweight=weight, labelpad=2)


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"
