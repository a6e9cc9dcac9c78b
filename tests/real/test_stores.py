"""Opening a server's stores: what a crash left behind is collected and the repository checked."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from fedsim.real.stores import ServerStores
from fedsim.store.safetensors_io import encode
from fedsim.store.sqlite import SqliteRepository


def weights(k: float) -> bytes:
    return encode({"w": np.full(8, k, np.float32)})


def test_opening_removes_partial_uploads_and_unrecorded_blobs_and_says_so(tmp_path, caplog):
    # Prepare: a recorded version, and what a kill leaves: a temp file and an unrecorded blob.
    with SqliteRepository(tmp_path / "repository") as repo:
        repo.register_model("m", "mlp")
        kept = repo.add_version("m", weights(0))
    blobs = tmp_path / "repository" / "blobs"
    (blobs / "tmp" / "tmpabc.part").write_bytes(b"half an upload")
    orphan = blobs / "ff" / ("ff" * 32 + ".safetensors")
    orphan.parent.mkdir()
    orphan.write_bytes(weights(1))
    caplog.set_level(logging.INFO, logger="fedsim.real.stores")
    # Execute
    stores = ServerStores.open(tmp_path, patience_s=10.0)
    try:
        versions = stores.repository.list_versions("m")
    finally:
        stores.close()
    # Assert
    assert versions == [kept]
    assert list((blobs / "tmp").iterdir()) == [] and not orphan.exists()
    assert [p.name for p in blobs.glob("??/*")] == [f"{kept.sha256}.safetensors"]
    size = len(b"half an upload") + len(weights(1))
    assert (
        f"start-up: removed 1 partial uploads and 1 unrecorded blobs ({size} bytes)" in caplog.text
    )
    assert "start-up: repository integrity check clean" in caplog.text


def test_opening_a_clean_repository_removes_nothing(tmp_path, caplog):
    # Prepare
    caplog.set_level(logging.INFO, logger="fedsim.real.stores")
    # Execute
    ServerStores.open(tmp_path, patience_s=10.0).close()
    # Assert
    assert "start-up: no leftovers in" in caplog.text
    assert "removed" not in caplog.text


def test_a_damaged_repository_is_reported_and_still_served(tmp_path, caplog):
    # Prepare: a version whose blob was deleted by hand.
    with SqliteRepository(tmp_path / "repository") as repo:
        repo.register_model("m", "mlp")
        lost = repo.add_version("m", weights(0))
        repo.add_version("m", weights(1))
    (tmp_path / "repository" / "blobs" / lost.sha256[:2] / f"{lost.sha256}.safetensors").unlink()
    # Execute
    stores = ServerStores.open(tmp_path, patience_s=10.0)
    try:
        latest = stores.repository.latest("m").version
    finally:
        stores.close()
    # Assert: the fault is logged as an error; what is whole stays available.
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == [
        f"start-up: repository integrity: model 'm' version 1: blob {lost.sha256} is missing"
    ]
    assert latest == 2


def test_a_data_directory_is_opened_by_one_server_at_a_time(tmp_path):
    # Prepare: a server's stores, with an upload of its own in progress.
    first = ServerStores.open(tmp_path, patience_s=10.0)
    in_progress = tmp_path / "repository" / "blobs" / "tmp" / "tmpupload.part"
    in_progress.write_bytes(b"being received")
    # Execute: a second server on the same directory, then again once the first has stopped.
    try:
        with pytest.raises(OSError, match="in use by another fedsim server"):
            ServerStores.open(tmp_path, patience_s=10.0)
        survived = in_progress.exists()
    finally:
        first.close()
    second = ServerStores.open(tmp_path, patience_s=10.0)
    second.close()
    # Assert: the refused start-up touched nothing; the next one collected the leftover.
    assert survived
    assert not in_progress.exists()
