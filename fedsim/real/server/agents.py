"""Device tokens and what each agent declared about itself, in ``registry/agents.db``.

The device registry holds a device's state; this book holds what the server needs to talk to
its agent: the token it authenticates with, the hardware, metrics endpoints and group
description it declared when it registered, and the address it registered from (the
registry's record has no place for them).

A token is a random secret (``secrets.token_urlsafe(32)``, 256 bits). Only its sha256 is stored,
so a copy of the database does not let anyone act as a device; a plain hash, not a slow one,
suffices because the secret is random, not a password. A device has one token at a time:
registering again issues a new one and the old one stops working. Tokens survive a restart.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import sqlite3
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_SCHEMA = """CREATE TABLE IF NOT EXISTS agents (
    device INTEGER PRIMARY KEY,
    token_sha256 TEXT NOT NULL UNIQUE,
    hardware TEXT NOT NULL,
    endpoints TEXT NOT NULL,
    group_description TEXT NOT NULL DEFAULT '',
    address TEXT NOT NULL DEFAULT '')"""


@dataclass(frozen=True, kw_only=True)
class AgentDetails:
    """What an agent declared when it last registered."""

    hardware: dict[str, Any] = field(default_factory=dict)
    endpoints: dict[str, str] = field(default_factory=dict)
    group_description: str = ""
    # The peer address the registration came from ("" when unknown): service discovery
    # lists the agent's endpoints on it (fedsim.real.server.handlers.discovery).
    address: str = ""


class AgentBook:
    """Issues and checks device tokens; keeps agents' declared hardware and endpoints."""

    def __init__(self, *, root: Path | str) -> None:
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(
            root / "agents.db", isolation_level=None, check_same_thread=False, timeout=30.0
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        # A token handed to an agent must still be valid after a power failure.
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(_SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(agents)")}
        # Books written before groups had descriptions, or before addresses were kept.
        for column in ("group_description", "address"):
            if column not in columns:
                self._db.execute(f"ALTER TABLE agents ADD COLUMN {column} TEXT NOT NULL DEFAULT ''")
        rows = self._db.execute(
            "SELECT device, token_sha256, hardware, endpoints, group_description, address "
            "FROM agents"
        )
        # Every request is authenticated, so lookups are served from memory.
        self._by_digest: dict[str, int] = {}
        self._digest_of: dict[int, str] = {}
        self._details: dict[int, AgentDetails] = {}
        for device, digest, hardware, endpoints, group_description, address in rows:
            self._by_digest[digest] = device
            self._digest_of[device] = digest
            self._details[device] = AgentDetails(
                hardware=json.loads(hardware),
                endpoints=json.loads(endpoints),
                group_description=group_description,
                address=address,
            )

    def enroll(
        self,
        device: int,
        *,
        hardware: Mapping[str, Any] | None = None,
        endpoints: Mapping[str, str] | None = None,
        group_description: str = "",
        address: str = "",
    ) -> str:
        """Store the agent's declaration, and the ``address`` it came from, and return a new
        token for ``device``."""
        token = secrets.token_urlsafe(32)
        digest = _digest(token)
        details = AgentDetails(
            hardware=dict(hardware or {}),
            endpoints=dict(endpoints or {}),
            group_description=group_description,
            address=address,
        )
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO agents "
                "(device, token_sha256, hardware, endpoints, group_description, address) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (
                    device,
                    digest,
                    json.dumps(details.hardware, sort_keys=True),
                    json.dumps(details.endpoints, sort_keys=True),
                    details.group_description,
                    details.address,
                ),
            )
            old = self._digest_of.get(device)
            if old is not None:
                del self._by_digest[old]
            self._by_digest[digest] = device
            self._digest_of[device] = digest
            self._details[device] = details
        return token

    def device_for(self, token: str) -> int | None:
        """The device ``token`` belongs to, or None."""
        digest = _digest(token)
        with self._lock:
            device = self._by_digest.get(digest)
            stored = self._digest_of.get(device, "") if device is not None else ""
        # The lookup's timing depends on the digest only, which tells nothing about a token;
        # the final comparison is constant-time whatever the dict implementation does.
        if device is None or not hmac.compare_digest(stored, digest):
            return None
        return device

    def details(self, device: int) -> AgentDetails:
        with self._lock:
            return self._details.get(device, AgentDetails())

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()
