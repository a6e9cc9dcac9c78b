"""Secure aggregation by pairwise masking: the protocol's pure logic (SecAgg and SecAgg+).

The protocol is Bonawitz et al.'s "Practical Secure Aggregation for Privacy-Preserving Machine
Learning" (CCS 2017) for an honest-but-curious server, with the neighbour graph of Bell et
al.'s SecAgg+ ("Secure Single-Server Aggregation with (Poly)Logarithmic Overhead", CCS 2020):
each client pairs with its neighbours in a circulant graph over a seeded permutation of the
round's clients instead of with all of them. Four message rounds, each a method of
:class:`SecAggClient` (what a device computes) and of :class:`SecAggServer` (what the server
computes), every message as bytes:

0. *advertise keys*: each client sends two public keys, one to encrypt the shares it sends
   (``c``), one whose agreements seed the pairwise masks (``s``);
1. *share keys*: each client Shamir-shares its mask key's secret half and a fresh self-mask seed
   ``b_u`` among its neighbours and itself, each share encrypted for its holder;
2. *masked input*: each client sends ``x_u + PRG(b_u) + sum_v +-PRG(s_uv)`` modulo ``2^bits``,
   ``x_u`` its example-weighted update in fixed point, ``+`` towards a neighbour with a larger
   id and ``-`` towards a smaller one, so that the pairwise masks cancel in the sum;
3. *unmasking*: each survivor reveals, for each neighbour, the share of ``b_u`` when that
   neighbour sent its input, the share of its mask key when it dropped out, never both. The
   server rebuilds both kinds of secret from ``threshold`` shares and removes what is left of
   the masks.

:class:`SecAggDevices` is the clients' side as devices run it: one client per device and
session, kept from ``advertise`` to ``unmask``, answering the server's messages and masking
the trained update (the simulator's transport holds one for its devices, each agent one).

The key agreement and the encryption are handed in (:class:`SecAggCrypto`): X25519, HKDF and
AES-GCM from the ``cryptography`` package live outside the pure core. The PRG is SHAKE-256
(stdlib ``hashlib``), Shamir's sharing works over the prime field of ``2^521 - 1``.
"""

from __future__ import annotations

import hashlib
import json
import math
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Protocol

import numpy as np

# A Mersenne prime larger than any 32-byte secret: both kinds of secret fit in one element.
FIELD_PRIME = 2**521 - 1
SECRET_BYTES = 32


class SecAggAborted(RuntimeError):
    """The round cannot be unmasked: too few clients, or too few shares of a secret, are left."""


class SecAggCrypto(Protocol):
    """Key agreement and authenticated encryption, as the protocol uses them."""

    def keypair(self) -> tuple[bytes, bytes]:
        """A fresh key pair: (secret key, public key), raw bytes."""

    def agree(self, secret: bytes, public: bytes) -> bytes:
        """The shared key (32 bytes, after a key derivation) of ``secret`` with ``public``."""

    def encrypt(self, key: bytes, plaintext: bytes, aad: bytes) -> bytes:
        """``plaintext`` encrypted and authenticated under ``key``, bound to ``aad``."""

    def decrypt(self, key: bytes, ciphertext: bytes, aad: bytes) -> bytes:
        """The plaintext; raises ``ValueError`` when ``ciphertext`` or ``aad`` was altered."""


