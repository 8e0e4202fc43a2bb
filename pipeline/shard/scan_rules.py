"""The skip rules of the scan, in one place: what a folder walk reads, what it leaves out and why, and
how a local input is opened so that nothing named like an image can block or fail a shard task.

Rules (docs/sharding.md, "What the scan reads and what it skips"): hidden entries are skipped unread; a symlinked
folder is followed only as a class folder that links outside the input; every other non-folder entry
is a candidate input, and one that is not a regular file (FIFO, socket, device, dangling symlink,
symlink loop) is skipped by its shard task with what it is.
"""

from __future__ import annotations

import errno
import os
import stat

import pyarrow.fs as pafs

from pipeline import storage
from pipeline.shard.images import BadImage

def read_local_file(path: str) -> bytes:
    """Opened without blocking (a FIFO named x.JPEG would otherwise wait forever for a writer), then
    read only when fstat says it is a regular file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError as error:
        raise BadImage(_open_failure(path, error)) from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise BadImage(f"not a regular file ({_file_kind(mode)})")
        os.set_blocking(fd, True)
        with os.fdopen(os.dup(fd), "rb") as file:
            return file.read()
    finally:
        os.close(fd)


def _open_failure(path: str, error: OSError) -> str:
    if error.errno == errno.ELOOP:
        return "symlink loop"
    if error.errno == errno.ENOENT and os.path.islink(path):
        return f"dangling symlink (its target {os.readlink(path)} does not exist)"
    if error.errno == errno.ENXIO:
        return "not a regular file (a socket)"
    return f"cannot open ({error.strerror or error})"


def _file_kind(mode: int) -> str:
    for test, kind in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a folder")):
        if test(mode):
            return kind
    return f"mode {stat.S_IFMT(mode):o}"


def skip_entry(path: str, reason: str) -> dict:
    return {"path": path, "reason": reason}


HIDDEN = "hidden (name starts with '.'): not read"


def walk_local(src: str) -> tuple[list[str], list[str], list[dict]]:
    """(files, top-level folders, skipped) under a local folder, paths relative with '/'.

    Rules: hidden entries are skipped (their contents unread); a symlinked folder is followed only at
    the top level (a class folder kept elsewhere), and only when it points outside SRC and not above it,
    so no loop and no other class's images; every other entry that is not a folder is a file here.
    """
    root = os.path.realpath(src)
    files: list[str] = []
    folders: list[str] = []
    skipped: list[dict] = []

    def visit(folder: str, prefix: str) -> None:
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as error:
            skipped.append(skip_entry(prefix or "./", f"cannot list folder ({error.strerror or error})"))
            return
        for entry in entries:
            rel = prefix + entry.name
            is_link = entry.is_symlink()
            is_dir = _is_dir(entry)
            if entry.name.startswith("."):
                skipped.append(skip_entry(rel + "/" if is_dir else rel, HIDDEN))
            elif is_dir and is_link and (prefix or not _outside(os.path.realpath(entry.path), root)):
                skipped.append(skip_entry(rel + "/", "symlink to a folder: not followed (only a class folder that "
                                     "links outside the input is)"))
            elif is_dir:
                if not prefix:
                    folders.append(entry.name)
                visit(entry.path, rel + "/")
            else:
                files.append(rel)

    visit(root, "")
    return files, folders, skipped


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()  # follows a symlink; False for a dangling one or a loop
    except OSError:
        return False


def _outside(target: str, root: str) -> bool:
    """True when `target` is neither inside `root` nor one of its ancestors."""
    common = os.path.commonpath([target, root])
    return common != root and common != target


def list_remote(src: str) -> tuple[list[str], list[str], list[dict]]:
    """The object-store form of `_walk_local` (no symlinks or special files there)."""
    fs, path = storage.resolve(src)
    base = path.rstrip("/") + "/"
    files, folders, skipped, hidden = [], [], [], set()
    for info in sorted(fs.get_file_info(pafs.FileSelector(path, recursive=True)), key=lambda i: i.path):
        rel = info.path[len(base):]
        parts = rel.split("/")
        dot = next((n for n, part in enumerate(parts) if part.startswith(".")), None)
        if dot is not None:
            top = "/".join(parts[:dot + 1]) + ("/" if dot < len(parts) - 1 or info.type != pafs.FileType.File else "")
            if top not in hidden:
                hidden.add(top)
                skipped.append(skip_entry(top, HIDDEN))
        elif info.type == pafs.FileType.File:
            files.append(rel)
        elif len(parts) == 1:
            folders.append(rel)
    if not folders:
        folders = sorted({rel.split("/", 1)[0] for rel in files if "/" in rel})
    return files, folders, skipped
