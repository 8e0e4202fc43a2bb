"""The code's shape, read statically (ast, no imports run): no import circles among the project's modules,
no import running back up the layers, no function in trainer/, pipeline/ or jobs/ with more parameters than
a reader can hold."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("cluster", "jobs", "pipeline", "trainer")
MAX_PARAMETERS = 8
CROWD_CHECKED = ("trainer", "pipeline", "jobs")


def module_files() -> dict[str, Path]:
    files = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return files


def imports(path: Path, name: str, modules: set[str]) -> set[str]:
    """The project's modules this one imports anywhere, top level or inside a function (a lazy import
    still closes a circle; only its timing differs). `from a import b` means module a.b if that is one."""
    found = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            found |= {f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names}
    return {module for module in found if module in modules and module != name}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One circle per strongly connected component of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_cycle_finder_finds_a_circle_through_a_lazy_import(tmp_path):
    package = tmp_path / "demo"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from demo import b\n")
    (package / "b.py").write_text("def f():\n    from demo.c import g\n")
    (package / "c.py").write_text("from . import a\n")
    names = {"demo", "demo.a", "demo.b", "demo.c"}
    paths = {"demo": package / "__init__.py", **{n: package / f"{n[5:]}.py" for n in names - {"demo"}}}
    assert cycles({n: imports(paths[n], n, names) for n in names}) == [["demo.a", "demo.b", "demo.c"]]


def test_no_import_circles_among_the_project_modules():
    files = module_files()
    graph = {name: imports(path, name, set(files)) for name, path in files.items()}
    assert len(graph) > 40 and graph["jobs.cli"] >= {"jobs.parser"}  # the graph was read
    assert cycles(graph) == [], "modules that import each other in a circle"


def test_imports_never_run_back_up_the_layers():
    """cluster -> jobs -> trainer -> pipeline (docs/layout.md)."""
    layer = {"pipeline": 0, "trainer": 1, "jobs": 2, "cluster": 3}
    files = module_files()
    upward = sorted(f"{name} -> {other}" for name, path in files.items() for other in imports(path, name, set(files))
                    if layer[other.split(".")[0]] > layer[name.split(".")[0]])
    assert upward == []


def test_no_function_takes_more_than_eight_parameters():
    crowded = []
    for path in sorted(path for package in CROWD_CHECKED for path in (ROOT / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                args = node.args
                names = [a.arg for a in args.posonlyargs + args.args + args.kwonlyargs]
                count = len(names) + bool(args.vararg) + bool(args.kwarg) - (names[:1] in (["self"], ["cls"]))
                if count > MAX_PARAMETERS:
                    crowded.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({count})")
    assert crowded == [], "hand these functions an object (a config, the run state) instead"


def test_the_shard_options_are_the_shard_commands_flags():
    """`alexnet shard`'s flags fill ShardOptions whole (no field copied by hand): same names, same defaults."""
    from jobs.parser import build_parser
    from pipeline.shard.options import ShardOptions

    args = build_parser().parse_args(["shard", "in", "out", "--split", "val"])
    assert ShardOptions.from_args(args) == ShardOptions(src="in", out="out", split="val")
    flags = {name for name in vars(args) if name != "command"}
    assert flags == {field.name for field in dataclasses.fields(ShardOptions)}
