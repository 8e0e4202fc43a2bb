"""Find the inputs of a split in each ImageNet layout, as (key, source path, synset, where the bytes are).

Layouts:
- class folders: `SRC/<synset>/<file>` (train, or a val folder already sorted into classes);
- a flat folder plus a label file (`pipeline.shard.labels`): `SRC/ILSVRC2012_val_00000001.JPEG` ...;
- the train tar of per-class tars (`ILSVRC2012_img_train.tar` holding `n01440764.tar` ...), local or a
  URL. One streaming pass over the tar headers records where each image's bytes sit in the outer file
  (outer member's data offset + inner member's data offset); shard tasks then read just those byte
  ranges, which works the same on a local disk and on object storage. Nothing is unpacked.

A source is a `Source(location, offset, length, member)`: offset None means "the whole file"; a file
found in a folder is `member` (its relative path) of the folder `location`.
"""

from __future__ import annotations

import posixpath
import re
import sys
import tarfile
from dataclasses import dataclass

from pipeline import storage
from pipeline.errors import UserError
from pipeline.shard.scan_rules import HIDDEN, list_remote, read_local_file, skip_entry, walk_local

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


@dataclass(frozen=True, slots=True)
class Source:
    location: str  # local path or URL of the file that holds the bytes, or of the folder holding `member`
    offset: int | None = None  # byte offset inside `location`; None: the whole file
    length: int | None = None
    # a file under the folder `location`, relative with '/': the very string its Input's path is, joined
    # only when read, so a scan holds one path string a file, not two (~130 MB at 1.28M files)
    member: str | None = None

    @property
    def file(self) -> str:
        """The file that holds the bytes."""
        return self.location if self.member is None else storage.join(self.location, self.member)


@dataclass(frozen=True, slots=True)
class Input:
    key: str  # unique within the split, no dots (webdataset reads a dot as the start of the extension)
    path: str  # source path relative to the input root, recorded in the sample's .json and the index
    synset: str
    source: Source

    def row(self) -> tuple:
        """The fields as one flat tuple: how a shard task's inputs travel (pickled, a slots dataclass costs
        ~15x a tuple: at 1.28M inputs ~17 CPU-s of the driver and as much again in the workers)."""
        source = self.source
        return self.key, self.path, self.synset, source.location, source.offset, source.length, source.member

    @classmethod
    def from_row(cls, row: tuple) -> Input:
        key, path, synset, *source = row
        return cls(key, path, synset, Source(*source))


def read_source(source: Source) -> bytes:
    """The bytes of one input: a whole file, or a byte range of a tar (a ranged GET on object storage).
    A local file that cannot be an image (not a regular file, a dangling symlink, a loop) is BadImage."""
    if source.offset is None:
        if storage.is_url(source.location):
            return storage.read_bytes(source.file)
        return read_local_file(source.file)
    if not storage.is_url(source.location):
        with open(source.location, "rb") as f:
            f.seek(source.offset)
            return f.read(source.length)
    return _open_remote(source.location).read_at(source.length, source.offset)


_remote_files: dict = {}


def _open_remote(location: str):
    """One open random-access handle per remote tar and process: a shard task reads hundreds of ranges
    from the same tar, and each open costs a round trip."""
    if location not in _remote_files:
        if len(_remote_files) > 8:
            _remote_files.pop(next(iter(_remote_files))).close()
        fs, path = storage.resolve(location)
        _remote_files[location] = fs.open_input_file(path)
    return _remote_files[location]


def is_tar(src: str) -> bool:
    return src.lower().endswith(".tar") and not storage.is_dir(src)


@dataclass
class Scan:
    """What the scan saw: every entry ends in `inputs` or in `skipped` (the manifest lists both)."""
    inputs: list[Input]
    skipped: list[dict]  # {"path", "reason"}, sorted by path: entries the layout rules leave out
    class_folders: list[str] | None  # class layouts: every class folder or per-class tar, even an empty one


def find_inputs(src: str, labels: dict[str, str] | None = None) -> Scan:
    """Every candidate input of SRC, sorted by path, with unique keys, and what was left out and why.

    `labels` maps a flat folder's file names (or stems) to synsets; without it SRC must hold class folders.
    Entries are never opened here: a FIFO, socket, device, dangling symlink or symlink loop named like an
    image is an input that its shard task skips with the reason (it opens without blocking).
    """
    if not storage.exists(src):
        raise UserError(f"input {src} does not exist")
    if is_tar(src):
        found, skipped, classes = _scan_train_tar(src)
    else:
        found, skipped, classes = _scan_folder(src, labels)
    if not found:
        raise UserError(f"input {src} holds no image files (expected class folders <synset>/*.JPEG, a flat "
                        "folder with --labels, or the train tar of per-class tars)")
    found.sort(key=lambda item: item[0])
    keys = assign_keys([path for path, _, _ in found])
    inputs = [Input(key, path, synset, source) for key, (path, synset, source) in zip(keys, found)]
    return Scan(inputs, sorted(skipped, key=lambda e: e["path"]), classes)


