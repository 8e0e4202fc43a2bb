"""The suite tests this checkout: the test process, the `alexnet` console script it runs and the Ray
workers of the session's head all import the `jobs`, `pipeline` and `trainer` of the checkout these
tests sit in, whatever the environment's editable install or PYTHONPATH point at (tests/conftest.py).

Each process reports where its modules came from. The CLI and the Ray driver run from a folder
outside the checkout, so that nothing but the harness can put the checkout on their path (a Ray
driver's working directory goes on its workers' sys.path)."""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path

from conftest import ROOT, run_cli

PACKAGES = ("jobs", "pipeline", "trainer")


def module_files() -> dict[str, str]:
    """Where this process finds each package (run in the test process and, pickled by value, in Ray)."""
    return {name: importlib.import_module(name).__file__ for name in PACKAGES}


def assert_from_checkout(files: dict[str, str], who: str) -> None:
    for name, file in files.items():
        assert Path(file).resolve().is_relative_to(ROOT), (
            f"{who} imported {name} from {file}, not from the checkout under test {ROOT}")


def test_the_test_process_imports_this_checkout():
    assert_from_checkout(module_files(), "the test process")


def test_the_alexnet_command_imports_this_checkout(tmp_path):
    # `summary` imports jobs.cli, pipeline.errors and trainer.model; PYTHONVERBOSE makes the interpreter
    # name every source file it loads
    result = run_cli("summary", "--width", "0.25", "--json", env={"PYTHONVERBOSE": "1"}, cwd=str(tmp_path),
                     timeout=120)
    ours = {str(path.relative_to(ROOT)) for package in PACKAGES for path in (ROOT / package).rglob("*.py")}
    loaded = {}  # e.g. "trainer/model.py" -> the file the CLI loaded for it
    for path in re.findall(r"(/[^\s']+\.py)\b", result.stderr):
        for tail in (str(Path(*Path(path).parts[-n:])) for n in (2, 3)):
            if tail in ours:
                loaded.setdefault(tail, set()).add(path)
    assert {"jobs/cli.py", "pipeline/errors.py", "trainer/model.py"} <= loaded.keys(), sorted(loaded)
    for tail, paths in loaded.items():
        assert paths == {str(ROOT / tail)}, f"the alexnet command loaded {tail} from {sorted(paths)}, not {ROOT}"


def test_ray_workers_on_the_session_head_import_this_checkout(ray_head, tmp_path, monkeypatch):
    import ray

    monkeypatch.chdir(tmp_path)  # the driver's working directory is put on its workers' path: not ours
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests/
    ray.init(address=ray_head, logging_level="ERROR")
    try:
        task = ray.remote(num_cpus=0)(module_files)
        # a Ray Train worker is an actor with the run's env_vars in its runtime_env (trainer/driver/launch.py)
        actor = ray.remote(num_cpus=0)(_Where).options(runtime_env={"env_vars": {"ALEXNET_HARNESS": "1"}}).remote()
        in_task, in_actor = ray.get([task.remote(), actor.files.remote()], timeout=120)
    finally:
        ray.shutdown()
        ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    assert_from_checkout(in_task, "a Ray task")
    assert_from_checkout(in_actor, "a Ray actor with a runtime_env")


class _Where:
    def files(self) -> dict[str, str]:
        return module_files()
