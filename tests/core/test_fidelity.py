"""Pairing a measured run's rows with their prediction, and the error statistics over them."""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest
from topologies import star

from fedsim.core.calibration import StepModel
from fedsim.core.fidelity import (
    Fidelity,
    abs_rel_error,
    error_stats,
    pair_repetitions,
    pair_rounds,
    profile_kinds,
    statistics,
    summary,
)
from fedsim.core.results import ScenarioRun, TimeSplit


@dataclass(frozen=True, kw_only=True)
class Row(TimeSplit):
    round: int
    device_cpu_s: float | None = None
    device_train_cpu_s: float | None = None


def row(n: int, total: float, transfer=0.0, compute=0.0, aggregation=0.0, waiting=0.0) -> Row:
    return Row(
        round=n,
        total_s=total,
        transfer_s=transfer,
        compute_s=compute,
        aggregation_s=aggregation,
        waiting_s=waiting,
        bytes_moved=0,
    )


def test_error_is_relative_to_the_measured_time():
    # Prepare / Execute / Assert: over- and under-prediction by the same share weigh the same.
    assert abs_rel_error(1.5, 1.0) == pytest.approx(0.5)
    assert abs_rel_error(0.5, 1.0) == pytest.approx(0.5)
    assert abs_rel_error(2.0, 2.0) == 0.0


def test_zero_measured_is_exact_against_zero_and_undefined_against_more():
    # Prepare / Execute / Assert: under 1 µs counts as zero on either side.
    assert abs_rel_error(0.0, 0.0) == 0.0
    assert abs_rel_error(4e-7, 0.0) == 0.0
    assert abs_rel_error(0.2, 0.0) is None
    assert abs_rel_error(0.2, 5e-7) is None
    assert abs_rel_error(0.0, 0.1) == pytest.approx(1.0)


def test_median_and_p90_by_hand():
    # Prepare: errors 0.1, 0.5, 0, 0.6 -> sorted 0, 0.1, 0.5, 0.6.
    measured = [row(n, t) for n, t in enumerate([1.0, 2.0, 4.0, 5.0])]
    predicted = [row(n, t) for n, t in enumerate([1.1, 1.0, 4.0, 8.0])]

    # Execute
    stats = statistics(pair_rounds(predicted, measured))["round"]

    # Assert: median (0.1 + 0.5) / 2; p90 at rank 0.9 x 3 = 2.7: 0.5 + 0.7 x (0.6 - 0.5).
    assert stats.median == pytest.approx(0.3)
    assert stats.p90 == pytest.approx(0.57)
    assert (stats.n, stats.undefined) == (4, 0)


def test_components_leave_out_zero_measured_and_count_them():
    # Prepare: waiting measured 0 in rounds 0 and 1; predicted 0 in round 0 only.
    measured = [row(0, 1.0, waiting=0.0), row(1, 1.0, waiting=0.0), row(2, 1.0, waiting=0.5)]
    predicted = [row(0, 1.0, waiting=0.0), row(1, 1.0, waiting=0.3), row(2, 1.0, waiting=0.2)]

    # Execute
    waiting = statistics(pair_rounds(predicted, measured))["waiting"]

    # Assert: errors 0 (exact) and 0.6; round 1's is undefined.
    assert (waiting.n, waiting.undefined) == (2, 1)
    assert waiting.median == pytest.approx(0.3)


def test_no_defined_error_gives_no_statistic():
    # Prepare / Execute
    stats = error_stats([None, None])

    # Assert
    assert (stats.median, stats.p90, stats.n, stats.undefined) == (None, None, 0, 2)


def test_rounds_pair_by_number_in_the_measured_order():
    # Prepare: the prediction has a round the measurement lacks, in another order.
    measured = [row(2, 3.0, compute=2.0), row(1, 2.0, compute=1.5)]
    predicted = [row(1, 1.0, compute=0.5), row(3, 9.0), row(2, 2.0, compute=1.0)]

    # Execute
    records = pair_rounds(predicted, measured)

    # Assert
    assert [r.round for r in records] == [2, 1]
    assert (records[0].predicted_s, records[0].measured_s) == (2.0, 3.0)
    assert (records[1].predicted_compute_s, records[1].measured_compute_s) == (0.5, 1.5)
    assert records[1].error("compute") == pytest.approx(2 / 3)


