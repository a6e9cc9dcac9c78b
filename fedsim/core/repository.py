"""The AI Model Repository's interface: models, their versions, deployments, statistics.

A model is a name with an architecture; each upload of its weights (a safetensors file) is a
new version, numbered 1, 2, ... per model and addressed by the sha256 of its bytes. A
deployment sends one version to a set of devices and follows each device through
``pending -> downloading -> deployed | failed``.

Records are frozen snapshots. Nothing is ever deleted from a repository: version numbers and
deployment ids, once handed out, always mean the same thing. Devices are plain ids here: the
repository does not consult the device registry, the caller (the REST layer or the coordinator)
does. Malformed arguments (a model name, metrics that are not finite numbers) raise
``ValueError``; everything else the repository refuses raises a ``RepositoryError``.

Implementations live outside the core (``fedsim.store.sqlite``), since they need a file format
library; this module stays stdlib-only.
"""

from __future__ import annotations

import math
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, BinaryIO, TypeVar


class RepositoryError(Exception):
    """Base of the repository's errors; the message says what was refused and why."""


class UnknownModel(RepositoryError, LookupError):
    """No model is registered under this name."""


class UnknownVersion(RepositoryError, LookupError):
    """The model has no such version (or no version at all, for ``latest``)."""


class UnknownDeployment(RepositoryError, LookupError):
    """No deployment has this id, or the device is not part of it."""


class DuplicateModel(RepositoryError):
    """A model with this name is already registered."""


class InvalidModelFile(RepositoryError, ValueError):
    """An upload is not a usable safetensors file, or does not match the model's layout."""


class InvalidDeploymentTransition(RepositoryError):
    """The device's deployment state does not allow the requested change."""


class DeploymentState(str, Enum):
    """Where one device is in receiving a deployed version."""

    PENDING = "pending"
    DOWNLOADING = "downloading"
    DEPLOYED = "deployed"
    FAILED = "failed"


_D = DeploymentState
DEPLOYMENT_TRANSITIONS: dict[DeploymentState, frozenset[DeploymentState]] = {
    # A device may fail before it starts (offline, refused) as well as while downloading.
    _D.PENDING: frozenset({_D.DOWNLOADING, _D.FAILED}),
    _D.DOWNLOADING: frozenset({_D.DEPLOYED, _D.FAILED}),
    # Final: a retry is a new deployment, so each deployment's history stays as it happened.
    _D.DEPLOYED: frozenset(),
    _D.FAILED: frozenset(),
}


def check_deployment_transition(
    deployment: int, device: int, current: DeploymentState, new: DeploymentState
) -> None:
    """Raise ``InvalidDeploymentTransition`` unless ``current -> new`` is allowed."""
    if new not in DEPLOYMENT_TRANSITIONS[current]:
        raise InvalidDeploymentTransition(
            f"deployment {deployment}, device {device}: "
            f"cannot go from {current.value} to {new.value}"
        )


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def check_model_name(name: str) -> str:
    """Return ``name`` if it is a valid model name; it appears in URLs, so it is restricted."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(
            f"model name {name!r} must be 1-128 characters of letters, digits, '.', '_', '-', "
            "starting with a letter or digit"
        )
    return name


def check_metrics(metrics: Mapping[str, float] | None) -> dict[str, float]:
    """Metrics as a plain dict of finite floats; raises ``ValueError`` otherwise."""
    values: dict[str, float] = {}
    for k, v in (metrics or {}).items():
        if not isinstance(k, str) or isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ValueError(f"metrics must map names to numbers, got {k!r}: {v!r}")
        if not math.isfinite(v):
            raise ValueError(f"metric {k!r} must be finite, got {v}")
        values[k] = float(v)
    return values


@dataclass(frozen=True, kw_only=True)
class ModelInfo:
    """A registered model. ``metadata`` is free JSON-compatible data (task, dataset, ...)."""

    name: str
    architecture: str
    metadata: dict[str, Any] = field(default_factory=dict)
    created_at: float


@dataclass(frozen=True, kw_only=True)
class VersionInfo:
    """One stored version of a model's weights.

    ``parent`` is the version it was derived from (the global model a round started from);
    ``round`` the federated round that produced it; ``size`` its size in bytes.
    """

    model: str
    version: int
    sha256: str
    size: int
    parent: int | None = None
    round: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    created_at: float


@dataclass(frozen=True, kw_only=True)
class Deployment:
    """One version sent to a set of devices, with each device's state."""

    id: int
    model: str
    version: int
    devices: dict[int, DeploymentState]
    created_at: float


