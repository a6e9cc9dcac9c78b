"""The built-in dashboard (``/dashboard/``) in a real browser, against a server with three agents.

Debian's Chromium, driven by Playwright, signs in with the read-only viewer token (all the page
needs: a route it could not read would break a view) and checks each view of the seed paper's
Fig. 3 against what the cluster holds: (a) the device list, its group filter, and a
calibration request for a model no agent can build, shown failed with the agent's reason,
(b) the monitoring charts, GPU, disk and network traffic among them, (c) a finished job's
model, versions and rounds; then an agent stops and, without a reload, its device turns
offline. Screenshots of every view, at 1280x800 and at phone width, go to
``$FEDSIM_TEST_ARTIFACTS`` (default ``test-artifacts/dashboard/``).
"""

from __future__ import annotations

import json
import math
import os
import time
import urllib.request
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import pytest
import torch
from clusters import cluster_for, config

try:
    from playwright.sync_api import Page, expect, sync_playwright
except ImportError:  # the test extras install it; without it the test is skipped
    sync_playwright = None

CHROMIUM = Path("/usr/bin/chromium")
REPO = Path(__file__).resolve().parents[2]
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
# Each view polls every 2 s; patience is 3 s: an offline device shows within about 5 s.
SLOW = 20_000  # ms, for what waits on the cluster (a refresh, a heartbeat, a timeout)
TRAFFIC = ("disk_read", "disk_write", "net_receive", "net_transmit")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason=f"no Chromium at {CHROMIUM} (apt install chromium)"
    ),
    pytest.mark.skipif(
        sync_playwright is None, reason="playwright is not installed (pip install playwright)"
    ),
]

# Counts the pixels of a plot's canvas near each series' colour (its legend marker's), so a test
# can tell drawn lines from an empty grid. Runs through the DevTools protocol, so the page's
# Content-Security-Policy, which forbids eval, does not apply.
PIXELS_BY_SERIES = """(box) => {
  const canvas = box.querySelector("canvas");
  const { data } = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height);
  const colours = [...box.querySelectorAll(".u-legend .u-series")].slice(1).map((row) => {
    const rgb = getComputedStyle(row.querySelector(".u-marker")).backgroundColor;
    return rgb.match(/\\d+/g).slice(0, 3).map(Number);
  });
  return colours.map(([r, g, b]) => {
    let n = 0;
    for (let i = 0; i < data.length; i += 4) {
      const close = Math.abs(data[i] - r) + Math.abs(data[i + 1] - g) + Math.abs(data[i + 2] - b);
      if (data[i + 3] > 200 && close < 40) n += 1;
    }
    return n;
  });
}"""

TABLE_TEXT = "(t) => [...t.tBodies[0].rows].map((r) => [...r.cells].map((c) => c.textContent))"


def artifacts() -> Path:
    path = Path(os.environ.get("FEDSIM_TEST_ARTIFACTS") or REPO / "test-artifacts" / "dashboard")
    path.mkdir(parents=True, exist_ok=True)
    return path


def js_fixed(value: float | None, digits: int) -> str:
    """``Number.prototype.toFixed`` as the page formats: half up on the exact binary value."""
    if value is None:
        return "\u2014"
    return str(Decimal(value).quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP))


def show(page: Page, view: str) -> None:
    """Open ``view`` by its tab and wait until the page has drawn it from fresh data."""
    page.get_by_test_id(f"tab-{view}").click()
    expect(page.get_by_test_id(f"view-{view}")).to_be_visible()
    refreshed(page, view)


def refreshed(page: Page, view: str) -> None:
    """Wait for the next completed refresh of ``view`` (the status line's stamp changes)."""
    status = page.get_by_test_id("status")
    before = status.get_attribute("data-updated")
    deadline = time.monotonic() + SLOW / 1000
    while time.monotonic() < deadline:
        if (
            status.get_attribute("data-view") == view
            and status.get_attribute("data-updated") != before
        ):
            return
        page.wait_for_timeout(100)
    raise AssertionError(f"the {view} view did not refresh: {status.text_content()!r}")


