"""The SQLite model repository and registry store: behaviour, persistence, crash safety."""

from __future__ import annotations

import hashlib
import io
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

import fedsim
from fedsim.core.registry import DeviceRegistry, DeviceRemoved, DeviceState
from fedsim.core.repository import (
    DeploymentState,
    DuplicateModel,
    InvalidDeploymentTransition,
    InvalidModelFile,
    UnknownDeployment,
    UnknownModel,
    UnknownVersion,
)
from fedsim.store.safetensors_io import check, decode, encode
from fedsim.store.sqlite import CHUNK_BYTES, SqliteRegistryStore, SqliteRepository

D = DeploymentState
PROJECT = Path(fedsim.__file__).resolve().parents[1]


class FakeClock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        self.t += 1.0  # every stamp distinct, so order shows in the records
        return self.t


@pytest.fixture
def repo(tmp_path):
    with SqliteRepository(tmp_path, clock=FakeClock()) as r:
        yield r


def weights(k: float = 0.0, n: int = 4) -> bytes:
    """A small model whose every value is ``k``: versions with distinct k differ in content."""
    return encode({"w": np.full((n, 3), k, np.float32), "b": np.full(3, k, np.float32)})


def blob_files(root: Path) -> list[Path]:
    return sorted((root / "blobs").glob("??/*.safetensors"))


def temp_files(root: Path) -> list[Path]:
    return sorted((root / "blobs" / "tmp").iterdir())


# -- models --


def test_register_list_and_get_models(repo):
    # Execute
    b = repo.register_model("yolov4", "YOLOv4", {"dataset": "imagenet", "classes": 1000})
    a = repo.register_model("mnist-cnn", "cnn")
    # Assert
    assert [m.name for m in repo.list_models()] == ["mnist-cnn", "yolov4"]
    assert repo.get_model("yolov4") == b
    assert b.metadata == {"dataset": "imagenet", "classes": 1000}
    assert (b.created_at, a.created_at) == (1001.0, 1002.0)  # stamped by the injected clock


def test_duplicate_model_is_refused_and_the_first_kept(repo):
    # Prepare
    first = repo.register_model("m", "cnn")
    # Execute / Assert
    with pytest.raises(DuplicateModel, match="'m' is already registered"):
        repo.register_model("m", "mlp")
    assert repo.get_model("m") == first


@pytest.mark.parametrize(
    ("name", "architecture", "metadata"),
    [
        ("", "cnn", None),
        ("a/b", "cnn", None),
        ("../up", "cnn", None),
        ("-x", "cnn", None),
        ("x" * 129, "cnn", None),
        ("m", "", None),
        ("m", "cnn", {"f": float("nan")}),
        ("m", "cnn", {"o": object()}),
    ],
)
def test_register_model_rejects_malformed_arguments(repo, name, architecture, metadata):
    # Execute / Assert
    with pytest.raises(ValueError):
        repo.register_model(name, architecture, metadata)
    assert repo.list_models() == []


def test_unknown_model(repo):
    # Execute / Assert
    for call in (
        lambda: repo.get_model("nope"),
        lambda: repo.add_version("nope", weights()),
        lambda: repo.list_versions("nope"),
        lambda: repo.get_version("nope", 1),
        lambda: repo.latest("nope"),
        lambda: repo.open_blob("nope", 1),
        lambda: repo.create_deployment("nope", 1, [1]),
        lambda: repo.list_deployments("nope"),
        lambda: repo.stats("nope"),
    ):
        with pytest.raises(UnknownModel, match="no model 'nope'"):
            call()


# -- versions --


def test_versions_are_numbered_from_one_and_addressed_by_sha256(repo):
    # Prepare
    repo.register_model("m", "cnn")
    blobs = [weights(k) for k in range(3)]
    # Execute
    versions = [
        repo.add_version("m", b, parent=i or None, round=i, metrics={"accuracy": 0.5 + i / 10})
        for i, b in enumerate(blobs)
    ]
    # Assert
    assert [v.version for v in versions] == [1, 2, 3]
    assert [v.parent for v in versions] == [None, 1, 2]
    assert [v.sha256 for v in versions] == [hashlib.sha256(b).hexdigest() for b in blobs]
    assert [v.size for v in versions] == [len(b) for b in blobs]
    assert repo.list_versions("m") == versions
    assert repo.get_version("m", 2) == versions[1]
    assert repo.latest("m") == versions[2]


