"""Byzantine clients: which clients attack, and what they do to what they send.

An attack is a run setting (``fl.attack``), not part of the round coordinator: the chosen
clients tamper with their own work, and the coordinator sees only what arrives, as it would
from real devices. Four attacks change the update a client sends, and
:class:`ByzantineTransport` applies them to the results of the attackers' fit tasks as they
come back through any :class:`~fedsim.core.runtime.Transport`, so every round protocol and
every runtime meets them unchanged:

- ``sign_flip``: the client's move from the model it was sent, reversed and scaled:
  ``ref - scale * (w - ref)`` (Fang et al., USENIX Security 2020, "sign flipping");
- ``scale``: the move scaled up, ``ref + scale * (w - ref)`` (Bhagoji et al., ICML 2019,
  "explicit boosting");
- ``gaussian``: no training at all, ``ref`` plus Gaussian noise of standard deviation
  ``scale`` on every value (Blanchard et al., NeurIPS 2017, the "Gaussian" Byzantine vector);
- ``count_inflation``: an honest update claiming ``scale`` times the examples its task asked
  for, to outweigh everyone under an example-weighted mean.

The fifth, ``label_flip``, poisons the attacker's training data instead (label ``c`` becomes
``num_classes - 1 - c``, Tolpegin et al., ESORICS 2020): :func:`flip_labels` is applied to
the attackers' shards by whoever hands out the data, and their updates travel untouched.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TypeVar

import numpy as np

from fedsim.core.events import EventKind
from fedsim.core.runtime import Cost, FitIns, NDArrays, Task, TaskResult, Transport, Update

T = TypeVar("T")

ATTACKS = ("sign_flip", "scale", "gaussian", "label_flip", "count_inflation")
# What ``scale`` means for each kind when it is not set: strong enough that plain FedAvg is
# visibly hurt by 20 % of attackers (sign_flip at 4 cancels the 80 % honest moves; a gaussian
# of 1.0 is far larger than a small model's weights), yet finite and within every bound a
# server checks, so that it is the aggregation rule that has to cope.
DEFAULT_SCALE = {
    "sign_flip": 4.0,
    "scale": 10.0,
    "gaussian": 1.0,
    "label_flip": 1.0,
    "count_inflation": 1000.0,
}


@dataclass(kw_only=True)
class AttackConfig:
    """``fl.attack``: ``fraction`` of the clients (chosen under ``seed``) run attack ``kind``;
    no attack when ``kind`` is None.

    Not frozen and with OmegaConf-friendly field types, as it is a structured config too
    (``fl.attack.kind=sign_flip`` on the command line). ``scale`` is the attack's strength (see
    the module docstring); None: the kind's ``DEFAULT_SCALE``. ``baselines``: simulate the
    same run without the attack, and with FedAvg beside the chosen rule, so that the report
    shows what the attack costs this rule and FedAvg (up to three more simulated runs).
    """

    kind: str | None = None
    fraction: float = 0.2
    scale: float | None = None
    seed: int = 0
    baselines: bool = True

    def __post_init__(self) -> None:
        if self.kind is not None and self.kind not in ATTACKS:
            raise ValueError(
                f"attack.kind: {self.kind!r} is not one of {', '.join(ATTACKS)} (or null: none)"
            )
        if not 0 < self.fraction < 1:
            raise ValueError(f"attack.fraction: must be in (0, 1), got {self.fraction!r}")
        if self.scale is not None and not (math.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"attack.scale: must be finite and > 0, got {self.scale!r}")
        if self.seed < 0:
            raise ValueError(f"attack.seed: must be >= 0, got {self.seed!r}")

    @property
    def strength(self) -> float:
        """``scale``, or the kind's default (1.0 when there is no attack)."""
        if self.scale is not None:
            return float(self.scale)
        return 1.0 if self.kind is None else DEFAULT_SCALE[self.kind]


