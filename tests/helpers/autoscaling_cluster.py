"""A real autoscaling Ray cluster on one machine, for tests: Ray's fake multi-node provider makes the real
autoscaler launch and remove worker nodes as local raylet processes.

The head has no CPUs (as on every cluster in cluster/), so all work lands on nodes the autoscaler adds.
Everything started here is found and stopped by PID: its own temp folder and its GCS port
(`127.0.0.1:P` in every raylet's command line). Never `ray stop` or `AutoscalingCluster.shutdown()`:
both kill every Ray instance on the machine.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import yaml

from conftest import BIN, free_port, stop_ray_processes


def cluster_config(gcs_port: int, worker_types: dict, idle_timeout_minutes: float = 1) -> dict:
    """An autoscaler config for the fake provider; `worker_types` maps a node type to its resources,
    min_workers and max_workers (the shape of `available_node_types` entries)."""
    types = {"ray.head.default": {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0}}
    types.update({name: {"node_config": {}, **spec} for name, spec in worker_types.items()})
    return {
        "cluster_name": f"fake-{gcs_port}",
        "max_workers": sum(spec.get("max_workers", 0) for spec in worker_types.values()),
        "idle_timeout_minutes": idle_timeout_minutes,
        "provider": {"type": "fake_multinode", "gcs_address": f"127.0.0.1:{gcs_port}",
                     "use_node_id_as_ip": True, "disable_node_updaters": True,
                     "disable_launch_config_check": True},
        "available_node_types": types,
        "head_node_type": "ray.head.default",
        "auth": {"ssh_user": "x"},
        "upscaling_speed": 10,
        "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
        "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
        "worker_setup_commands": [], "head_start_ray_commands": [], "worker_start_ray_commands": [],
    }


@dataclass
class AutoscalingCluster:
    """One fake autoscaling cluster: `address` for `--address`, stopped by `stop()`."""

    worker_types: dict
    env: dict = field(default_factory=dict)
    publish_limits: bool = True
    idle_timeout_minutes: float = 1
    port: int = 0
    dashboard_port: int = 0
    temp_dir: str = ""

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def dashboard_url(self) -> str:
        """The jobs API, for `alexnet submit --address`."""
        return f"http://127.0.0.1:{self.dashboard_port}"

    def start(self, attempts: int = 2) -> AutoscalingCluster:
        """`ray start --head` with the autoscaler; a start that times out on a busy machine is tried again."""
        for attempt in range(attempts):
            try:
                return self._start()
            except RuntimeError:
                if attempt == attempts - 1:
                    raise
        return self

    def _start(self) -> AutoscalingCluster:
        self.port, self.dashboard_port = free_port(), free_port()
        self.temp_dir = tempfile.mkdtemp(prefix="rayas", dir="/tmp")  # short: socket paths are limited
        config = Path(self.temp_dir) / "autoscaler.yaml"
        config.write_text(yaml.safe_dump(cluster_config(self.port, self.worker_types, self.idle_timeout_minutes)))
        env = {**os.environ, **self.env, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"}
        result = subprocess.run(
            [str(BIN / "ray"), "start", "--head", f"--port={self.port}", "--num-cpus=0",
             "--node-ip-address=127.0.0.1", f"--autoscaling-config={config}", f"--temp-dir={self.temp_dir}",
             f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
             f"--dashboard-port={self.dashboard_port}", "--dashboard-host=127.0.0.1", "--disable-usage-stats"],
            env=env, capture_output=True, text=True, timeout=300, start_new_session=True)
        if result.returncode != 0:
            self.stop()
            raise RuntimeError(f"ray start failed:\n{result.stdout}\n{result.stderr}")
        if self.publish_limits:
            self.publish()
        return self

    def publish(self) -> None:
        """What cluster/aws.yaml and gcp.yaml do on their head after `ray start`: publish the limits."""
        subprocess.run([sys.executable, "-m", "cluster.limits", str(Path(self.temp_dir) / "autoscaler.yaml"),
                        "--address", self.address], check=True, capture_output=True, timeout=120)

    def worker_raylets(self) -> list[psutil.Process]:
        """The raylets of the worker nodes the autoscaler started. They share the head's session folder;
        their sockets are numbered (`sockets/raylet.N`), the head's is not."""
        found = []
        for proc in psutil.process_iter(["cmdline"]):
            cmdline = proc.info["cmdline"] or []
            if cmdline and cmdline[0].endswith("/raylet") and any(
                    re.search(r"^--raylet_socket_name=.*/sockets/raylet\.\d+$", part) for part in cmdline) \
                    and any(part.startswith(f"--temp_dir={self.temp_dir}") or self.temp_dir in part
                            for part in cmdline):
                found.append(proc)
        return found

    def wait_for_worker_raylets(self, count: int, timeout: float = 120) -> list[psutil.Process]:
        deadline = time.time() + timeout
        while time.time() < deadline:
            raylets = self.worker_raylets()
            if len(raylets) >= count:
                return raylets
            time.sleep(0.5)
        raise TimeoutError(f"the autoscaler did not start {count} worker nodes in {timeout} s")

    def stop(self) -> None:
        # the head's processes carry temp_dir, the worker nodes' raylets the GCS port; their children go too
        stop_ray_processes(self.temp_dir, self.port)
        shutil.rmtree(self.temp_dir, ignore_errors=True)

