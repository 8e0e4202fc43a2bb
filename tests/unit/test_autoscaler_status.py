"""trainer/driver/autoscaler.py tells a running autoscaler from the read-only monitor every head runs, in the records
Ray itself writes (built here with Ray's own classes: the v1 monitor's AutoscalerSummary as it serialises it,
the v2 GetClusterStatusReply). The live v1 path runs in tests/integration/test_autoscaling.py (a real autoscaler) and
test_train.py (a head without one)."""

from __future__ import annotations

import json
import time
from dataclasses import asdict

from ray.autoscaler._private.autoscaler import AutoscalerSummary
from ray.autoscaler._private.util import format_readonly_node_type
from ray.core.generated import autoscaler_pb2

from trainer.driver.autoscaler import STALE_SECONDS, from_v1_status, from_v2_status

NODE = "f226ab2be49ab21f1159854bf908acf4cce26a6f90cfce83ddc84c75"


def _v1(active: dict, mapping: dict, at: float, **more) -> bytes:
    """What Ray's v1 monitor stores under `__autoscaling_status` (monitor.py: asdict of the summary)."""
    fields = {"idle_nodes": None, "pending_nodes": [], "pending_launches": {}, "failed_nodes": [], **more}
    summary = AutoscalerSummary(active_nodes=active, node_type_mapping=mapping, **fields)
    return json.dumps({"time": at, "autoscaler_report": asdict(summary), "load_metrics_report": {}}).encode()


def test_v1_a_configured_node_type_means_an_autoscaler_runs_the_read_only_monitor_does_not():
    now = time.time()
    readonly = format_readonly_node_type(NODE)  # a head started without --autoscaling-config
    assert from_v1_status(_v1({readonly: 1}, {NODE: readonly}, now), now) is None
    at_rest = _v1({"ray.head.default": 1}, {NODE: "ray.head.default"}, now)
    assert from_v1_status(at_rest, now) == "Ray autoscaler v1, node types up or launching: ray.head.default"
    launching = _v1({"ray.head.default": 1}, {}, now, pending_launches={"cpu1": 2})
    assert from_v1_status(launching, now) == "Ray autoscaler v1, node types up or launching: cpu1, ray.head.default"
    assert from_v1_status(at_rest, now + STALE_SECONDS + 1) is None  # its monitor stopped writing
    assert from_v1_status(None, now) is None and from_v1_status(b"", now) is None


def test_v2_a_reported_state_with_typed_nodes_or_launches_means_an_autoscaler_runs():
    reply = autoscaler_pb2.GetClusterStatusReply()
    reply.cluster_resource_state.node_states.add(node_id=bytes.fromhex(NODE))
    assert from_v2_status(reply) is None  # no autoscaler ever reported
    reply.autoscaling_state.autoscaler_state_version = 3
    assert from_v2_status(reply) is None  # read-only v2: hand-started nodes carry no node type
    reply.autoscaling_state.pending_instance_requests.add(ray_node_type_name="gpu-group", count=2)
    assert from_v2_status(reply) == "Ray autoscaler v2, node types up or launching: gpu-group"
    reply.cluster_resource_state.node_states.add(ray_node_type_name="headgroup")
    assert from_v2_status(reply) == "Ray autoscaler v2, node types up or launching: gpu-group, headgroup"