def test_missing_versions(repo):
    # Prepare
    repo.register_model("m", "cnn")
    # Execute / Assert
    with pytest.raises(UnknownVersion, match="no versions yet"):
        repo.latest("m")
    repo.add_version("m", weights())
    with pytest.raises(UnknownVersion, match="'m' has no version 7"):
        repo.get_version("m", 7)
    with pytest.raises(UnknownVersion):
        repo.add_version("m", weights(1), parent=7)
    assert len(repo.list_versions("m")) == 1


def test_identical_content_is_stored_once(repo, tmp_path):
    # Prepare
    repo.register_model("a", "cnn")
    repo.register_model("b", "cnn")
    # Execute: the same bytes as two versions of a, and as a version of b.
    v1 = repo.add_version("a", weights(1))
    v2 = repo.add_version("a", weights(1))
    v3 = repo.add_version("b", weights(1))
    # Assert
    assert (v1.version, v2.version, v3.version) == (1, 2, 1)
    assert v1.sha256 == v2.sha256 == v3.sha256
    assert blob_files(tmp_path) == [tmp_path / "blobs" / v1.sha256[:2] / f"{v1.sha256}.safetensors"]


def test_add_version_streams_a_file_object_in_chunks(repo, tmp_path):
    # Prepare: a 6 MB upload behind a reader that records how much each read asks for.
    repo.register_model("big", "mlp")
    data = encode({f"layer{i}": np.full(2**17, i, np.float32) for i in range(12)})

    asked: list[int] = []

    class Upload(io.BytesIO):
        def read(self, n: int = -1) -> bytes:
            asked.append(n)
            return super().read(n)

    upload = Upload(data)
    # Execute
    tracemalloc.start()
    try:
        v = repo.add_version("big", upload)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Assert: bounded reads, and never the whole upload in Python memory at once.
    assert all(0 < n <= CHUNK_BYTES for n in asked)
    assert len(asked) > len(data) // CHUNK_BYTES
    assert peak < len(data) / 2
    assert v.sha256 == hashlib.sha256(data).hexdigest()


def test_open_blob_streams_the_stored_bytes(repo):
    # Prepare
    repo.register_model("m", "cnn")
    data = weights(2.5, n=100_000)
    repo.add_version("m", data)
    # Execute
    with repo.open_blob("m", 1) as f:
        chunks = list(iter(lambda: f.read(65536), b""))
    # Assert
    assert len(chunks) > 1
    assert b"".join(chunks) == data
    assert decode(b"".join(chunks))["b"].tolist() == [2.5] * 3


# -- refused uploads leave nothing behind --


@pytest.mark.parametrize(
    "upload",
    [
        b"PK\x03\x04 a zip archive",
        b"\x80\x04\x95 a pickle",
        b"",
    ],
)
def test_a_non_safetensors_upload_is_refused_and_nothing_stored(repo, tmp_path, upload):
    # Prepare
    repo.register_model("m", "cnn")
    # Execute
    with pytest.raises(InvalidModelFile, match=r"^not a safetensors file: "):
        repo.add_version("m", io.BytesIO(upload))
    # Assert
    assert repo.list_versions("m") == []
    assert blob_files(tmp_path) == [] and temp_files(tmp_path) == []


def test_an_upload_with_another_layout_is_refused_and_nothing_stored(repo, tmp_path):
    # Prepare
    repo.register_model("m", "cnn")
    first = repo.add_version("m", weights(0, n=4))
    # Execute
    with pytest.raises(InvalidModelFile) as info:
        repo.add_version("m", weights(1, n=5))
    # Assert
    assert (
        str(info.value) == "tensor 'w': shape (5, 3) != (4, 3) (the layout of model 'm' version 1)"
    )
    assert repo.list_versions("m") == [first]
    assert len(blob_files(tmp_path)) == 1 and temp_files(tmp_path) == []


