"""README.md's Python examples run, so they cannot rot: every ```python block's imports execute, and the
blocks listed in RUNNABLE run whole on the small test dataset, with the few names a reader supplies
(rank, device, the dataset folder) substituted. A new block gets its imports checked at once; make it
runnable by adding its substitutions here. Its map of the code ("How the code is laid out") names
every module of pipeline/, trainer/ and jobs/, and no module that is gone."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"

# the block's first line -> (text in the block -> what the test runs instead); every text must be there
RUNNABLE = {
    "from pipeline.loader import TrainLoader, EvalLoader, BatchTransform": {
        '"out/", 128,': '"out/", 8,',  # the small dataset's 120 samples: batches of 8
        '"out/"': "DATASET",
        "num_workers=6": "num_workers=0",  # decode processes' start-up is the loader tests' business
        "pin_memory=True": "pin_memory=False",  # no GPU here
        "range(start_epoch, 90)": "range(89, 90)",  # one epoch
    },
    "from trainer.model import AlexNet, default_devices": {'"cuda:0"': '"cpu"', '"cuda:1"': '"cpu"'},
}


def python_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", README.read_text(), re.S | re.M)


def test_the_readme_has_the_examples_this_test_knows():
    firsts = [block.splitlines()[0] for block in python_blocks()]
    assert set(RUNNABLE) <= set(firsts), f"README blocks now start {firsts}: update RUNNABLE"


@pytest.mark.parametrize("block", python_blocks(), ids=lambda block: block.splitlines()[0][:60])
def test_every_readme_block_imports(block):
    tree = ast.parse(block)
    imports = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
    assert imports or not block.strip()
    exec(compile(ast.Module(imports, type_ignores=[]), "README.md", "exec"), {})


@pytest.mark.parametrize("first", sorted(RUNNABLE))
def test_readme_block_runs(first, small_dataset):
    block = next(b for b in python_blocks() if b.splitlines()[0] == first)
    for text, instead in RUNNABLE[first].items():
        assert text in block, f"README's block `{first}` no longer holds {text}: update RUNNABLE"
        block = block.replace(text, instead)
    names = {"DATASET": small_dataset, "rank": 0, "world_size": 1, "device": "cpu", "checkpoint": {}}
    exec(compile(block, "README.md", "exec"), names)
    if "checkpoint" in block:  # the loaders' example: one epoch went by, its position saved
        assert names["checkpoint"]["loader"]["epoch"] == 89 and names["x"].dtype.is_floating_point


def mapped_paths() -> set[str]:
    """The files the README's map names: two spaces of indent per folder level, names before the text."""
    text = README.read_text()
    section = text[text.index("## How the code is laid out"):]
    tree = re.findall(r"^```\n(.*?)^```", section, re.S | re.M)[1]  # the first block is the data flow
    folders, paths = [], set()
    for line in tree.splitlines():
        depth = (len(line) - len(line.lstrip())) // 2
        names = re.split(r"\s{2,}", line.strip())[0]
        folders = folders[:depth]
        for name in names.split(", "):
            if name.endswith("/"):
                folders.append(name)
            else:
                paths.add("".join(folders) + name)
    return paths


def test_the_readme_map_names_every_module():
    modules = {str(path.relative_to(ROOT)) for package in ("pipeline", "trainer", "jobs")
               for path in (ROOT / package).rglob("*.py") if path.name != "__init__.py"}
    mapped = {path for path in mapped_paths() if path.split("/")[0] in ("pipeline", "trainer", "jobs")}
    assert "trainer/state.py" in mapped and "pipeline/loader/plan.py" in mapped  # the map was read
    assert sorted(modules - mapped) == [], "modules the README's map does not name"
    assert sorted(mapped - modules) == [], "the README's map names modules that are gone"
