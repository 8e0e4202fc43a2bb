"""Which Ray instance a command runs on, decided in one place for every command that starts Ray
(`alexnet shard`, `alexnet train`, `alexnet demo`; `alexnet eval` computes in its own process):

    --address ADDR    that cluster (host:port, auto, ray://...)
    else RAY_ADDRESS  that one (inside a submitted job it points at the job's cluster)
    else              a new local instance of the command's own, gone when the command ends (also for
                      `--address local`)

Never the one Ray would find by itself: `ray.init(address=None)` joins the cluster recorded in Ray's
temp folder (`/tmp/ray/ray_current_cluster`, left by the last `ray start` on the machine, perhaps by
another user or CI job). Its tasks would then run in that cluster's working directory and environment,
load that job's machine, and write where it resolves our relative paths.

A private local instance is also kept quiet: Ray's token auth is on, as Ray's default has it, without
Ray's warning that it turned it on (nothing the user must act on), and Ray Train's preemption watcher, which only
serves clusters whose nodes get drained, is not started (its actor is killed at every worker group's
end, which Ray's core worker logs at error level).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from typing import Iterator

LOCAL = "local"  # ray.init's word for "start a new instance, never connect"
TOKEN_SETUP_LOGGER = "ray._private.authentication.authentication_token_setup"
# env vars every process of a private local instance's jobs gets (Ray Train's controller reads this one)
LOCAL_JOB_ENV = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}


def chosen_address(address: str | None) -> str | None:
    """The cluster the user named (`--address`, else a non-empty RAY_ADDRESS), or None: a new local
    instance, also for Ray's own word for one, `local` (which names no cluster a job could join)."""
    chosen = address or os.environ.get("RAY_ADDRESS") or None
    return None if chosen == LOCAL else chosen


@contextlib.contextmanager
def own_ray(address: str | None, env_vars: dict | None = None, **init_options) -> Iterator[str]:
    """ray.init on the instance `chosen_address` picks, ray.shutdown at the end; yields the address
    every process of the job was told (RAY_ADDRESS in their env).

    Ray's own helpers inside a job (Ray Train's placement-group cleaner, the state API) find their
    cluster through RAY_ADDRESS, else by scanning the machine for GCS processes, which fails ("Found
    multiple active Ray instances") or picks a stranger when another Ray runs beside ours. So a local
    instance gets a GCS port chosen here and every process of the job gets its address."""
    import ray

    env = dict(env_vars or {})
    target = chosen_address(address)
    if target is None:
        port = _free_port()
        env.update({"RAY_ADDRESS": f"127.0.0.1:{port}", **LOCAL_JOB_ENV})
        # The instance's processes start from this one's environment, so its workers inherit `env` from
        # it; a job runtime_env instead would leave the workers Ray prestarts at init unusable (they
        # lack it) and start as many again: ~1 CPU-s each, a fifth of a short command's CPU.
        # RAY_GCS_SERVER_PORT: the port of the GCS that this init starts
        settings = {"RAY_GCS_SERVER_PORT": str(port), **env}
        target, runtime_env = LOCAL, None
        # Ray turns token auth on for a new instance and warns that it did: nothing for the user to do
        logging.getLogger(TOKEN_SETUP_LOGGER).setLevel(logging.ERROR)
    else:
        settings = {}
        if "://" not in target and target != "auto":
            env["RAY_ADDRESS"] = target
        runtime_env = {"env_vars": env}
    with environ_set(settings):
        ray.init(address=target, logging_level="WARNING", runtime_env=runtime_env, **init_options)
    try:
        yield env.get("RAY_ADDRESS", target)
    finally:
        ray.shutdown()


@contextlib.contextmanager
def environ_set(settings: dict) -> Iterator[None]:
    """os.environ with `settings` for the block (what ray.init and the processes it starts read), as
    it was afterwards."""
    saved = {key: os.environ.get(key) for key in settings}
    os.environ.update(settings)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