def test_an_upload_with_a_non_finite_weight_is_refused_and_nothing_stored(repo, tmp_path):
    # Prepare: the layout of version 1, one infinity in it.
    repo.register_model("m", "cnn")
    first = repo.add_version("m", weights(0))
    poisoned = {"w": np.zeros((4, 3), np.float32), "b": np.array([0, np.inf, 0], np.float32)}
    # Execute
    with pytest.raises(InvalidModelFile) as info:
        repo.add_version("m", io.BytesIO(encode(poisoned)))
    # Assert
    assert str(info.value) == (
        "tensor 'b': non-finite value inf at index [1]; weights must be finite numbers"
    )
    assert repo.list_versions("m") == [first]
    assert len(blob_files(tmp_path)) == 1 and temp_files(tmp_path) == []


def test_a_failing_upload_stream_leaves_nothing_behind(repo, tmp_path):
    # Prepare: a client that disconnects halfway.
    repo.register_model("m", "cnn")

    class Broken(io.BytesIO):
        def read(self, n: int = -1) -> bytes:
            if self.tell() > 0:
                raise ConnectionResetError("client went away")
            return super().read(10)

    # Execute / Assert
    with pytest.raises(ConnectionResetError):
        repo.add_version("m", Broken(weights()))
    assert repo.list_versions("m") == []
    assert blob_files(tmp_path) == [] and temp_files(tmp_path) == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"round": -1}, "round"),
        ({"round": 1.5}, "round"),
        ({"metrics": {"loss": float("inf")}}, "finite"),
        ({"metrics": {"loss": "low"}}, "numbers"),
    ],
)
def test_add_version_rejects_malformed_arguments(repo, kwargs, message):
    # Prepare
    repo.register_model("m", "cnn")
    # Execute / Assert
    with pytest.raises(ValueError, match=message):
        repo.add_version("m", weights(), **kwargs)
    assert repo.list_versions("m") == []


# -- deployments --


@pytest.fixture
def deployed(repo):
    repo.register_model("m", "cnn")
    repo.add_version("m", weights(0))
    repo.add_version("m", weights(1))
    return repo


def test_a_deployment_follows_each_device(deployed):
    # Prepare
    repo = deployed
    dep = repo.create_deployment("m", 2, [3, 4, 8])
    # Execute
    repo.set_deployment_state(dep.id, 3, D.DOWNLOADING)
    repo.set_deployment_state(dep.id, 3, "deployed")
    repo.set_deployment_state(dep.id, 4, D.DOWNLOADING)
    repo.set_deployment_state(dep.id, 4, D.FAILED)
    last = repo.set_deployment_state(dep.id, 8, D.FAILED)  # never started: offline
    # Assert
    assert dep.devices == {3: D.PENDING, 4: D.PENDING, 8: D.PENDING}
    assert (dep.model, dep.version) == ("m", 2)
    assert last.devices == {3: D.DEPLOYED, 4: D.FAILED, 8: D.FAILED}
    assert repo.get_deployment(dep.id) == last


def test_deployment_states_change_together_or_not_at_all(deployed):
    # Prepare
    repo = deployed
    dep = repo.create_deployment("m", 2, [3, 4, 8])
    good = [(3, D.DOWNLOADING), (3, "deployed"), (4, D.DOWNLOADING), (4, D.FAILED)]
    # Execute
    last = repo.set_deployment_states(dep.id, good)
    unchanged = repo.set_deployment_states(dep.id, [])
    # Assert: in order, as one change at a time would; nothing changed by an empty batch.
    assert last.devices == {3: D.DEPLOYED, 4: D.FAILED, 8: D.PENDING}
    assert unchanged == last == repo.get_deployment(dep.id)
    # Execute / Assert: a batch with one refused change leaves every device as it was.
    with pytest.raises(InvalidDeploymentTransition, match="to deployed"):
        repo.set_deployment_states(dep.id, [(8, D.DOWNLOADING), (3, D.DEPLOYED)])
    assert repo.get_deployment(dep.id) == last


@pytest.mark.parametrize(
    ("path", "refused"),
    [
        ([], D.DEPLOYED),  # pending -> deployed skips the download
        ([], D.PENDING),
        ([D.DOWNLOADING], D.PENDING),
        ([D.DOWNLOADING], D.DOWNLOADING),
        ([D.DOWNLOADING, D.DEPLOYED], D.DOWNLOADING),
        ([D.DOWNLOADING, D.DEPLOYED], D.FAILED),
        ([D.FAILED], D.DOWNLOADING),  # a retry is a new deployment
        ([D.FAILED], D.PENDING),
    ],
)
def test_refused_deployment_transitions(deployed, path, refused):
    # Prepare
    dep = deployed.create_deployment("m", 1, [5])
    for state in path:
        deployed.set_deployment_state(dep.id, 5, state)
    before = deployed.get_deployment(dep.id)
    # Execute / Assert
    with pytest.raises(InvalidDeploymentTransition, match=f"to {refused.value}"):
        deployed.set_deployment_state(dep.id, 5, refused)
    assert deployed.get_deployment(dep.id) == before


