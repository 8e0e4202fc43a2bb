"""`alexnet submit` / `alexnet jobs` against the session's real Ray head, through the real CLI.

Jobs run the uploaded project with `python -m jobs.cli`, so these tests also prove that the working
directory package holds everything a job needs (and nothing it must not carry: .git, .venv, data).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
import zipfile
from pathlib import Path

import pytest

from conftest import BIN, free_port, run_cli, stop_ray_processes
from jobs.package import build_zip, project_root, select_files
from pipeline.errors import UserError


def _job_id(output: str) -> str:
    match = re.search(r"submitted (alexnet-\S+):", output)
    assert match, output
    return match.group(1)


# ---- the package: what goes to the cluster ---------------------------------------------------------

def _project(tmp_path: Path) -> Path:
    root = tmp_path / "proj"
    for rel, data in {"pyproject.toml": b"[project]\n", "jobs/cli.py": b"print(1)\n",
                      "pipeline/x.py": b"x = 1\n", "configs/run.yaml": b"epochs: 1\n",
                      ".venv/pyvenv.cfg": b"home = /usr\n", ".venv/lib/torch.so": b"\0" * 1000,
                      "myenv/pyvenv.cfg": b"", "myenv/lib/big.py": b"#\n",
                      "out/train-000000.tar": b"\0" * 100, "shards/val-000001.tar": b"\0" * 10,
                      "pipeline/__pycache__/x.cpython-311.pyc": b"\0", "alexnet_ray.egg-info/PKG-INFO": b"",
                      "runs/r1/metrics.json": b"{}", "photo.JPEG": b"\xff\xd8"}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def test_package_carries_source_and_config_not_envs_data_or_outputs(tmp_path):
    root = _project(tmp_path)
    assert select_files(root) == ["configs/run.yaml", "jobs/cli.py", "pipeline/x.py", "pyproject.toml"]
    if shutil.which("git"):  # in a checkout, .gitignore decides too
        subprocess.run(["git", "init", "-q", str(root)], check=True)
        (root / ".gitignore").write_text("configs/\n")
        assert select_files(root) == [".gitignore", "jobs/cli.py", "pipeline/x.py", "pyproject.toml"]
    archive = build_zip(root, tmp_path / "p.zip")
    assert zipfile.ZipFile(archive).namelist() == select_files(root)
    again = build_zip(root, tmp_path / "q.zip")
    assert archive.read_bytes() == again.read_bytes()  # same sources → same package → Ray reuses it


def test_package_over_the_limit_fails_before_upload_naming_the_biggest_file(tmp_path):
    root = _project(tmp_path)
    (root / "pipeline" / "weights_table.py").write_bytes(b"#" * 5000)
    with pytest.raises(UserError, match=r"limit of 3.9 KiB; largest files: pipeline/weights_table.py \(4.9 KiB\)"):
        build_zip(root, tmp_path / "p.zip", limit_bytes=4000)
    assert not (tmp_path / "p.zip").exists()


def test_this_checkout_ships_its_code_without_the_virtualenv():
    files = select_files(project_root())
    assert "jobs/cli.py" in files and "pipeline/storage.py" in files and "pyproject.toml" in files
    assert not [f for f in files if f.startswith((".venv/", ".git/", "tests/")) or f.endswith(".tar")]


# ---- errors before anything is sent -----------------------------------------------------------------

def test_unreachable_address_and_bad_arguments_fail_clearly():
    result = run_cli("submit", "--address", f"http://127.0.0.1:{free_port()}", "--", "shard", "a", "b",
                     "--split", "train", check=False, timeout=60)
    assert result.returncode == 2 and "cannot reach the Ray jobs API" in result.stderr
    result = run_cli("jobs", "list", check=False, timeout=60, env={"RAY_ADDRESS": ""})
    assert result.returncode == 2 and "--address" in result.stderr
    result = run_cli("submit", "--address", "http://127.0.0.1:1", "--", "shard", "a", "b", check=False)
    assert result.returncode == 2 and "--split" in result.stderr  # parsed locally, never submitted
    result = run_cli("submit", "--address", "http://127.0.0.1:1", "--", "neighbours", "runs/r", check=False)
    assert result.returncode == 2 and "--data" in result.stderr  # a job command, its arguments checked here
    result = run_cli("submit", "--", "summary", check=False, timeout=60)
    assert result.returncode == 2 and "shard, train, eval" in result.stderr
    result = run_cli("submit", "--", "inspect", "out/", check=False, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip() == ("alexnet submit: error: `inspect` cannot run as a job: a job runs one of "
                                     "shard, train, eval, neighbours; run `alexnet inspect` here instead")
    result = run_cli("submit", "--", check=False, timeout=60)
    assert result.returncode == 2 and "give the job's command after `--`" in result.stderr


def test_a_cluster_on_another_ray_version_is_refused_before_upload(tmp_path):
    """A dashboard that answers as Ray 2.0.0 does (its /api/version and an empty job list): the job
    would run this project against another Ray, so submit says both versions and uploads nothing."""
    import http.server
    import json
    import threading

    import ray

    asked = []

    class Dashboard(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            asked.append(self.path)
            body = {"/api/version": {"version": "4", "ray_version": "2.0.0", "ray_commit": "x",
                                     "session_name": "s"}}.get(self.path, [])
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self):  # an upload or a submission: never expected
            asked.append(f"POST {self.path}")
            self.send_response(500)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Dashboard)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        result = run_cli("submit", "--address", f"http://127.0.0.1:{server.server_port}", "--", "eval",
                         "--checkpoint", tmp_path, "--data", tmp_path, check=False, timeout=60)
    finally:
        server.shutdown()
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.strip() == (f"alexnet submit: error: the cluster runs Ray 2.0.0 but this client has Ray "
                                     f"{ray.__version__}: the job would run this project against a different "
                                     "Ray; install the same version")
    assert not any(path.startswith(("POST", "PUT")) for path in asked), asked


# ---- real jobs on the session's Ray head -------------------------------------------------------------

# A shard, a train and an eval job, followed to the end with `jobs status` and `jobs logs`: on the autoscaling
# cluster of tests/integration/test_autoscaling.py, with the dataset and the runs on S3.

@pytest.mark.slow
def test_failing_job_exits_non_zero_with_its_error(dashboard_url, tmp_path):
    missing = tmp_path / "no-such-imagenet"
    result = run_cli("submit", "--address", dashboard_url, "--", "shard", missing, tmp_path / "o",
                     "--split", "train", check=False, timeout=300)
    assert result.returncode == 2, result.stdout + result.stderr  # the job's own exit status (UserError)
    assert str(missing) in result.stdout  # the job's error line, streamed from its log
    assert "failed" in result.stderr
    assert not (tmp_path / "o" / "train.manifest.json").exists()


TINY_TRAIN = ["--set", "width=0.25", "--set", "batch_size=8", "--set", "eval_batch_size=8", "--set",
              "loader_workers=0", "--set", "checkpoint_every_steps=0", "--set", "deterministic=false"]


@pytest.mark.slow
def test_jobs_stop_stops_a_running_job(dashboard_url, small_dataset, tmp_path):
    """`alexnet submit` follows a long training job; `alexnet jobs stop` ends it; submit exits 3."""
    follower = subprocess.Popen(
        [str(BIN / "alexnet"), "submit", "--address", dashboard_url, "--", "train", "--data", small_dataset,
         "--name", "long", "--storage", str(tmp_path / "runs"), "--set", "epochs=90", *TINY_TRAIN],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        for line in follower.stdout:  # until the job's own output shows the training command running
            lines.append(line)
            if "alexnet train: run folder" in line:
                break
        job_id = _job_id("".join(lines))
        assert "RUNNING" in run_cli("jobs", "status", job_id, "--address", dashboard_url, timeout=60).stdout
        stop = run_cli("jobs", "stop", job_id, "--address", dashboard_url, timeout=120)
        assert f"{job_id}: STOPPED" in stop.stdout
        rest = follower.stdout.read()
        assert follower.wait(timeout=120) == 3, rest
        assert f"job {job_id} stopped" in rest
        status = run_cli("jobs", "status", job_id, "--address", dashboard_url, check=False, timeout=60)
        assert status.returncode == 1 and "STOPPED" in status.stdout
    finally:
        follower.kill()


@pytest.mark.slow
def test_token_auth_missing_wrong_and_right_token(tmp_path):
    """A second, tiny head (no CPUs, token mode): the only test that needs its own Ray instance."""
    temp_dir = Path(os.environ.get("TMPDIR", "/tmp")) / f"rayauth{os.getpid()}"  # short: socket paths
    gcs_port, dash_port = free_port(), free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "right-token-0123456789"}
    subprocess.run([str(BIN / "ray"), "start", "--head", f"--port={gcs_port}", "--num-cpus=0",
                    "--node-ip-address=127.0.0.1", f"--ray-client-server-port={free_port()}",
                    "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash_port}",
                    f"--temp-dir={temp_dir}", "--disable-usage-stats"],
                   check=True, env=env, capture_output=True, timeout=120)
    try:
        url = f"http://127.0.0.1:{dash_port}"
        right = run_cli("jobs", "list", "--address", url, env={"RAY_AUTH_TOKEN": "right-token-0123456789"},
                        check=False, timeout=60)
        deadline = time.time() + 60
        while right.returncode != 0 and "cannot reach" in right.stderr and time.time() < deadline:
            time.sleep(1)  # the dashboard comes up a moment after `ray start` returns
            right = run_cli("jobs", "list", "--address", url, env={"RAY_AUTH_TOKEN": "right-token-0123456789"},
                            check=False, timeout=60)
        assert right.returncode == 0, right.stderr
        assert "SUBMISSION ID" in right.stdout
        missing = run_cli("jobs", "list", "--address", url, env={"RAY_AUTH_TOKEN": ""}, check=False, timeout=60)
        assert missing.returncode == 2 and "requires token authentication" in missing.stderr
        assert "RAY_AUTH_TOKEN" in missing.stderr and "Traceback" not in missing.stderr
        wrong = run_cli("submit", "--address", url, "--", "shard", "a", "b", "--split", "train",
                        env={"RAY_AUTH_TOKEN": "wrong"}, check=False, timeout=60)
        assert wrong.returncode == 2 and "rejected the token" in wrong.stderr
    finally:
        stop_ray_processes(str(temp_dir), gcs_port)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.slow
def test_a_head_whose_job_agent_died_is_reported_not_retried(tmp_path):
    """A second, tiny head whose dashboard agent is killed: its raylet fate-shares with the agent, the
    dashboard keeps answering, and no job can ever start there."""
    import psutil

    temp_dir = Path(os.environ.get("TMPDIR", "/tmp")) / f"rayagent{os.getpid()}"  # short: socket paths
    gcs_port, dash_port = free_port(), free_port()
    subprocess.run([str(BIN / "ray"), "start", "--head", f"--port={gcs_port}", "--num-cpus=0",
                    "--node-ip-address=127.0.0.1", f"--ray-client-server-port={free_port()}",
                    f"--dashboard-agent-listen-port={free_port()}", "--include-dashboard=true",
                    "--dashboard-host=127.0.0.1", f"--dashboard-port={dash_port}", f"--temp-dir={temp_dir}",
                    "--disable-usage-stats"], check=True, capture_output=True, timeout=120)
    try:
        raylet = next(p for p in psutil.process_iter(["cmdline"])
                      if str(temp_dir) in " ".join(p.info["cmdline"] or []) and "raylet" in p.info["cmdline"][0])
        agent = next(p for p in raylet.children() if "DashboardAgent" in " ".join(p.cmdline()))
        agent.kill()
        raylet.wait(timeout=60)
        started = time.monotonic()
        result = run_cli("submit", "--address", f"http://127.0.0.1:{dash_port}", "--", "eval", "--checkpoint",
                         tmp_path, "--data", tmp_path, check=False, timeout=200)
        assert time.monotonic() - started < 60, "it retried instead of saying the cluster cannot take jobs"
        assert result.returncode == 2, result.stderr
        message = result.stderr.strip().splitlines()[-1]
        assert message.startswith(f"alexnet submit: error: the cluster at http://127.0.0.1:{dash_port} cannot "
                                  "take jobs: its head node is dead"), result.stderr
        assert "Traceback" not in result.stderr
    finally:
        stop_ray_processes(str(temp_dir), gcs_port)
        shutil.rmtree(temp_dir, ignore_errors=True)