def _scan_folder(src: str, labels: dict[str, str] | None):
    files, folders, skipped = list_remote(src) if storage.is_url(src) else walk_local(src)
    nested = [rel for rel in files if "/" in rel]
    if not files:
        return [], skipped, None
    if labels is None:
        if not nested:
            raise UserError(f"input {src} is a flat folder: give its labels with --labels "
                            "(CSV 'file,synset', LOC_val_solution.csv, or the devkit ground truth)")
        # class folders: the first path component is the synset; files of any name count (a PNG or a
        # text file named .JPEG is found here and skipped later with its reason)
        skipped += [skip_entry(rel, "not inside a class folder (class folders label their images; "
                               "this file has none)") for rel in files if "/" not in rel]
        found = [(rel, sys.intern(rel.split("/", 1)[0]), Source(src, member=rel)) for rel in nested]
        return found, skipped, folders
    images = [rel for rel in files if rel.lower().endswith(IMAGE_SUFFIXES)]
    if images:
        skipped += [skip_entry(rel, "not an image file name (with --labels, files named like images are read)")
                    for rel in files if not rel.lower().endswith(IMAGE_SUFFIXES)]
    found, unlabelled = [], []
    for rel in images if images else files:
        synset = labels.get(posixpath.basename(rel)) or labels.get(_stem(posixpath.basename(rel)))
        if synset is None:
            unlabelled.append(rel)
        else:
            found.append((rel, sys.intern(synset), Source(src, member=rel)))
    if unlabelled:
        raise UserError(f"the label file has no entry for {len(unlabelled)} image(s) in {src}, "
                        f"e.g. {unlabelled[0]}")
    return found, skipped, None


def _scan_train_tar(src: str):
    """One pass over the outer tar's headers (inner tars read through in-place, never extracted)."""
    found, skipped, classes = [], [], []
    with storage.open_input(src) as stream:
        try:
            outer = tarfile.open(fileobj=stream, mode="r|")
            for member in outer:
                if member.isdir():
                    continue
                if not member.isfile():
                    skipped.append(skip_entry(member.name, f"not a regular file in the tar ({_tar_kind(member)})"))
                    continue
                name = posixpath.basename(member.name)
                if not name.lower().endswith(".tar"):
                    raise UserError(f"{src}: member {member.name} is not a per-class tar "
                                    "(expected ILSVRC2012_img_train.tar's layout: <synset>.tar members)")
                synset = name[: -len(".tar")]
                classes.append(synset)
                base = member.offset_data
                inner = tarfile.open(fileobj=outer.extractfile(member), mode="r|")
                for item in inner:
                    rel = f"{synset}/{item.name}"
                    if item.isdir():
                        continue
                    if any(part.startswith(".") for part in item.name.split("/")):
                        skipped.append(skip_entry(rel, HIDDEN))
                    elif not item.isfile():
                        skipped.append(skip_entry(rel, f"not a regular file in the tar ({_tar_kind(item)})"))
                    else:
                        rel = f"{synset}/{posixpath.basename(item.name)}"
                        found.append((rel, synset, Source(src, base + item.offset_data, item.size)))
        except tarfile.TarError as error:
            raise UserError(f"{src}: not a readable tar ({error})") from None
    return found, skipped, sorted(classes)


def _tar_kind(member: tarfile.TarInfo) -> str:
    if member.issym():
        return f"symlink to {member.linkname}"
    if member.islnk():
        return f"hard link to {member.linkname}"
    return {tarfile.FIFOTYPE: "FIFO", tarfile.CHRTYPE: "character device", tarfile.BLKTYPE: "block device"}.get(
        member.type, f"type {member.type!r}")


def _stem(name: str) -> str:
    return name.split(".", 1)[0]


def assign_keys(paths: list[str]) -> list[str]:
    """Deterministic, unique, dot-free keys: the file's stem where unique (n01440764_10026,
    ILSVRC2012_val_00000001), else the whole relative path, else a numbered suffix."""
    stems = [_KEY_UNSAFE.sub("_", _stem(posixpath.basename(p))) for p in paths]
    counts: dict[str, int] = {}
    for stem in stems:
        counts[stem] = counts.get(stem, 0) + 1
    if len(counts) == len(stems):  # every stem unique (ImageNet's train and val): the stems are the keys,
        return stems  # without a second pass and a set of 1.28 million keys (benchmarks/bench_scale.py)
    keys, used = [], set()
    for path, stem in zip(paths, stems):
        key = stem if counts[stem] == 1 else _KEY_UNSAFE.sub("_", path.rsplit(".", 1)[0])
        candidate, n = key, 1
        while candidate in used:
            candidate, n = f"{key}_{n}", n + 1
        used.add(candidate)
        keys.append(candidate)
    return keys
