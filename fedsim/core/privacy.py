"""Client-level differential privacy: DP-FedAvg on the server (central) or on each client (local).

Both follow McMahan et al., "Learning Differentially Private Recurrent Language Models" (ICLR
2018): a client's *move* ``w_i - w`` (its update minus the model it was sent) is clipped to an
L2 norm of at most ``clip_norm`` over all float arrays together, and Gaussian noise is added.
Adjacent runs differ by one client's data being there or not (an absent client moves nothing),
so one client changes the sum of clipped moves by at most ``clip_norm``:

- ``central``: the server clips every move it receives, averages them over the *expected*
  number of clients per round ``m`` (the fixed-denominator estimator, so one client's share is
  bounded by ``clip_norm / m`` whoever else arrives) and adds noise of standard deviation
  ``noise_multiplier * clip_norm / m`` to every value. The strategy the run chose (FedAvg,
  FedAdam, ...) then sees only that noised mean, as one update: whatever it does with it is
  post-processing and keeps the guarantee. The privacy loss of each round is that of the
  subsampled Gaussian mechanism with sampling rate ``m / N``.
- ``local``: each client clips its own move and adds noise of standard deviation
  ``noise_multiplier * clip_norm`` before sending it (:func:`privatize`, applied by the trainer
  where the client trains, in the simulator and in a real agent alike). The server then needs
  no trust; each client's loss composes over the rounds it took part in, without the
  amplification sampling gives a central curator.

Epsilon for the configured ``delta`` is computed by an RDP accountant outside the core (the
core is numpy only): :mod:`fedsim.ml.accounting`.

Integer arrays (counters such as BatchNorm's ``num_batches_tracked``) carry no learned values:
they are kept as the reference model has them and are neither clipped nor noised.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedsim.core.runtime import NDArrays, Update
from fedsim.core.strategies.aggregate import updates_with_arrays
from fedsim.core.strategies.base import Strategy, Wrapper
from fedsim.core.strategies.clipping import CLIP_PASSES

PRIVACY_KINDS = ("central", "local")
# What drawing one Gaussian value costs, in passes of a streaming mean over one value (an
# add of a scaled value): numpy's default generator drew 4 M normals in 86 ms against 3.3 ms
# for the scaled add on this project's 2-core CI machine (2026-11-29), about 26 passes.
NOISE_PASSES = 26.0
# The fit config keys a local-DP round sends to every client (read by the trainer).
LOCAL_CLIP_KEY = "dp_clip_norm"
LOCAL_NOISE_KEY = "dp_noise_multiplier"


@dataclass(kw_only=True)
class PrivacyConfig:
    """``privacy``: client-level differential privacy, off when ``kind`` is None.

    ``noise_multiplier`` is z, the noise's standard deviation in units of ``clip_norm`` (of
    ``clip_norm / m`` for central DP); with ``target_epsilon`` set and ``noise_multiplier``
    null, the smallest z whose epsilon after ``fl.rounds`` rounds is at most the target is
    chosen (``fedsim.config.build_privacy``; both set is an error there, and the spec it
    builds then carries both: the target and the z chosen for it). ``delta`` is the delta
    epsilon is reported for; keep it below 1 / (number of clients). Not frozen, with
    OmegaConf-friendly types: it is a structured config too.
    """

    kind: str | None = None
    noise_multiplier: float | None = 1.0
    clip_norm: float = 1.0
    delta: float = 1e-5
    target_epsilon: float | None = None

    def __post_init__(self) -> None:
        if self.kind is not None and self.kind not in PRIVACY_KINDS:
            raise ValueError(
                f"kind: {self.kind!r} is not one of {', '.join(PRIVACY_KINDS)} (or null: none)"
            )
        if not (math.isfinite(self.clip_norm) and self.clip_norm > 0):
            raise ValueError(f"clip_norm: must be finite and > 0, got {self.clip_norm!r}")
        if not 0 < self.delta < 1:
            raise ValueError(f"delta: must be in (0, 1), got {self.delta!r}")
        z = self.noise_multiplier
        if z is not None and not (math.isfinite(z) and z > 0):
            raise ValueError(f"noise_multiplier: must be finite and > 0, got {z!r}")
        eps = self.target_epsilon
        if eps is not None and not (math.isfinite(eps) and eps > 0):
            raise ValueError(f"target_epsilon: must be finite and > 0, got {eps!r}")
        if self.kind is not None and z is None and eps is None:
            raise ValueError("noise_multiplier: null needs a target_epsilon to choose it from")

    def sample_rate(self, per_round: int, clients: int) -> float:
        """The accountant's sampling rate: a round's share of the clients for central DP, 1
        for local DP (a client's own release is not hidden by the others' sampling)."""
        return 1.0 if self.kind == "local" else per_round / clients


def is_float(array: np.ndarray) -> bool:
    return bool(np.issubdtype(np.asarray(array).dtype, np.floating))


def clipped_move(arrays: NDArrays, reference: NDArrays, clip_norm: float) -> dict[str, np.ndarray]:
    """The float arrays' move ``arrays - reference`` in float64, scaled to norm <= clip_norm."""
    move = {
        k: np.asarray(arrays[k], dtype=np.float64) - np.asarray(ref, dtype=np.float64)
        for k, ref in reference.items()
        if is_float(ref)
    }
    norm = math.sqrt(sum(float(np.dot(d.ravel(), d.ravel())) for d in move.values()))
    if norm > clip_norm:
        scale = clip_norm / norm
        for d in move.values():
            d *= scale
    return move


