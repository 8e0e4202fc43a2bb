"""Every command that starts Ray runs on the instance the user named (--address, else RAY_ADDRESS) or on a
new private one of its own, never on one it finds on the machine (pipeline/ray_instance.py); relative
paths are the user's, whichever cluster runs the tasks. `alexnet train` beside a foreign head is checked
in tests/integration/test_new_user.py (the same fixture)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import alexnet_cmd, drivers_of, run_cli
from helpers.imagenet_trees import class_tree, sample_files
from pipeline.ray_instance import chosen_address


def test_the_flag_then_ray_address_else_a_private_instance(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert chosen_address(None) is None  # never Ray's own search (ray_current_cluster, running GCSs)
    assert chosen_address("10.0.0.5:6379") == "10.0.0.5:6379"
    monkeypatch.setenv("RAY_ADDRESS", "")  # set but empty, as `RAY_ADDRESS= alexnet ...` gives it
    assert chosen_address(None) is None
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.7:6379")
    assert chosen_address(None) == "10.0.0.7:6379"
    assert chosen_address("auto") == "auto"  # the flag wins over the environment
    assert chosen_address("local") is None  # Ray's word for a new instance: ours, private, as with no address
    monkeypatch.setenv("RAY_ADDRESS", "local")
    assert chosen_address(None) is None


PROBE = """
import json, os, ray
from pipeline.ray_instance import own_ray
with own_ray(None, {"ALEXNET_PROBE": "seen"}, include_dashboard=False, num_cpus=1) as address:
    task = ray.remote(num_cpus=1)(lambda: (os.environ.get("ALEXNET_PROBE"), os.environ.get("RAY_ADDRESS"), os.getpid()))
    seen = [ray.get(task.remote()) for _ in range(3)]
    probe, told = seen[-1][:2]
    pids = {pid for _, _, pid in seen}
    print(json.dumps({"probe": probe, "told": told, "address": address, "pids": len(pids),
                      "job_env": ray.get_runtime_context().runtime_env, "driver_env": os.environ.get("ALEXNET_PROBE")}))
"""


def test_a_private_instance_hands_its_env_to_the_workers_ray_prestarted(tmp_path):
    """The job's env reaches every worker through the instance's own environment, not a job runtime_env,
    which would leave the workers Ray prestarts unusable and start as many again (~1 CPU-s each)."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    result = subprocess.run([sys.executable, "-c", PROBE], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["probe"] == "seen" and seen["told"] == seen["address"] != "local"
    assert seen["job_env"] == {} and seen["pids"] == 1  # one CPU, one worker: the prestarted one
    assert seen["driver_env"] is None  # the command's own environment is as it was


@pytest.mark.slow
def test_shard_beside_a_foreign_ray_keeps_to_its_own_instance_and_the_users_folder(foreign_ray, ray_head,
                                                                                   tmp_path):
    user = tmp_path / "user"
    class_tree(user / "images", sample_files()[:3], per_class=2)
    # no address and Ray's own auth default (the suite pins it off); its token goes to a home of its own
    no_address = {**{k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")},
                  "HOME": str(tmp_path / "home")}
    command = subprocess.Popen(alexnet_cmd("shard", "images", "out", "--split", "train", "--shard-size", "4",
                                           "--limit", "4"),  # the first two classes' images
                               cwd=user, env=no_address, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    console = command.communicate(timeout=300)[0]
    assert command.returncode == 0, console
    assert json.loads((user / "out" / "train.manifest.json").read_text())["total_samples"] == 4
    assert ("warning: --limit 4: no samples for 1 class of 3 (their inputs come after the first 4)" in console
            and "hold no input" not in console)  # no class folder is empty: --limit left it out
    assert "Token authentication" not in console  # a private instance needs no alarm
    assert (tmp_path / "home" / ".ray" / "auth_token").is_file()  # and has token auth, as by Ray's default
    # a named cluster started from another folder (the session's head, started from the repository): the
    # tasks run there, and still write where the user's relative path points
    named = run_cli("shard", "images", "out", "--split", "val", "--shard-size", "4", "--address", ray_head,
                    cwd=user, timeout=300)
    assert json.loads((user / "out" / "val.manifest.json").read_text())["total_samples"] == 6
    # (and the val split given the train split's own folder is warned of)
    assert f"warning: {user / 'images'} is (or overlaps) {user / 'images'}, which the train split" in named.stderr
    assert not (foreign_ray["cwd"] / "out").exists()
    assert command.pid not in drivers_of(foreign_ray["session"])  # it never joined the foreign head