@dataclass(frozen=True, kw_only=True)
class SecAggParams:
    """The protocol's settings.

    ``bits``: the modulus ``2^bits`` of the masked sums (16 to 62). ``clip``: every value of an
    update is clipped to ``[-clip, clip]`` before it is weighted and turned to fixed point.
    ``threshold``: the fraction of a client's neighbourhood (its neighbours and itself) whose
    shares rebuild its secrets; at least 2 shares are always needed. ``neighbours``: the
    degree of the SecAgg+ graph (even, rounded up); None pairs every two clients (SecAgg).
    ``stage_timeout_s``: how long each of the protocol's message rounds waits for its clients
    (a client silent that long has dropped out); None: until the round's deadline.
    """

    bits: int = 32
    clip: float = 100.0
    threshold: float = 0.5
    neighbours: int | None = None
    stage_timeout_s: float | None = None

    @classmethod
    def of(cls, settings: Any) -> SecAggParams:
        """The settings of any object that names them alike (the config's ``SecAggConf``, a
        task's settings on the wire); a bad one raises ``ValueError`` naming its field."""
        return cls(**{f.name: getattr(settings, f.name) for f in fields(cls)})

    def __post_init__(self) -> None:
        if not 16 <= self.bits <= 62:
            raise ValueError(f"bits: must be in [16, 62], got {self.bits}")
        if not (math.isfinite(self.clip) and self.clip > 0):
            raise ValueError(f"clip: must be a positive finite number, got {self.clip}")
        if not 0 < self.threshold <= 1:
            raise ValueError(f"threshold: must be in (0, 1], got {self.threshold}")
        if self.neighbours is not None and self.neighbours < 2:
            raise ValueError(f"neighbours: must be at least 2, got {self.neighbours}")
        timeout = self.stage_timeout_s
        if timeout is not None and not (math.isfinite(timeout) and timeout > 0):
            raise ValueError(
                f"stage_timeout_s: must be a positive number of seconds, got {timeout}"
            )

    @property
    def value_bytes(self) -> int:
        """Bytes of one masked value on the wire."""
        return 4 if self.bits <= 32 else 8

    def scale(self, max_weight: int) -> float:
        """The fixed-point scale that keeps any sum of weighted, clipped values below
        ``2^(bits-1)`` when the weights add up to at most ``max_weight``."""
        if max_weight < 1:
            raise ValueError(f"the round's total weight must be at least 1, got {max_weight}")
        scale = math.floor((2 ** (self.bits - 1) - 1) / (self.clip * max_weight))
        if scale < 1:
            raise ValueError(
                f"secagg bits={self.bits} cannot hold a sum of {max_weight} examples x clip "
                f"{self.clip}: raise bits or lower clip"
            )
        return float(scale)

    def shares_needed(self, group: int) -> int:
        """Shares that rebuild a secret shared among ``group`` holders."""
        return min(group, max(2, math.ceil(self.threshold * group)))


@dataclass(frozen=True, kw_only=True)
class SecureAggregation:
    """What a federation needs to aggregate securely: the settings and the cryptography."""

    params: SecAggParams
    crypto: SecAggCrypto


# -- Shamir's secret sharing over GF(FIELD_PRIME) ------------------------------------------------


def shamir_split(secret: int, holders: Sequence[int], threshold: int) -> dict[int, int]:
    """Shares of ``secret`` for ``holders`` (x-coordinates, distinct and non-zero): any
    ``threshold`` of them rebuild it, fewer say nothing about it."""
    if not 0 <= secret < FIELD_PRIME:
        raise ValueError("the secret must be an element of the field")
    if not 1 <= threshold <= len(holders):
        raise ValueError(f"threshold {threshold} must be in [1, {len(holders)}] (the holders)")
    if len(set(holders)) != len(holders) or any(not 0 < x < FIELD_PRIME for x in holders):
        raise ValueError("holders must be distinct non-zero field elements")
    coefficients = [secret] + [secrets.randbelow(FIELD_PRIME) for _ in range(threshold - 1)]
    shares = {}
    for x in holders:
        y = 0
        for c in reversed(coefficients):  # Horner's rule
            y = (y * x + c) % FIELD_PRIME
        shares[x] = y
    return shares


def shamir_combine(shares: Mapping[int, int]) -> int:
    """The secret whose polynomial passes through ``shares`` (x -> y), by Lagrange at 0."""
    if not shares:
        raise ValueError("no shares to combine")
    secret = 0
    for xi, yi in shares.items():
        num, den = 1, 1
        for xj in shares:
            if xj != xi:
                num = num * -xj % FIELD_PRIME
                den = den * (xi - xj) % FIELD_PRIME
        secret = (secret + yi * num * pow(den, -1, FIELD_PRIME)) % FIELD_PRIME
    return secret


# -- masks and fixed point ----------------------------------------------------------------------


