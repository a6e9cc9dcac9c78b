"""The model repository and the device registry's store on SQLite and a blob directory.

Files under ``root``::

    repository.db                          models, versions, deployments
    registry.db                            device records
    blobs/<sha[:2]>/<sha256>.safetensors   version contents, content-addressed, written once
    blobs/tmp/*.part                       uploads being received

Two databases, not one, because their writes differ: the repository commits rarely and each
commit must survive a power failure, while the registry commits on every heartbeat and losing
the last few costs nothing; separate files also keep heartbeats from waiting on the
repository's write lock. Both run in WAL mode, so readers never block the writer.

``synchronous``: FULL for the repository, since a version number returned to a client must
never be handed out again for other bytes after a power failure, and a commit there is cheap
next to the fsync of the blob it records. The registry store commits heartbeats and sweeps
(``durable=False``) with NORMAL, which in WAL mode can lose the last commits on power loss but
never corrupts, and registrations, assignments and removals with FULL, so a removed id stays
removed. A killed process loses nothing under either setting; only the OS crashing can.

Crash safety of an upload: the bytes are streamed into ``blobs/tmp`` while hashed, fsynced, and
validated; then, inside the database write transaction, renamed to their content address, the
directory fsynced, and the version row inserted. A crash before the commit leaves at most a
temp file or a blob no row names, never a row without its blob: garbage that ``gc`` removes
(a server runs it whenever it starts) and that ``check_integrity`` does not count as a fault.

Threads: each object holds one connection, opened with ``check_same_thread=False`` and used
under a lock, so an event loop and its executor threads can share it; SQLite admits one writer
at a time anyway. Streaming, hashing and validating an upload happen outside the lock. Other
processes may open the same root: writers serialize on SQLite's lock (``BEGIN IMMEDIATE``).
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

from fedsim.core.registry import CalibrationRequest, DeviceRecord, DeviceState, RegistryStore
from fedsim.core.repository import (
    Deployment,
    DeploymentState,
    DuplicateModel,
    InvalidModelFile,
    ModelInfo,
    ModelRepository,
    ModelStats,
    RoundMetrics,
    UnknownDeployment,
    UnknownModel,
    UnknownVersion,
    VersionInfo,
    check_deployment_transition,
    check_metrics,
    check_model_name,
)
from fedsim.store.safetensors_io import Layout, check, compare_layouts, read_layout

CHUNK_BYTES = 1 << 20  # an upload is copied in pieces this big, never held whole

_REPOSITORY_SCHEMA = (
    """CREATE TABLE models (
        name TEXT PRIMARY KEY,
        architecture TEXT NOT NULL,
        metadata TEXT NOT NULL,
        created_at REAL NOT NULL)""",
    """CREATE TABLE versions (
        model TEXT NOT NULL REFERENCES models (name),
        version INTEGER NOT NULL CHECK (version >= 1),
        sha256 TEXT NOT NULL,
        size INTEGER NOT NULL,
        parent INTEGER,
        round INTEGER,
        metrics TEXT NOT NULL,
        created_at REAL NOT NULL,
        PRIMARY KEY (model, version),
        FOREIGN KEY (model, parent) REFERENCES versions (model, version))""",
    "CREATE INDEX versions_by_sha256 ON versions (sha256)",
    # AUTOINCREMENT: a deployment id is never reused, even for the highest one.
    """CREATE TABLE deployments (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        model TEXT NOT NULL,
        version INTEGER NOT NULL,
        created_at REAL NOT NULL,
        FOREIGN KEY (model, version) REFERENCES versions (model, version))""",
    "CREATE INDEX deployments_by_model ON deployments (model)",
    """CREATE TABLE deployment_devices (
        deployment INTEGER NOT NULL REFERENCES deployments (id),
        device INTEGER NOT NULL,
        state TEXT NOT NULL,
        updated_at REAL NOT NULL,
        PRIMARY KEY (deployment, device))""",
)

_REGISTRY_SCHEMA = (
    """CREATE TABLE devices (
        id INTEGER PRIMARY KEY,
        description TEXT NOT NULL,
        group_id INTEGER NOT NULL,
        id_in_group INTEGER,
        profile TEXT NOT NULL,
        labels TEXT NOT NULL,
        state TEXT NOT NULL,
        registered_at REAL NOT NULL,
        last_seen REAL,
        resources TEXT NOT NULL,
        removed_at REAL,
        measured TEXT,
        measured_at REAL,
        calibration_request TEXT)""",
)
# Upgrades of a registry.db written by an older fedsim, by the schema version they lead from.
_REGISTRY_MIGRATIONS: Mapping[int, tuple[str, ...]] = {
    # 1 -> 2: measured hardware profiles and requests for a new measurement.
    1: (
        "ALTER TABLE devices ADD COLUMN measured TEXT",
        "ALTER TABLE devices ADD COLUMN measured_at REAL",
        "ALTER TABLE devices ADD COLUMN calibration_request TEXT",
    ),
}


class _Database:
    """One SQLite connection in WAL mode, shared by threads under a lock.

    ``schema`` creates the newest layout; ``migrations[v]`` upgrades a database at schema
    version ``v`` to ``v + 1``, so the newest version is ``1 + len(migrations)``.
    """

    def __init__(
        self,
        path: Path,
        *,
        synchronous: str,
        schema: Iterable[str],
        migrations: Mapping[int, Iterable[str]] | None = None,
    ) -> None:
        migrations = dict(migrations or {})
        newest = 1 + len(migrations)
        self._lock = threading.RLock()
        # isolation_level=None: no implicit transactions; every write says BEGIN IMMEDIATE, so
        # it takes the write lock before it reads what it will change.
        self._db = sqlite3.connect(
            path, timeout=30.0, isolation_level=None, check_same_thread=False
        )
        self._db.row_factory = sqlite3.Row
        mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode != "wal":
            raise RuntimeError(f"{path}: cannot use WAL mode (got {mode!r})")
        self._synchronous = self._level = synchronous
        self._db.execute(f"PRAGMA synchronous={synchronous}")
        self._db.execute("PRAGMA foreign_keys=ON")
        with self.write() as db:
            found = db.execute("PRAGMA user_version").fetchone()[0]
            if found > newest:
                raise RuntimeError(f"{path}: schema {found} is newer than this fedsim's")
            if found == 0:
                for statement in schema:
                    db.execute(statement)
            else:
                for version in range(found, newest):
                    for statement in migrations[version]:
                        db.execute(statement)
            if found != newest:
                db.execute(f"PRAGMA user_version={newest}")

    @contextmanager
    def write(self, *, synchronous: str | None = None) -> Iterator[sqlite3.Connection]:
        """A write transaction, committed if the block succeeds; optionally with another
        ``synchronous`` level for this commit only."""
        with self._lock:
            level = synchronous or self._synchronous
            if level != self._level:  # the pragma cannot change inside a transaction
                self._db.execute(f"PRAGMA synchronous={level}")
                self._level = level
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            else:
                self._db.execute("COMMIT")

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: the statements in the block see one snapshot."""
        with self._lock:
            self._db.execute("BEGIN")
            try:
                yield self._db
            finally:
                self._db.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._db.close()


