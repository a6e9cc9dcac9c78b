"""``report.html``: every report as one self-contained page, plots embedded, readable offline."""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
from test_federated_report import make_result as make_federated_result
from test_report import make_result
from test_sweep_report import EXPERIMENT, write_comparison_job, write_federated_job

from fedsim.config import build_spec, compose, conf_dir
from fedsim.remote import run_remote
from fedsim.report.federated_markdown import percent
from fedsim.report.html import write_html_report
from fedsim.report.sweep import write_sweep_report
from fedsim.report.tables import events_frame
from fedsim.report.write import write_run

REPO = Path(__file__).resolve().parents[2]
DATA_URI = "data:"
EXTERNAL = ("http://", "https://", "//")
SVG = b'<svg xmlns="http://www.w3.org/2000/svg" width="4" height="4"><rect width="4"/></svg>'


class Page(HTMLParser):
    """What a test reads off an HTML page: title, images, links, tables, text, resources."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.title = ""
        self.images: list[dict[str, str]] = []
        self.links: list[str] = []
        self.resources: list[tuple[str, str]] = []  # (tag, URL) of what a browser would load
        self.tags: list[str] = []
        self.meta: list[dict[str, str]] = []
        self.rows: list[list[str]] = []
        self.notes: list[str] = []  # the text of class="missing" elements
        self.text: list[str] = []
        self._stack: list[str] = []  # open elements, by class where they have one
        self._cell: list[str] | None = None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.tags.append(tag)
        if tag == "img":
            self.images.append(a)
        if tag == "a" and "href" in a:
            self.links.append(a["href"])
        if tag == "meta":
            self.meta.append(a)
        if tag in ("img", "script", "iframe", "source", "embed", "object", "video", "audio"):
            self.resources += [(tag, a[k]) for k in ("src", "data") if k in a]
        if tag == "link" and "href" in a:
            self.resources.append((tag, a["href"]))
        if tag == "tr":
            self.rows.append([])
        if tag in ("td", "th"):
            self._cell = []
        if tag not in ("img", "meta", "br", "hr", "link", "input"):
            self._stack.append(a.get("class") or tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append("".join(self._cell).strip())
            self._cell = None
        if self._stack:
            self._stack.pop()

    def handle_data(self, data: str) -> None:
        if "title" in self._stack:
            self.title += data
        if self._cell is not None:
            self._cell.append(data)
        if "missing" in self._stack:
            self.notes.append(data)
        self.text.append(data)

    @property
    def embedded(self) -> list[bytes]:
        """The bytes of every image embedded as a base64 data URI."""
        return [
            base64.b64decode(i["src"].split(";base64,", 1)[1], validate=True)
            for i in self.images
            if i["src"].startswith(DATA_URI)
        ]


def page_of(run_dir: Path) -> Page:
    return Page((run_dir / "report.html").read_text(encoding="utf-8"))


def assert_self_contained(page: Page, plots_dir: Path) -> None:
    """Every plot embedded byte for byte, nothing loaded from anywhere, fit for a phone."""
    plots = sorted(p.read_bytes() for p in plots_dir.glob("*.png"))
    assert plots, "the run wrote no plots"
    assert sorted(page.embedded) == plots
    assert all(i["src"].startswith("data:image/png;base64,") for i in page.images)
    assert not [r for r in page.resources if not r[1].startswith(DATA_URI)], page.resources
    assert "script" not in page.tags and "link" not in page.tags
    assert not [h for h in page.links if h.startswith(EXTERNAL)]
    assert {"name": "viewport", "content": "width=device-width, initial-scale=1"} in page.meta
    assert "style" in page.tags


def markdown_rows(report: str) -> list[list[str]]:
    """The cells of every table row of a Markdown report, less the alignment rules."""
    rows = []
    for line in report.splitlines():
        if line.startswith("| ") and not set(line) <= set("|:- "):
            rows.append([c.strip() for c in line.strip().strip("|").split(" | ")])
    return rows


@pytest.fixture(scope="module")
def comparison_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("comparison_run")
    write_run(run_dir, make_result())
    return run_dir


@pytest.fixture(scope="module")
def federated_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("federated_run")
    write_run(run_dir, make_federated_result())
    return run_dir


def test_comparison_report_html_embeds_every_plot(comparison_run):
    # Prepare / Execute: the module fixture wrote a comparison run.

    # Execute
    page = page_of(comparison_run)

    # Assert
    assert (comparison_run / "report.html").is_file()
    assert len(page.embedded) == 4
    assert_self_contained(page, comparison_run / "plots")
    assert page.title == "fedsim report: imagenet_yolo"


def test_comparison_report_html_shows_table_ii_as_report_md(comparison_run):
    # Prepare: Table II's numbers from summary.json, formatted as report.md formats them.
    s = json.loads((comparison_run / "summary.json").read_text(encoding="utf-8"))
    t_ref, t_new = s["t_ref_s"], s["t_new_s"]

    # Execute
    page = page_of(comparison_run)

    # Assert
    assert [
        "t_ref, cloud-based [s]",
        f"{s['paper']['t_ref_s']:.2f}",
        f"{t_ref['mean']:.2f} ± {t_ref['std']:.2f}",
        f"{t_ref['mean'] - s['paper']['t_ref_s']:+.2f} s",
        f"{100 * (t_ref['mean'] / s['paper']['t_ref_s'] - 1):+.1f} %",
    ] in page.rows
    assert [
        "t_new, client-based [s]",
        f"{s['paper']['t_new_s']:.2f}",
        f"{t_new['mean']:.2f} ± {t_new['std']:.2f}",
        f"{t_new['mean'] - s['paper']['t_new_s']:+.2f} s",
        f"{100 * (t_new['mean'] / s['paper']['t_new_s'] - 1):+.1f} %",
    ] in page.rows
    rate_row = next(r for r in page.rows if r[0] == "time-saving rate Δt [%]")
    assert rate_row[1:3] == [
        f"{100 * s['paper']['time_saving_rate']:.1f}",
        f"{100 * s['time_saving_rate']:.1f}",
    ]


@pytest.mark.parametrize("run", ["comparison_run", "federated_run"])
def test_every_table_row_of_report_md_is_in_report_html(run, request):
    # Prepare
    run_dir = request.getfixturevalue(run)
    report = (run_dir / "report.md").read_text(encoding="utf-8")

    # Execute
    page = page_of(run_dir)

    # Assert: the same cells, in the same order: nothing retyped, nothing escaped twice.
    expected = [[c.replace("`", "").replace("\\|", "|") for c in r] for r in markdown_rows(report)]
    assert expected and page.rows == expected


def test_federated_report_html_embeds_every_plot(federated_run):
    # Prepare
    s = json.loads((federated_run / "summary.json").read_text(encoding="utf-8"))

    # Execute
    page = page_of(federated_run)

    # Assert
    assert len(page.embedded) == 4
    assert_self_contained(page, federated_run / "plots")
    assert page.title == "fedsim report: fl_digits"
    text = "".join(page.text)
    assert percent(s["final_accuracy"]) in text and percent(s["target_accuracy"]) in text


def test_sweep_report_html_links_each_jobs_report_html(tmp_path):
    # Prepare: two federated jobs with their reports (as their runs wrote them), one
    # comparison job whose report.md has no report.html beside it.
    write_federated_job(tmp_path / "0", [EXPERIMENT, "strategy=fedavg"], gain=0.11)
    write_federated_job(tmp_path / "1", [EXPERIMENT, "strategy=median"], gain=0.08)
    write_comparison_job(tmp_path / "2", [EXPERIMENT, "experiment.kind=comparison"])
    for job in ("0", "1", "2"):
        (tmp_path / job / "report.md").write_text(f"# job {job}\n", encoding="utf-8")
    for job in ("0", "1"):
        write_html_report(tmp_path / job / "report.md")

    # Execute
    write_sweep_report(tmp_path)
    page = page_of(tmp_path)

    # Assert
    assert "0/report.html" in page.links and "1/report.html" in page.links
    assert "2/report.md" in page.links  # no report.html to point at: the Markdown still opens
    assert "0/report.md" not in page.links
    assert_self_contained(page, tmp_path / "plots")
    assert page.title == "fedsim sweep: fl_digits"


def test_remote_run_writes_report_html(tmp_path, monkeypatch):
    # Prepare: a server whose job has already finished two rounds.
    job = {
        "id": "j1",
        "state": "succeeded",
        "round": 2,
        "error": None,
        "results": "/srv/results/j1",
        "rounds": [dataclasses.asdict(r) for r in make_federated_result().rows[:2]],
    }
    monkeypatch.setattr("fedsim.remote._call", lambda *args, **kwargs: job)
    monkeypatch.setattr(
        "fedsim.remote.server_download",
        lambda url, token, dest: events_frame(make_federated_result().events).to_csv(dest),
    )
    monkeypatch.setenv("FEDSIM_ADMIN_TOKEN", "secret")
    cfg = compose(
        [
            "+experiment=fl_digits",
            "mode=real",
            "mode.server_url=http://192.0.2.1:8080",
            "fl.rounds=2",
        ]
    )

    # Execute
    run_remote(build_spec(cfg, conf_dir()), tmp_path, poll_s=0)
    page = page_of(tmp_path)

    # Assert
    assert page.title == "fedsim report: fl_digits (job j1 on http://192.0.2.1:8080)"
    final = percent(job["rounds"][-1]["accuracy"])
    assert "/srv/results/j1" in "".join(page.text) and final in "".join(page.text)
    assert_self_contained(page, tmp_path / "plots")


def test_missing_image_leaves_a_note_not_an_exception(tmp_path, caplog):
    # Prepare: one plot on disk, one referenced but gone, one SVG.
    (tmp_path / "plots").mkdir()
    png = b"\x89PNG\r\n\x1a\nfake"
    (tmp_path / "plots" / "here.png").write_bytes(png)
    (tmp_path / "plots" / "shape.svg").write_bytes(SVG)
    markdown_path = tmp_path / "report.md"
    markdown_path.write_text(
        "# A run\n\n![here](plots/here.png)\n\n![gone](plots/gone.png)\n\n"
        "![shape](plots/shape.svg)\n",
        encoding="utf-8",
    )

    # Execute
    with caplog.at_level(logging.WARNING, logger="fedsim.report.html"):
        path = write_html_report(markdown_path)
    page = Page(path.read_text(encoding="utf-8"))

    # Assert
    assert path == tmp_path / "report.html"
    assert sorted(page.embedded) == sorted([png, SVG])
    assert [i["src"].split(";")[0] for i in page.images] == ["data:image/png", "data:image/svg+xml"]
    note = "".join(page.notes)
    assert "plots/gone.png" in note
    assert "plots/gone.png" in caplog.text


def test_text_is_escaped_once(tmp_path):
    # Prepare: characters that HTML escapes, in the title, prose, code and a table.
    markdown_path = tmp_path / "report.md"
    markdown_path.write_text(
        '# R&D report: `a<b>`\n\nΔt < 0 & t_new > t_ref, "quoted".\n\n'
        "| x | y |\n| :--- | ---: |\n| a & b | 1 < 2 |\n",
        encoding="utf-8",
    )

    # Execute
    page = Page(write_html_report(markdown_path).read_text(encoding="utf-8"))

    # Assert: the parser decodes one level of escaping back to the Markdown's own text.
    assert page.title == "R&D report: a<b>"
    assert 'Δt < 0 & t_new > t_ref, "quoted".' in "".join(page.text)
    assert ["a & b", "1 < 2"] in page.rows
    assert "&amp;amp;" not in (tmp_path / "report.html").read_text(encoding="utf-8")


def fedsim(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fedsim", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_main_job_writes_report_html(tmp_path):
    # Prepare
    grid = ["crossover.bandwidth_mbps.num=3", "crossover.samples_per_device.num=3"]

    # Execute
    proc = fedsim("+experiment=imagenet_yolo", "repetitions=2", *grid, f"hydra.run.dir={tmp_path}")

    # Assert
    assert proc.returncode == 0, proc.stderr[-3000:]
    page = page_of(tmp_path)
    assert len(page.embedded) == 4
    assert_self_contained(page, tmp_path / "plots")
    assert next(r[:2] for r in page.rows if "t_ref" in r[0]) == ["t_ref, cloud-based [s]", "6.02"]


def test_federated_sweep_writes_report_html_for_each_job_and_the_sweep(tmp_path):
    # Execute
    proc = fedsim(
        "-m",
        "+experiment=fl_digits",
        "strategy=fedavg,median",
        "fl.rounds=2",
        f"hydra.sweep.dir={tmp_path}",
    )

    # Assert
    assert proc.returncode == 0, proc.stderr[-3000:]
    for job in ("0", "1"):
        assert_self_contained(page_of(tmp_path / job), tmp_path / job / "plots")
    page = page_of(tmp_path)
    assert_self_contained(page, tmp_path / "plots")
    assert {"0/report.html", "1/report.html"} <= set(page.links)
    assert not [h for h in page.links if h.endswith(".md")]
