"""The Python examples of README.md and of every docs/ page run, so they cannot rot: every ```python
block's imports execute, and the blocks listed in RUNNABLE run whole on the small test dataset, with the
few names a reader supplies (rank, device, the dataset folder) substituted. A new block gets its imports
checked at once; make it runnable by adding its substitutions here."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = next(folder for folder in Path(__file__).resolve().parents if (folder / "mkdocs.yml").is_file())
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]

# (page, the block's first line) -> {text in the block: what the test runs instead}; every text must be there
RUNNABLE = {
    ("docs/loaders.md", "from pipeline.loader import TrainLoader, EvalLoader, BatchTransform"): {
        '"out/", 128,': '"out/", 8,',  # the small dataset's 120 samples: batches of 8
        '"out/"': "DATASET",
        "num_workers=6": "num_workers=0",  # decode processes' start-up is the loader tests' business
        "pin_memory=True": "pin_memory=False",  # no GPU here
        "range(start_epoch, 90)": "range(89, 90)",  # one epoch
    },
    ("README.md", "from pipeline.loader import TrainLoader, BatchTransform"): {
        '"out/", 128,': '"out/", 8,',
        '"out/"': "DATASET",
        "num_workers=6": "num_workers=0",
        "range(90)": "range(1)",
    },
    ("docs/model.md", "from trainer.model import AlexNet, default_devices"): {'"cuda:0"': '"cpu"', '"cuda:1"': '"cpu"'},
}


# modules an example imports from an export folder, not from an installed package: tests/integration/test_predict_export.py runs
# that example whole, in a Python without this project, on a real export
EXPORT_MODULES = {"preprocessing"}


def python_blocks() -> list[tuple[str, str]]:
    """(page relative to the root, block) for every ```python block of the README and the docs."""
    return [(str(page.relative_to(ROOT)), block) for page in PAGES
            for block in re.findall(r"^```python\n(.*?)^```", page.read_text(), re.S | re.M)]


def test_the_pages_have_the_examples_this_test_knows():
    firsts = {(page, block.splitlines()[0]) for page, block in python_blocks()}
    assert set(RUNNABLE) <= firsts, f"python blocks now start {sorted(firsts)}: update RUNNABLE"


@pytest.mark.parametrize("page, block", python_blocks(), ids=lambda x: x.splitlines()[0][:60])
def test_every_python_block_imports(page, block):
    tree = ast.parse(block)
    imports = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))
               and not (isinstance(node, ast.Import) and {a.name for a in node.names} <= EXPORT_MODULES)]
    assert imports or not block.strip()
    exec(compile(ast.Module(imports, type_ignores=[]), page, "exec"), {})


@pytest.mark.parametrize("page, first", sorted(RUNNABLE))
def test_python_block_runs(page, first, small_dataset):
    block = next(b for p, b in python_blocks() if p == page and b.splitlines()[0] == first)
    for text, instead in RUNNABLE[page, first].items():
        assert text in block, f"{page}'s block `{first}` no longer holds {text}: update RUNNABLE"
        block = block.replace(text, instead)
    names = {"DATASET": small_dataset, "rank": 0, "world_size": 1, "device": "cpu", "checkpoint": {}}
    exec(compile(block, page, "exec"), names)
    if "checkpoint" in block:  # the loaders' example: one epoch went by, its position saved
        assert names["checkpoint"]["loader"]["epoch"] == 89 and names["x"].dtype.is_floating_point
    if "loader" in names:
        assert names["x"].dtype.is_floating_point and names["x"].shape[1:] == (3, 224, 224)
