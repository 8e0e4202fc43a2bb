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

What Ray's processes print reaches the console (log_to_driver) without colour codes when the console
is not a terminal (a log file, a submitted job's log), and without the notices in MUTED_WORKER_LINES.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
from typing import Iterator

LOCAL = "local"  # ray.init's word for "start a new instance, never connect"
TOKEN_SETUP_LOGGER = "ray._private.authentication.authentication_token_setup"
# env vars every process of a private local instance's jobs gets (Ray Train's controller reads this one)
LOCAL_JOB_ENV = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}
# Lines of Ray's processes the console does not repeat: notices with nothing for the user to do. Ray
# Train's placement-group cleaner (an actor) polls the state API, which goes down first when a run is
# interrupted: it warned on every Ctrl-C, although it still removes the placement group.
MUTED_WORKER_LINES = ("Failed to query Ray Train Controller actor state",)


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
    if not sys.stdout.isatty():  # Ray's "(RayTrainWorker pid=...)" prefixes: no colour codes in a file
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")
    try:  # a Ctrl-C held back during start-up arrives as the instance is up: it is stopped too
        with environ_set(settings), _started_deaf_to_ctrl_c(target == LOCAL):
            ray.init(address=target, logging_level="WARNING", runtime_env=runtime_env, **init_options)
        mute_worker_lines(MUTED_WORKER_LINES)
        yield env.get("RAY_ADDRESS", target)
    finally:
        ray.shutdown()


@contextlib.contextmanager
def _started_deaf_to_ctrl_c(local: bool) -> Iterator[None]:
    """Ray's processes of a local instance start in the terminal's process group, so Ctrl-C reached all
    of them: the dashboard's module processes died of it, and Ray Train's graceful abort then waited
    ~8 s on its placement-group cleaner's state-API queries before the driver could exit. A process
    started while SIGINT is ignored keeps ignoring it (exec keeps SIG_IGN; Python then installs no
    KeyboardInterrupt handler), so the instance's processes are started that way. SIGINT is also
    blocked meanwhile, and Linux keeps a blocked signal pending even when ignored: a Ctrl-C during
    start-up reaches the driver's own handler once it is back, instead of being lost."""
    import signal
    import threading

    if not local or threading.current_thread() is not threading.main_thread():
        yield
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def mute_worker_lines(texts: tuple[str, ...]) -> None:
    """Drop the lines of Ray's processes that hold one of `texts` before the driver prints them (Ray has
    no setting for it; the processes' own loggers are not the driver's to configure)."""
    _filter_worker_lines("muted", lambda data, lines: [line for line in lines if not any(t in line for t in texts)])


class TracebackLog:
    """Ray's processes' tracebacks in a file instead of on the console, for the run's last line to name.

    A worker that meets a full disk, and the controller that sees it fail, each stream a traceback to the
    driver (about 110 lines for one full disk) before the one-line cause the driver prints. From a
    line holding "Traceback (most recent call last):" on, the rest of that batch of a process's lines
    (Ray sends them in batches per process) goes to `path`, prefixed with the process; the line before
    it ("Error in training function:") stays on the console."""

    def __init__(self, path: str):
        self.path = path
        self.count = 0  # tracebacks written

    def install(self) -> TracebackLog:
        _filter_worker_lines("tracebacks", self._divert)
        return self

    def _divert(self, data: dict, lines: list[str]) -> list[str]:
        start = next((i for i, line in enumerate(lines) if "Traceback (most recent call last):" in line), None)
        if start is None:
            return lines
        self.count += sum("Traceback (most recent call last):" in line for line in lines[start:])
        who = f"({data.get('actor_name') or data.get('task_name') or 'process'} pid={data.get('pid')})"
        with open(self.path, "a") as log:
            log.writelines(f"{who} {line}\n" for line in lines[start:])
        return lines[:start]

    def note(self, wait_s: float = 3.0) -> str:
        """' (tracebacks of Ray's processes: PATH)' when some were written, else ''. Waits up to `wait_s`
        for the first one: a failed worker's lines may reach the driver after the failure itself."""
        import time

        deadline = time.monotonic() + wait_s
        while not self.count and time.monotonic() < deadline:
            time.sleep(0.1)
        return f" (tracebacks of Ray's processes: {self.path})" if self.count else ""


def _filter_worker_lines(kind: str, keep) -> None:
    """Wrap the one handler that prints Ray's processes' lines on the driver with `keep(data, lines) ->
    lines to print`, once per kind. Nothing happens where Ray's internals differ."""
    try:
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher
    except ImportError:
        return

    def wrapped(handler):
        def handle(data: dict) -> None:
            lines = keep(data, data.get("lines", []))
            if lines or not data.get("lines"):
                handler({**data, "lines": lines})
        handle.kinds = getattr(handler, "kinds", ()) + (kind,)
        return handle

    with dispatcher._lock:
        dispatcher.handlers = [(name, wrapped(handler) if name == "ray_print_logs"
                                and kind not in getattr(handler, "kinds", ()) else handler)
                               for name, handler in dispatcher.handlers]


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
