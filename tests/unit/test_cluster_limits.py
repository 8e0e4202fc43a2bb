"""cluster/limits.py: an autoscaler config or a KubeRay manifest becomes the limits record Ray itself reads
(Ray Train's worker group and `alexnet train` both judge requests by it)."""

from ray._private.state import GlobalState

from cluster.check import CLUSTER_DIR, launcher_configs
from cluster.limits import autoscaler_config_from_manifest, cluster_config_proto, main

CONFIG = {"max_workers": 4, "head_node_type": "head",
          "available_node_types": {"head": {"resources": {"CPU": 0}, "max_workers": 0},
                                   "cpu": {"resources": {"CPU": 4}, "min_workers": 0, "max_workers": 2},
                                   "gpu": {"resources": {"CPU": 8, "GPU": 2}, "min_workers": 1, "max_workers": 3}}}


def test_ray_reads_the_node_types_and_the_cluster_wide_node_limit():
    proto = cluster_config_proto(CONFIG)
    assert _groups(proto) == {"head": ({}, 1, 1), "cpu": ({"CPU": 4}, 0, 2), "gpu": ({"CPU": 8, "GPU": 2}, 1, 3)}
    # per type 2 x 4 + 3 x 8 = 32 CPUs, but only 4 worker nodes at once: the three 8-CPU ones and a 4-CPU one
    assert GlobalState._calculate_max_resource_from_cluster_config(proto, "CPU") == 28
    assert GlobalState._calculate_max_resource_from_cluster_config(proto, "GPU") == 6


def test_every_launcher_config_publishes_its_limits():
    import yaml

    for path in launcher_configs():
        config = yaml.safe_load(path.read_text())
        assert any("python -m cluster.limits ~/ray_bootstrap_config.yaml" in c
                   for c in config["head_start_ray_commands"]), path
        gpus = GlobalState._calculate_max_resource_from_cluster_config(cluster_config_proto(config), "GPU")
        assert gpus and gpus > 0, path


GiB = 2**30


def _groups(proto) -> dict:
    return {g.name: (dict(g.resources), g.min_count, g.max_count) for g in proto.node_group_configs}


def _manifest(name: str) -> dict:
    import yaml

    return yaml.safe_load((CLUSTER_DIR / "kuberay" / name).read_text())


def test_a_rayclusters_worker_groups_become_its_limits():
    proto = cluster_config_proto(autoscaler_config_from_manifest(_manifest("raycluster.yaml")))
    # no rayStartParams: resources are the containers' limits; the head has num-cpus "0"
    assert _groups(proto) == {"headgroup": ({"memory": 16 * GiB}, 1, 1),
                              "cpu-shard": ({"CPU": 16, "memory": 32 * GiB}, 0, 8),
                              "gpu-2x": ({"CPU": 16, "GPU": 2, "memory": 64 * GiB}, 0, 8)}
    assert GlobalState._calculate_max_resource_from_cluster_config(proto, "GPU") == 16
    assert GlobalState._calculate_max_resource_from_cluster_config(proto, "CPU") == 256


def test_a_rayjobs_embedded_cluster_becomes_its_limits():
    proto = cluster_config_proto(autoscaler_config_from_manifest(_manifest("rayjob-train.yaml")))
    assert _groups(proto) == {"headgroup": ({"memory": 16 * GiB}, 1, 1),
                              "gpu-2x": ({"CPU": 16, "GPU": 2, "memory": 64 * GiB}, 4, 4)}
    assert GlobalState._calculate_max_resource_from_cluster_config(proto, "GPU") == 8


def test_ray_start_params_win_over_container_limits():
    cluster = _manifest("raycluster.yaml")
    group = cluster["spec"]["workerGroupSpecs"][1]
    group["rayStartParams"] = {"num-cpus": "8", "num-gpus": "4", "resources": '"{\\"tower\\": 2}"'}
    group["template"]["spec"]["containers"][0]["resources"] = {}
    group["maxReplicas"] = 3
    proto = cluster_config_proto(autoscaler_config_from_manifest(cluster))
    assert _groups(proto)["gpu-2x"] == ({"CPU": 8, "GPU": 4, "tower": 2}, 0, 3)
    assert GlobalState._calculate_max_resource_from_cluster_config(proto, "tower") == 6


def test_the_cli_shows_what_a_manifest_publishes(capsys):
    assert main([str(CLUSTER_DIR / "kuberay" / "rayjob-train.yaml"), "--show"]) == 0
    assert 'name: "gpu-2x"' in capsys.readouterr().out
