"""The run timeline stays drawable for a fleet: it shows at most MAX_TIMELINE_ROWS devices."""

from pathlib import Path

import pandas as pd
from matplotlib.axes import Axes

from fedsim.report.federated_plots import MAX_TIMELINE_ROWS, plot_federated_timeline

PNG = b"\x89PNG\r\n\x1a\n"


def test_timeline_of_a_large_fleet_shows_the_first_devices_only(tmp_path: Path, monkeypatch):
    # Prepare: 500 devices, one training bar each, plus the server's aggregation.
    rows = [
        {
            "device": d,
            "kind": "train",
            "start_s": 0.0,
            "end_s": 1.0 + d / 500,
            "duration_s": 1.0 + d / 500,
        }
        for d in range(1, 501)
    ]
    rows.append({"device": 0, "kind": "aggregate", "start_s": 2.0, "end_s": 2.1, "duration_s": 0.1})
    events = pd.DataFrame(rows)
    rounds = pd.DataFrame([{"round": 0, "started_s": 0.0, "finished_s": 2.1, "aggregated": True}])
    drawn = []
    original = Axes.add_collection
    monkeypatch.setattr(
        Axes, "add_collection", lambda ax, c, **kw: (drawn.append(c), original(ax, c, **kw))[1]
    )
    # Execute
    out = plot_federated_timeline(events, rounds, tmp_path / "timeline.png", server=0)
    # Assert: one bar group per row shown, the server's among them.
    assert out.read_bytes()[:8] == PNG
    rows_drawn = {
        round(float(path.vertices[:, 1].mean()), 6)
        for collection in drawn
        for path in collection.get_paths()
    }
    assert len(rows_drawn) == MAX_TIMELINE_ROWS < 500
