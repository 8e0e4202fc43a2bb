"""cluster/limits.py: an autoscaler config becomes the limits record Ray itself reads (Ray Train's worker
group and `alexnet train` both judge requests by it)."""

from ray._private.state import GlobalState

from cluster.check import launcher_configs
from cluster.limits import cluster_config_proto

CONFIG = {"max_workers": 4, "head_node_type": "head",
          "available_node_types": {"head": {"resources": {"CPU": 0}, "max_workers": 0},
                                   "cpu": {"resources": {"CPU": 4}, "min_workers": 0, "max_workers": 2},
                                   "gpu": {"resources": {"CPU": 8, "GPU": 2}, "min_workers": 1, "max_workers": 3}}}


def test_ray_reads_the_node_types_and_the_cluster_wide_node_limit():
    proto = cluster_config_proto(CONFIG)
    groups = {g.name: (dict(g.resources), g.min_count, g.max_count) for g in proto.node_group_configs}
    assert groups == {"head": ({}, 1, 1), "cpu": ({"CPU": 4}, 0, 2), "gpu": ({"CPU": 8, "GPU": 2}, 1, 3)}
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