@dataclass(frozen=True, kw_only=True)
class RoundMetrics:
    """The metrics of the version a round produced: one point of Fig. 3(c)'s curves."""

    round: int
    version: int
    metrics: dict[str, float]


@dataclass(frozen=True, kw_only=True)
class ModelStats:
    """What the paper's Fig. 3(c) shows for a model registered in the repository.

    ``total_size`` counts each distinct blob of the model once (identical versions share
    storage); ``rounds`` lists the versions that carry a round, ordered by round then version.
    """

    model: str
    versions: int
    deployments: int
    total_size: int
    latest_version: int | None
    latest_size: int | None
    rounds: list[RoundMetrics]


_R = TypeVar("_R", bound="ModelRepository")


class ModelRepository(ABC):
    """Registers models, stores their versions, deploys versions to devices.

    Every method may be called from several threads at once.
    """

    @abstractmethod
    def register_model(
        self, name: str, architecture: str, metadata: Mapping[str, Any] | None = None
    ) -> ModelInfo:
        """Register a new model; raises ``DuplicateModel`` if the name is taken."""

    @abstractmethod
    def list_models(self) -> list[ModelInfo]:
        """All models, in name order."""

    @abstractmethod
    def get_model(self, name: str) -> ModelInfo:
        """Raises ``UnknownModel``."""

    @abstractmethod
    def add_version(
        self,
        name: str,
        data: bytes | BinaryIO,
        *,
        parent: int | None = None,
        round: int | None = None,
        metrics: Mapping[str, float] | None = None,
    ) -> VersionInfo:
        """Store ``data`` (bytes, or a binary file object read to its end) as the next version.

        The data must be a safetensors file and, when the model has versions, have the same
        tensor names, shapes and dtypes as the latest one; otherwise ``InvalidModelFile`` is
        raised and nothing is stored. Raises ``UnknownModel``, and ``UnknownVersion`` for a
        ``parent`` that does not exist.
        """

    @abstractmethod
    def list_versions(self, name: str) -> list[VersionInfo]:
        """The model's versions in order; raises ``UnknownModel``."""

    @abstractmethod
    def get_version(self, name: str, version: int) -> VersionInfo:
        """Raises ``UnknownModel`` or ``UnknownVersion``."""

    @abstractmethod
    def latest(self, name: str) -> VersionInfo:
        """The highest version; raises ``UnknownVersion`` if the model has none yet."""

    @abstractmethod
    def open_blob(self, name: str, version: int) -> BinaryIO:
        """The version's safetensors bytes as a binary file object to read in chunks and close."""

    @abstractmethod
    def create_deployment(self, name: str, version: int, devices: Iterable[int]) -> Deployment:
        """Deploy a version to devices (distinct ids, at least one); each starts ``pending``."""

    @abstractmethod
    def set_deployment_state(
        self, id: int, device: int, state: DeploymentState | str
    ) -> Deployment:
        """Move one device of a deployment to ``state``; returns the updated deployment.

        Raises ``UnknownDeployment`` and ``InvalidDeploymentTransition``.
        """

    def set_deployment_states(
        self, id: int, changes: Iterable[tuple[int, DeploymentState | str]]
    ) -> Deployment:
        """Apply ``(device, state)`` changes in order, each as ``set_deployment_state`` would;
        returns the deployment after the last (with no changes, as it is).

        This default applies them one by one. An implementation that can applies them in one
        transaction, all or (on an error) none, and once made durable rather than once per
        change: ``SqliteRepository`` does.
        """
        deployment = None
        for device, state in changes:
            deployment = self.set_deployment_state(id, device, state)
        return self.get_deployment(id) if deployment is None else deployment

    @abstractmethod
    def get_deployment(self, id: int) -> Deployment:
        """Raises ``UnknownDeployment``."""

    @abstractmethod
    def list_deployments(self, name: str | None = None) -> list[Deployment]:
        """Deployments in id order, of one model or of all."""

    @abstractmethod
    def stats(self, name: str) -> ModelStats:
        """The model's statistics; raises ``UnknownModel``."""

    @abstractmethod
    def close(self) -> None:
        """Release what the repository holds open."""

    def __enter__(self: _R) -> _R:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
