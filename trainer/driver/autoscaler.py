"""Is an autoscaler running on this Ray cluster? What Ray 2.60 itself records, read the way `ray status` reads it.

A cluster that publishes no limits (trainer/driver/resources.py) may still autoscale: someone's own `ray up`
config, a KubeRay cluster without our postStart hook, a hosted service. Ray records its autoscaler's
state in the GCS whether or not limits are published:

- autoscaler v1 (the default, and KubeRay's sidecar without v2): the monitor writes a JSON status to the
  internal KV key `__autoscaling_status` every update. Every head runs such a monitor, also one without
  an autoscaling config: that one runs a read-only provider whose node types are named after the nodes
  (`node_<node id hex>`, Ray's `format_readonly_node_type`). A real autoscaler names its node types from
  its config (`ray.head.default`, `cpu1`, a KubeRay group name), so any other name means one runs.
- autoscaler v2 (`RAY_enable_autoscaler_v2=1`, KubeRay's default since 2.4x): the GCS holds
  `__autoscaler_v2_enabled` = 1 in the `__autoscaler` namespace and answers GetClusterStatus with the
  state the autoscaler last reported (`autoscaling_state`, absent until one reports); nodes it launched
  carry their node type name (`ray_node_type_name`), which hand-started nodes of a read-only v2 lack.

Neither record says what the cluster can grow to (only the published limits do), so a run that waits on
them cannot tell "not yet" from "never": hence `wait_timeout`.
"""

from __future__ import annotations

import json
import re
import time

# A v1 status older than this means its monitor stopped (it writes one every AUTOSCALER_UPDATE_INTERVAL_S, 5 s)
STALE_SECONDS = 300.0
_READONLY_TYPE = re.compile(r"node_[0-9a-f]{20,}")


def running_autoscaler() -> str | None:
    """A few words naming the autoscaler running on the connected cluster, or None if none runs.
    Call after ray.init()."""
    import ray
    from ray._private import ray_constants

    client = ray._private.worker.global_worker.gcs_client
    if client.internal_kv_get(ray._raylet.GCS_AUTOSCALER_V2_ENABLED_KEY.encode(),
                              ray._raylet.GCS_AUTOSCALER_STATE_NAMESPACE.encode()) == b"1":
        from ray.core.generated import autoscaler_pb2

        reply = autoscaler_pb2.GetClusterStatusReply()
        reply.ParseFromString(client.get_cluster_status(timeout_s=30))
        return from_v2_status(reply)
    return from_v1_status(client.internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS.encode(), None), time.time())


def from_v1_status(status: bytes | None, now: float) -> str | None:
    """The v1 monitor's `__autoscaling_status` JSON -> the autoscaler it shows, or None (read-only or stale)."""
    if not status:
        return None
    record = json.loads(status)
    report = record.get("autoscaler_report") or {}
    types = set(report.get("active_nodes") or {}) | set(report.get("pending_launches") or {})
    types |= set((report.get("node_type_mapping") or {}).values())
    types |= {entry[1] for entry in (report.get("pending_nodes") or []) + (report.get("failed_nodes") or [])}
    configured = sorted(t for t in types if not _READONLY_TYPE.fullmatch(t))
    if not configured or now - float(record.get("time", 0)) > STALE_SECONDS:
        return None
    return f"Ray autoscaler v1, node types up or launching: {', '.join(configured)}"


def from_v2_status(reply) -> str | None:
    """A GetClusterStatusReply (autoscaler_pb2) -> the v2 autoscaler it shows, or None (none reported, or
    read-only: no node of a configured type, nothing launching)."""
    if not reply.HasField("autoscaling_state"):
        return None
    state = reply.autoscaling_state
    types = {n.ray_node_type_name for n in reply.cluster_resource_state.node_states if n.ray_node_type_name}
    types |= {r.ray_node_type_name for r in state.pending_instance_requests}
    types |= {i.ray_node_type_name for i in state.pending_instances}
    types.discard("")
    if not types:
        return None
    return f"Ray autoscaler v2, node types up or launching: {', '.join(sorted(types))}"
