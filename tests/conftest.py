"""Session-wide fixtures: one Ray head and one S3-compatible server for the whole test session.

Ray 2.60's `ray.init()` turns token auth on by default; tests pin it off so that every process they
start (the CLI, Ray workers) agrees. Tests that need auth set it explicitly.

The code under test is this checkout, whatever else is installed: the environment's editable install
(or a PYTHONPATH left over) may point at another checkout, and the `alexnet` console script and every
Ray process would then run that other code while the test process imports this one. So before
anything starts, this checkout goes first on sys.path and in PYTHONPATH, which the CLI subprocesses
and the session's Ray head (hence its workers) inherit (tests/integration/test_harness.py checks it). A Ray driver's
working directory goes on its workers' sys.path ahead of PYTHONPATH, so a session started from inside
another checkout is refused.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_elsewhere = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and Path(p).resolve() != ROOT]
os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), *_elsewhere])
sys.path.insert(0, str(ROOT))

os.environ["RAY_AUTH_MODE"] = "disabled"
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
# Keep torch/numpy from oversubscribing the 2 CI cores when Ray runs several workers.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Ray Train's controller polls its workers every 2 s: a run's start, each checkpoint's registration and
# its end wait for a poll. A tiny run took 27 s at 2 s, 19 s at 0.5 (a user's week-long run keeps Ray's
# default); the controller, started by the CLI, gets it from the driver's environment.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")

SHARED_DATA = Path(os.environ.get("ALEXNET_SHARED_DATA", ROOT.parent / "shared" / "data"))
IMAGENET_SAMPLE = SHARED_DATA / "imagenet-sample"
BIN = Path(sys.executable).parent


def pytest_configure(config) -> None:
    here = Path.cwd().resolve()
    if here != ROOT and any((here / package / "__init__.py").is_file() for package in ("jobs", "pipeline", "trainer")):
        raise pytest.UsageError(f"pytest runs in {here}, another checkout of the project: the Ray workers that the "
                                f"tests start would import its code; run the tests from {ROOT}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def alexnet_cmd(*args: str) -> list[str]:
    """The real console script of this environment."""
    return [str(BIN / "alexnet"), *map(str, args)]


class NeverPaused(pytest.fail.Exception):
    """A run ended, or 300 s went by, before a rank paused. The failure shows the driver's last 3,000
    characters; `log` keeps all it printed, for a test that retries and still asserts on the first try."""

    def __init__(self, pid_file: str, log: str) -> None:
        super().__init__(f"the run never paused ({pid_file}):\n{log[-3000:]}")
        self.log = log


def wait_for_pause(driver: subprocess.Popen, pid_file: str) -> int:
    """The pid the failure-test hook (ALEXNET_DEBUG_PID_FILE) wrote once a rank paused; fails the test if
    the driver ended or 300 s went by first. `driver` must have stdout piped with stderr merged in."""
    deadline = time.time() + 300
    while not os.path.exists(pid_file):
        if driver.poll() is not None or time.time() > deadline:
            driver.kill()
            raise NeverPaused(pid_file, driver.communicate()[0])
        time.sleep(0.3)
    return int(open(pid_file).read())


def run_cli(*args: str, env: dict | None = None, timeout: float = 600, check: bool = True,
            cwd: str | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run(alexnet_cmd(*args), capture_output=True, text=True, timeout=timeout,
                            env={**os.environ, **(env or {})}, cwd=cwd)
    if check and result.returncode != 0:
        raise AssertionError(f"alexnet {' '.join(map(str, args))} exited {result.returncode}\n"
                             f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}")
    return result


@pytest.fixture(scope="session")
def sample_images() -> Path:
    """The suite's real photographs as a folder of `<synset>_<photo>.JPEG` (tests/helpers/photos.py): present in
    any clone, so the tests that use them run everywhere."""
    from helpers.photos import sample_folder

    return sample_folder()


@pytest.fixture(scope="session")
def imagenet_sample() -> Path:
    """ImageNet's own images, for the few tests about them; a clone without the shared set skips those."""
    if not IMAGENET_SAMPLE.is_dir():
        pytest.skip(f"needs the shared ImageNet sample {IMAGENET_SAMPLE}, absent here "
                    "(set ALEXNET_SHARED_DATA to the folder that holds imagenet-sample)")
    return IMAGENET_SAMPLE