def device_rows(page: Page) -> list[dict[str, str]]:
    rows = page.get_by_test_id("devices-table").locator("tbody tr")
    return rows.evaluate_all(
        """(rows) => rows.map((r) => Object.fromEntries(
             [["id", r.dataset.device], ["state", r.dataset.state],
              ...[...r.cells].map((c) => [c.dataset.col, c.textContent])]))"""
    )


def no_horizontal_overflow(page: Page) -> None:
    widths = page.evaluate(
        "[document.documentElement.scrollWidth, document.body.scrollWidth, window.innerWidth]"
    )
    assert max(widths[:2]) <= widths[2], f"page wider than the screen: {widths}"


def test_dashboard_shows_the_cluster_live(tmp_path: Path):
    cfg = config("fl.rounds=2", "mode.heartbeat_interval_s=0.5", "mode.patience_s=3")
    shots = artifacts()
    with (
        cluster_for(cfg, tmp_path) as cluster,
        sync_playwright() as playwright,
    ):
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport=DESKTOP)
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
            page.on(
                "console",
                lambda m: m.type == "error" and errors.append(f"console: {m.text}"),
            )
            run_dashboard(page, cluster, shots)
            # The only error the page may log is the refused token it was given on purpose.
            refused = "the server responded with a status of 401"
            assert [e for e in errors if refused not in e] == []
        finally:
            browser.close()


