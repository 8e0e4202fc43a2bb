"""A shard's tar stream, written byte for byte as Python's tarfile writes it (PAX format) with the fixed
header fields a shard uses (mtime 0, uid/gid 0, no user names, mode 0644), hashed as it is written.

tarfile builds each header through several layers of generic checks (~50 us a member, three members a
sample: about as much as the pixel statistics); a shard member's header differs from the next only
in name, size and checksum, so it is packed directly. Names that are not ASCII or longer than the
100-byte name field go through tarfile's own header code (a PAX extended header), so the output
never depends on which path wrote it (tests/integration/test_shard_job.py compares it with tarfile's).
"""

from __future__ import annotations

import hashlib
import tarfile
from typing import BinaryIO

BLOCK = tarfile.BLOCKSIZE  # 512
RECORD = tarfile.RECORDSIZE  # 20 blocks: tarfile pads the archive to a whole record
MODE = 0o644
# The header after the name field: mode, uid, gid (8 bytes each), size (12), mtime (12), checksum (8), type,
# linkname (100), magic, uname (32), gname (32), devmajor, devminor (8 each), prefix (155), zeros to 512.
_IDS = b"%07o\0" % MODE + b"0000000\0" * 2
_MTIME = b"00000000000\0"
_REST = (tarfile.REGTYPE + b"\0" * 100 + tarfile.POSIX_MAGIC + b"\0" * (32 + 32 + 8 + 8 + 155 + 12))
# The checksum is the sum of the header's bytes with its own field read as 8 spaces: all but name and size are fixed
_FIXED_SUM = sum(_IDS) + sum(_MTIME) + 8 * ord(" ") + sum(_REST)


def member_header(name: str, size: int) -> bytes:
    """The header block(s) tarfile.addfile writes for a regular file `name` of `size` bytes."""
    encoded = name.encode("ascii", "ignore")
    if len(encoded) != len(name) or len(encoded) > 100 or size >= 8**11:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = size, 0, MODE, 0, 0, "", ""
        return info.tobuf(tarfile.PAX_FORMAT, tarfile.ENCODING, "surrogateescape")
    size_field = b"%011o\0" % size
    checksum = b"%06o\0 " % (_FIXED_SUM + sum(encoded) + sum(size_field))
    return encoded.ljust(100, b"\0") + _IDS + size_field + _MTIME + checksum + _REST


class ShardTarWriter:
    """Members in the order added; `close()` ends the archive as tarfile does (two zero blocks, then
    zeros up to a whole record). `sha256` is the digest of every byte written."""

    def __init__(self, raw: BinaryIO):
        self.raw, self.offset, self.digest = raw, 0, hashlib.sha256()

    def add(self, name: str, data: bytes) -> None:
        padding = -len(data) % BLOCK
        self._write(member_header(name, len(data)) + data + b"\0" * padding)

    def close(self) -> None:
        end = self.offset + 2 * BLOCK
        self._write(b"\0" * (2 * BLOCK + -end % RECORD))

    def _write(self, chunk: bytes) -> None:
        self.raw.write(chunk)
        self.digest.update(chunk)
        self.offset += len(chunk)

    @property
    def sha256(self) -> str:
        return self.digest.hexdigest()
