"""Table II, explained: the fit in the summary and the report, the paper's Δt on the plot."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from fedsim import pipeline
from fedsim.config import build_spec, compose, conf_dir
from fedsim.core.results import CrossoverPoint
from fedsim.report.console import console_table
from fedsim.report.plots import PAPER_RATE_COLOR, plot_crossover
from fedsim.report.tables import crossover_frame
from fedsim.report.write import write_run
from fedsim.runtimes import runtime

SMALL_RUN = [
    "+experiment=imagenet_yolo",
    "repetitions=3",
    "crossover.bandwidth_mbps.num=3",
    "crossover.samples_per_device.num=3",
]


@pytest.fixture(scope="module")
def spec():
    return build_spec(compose(SMALL_RUN), conf_dir())


@pytest.fixture(scope="module")
def result(spec, tmp_path_factory):
    return pipeline.run(spec, runtime("sim"), tmp_path_factory.mktemp("run"))


def test_the_fit_leaves_table_ii_as_it_is(spec, result, tmp_path):
    # Prepare: the same run without the paper's figures, so without the fit.
    bare = dataclasses.replace(spec, paper=None)

    # Execute
    without = pipeline.run(bare, runtime("sim"), tmp_path)

    # Assert: the fit adds its own entry and changes no number of Table II nor any repetition.
    assert "implied" in result.summary and "implied" not in without.summary
    for key in ("t_ref_s", "t_new_s", "time_saving_rate"):
        assert result.summary[key] == without.summary[key]
    assert result.rows == without.rows
    assert console_table(result.summary) == console_table(
        {k: v for k, v in result.summary.items() if k != "implied"}
    )


def test_the_report_says_what_table_ii_implies(result, tmp_path):
    # Execute
    write_run(tmp_path, result)

    # Assert: the section, its tables and a sentence for a default every fit contradicts.
    text = (tmp_path / "report.md").read_text(encoding="utf-8")
    section = text.split("## What Table II implies\n\n")[1].split("\n## ")[0]
    implied = result.summary["implied"]
    assert implied["within"], "the paper's figures are reproducible with one GPU"
    assert "**implied by Table II**" in section
    assert "### Combinations that reproduce both times within 2 %" in section
    assert "### Best fit for each number of server GPUs" in section
    for fit in implied["within"]:
        assert f"| {fit['samples_per_device']:,} | {fit['path_bandwidth_mbps']:,.0f} |" in section
    assert "- **server GPUs**: every combination that reproduces Table II implies 1, " in section
    assert "With the stated hardware (8 server GPUs, efficiency 0.4), no data per" in section
    # The defaults and their prediction stay in the report as they were.
    assert "| t_ref, cloud-based [s] | 6.02 |" in text
    assert "dashed line marks where Δt equals the paper's -11.6 %" in text
    # summary.json holds the fit as JSON, and the HTML report has the section.
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["implied"]["within"] == json.loads(json.dumps(implied["within"]))
    assert "What Table II implies" in (tmp_path / "report.html").read_text(encoding="utf-8")


def _orange_pixels(path: Path) -> int:
    rgb = imread(path)[..., :3]
    orange = np.array([1.0, 0.498, 0.055])  # tab:orange
    return int((np.abs(rgb - orange).max(axis=-1) < 0.06).sum())


def test_the_crossover_plot_marks_the_papers_rate(tmp_path):
    # Prepare: a grid on which Δt runs from -50 % to +50 %.
    assert PAPER_RATE_COLOR == "tab:orange"
    points = [
        CrossoverPoint(
            bandwidth_mbps=b, samples_per_device=n, t_ref_s=1.0, t_new_s=1.0 - 0.25 * (i + j - 2)
        )
        for i, b in enumerate((1.0, 10.0, 100.0))
        for j, n in enumerate((10, 100, 1000))
    ]
    frame = crossover_frame(points)

    # Execute
    marked = plot_crossover(frame, tmp_path / "marked.png", paper_rate=-0.116)
    plain = plot_crossover(frame, tmp_path / "plain.png")

    # Assert: the orange contour (and its legend entry) is there only with the paper's rate.
    assert marked is not None and plain is not None
    assert _orange_pixels(marked) > 100
    assert _orange_pixels(plain) == 0