def test_deployment_lookups_and_arguments(deployed):
    # Prepare
    dep = deployed.create_deployment("m", 1, [5])
    # Execute / Assert
    with pytest.raises(UnknownDeployment, match="no deployment 99"):
        deployed.get_deployment(99)
    with pytest.raises(UnknownDeployment, match="no deployment 99"):
        deployed.set_deployment_state(99, 5, D.DOWNLOADING)
    with pytest.raises(UnknownDeployment, match="device 6 is not part of deployment"):
        deployed.set_deployment_state(dep.id, 6, D.DOWNLOADING)
    with pytest.raises(ValueError):
        deployed.set_deployment_state(dep.id, 5, "installed")
    with pytest.raises(UnknownVersion):
        deployed.create_deployment("m", 3, [5])
    for devices in ([], [1, 1], [-1], ["a"]):
        with pytest.raises(ValueError):
            deployed.create_deployment("m", 1, devices)
    assert [d.id for d in deployed.list_deployments()] == [dep.id]


def test_list_deployments_by_model(deployed):
    # Prepare
    deployed.register_model("other", "mlp")
    deployed.add_version("other", weights())
    a = deployed.create_deployment("m", 1, [1])
    b = deployed.create_deployment("other", 1, [2])
    c = deployed.create_deployment("m", 2, [1, 2])
    # Execute / Assert
    assert [d.id for d in deployed.list_deployments()] == [a.id, b.id, c.id]
    assert deployed.list_deployments("m") == [a, c]
    assert deployed.list_deployments("other") == [b]


# -- statistics --


def test_stats_per_model_with_metrics_per_round(repo):
    # Prepare: rounds 0-2, round 1 published twice, one version outside any round.
    repo.register_model("m", "cnn")
    repo.add_version("m", weights(0), round=0, metrics={"accuracy": 0.1, "loss": 2.0})
    repo.add_version("m", weights(1), round=1, metrics={"accuracy": 0.4})
    repo.add_version("m", weights(9))  # uploaded by hand
    repo.add_version("m", weights(2), round=2, metrics={"accuracy": 0.7})
    repo.add_version("m", weights(2), round=1, metrics={"accuracy": 0.5})  # same bytes as v4
    repo.create_deployment("m", 4, [1, 2])
    size = len(weights(0))
    # Execute
    stats = repo.stats("m")
    # Assert
    assert (stats.model, stats.versions, stats.deployments) == ("m", 5, 1)
    assert stats.total_size == 4 * size  # v4 and v5 share one blob
    assert (stats.latest_version, stats.latest_size) == (5, size)
    assert [(r.round, r.version, r.metrics) for r in stats.rounds] == [
        (0, 1, {"accuracy": 0.1, "loss": 2.0}),
        (1, 2, {"accuracy": 0.4}),
        (1, 5, {"accuracy": 0.5}),
        (2, 4, {"accuracy": 0.7}),
    ]


def test_stats_of_a_model_without_versions(repo):
    # Prepare
    repo.register_model("m", "cnn")
    # Execute
    stats = repo.stats("m")
    # Assert
    assert (stats.versions, stats.deployments, stats.total_size) == (0, 0, 0)
    assert (stats.latest_version, stats.latest_size, stats.rounds) == (None, None, [])


# -- persistence and storage --


def test_reopening_shows_everything_and_numbering_continues(tmp_path):
    # Prepare
    with SqliteRepository(tmp_path) as repo:
        repo.register_model("m", "cnn", {"k": "v"})
        repo.add_version("m", weights(0), round=0, metrics={"accuracy": 0.3})
        dep = repo.create_deployment("m", 1, [1, 2])
        repo.set_deployment_state(dep.id, 1, D.DOWNLOADING)
        before = (
            repo.list_models(),
            repo.list_versions("m"),
            repo.list_deployments(),
            repo.stats("m"),
        )
    # Execute
    with SqliteRepository(tmp_path) as again:
        after = (
            again.list_models(),
            again.list_versions("m"),
            again.list_deployments(),
            again.stats("m"),
        )
        v2 = again.add_version("m", weights(1))
        dep2 = again.create_deployment("m", 2, [1])
    # Assert
    assert after == before
    assert v2.version == 2 and dep2.id == dep.id + 1