def run_dashboard(page: Page, cluster, shots: Path) -> None:
    topology = cluster.topology
    expected = {
        str(dev): {
            "description": topology.devices[dev].description,
            "group": str(topology.devices[dev].group),
            "group-description": topology.groups[topology.devices[dev].group].description,
            "id-in-group": str(topology.devices[dev].id_in_group),
        }
        for dev in cluster.clients
    }

    # Sign in: a wrong token is refused with a message and the prompt comes back.
    page.goto(f"{cluster.server.url}/dashboard")
    dialog = page.get_by_test_id("login-dialog")
    expect(dialog).to_be_visible()
    page.get_by_test_id("login-token").fill("not-the-admin-token")
    page.get_by_test_id("login-submit").click()
    expect(page.get_by_test_id("login-message")).to_contain_text("401", timeout=SLOW)
    expect(dialog).to_be_visible()
    page.screenshot(path=shots / "sign-in-refused-1280x800.png")
    page.get_by_test_id("login-token").fill(cluster.viewer_token)
    page.get_by_test_id("login-submit").click()
    expect(dialog).to_be_hidden()
    page.evaluate("window.fedsimTestNoReload = true")  # gone if the page ever reloads

    # (a) Devices: exactly the three clients, as the topology describes them, all online.
    show(page, "devices")
    assert page.url.endswith("/dashboard/#devices")
    for dev in cluster.clients:  # each agent probes its link as it starts
        bandwidth = page.locator(
            f'[data-testid="device-row"][data-device="{dev}"] [data-col="bandwidth"]'
        )
        expect(bandwidth).to_contain_text("bit/s", timeout=SLOW)
    rows = device_rows(page)
    assert [r["id"] for r in rows] == [str(d) for d in sorted(cluster.clients)]
    for row in rows:
        assert {k: row[k] for k in expected[row["id"]]} == expected[row["id"]]
        assert row["state"] == "online"
        assert row["last-seen"].endswith("s ago")
        assert "CPU" in row["hardware"]
        assert row["bandwidth"].endswith("bit/s")  # the agents probed their link at start
    expect(page.get_by_test_id("devices-counts")).to_contain_text("3 devices: 3 online")
    page.screenshot(path=shots / "devices-1280x800.png")

    # The group filter shows only that group's devices.
    groups = sorted({topology.devices[d].group for d in cluster.clients})
    for group in [*groups, None]:
        page.get_by_test_id("devices-group-filter").select_option(
            "" if group is None else str(group)
        )
        refreshed(page, "devices")
        wanted = [d for d in sorted(cluster.clients) if group in (None, topology.devices[d].group)]
        assert [r["id"] for r in device_rows(page)] == [str(d) for d in wanted]

    # A calibration request for a model no one has: the agent says why it cannot measure it,
    # and the device's row shows it in place of a pending request.
    asked = min(cluster.clients)
    request = urllib.request.Request(
        f"{cluster.server.url}/api/v1/devices/{asked}/calibrate",
        data=json.dumps({"model": "no_such_model"}).encode(),
        headers={
            "Authorization": f"Bearer {cluster.admin_token}",
            "Content-Type": "application/json",
        },
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert answer.status == 202
    failed = page.locator(
        f'[data-testid="device-row"][data-device="{asked}"] [data-testid="calibration-failed"]'
    )
    expect(failed).to_contain_text("calibration failed: ", timeout=SLOW)
    expect(failed).to_contain_text("no_such_model")

    # A two-round job, so that the devices train while the monitoring view watches.
    job = cluster.jobs.start(
        "federated", {"experiment": {"name": "fl_digits"}, "fl": {"rounds": 2}}
    )

    # (b) Monitoring: a chart per metric, a line per device, read from the heartbeats.
    show(page, "monitoring")
    page.get_by_test_id("monitoring-window").select_option("300")
    refreshed(page, "monitoring")
    source = page.get_by_test_id("monitoring-source")
    expect(source).to_have_attribute("data-source", "heartbeats")
    expect(source).to_contain_text("heartbeat")
    check_monitoring_charts(page, len(cluster.clients))
    check_monitored_numbers(cluster)

    deadline = time.monotonic() + 180
    while cluster.jobs.get(job["id"])["state"] == "running" and time.monotonic() < deadline:
        time.sleep(0.2)
    done = cluster.jobs.get(job["id"])
    assert done["state"] == "succeeded", done["error"]
    refreshed(page, "monitoring")
    check_monitoring_charts(page, len(cluster.clients))
    page.screenshot(path=shots / "monitoring-1280x800.png")

    # (c) Models: the job's model, its versions and deployments, and the job's rounds.
    show(page, "models")
    check_models(page, cluster, done)
    page.screenshot(path=shots / "models-1280x800.png")
    page.screenshot(path=shots / "models-1280-full.png", full_page=True)

    # An agent stops: its device turns offline on the open page, without a reload.
    victim = max(cluster.clients)
    cluster.stop_agent(victim)
    show(page, "devices")
    row = page.locator(f'[data-testid="device-row"][data-device="{victim}"]')
    expect(row).to_have_attribute("data-state", "offline", timeout=SLOW)
    expect(row.locator('[data-col="state"]')).to_have_text("offline")
    for dev in cluster.clients:
        if dev != victim:
            expect(
                page.locator(f'[data-testid="device-row"][data-device="{dev}"]')
            ).to_have_attribute("data-state", "online")
    expect(page.get_by_test_id("devices-counts")).to_contain_text("2 online (0 busy), 1 offline")
    assert page.evaluate("window.fedsimTestNoReload") is True
    page.screenshot(path=shots / "devices-offline-1280x800.png")

    # Phone width: the same page, resized; nothing wider than the screen, charts redrawn.
    page.set_viewport_size(PHONE)
    for view in ("devices", "monitoring", "models"):
        show(page, view)
        page.wait_for_timeout(300)  # the charts' resize observers
        no_horizontal_overflow(page)
        for plot in page.locator(f'[data-testid="view-{view}"] .plot').all():
            width = plot.evaluate("(b) => b.querySelector('canvas')?.getBoundingClientRect().right")
            assert width is None or width <= PHONE["width"], f"{view}: a chart runs off the screen"
        page.screenshot(path=shots / f"{view}-390x844.png", full_page=view != "devices")
    assert page.evaluate("window.fedsimTestNoReload") is True


def check_monitored_numbers(cluster) -> None:
    """What the charts draw: every agent's heartbeats carry disk and network traffic as real,
    finite rates; GPU utilisation only where the agent trains on a GPU."""
    request = urllib.request.Request(
        f"{cluster.server.url}/api/v1/monitoring?window=300",
        headers={"Authorization": f"Bearer {cluster.viewer_token}"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        devices = json.load(response)["devices"]
    assert sorted(devices) == sorted(str(d) for d in cluster.clients)
    for series in devices.values():
        for field in TRAFFIC:
            numbers = [v for v in series[field] if v is not None]
            assert numbers and all(math.isfinite(v) and v >= 0 for v in numbers), (field, series)
        assert any(v is not None for v in series["gpu_util"]) == torch.cuda.is_available()


def check_monitoring_charts(page: Page, devices: int) -> None:
    # GPU utilisation: a line per device on a GPU host, else the panel says there is none.
    gpu = page.get_by_test_id("chart-gpu_util").locator(".plot")
    if torch.cuda.is_available():
        expect(gpu).to_have_attribute("data-series", str(devices))
    else:
        expect(gpu).to_have_attribute("data-gpus", "0")
        expect(gpu).to_have_text("No GPU on these devices.")
    for metric in ("cpu_busy", "memory_available", "bandwidth", "busy", *TRAFFIC):
        plot = page.get_by_test_id(f"chart-{metric}").locator(".plot")
        expect(plot).to_have_attribute("data-series", str(devices))
        assert int(plot.get_attribute("data-points")) > 0
        pixels = plot.evaluate(PIXELS_BY_SERIES)
        assert len(pixels) == devices
        if metric == "busy":
            # One lane per device: every device's line is visible.
            assert all(n > 0 for n in pixels), f"{metric}: a device's line is missing: {pixels}"
        else:
            # Equal values overlap, and the last device's line covers the others'.
            assert sum(pixels) > 0, f"{metric}: no line drawn: {pixels}"


def check_models(page: Page, cluster, job: dict) -> None:
    model = job["model"]
    card = page.locator(f'[data-testid="model-card"][data-model="{model}"]')
    expect(card).to_be_visible()
    expect(card.get_by_test_id("model-name")).to_have_text(model)

    # Versions: those the repository holds, newest first.
    versions = cluster.repository.list_versions(model)
    expect(card.get_by_test_id("model-versions-count")).to_have_text(str(len(versions)))
    table = card.get_by_test_id("versions-table")
    shown = table.evaluate(TABLE_TEXT)
    newest = sorted(versions, key=lambda v: -v.version)[: len(shown)]
    assert [r[0] for r in shown] == [f"v{v.version}" for v in newest]
    assert [r[3] for r in shown] == [js_fixed(v.metrics.get("accuracy"), 3) for v in newest]

    # Deployments: the coordinator deployed each round's model to every client.
    deployments = card.get_by_test_id("deployments-table")
    expect(deployments.locator("tbody tr").first).to_be_visible()
    states = deployments.locator("tbody tr").first.locator(".badge[data-device]")
    assert sorted(states.evaluate_all("(b) => b.map((x) => x.dataset.device)")) == sorted(
        str(d) for d in cluster.clients
    )

    # The job: its state, progress, per-round table and charts.
    section = card.locator(f'[data-testid="job"][data-job="{job["id"]}"]')
    expect(section.locator(".badge").first).to_have_text("succeeded")
    expect(section.get_by_test_id("job-progress")).to_have_text(
        f"round {job['round']} of {job['rounds_planned']}"
    )
    rounds = section.get_by_test_id("rounds-table").evaluate(TABLE_TEXT)
    assert len(rounds) == len(job["rounds"]) == 2
    for cells, row in zip(rounds, job["rounds"], strict=True):
        assert cells[0] == str(row["round"])
        assert cells[1] == js_fixed(row["accuracy"], 3)
        assert cells[2] == js_fixed(row["eval_loss"], 4)
        assert cells[4] == f"{row['completed']} of {row['selected']}"
        assert cells[6] == f"{js_fixed(row['total_s'], 2)} s"
    assert all(r["accuracy"] is not None for r in job["rounds"])  # fl_digits evaluates each round
    # Each chart has two value axes; each axis is titled (issue 15 found them bare).
    axes = {
        "job-quality-chart": "round | test accuracy | loss",
        "job-time-chart": "round | round time | participants",
    }
    for chart, series in (("job-quality-chart", 3), ("job-time-chart", 2)):
        plot = section.get_by_test_id(chart)
        expect(plot).to_have_attribute("data-axes", axes[chart])
        expect(plot).to_have_attribute("data-series", str(series))
        expect(plot).to_have_attribute("data-points", str(len(job["rounds"])))
        assert all(n > 0 for n in plot.evaluate(PIXELS_BY_SERIES)), f"{chart}: a line is missing"
