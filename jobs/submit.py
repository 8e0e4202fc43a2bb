"""`alexnet submit -- shard|train|eval|neighbours ARGS...`: the same CLI command, run as a Ray job on a cluster.

The job's entrypoint is `python -m jobs.cli <command> <args>` inside the uploaded project folder, so the
cluster runs exactly the code path `alexnet <command>` runs locally, from the code the user has checked
out (the working directory is first on the path; Ray puts it on every task's and Train worker's path
too). Inside a job RAY_ADDRESS points at the cluster, so the command joins it without `--address`.

Dependencies are deliberately not shipped as a runtime_env `pip` list: on a launcher or KubeRay cluster
the setup commands / image already installed this project's dependencies (torch for the right CUDA),
and a per-job virtualenv would re-download torch on every node for every job. What is checked instead
is the one thing that must match: the cluster's Ray version against this client's.
"""

from __future__ import annotations

import secrets
import shlex
import sys
import tempfile
import time
from pathlib import Path

from jobs.jobs_client import cluster_nodes, connect, follow_job
from jobs.parser import build_parser
from jobs.package import build_zip, project_root
from pipeline.errors import UserError

COMMANDS = ("shard", "train", "eval", "neighbours")
LOCAL_ONLY = ("inspect", "summary", "plot", "predict", "export", "demo", "jobs", "submit")


def submit(command_args: list[str], address: str | None = None, wait: bool = True, gpus: float = 0) -> int:
    """Submit `alexnet <command_args>` as a job; with wait, stream its logs and return its outcome.

    Exit status: 0 succeeded; the job's own exit status when it failed (1 if it has none, e.g. it
    never started); 3 when it was stopped.
    """
    if command_args[:1] == ["--"]:
        command_args = command_args[1:]
    if not command_args:
        raise UserError(f"give the job's command after `--`: one of {', '.join(COMMANDS)} "
                        "(e.g. `alexnet submit -- train --data s3://bucket/imagenet --name run1`)")
    if command_args[0] not in COMMANDS:
        raise UserError(f"`{command_args[0]}` cannot run as a job: a job runs one of {', '.join(COMMANDS)}"
                        + (f"; run `alexnet {command_args[0]}` here instead" if command_args[0] in LOCAL_ONLY
                           else ""))
    _check_arguments(command_args)
    client = connect(address)
    _check_ray_version(client)
    _check_head_alive(client)
    with tempfile.TemporaryDirectory(prefix="alexnet-submit-") as scratch:
        package = build_zip(project_root(), Path(scratch) / "alexnet-project.zip")
        job_id = f"alexnet-{command_args[0]}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
        entrypoint = shlex.join(["python", "-m", "jobs.cli", *command_args])
        # The driver runs `alexnet <command>` itself: shard, train and neighbours mostly coordinate Ray
        # tasks and workers, but eval computes in it, so `--gpus` places the driver on a GPU node.
        _submit_with_retry(client, entrypoint=entrypoint, submission_id=job_id,
                           runtime_env={"working_dir": str(package)},
                           metadata={"alexnet_command": command_args[0]},
                           entrypoint_num_gpus=gpus or None)
    print(f"submitted {job_id}: {entrypoint}", flush=True)
    if not wait:
        print(f"follow it with `alexnet jobs logs {job_id} --follow`; stop it with `alexnet jobs stop {job_id}`")
        return 0
    return follow_job(client, job_id)


def _submit_with_retry(client, timeout_s: float = 60.0, **job) -> None:
    """A head that has just started answers 'No available agent' until its job agent is up: wait for it,
    saying so (each refusal takes the dashboard ~10 s, and silence reads as a hang)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            client.submit_job(**job)
            return
        except Exception as error:  # Ray raises RuntimeError, RuntimeEnvSetupError, ConnectionError here
            if "No available agent" not in str(error):
                raise UserError(f"the cluster did not take the job: {error}".splitlines()[0]) from None
            if time.monotonic() > deadline:
                raise UserError(f"the cluster at {client.get_address()} cannot take jobs: its job agent did "
                                f"not answer for {timeout_s:.0f} s (see the head's dashboard_agent.log)") from None
            _check_head_alive(client)
            print(f"alexnet submit: the cluster's job agent is not up yet; retrying for up to {timeout_s:.0f} s",
                  file=sys.stderr, flush=True)
            time.sleep(2)


def _check_head_alive(client) -> None:
    """A head node whose raylet died (it fate-shares with the job agent) keeps its dashboard answering,
    but no job can start there: say so at once instead of retrying."""
    try:
        nodes = cluster_nodes(client)
    except Exception:  # an older or restricted dashboard: submitting will tell
        return
    heads = [n for n in nodes if n.get("is_head_node")]
    if heads and all(n.get("state") != "ALIVE" for n in heads):
        why = (heads[-1].get("state_message") or "no reason given").rstrip(".")
        raise UserError(f"the cluster at {client.get_address()} cannot take jobs: its head node is dead "
                        f"({why}); restart the cluster")


def _check_arguments(command_args: list[str]) -> None:
    """Parse the job's arguments here first: a typo fails in a second, not after an upload; a shard
    job's values are checked as `alexnet shard` checks them before it reads anything."""
    args = build_parser().parse_args(command_args)
    if args.command == "shard":
        from pipeline.shard.options import ShardOptions

        ShardOptions.from_args(args).check()


def _check_ray_version(client) -> None:
    import ray

    # Recorded by JobSubmissionClient's own connection check (the dashboard's /api/version).
    cluster = getattr(client, "_server_ray_version", None)
    if cluster and cluster != ray.__version__:
        raise UserError(f"the cluster runs Ray {cluster} but this client has Ray {ray.__version__}: the "
                        "job would run this project against a different Ray; install the same version")

