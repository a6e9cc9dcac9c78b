"""Reading device tables and availability traces, FedScale's shapes among them."""

from __future__ import annotations

import json

import pytest

from fedsim.core.traces import TraceError, load_availability, load_device_table


def write(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def test_a_fedscale_device_trace_sets_speed_against_the_median_and_bandwidth_from_kbps(tmp_path):
    # Prepare: FedScale's client_device_capacity shape: ms per sample and kbit/s.
    path = write(
        tmp_path,
        "devices.json",
        {
            "17": {"computation": 50.0, "communication": 8000.0},
            "3": {"computation": 100.0, "communication": 1000.0},
            "5": {"computation": 200.0, "communication": 80.0},
        },
    )

    # Execute
    rows = load_device_table(path)
    against_50 = load_device_table(path, reference_ms_per_sample=50.0)

    # Assert: in the file's order; the median device (100 ms) runs at its profile's speed.
    assert [r.speed for r in rows] == [2.0, 1.0, 0.5]
    assert [r.bandwidth for r in rows] == [1e6, 125e3, 10e3]
    assert all(r.latency is None and r.hardware is None for r in rows)
    assert [r.speed for r in against_50] == [1.0, 0.5, 0.25]


def test_a_csv_table_reads_latency_and_hardware_and_leaves_empty_cells_to_the_profile(tmp_path):
    # Prepare
    path = write(
        tmp_path,
        "table.csv",
        "client_id,hardware,communication,latency_ms\n1,rpi4,2000,20\n2,,,5\n",
    )

    # Execute
    rows = load_device_table(path)

    # Assert
    assert rows[0].hardware == "rpi4" and rows[0].bandwidth == 250e3 and rows[0].latency == 0.02
    assert rows[1].hardware is None and rows[1].bandwidth is None and rows[1].latency == 0.005
    assert rows[0].speed is None


@pytest.mark.parametrize(
    ("name", "content", "complaint"),
    [
        ("t.csv", "client_id,speed\n1,2\n", "unknown column 'speed'"),
        ("t.csv", "communication\n100\n-3\n", "line 3: communication must be a finite number > 0"),
        ("t.csv", "communication\n", "no devices"),
        ("t.csv", "client_id,communication\n7,\n", "line 2: gives none of"),
        ("t.json", {"1": {"computation": "fast"}}, "client 1: computation"),
        ("t.json", {"1": {"computation": 0}}, "> 0"),
        ("t.json", {"1": {"cpu": 3}}, "client 1: unknown field 'cpu'"),
        ("t.json", [1, 2], "row 0: must be an object"),
        ("t.json", "{", "not JSON"),
        ("t.txt", "x", "a trace is a .json file"),
    ],
)
def test_a_bad_table_names_the_file_and_the_row(tmp_path, name, content, complaint):
    path = write(tmp_path, name, content)
    with pytest.raises(TraceError, match=complaint) as error:
        load_device_table(path)
    assert str(path) in str(error.value)


def test_a_fedscale_availability_trace_repeats_over_its_duration(tmp_path):
    # Prepare: client 1 online 10-20 s and 30-40 s of a 100 s trace; client 2 from 60 s to the
    # end of its trace (one inactive time fewer), and back at 95 s as it went: one interval.
    path = write(
        tmp_path,
        "behave.json",
        {
            "1": {"duration": 100, "active": [10, 30], "inactive": [20, 40]},
            "2": {"finish_time": 100, "active": [60, 70], "inactive": [70]},
        },
    )

    # Execute
    one, two = load_availability(path)

    # Assert
    assert one.period == 100 and list(one.edges) == [10, 20, 30, 40]
    assert one.online(115) and not one.online(125)
    assert list(two.edges) == [60, 100] and two.online(99) and not two.online(101)


@pytest.mark.parametrize(
    ("content", "complaint"),
    [
        ({"1": {"active": [1, 5], "inactive": [3]}}, "2 active times but 1 inactive"),
        ({"1": {"active": [5], "inactive": [3]}}, "client 1: an online interval must end"),
        ({"1": {"active": 5, "inactive": [3]}}, "active must be a list"),
        ({"1": {"duration": -1, "active": [], "inactive": []}}, "finish_time must be"),
        ({}, "not empty"),
    ],
)
def test_a_bad_availability_trace_names_the_client(tmp_path, content, complaint):
    path = write(tmp_path, "a.json", content)
    with pytest.raises(TraceError, match=complaint):
        load_availability(path)
