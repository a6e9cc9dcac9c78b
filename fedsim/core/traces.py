"""Reading device tables and availability traces (formats: ``docs/fleets.md``).

A **device table** lists devices, one a row, each with some of: ``computation`` (milliseconds
of compute per sample), ``communication`` (link speed in kbit/s), ``latency_ms`` (one-way) and
``hardware`` (a hardware profile's name). It is a CSV file with a header row (and an optional
``client_id`` column), or a JSON file: an object from client id to such a row, which is what
FedScale's device trace (``client_device_capacity``) holds, or a list of rows.

An **availability trace** is a JSON file: an object from client id to ``{"active": [...],
"inactive": [...], "finish_time": s}``, FedScale's ``client_behave_trace``: the client is online
from each ``active`` time to the ``inactive`` time of the same index, and the trace repeats
every ``finish_time`` (or ``duration``) seconds when given.

Rows and clients are kept in the order of the file. Every problem is a :class:`TraceError`
naming the file and the row or client.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from pathlib import Path
from typing import Any

from fedsim.core.fleet import DeviceTraits, FleetError, Timeline

KBIT = 1000 / 8  # bytes/s in one kbit/s
COLUMNS = ("client_id", "computation", "communication", "latency_ms", "hardware")


class TraceError(ValueError):
    """A trace or table that cannot be read; the message names the file and the entry."""


def load_device_table(
    path: Path, *, reference_ms_per_sample: float | None = None
) -> list[DeviceTraits]:
    """The rows of the device table at ``path`` (``.csv`` or ``.json``).

    A row's ``computation`` becomes its speed relative to its hardware profile:
    ``reference_ms_per_sample / computation``, the reference being the table's median
    computation unless given. So a device as fast as the reference computes as its profile
    says, one that needs twice the milliseconds per sample at half that speed.
    """
    entries = _entries(path)
    if not entries:
        raise TraceError(f"{path}: no devices in the table")
    computations = []
    for where, entry in entries:
        c = entry.get("computation")
        if c is not None:
            computations.append(_number(path, where, "computation", c, positive=True))
    reference = reference_ms_per_sample
    if reference is None and computations:
        reference = statistics.median(computations)
    if reference is not None and not (math.isfinite(reference) and reference > 0):
        raise TraceError(f"{path}: the reference ms per sample must be > 0, got {reference}")
    rows = []
    for where, entry in entries:
        unknown = sorted(set(entry) - set(COLUMNS))
        if unknown:
            raise TraceError(
                f"{path}: {where}: unknown field {unknown[0]!r} (known: {', '.join(COLUMNS)})"
            )
        values = {k: v for k, v in entry.items() if v is not None and k != "client_id"}
        if not values:
            raise TraceError(f"{path}: {where}: gives none of {', '.join(COLUMNS[1:])}")
        speed = bandwidth = latency = None
        if "computation" in values:
            computation = _number(path, where, "computation", values["computation"], True)
            assert reference is not None  # set from the computations when not given
            speed = reference / computation
        if "communication" in values:
            kbps = _number(path, where, "communication", values["communication"], True)
            bandwidth = kbps * KBIT
        if "latency_ms" in values:
            latency = _number(path, where, "latency_ms", values["latency_ms"], False) / 1e3
        hardware = values.get("hardware")
        if hardware is not None and not isinstance(hardware, str):
            raise TraceError(f"{path}: {where}: hardware must be a profile name")
        try:
            rows.append(
                DeviceTraits(speed=speed, bandwidth=bandwidth, latency=latency, hardware=hardware)
            )
        except FleetError as e:
            raise TraceError(f"{path}: {where}: {e}") from None
    return rows


def load_availability(path: Path) -> list[Timeline]:
    """The clients' timelines in the availability trace at ``path``, in the file's order."""
    document = _json(path)
    if not isinstance(document, dict) or not document:
        raise TraceError(f"{path}: must be an object from client id to its trace, not empty")
    timelines = []
    for client, entry in document.items():
        where = f"client {client}"
        if not isinstance(entry, dict):
            raise TraceError(f"{path}: {where}: must be an object with active and inactive")
        period = entry.get("finish_time", entry.get("duration"))
        if period is not None:
            period = _number(path, where, "finish_time", period, positive=True)
        active = _times(path, where, entry, "active")
        inactive = _times(path, where, entry, "inactive")
        if len(inactive) == len(active) - 1 and period is not None:
            inactive.append(period)  # the last interval lasts to the end of the trace
        if len(inactive) != len(active):
            raise TraceError(
                f"{path}: {where}: {len(active)} active times but {len(inactive)} inactive ones"
            )
        edges: list[float] = []
        for on, off in zip(active, inactive, strict=True):
            if edges and on == edges[-1]:
                edges[-1] = off  # back online as it goes offline: one interval
            else:
                edges += [on, off]
        try:
            timelines.append(Timeline(edges, period))
        except FleetError as e:
            raise TraceError(f"{path}: {where}: {e}") from None
    return timelines


def _entries(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """(where, fields) of each row of a CSV or JSON device table."""
    if path.suffix.lower() == ".csv":
        try:
            with path.open(newline="") as f:
                reader = csv.DictReader(f)
                unknown = [c for c in reader.fieldnames or () if c not in COLUMNS]
                if unknown:
                    raise TraceError(
                        f"{path}: unknown column {unknown[0]!r} (known: {', '.join(COLUMNS)})"
                    )
                return [
                    (f"line {reader.line_num}", {k: v or None for k, v in row.items()})
                    for row in reader
                ]
        except OSError as e:
            raise TraceError(f"{path}: {e.strerror or e}") from None
        except csv.Error as e:
            raise TraceError(f"{path}: {e}") from None
    document = _json(path)
    if isinstance(document, dict):
        items = [(f"client {k}", v) for k, v in document.items()]
    elif isinstance(document, list):
        items = [(f"row {i}", v) for i, v in enumerate(document)]
    else:
        raise TraceError(f"{path}: must be an object from client id to its row, or a list")
    for where, entry in items:
        if not isinstance(entry, dict):
            raise TraceError(f"{path}: {where}: must be an object")
    return items


def _json(path: Path) -> Any:
    if path.suffix.lower() != ".json":
        raise TraceError(f"{path}: a trace is a .json file (a device table may be .csv)")
    try:
        text = path.read_text()
    except OSError as e:
        raise TraceError(f"{path}: {e.strerror or e}") from None
    try:
        return json.loads(text)
    except ValueError as e:
        raise TraceError(f"{path}: not JSON: {e}") from None


def _number(path: Path, where: str, name: str, value: Any, positive: bool) -> float:
    """``value`` (a number, or its text in a CSV cell) as a finite float, checked."""
    try:
        x = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        x = math.nan
    if not math.isfinite(x) or x < 0 or (positive and x == 0):
        bound = "> 0" if positive else ">= 0"
        raise TraceError(f"{path}: {where}: {name} must be a finite number {bound}, got {value!r}")
    return x


def _times(path: Path, where: str, entry: dict[str, Any], key: str) -> list[float]:
    times = entry.get(key, [])
    if not isinstance(times, list):
        raise TraceError(f"{path}: {where}: {key} must be a list of times in seconds")
    return [_number(path, where, key, t, positive=False) for t in times]
