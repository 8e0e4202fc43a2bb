"""The cluster definitions in cluster/, checked offline: schema, operator rules, security, references.

Each check is also shown to catch the mistake it exists for, on a broken copy of a real config.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from cluster import check


@pytest.mark.parametrize("path", check.launcher_configs(), ids=lambda p: p.name)
def test_launcher_config_is_valid(path):
    assert check.check_launcher_config(path) == []


@pytest.mark.parametrize("path", check.kuberay_manifests(), ids=lambda p: p.name)
def test_kuberay_manifest_is_valid(path):
    assert check.check_kuberay_manifest(path) == []


def test_every_kind_of_definition_is_there():
    assert {p.name for p in check.launcher_configs()} == {"aws.yaml", "gcp.yaml"}
    kinds = {yaml.safe_load(p.read_text())["kind"] for p in check.kuberay_manifests()}
    assert kinds == {"RayCluster", "RayJob"}
    assert check.check_dockerfile(check.CLUSTER_DIR / "Dockerfile") == []


def _write(tmp_path: Path, name: str, config: dict, header: str = "") -> Path:
    path = tmp_path / name
    path.write_text(header + yaml.safe_dump(config))
    return path


def test_launcher_checks_catch_broken_configs(tmp_path):
    config = yaml.safe_load((check.CLUSTER_DIR / "aws.yaml").read_text())
    cases = {}
    broken = copy.deepcopy(config)
    broken["available_node_types"]["head"]["resources"] = {"CPU": "zero"}  # schema: integers only
    broken["max_workers"] = "many"
    cases["schema"] = broken
    broken = copy.deepcopy(config)
    broken["head_start_ray_commands"][1] = broken["head_start_ray_commands"][1].replace("127.0.0.1", "0.0.0.0")
    cases["dashboard"] = broken
    broken = copy.deepcopy(config)
    broken["worker_start_ray_commands"][1] = broken["worker_start_ray_commands"][1].replace("RAY_AUTH_MODE=token ", "")
    cases["RAY_AUTH_MODE=token"] = broken
    broken = copy.deepcopy(config)
    broken["provider"]["security_group"]["IpPermissions"][0].update(FromPort=0, ToPort=65535)
    cases["internet"] = broken
    broken = copy.deepcopy(config)
    broken["available_node_types"]["gpu_4x_v100"]["resources"]["GPU"] = 1
    broken["available_node_types"]["gpu_4x_a10g"]["resources"]["GPU"] = 3
    cases["even number"] = broken
    broken = copy.deepcopy(config)
    broken["file_mounts"]["~/extra"] = "scripts/setup_node.sh"
    cases["scripts/setup_node.sh does not exist"] = broken
    for expected, broken in cases.items():
        problems = check.check_launcher_config(_write(tmp_path, "c.yaml", broken))
        assert any(expected in p for p in problems), (expected, problems)


def test_references_to_missing_files_flags_or_commands_are_caught(tmp_path):
    header = ("#   alexnet submit -- train --data s3://b/shards --name r --epochz 3\n"
              "#   alexnet shard s3://b/raw s3://b/out --split train --shard-size 1000\n"
              "#   docker build -f cluster/Dockerfile.gpu .\n")
    config = yaml.safe_load((check.CLUSTER_DIR / "gcp.yaml").read_text())
    config["head_setup_commands"].append("bash cluster/scripts/prepare.sh && alexnet inspect gs://b/x --deep")
    problems = check.check_launcher_config(_write(tmp_path, "g.yaml", config, header))
    assert any("--epochz" in p for p in problems), problems
    assert any("--deep" in p for p in problems), problems
    assert any("cluster/scripts/prepare.sh" in p for p in problems), problems
    assert any("cluster/Dockerfile.gpu" in p for p in problems), problems
    assert not any("--shard-size" in p for p in problems), problems  # a valid command passes


def test_kuberay_checks_catch_what_the_operator_rejects(tmp_path):
    job = yaml.safe_load((check.CLUSTER_DIR / "kuberay" / "rayjob-train.yaml").read_text())
    spec = job["spec"]["rayClusterSpec"]
    cases = {}
    broken = copy.deepcopy(job)
    broken["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0
    cases["map of strings"] = broken
    broken = copy.deepcopy(job)
    broken["spec"]["rayClusterSpec"]["authOptions"] = {"mode": "disabled"}
    cases["authOptions.mode must be token"] = broken
    broken = copy.deepcopy(job)
    broken["spec"]["rayClusterSpec"]["rayVersion"] = "2.40.0"
    cases["needs Ray >= 2.52"] = broken
    broken = copy.deepcopy(job)
    broken["spec"]["rayClusterSpec"]["headGroupSpec"]["serviceType"] = "LoadBalancer"
    cases["ClusterIP"] = broken
    broken = copy.deepcopy(job)
    del broken["spec"]["entrypoint"]
    cases["entrypoint is required"] = broken
    broken = copy.deepcopy(job)
    broken["spec"]["clusterSelector"] = {"ray.io/cluster": "alexnet"}
    cases["exactly one of"] = broken
    broken = copy.deepcopy(job)
    broken["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"] = 9
    cases["minReplicas <= replicas"] = broken
    broken = copy.deepcopy(job)
    del broken["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["image"]
    cases["name and image"] = broken
    broken = copy.deepcopy(job)
    broken["spec"]["entrypoint"] = "python -m jobs.cli train --data s3://b --nme x"
    cases["--nme"] = broken
    assert spec["authOptions"]["mode"] == "token"
    for expected, broken in cases.items():
        problems = check.check_kuberay_manifest(_write(tmp_path, "j.yaml", broken))
        assert any(expected in p for p in problems), (expected, problems)


def test_documented_commands_are_real():
    """Every `alexnet ...` line of the README and the docs pages parses with the real CLI parser."""
    pages = [check.PROJECT_ROOT / "README.md", *sorted((check.PROJECT_ROOT / "docs").glob("*.md"))]
    text = "\n".join(page.read_text() for page in pages)
    assert text.count("alexnet submit") > 4 and text.count("alexnet demo") > 3
    assert check.check_commands(text) == []
    assert check.check_commands("alexnet submit --wait -- train --data x --name y") != []


@pytest.mark.parametrize("name", ["raycluster.yaml", "rayjob-train.yaml"])
def test_kuberay_checks_catch_a_head_that_publishes_no_or_wrong_limits(tmp_path, name):
    manifest = yaml.safe_load((check.CLUSTER_DIR / "kuberay" / name).read_text())

    def cluster(doc):
        return doc["spec"]["rayClusterSpec"] if doc["kind"] == "RayJob" else doc["spec"]

    def head(doc):
        return cluster(doc)["headGroupSpec"]["template"]["spec"]["containers"][0]

    cases = {}
    broken = copy.deepcopy(manifest)
    del head(broken)["lifecycle"]
    cases["the head must publish the cluster's limits"] = broken
    broken = copy.deepcopy(manifest)  # a fixed name: on a RayJob's generated cluster, another cluster's limits
    command = head(broken)["lifecycle"]["postStart"]["exec"]["command"]
    command[-1] = command[-1].replace('"$ALEXNET_RAY_CLUSTER"', "alexnet")
    cases["--kuberay must come from the head pod's own metadata.labels['ray.io/cluster']"] = broken
    broken = copy.deepcopy(manifest)
    head(broken)["env"] = [e for e in head(broken)["env"] if e["name"] != "ALEXNET_NAMESPACE"]
    cases["--namespace must come from the head pod's own metadata.namespace"] = broken
    broken = copy.deepcopy(manifest)  # Ray would advertise (and publish) 4 GPUs on pods that have 2
    cluster(broken)["workerGroupSpecs"][-1]["rayStartParams"]["num-gpus"] = "4"
    cases["rayStartParams num-gpus '4' disagrees with its container's nvidia.com/gpu limit '2'"] = broken
    broken = copy.deepcopy(manifest)
    cluster(broken)["workerGroupSpecs"][-1]["rayStartParams"]["num-gpus"] = "two"
    cases["KubeRay's autoscaler cannot read the worker groups' limits"] = broken
    for expected, broken in cases.items():
        problems = check.check_kuberay_manifest(_write(tmp_path, name, broken))
        assert any(expected in p for p in problems), (expected, problems)
