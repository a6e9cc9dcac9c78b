"""How far the simulator's prediction of a run is from the run as measured.

A measured run (real, emulated, attached) is simulated again with the same spec and seed; its
rows and the measured ones are paired here, one :class:`Fidelity` record per round (federated)
or per repetition x scenario (comparison), and summarised by the median and the 90th
percentile of the absolute relative error of the round time and of each component of its
:class:`~fedsim.core.results.TimeSplit`.

A federated round also pairs the mean processor seconds a device spent on its task (and of
those in training): the agents' own count against the work the simulator charged, so that
what the prediction leaves uncharged shows; it is not among the error statistics.

The absolute relative error of a prediction ``p`` of a measured ``m`` is ``|p - m| / m``. A
component under :data:`ZERO_S` counts as zero: when both are zero the prediction is exact
(error 0); when only the measured one is, the relative error has no value (None in the record)
and the statistics leave it out, counting it as ``undefined`` so that the report can say how
many were left out.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from fedsim.core.topology import MEASURED, Topology

COMPONENTS = ("transfer", "compute", "aggregation", "waiting")
# The measured clock (time.perf_counter, microsecond-scale network stamps) cannot resolve less.
ZERO_S = 1e-6
SPEC_SHEET = "spec-sheet"


class Split(Protocol):
    """The time fields of a row: a round's or a repetition's critical path, split."""

    @property
    def total_s(self) -> float: ...
    @property
    def transfer_s(self) -> float: ...
    @property
    def compute_s(self) -> float: ...
    @property
    def aggregation_s(self) -> float: ...
    @property
    def waiting_s(self) -> float: ...


class RoundSplit(Split, Protocol):
    @property
    def round(self) -> int: ...


class RepetitionSplit(Split, Protocol):
    @property
    def repetition(self) -> int: ...
    @property
    def scenario(self) -> str: ...


def abs_rel_error(predicted: float, measured: float) -> float | None:
    """``|predicted - measured| / measured``; None when only ``measured`` is zero."""
    if abs(measured) < ZERO_S:
        return 0.0 if abs(predicted) < ZERO_S else None
    return abs(predicted - measured) / abs(measured)


@dataclass(frozen=True, kw_only=True)
class Fidelity:
    """One measured row beside its prediction: a federated round (``round``) or one
    repetition of one comparison scenario (``repetition``, ``scenario``)."""

    round: int | None = None
    repetition: int | None = None
    scenario: str | None = None
    predicted_s: float
    measured_s: float
    predicted_transfer_s: float
    measured_transfer_s: float
    predicted_compute_s: float
    measured_compute_s: float
    predicted_aggregation_s: float
    measured_aggregation_s: float
    predicted_waiting_s: float
    measured_waiting_s: float
    predicted_device_cpu_s: float | None = None
    measured_device_cpu_s: float | None = None
    predicted_device_train_cpu_s: float | None = None
    measured_device_train_cpu_s: float | None = None

    def error(self, component: str | None = None) -> float | None:
        """The absolute relative error of the round time, or of ``component`` (one of
        :data:`COMPONENTS`)."""
        if component is None:
            return abs_rel_error(self.predicted_s, self.measured_s)
        if component not in COMPONENTS:
            raise KeyError(f"component: {component!r} is not one of {', '.join(COMPONENTS)}")
        return abs_rel_error(
            getattr(self, f"predicted_{component}_s"), getattr(self, f"measured_{component}_s")
        )

    def as_row(self) -> dict[str, Any]:
        """The record's key, times and errors, as ``fidelity.csv`` has them."""
        key: dict[str, Any] = (
            {"round": self.round}
            if self.round is not None
            else {"repetition": self.repetition, "scenario": self.scenario}
        )
        row = {**key, "predicted_s": self.predicted_s, "measured_s": self.measured_s}
        row["abs_rel_error"] = self.error()
        for c in COMPONENTS:
            row[f"predicted_{c}_s"] = getattr(self, f"predicted_{c}_s")
            row[f"measured_{c}_s"] = getattr(self, f"measured_{c}_s")
            row[f"{c}_abs_rel_error"] = self.error(c)
        if self.round is not None:
            for name in ("device_cpu_s", "device_train_cpu_s"):
                row[f"predicted_{name}"] = getattr(self, f"predicted_{name}")
                row[f"measured_{name}"] = getattr(self, f"measured_{name}")
        return row