@pytest.fixture(scope="session")
def s3_server() -> dict:
    """A moto S3 server on 127.0.0.1; returns the environment a client needs to reach it."""
    port = free_port()
    proc = subprocess.Popen([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("moto_server did not start")
    yield env
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def s3_bucket(s3_server, monkeypatch) -> str:
    """A fresh bucket; the test process's environment points at the local S3 server."""
    import uuid

    import boto3

    for key, value in s3_server.items():
        monkeypatch.setenv(key, value)
    name = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_server["AWS_ENDPOINT_URL"]).create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def ray_head(s3_server, tmp_path_factory) -> str:
    """One `ray start --head` for the session (dashboard and jobs API on a free port).

    Its processes inherit the S3 server's environment, so Ray tasks reach `s3://` URLs the way they
    would on a cluster configured with credentials. Returns the GCS address for `--address`.
    """
    temp_dir = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # short: Ray's socket paths are limited
    gcs_port, dash_port = free_port(), free_port()
    env = {**os.environ, **s3_server}
    subprocess.run([str(BIN / "ray"), "start", "--head", f"--port={gcs_port}", "--num-cpus=2",
                    "--node-ip-address=127.0.0.1", f"--ray-client-server-port={free_port()}",
                    # the dashboard agent's default port (52365) may be held by another Ray instance on the
                    # machine; without an agent, the head cannot run submitted jobs
                    f"--dashboard-agent-listen-port={free_port()}",
                    "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash_port}",
                    f"--temp-dir={temp_dir}", "--disable-usage-stats"],
                   check=True, env=env, capture_output=True, timeout=120)
    address = f"127.0.0.1:{gcs_port}"
    os.environ["ALEXNET_TEST_DASHBOARD"] = f"http://127.0.0.1:{dash_port}"
    yield address
    stop_ray_processes(str(temp_dir), gcs_port)
    shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def foreign_ray(tmp_path_factory) -> dict:
    """Another job's Ray head on this machine, as on a shared workstation or CI runner: started by
    `ray start` from another working directory with Ray's default temp folder, so its address is what
    Ray's temp folder records (`ray_current_cluster`). A command given no address must never join it.
    Returns its session folder (`drivers_of` tells who connected) and the folder it was started from."""
    import psutil
    from ray._common.utils import get_default_ray_temp_dir, get_ray_address_file

    elsewhere = tmp_path_factory.mktemp("foreign_job")
    gcs_port = free_port()
    address_file = Path(get_ray_address_file(None))
    subprocess.run([str(BIN / "ray"), "start", "--head", f"--port={gcs_port}", "--num-cpus=1",
                    "--include-dashboard=false", f"--dashboard-agent-listen-port={free_port()}",
                    f"--ray-client-server-port={free_port()}", "--disable-usage-stats"],
                   check=True, capture_output=True, timeout=120, cwd=elsewhere)
    gcs = next(p for p in psutil.process_iter(["cmdline"]) if (p.info["cmdline"] or [""])[0].endswith("gcs_server")
               and any(f"={gcs_port}" in a for a in p.info["cmdline"]))
    session = Path(next(a for a in gcs.info["cmdline"] if a.startswith("--log_dir=")).split("=", 1)[1]).parent
    assert address_file.read_text().strip().endswith(f":{gcs_port}")  # what ray.init(address=None) would join
    yield {"session": session, "cwd": elsewhere}
    stop_ray_processes(session.name, gcs_port)
    if address_file.is_file() and address_file.read_text().strip().endswith(f":{gcs_port}"):
        address_file.unlink()
    latest = Path(get_default_ray_temp_dir()) / "session_latest"
    if latest.is_symlink() and Path(os.readlink(latest)).name == session.name:
        latest.unlink()
    shutil.rmtree(session, ignore_errors=True)


def drivers_of(session: Path) -> set[int]:
    """The process ids of the drivers that ever connected to the Ray instance of this session folder
    (a test asks for its own commands' pids: on a shared machine another user's may join it)."""
    return {int(p.stem.rpartition("_")[2]) for p in (session / "logs").glob("python-core-driver-*")}


def stop_ray_processes(temp_dir: str, gcs_port: int) -> None:
    """Stop one Ray instance and only that one (`ray stop` would kill every instance on the machine,
    including those of other test sessions running beside this one): its processes are those whose
    command line names `temp_dir` (or its session folder's name) or its GCS port."""
    import psutil

    roots = []
    for proc in psutil.process_iter(["cmdline"]):
        if proc.pid == os.getpid():
            continue
        cmdline = " ".join(proc.info["cmdline"] or [])
        if temp_dir in cmdline or f":{gcs_port} " in cmdline + " ":
            roots.append(proc)
    victims = {p.pid: p for root in roots for p in [root, *_children(root)]}
    for proc in victims.values():
        try:
            proc.terminate()
        except psutil.Error:
            pass
    # GCS, raylet, monitor and the runtime-env agent outlive SIGTERM by more than 10 s: a test instance
    # is not drained, it is gone
    _, alive = psutil.wait_procs(list(victims.values()), timeout=2)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass


def _children(proc):
    import psutil

    try:
        return proc.children(recursive=True)
    except psutil.Error:
        return []


@pytest.fixture(scope="session")
def dashboard_url(ray_head) -> str:
    return os.environ["ALEXNET_TEST_DASHBOARD"]


# --- Sharded datasets (sharding engineer): made once per session by the real `alexnet shard` CLI. ---

@pytest.fixture(scope="session")
def sharded_dataset(ray_head, sample_images, tmp_path_factory) -> str:
    """A dataset folder: `train` = all 317 sample photographs as one-image classes (shard size 40: 8 shards,
    the last short); `val` = 60 flipped/cropped re-encodings of every 5th image, a flat folder with a
    `file,synset` CSV (shard size 16: 4 shards, the last short). Class indices = sorted synsets."""
    from helpers.imagenet_trees import class_tree, flat_val, sample_files

    root = tmp_path_factory.mktemp("sharded_dataset")
    images = sample_files()
    class_tree(root / "train", images)
    val_folder, val_labels, _, _ = flat_val(root, images[::5][:60])
    out = root / "dataset"
    run_cli("shard", root / "train", out, "--split", "train", "--shard-size", "40", "--address", ray_head)
    run_cli("shard", val_folder, out, "--split", "val", "--labels", val_labels, "--shard-size", "16",
            "--address", ray_head)
    return str(out)


@pytest.fixture(scope="session")
def small_dataset(ray_head, sample_images, tmp_path_factory) -> str:
    """A small dataset for fast training tests: 10 classes (every 31st sample photograph); `train` = 12 crops/
    flips/re-encodings per class (120 samples, shard size 16), `val` = 4 other variants per class
    (40 samples, shard size 8), flat folder with a CSV."""
    from helpers.imagenet_trees import class_tree, flat_val, sample_files

    root = tmp_path_factory.mktemp("small_dataset")
    images = sample_files()[::31][:10]
    class_tree(root / "train", images, per_class=12)
    val_folder, val_labels, _, _ = flat_val(root, images, per_image=4)
    out = root / "dataset"
    run_cli("shard", root / "train", out, "--split", "train", "--shard-size", "16", "--address", ray_head)
    run_cli("shard", val_folder, out, "--split", "val", "--labels", val_labels, "--shard-size", "8",
            "--address", ray_head)
    return str(out)


# --- The tiny training run (trainer): one uninterrupted reference run per session, which the
# driver-kill and lost-node tests (each also past a damaged checkpoint) compare their final weights with, bitwise. ---

# 120 training samples, batch 8 on each of 2 replicas: 7 steps per epoch; checkpoints at steps 4, 7
# (epoch end), 8, 12, 14 (end); step 10 is mid-epoch 1, two steps after the checkpoint at step 8.
# The lr warms up over 1.5 epochs (10.5 steps): the resumes from step 8 continue the ramp mid-way.
TINY = {"workers": 2, "batch_size": 8, "eval_batch_size": 16, "width": 0.25, "epochs": 2,
        "checkpoint_every_steps": 4, "log_every_steps": 2, "loader_workers": 0, "keep_checkpoints": 2,
        "warmup_epochs": 1.5}


def train_args(data, name, storage_path, config, address):
    return ["train", "--data", data, "--name", name, "--storage", storage_path, "--config", config,
            "--address", address]


@pytest.fixture(scope="session")
def tiny_config(tmp_path_factory) -> str:
    import yaml

    path = tmp_path_factory.mktemp("config") / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return str(path)


@pytest.fixture(scope="session")
def reference(small_dataset, ray_head, tiny_config, tmp_path_factory) -> str:
    runs = tmp_path_factory.mktemp("runs")
    result = run_cli(*train_args(small_dataset, "reference", str(runs), tiny_config, ray_head), timeout=400)
    # the resolved config's file is named at the start, not printed
    assert f"alexnet train: run folder {runs / 'reference'}; config {runs / 'reference' / 'config.json'}" in result.stdout
    assert '"workers": 2' not in result.stdout and '"workers": 2' in (runs / "reference" / "config.json").read_text()
    # the console's first line says the precision in force
    assert result.stdout.splitlines()[0] == "alexnet train: precision fp32, deterministic kernels (bitwise reproducible)"
    return str(runs / "reference")


@pytest.fixture
def small_disk(tmp_path) -> Path:
    """A folder on a tmpfs of 256 KiB (`resize_disk` changes it); skipped where this user may not mount
    one (root, or CAP_SYS_ADMIN, is needed). A file-size rlimit on a whole command breaks Ray's own
    start-up, so a real small filesystem it is."""
    mount = tmp_path / "small_disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if made.returncode != 0:
        pytest.skip(f"needs a small tmpfs (`mount -t tmpfs`, as root): {made.stderr.strip() or made.returncode}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def resize_disk(mount: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(mount)], check=True, capture_output=True)
