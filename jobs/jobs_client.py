"""Talking to a cluster's jobs API: where it is, how to authenticate, and `alexnet jobs ...`.

The jobs API lives on the head node's dashboard port (8265). It is never exposed publicly (anyone who
reaches it can run code), so users reach it through a tunnel (`ray dashboard cluster.yaml`,
`kubectl port-forward`) and give its http URL with `--address` or `RAY_ADDRESS`. Clusters run with
token authentication: the token comes from the environment and goes out as a bearer header, so it works
whatever `RAY_AUTH_MODE` this client process happens to have.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from pipeline.errors import UserError

TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
EXIT_STOPPED = 3  # `alexnet submit` / `alexnet jobs logs --follow` when the job was stopped
TUNNEL_HINT = ("for a launcher cluster run `ray dashboard cluster/aws.yaml` (or gcp.yaml) and use "
               "http://127.0.0.1:8265; on Kubernetes `kubectl port-forward svc/alexnet-head-svc 8265:8265`")


def dashboard_address(address: str | None) -> str:
    """The jobs API URL from the flag or RAY_ADDRESS; a bare host:port is taken as http."""
    address = address or os.environ.get("RAY_ADDRESS")
    if not address or address == "auto":
        raise UserError("no cluster address: pass --address http://HOST:8265 or set RAY_ADDRESS to the "
                        f"cluster's dashboard URL ({TUNNEL_HINT})")
    if address.startswith("ray://"):
        raise UserError(f"--address {address} is a Ray Client address; jobs are submitted to the dashboard "
                        "URL (http://HOST:8265)")
    if "://" not in address:
        address = f"http://{address}"
    return address.rstrip("/")


def auth_token() -> str | None:
    """The cluster token from RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, or (in token mode) ~/.ray/auth_token."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"].strip()
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if path:
        if not os.path.isfile(path):
            raise UserError(f"RAY_AUTH_TOKEN_PATH={path}: no such file")
        return Path(path).read_text().strip()
    default = Path.home() / ".ray" / "auth_token"
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "token":
        if not default.is_file():
            raise UserError("RAY_AUTH_MODE=token but no token found: set RAY_AUTH_TOKEN to the cluster's "
                            "token (`ray get-auth-token` on the head node prints it)")
        return default.read_text().strip()
    return None


def connect(address: str | None):
    """A JobSubmissionClient for the cluster, or a UserError saying what is wrong with the connection."""
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    url = dashboard_address(address)
    token = auth_token()
    try:
        client = JobSubmissionClient(url, headers=_headers(token))
        client.list_jobs()  # the version check may pass unauthenticated; this request cannot
        return client
    except AuthenticationError as error:
        raise UserError(_auth_message(url, token, str(error))) from None
    except ConnectionError:
        raise UserError(f"cannot reach the Ray jobs API at {url}: is the cluster up and the address the "
                        f"dashboard's http URL? ({TUNNEL_HINT})") from None
    except RuntimeError as error:
        raise UserError(f"{url} does not answer as a Ray dashboard: {error}") from None


def _headers(token: str | None) -> dict | None:
    return {"Authorization": f"Bearer {token}"} if token else None


def cluster_nodes(client) -> list[dict]:
    """The cluster's nodes as its dashboard's state API lists them (dead ones included), with the same
    token as the jobs client."""
    from ray.util.state import StateApiClient
    from ray.util.state.common import ListApiOptions, StateResource

    state = StateApiClient(address=client.get_address(), headers=_headers(auth_token()))
    return state.list(StateResource.NODES, options=ListApiOptions(limit=1000), raise_on_missing_output=False)


def _auth_message(url: str, token: str | None, detail: str) -> str:
    if token is None or detail.startswith("Authentication required"):
        return (f"the cluster at {url} requires token authentication and no token was sent: set "
                "RAY_AUTH_TOKEN to the cluster's token (`ray get-auth-token` on the head node)")
    return (f"the cluster at {url} rejected the token (RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH): it is not "
            "this cluster's token")


def call(client, method: str, *args):
    """A jobs API call with Ray's RuntimeError (unknown job, server error) turned into a UserError."""
    try:
        return getattr(client, method)(*args)
    except RuntimeError as error:
        text = str(error)
        if "does not exist" in text or "404" in text:
            raise UserError(f"no job {args[0]!r} on {client.get_address()} (see `alexnet jobs list`)") from None
        raise UserError(f"jobs API {method} failed: {text}") from None


def list_jobs(address: str | None) -> int:
    client = connect(address)
    jobs = sorted(call(client, "list_jobs"), key=lambda job: job.start_time or 0)
    print(f"{'SUBMISSION ID':40} {'STATUS':10} {'STARTED (UTC)':20} ENTRYPOINT")
    for job in jobs:
        job_id = job.submission_id or job.job_id or "-"
        print(f"{job_id:40} {str(job.status.value):10} {_time(job.start_time):20} {job.entrypoint}")
    return 0


def job_status(address: str | None, job_id: str) -> int:
    """Prints the job's state; exit status 0 only when it succeeded (scriptable)."""
    info = call(connect(address), "get_job_info", job_id)
    print(f"{job_id}: {info.status.value}")
    if info.message:
        print(info.message)
    return 0 if info.status.value in ("SUCCEEDED", "RUNNING", "PENDING") else 1


def job_logs(address: str | None, job_id: str, follow: bool = False) -> int:
    client = connect(address)
    if not follow:
        print(call(client, "get_job_logs", job_id), end="")
        return 0
    return follow_job(client, job_id)


def follow_job(client, job_id: str) -> int:
    """Stream a job's logs to stdout until it ends; its outcome as an exit status."""
    try:
        asyncio.run(_stream_logs(client, job_id))
    except KeyboardInterrupt:
        print(f"\nstopped following; the job keeps running. Stop it with `alexnet jobs stop {job_id}`",
              file=sys.stderr)
        return 130
    except RuntimeError as error:  # the log stream broke (head restarted, tunnel closed): say so, go on
        print(f"log stream interrupted ({error}); waiting for the job's outcome", file=sys.stderr)
    status = wait_terminal(client, job_id, timeout_s=24 * 3600)
    info = call(client, "get_job_info", job_id)
    if status == "SUCCEEDED":
        print(f"job {job_id} succeeded")
        return 0
    print(f"job {job_id} {status.lower()}: {info.message or 'no message'}", file=sys.stderr)
    if status == "STOPPED":
        return EXIT_STOPPED
    return info.driver_exit_code or 1


async def _stream_logs(client, job_id: str) -> None:
    async for chunk in client.tail_job_logs(job_id):
        sys.stdout.write(chunk)
        sys.stdout.flush()


def stop_job(address: str | None, job_id: str, timeout_s: float = 60.0) -> int:
    """Asks the job to stop and waits until it has (Ray sends SIGTERM, then SIGKILL after a grace period)."""
    client = connect(address)
    call(client, "stop_job", job_id)
    status = wait_terminal(client, job_id, timeout_s)
    print(f"{job_id}: {status}")
    return 0 if status in TERMINAL else 1


def wait_terminal(client, job_id: str, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while True:
        status = call(client, "get_job_status", job_id).value
        if status in TERMINAL or time.monotonic() > deadline:
            return status
        time.sleep(0.5)


def _time(ms: int | None) -> str:
    if not ms:
        return "-"
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