def test_databases_run_in_wal_mode(tmp_path):
    # Prepare
    SqliteRepository(tmp_path).close()
    SqliteRegistryStore(tmp_path).close()
    # Execute
    modes = {}
    for name in ("repository.db", "registry.db"):
        with sqlite3.connect(tmp_path / name) as db:
            modes[name] = db.execute("PRAGMA journal_mode").fetchone()[0]
    # Assert: WAL is a property of the file, so a fresh connection sees it.
    assert modes == {"repository.db": "wal", "registry.db": "wal"}


def test_gc_removes_unreferenced_blobs_and_stale_temp_files(repo, tmp_path):
    # Prepare: a kept version, an orphan blob (as a crash before the commit leaves), a temp file.
    repo.register_model("m", "cnn")
    kept = repo.add_version("m", weights(0))
    orphan = tmp_path / "blobs" / "ab" / ("ab" + "0" * 62 + ".safetensors")
    orphan.parent.mkdir()
    orphan.write_bytes(weights(1))
    stale = tmp_path / "blobs" / "tmp" / "upload.part"
    stale.write_bytes(b"half an upload")
    # Execute: with the default grace a fresh temp file survives; with none it goes.
    first = repo.gc()
    second = repo.gc(grace=0)
    # Assert
    assert (first.blobs, first.temp_files) == (1, 0)
    assert first.bytes == len(weights(1))
    assert (second.blobs, second.temp_files, second.bytes) == (0, 1, len(b"half an upload"))
    assert blob_files(tmp_path) == [
        tmp_path / "blobs" / kept.sha256[:2] / f"{kept.sha256}.safetensors"
    ]
    assert temp_files(tmp_path) == []
    assert repo.open_blob("m", 1).read() == weights(0)


def test_integrity_check_of_a_whole_repository_is_empty(repo):
    # Prepare: two models, one blob shared by two versions.
    repo.register_model("m", "cnn")
    repo.register_model("n", "cnn")
    repo.add_version("m", weights(0))
    repo.add_version("m", weights(1))
    repo.add_version("n", weights(0))
    # Execute / Assert
    assert repo.check_integrity() == []
    assert repo.check_integrity(hashes=True) == []


def test_integrity_check_names_missing_truncated_and_altered_blobs(repo, tmp_path):
    # Prepare: three versions, then their blobs damaged three ways behind the repository's back.
    repo.register_model("m", "cnn")
    gone, short, altered = (repo.add_version("m", weights(k)) for k in (0, 1, 2))
    path = {v.version: tmp_path / "blobs" / v.sha256[:2] / f"{v.sha256}.safetensors"
            for v in (gone, short, altered)}  # fmt: skip
    path[1].unlink()
    path[2].write_bytes(path[2].read_bytes()[:-1])
    data = bytearray(path[3].read_bytes())
    data[-1] ^= 0xFF
    path[3].write_bytes(bytes(data))
    # Execute
    cheap, full = repo.check_integrity(), repo.check_integrity(hashes=True)
    # Assert: sizes are always compared, contents only when asked.
    assert cheap == [
        f"model 'm' version 1: blob {gone.sha256} is missing",
        f"model 'm' version 2: blob {short.sha256} holds {short.size - 1} bytes, not {short.size}",
    ]
    altered_sha = hashlib.sha256(bytes(data)).hexdigest()
    assert full == [*cheap, f"model 'm' version 3: blob {altered.sha256} has sha256 {altered_sha}"]


def test_concurrent_uploads_from_threads_get_contiguous_versions(repo):
    # Prepare
    repo.register_model("m", "cnn")
    errors = []

    def upload(k: int) -> None:
        try:
            for j in range(5):
                repo.add_version("m", weights(10 * k + j), metrics={"k": float(10 * k + j)})
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=upload, args=(k,)) for k in range(4)]
    # Execute
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Assert
    versions = repo.list_versions("m")
    assert errors == []
    assert [v.version for v in versions] == list(range(1, 21))
    assert sorted(v.metrics["k"] for v in versions) == sorted(
        float(10 * k + j) for k in range(4) for j in range(5)
    )