def _noised(
    reference: NDArrays, move: Mapping[str, np.ndarray], std: float, rng: np.random.Generator
) -> NDArrays:
    """``reference + move + N(0, std^2)`` on float arrays (in their dtype); others as given.

    Noise is drawn array by array in the order of the names, not of the mapping: a model read
    back from a file (safetensors sorts its names) gets the same noise as the one in memory.
    """
    out: NDArrays = {}
    for k in sorted(reference):
        ref_arr = np.asarray(reference[k])
        if k in move:
            noise = rng.normal(0.0, std, size=ref_arr.shape)
            out[k] = (ref_arr.astype(np.float64) + move[k] + noise).astype(ref_arr.dtype)
        else:
            out[k] = ref_arr.copy()
    return out


def privatize(
    arrays: NDArrays,
    reference: NDArrays,
    *,
    clip_norm: float,
    noise_multiplier: float,
    rng: np.random.Generator,
) -> NDArrays:
    """Local DP: ``arrays`` with their move from ``reference`` clipped to ``clip_norm`` and
    Gaussian noise of standard deviation ``noise_multiplier * clip_norm`` added to every float
    value."""
    move = clipped_move(arrays, reference, clip_norm)
    return _noised(reference, move, noise_multiplier * clip_norm, rng)


def local_dp_settings(config: Mapping[str, Any]) -> tuple[float, float] | None:
    """``(clip_norm, noise_multiplier)`` when a fit config asks for local DP, else None."""
    if LOCAL_CLIP_KEY not in config:
        return None
    clip, z = float(config[LOCAL_CLIP_KEY]), float(config[LOCAL_NOISE_KEY])
    if not (math.isfinite(clip) and clip > 0 and math.isfinite(z) and z > 0):
        raise ValueError(f"local DP settings must be finite and > 0, got clip {clip}, noise {z}")
    return clip, z


