"""pipeline/storage.py: local folders and a real S3-compatible server (moto) behind one set of calls."""

from __future__ import annotations

import pytest

from pipeline import storage


@pytest.fixture(params=["local", "s3"])
def location(request, tmp_path) -> str:
    if request.param == "local":
        return str(tmp_path / "data")
    bucket = request.getfixturevalue("s3_bucket")
    return f"s3://{bucket}/data"


def test_storage_round_trip(location):
    assert not storage.exists(storage.join(location, "a.bin"))
    assert storage.list_names(location) == []
    storage.makedirs(location)
    storage.write_bytes_atomic(storage.join(location, "b.bin"), b"bee")
    storage.write_bytes_atomic(storage.join(location, "a.bin"), b"ay")
    assert storage.list_names(location) == ["a.bin", "b.bin"]
    assert storage.read_bytes(storage.join(location, "b.bin")) == b"bee"
    assert storage.size(storage.join(location, "a.bin")) == 2
    storage.delete(storage.join(location, "a.bin"))
    assert storage.list_names(location) == ["b.bin"]


def test_atomic_write_leaves_no_temporary_files(tmp_path):
    target = tmp_path / "x.json"
    storage.write_bytes_atomic(str(target), b"{}")
    storage.write_bytes_atomic(str(target), b"[]")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json"]
    assert target.read_bytes() == b"[]"