def test_comparison_rows_pair_by_repetition_and_scenario():
    # Prepare
    def run(rep: int, scenario: str, total: float) -> ScenarioRun:
        return ScenarioRun(
            repetition=rep,
            scenario=scenario,
            total_s=total,
            transfer_s=total,
            compute_s=0.0,
            aggregation_s=0.0,
            waiting_s=0.0,
            bytes_moved=0,
        )

    measured = [run(0, "cloud_based", 10.0), run(0, "client_based", 4.0)]
    predicted = [run(0, "client_based", 5.0), run(0, "cloud_based", 8.0)]

    # Execute
    records = pair_repetitions(predicted, measured)

    # Assert
    assert [(r.repetition, r.scenario, r.predicted_s) for r in records] == [
        (0, "cloud_based", 8.0),
        (0, "client_based", 5.0),
    ]
    assert records[0].as_row()["scenario"] == "cloud_based" and "round" not in records[0].as_row()
    assert [r.error() for r in records] == pytest.approx([0.2, 0.25])


def test_csv_row_has_times_and_errors_of_each_component():
    # Prepare
    record = pair_rounds([row(0, 1.0, transfer=0.5)], [row(0, 2.0, transfer=1.0)])[0]

    # Execute
    as_row = record.as_row()

    # Assert
    assert list(as_row)[:4] == ["round", "predicted_s", "measured_s", "abs_rel_error"]
    for c in ("transfer", "compute", "aggregation", "waiting"):
        assert {f"predicted_{c}_s", f"measured_{c}_s", f"{c}_abs_rel_error"} <= as_row.keys()
    assert as_row["transfer_abs_rel_error"] == pytest.approx(0.5)
    assert as_row["compute_abs_rel_error"] == 0.0  # both zero: exact


def test_a_round_pairs_the_devices_processor_seconds_counted_and_charged():
    # Prepare: measured rounds whose devices counted their processor seconds, predicted
    # rounds with the work the simulator charged, and a round of a run that counted none.
    measured = [
        replace(row(0, 2.0), device_cpu_s=0.05, device_train_cpu_s=0.04),
        row(1, 2.0),
    ]
    predicted = [
        replace(row(0, 1.0), device_cpu_s=0.045, device_train_cpu_s=0.035),
        replace(row(1, 1.0), device_cpu_s=0.045, device_train_cpu_s=0.035),
    ]

    # Execute
    counted, uncounted = (r.as_row() for r in pair_rounds(predicted, measured))

    # Assert: fidelity.csv's columns carry both; a run that counted none leaves them empty.
    assert (counted["predicted_device_cpu_s"], counted["measured_device_cpu_s"]) == (0.045, 0.05)
    assert counted["measured_device_train_cpu_s"] == 0.04
    assert counted["predicted_device_train_cpu_s"] == 0.035
    assert uncounted["measured_device_cpu_s"] is None
    assert uncounted["predicted_device_cpu_s"] == 0.045


def test_unknown_component_is_named():
    # Prepare
    record = Fidelity(round=0, **{k: 1.0 for k in _time_keys()})

    # Execute / Assert
    with pytest.raises(KeyError, match="'network' is not one of transfer"):
        record.error("network")


def _time_keys() -> list[str]:
    keys = ["predicted_s", "measured_s"]
    for c in ("transfer", "compute", "aggregation", "waiting"):
        keys += [f"predicted_{c}_s", f"measured_{c}_s"]
    return keys


def test_spec_sheet_and_measured_profiles_are_named_and_mixed_kinds_both():
    # Prepare: client 2 gets a measured profile.
    topology = star(2)
    measured = replace(
        topology.devices[2].hardware,
        kind="measured",
        source="fedsim calibrate (test)",
        steps={"m": StepModel(overhead_s=1e-3, per_sample_s=2e-5)},
    )
    devices = {**topology.devices, 2: replace(topology.devices[2], hardware=measured)}
    mixed = type(topology)(topology.name, topology.groups, devices)

    # Execute / Assert
    assert profile_kinds(topology, [0, 1, 2]) == "spec-sheet"
    assert profile_kinds(mixed, [2]) == "measured"
    assert profile_kinds(mixed, [0, 1, 2]) == "measured and spec-sheet"


def test_summary_block_has_every_statistic():
    # Prepare
    records = pair_rounds([row(0, 1.0), row(1, 3.0)], [row(0, 2.0), row(1, 2.0)])

    # Execute
    block = summary(records, "spec-sheet")

    # Assert
    assert block["pairs"] == 2 and block["profiles"] == "spec-sheet"
    assert (block["predicted_total_s"], block["measured_total_s"]) == (4.0, 4.0)
    for name in ("round", "transfer", "compute", "aggregation", "waiting"):
        assert {"median_abs_rel_error", "p90_abs_rel_error", "n", "undefined"} <= block[name].keys()
    assert block["round"]["median_abs_rel_error"] == pytest.approx(0.5)
