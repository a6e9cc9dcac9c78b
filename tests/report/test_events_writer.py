"""events.csv as the run writes it: every row as the csv module writes it, whatever the values."""

from __future__ import annotations

import csv
import io
import math

import numpy as np

from fedsim.core.events import EventKind
from fedsim.report.tables import EVENT_COLUMNS
from fedsim.report.write import EventsWriter


def _as_csv(rows: list[tuple], scenario: str, repetition: int) -> str:
    out = io.StringIO(newline="")
    w = csv.writer(out)
    w.writerow(EVENT_COLUMNS)
    for device, kind, start, end, nbytes, task in rows:
        w.writerow(
            (repetition, scenario, device, kind.value, start, end, end - start, nbytes, task)
        )
    return out.getvalue()


def test_rows_are_what_the_csv_module_writes(tmp_path):
    # Prepare: plain rows, numbers of every kind a runtime hands over, and strings the csv
    # module quotes (in the task, and in a scenario name)
    rows = [
        (3, EventKind.MODEL_DOWNLOAD, 0, 0.007475023999999999, 153128, "r0-d3"),
        (4, EventKind.TRAIN, 1e-300, 2.5e17, 0, "r1-d4"),
        (
            np.int64(5),
            EventKind.UPDATE_UPLOAD,
            np.float64(0.1),
            np.float64(0.30000000000000004),
            7,
            "",
        ),
        (6, EventKind.AGGREGATE, 2.0, math.inf, 10.5, 'a "quoted", task'),
        (7, EventKind.EVALUATE, 1.0, 3.0, 0, "two\nlines"),
    ]
    written = {}

    # Execute
    for scenario, repetition in (("federated", 0), ("a, b", 2)):
        path = tmp_path / f"{repetition}.csv"
        with EventsWriter(path, scenario=scenario, repetition=repetition, limit=100) as w:
            for row in rows:
                w.row(*row)
        written[scenario, repetition] = path.read_bytes().decode("utf-8")

    # Assert: byte for byte what csv.writer makes of the same rows
    for (scenario, repetition), text in written.items():
        assert text == _as_csv(rows, scenario, repetition)


def test_rows_past_the_limit_are_counted_not_written(tmp_path):
    # Prepare
    path = tmp_path / "events.csv"

    # Execute
    with EventsWriter(path, scenario="federated", limit=2) as w:
        for i in range(5):
            w.row(i, EventKind.TRAIN, 0.0, 1.0, 0, f"r0-d{i}")

    # Assert
    assert (w.written, w.dropped) == (2, 3)
    assert len(path.read_text().splitlines()) == 3  # the header and two rows
