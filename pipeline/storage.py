"""One place that knows how to read and write a location that is a local folder or an object-store URL.

On a cluster, Ray workers do not share a disk, so shards, manifests and checkpoints go to object storage
(`s3://bucket/path`, `gs://bucket/path`). pyarrow's filesystems read those URLs with the usual credential
chain (`AWS_ACCESS_KEY_ID`, `AWS_ENDPOINT_URL` for S3-compatible servers, ...). Local paths take the
plain `os` path, which keeps atomic renames atomic.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import tempfile
import uuid
from typing import BinaryIO

import pyarrow.fs as pafs

URL_SCHEMES = ("s3://", "gs://", "gcs://", "hdfs://", "abfs://", "file://")


def is_url(location: str) -> bool:
    return str(location).startswith(URL_SCHEMES)


def absolute(location: str) -> str:
    """A local path made absolute against this process's working directory (and `~` expanded); a URL
    as given. Ray tasks and workers run in other working directories, so a relative path must be fixed
    in the command's own process before anything is handed to them."""
    location = str(location)
    return location if is_url(location) else os.path.abspath(os.path.expanduser(location))


def join(location: str, *parts: str) -> str:
    """Join path parts; URLs always use '/'."""
    location = str(location)
    if is_url(location):
        return posixpath.join(location.rstrip("/"), *parts)
    return os.path.join(location, *parts)


def resolve(location: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem and the path inside it for a folder or URL."""
    location = str(location)
    if is_url(location):
        return pafs.FileSystem.from_uri(location)
    return pafs.LocalFileSystem(), os.path.abspath(location)


def exists(location: str) -> bool:
    if not is_url(location):
        return os.path.exists(location)
    fs, path = resolve(location)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def is_dir(location: str) -> bool:
    if not is_url(location):
        return os.path.isdir(location)
    fs, path = resolve(location)
    return fs.get_file_info(path).type == pafs.FileType.Directory


def makedirs(location: str) -> None:
    if not is_url(location):
        os.makedirs(location, exist_ok=True)
        return
    fs, path = resolve(location)
    fs.create_dir(path, recursive=True)


def list_names(location: str) -> list[str]:
    """Names (not paths) of the files directly inside a folder, sorted; [] when it does not exist."""
    if not is_url(location):
        if not os.path.isdir(location):
            return []
        return sorted(n for n in os.listdir(location) if os.path.isfile(os.path.join(location, n)))
    fs, path = resolve(location)
    try:
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=False))
    except FileNotFoundError:
        return []
    return sorted(posixpath.basename(i.path) for i in infos if i.type == pafs.FileType.File)


def size(location: str) -> int:
    if not is_url(location):
        return os.path.getsize(location)
    fs, path = resolve(location)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(location)
    return info.size


REMOTE_READ = 4 << 20  # bytes per object-store request when streaming


def open_input(location: str) -> BinaryIO:
    """A sequential read stream (streams from object storage; never downloads the whole file first).

    Object-store streams are buffered in REMOTE_READ requests, so callers may read in small pieces
    without one request per read."""
    if not is_url(location):
        return open(location, "rb")
    fs, path = resolve(location)
    return fs.open_input_stream(path, buffer_size=REMOTE_READ)


def read_bytes(location: str) -> bytes:
    with open_input(location) as stream:
        return stream.read()


def write_bytes_atomic(location: str, data: bytes) -> None:
    """Write so that the file exists whole or not at all.

    Locally: a temporary file in the same folder, fsync, rename. On object storage a PUT only becomes
    visible when the upload completes, which gives the same guarantee.
    """
    if is_url(location):
        fs, path = resolve(location)
        with fs.open_output_stream(path) as stream:
            stream.write(data)
        return
    folder = os.path.dirname(os.path.abspath(location))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(location)}.", suffix=".tmp")
    try:
        os.fchmod(fd, file_mode())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, location)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def file_mode() -> int:
    """The mode `open()` would give a new file under the process's umask. mkstemp makes 0600 whatever
    the umask, and a file renamed into place keeps it: other users of a shared dataset or run folder
    could not read it."""
    try:
        with open("/proc/self/status") as f:  # reading the umask without changing it (Linux)
            umask = next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError):
        umask = os.umask(0o022)
        os.umask(umask)
    return 0o666 & ~umask


def upload_file_atomic(local_path: str, location: str) -> None:
    """Move a finished local file to its final location (a rename locally, an upload to a URL)."""
    if not is_url(location):
        os.makedirs(os.path.dirname(os.path.abspath(location)) or ".", exist_ok=True)
        tmp = f"{location}.{uuid.uuid4().hex}.tmp"
        os.replace(local_path, tmp) if _same_device(local_path, location) else _copy(local_path, tmp)
        os.chmod(tmp, file_mode())
        os.replace(tmp, location)
        if os.path.exists(local_path):
            os.unlink(local_path)
        return
    fs, path = resolve(location)
    with open(local_path, "rb") as src, fs.open_output_stream(path) as dst:
        while chunk := src.read(8 << 20):
            dst.write(chunk)
    os.unlink(local_path)


def delete(location: str) -> None:
    """Remove a file if it exists."""
    if not is_url(location):
        if os.path.exists(location):
            os.unlink(location)
        return
    fs, path = resolve(location)
    if fs.get_file_info(path).type != pafs.FileType.NotFound:
        fs.delete_file(path)


def delete_tree(location: str) -> None:
    """Remove a folder and everything in it, if it exists."""
    if not exists(location):
        return
    if is_url(location):
        fs, path = resolve(location)
        fs.delete_dir(path)
    else:
        shutil.rmtree(location)


def _same_device(a: str, b: str) -> bool:
    folder = os.path.dirname(os.path.abspath(b)) or "."
    return os.stat(a).st_dev == os.stat(folder).st_dev


def _copy(src: str, dst: str) -> None:
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        while chunk := fin.read(8 << 20):
            fout.write(chunk)
        fout.flush()
        os.fsync(fout.fileno())