class CentralDP(Wrapper):
    """Wraps ``inner`` with server-side DP-FedAvg (see the module docstring).

    ``expected_clients`` is the round's ``m``: the sum of clipped moves is divided by it, or by
    the number of updates when more arrive. Noise is drawn from a generator seeded by ``seed``
    and the count of aggregations so far, so a run is reproducible.
    """

    def __init__(
        self,
        *,
        inner: Strategy,
        clip_norm: float,
        noise_multiplier: float,
        expected_clients: int,
        seed: int,
    ) -> None:
        if expected_clients < 1:
            raise ValueError(f"expected_clients must be >= 1, got {expected_clients}")
        super().__init__(inner, "central_dp")
        self.clip_norm = float(clip_norm)
        self.noise_multiplier = float(noise_multiplier)
        self.expected_clients = int(expected_clients)
        self.seed = int(seed)
        self.releases = 0  # aggregations made so far: the accountant's steps
        self.streaming = True  # one clipped move at a time is added to the sum

    def noise_std(self, updates: int) -> float:
        """The standard deviation added to every value when ``updates`` moves are averaged."""
        return self.noise_multiplier * self.clip_norm / max(self.expected_clients, updates)

    def aggregation_passes(self, n: int) -> float:
        """Each update clipped and added to the sum, the noise drawn once, and the inner rule
        over the one noised mean."""
        return (CLIP_PASSES + 1) * n + NOISE_PASSES + self.inner.aggregation_passes(1)

    def aggregate_fit(self, current: NDArrays | None, updates: Sequence[Update]) -> NDArrays | None:
        with_arrays = updates_with_arrays(updates, self.name)
        if with_arrays is None:
            return self.inner.aggregate_fit(current, updates)
        if current is None:
            raise ValueError("central DP needs the current parameters to clip each client's move")
        total: dict[str, np.ndarray] = {}
        for _, arrays in with_arrays:
            for k, d in clipped_move(arrays, current, self.clip_norm).items():
                if k in total:
                    total[k] += d
                else:
                    total[k] = d
        denominator = max(self.expected_clients, len(with_arrays))
        mean = {k: v / denominator for k, v in total.items()}
        rng = np.random.default_rng([self.seed, self.releases])
        noised = _noised(current, mean, self.noise_std(len(with_arrays)), rng)
        self.releases += 1
        examples = sum(u.num_examples for u, _ in with_arrays)
        one = Update(num_examples=max(1, examples), nbytes=updates[0].nbytes, parameters=noised)
        return self.inner.aggregate_fit(current, [one])


class LocalDP(Wrapper):
    """Wraps ``inner`` with local DP: every client of every round is told to clip its move to
    ``clip_norm`` and add noise of ``noise_multiplier * clip_norm`` (:func:`privatize`) before
    sending; the server aggregates what arrives with ``inner`` unchanged."""

    def __init__(self, *, inner: Strategy, clip_norm: float, noise_multiplier: float) -> None:
        super().__init__(inner, "local_dp")
        self.clip_norm = float(clip_norm)
        self.noise_multiplier = float(noise_multiplier)

    def configure_fit(self, rnd: int) -> Mapping[str, Any]:
        return {
            **self.inner.configure_fit(rnd),
            LOCAL_CLIP_KEY: self.clip_norm,
            LOCAL_NOISE_KEY: self.noise_multiplier,
        }

    def client_passes(self) -> float:
        """Each client clips its move and draws one Gaussian value per model value."""
        return CLIP_PASSES + NOISE_PASSES + self.inner.client_passes()


def with_privacy(
    inner: Strategy,
    config: PrivacyConfig,
    *,
    noise_multiplier: float,
    expected_clients: int,
    seed: int,
) -> Strategy:
    """``inner`` wrapped as ``config.kind`` says (``noise_multiplier`` resolved by the caller
    from ``config``: its own or the one ``target_epsilon`` implies)."""
    if config.kind == "central":
        return CentralDP(
            inner=inner,
            clip_norm=config.clip_norm,
            noise_multiplier=noise_multiplier,
            expected_clients=expected_clients,
            seed=seed,
        )
    if config.kind == "local":
        return LocalDP(inner=inner, clip_norm=config.clip_norm, noise_multiplier=noise_multiplier)
    return inner


def local_participations(selected_by_round: Sequence[Sequence[int]]) -> list[int]:
    """After each round, the most rounds any one client has been selected for so far: the
    number of noised releases the most exposed client has made (an upper bound: a selected
    client that fails sends nothing)."""
    counts: dict[int, int] = {}
    most = 0
    out = []
    for selected in selected_by_round:
        for d in selected:
            counts[d] = counts.get(d, 0) + 1
            most = max(most, counts[d])
        out.append(most)
    return out
