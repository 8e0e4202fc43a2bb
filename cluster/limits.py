"""Publish what an autoscaling cluster can grow to, where Ray Train and `alexnet train` look for it.

Ray reads a cluster's limits from the GCS (`ray._private.state.state.get_max_resources_from_cluster_config()`,
which Ray Train's worker group uses to refuse a request no node set can ever hold), but the open-source
autoscaler of Ray 2.60 never writes them: only hosted platforms do. Without them a job cannot tell
"no nodes yet" from "never". This module turns the autoscaler's own config (its node types with their
resources and min/max workers, and the cluster-wide max_workers) into Ray's ClusterConfig record and
stores it in the GCS under Ray's key, so both checks see the real limits.

On KubeRay the node types live in the RayCluster object (a RayJob's `rayClusterSpec` becomes one). They
are turned into an autoscaler config by the very function KubeRay's autoscaler runs on them (Ray's
`kuberay/autoscaling_config.py`: resources from rayStartParams, else the container's limits), so the
published limits are the ones the autoscaler scales by. The head reads its own RayCluster from the
Kubernetes API at start (its service account already may: the autoscaler sidecar shares it), so the
manifest stays the only place the numbers are written.

    python -m cluster.limits ~/ray_bootstrap_config.yaml --address 127.0.0.1:6379   # launcher head, after ray start
    python -m cluster.limits --kuberay CLUSTER --namespace NS                       # KubeRay head (postStart hook)
    python -m cluster.limits cluster/kuberay/raycluster.yaml --show                 # what a manifest publishes
"""

from __future__ import annotations

import argparse
import sys

import yaml


def cluster_config_proto(autoscaler_config: dict):
    """The autoscaler YAML (as a dict) as Ray's autoscaler_pb2.ClusterConfig."""
    from ray.core.generated import autoscaler_pb2

    proto = autoscaler_pb2.ClusterConfig()
    node_types = autoscaler_config.get("available_node_types") or {}
    head_type = autoscaler_config.get("head_node_type")
    for name, spec in node_types.items():
        resources = {k: int(v) for k, v in (spec.get("resources") or {}).items() if int(v) > 0}
        max_count = 1 if name == head_type else int(spec.get("max_workers", 0))
        min_count = 1 if name == head_type else int(spec.get("min_workers", 0))
        group = proto.node_group_configs.add(name=name, min_count=min_count, max_count=max_count)
        group.resources.update(resources)
    for key, value in _max_resources(autoscaler_config).items():
        proto.max_resources[key] = value
    return proto


def autoscaler_config_from_manifest(manifest: dict, namespace: str = "default") -> dict:
    """A RayCluster manifest (or a RayJob's embedded cluster) as the autoscaler config KubeRay's autoscaler uses."""
    from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr

    spec = manifest.get("spec") or {}
    if manifest.get("kind") == "RayJob":
        spec = spec.get("rayClusterSpec") or {}
    metadata = {"namespace": namespace, **(manifest.get("metadata") or {})}
    return _derive_autoscaling_config_from_ray_cr({"metadata": metadata, "spec": spec})


def autoscaler_config_from_kubernetes(cluster: str, namespace: str) -> dict:
    """The live RayCluster's autoscaler config, read the way KubeRay's autoscaler sidecar reads it."""
    from ray.autoscaler._private.kuberay.autoscaling_config import AutoscalingConfigProducer

    return AutoscalingConfigProducer(cluster, namespace)()


def _max_resources(autoscaler_config: dict) -> dict[str, int]:
    """Per resource, the most the cluster-wide `max_workers` node count allows (largest nodes first)."""
    node_types = autoscaler_config.get("available_node_types") or {}
    limit = autoscaler_config.get("max_workers")
    if limit is None:
        return {}
    head_type = autoscaler_config.get("head_node_type")
    keys = {k for spec in node_types.values() for k in (spec.get("resources") or {})}
    result = {}
    for key in keys:
        sizes = []
        for name, spec in node_types.items():
            count = 1 if name == head_type else int(spec.get("max_workers", 0))
            sizes += [int((spec.get("resources") or {}).get(key, 0))] * count
        head = [int((node_types.get(head_type, {}).get("resources") or {}).get(key, 0))] if head_type else []
        workers = sorted(sizes, reverse=True)
        if head:
            workers.remove(head[0])
        result[key] = sum(head) + sum(workers[: int(limit)])
    return result


def publish(autoscaler_config: dict, gcs_address: str) -> None:
    """Store the limits in the GCS under the key Ray's get_cluster_config() reads."""
    import ray._raylet

    client = ray._raylet.GcsClient(address=gcs_address)
    client.internal_kv_put(ray._raylet.GCS_AUTOSCALER_CLUSTER_CONFIG_KEY.encode(),
                           cluster_config_proto(autoscaler_config).SerializeToString(), True,
                           ray._raylet.GCS_AUTOSCALER_STATE_NAMESPACE.encode())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cluster.limits", description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?",
                        help="the autoscaler config the head runs with (ray_bootstrap_config.yaml), "
                             "or a KubeRay RayCluster / RayJob manifest")
    parser.add_argument("--kuberay", metavar="CLUSTER", help="read the RayCluster CLUSTER from the Kubernetes API")
    parser.add_argument("--namespace", default="default", help="namespace of the RayCluster (default: default)")
    parser.add_argument("--address", default="127.0.0.1:6379", help="GCS address of this cluster")
    parser.add_argument("--show", action="store_true", help="print the limits instead of publishing them")
    args = parser.parse_args(argv)
    if (args.config is None) == (args.kuberay is None):
        parser.error("give exactly one of CONFIG and --kuberay CLUSTER")
    if args.kuberay:
        source, config = f"RayCluster {args.namespace}/{args.kuberay}", autoscaler_config_from_kubernetes(
            args.kuberay, args.namespace)
    else:
        import os

        source = args.config
        with open(os.path.expanduser(args.config)) as f:
            config = yaml.safe_load(f)
        if "kind" in config:  # a Kubernetes object, not a launcher config
            config = autoscaler_config_from_manifest(config, args.namespace)
    if args.show:
        print(cluster_config_proto(config))
        return 0
    publish(config, args.address)
    print(f"cluster limits from {source} published to {args.address}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