def _record(
    predicted: Split,
    measured: Split,
    *,
    round: int | None = None,
    repetition: int | None = None,
    scenario: str | None = None,
) -> Fidelity:
    return Fidelity(
        round=round,
        repetition=repetition,
        scenario=scenario,
        predicted_s=predicted.total_s,
        measured_s=measured.total_s,
        predicted_transfer_s=predicted.transfer_s,
        measured_transfer_s=measured.transfer_s,
        predicted_compute_s=predicted.compute_s,
        measured_compute_s=measured.compute_s,
        predicted_aggregation_s=predicted.aggregation_s,
        measured_aggregation_s=measured.aggregation_s,
        predicted_waiting_s=predicted.waiting_s,
        measured_waiting_s=measured.waiting_s,
        predicted_device_cpu_s=getattr(predicted, "device_cpu_s", None),
        measured_device_cpu_s=getattr(measured, "device_cpu_s", None),
        predicted_device_train_cpu_s=getattr(predicted, "device_train_cpu_s", None),
        measured_device_train_cpu_s=getattr(measured, "device_train_cpu_s", None),
    )


def pair_rounds(predicted: Sequence[RoundSplit], measured: Sequence[RoundSplit]) -> list[Fidelity]:
    """One record per round present in both, in the measured run's order."""
    by_round = {r.round: r for r in predicted}
    return [_record(by_round[m.round], m, round=m.round) for m in measured if m.round in by_round]


def pair_repetitions(
    predicted: Sequence[RepetitionSplit], measured: Sequence[RepetitionSplit]
) -> list[Fidelity]:
    """One record per (repetition, scenario) present in both, in the measured run's order."""
    by_key = {(r.repetition, r.scenario): r for r in predicted}
    return [
        _record(by_key[key], m, repetition=m.repetition, scenario=m.scenario)
        for m in measured
        if (key := (m.repetition, m.scenario)) in by_key
    ]


@dataclass(frozen=True, kw_only=True)
class ErrorStats:
    """Median and 90th percentile (numpy's linear interpolation) of the errors that have a
    value (``n``); ``undefined`` records had a zero measured against a non-zero prediction."""

    median: float | None
    p90: float | None
    n: int
    undefined: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "median_abs_rel_error": self.median,
            "p90_abs_rel_error": self.p90,
            "n": self.n,
            "undefined": self.undefined,
        }


def error_stats(errors: Iterable[float | None]) -> ErrorStats:
    """:class:`ErrorStats` of ``errors``, None standing for an undefined error."""
    errors = list(errors)
    known = np.array([e for e in errors if e is not None], dtype=float)
    undefined = len(errors) - len(known)
    if not len(known):
        return ErrorStats(median=None, p90=None, n=0, undefined=undefined)
    return ErrorStats(
        median=float(np.median(known)),
        p90=float(np.percentile(known, 90)),
        n=len(known),
        undefined=undefined,
    )


def statistics(records: Sequence[Fidelity]) -> dict[str, ErrorStats]:
    """Error statistics of the round time (``"round"``) and of each of :data:`COMPONENTS`."""
    out = {"round": error_stats(r.error() for r in records)}
    for c in COMPONENTS:
        out[c] = error_stats(r.error(c) for r in records)
    return out


def profile_kinds(topology: Topology, devices: Iterable[int]) -> str:
    """Which kind of hardware profile ``devices`` have: ``spec-sheet``, ``measured``, or both
    joined by " and "."""
    kinds = {
        MEASURED if topology.devices[d].hardware.kind == MEASURED else SPEC_SHEET for d in devices
    }
    return " and ".join(sorted(kinds))


def summary(records: Sequence[Fidelity], profiles: str) -> dict[str, Any]:
    """The ``fidelity`` block of ``summary.json``: the statistics, how many rows were paired,
    what kind of profiles the prediction used, and how zero components were counted."""
    return {
        "profiles": profiles,
        "pairs": len(records),
        "predicted_total_s": float(sum(r.predicted_s for r in records)),
        "measured_total_s": float(sum(r.measured_s for r in records)),
        "zero_s": ZERO_S,
        **{name: s.as_dict() for name, s in statistics(records).items()},
    }