def prg(seed: bytes, length: int, bits: int) -> np.ndarray:
    """``length`` pseudo-random values below ``2^bits`` expanded from ``seed`` (SHAKE-256)."""
    raw = hashlib.shake_256(seed).digest(8 * length)
    return np.frombuffer(raw, dtype="<u8") & np.uint64(2**bits - 1)


def quantize(values: np.ndarray, weight: int, params: SecAggParams, scale: float) -> np.ndarray:
    """``weight x clip(values)`` in fixed point (``scale`` units), modulo ``2^bits``."""
    clipped = np.clip(np.asarray(values, dtype=np.float64), -params.clip, params.clip)
    fixed = np.rint(clipped * weight * scale).astype(np.int64)
    # Two's complement: a negative number wraps to its residue modulo 2^64, then 2^bits.
    return fixed.astype(np.uint64) & np.uint64(2**params.bits - 1)


def dequantize(total: np.ndarray, params: SecAggParams, scale: float) -> np.ndarray:
    """The signed sum that ``total`` (a sum modulo ``2^bits``) stands for, in value units."""
    signed = total.astype(np.int64)
    signed[signed >= 2 ** (params.bits - 1)] -= 2**params.bits
    return signed.astype(np.float64) / scale


def neighbourhoods(clients: Sequence[int], degree: int | None, seed: int) -> dict[int, frozenset]:
    """Each client's neighbours: all others, or (SecAgg+) ``degree`` of them in a circulant
    graph over a permutation of the clients drawn from ``seed``."""
    ids = sorted(set(clients))
    n = len(ids)
    if degree is None or degree >= n - 1:
        return {u: frozenset(v for v in ids if v != u) for u in ids}
    half = (degree + 1) // 2
    order = [ids[i] for i in np.random.default_rng(seed).permutation(n)]
    graph: dict[int, frozenset] = {}
    for i, u in enumerate(order):
        graph[u] = frozenset(order[(i + d) % n] for d in range(-half, half + 1) if d != 0)
    return graph


# -- messages -----------------------------------------------------------------------------------


