"""The loader's own tar reader against Python's `tarfile`, on archives in every format tarfile writes.

Member contents are random bytes (the reader never interprets them), some larger than the read buffer,
so headers and members straddle buffer refills; `tarfile` reading the same archive is the reference.
Every archive is read as a stream (object storage), as bytes, and memory-mapped from a file (local).
"""

from __future__ import annotations

import io
import os
import random
import tarfile

import pytest

from pipeline.loader.tar_reader import ShardReadError, byte_sum, iter_samples, map_file


def write_archive(fmt: int, samples: list[tuple[str, dict[str, bytes]]]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt) as tar:
        folder = tarfile.TarInfo("some/folder")
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)
        for key, members in samples:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def reference(archive: bytes) -> list[tuple[str, dict[str, bytes]]]:
    """(key, {jpg, cls}) per sample as tarfile reads them."""
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        for member in tar:
            if member.isfile():
                key, ext = member.name.rsplit(".", 1)
                if ext in ("jpg", "cls"):
                    samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return list(samples.items())


def sources(archive: bytes, folder) -> list:
    """The archive as each kind of source the loader reads: streams (seekable or not), bytes, a mapped file."""
    path = folder / f"archive-{len(archive)}-{hash(archive)}.tar"
    path.write_bytes(archive)
    return [io.BytesIO(archive), Unseekable(archive), archive, map_file(str(path))]


class Unseekable(io.RawIOBase):
    """A stream that can only be read forwards, as an object-store download is."""

    def __init__(self, data: bytes):
        self.data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        return self.data.readinto(buffer)


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_reads_every_tar_format_like_tarfile(fmt, tmp_path):
    rng = random.Random(fmt)
    samples = []
    for n in range(12):
        # ustar splits long names into prefix + name; GNU and pax need their own long-name headers
        folder = "d" * 60 + "/" + "e" * (50 if fmt == tarfile.USTAR_FORMAT else 140) if n % 3 == 0 else "train"
        size = 5000 if n != 7 else 3000 + 2 * 1024  # one member longer than the small buffer below
        members = {"jpg": os.urandom(rng.randrange(1, size)), "cls": str(n).encode(),
                   "json": b'{"ignored": true}'}
        samples.append((f"{folder}/sample_{n:03d}", members))
    archive = write_archive(fmt, samples)
    want = reference(archive)
    assert len(want) == 12
    for start, stop in ((0, 12), (3, 8), (11, 12)):
        for source in sources(archive, tmp_path):
            got = [(key, {ext: bytes(data) for ext, data in members.items()})
                   for _, key, members in iter_samples(source, "shard.tar", start, stop, bytearray(2048))]
            assert got == want[start:stop]


def test_truncation_anywhere_names_shard_and_member(tmp_path):
    samples = [(f"s{n}", {"jpg": os.urandom(3000), "cls": b"1", "json": os.urandom(1500)}) for n in range(4)]
    archive = write_archive(tarfile.USTAR_FORMAT, samples)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        members = {m.name: m for m in tar}
    for name, cut in (("s2.jpg", 1000), ("s2.json", 700), ("s2.json", 1520)):  # in data, in data, in padding
        member = members[name]
        for source in sources(archive[:member.offset_data + cut], tmp_path):
            with pytest.raises(ShardReadError, match=rf"shard\.tar: truncated inside member {name}"):
                list(iter_samples(source, "shard.tar", 0, 4, bytearray(1024)))
    for source in sources(archive[:members["s3.jpg"].offset + 100], tmp_path):
        with pytest.raises(ShardReadError, match=r"shard\.tar: truncated in the header after s2\.json"):
            list(iter_samples(source, "shard.tar", 0, 4))
    # a member with a long name (ustar prefix, GNU or pax header) is named by its whole name
    long = "d" * 60 + "/" + "e" * 140 + "/s1"
    for fmt in (tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT):
        folder = long.replace("e" * 140, "e" * 50) if fmt == tarfile.USTAR_FORMAT else long
        named = write_archive(fmt, [("s0", {"jpg": b"x", "cls": b"0"}), (folder, {"jpg": os.urandom(3000)})])
        with tarfile.open(fileobj=io.BytesIO(named)) as tar:
            offset = tar.getmember(f"{folder}.jpg").offset_data
        for source in sources(named[:offset + 1000], tmp_path):
            with pytest.raises(ShardReadError, match=rf"truncated inside member {folder}\.jpg \(1000 of 3000 bytes\)"):
                list(iter_samples(source, "shard.tar", 0, 2, bytearray(1024)))
    # samples wholly before the damage read fine: the reader stops at `stop` without meeting it
    for source in sources(archive[:members["s2.jpg"].offset_data + 1000], tmp_path):
        assert [key for _, key, _ in iter_samples(source, "shard.tar", 0, 2, bytearray(1024))] == ["s0", "s1"]


def test_a_damaged_header_anywhere_is_caught_after_the_member_before_it(tmp_path):
    samples = [(f"s{n}", {"jpg": os.urandom(700 + 300 * n), "cls": b"1"}) for n in range(8)]
    archive = write_archive(tarfile.USTAR_FORMAT, samples)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        members = list(tar)  # the folder write_archive puts first, then the samples' files
    for n, member in enumerate(members):
        for field_offset in (3, 130, 150, 300):  # name, size, checksum, magic: each changes the checksum
            damaged = bytearray(archive)
            damaged[member.offset + field_offset] ^= 0x01
            before = "the archive's first member" if n == 0 else members[n - 1].name + "/" * members[n - 1].isdir()
            for source in sources(bytes(damaged), tmp_path):
                with pytest.raises(ShardReadError, match=rf"shard\.tar: corrupt tar header.* after {before}$"):
                    list(iter_samples(source, "shard.tar", 0, 8, bytearray(1024)))


def test_byte_sum_is_the_exact_sum_of_a_block():
    rng = random.Random(0)
    blocks = [bytes(512), b"\xff" * 512, b"\x01" * 512, b"\x7f" * 512]  # the largest ASCII sum: 65024
    blocks += [bytes(rng.choice((0, 255)) for _ in range(512)) for _ in range(200)]  # sums around 65521
    blocks += [os.urandom(512) for _ in range(2000)]
    for block in blocks:
        assert byte_sum(block) == sum(block)
