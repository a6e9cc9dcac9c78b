"""Selection policies: which devices take part in a round.

A policy reads :class:`~fedsim.core.scheduling.DeviceView` snapshots and returns device ids.
Every policy returns ids sorted ascending: the ranking decides *which* devices take part, not an
order among them, and a fixed order keeps runs deterministic under a seed. Randomness comes
only from the ``rng`` the caller passes, so the coordinator owns the seed.

:func:`selection_from` makes the policy a config's ``fl.selection`` names: a built-in name
(``SELECTIONS``) or a user's own policy, Hydra's way (``_target_: mypkg.MyPolicy`` and its
keyword arguments; ``docs/plugins.md``).
"""

from __future__ import annotations

import abc
import inspect
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fedsim.core.plugins import build, locate, split_target
from fedsim.core.scheduling import DeviceView, estimated_round_time

SELECTIONS = ("all", "random", "resource", "oort")


class SelectionPolicy(abc.ABC):
    """Chooses the devices of a round."""

    @abc.abstractmethod
    def select(
        self, views: Sequence[DeviceView], k: int, *, rnd: int, rng: np.random.Generator
    ) -> list[int]:
        """Up to ``k`` ids among ``views``, ascending; offline devices are never chosen.

        ``rnd`` is the 1-based round number; ``rng`` supplies any randomness.
        """


def _online(views: Sequence[DeviceView]) -> list[DeviceView]:
    return sorted((v for v in views if v.online), key=lambda v: v.id)


def _speed(view: DeviceView, samples: float, model_bytes: float) -> float:
    """Rounds per second for a nominal job: the inverse of the estimated round time."""
    seconds = estimated_round_time(view, samples, model_bytes)
    return math.inf if seconds == 0 else 1.0 / seconds


class AllSelection(SelectionPolicy):
    """Every online device, whatever ``k`` is: for small testbeds where all devices train."""

    def select(
        self, views: Sequence[DeviceView], k: int, *, rnd: int, rng: np.random.Generator
    ) -> list[int]:
        return [v.id for v in _online(views)]


class RandomSelection(SelectionPolicy):
    """``k`` online devices drawn uniformly without replacement (FedAvg's sampling)."""

    def select(
        self, views: Sequence[DeviceView], k: int, *, rnd: int, rng: np.random.Generator
    ) -> list[int]:
        ids = [v.id for v in _online(views)]
        n = min(max(k, 0), len(ids))
        picked = rng.choice(len(ids), size=n, replace=False)
        return sorted(ids[i] for i in picked)


class ResourceAware(SelectionPolicy):
    """The ``k`` most capable and reliable devices among those with resources to spare.

    A device is skipped when offline, busier than ``max_cpu_busy``, short of ``min_memory``
    bytes, or less reliable than ``min_reliability``. The rest are ranked by
    ``reliability / estimated_round_time`` for a nominal job of ``samples`` samples (each
    device's own ``samples`` when None) and ``model_bytes`` each way: a device that is fast but
    often lost is worth as little as a slow one. Ties go to the lower id.
    """

    def __init__(
        self,
        *,
        max_cpu_busy: float = 0.9,
        min_memory: float = 0.0,
        min_reliability: float = 0.0,
        samples: int | None = None,
        model_bytes: float = 0.0,
    ) -> None:
        self.max_cpu_busy = max_cpu_busy
        self.min_memory = min_memory
        self.min_reliability = min_reliability
        self.samples = samples
        self.model_bytes = model_bytes

    def eligible(self, view: DeviceView) -> bool:
        """Whether ``view`` is online and has the resources a round needs."""
        return (
            view.online
            and view.cpu_busy <= self.max_cpu_busy
            and view.memory_available >= self.min_memory
            and view.reliability >= self.min_reliability
        )

    def score(self, view: DeviceView) -> float:
        """Expected useful rounds per second: reliability x speed."""
        if view.reliability <= 0:
            return 0.0  # 0 x inf would be nan for a device with nothing to do
        samples = view.samples if self.samples is None else self.samples
        return view.reliability * _speed(view, samples, self.model_bytes)

    def select(
        self, views: Sequence[DeviceView], k: int, *, rnd: int, rng: np.random.Generator
    ) -> list[int]:
        ranked = sorted(
            (v for v in views if self.eligible(v)), key=lambda v: (-self.score(v), v.id)
        )
        return sorted(v.id for v in ranked[: max(k, 0)])