def attackers(clients: Sequence[int], attack: AttackConfig) -> tuple[int, ...]:
    """The clients that attack: ``floor(fraction * n)`` of them, drawn under ``attack.seed``.

    Raises ValueError when the fraction selects none, so that an attack never silently
    becomes a clean run.
    """
    n = len(clients)
    # The epsilon keeps e.g. 0.29 * 100 = 28.999999999999996 from choosing one too few.
    count = math.floor(attack.fraction * n + 1e-9)
    if count < 1:
        raise ValueError(
            f"attack.fraction: {attack.fraction:g} of {n} clients selects none; "
            f"it needs at least {1 / n:.3g}"
        )
    rng = np.random.default_rng(attack.seed)
    chosen = rng.choice(np.asarray(sorted(clients)), size=count, replace=False)
    return tuple(sorted(int(d) for d in chosen))


def flip_labels(y: np.ndarray, num_classes: int) -> np.ndarray:
    """Labels ``c`` turned into ``num_classes - 1 - c``: every sample taught a wrong class."""
    y = np.asarray(y)
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"labels must be in [0, {num_classes}), got [{y.min()}, {y.max()}]")
    return (num_classes - 1 - y).astype(y.dtype)


def tamper(
    attack: AttackConfig, update: Update, reference: NDArrays | None, asked: int, seed: int
) -> Update:
    """What an attacker sends instead of ``update``, trained from ``reference`` on a task
    that asked for ``asked`` examples; ``seed`` draws its noise."""
    kind, s = attack.kind, attack.strength
    if kind == "label_flip":
        return update  # the poison is in its data
    if kind == "count_inflation":
        # The claim is what a weighted mean trusts; int() of a float this size is exact enough.
        return replace(update, num_examples=max(1, int(asked * s)))
    w = update.parameters
    if w is None or reference is None:
        return update  # a timing-only update: no numbers to tamper with
    out: NDArrays = {}
    rng = np.random.default_rng(seed)
    for k, ref in reference.items():
        r64 = np.asarray(ref, dtype=np.float64)
        if kind == "gaussian":
            moved = r64 + rng.normal(0.0, s, size=r64.shape)
        else:
            delta = np.asarray(w[k], dtype=np.float64) - r64
            moved = r64 + (-s if kind == "sign_flip" else s) * delta
        out[k] = moved.astype(np.asarray(w[k]).dtype)
    return replace(update, parameters=out)


class ByzantineTransport(Transport):
    """``inner`` with the ``attackers``' fit updates tampered with as ``attack`` says.

    It records each attacker's latest fit task (its id, the parameters it was sent, the
    examples it asked for) when it is submitted and tampers with that task's update when its
    result comes back, before anyone sees it. One entry per attacker: a device trains one task
    at a time in every round protocol, and a task that never returns leaves nothing behind
    but its own entry. Events and the clock are the inner transport's.
    """

    def __init__(self, *, inner: Transport, attack: AttackConfig, attackers: Sequence[int]) -> None:
        super().__init__()
        self.inner = inner
        self.events = inner.events
        self.attack = attack
        self.attackers = frozenset(attackers)
        self.sent = 0  # the attackers' updates that came back so far
        # attacker -> (its task's id, the parameters it was sent, the examples it asked for)
        self._sent: dict[int, tuple[str, NDArrays | None, int]] = {}

    def now(self) -> float:
        return self.inner.now()

    def submit(self, tasks: Sequence[Task]) -> None:
        for t in tasks:
            if t.device in self.attackers and isinstance(t.ins, FitIns):
                self._sent[t.device] = (t.id, t.ins.parameters, t.ins.samples * t.ins.epochs)
        self.inner.submit(tasks)

    def wait(self, *, count: int, deadline: float | None = None) -> list[TaskResult]:
        return [self._tampered(r) for r in self.inner.wait(count=count, deadline=deadline)]

    def server_work(
        self, kind: EventKind, cost: Cost, fn: Callable[[], T] | None = None
    ) -> T | None:
        return self.inner.server_work(kind, cost, fn)

    def wait_online(self, devices: Sequence[int], deadline: float | None = None) -> bool:
        return self.inner.wait_online(devices, deadline)

    def _tampered(self, r: TaskResult) -> TaskResult:
        sent = self._sent.get(r.device)
        if sent is None or sent[0] != r.task_id or r.update is None:
            return r
        del self._sent[r.device]
        _, reference, asked = sent
        # One noise stream per attacker and task, whatever order results arrive in.
        seed = zlib.crc32(f"{self.attack.seed}/{r.device}/{r.task_id}".encode())
        self.sent += 1
        return replace(r, update=tamper(self.attack, r.update, reference, asked, seed))