def _dump(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


def _load(data: bytes, what: str) -> dict:
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"secagg {what} message is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ValueError(f"secagg {what} message must be a JSON object")
    return obj


def _aad(sender: int, recipient: int) -> bytes:
    return f"fedsim-secagg:{sender}>{recipient}".encode()


def _int_bytes(value: int) -> bytes:
    return value.to_bytes(SECRET_BYTES, "big")


@dataclass(kw_only=True, eq=False)
class SecAggClient:
    """One client's side of one round of the protocol."""

    id: int
    params: SecAggParams
    crypto: SecAggCrypto
    _c: tuple[bytes, bytes] = field(init=False, repr=False)
    _s: tuple[bytes, bytes] = field(init=False, repr=False)
    _b: bytes = field(init=False, repr=False)
    _keys: dict[int, tuple[bytes, bytes]] = field(init=False, repr=False, default_factory=dict)
    _held: dict[int, bytes] = field(init=False, repr=False, default_factory=dict)
    _revealed: bool = field(init=False, repr=False, default=False)

    def __post_init__(self) -> None:
        if self.id < 0:
            raise ValueError(f"client ids must be non-negative, got {self.id}")
        self._c = self.crypto.keypair()
        self._s = self.crypto.keypair()

    def advertise(self) -> bytes:
        """Round 0: the client's two public keys."""
        return _dump({"c": self._c[1].hex(), "s": self._s[1].hex()})

    def share_keys(self, roster: bytes) -> bytes:
        """Round 1: given its neighbours' public keys, the shares of its secrets, each
        encrypted for its holder (itself included)."""
        keys = _load(roster, "roster")
        self._keys = {
            int(v): (bytes.fromhex(k["c"]), bytes.fromhex(k["s"])) for v, k in keys.items()
        }
        self._keys[self.id] = (self._c[1], self._s[1])
        self._b = secrets.token_bytes(SECRET_BYTES)
        holders = sorted(self._keys)
        t = self.params.shares_needed(len(holders))
        xs = [v + 1 for v in holders]
        b_shares = shamir_split(int.from_bytes(self._b, "big"), xs, t)
        s_shares = shamir_split(int.from_bytes(self._s[0], "big"), xs, t)
        out = {}
        for v in holders:
            plain = _dump({"b": hex(b_shares[v + 1]), "s": hex(s_shares[v + 1])})
            key = self.crypto.agree(self._c[0], self._keys[v][0])
            out[str(v)] = self.crypto.encrypt(key, plain, _aad(self.id, v)).hex()
        return _dump(out)

    def masked_input(
        self, forwarded: bytes, values: np.ndarray, weight: int, scale: float
    ) -> bytes:
        """Round 2: given the shares its neighbours sent it (which says who is still in),
        its weighted values in fixed point under its self mask and pairwise masks."""
        held = _load(forwarded, "forwarded shares")
        self._held = {int(u): bytes.fromhex(ct) for u, ct in held.items()}
        unknown = set(self._held) - set(self._keys)
        if unknown:
            raise ValueError(f"client {self.id} got shares from non-neighbours {sorted(unknown)}")
        bits = self.params.bits
        flat = np.ravel(values)
        masked = quantize(flat, weight, self.params, scale) + prg(self._b, flat.size, bits)
        for v in sorted(self._held):
            if v == self.id:
                continue
            seed = self.crypto.agree(self._s[0], self._keys[v][1])
            mask = prg(seed, flat.size, bits)
            masked = masked + mask if self.id < v else masked - mask
        masked &= np.uint64(2**bits - 1)
        return masked.astype(f"<u{self.params.value_bytes}").tobytes()

    def unmask(self, request: bytes) -> bytes:
        """Round 3: for each neighbour that sent its shares, the share of its self-mask seed
        if it survived, of its mask key if it dropped out; never both for one client."""
        if self._revealed:
            raise SecAggAborted(f"client {self.id} was asked to unmask twice")
        msg = _load(request, "unmask request")
        survivors = {int(u) for u in msg.get("survivors", [])}
        if len(survivors) < self.params.shares_needed(len(self._keys)):
            raise SecAggAborted(
                f"client {self.id}: {len(survivors)} survivors are below the threshold; "
                "it reveals nothing"
            )
        self._revealed = True
        out = {}
        for u, ct in sorted(self._held.items()):
            key = self.crypto.agree(self._c[0], self._keys[u][0])
            share = _load(self.crypto.decrypt(key, ct, _aad(u, self.id)), "share")
            out[str(u)] = {"b": share["b"]} if u in survivors else {"s": share["s"]}
        return _dump(out)


@dataclass(kw_only=True, eq=False)
class SecAggServer:
    """The server's side of one round: relays the clients' messages and unmasks their sum.

    ``received`` keeps every message a client sent, as the bytes that came in: what an
    honest-but-curious server could study.
    """

    params: SecAggParams
    crypto: SecAggCrypto
    clients: Sequence[int]
    length: int
    scale: float
    seed: int = 0
    received: list[tuple[str, int, bytes]] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        self.graph = neighbourhoods(self.clients, self.params.neighbours, self.seed)
        self._keys: dict[int, dict[str, str]] = {}
        self._shared: dict[int, dict[int, str]] = {}
        self._masked: dict[int, np.ndarray] = {}

    def _keep(self, stage: str, messages: Mapping[int, bytes]) -> None:
        stray = set(messages) - set(self.graph)
        if stray:
            raise ValueError(f"secagg {stage} from clients not in the round: {sorted(stray)}")
        self.received.extend((stage, u, m) for u, m in sorted(messages.items()))

    def _check(self, alive: Sequence[int], stage: str) -> None:
        for u in alive:
            group = len(self.graph[u] & set(alive)) + 1
            need = self.params.shares_needed(len(self.graph[u]) + 1)
            if group < need:
                raise SecAggAborted(
                    f"secure aggregation aborted at {stage}: client {u} has {group} of its "
                    f"neighbourhood left, below the threshold {need}"
                )
        if not alive:
            raise SecAggAborted(f"secure aggregation aborted at {stage}: no client is left")

    def collect_keys(self, messages: Mapping[int, bytes]) -> dict[int, bytes]:
        """Round 0 in: each client's roster, its neighbours' public keys, to send it."""
        self._keep("advertise", messages)
        for u, m in messages.items():
            keys = _load(m, "advertise")
            if set(keys) != {"c", "s"}:
                raise ValueError(f"client {u}'s advertise must hold keys 'c' and 's'")
            self._keys[u] = {"c": str(keys["c"]), "s": str(keys["s"])}
        alive = sorted(self._keys)
        self._check(alive, "advertise keys")
        return {
            u: _dump({str(v): self._keys[v] for v in sorted(self.graph[u]) if v in self._keys})
            for u in alive
        }

    def collect_shares(self, messages: Mapping[int, bytes]) -> dict[int, bytes]:
        """Round 1 in: for each client, the encrypted shares addressed to it."""
        self._keep("share keys", messages)
        for u, m in messages.items():
            if u not in self._keys:
                raise ValueError(f"client {u} shared keys without advertising any")
            cts = {int(v): str(ct) for v, ct in _load(m, "share keys").items()}
            if set(cts) - (self.graph[u] | {u}):
                raise ValueError(f"client {u} sent shares to clients outside its neighbourhood")
            self._shared[u] = cts
        alive = sorted(self._shared)
        self._check(alive, "share keys")
        inbox: dict[int, dict[str, str]] = {u: {} for u in alive}
        for u in alive:
            for v, ct in self._shared[u].items():
                if v in inbox:
                    inbox[v][str(u)] = ct
        return {v: _dump(box) for v, box in inbox.items()}

    def collect_masked(self, messages: Mapping[int, bytes]) -> dict[int, bytes]:
        """Round 2 in: the masked inputs; out: the unmasking request to each survivor."""
        self._keep("masked input", messages)
        width = self.params.value_bytes
        for u, m in messages.items():
            if u not in self._shared:
                raise ValueError(f"client {u} sent a masked input without sharing its keys")
            if len(m) != self.length * width:
                raise ValueError(
                    f"client {u}'s masked input has {len(m)} bytes, expected {self.length * width}"
                )
            self._masked[u] = np.frombuffer(m, dtype=f"<u{width}").astype(np.uint64)
        survivors = sorted(self._masked)
        self._check(survivors, "masked input")
        request = _dump({"survivors": survivors})
        return {u: request for u in survivors}

    def unmask(self, messages: Mapping[int, bytes]) -> np.ndarray:
        """Round 3 in: the survivors' shares; returns the sum of the survivors' weighted,
        clipped values (value units), or raises :class:`SecAggAborted`."""
        self._keep("unmasking", messages)
        bits, mod = self.params.bits, np.uint64(2**self.params.bits - 1)
        survivors, dropped = set(self._masked), set(self._shared) - set(self._masked)
        b_shares: dict[int, dict[int, int]] = {u: {} for u in survivors}
        s_shares: dict[int, dict[int, int]] = {u: {} for u in dropped}
        for v, m in messages.items():
            if v not in survivors:
                raise ValueError(f"client {v} sent unmasking shares but is not a survivor")
            for u_key, share in _load(m, "unmasking").items():
                u = int(u_key)
                if u in survivors and set(share) == {"b"}:
                    b_shares[u][v + 1] = int(share["b"], 16)
                elif u in dropped and set(share) == {"s"}:
                    s_shares[u][v + 1] = int(share["s"], 16)
                else:
                    raise ValueError(f"client {v} revealed the wrong share of client {u}")
        total = np.zeros(self.length, dtype=np.uint64)
        for u in sorted(survivors):
            total = total + self._masked[u]
        for u, got in sorted(b_shares.items()):
            b = self._rebuild(u, got, "self-mask seed")
            total = total - prg(_int_bytes(b), self.length, bits)
        for u, got in sorted(s_shares.items()):
            s_sk = _int_bytes(self._rebuild(u, got, "mask key"))
            # Every surviving neighbour got u's shares (u is in round 1's set), so it masked
            # towards u.
            for v in sorted(self.graph[u] & survivors):
                seed = self.crypto.agree(s_sk, bytes.fromhex(self._keys[v]["s"]))
                mask = prg(seed, self.length, bits)
                # Survivor v added +mask towards a larger id, -mask towards a smaller one.
                total = total - mask if v < u else total + mask
        return dequantize(total & mod, self.params, self.scale)

    def _rebuild(self, u: int, shares: Mapping[int, int], what: str) -> int:
        need = self.params.shares_needed(len(self.graph[u]) + 1)
        if len(shares) < need:
            raise SecAggAborted(
                f"secure aggregation aborted at unmasking: {len(shares)} shares of client {u}'s "
                f"{what}, below the threshold {need}"
            )
        return shamir_combine(dict(sorted(shares.items())[:need]))


# -- the clients' side, as a device runs it -----------------------------------------------------

STAGES = ("advertise", "share", "mask", "unmask")
"""The protocol's message rounds on a device, in order; the fit task between mask and unmask
carries the masked input."""


def flatten(arrays: Mapping[str, np.ndarray]) -> np.ndarray:
    """The arrays' values in one float64 vector, in the order of their names (sorted), so
    that a device and the server agree on it whatever order the arrays came in."""
    return np.concatenate(
        [np.ravel(np.asarray(arrays[k], dtype=np.float64)) for k in sorted(arrays)]
    )


def unflatten(flat: np.ndarray, like: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``flat`` cut back into arrays of ``like``'s names, shapes and dtypes (the inverse of
    :func:`flatten`)."""
    out, at = {}, 0
    for name in sorted(like):
        a = np.asarray(like[name])
        out[name] = flat[at : at + a.size].reshape(a.shape).astype(a.dtype)
        at += a.size
    if at != flat.size:
        raise ValueError(f"{flat.size} values do not fit the model's {at}")
    return {name: out[name] for name in like}


@dataclass(kw_only=True, eq=False)
class SecAggDevices:
    """The clients' side of the protocol on the devices: one :class:`SecAggClient` per device
    and session (a round), created at ``advertise`` and forgotten after ``unmask``.

    The simulator's transport holds one for all its devices; a real device's agent holds one
    for itself. Both call it with the messages the server sent, so the same code answers them.
    ``keep`` bounds the sessions a device holds (a round abandoned before unmasking is
    dropped once ``keep`` newer ones started).
    """

    crypto: SecAggCrypto
    keep: int = 4
    _clients: dict[tuple[int, str], SecAggClient] = field(init=False, default_factory=dict)
    _held: dict[tuple[int, str], bytes] = field(init=False, default_factory=dict)

    def step(
        self, device: int, session: str, stage: str, params: SecAggParams, message: bytes
    ) -> bytes:
        """Device ``device``'s answer to the server's ``message`` at ``stage`` of ``session``."""
        key = (device, session)
        if stage == "advertise":
            self._clients.pop(key, None)
            self._clients[key] = SecAggClient(id=device, params=params, crypto=self.crypto)
            mine = [k for k in self._clients if k[0] == device]
            for old in mine[: -self.keep]:
                self._forget(old)
            return self._clients[key].advertise()
        client = self._clients.get(key)
        if client is None:
            raise ValueError(
                f"device {device} holds no secure aggregation session {session!r} (it did not "
                "advertise keys in it, or has forgotten it)"
            )
        if client.params != params:
            raise ValueError(f"session {session!r}: the settings changed between stages")
        if stage == "share":
            return client.share_keys(message)
        if stage == "mask":
            self._held[key] = message
            return b""
        if stage == "unmask":
            try:
                return client.unmask(message)
            finally:
                self._forget(key)
        raise ValueError(f"unknown secure aggregation stage {stage!r}; known: {STAGES}")

    def mask(
        self,
        device: int,
        session: str,
        arrays: Mapping[str, np.ndarray],
        weight: int,
        scale: float,
    ) -> bytes:
        """Device ``device``'s trained ``arrays`` as its masked input in ``session``."""
        key = (device, session)
        client, held = self._clients.get(key), self._held.get(key)
        if client is None or held is None:
            raise ValueError(
                f"device {device} cannot mask its update: it holds no shares of secure "
                f"aggregation session {session!r}"
            )
        return client.masked_input(held, flatten(arrays), weight, scale)

    def _forget(self, key: tuple[int, str]) -> None:
        self._clients.pop(key, None)
        self._held.pop(key, None)
