"""Can the cluster hold this training run: now, once the autoscaler adds nodes, or never?

A cluster started from `cluster/` has a head without CPUs for work and worker groups at zero nodes, so
what is up at submit time says nothing. Where the cluster publishes its limits (Ray's ClusterConfig
record, read with `ray._private.state.state.get_cluster_config()`, the source Ray Train's own worker
group checks; `cluster/limits.py` publishes it for the clusters we define), a request is judged against
the node types and their max counts: one that can never fit fails at once, one that fits waits for its
nodes (wait_for_nodes), then starts. A cluster that publishes no limits but runs an autoscaler (one not defined
here: neither Ray's autoscaler nor KubeRay's publishes them; trainer/driver/autoscaler.py finds it where `ray
status` does) is waited on too, saying that without limits "not yet" cannot be told from "never". One
without an autoscaler keeps the immediate check against what is up, and the error says how to publish
limits. Every wait ends after `wait_timeout` seconds with one line naming what never came.
"""

from __future__ import annotations

import math
import time

from pipeline.errors import UserError
from trainer.config import TrainConfig

WAIT_REPORT_SECONDS = 10.0
PUBLISH_HINT = (", publishes no autoscaling limits and reports no autoscaler (`ray status` would show one); if "
                "it autoscales, run `python -m cluster.limits AUTOSCALER_CONFIG` on its head, as cluster/aws.yaml does")


def worker_request(config: TrainConfig) -> dict[str, float]:
    """What one Ray Train worker reserves (ScalingConfig.resources_per_worker)."""
    request = {"CPU": float(config.cpus_per_worker)}
    if config.gpus_per_worker:
        request["GPU"] = float(config.gpus_per_worker)
    return request


def check(config: TrainConfig) -> str | None:
    """Raise UserError if the request can never be met; return a line saying what must still start
    (None when the cluster holds it now). Call after ray.init()."""
    import ray

    per_worker = worker_request(config)
    up = ray.cluster_resources()
    if _fits_totals(per_worker, config.workers, up):
        return None
    groups = _node_groups()
    if groups is None:
        from trainer.driver.autoscaler import running_autoscaler

        autoscaler = running_autoscaler()
        if autoscaler is None:
            _check_now(config, up)  # raises: without published limits or an autoscaler, what is up is all there is
            return None
        return (f"{_asks(config)}; up now: {_up(up)}; the cluster publishes no autoscaling limits but runs "
                f"an autoscaler ({autoscaler}), so this cannot tell nodes not started yet from nodes that "
                f"never will: {_giving_up(config)}")
    placeable = sum(fit * count for resources, count in groups if (fit := _workers_on_node(per_worker, resources)))
    if placeable < config.workers:
        raise UserError(f"{_asks(config)}; the cluster can grow to at most {_describe(groups)} nodes, "
                        f"room for {placeable:g} such worker(s): lower --workers or the per-worker resources")
    return f"{_asks(config)}; the autoscaler can add them ({_describe(groups)}); {_giving_up(config)}"


def wait_for_nodes(config: TrainConfig, reason: str) -> None:
    """Hold what the run needs in a placement group of Ray Train's shape (one bundle per worker, PACK),
    which is what makes an autoscaler add nodes, until it is placed; print what is waited for and what
    is up meanwhile. The group is removed before Ray Train asks for its own on the nodes now up. After
    `wait_timeout` seconds a UserError says what never came; nothing was written by then."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    started = time.monotonic()
    timeout = config.wait_timeout or float("inf")
    group = placement_group([worker_request(config)] * config.workers, strategy="PACK")
    print(f"alexnet train: waiting for nodes: {reason}", flush=True)
    try:
        # Ray waits whole seconds (a fraction is 0: no wait at all), so each wait is 1 to 10 s
        while not group.wait(timeout_seconds=max(1, math.ceil(min(WAIT_REPORT_SECONDS,
                                                                  timeout - (time.monotonic() - started))))):
            waited = time.monotonic() - started
            if waited >= timeout:
                raise UserError(f"gave up after waiting {waited:.0f} s (wait_timeout) for nodes that never came: "
                                f"{_asks(config)}; up: {_up(ray.cluster_resources())}")
            print(f"alexnet train: still waiting ({waited:.0f} s) for {_asks(config)}; "
                  f"up now: {_up(ray.cluster_resources())}", flush=True)
    finally:
        remove_placement_group(group)
    print(f"alexnet train: nodes up after {time.monotonic() - started:.0f} s", flush=True)


def _up(resources: dict) -> str:
    import ray

    return f"{sum(n['Alive'] for n in ray.nodes())} node(s) with {_format(resources)}"


def _giving_up(config: TrainConfig) -> str:
    if not config.wait_timeout:
        return "waiting without end (wait_timeout 0)"
    return f"giving up after {config.wait_timeout:g} s (--wait-timeout)"


def _asks(config: TrainConfig) -> str:
    return f"--workers {config.workers} x {_format(worker_request(config))} each"


def _format(resources: dict) -> str:
    shown = {k: v for k, v in resources.items() if k in ("CPU", "GPU") or k.startswith("accelerator")}
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in sorted(shown.items())) + "}" if shown else "{}"


def _describe(groups: list[tuple[dict, int]]) -> str:
    parts = [f"{'unlimited' if count == float('inf') else count} x {_format(resources)}" for resources, count in groups
             if count != 0 and _format(resources) != "{}"]
    return ", ".join(parts) or "no nodes"


def _fits_totals(per_worker: dict, workers: int, resources: dict) -> bool:
    return all(resources.get(k, 0) >= v * workers for k, v in per_worker.items())


def _workers_on_node(per_worker: dict, node: dict) -> float:
    """How many workers one node of this type holds (a worker never spans nodes)."""
    return min(int(node.get(k, 0) // v) for k, v in per_worker.items() if v > 0)


def _node_groups() -> list[tuple[dict, int]] | None:
    """(resources of one node, max node count; -1 unlimited) per node type, or None if unpublished."""
    from ray._private import state

    published = state.state.get_cluster_config()
    if published is None or not published.node_group_configs:
        return None
    groups = []
    for group in published.node_group_configs:
        count = float("inf") if group.max_count == -1 else group.max_count
        groups.append((dict(group.resources), count))
    return groups


def _check_now(config: TrainConfig, resources: dict) -> None:
    need_gpus = config.workers * config.gpus_per_worker
    have_gpus = int(resources.get("GPU", 0))
    if need_gpus > have_gpus:
        raise UserError(f"--workers {config.workers} x --gpus-per-worker {config.gpus_per_worker} asks for "
                        f"{need_gpus} GPUs; the Ray cluster has {have_gpus}{PUBLISH_HINT}")
    need_cpus = config.workers * config.cpus_per_worker
    have_cpus = int(resources.get("CPU", 0))
    if need_cpus > have_cpus:
        raise UserError(f"--workers {config.workers} x cpus_per_worker {config.cpus_per_worker} asks for "
                        f"{need_cpus} CPUs; the Ray cluster has {have_cpus}{PUBLISH_HINT}")