# -- the registry's SQLite store --


def test_registry_store_persists_devices_across_restarts(tmp_path):
    # Prepare
    clock = FakeClock()
    store = SqliteRegistryStore(tmp_path)
    reg = DeviceRegistry(store, patience=60, clock=clock)
    gpu = reg.register(description="Training (GPU)", group=1, id_in_group=1, labels={"gpu": "1"})
    cam = reg.register(description="IP Camera", group=2, profile="camera")
    reg.heartbeat(gpu.id, {"cpu_busy": 0.3, "bandwidth_up": 1.25e7})
    reg.set_busy(gpu.id, True)
    reg.remove(cam.id)
    before = reg.list() + reg.list(state=DeviceState.REMOVED)
    store.close()
    # Execute
    store = SqliteRegistryStore(tmp_path)
    again = DeviceRegistry(store, patience=60, clock=clock)
    # Assert
    assert again.list() + again.list(state=DeviceState.REMOVED) == before
    assert again.get(gpu.id).resources == {"cpu_busy": 0.3, "bandwidth_up": 1.25e7}
    with pytest.raises(DeviceRemoved):
        again.heartbeat(cam.id)
    assert again.register().id == cam.id + 1
    store.close()


def test_registry_store_keeps_measured_profiles_and_calibration_requests(tmp_path):
    # Prepare
    clock = FakeClock()
    store = SqliteRegistryStore(tmp_path)
    reg = DeviceRegistry(store, patience=60, clock=clock)
    dev = reg.register(group=1)
    steps = {"overhead_s": 6e-4, "per_sample_s": 2e-5, "batch_sizes": [8, 16, 32]}
    reg.report_profile(dev.id, {"kind": "measured", "steps": {"digits_cnn": steps}})
    asked = reg.request_calibration(dev.id, "mlp").calibration_request
    assert asked is not None
    reg.fail_calibration(dev.id, asked.requested_at, "mlp: no such model here")
    before = reg.get(dev.id)
    store.close()

    # Execute
    store = SqliteRegistryStore(tmp_path)
    again = DeviceRegistry(store, patience=60, clock=clock).get(dev.id)
    store.close()

    # Assert
    assert again == before
    assert again.measured is not None and again.measured["steps"]["digits_cnn"] == steps
    assert again.calibration_request is not None and again.calibration_request.model == "mlp"
    assert again.calibration_request.reason == "mlp: no such model here"
    assert again.calibration_request.failed_at is not None


def test_a_calibration_request_stored_before_failures_were_kept_reads_as_pending(tmp_path):
    # Prepare: a request as fedsim stored it before failures were kept (model, requested_at).
    store = SqliteRegistryStore(tmp_path)
    dev = DeviceRegistry(store, patience=60, clock=FakeClock()).register()
    store.close()
    db = sqlite3.connect(tmp_path / "registry.db")
    db.execute(
        "UPDATE devices SET calibration_request = ? WHERE id = ?",
        ('{"model": "mlp", "requested_at": 5.0}', dev.id),
    )
    db.commit()
    db.close()

    # Execute
    store = SqliteRegistryStore(tmp_path)
    reg = DeviceRegistry(store, patience=60, clock=FakeClock())
    pending = reg.get(dev.id).calibration_request
    failed = reg.fail_calibration(dev.id, 5.0, "mlp: no such model here").calibration_request
    store.close()

    # Assert
    assert pending is not None and (pending.model, pending.requested_at) == ("mlp", 5.0)
    assert pending.failed_at is None and pending.reason is None
    assert failed is not None and failed.reason == "mlp: no such model here"


