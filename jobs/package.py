"""The project as a Ray job's working directory: which files go, and the zip that carries them.

A submitted job must run the code the user has checked out, not whatever version the cluster was set
up with, so `alexnet submit` ships the project's source as the job's `working_dir`. It must never
ship the things that live beside the source (a 5 GB virtualenv, `.git`, ImageNet shards, run outputs):
those would blow Ray's upload limit after minutes of zipping, or worse, upload silently. So the file
list is decided here, checked against the limit before anything is sent, and zipped deterministically
(sorted entries, fixed timestamps) so that an unchanged project hashes to the same package and Ray
reuses the copy it already has.
"""

from __future__ import annotations

import os
import subprocess
import zipfile
from pathlib import Path

from pipeline.errors import UserError

PACKAGES = ("pipeline", "trainer", "jobs", "cluster")
# Folders that are never source: tool caches, build products, and the default output folders.
EXCLUDED_DIRS = {".git", ".hg", ".svn", "__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache",
                 ".ipynb_checkpoints", ".tox", ".nox", "node_modules", "build", "dist", "out", "runs",
                 "demo-out", "data", "tests", "benchmarks"}
# Data and model files: shards, indexes, images, checkpoints. Never needed to run the code.
DATA_SUFFIXES = {".tar", ".parquet", ".jpeg", ".jpg", ".png", ".pt", ".pth", ".ckpt", ".safetensors",
                 ".npy", ".npz", ".zip", ".gz", ".tgz", ".whl", ".pkl"}
ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed, so identical sources give an identical package


def project_root() -> Path:
    """The folder holding this project's packages (the checkout for an editable install)."""
    return Path(__file__).resolve().parent.parent


def select_files(root: Path) -> list[str]:
    """Paths (relative to root, '/'-separated, sorted) of the files a job needs.

    In a git checkout, git's own view (tracked plus untracked-but-not-ignored) is the starting point,
    so `.gitignore` is honoured exactly; otherwise the folder is walked. Either way the exclusions
    above apply, and any folder holding a `pyvenv.cfg` (a virtualenv, whatever its name) is skipped.
    For an installed (non-editable) copy there is no project folder: only our packages are shipped.
    """
    if not (root / "pyproject.toml").is_file():
        candidates = [p for package in PACKAGES for p in _walk(root, root / package)]
    else:
        candidates = _git_files(root)
        if candidates is None:
            candidates = _walk(root, root)
    venvs: dict[Path, bool] = {}
    selected = []
    for rel in candidates:
        parts = rel.split("/")
        if any(part in EXCLUDED_DIRS or part.endswith(".egg-info") for part in parts[:-1]):
            continue
        if os.path.splitext(rel)[1].lower() in DATA_SUFFIXES or parts[-1].endswith((".pyc", ".tmp")):
            continue
        if _inside_virtualenv(root, parts, venvs) or not (root / rel).is_file():
            continue
        selected.append(rel)
    return sorted(selected)


def build_zip(root: Path, dest: Path, limit_bytes: int | None = None) -> Path:
    """Zip the selected files into dest; a UserError naming the biggest files when over the limit.

    The size is checked twice: on the raw sizes before zipping (so a huge tree fails in a second,
    not after minutes of compression) and on the finished zip (what Ray actually uploads).
    """
    limit = _ray_upload_limit() if limit_bytes is None else limit_bytes
    files = select_files(root)
    sizes = {rel: (root / rel).stat().st_size for rel in files}
    if sum(sizes.values()) >= limit:
        raise UserError(_too_big_message(root, sum(sizes.values()), limit, sizes))
    with zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for rel in files:
            info = zipfile.ZipInfo(rel, date_time=ZIP_DATE)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, (root / rel).read_bytes())
    if dest.stat().st_size >= limit:
        raise UserError(_too_big_message(root, dest.stat().st_size, limit, sizes))
    return dest


def _ray_upload_limit() -> int:
    # Ray's own bound on a working_dir package (the gRPC message size, RAY_max_grpc_message_size).
    from ray._private.runtime_env.packaging import GCS_STORAGE_MAX_SIZE

    return GCS_STORAGE_MAX_SIZE


def _too_big_message(root: Path, total: int, limit: int, sizes: dict[str, int]) -> str:
    biggest = sorted(sizes.items(), key=lambda item: -item[1])[:5]
    listing = ", ".join(f"{rel} ({_human(size)})" for rel, size in biggest)
    return (f"the job's working directory (the project folder {root}) would upload "
            f"{_human(total)}, over Ray's limit of {_human(limit)}; largest files: "
            f"{listing}. Move data and outputs out of the project folder or add them to .gitignore.")


def _human(size: int) -> str:
    return f"{size / 2**20:.1f} MiB" if size >= 2**20 else f"{size / 2**10:.1f} KiB"


def _git_files(root: Path) -> list[str] | None:
    if not (root / ".git").exists():
        return None
    try:
        result = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "--cached", "--others",
                                 "--exclude-standard"], capture_output=True, timeout=60, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return [name for name in result.stdout.decode().split("\0") if name]


def _walk(root: Path, top: Path) -> list[str]:
    found = []
    for folder, dirs, names in os.walk(top):
        dirs[:] = [d for d in dirs if d not in EXCLUDED_DIRS and not d.endswith(".egg-info")
                   and not (Path(folder) / d / "pyvenv.cfg").exists()]
        found += [Path(folder, n).relative_to(root).as_posix() for n in names]
    return found


def _inside_virtualenv(root: Path, parts: list[str], cache: dict[Path, bool]) -> bool:
    folder = root
    for part in parts[:-1]:
        folder = folder / part
        if folder not in cache:
            cache[folder] = (folder / "pyvenv.cfg").is_file()
        if cache[folder]:
            return True
    return False