class OortSelection(SelectionPolicy):
    """Guided participant selection after Oort (Lai et al., OSDI 2021), kept small.

    A tried device's utility is its statistical utility (``DeviceView.utility``), min-max
    normalised over the tried devices in view, plus a staleness bonus
    ``sqrt(0.1 * log(rnd) / L_i)`` where ``L_i`` is the round this policy last selected it; when
    its ``last_duration`` ``t_i`` exceeds the preferred round duration ``T``, the sum is
    multiplied by ``(T / t_i) ** alpha``. ``T`` is ``preferred_duration`` when given, else the
    ``duration_quantile`` quantile of the known durations (Oort's ``round_threshold``).

    Of ``k`` slots, ``round(epsilon * k)`` go to exploration (never-tried devices, fastest
    first by the estimated round time of their own samples) and the rest to exploitation:
    devices whose utility reaches ``cutoff`` times that of the last exploiting slot are admitted,
    and the slots are filled from them at random with probability proportional to utility. A
    side short of devices leaves its slots to the other. After each selection ``epsilon``
    decays by ``decay`` down to ``min_epsilon``.

    A device counts as tried once it has a ``last_duration`` or this policy has selected it.
    Left out from Oort: the pacer that relaxes ``T`` when utility plateaus, clipping of
    outlier utilities, the blacklist of over-selected devices, random exploration counts and
    the widening of the exploitation pool to ten times its slots.
    """

    def __init__(
        self,
        *,
        epsilon: float = 0.9,
        decay: float = 0.98,
        min_epsilon: float = 0.3,
        alpha: float = 2.0,
        preferred_duration: float | None = None,
        duration_quantile: float = 0.3,
        cutoff: float = 0.95,
        model_bytes: float = 0.0,
    ) -> None:
        if not 0.0 <= min_epsilon <= epsilon <= 1.0:
            raise ValueError("need 0 <= min_epsilon <= epsilon <= 1")
        self.epsilon = epsilon
        self.decay = decay
        self.min_epsilon = min_epsilon
        self.alpha = alpha
        self.preferred_duration = preferred_duration
        self.duration_quantile = duration_quantile
        self.cutoff = cutoff
        self.model_bytes = model_bytes
        # The staleness bonus needs each device's last selected round, which no view carries.
        self._last_round: dict[int, int] = {}

    def preferred(self, views: Sequence[DeviceView]) -> float:
        """The round duration ``T`` past which devices are penalised (inf if none known)."""
        if self.preferred_duration is not None:
            return self.preferred_duration
        known = [v.last_duration for v in views if v.last_duration is not None]
        if not known:
            return math.inf
        return float(np.quantile(known, self.duration_quantile))

    def utilities(self, views: Sequence[DeviceView], *, rnd: int) -> dict[int, float]:
        """Oort utility of each tried online device in ``views``."""
        tried = [v for v in _online(views) if self._tried(v)]
        if not tried:
            return {}
        deadline = self.preferred(views)
        low = min(v.utility for v in tried)
        span = max(v.utility for v in tried) - low
        log_rnd = math.log(max(rnd, 1))
        scores = {}
        for v in tried:
            score = (v.utility - low) / span if span > 0 else 1.0
            if v.id in self._last_round:
                score += math.sqrt(0.1 * log_rnd / max(self._last_round[v.id], 1))
            if v.last_duration is not None and v.last_duration > deadline:
                score *= (deadline / v.last_duration) ** self.alpha
            scores[v.id] = score
        return scores

    def select(
        self, views: Sequence[DeviceView], k: int, *, rnd: int, rng: np.random.Generator
    ) -> list[int]:
        k = max(k, 0)
        online = _online(views)
        utilities = self.utilities(views, rnd=rnd)
        untried = [v for v in online if v.id not in utilities]

        n_exploit = min(k - min(len(untried), round(self.epsilon * k)), len(utilities))
        n_explore = min(k - n_exploit, len(untried))
        chosen = self._exploit(utilities, n_exploit, rng)
        by_speed = sorted(untried, key=lambda v: (-_speed(v, v.samples, self.model_bytes), v.id))
        chosen += [v.id for v in by_speed[:n_explore]]

        for d in chosen:
            self._last_round[d] = rnd
        self.epsilon = max(self.epsilon * self.decay, self.min_epsilon)
        return sorted(chosen)

    def _exploit(self, utilities: dict[int, float], n: int, rng: np.random.Generator) -> list[int]:
        if n == 0:
            return []
        ranked = sorted(utilities, key=lambda d: (-utilities[d], d))
        bar = self.cutoff * utilities[ranked[n - 1]]
        pool = [d for d in ranked if utilities[d] >= bar]
        # Weighted sampling without replacement (Efraimidis-Spirakis): the n largest keys
        # log(u) / w. Zero-utility devices sort last, so they only fill otherwise empty slots.
        draws = rng.random(len(pool))
        keys = [
            math.log(u) / utilities[d] if utilities[d] > 0 else -math.inf
            for d, u in zip(pool, draws, strict=True)
        ]
        order = sorted(range(len(pool)), key=lambda i: (-keys[i], pool[i]))
        return [pool[i] for i in order[:n]]

    def _tried(self, view: DeviceView) -> bool:
        return view.last_duration is not None or view.id in self._last_round


def selection_from(
    selection: str | Mapping[str, Any], *, model_bytes: float, where: str = "fl.selection"
) -> SelectionPolicy:
    """The policy ``selection`` names: a name of ``SELECTIONS``, or a ``_target_`` node whose
    callable returns a :class:`SelectionPolicy` (given ``model_bytes``, the bytes of the model
    each way, when it takes a parameter of that name and the node does not set it).

    Raises ``ValueError`` naming ``where``.
    """
    if isinstance(selection, Mapping):
        path, params = split_target(where, selection)
        if "model_bytes" not in params and "model_bytes" in _parameters(where, path):
            params["model_bytes"] = model_bytes
        policy: SelectionPolicy = build(where, path, params, expect=SelectionPolicy)
        return policy
    if selection == "random":
        return RandomSelection()
    if selection == "resource":
        return ResourceAware(model_bytes=model_bytes)
    if selection == "oort":
        return OortSelection(model_bytes=model_bytes)
    if selection == "all":
        return AllSelection()
    raise ValueError(
        f"{where}: {selection!r} is not one of {', '.join(SELECTIONS)} "
        "(or a _target_ naming your own policy)"
    )


def _parameters(where: str, path: str) -> Mapping[str, inspect.Parameter]:
    try:
        return inspect.signature(locate(where, path)).parameters
    except (TypeError, ValueError):
        return {}