def test_a_registry_written_before_measured_profiles_is_upgraded(tmp_path):
    # Prepare: a registry.db of schema 1, as fedsim wrote it before measured profiles.
    db = sqlite3.connect(tmp_path / "registry.db")
    db.execute(
        "CREATE TABLE devices (id INTEGER PRIMARY KEY, description TEXT NOT NULL, "
        "group_id INTEGER NOT NULL, id_in_group INTEGER, profile TEXT NOT NULL, "
        "labels TEXT NOT NULL, state TEXT NOT NULL, registered_at REAL NOT NULL, "
        "last_seen REAL, resources TEXT NOT NULL, removed_at REAL)"
    )
    db.execute(
        "INSERT INTO devices VALUES (3, 'old', 1, 0, '', '{}', 'online', 1.0, 2.0, '{}', NULL)"
    )
    db.execute("PRAGMA user_version=1")
    db.commit()
    db.close()

    # Execute
    store = SqliteRegistryStore(tmp_path)
    reg = DeviceRegistry(store, patience=1e9, clock=FakeClock())
    old = reg.get(3)
    reg.report_profile(3, {"steps": {"mlp": {"overhead_s": 1e-3}}})
    store.close()

    # Assert
    assert old.description == "old" and old.measured is None and old.calibration_request is None
    store = SqliteRegistryStore(tmp_path)
    assert DeviceRegistry(store, patience=1e9).get(3).measured == {
        "steps": {"mlp": {"overhead_s": 1e-3}}
    }
    store.close()


# -- crash safety, for real --

WRITER = """
import sys
import numpy as np
from fedsim.core.repository import DuplicateModel, UnknownVersion
from fedsim.store.safetensors_io import encode
from fedsim.store.sqlite import SqliteRepository

repo = SqliteRepository(sys.argv[1])
try:
    repo.register_model("m", "mlp")
except DuplicateModel:
    pass
bases = [np.random.default_rng(k).standard_normal(500_000).astype(np.float32) for k in range(3)]
try:
    parent = repo.latest("m").version
except UnknownVersion:
    parent = None
rng = np.random.default_rng(int(sys.argv[2]))
print("ready", flush=True)
for i in range(1, 10**9):
    # 2 MB each; a third are new content, the rest repeat one of three (the dedup path).
    k, n = int(rng.integers(3)), (i if rng.random() < 1 / 3 else 0)
    data = encode({"w": bases[k], "tag": np.array([k, n], np.float32)})
    parent = repo.add_version(
        "m", data, parent=parent, round=k, metrics={"k": float(k), "n": float(n)}
    ).version
"""


def test_killing_a_writer_at_random_moments_never_tears_the_repository(tmp_path):
    # Prepare
    rng = np.random.default_rng(20240611)
    delays = rng.uniform(0.05, 0.4, size=7)
    try:
        # Execute: start a writer, let it run for a random while, SIGKILL it; seven times.
        for i, delay in enumerate(delays):
            proc = subprocess.Popen(
                [sys.executable, "-c", WRITER, str(tmp_path), str(i)],
                cwd=PROJECT,
                stdout=subprocess.PIPE,
                text=True,
            )
            try:
                assert proc.stdout.readline() == "ready\n"
                threading.Event().wait(delay)
            finally:
                proc.kill()
                proc.wait()
                proc.stdout.close()
            assert proc.returncode == -signal.SIGKILL  # killed while writing, not crashed
        # Assert
        with sqlite3.connect(tmp_path / "repository.db") as db:
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        with SqliteRepository(tmp_path) as repo:
            versions = repo.list_versions("m")
            assert [v.version for v in versions] == list(range(1, len(versions) + 1))
            assert len(versions) >= len(delays)  # each writer got something in
            for v in versions:
                with repo.open_blob("m", v.version) as f:
                    data = f.read()
                assert (len(data), hashlib.sha256(data).hexdigest()) == (v.size, v.sha256)
                check(data)
                # The row and its blob were written together: they tell the same story.
                assert decode(data)["tag"].tolist() == [v.metrics["k"], v.metrics["n"]]
                assert v.round == v.metrics["k"]
                assert v.parent == (v.version - 1 if v.version > 1 else None)
            # Whatever the kills left behind is garbage no row names, and gc clears it.
            repo.gc(grace=0)
            assert {p.name for p in blob_files(tmp_path)} == {
                f"{v.sha256}.safetensors" for v in versions
            }
            assert temp_files(tmp_path) == []
            # And the repository takes the next version as if nothing had happened.
            next_data = encode({"w": np.zeros(500_000, np.float32), "tag": np.zeros(2, np.float32)})
            assert repo.add_version("m", next_data).version == len(versions) + 1
    finally:
        shutil.rmtree(tmp_path / "blobs", ignore_errors=True)  # ~100 MB pytest would keep