class GcResult(NamedTuple):
    """What ``SqliteRepository.gc`` removed."""

    blobs: int
    temp_files: int
    bytes: int


class SqliteRepository(ModelRepository):
    """A ``ModelRepository`` in ``root/repository.db`` with blobs under ``root/blobs``."""

    def __init__(self, root: Path | str, *, clock: Callable[[], float] = time.time) -> None:
        self.root = Path(root)
        self._blobs = self.root / "blobs"
        self._tmp = self._blobs / "tmp"
        self._tmp.mkdir(parents=True, exist_ok=True)
        self._clock = clock
        self._db = _Database(
            self.root / "repository.db", synchronous="FULL", schema=_REPOSITORY_SCHEMA
        )
        # Temp files this process is writing right now, which gc must leave alone.
        self._spooling: set[Path] = set()
        self._spooling_lock = threading.Lock()

    def close(self) -> None:
        self._db.close()

    # -- models --

    def register_model(
        self, name: str, architecture: str, metadata: Mapping[str, Any] | None = None
    ) -> ModelInfo:
        check_model_name(name)
        if not isinstance(architecture, str) or not architecture:
            raise ValueError(f"architecture must be a non-empty string, got {architecture!r}")
        try:
            text = json.dumps(dict(metadata or {}), sort_keys=True, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise ValueError(f"metadata must be JSON-compatible: {e}") from None
        info = ModelInfo(
            name=name,
            architecture=architecture,
            metadata=json.loads(text),  # as a later read returns it (tuples become lists...)
            created_at=self._clock(),
        )
        try:
            with self._db.write() as db:
                db.execute(
                    "INSERT INTO models VALUES (?, ?, ?, ?)",
                    (name, architecture, text, info.created_at),
                )
        except sqlite3.IntegrityError:
            raise DuplicateModel(f"model {name!r} is already registered") from None
        return info

    def list_models(self) -> list[ModelInfo]:
        with self._db.read() as db:
            return [_model(r) for r in db.execute("SELECT * FROM models ORDER BY name")]

    def get_model(self, name: str) -> ModelInfo:
        with self._db.read() as db:
            return _model(self._model_row(db, name))

    # -- versions --

    def add_version(
        self,
        name: str,
        data: bytes | BinaryIO,
        *,
        parent: int | None = None,
        round: int | None = None,
        metrics: Mapping[str, float] | None = None,
    ) -> VersionInfo:
        metrics = check_metrics(metrics)
        if round is not None and (not _is_int(round) or round < 0):
            raise ValueError(f"round must be an integer >= 0, got {round!r}")
        # Checked before the upload is read, so a typo costs no 250 MB transfer. Models and
        # versions are never deleted, so these checks stay true until the commit.
        with self._db.read() as db:
            self._model_row(db, name)
            if parent is not None:
                self._version_row(db, name, parent)
            base = self._latest_row(db, name)
        tmp, sha256, size = self._spool(data)
        try:
            layout = check(tmp)
            self._match(name, layout, base)
            with self._db.write() as db:
                head = self._latest_row(db, name)
                if _number(head) != _number(base):  # another writer added a version meanwhile
                    self._match(name, layout, head)
                self._publish(tmp, self._blob_path(sha256))
                info = VersionInfo(
                    model=name,
                    version=_number(head) + 1,
                    sha256=sha256,
                    size=size,
                    parent=parent,
                    round=round,
                    metrics=metrics,
                    created_at=self._clock(),
                )
                db.execute(
                    "INSERT INTO versions VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        name,
                        info.version,
                        sha256,
                        size,
                        parent,
                        round,
                        json.dumps(metrics, sort_keys=True),
                        info.created_at,
                    ),
                )
            return info
        finally:
            tmp.unlink(missing_ok=True)
            with self._spooling_lock:
                self._spooling.discard(tmp)

    def list_versions(self, name: str) -> list[VersionInfo]:
        with self._db.read() as db:
            self._model_row(db, name)
            rows = db.execute("SELECT * FROM versions WHERE model = ? ORDER BY version", (name,))
            return [_version(r) for r in rows]

    def get_version(self, name: str, version: int) -> VersionInfo:
        with self._db.read() as db:
            return _version(self._version_row(db, name, version))

    def latest(self, name: str) -> VersionInfo:
        with self._db.read() as db:
            self._model_row(db, name)
            row = self._latest_row(db, name)
        if row is None:
            raise UnknownVersion(f"model {name!r} has no versions yet")
        return _version(row)

    def open_blob(self, name: str, version: int) -> BinaryIO:
        return self._blob_path(self.get_version(name, version).sha256).open("rb")

    # -- deployments --

    def create_deployment(self, name: str, version: int, devices: Iterable[int]) -> Deployment:
        ids = list(devices)
        if not ids:
            raise ValueError("a deployment needs at least one device")
        if not all(_is_int(d) and d >= 0 for d in ids):
            raise ValueError(f"device ids must be integers >= 0, got {ids!r}")
        if len(set(ids)) != len(ids):
            raise ValueError(f"device ids must be distinct, got {ids!r}")
        now = self._clock()
        with self._db.write() as db:
            self._version_row(db, name, version)
            cursor = db.execute(
                "INSERT INTO deployments (model, version, created_at) VALUES (?, ?, ?)",
                (name, version, now),
            )
            id = cursor.lastrowid
            db.executemany(
                "INSERT INTO deployment_devices VALUES (?, ?, ?, ?)",
                [(id, d, DeploymentState.PENDING.value, now) for d in ids],
            )
        return Deployment(
            id=id,
            model=name,
            version=version,
            devices=dict.fromkeys(ids, DeploymentState.PENDING),
            created_at=now,
        )

    def set_deployment_state(
        self, id: int, device: int, state: DeploymentState | str
    ) -> Deployment:
        return self.set_deployment_states(id, [(device, state)])

    def set_deployment_states(
        self, id: int, changes: Iterable[tuple[int, DeploymentState | str]]
    ) -> Deployment:
        # One transaction: a round's hundreds of changes cost one fsync, not one each.
        with self._db.write() as db:
            for device, state in changes:
                self._set_state(db, id, device, DeploymentState(state))
            return self._deployment(db, id)

    def _set_state(
        self, db: sqlite3.Connection, id: int, device: int, state: DeploymentState
    ) -> None:
        row = db.execute(
            "SELECT state FROM deployment_devices WHERE deployment = ? AND device = ?",
            (id, device),
        ).fetchone()
        if row is None:
            self._deployment(db, id)  # raises if the deployment itself is unknown
            raise UnknownDeployment(f"device {device} is not part of deployment {id}")
        check_deployment_transition(id, device, DeploymentState(row["state"]), state)
        db.execute(
            "UPDATE deployment_devices SET state = ?, updated_at = ? "
            "WHERE deployment = ? AND device = ?",
            (state.value, self._clock(), id, device),
        )

    def get_deployment(self, id: int) -> Deployment:
        with self._db.read() as db:
            return self._deployment(db, id)

    def list_deployments(self, name: str | None = None) -> list[Deployment]:
        with self._db.read() as db:
            if name is None:
                rows = db.execute("SELECT id FROM deployments ORDER BY id")
            else:
                self._model_row(db, name)
                rows = db.execute("SELECT id FROM deployments WHERE model = ? ORDER BY id", (name,))
            return [self._deployment(db, r["id"]) for r in rows.fetchall()]

    # -- statistics --

    def stats(self, name: str) -> ModelStats:
        with self._db.read() as db:
            self._model_row(db, name)
            versions = db.execute(
                "SELECT COUNT(*) FROM versions WHERE model = ?", (name,)
            ).fetchone()[0]
            deployments = db.execute(
                "SELECT COUNT(*) FROM deployments WHERE model = ?", (name,)
            ).fetchone()[0]
            total = db.execute(
                "SELECT COALESCE(SUM(size), 0) FROM "
                "(SELECT DISTINCT sha256, size FROM versions WHERE model = ?)",
                (name,),
            ).fetchone()[0]
            latest = self._latest_row(db, name)
            rounds = db.execute(
                "SELECT round, version, metrics FROM versions "
                "WHERE model = ? AND round IS NOT NULL ORDER BY round, version",
                (name,),
            ).fetchall()
        return ModelStats(
            model=name,
            versions=versions,
            deployments=deployments,
            total_size=total,
            latest_version=None if latest is None else latest["version"],
            latest_size=None if latest is None else latest["size"],
            rounds=[
                RoundMetrics(
                    round=r["round"], version=r["version"], metrics=json.loads(r["metrics"])
                )
                for r in rounds
            ],
        )

    # -- maintenance --

    def gc(self, *, grace: float = 3600.0) -> GcResult:
        """Delete blobs no version names, and temp files older than ``grace`` seconds.

        Runs inside a write transaction, so no writer (of any process) can be about to name
        a blob it deletes. A temp file of another process's upload in progress is protected
        only by its age, hence ``grace``; those of this process are never touched.
        """
        blobs = temp_files = freed = 0
        with self._db.write() as db:
            named = {r[0] for r in db.execute("SELECT DISTINCT sha256 FROM versions")}
            for path in self._blobs.glob("??/*.safetensors"):
                if path.stem not in named:
                    freed += path.stat().st_size
                    path.unlink()
                    blobs += 1
            cutoff = time.time() - grace  # file mtimes are wall-clock, whatever self._clock is
            with self._spooling_lock:
                active = set(self._spooling)
            for path in self._tmp.iterdir():
                stat = path.stat()
                if path not in active and stat.st_mtime <= cutoff:
                    freed += stat.st_size
                    path.unlink()
                    temp_files += 1
        return GcResult(blobs=blobs, temp_files=temp_files, bytes=freed)

    def check_integrity(self, *, hashes: bool = False) -> list[str]:
        """What is wrong with the repository, one line each; an empty list when it is whole.

        Checks SQLite's own structures and foreign keys, and that the blob of every version
        exists with its recorded size; with ``hashes``, also that its sha256 is the recorded
        one, which reads every blob (minutes for a repository of many large versions). Blobs
        no version names and temp files are not faults but garbage: see :meth:`gc`.
        """
        with self._db.read() as db:
            problems = [
                f"repository.db: {row[0]}"
                for row in db.execute("PRAGMA integrity_check")
                if row[0] != "ok"
            ]
            problems += [
                f"repository.db: a row of {row[0]} names a missing row of {row[2]}"
                for row in db.execute("PRAGMA foreign_key_check")
            ]
            versions = db.execute(
                "SELECT model, version, sha256, size FROM versions ORDER BY model, version"
            ).fetchall()
        verdicts: dict[str, str | None] = {}  # by sha256: versions may share a blob
        for model, version, sha256, size in versions:
            if sha256 not in verdicts:
                verdicts[sha256] = self._blob_fault(sha256, size, hashes=hashes)
            if verdicts[sha256] is not None:
                problems.append(f"model {model!r} version {version}: {verdicts[sha256]}")
        return problems

    # -- internals --

    def _blob_fault(self, sha256: str, size: int, *, hashes: bool) -> str | None:
        """What is wrong with the blob a version names, or None."""
        path = self._blob_path(sha256)
        try:
            found = path.stat().st_size
        except FileNotFoundError:
            return f"blob {sha256} is missing"
        if found != size:
            return f"blob {sha256} holds {found} bytes, not {size}"
        if hashes:
            digest = hashlib.sha256()
            with path.open("rb") as f:
                while chunk := f.read(CHUNK_BYTES):
                    digest.update(chunk)
            if digest.hexdigest() != sha256:
                return f"blob {sha256} has sha256 {digest.hexdigest()}"
        return None

    def _blob_path(self, sha256: str) -> Path:
        return self._blobs / sha256[:2] / f"{sha256}.safetensors"

    def _spool(self, data: bytes | BinaryIO) -> tuple[Path, str, int]:
        """Copy the upload to a temp file in chunks while hashing it; fsync it."""
        fd, name = tempfile.mkstemp(dir=self._tmp, suffix=".part")
        path = Path(name)
        with self._spooling_lock:
            self._spooling.add(path)
        digest = hashlib.sha256()
        size = 0
        try:
            with os.fdopen(fd, "wb") as f:
                for chunk in _chunks(data):
                    digest.update(chunk)
                    f.write(chunk)
                    size += len(chunk)
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            path.unlink(missing_ok=True)
            with self._spooling_lock:
                self._spooling.discard(path)
            raise
        return path, digest.hexdigest(), size

    def _publish(self, tmp: Path, final: Path) -> None:
        """Move a validated upload to its content address, durably; the caller holds the
        write transaction, so gc cannot remove ``final`` before the row naming it commits."""
        if final.exists():
            return  # same sha256, same bytes: identical content is stored once
        if not final.parent.is_dir():
            final.parent.mkdir()
            _fsync_dir(final.parent.parent)
        os.replace(tmp, final)
        _fsync_dir(final.parent)

    def _match(self, name: str, layout: Layout, base: sqlite3.Row | None) -> None:
        """Refuse an upload whose tensors differ from those of version ``base``."""
        if base is None:
            return  # the first version sets the layout
        try:
            compare_layouts(layout, read_layout(self._blob_path(base["sha256"])))
        except InvalidModelFile as e:
            raise InvalidModelFile(
                f"{e} (the layout of model {name!r} version {base['version']})"
            ) from None

    @staticmethod
    def _model_row(db: sqlite3.Connection, name: str) -> sqlite3.Row:
        row = db.execute("SELECT * FROM models WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise UnknownModel(f"no model {name!r}")
        return row

    def _version_row(self, db: sqlite3.Connection, name: str, version: int) -> sqlite3.Row:
        row = db.execute(
            "SELECT * FROM versions WHERE model = ? AND version = ?", (name, version)
        ).fetchone()
        if row is None:
            self._model_row(db, name)
            raise UnknownVersion(f"model {name!r} has no version {version}")
        return row

    @staticmethod
    def _latest_row(db: sqlite3.Connection, name: str) -> sqlite3.Row | None:
        return db.execute(
            "SELECT * FROM versions WHERE model = ? ORDER BY version DESC LIMIT 1", (name,)
        ).fetchone()

    @staticmethod
    def _deployment(db: sqlite3.Connection, id: int) -> Deployment:
        row = db.execute("SELECT * FROM deployments WHERE id = ?", (id,)).fetchone()
        if row is None:
            raise UnknownDeployment(f"no deployment {id}")
        devices = db.execute(
            "SELECT device, state FROM deployment_devices WHERE deployment = ? ORDER BY device",
            (id,),
        )
        return Deployment(
            id=row["id"],
            model=row["model"],
            version=row["version"],
            devices={r["device"]: DeploymentState(r["state"]) for r in devices},
            created_at=row["created_at"],
        )


class SqliteRegistryStore(RegistryStore):
    """A ``RegistryStore`` in ``root/registry.db``."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._db = _Database(
            self.root / "registry.db",
            synchronous="NORMAL",
            schema=_REGISTRY_SCHEMA,
            migrations=_REGISTRY_MIGRATIONS,
        )

    def close(self) -> None:
        self._db.close()

    def load_all(self) -> list[DeviceRecord]:
        with self._db.read() as db:
            return [_device(r) for r in db.execute("SELECT * FROM devices ORDER BY id")]

    def save(self, record: DeviceRecord, *, durable: bool = True) -> None:
        self.save_many([record], durable=durable)

    def save_many(self, records: Iterable[DeviceRecord], *, durable: bool = True) -> None:
        rows = [
            (
                r.id,
                r.description,
                r.group,
                r.id_in_group,
                r.profile,
                json.dumps(r.labels, sort_keys=True),
                r.state.value,
                r.registered_at,
                r.last_seen,
                json.dumps(r.resources, sort_keys=True),
                r.removed_at,
                _json_or_none(r.measured),
                r.measured_at,
                None
                if r.calibration_request is None
                else json.dumps(asdict(r.calibration_request)),
            )
            for r in records
        ]
        if not rows:
            return
        with self._db.write(synchronous="FULL" if durable else "NORMAL") as db:
            db.executemany(
                "INSERT OR REPLACE INTO devices VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows
            )


def _json_or_none(value: Any) -> str | None:
    return None if value is None else json.dumps(value, sort_keys=True)


def _device(row: sqlite3.Row) -> DeviceRecord:
    return DeviceRecord(
        id=row["id"],
        description=row["description"],
        group=row["group_id"],
        id_in_group=row["id_in_group"],
        profile=row["profile"],
        labels=json.loads(row["labels"]),
        state=DeviceState(row["state"]),
        registered_at=row["registered_at"],
        last_seen=row["last_seen"],
        resources=json.loads(row["resources"]),
        removed_at=row["removed_at"],
        measured=None if row["measured"] is None else json.loads(row["measured"]),
        measured_at=row["measured_at"],
        calibration_request=(
            None
            if row["calibration_request"] is None
            else CalibrationRequest(**json.loads(row["calibration_request"]))
        ),
    )


def _model(row: sqlite3.Row) -> ModelInfo:
    return ModelInfo(
        name=row["name"],
        architecture=row["architecture"],
        metadata=json.loads(row["metadata"]),
        created_at=row["created_at"],
    )


def _version(row: sqlite3.Row) -> VersionInfo:
    return VersionInfo(
        model=row["model"],
        version=row["version"],
        sha256=row["sha256"],
        size=row["size"],
        parent=row["parent"],
        round=row["round"],
        metrics=json.loads(row["metrics"]),
        created_at=row["created_at"],
    )


def _number(row: sqlite3.Row | None) -> int:
    return 0 if row is None else row["version"]


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _chunks(data: bytes | BinaryIO) -> Iterator[bytes | memoryview]:
    if isinstance(data, (bytes, bytearray, memoryview)):
        view = memoryview(data)
        for start in range(0, len(view), CHUNK_BYTES):
            yield view[start : start + CHUNK_BYTES]
    else:
        while chunk := data.read(CHUNK_BYTES):
            yield chunk


def _fsync_dir(path: Path) -> None:
    # A rename or a new entry is durable only once its directory is flushed.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
