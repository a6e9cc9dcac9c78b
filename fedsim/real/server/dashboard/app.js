/* fedsim dashboard: the Data Visualizer of the seed paper's Fig. 3, (a) the device list,
 * (b) device monitoring and (c) model statistics, read from the server's REST API.
 *
 * Plain browser JavaScript, no build step. The token the operator enters (admin, or the
 * read-only viewer token: the page only reads) stays in this tab's sessionStorage and goes to
 * /api/v1 as a bearer token, as any API client's would. The
 * view on screen is refreshed every POLL_MS while the tab is visible. Text from the server only
 * ever reaches the page through textContent and setAttribute, never as markup.
 */
"use strict";

(() => {
  const API = "../api/v1"; // relative to /dashboard/, so a path prefix in front of it works too
  const TOKEN_KEY = "fedsim.dashboard.token";
  const POLL_MS = 2000;
  const VIEWS = ["devices", "monitoring", "models"];
  const PALETTE = [
    "#4e79a7",
    "#f28e2b",
    "#e15759",
    "#59a14f",
    "#b07aa1",
    "#76b7b2",
    "#edc948",
    "#9c755f",
    "#ff9da7",
    "#6b7280",
  ];
  const VERSIONS_SHOWN = 12;
  const CHIPS = 24; // device badges shown per deployment

  const state = {
    token: sessionStorage.getItem(TOKEN_KEY),
    view: "devices",
    timer: 0,
    generation: 0, // the latest refresh; an older one that finishes late does not reschedule
    groups: new Map(), // group id -> {id, description, devices, online}
    devices: new Map(), // device id -> DeviceRecord, every registered device
    window: { from: 0, to: 0 }, // the monitoring chart's x range, unix seconds
  };

  const $ = (id) => document.getElementById(id);

  /* ---------------------------------------------------------------- DOM and formatting */

  /** An element with attributes and children; strings become text nodes, never markup. */
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value == null || value === false) continue;
      if (name === "class") el.className = value;
      else el.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child == null || child === false) continue;
      el.append(child instanceof Node ? child : String(child));
    }
    return el;
  }

  /** Replace ``el``'s children; null and false children are left out. */
  function put(el, ...children) {
    el.replaceChildren(...children.flat().filter((c) => c != null && c !== false));
    return el;
  }

  const DASH = "\u2014";

  function fixed(value, digits) {
    return value == null || !Number.isFinite(Number(value)) ? DASH : Number(value).toFixed(digits);
  }

  function bytes(n) {
    if (n == null || !Number.isFinite(n)) return DASH;
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (Math.abs(n) >= 1024 && i < units.length - 1) {
      n /= 1024;
      i += 1;
    }
    return `${i === 0 ? n.toFixed(0) : n.toFixed(1)} ${units[i]}`;
  }

  /** A rate in bytes/s, shown in bits per second as links are rated. */
  function bitRate(bytesPerSecond) {
    if (bytesPerSecond == null || !Number.isFinite(bytesPerSecond)) return DASH;
    let v = bytesPerSecond * 8;
    const units = ["bit/s", "kbit/s", "Mbit/s", "Gbit/s", "Tbit/s"];
    let i = 0;
    while (v >= 1000 && i < units.length - 1) {
      v /= 1000;
      i += 1;
    }
    return `${v >= 100 ? v.toFixed(0) : v.toFixed(1)} ${units[i]}`;
  }

  /** A number with an SI prefix: 2.5e9 -> "2.5G". */
  function si(v) {
    const prefixes = ["", "k", "M", "G", "T", "P"];
    let i = 0;
    while (Math.abs(v) >= 1000 && i < prefixes.length - 1) {
      v /= 1000;
      i += 1;
    }
    return `${+v.toPrecision(3)}${prefixes[i]}`;
  }

  function ago(unixSeconds) {
    if (unixSeconds == null) return "never";
    const s = Math.max(0, Date.now() / 1000 - unixSeconds);
    if (s < 60) return `${Math.round(s)} s ago`;
    if (s < 3600) return `${Math.round(s / 60)} min ago`;
    if (s < 86400) return `${Math.round(s / 3600)} h ago`;
    return `${Math.round(s / 86400)} d ago`;
  }

  function when(unixSeconds) {
    return unixSeconds == null ? DASH : new Date(unixSeconds * 1000).toLocaleString();
  }

  function duration(seconds) {
    if (seconds == null || !Number.isFinite(seconds)) return DASH;
    if (seconds < 120) return `${seconds.toFixed(1)} s`;
    if (seconds < 7200) return `${Math.floor(seconds / 60)} min ${Math.round(seconds % 60)} s`;
    return `${(seconds / 3600).toFixed(1)} h`;
  }

  const plural = (n, noun) => `${n} ${noun}${n === 1 ? "" : "s"}`;

  function badge(text) {
    return h("span", { class: `badge ${text}`, "data-state": text }, text);
  }

  function facts(pairs) {
    return h(
      "dl",
      { class: "facts" },
      pairs.map(([term, value, testid]) =>
        h("div", null, h("dt", null, term), h("dd", { "data-testid": testid }, value)),
      ),
    );
  }

  function table(testid, columns, rows, { tall = false, label } = {}) {
    const head = h(
      "tr",
      null,
      columns.map(([name, cls]) => h("th", { scope: "col", class: cls }, name)),
    );
    const body = rows.map((cells) =>
      h(
        "tr",
        null,
        cells.map((cell, i) => h("td", { class: columns[i][1] }, cell)),
      ),
    );
    return h(
      "div",
      { class: tall ? "table-wrap tall" : "table-wrap", tabindex: 0, "aria-label": label },
      h(
        "table",
        { class: "grid", "data-testid": testid },
        h("thead", null, head),
        h("tbody", null, body),
      ),
    );
  }

  function deviceColor(id) {
    const order = [...state.devices.keys()].sort((a, b) => a - b);
    const i = order.indexOf(Number(id));
    return PALETTE[(i < 0 ? Number(id) : i) % PALETTE.length];
  }

  function deviceName(id) {
    const d = state.devices.get(Number(id));
    return d && d.description ? `${id} \u00b7 ${d.description}` : `device ${id}`;
  }

  /** Replace a <select>'s options (value, label), keeping the selection when it still exists. */
  function fillSelect(select, first, options) {
    const wanted = [first, ...options];
    const now = [...select.options].map((o) => `${o.value}\u0000${o.textContent}`);
    if (now.join("\u0001") !== wanted.map(([v, l]) => `${v}\u0000${l}`).join("\u0001")) {
      const kept = select.value;
      select.replaceChildren(...wanted.map(([v, l]) => h("option", { value: v }, l)));
      select.value = wanted.some(([v]) => v === kept) ? kept : "";
    }
  }

  function groupLabel(id) {
    const g = state.groups.get(Number(id));
    return g && g.description ? `${id} \u00b7 ${g.description}` : `group ${id}`;
  }

  /* ---------------------------------------------------------------- the API */

  class AuthError extends Error {}

  class ApiError extends Error {
    constructor(status, message) {
      super(`${status}: ${message}`);
      this.status = status;
    }
  }

  async function api(path, params) {
    const url = new URL(API + path, document.baseURI);
    for (const [k, v] of Object.entries(params || {})) {
      if (v !== "" && v != null) url.searchParams.set(k, String(v));
    }
    const response = await fetch(url, {
      headers: { Authorization: `Bearer ${state.token}`, Accept: "application/json" },
      cache: "no-store",
    });
    if (response.status === 401) {
      throw new AuthError(
        "The server did not accept this token (401). Enter the admin or viewer token.",
      );
    }
    if (response.status === 403) {
      throw new AuthError(
        "This token may not read the dashboard (403): it takes the admin or viewer token.",
      );
    }
    if (!response.ok) {
      let message = response.statusText;
      try {
        message = (await response.json()).error.message;
      } catch {
        // not a JSON error body: the status text says enough
      }
      throw new ApiError(response.status, message);
    }
    return response.json();
  }

  async function loadDirectory() {
    const [devices, groups] = await Promise.all([api("/devices"), api("/groups")]);
    state.devices = new Map(devices.devices.map((d) => [d.id, d]));
    state.groups = new Map(groups.groups.map((g) => [g.id, g]));
  }

  const groupOptions = () =>
    [...state.groups.keys()].sort((a, b) => a - b).map((id) => [String(id), groupLabel(id)]);

  /* ---------------------------------------------------------------- charts (uPlot) */

  const charts = new Map(); // key -> {plot, signature, box, height}

  const sizer = new ResizeObserver((entries) => {
    for (const entry of entries) {
      for (const chart of charts.values()) {
        if (chart.box !== entry.target) continue;
        const width = Math.floor(entry.contentRect.width);
        if (width > 0 && width !== chart.plot.width) {
          chart.plot.setSize({ width, height: chart.height });
        }
      }
    }
  });

  function chartHeight(base) {
    return window.matchMedia("(max-width: 640px)").matches ? Math.round(base * 0.8) : base;
  }

  /** Draw ``data`` in ``box``: a new plot when the series changed, else new data in the old. */
  function draw(key, box, signature, options, data, baseHeight) {
    let chart = charts.get(key);
    if (chart && (chart.signature !== signature || chart.box !== box || !box.isConnected)) {
      drop(key);
      chart = undefined;
    }
    const height = chartHeight(baseHeight);
    if (chart) {
      chart.plot.setData(data);
    } else {
      box.replaceChildren();
      const width = Math.max(Math.floor(box.clientWidth), 160);
      const plot = new uPlot({ width, height, legend: LEGEND, ...options(height) }, data, box);
      chart = { plot, signature, box, height };
      charts.set(key, chart);
      sizer.observe(box);
    }
    box.dataset.series = String(data.length - 1);
    box.dataset.points = String(data[0].length);
    box.dataset.axes = chart.plot.axes.map((axis) => axis.label ?? "").join(" | ");
  }

  // Legend markers filled with the line's colour, not only outlined.
  const LEGEND = {
    markers: {
      fill: (u, i) => {
        const stroke = u.series[i].stroke;
        return typeof stroke === "function" ? stroke(u, i) : stroke;
      },
    },
  };

  function drop(key) {
    const chart = charts.get(key);
    if (!chart) return;
    sizer.unobserve(chart.box);
    chart.plot.destroy();
    charts.delete(key);
  }

  function noData(key, box, text) {
    drop(key);
    box.replaceChildren(h("p", { class: "empty" }, text));
    box.dataset.series = "0";
    box.dataset.points = "0";
  }

  /** Forget plots whose boxes left the page (a job or model that is gone). */
  function sweepCharts() {
    for (const [key, chart] of charts) if (!chart.box.isConnected) drop(key);
  }

  const timeAxis = () => ({
    stroke: "#5d6677",
    grid: { stroke: "#eef0f4" },
    ticks: { stroke: "#dde1e8" },
  });
  const valueAxis = (format, extra) => ({
    stroke: "#5d6677",
    grid: { stroke: "#eef0f4" },
    ticks: { stroke: "#dde1e8" },
    size: 60,
    values: (u, splits) => splits.map((v) => (v == null ? "" : format(v))), // null: a skipped tick
    ...extra,
  });

  /* ---------------------------------------------------------------- (a) devices */

  /** A device-table cell; ``label`` heads it when the phone layout stacks the table. */
  function cell(col, label, cls, content, title) {
    return h("td", { class: cls, "data-col": col, "data-label": label, title }, content);
  }

  /** What became of the device's calibration request: its line for a title, and a short
   * element for the cell when the agent reported it could not measure (null otherwise). */
  function calibrationState(d) {
    const req = d.calibration_request;
    if (!req) return { line: null, failure: null };
    const asked =
      `measurement of ${req.model || "its default model"} asked for ` + ago(req.requested_at);
    if (req.failed_at == null) return { line: asked, failure: null };
    const failed = `calibration failed: ${req.reason}`;
    // The reason may run to a paragraph: the cell shows its start, the title all of it.
    const short = failed.length > 80 ? `${failed.slice(0, 79)}\u2026` : failed;
    return {
      line: `${failed}\n(${asked}, failed ${ago(req.failed_at)})`,
      failure: h(
        "span",
        { class: "calibration-failed", "data-testid": "calibration-failed" },
        short,
      ),
    };
  }

  /** The device's measured step time (its agent's calibration), and where it came from. */
  function measuredCell(d) {
    const m = d.measured;
    const { line: pending, failure } = calibrationState(d);
    if (!m || !m.steps) {
      const content = failure || (pending ? "asked for" : DASH);
      return cell("measured", "Measured step", null, content, pending);
    }
    const models = Object.keys(m.steps).sort();
    const lines = models.map((model) => {
      const st = m.steps[model];
      return (
        `${model}: ${(st.overhead_s * 1e3).toFixed(2)} ms + ` +
        `${(st.per_sample_s * 1e6).toFixed(1)} \u00b5s per sample`
      );
    });
    const first = m.steps[models[0]];
    const title = [
      `source: ${m.source}`,
      ...models.map(
        (model) =>
          `${model}: fit residual ${(m.steps[model].residual_s * 1e6).toFixed(1)} \u00b5s RMS ` +
          `at batch sizes ${(m.steps[model].batch_sizes || []).join(", ")}`,
      ),
      m.serialize_bytes_per_s ? `serialize ${bytes(m.serialize_bytes_per_s)}/s` : null,
      m.load_bytes_per_s ? `load ${bytes(m.load_bytes_per_s)}/s` : null,
      `measured ${when(d.measured_at)}`,
      pending,
    ].filter(Boolean);
    return cell(
      "measured",
      "Measured step",
      "num",
      h(
        "span",
        { "data-testid": "measured-step" },
        `${(first.overhead_s * 1e3).toFixed(2)} ms + ${(first.per_sample_s * 1e6).toFixed(1)} ` +
          `\u00b5s \u00d7 n`,
        h(
          "span",
          { class: "muted" },
          ` \u00b7 ${models.length === 1 ? models[0] : plural(models.length, "model")}`,
        ),
        failure ? " \u00b7 " : null,
        failure,
      ),
      [...lines, ...title].join("\n"),
    );
  }

  async function refreshDevices() {
    await loadDirectory();
    const select = $("devices-group");
    fillSelect(select, ["", "All groups"], groupOptions());
    const group = select.value === "" ? null : Number(select.value);
    const shown = [...state.devices.values()]
      .filter((d) => group === null || d.group === group)
      .sort((a, b) => a.id - b.id);

    const rows = shown.map((d) => {
      const g = state.groups.get(d.group);
      const hw = d.hardware || {};
      const res = d.resources || {};
      const measured = [res.bandwidth_up, res.bandwidth_down].filter((v) => Number.isFinite(v));
      const hardware = [
        hw.cpu_count != null ? `${hw.cpu_count} CPU${hw.cpu_count === 1 ? "" : "s"}` : null,
        hw.memory_bytes != null ? bytes(hw.memory_bytes) : null,
        hw.gpu ? hw.gpu : hw.cpu_count != null ? "no GPU" : null,
      ].filter(Boolean);
      const linkTitle = measured.length
        ? `up ${bitRate(res.bandwidth_up)}, down ${bitRate(res.bandwidth_down)}` +
          (Number.isFinite(res.rtt) ? `, rtt ${(res.rtt * 1000).toFixed(1)} ms` : "")
        : "not measured yet";
      return h(
        "tr",
        { "data-testid": "device-row", "data-device": d.id, "data-state": d.state },
        cell("id", "Device ID", "num", String(d.id)),
        cell("description", "Description", null, d.description || DASH),
        cell("group", "Group ID", "num", String(d.group)),
        cell("group-description", "Group description", null, (g && g.description) || DASH),
        cell(
          "id-in-group",
          "ID in group",
          "num",
          d.id_in_group == null ? DASH : String(d.id_in_group),
        ),
        cell("state", "State", null, badge(d.state)),
        cell("last-seen", "Last seen", null, ago(d.last_seen), when(d.last_seen)),
        cell(
          "hardware",
          "Hardware",
          null,
          hardware.join(" \u00b7 ") || DASH,
          d.profile ? `profile ${d.profile}` : null,
        ),
        cell(
          "bandwidth",
          "Bandwidth",
          "num",
          measured.length ? bitRate(Math.min(...measured)) : DASH,
          linkTitle,
        ),
        measuredCell(d),
      );
    });
    $("devices-rows").replaceChildren(...rows);
    $("devices-empty").hidden = rows.length > 0;

    const count = (...states) => shown.filter((d) => states.includes(d.state)).length;
    $("devices-counts").textContent =
      `${shown.length} device${shown.length === 1 ? "" : "s"}: ` +
      `${count("online", "busy")} online (${count("busy")} busy), ${count("offline")} offline` +
      (count("registered") ? `, ${count("registered")} registered` : "") +
      (count("removed") ? `, ${count("removed")} removed` : "");
  }

  /* ---------------------------------------------------------------- (b) monitoring */

  const METRICS = {
    cpu_busy: {
      value: (v) => v * 100,
      tick: (v) => `${v.toFixed(0)} %`,
      show: (v) => `${v.toFixed(1)} %`,
      range: () => [0, 100],
    },
    memory_available: {
      value: (v) => v / 2 ** 30,
      tick: (v) => `${+v.toFixed(2)}`,
      show: (v) => `${v.toFixed(2)} GiB`,
      range: (u, min, max) => [0, max > 0 ? max * 1.1 : 1],
    },
    // Measured rates span orders of magnitude (a loopback transfer, a shaped uplink): a log
    // scale keeps every device's line readable.
    bandwidth: {
      value: (v) => (v > 0 ? v * 8 : null),
      tick: (v) => si(v),
      show: (v) => bitRate(v / 8),
      distr: 3,
    },
    gpu_util: {
      value: (v) => v * 100,
      tick: (v) => `${v.toFixed(0)} %`,
      show: (v) => `${v.toFixed(1)} %`,
      range: () => [0, 100],
    },
  };
  // Traffic: linear from zero, as an idle disk or link reads 0 (a log scale could not show it).
  const traffic = (scale, show) => ({
    value: (v) => v * scale,
    tick: (v) => si(v),
    show,
    range: (u, min, max) => [0, max > 0 ? max * 1.1 : 1],
  });
  for (const metric of ["disk_read", "disk_write"])
    METRICS[metric] = traffic(1, (v) => `${bytes(v)}/s`);
  for (const metric of ["net_receive", "net_transmit"])
    METRICS[metric] = traffic(8, (v) => bitRate(v / 8));

  /** Whether device ``id`` has a GPU: its agent named one, or a GPU figure came for it. */
  function hasGpu(id, series) {
    const d = state.devices.get(Number(id));
    const named = Boolean(d && d.hardware && d.hardware.gpu);
    return named || (series.gpu_util || []).some((v) => v != null);
  }

  /** One aligned table for uPlot: the union of the devices' times, a column per device.
   * A silence longer than three sampling steps becomes an explicit null, which uPlot draws as
   * a gap; the undefined cells where another device was sampled are drawn through. */
  function aligned(devices, ids, metric, value, step) {
    const columns = ids.map((id, lane) => {
      const series = devices[id] || {};
      const t = series.t || [];
      const v = series[metric] || [];
      const diffs = t
        .slice(1)
        .map((x, i) => x - t[i])
        .sort((a, b) => a - b);
      const typical = Math.max(step || 0, diffs.length ? diffs[Math.floor(diffs.length / 2)] : 0);
      const points = [];
      for (let i = 0; i < t.length; i++) {
        if (i > 0 && typical > 0 && t[i] - t[i - 1] > 3 * typical)
          points.push([t[i - 1] + typical, null]);
        points.push([t[i], v[i] == null ? null : value(v[i], lane)]);
      }
      return points;
    });
    const xs = [...new Set(columns.flatMap((points) => points.map(([t]) => t)))].sort(
      (a, b) => a - b,
    );
    const index = new Map(xs.map((t, i) => [t, i]));
    const data = [xs];
    for (const points of columns) {
      const ys = Array.from({ length: xs.length }, () => undefined);
      for (const [t, y] of points) ys[index.get(t)] = y;
      data.push(ys);
    }
    return data;
  }

  /** Ticks of a log axis at the powers of ten in [min, max] (uPlot's own add each 2..9 x). */
  function decades(u, axisIdx, min, max) {
    const ticks = [];
    for (let k = Math.ceil(Math.log10(min)); k <= Math.floor(Math.log10(max)); k++)
      ticks.push(10 ** k);
    return ticks.length ? ticks : [min];
  }

  function timeChartOptions(metric, ids, labels) {
    const lanes = metric === "busy";
    const spec = METRICS[metric];
    const series = [
      { value: (u, v) => (v == null ? DASH : new Date(v * 1000).toLocaleTimeString()) },
    ];
    ids.forEach((id, lane) =>
      series.push({
        label: labels[lane],
        stroke: deviceColor(id),
        width: 1.75,
        points: { show: false },
        paths: lanes ? uPlot.paths.stepped({ align: 1 }) : undefined,
        value: lanes
          ? (u, v) => (v == null ? DASH : v - lane >= 0.35 ? "training" : "idle")
          : (u, v) => (v == null ? DASH : spec.show(v)),
      }),
    );
    const x = { time: true, range: () => [state.window.from, state.window.to] };
    if (lanes) {
      return () => ({
        series,
        scales: { x, y: { range: () => [-0.3, ids.length - 0.1] } },
        axes: [
          timeAxis(),
          valueAxis(
            (v) => {
              const id = ids[Math.round(v - 0.35)];
              return id == null ? "" : `dev ${id}`;
            },
            { splits: () => ids.map((_, i) => i + 0.35) },
          ),
        ],
      });
    }
    return () => ({
      series,
      scales: { x, y: spec.distr ? { distr: spec.distr, log: 10 } : { range: spec.range } },
      axes: [timeAxis(), valueAxis(spec.tick, spec.distr ? { splits: decades } : {})],
    });
  }

  async function refreshMonitoring() {
    await loadDirectory();
    const groupSelect = $("monitoring-group");
    fillSelect(groupSelect, ["", "All groups"], groupOptions());
    const group = groupSelect.value;
    const deviceSelect = $("monitoring-device");
    const candidates = [...state.devices.values()]
      .filter((d) => group === "" || d.group === Number(group))
      .sort((a, b) => a.id - b.id);
    fillSelect(
      deviceSelect,
      ["", "All devices"],
      candidates.map((d) => [String(d.id), deviceName(d.id)]),
    );
    const windowS = Number($("monitoring-window").value);

    const m = await api("/monitoring", { window: windowS, group, device: deviceSelect.value });
    const ids = Object.keys(m.devices || {})
      .map(Number)
      .sort((a, b) => a - b);
    // The whole window, or less where the history is shorter (a server that just started):
    // the charts span what there is rather than squeeze it against the right edge.
    const to = Date.now() / 1000;
    const first = Math.min(...ids.map((id) => (m.devices[id].t || [])[0] ?? Infinity));
    const from = Math.min(Math.max(to - (m.window_s || windowS), first), to - 10);
    state.window = { from, to };

    const source = $("monitoring-source");
    source.dataset.source = m.source;
    source.textContent =
      `Source: ${m.source === "prometheus" ? "Prometheus" : "the server's heartbeat history"}` +
      ` \u00b7 ${ids.length} device${ids.length === 1 ? "" : "s"}` +
      (from > to - (m.window_s || windowS) + 1
        ? ` \u00b7 since ${new Date(from * 1000).toLocaleTimeString()}`
        : "") +
      (m.step_s ? ` \u00b7 step ${+m.step_s.toFixed(1)} s` : "") +
      (m.warning ? ` \u00b7 ${m.warning}` : "");
    source.classList.toggle("warning", Boolean(m.warning));

    for (const box of document.querySelectorAll("#monitoring-charts .plot")) {
      const metric = box.dataset.metric;
      const key = `monitoring:${metric}`;
      if (!ids.length) {
        noData(key, box, "No devices to show in this window.");
        continue;
      }
      let labels = ids.map(deviceName);
      if (metric === "gpu_util") {
        const gpus = ids.map((id) => hasGpu(id, m.devices[id]));
        box.dataset.gpus = String(gpus.filter(Boolean).length);
        if (!gpus.some(Boolean)) {
          noData(key, box, "No GPU on these devices.");
          continue;
        }
        labels = labels.map((label, i) => (gpus[i] ? label : `${label} (no GPU)`));
      }
      const value = metric === "busy" ? (v, lane) => lane + 0.7 * v : METRICS[metric].value;
      const data = aligned(m.devices, ids, metric, value, m.step_s);
      const signature = ids.map((id, i) => `${id}:${labels[i]}`).join(",");
      draw(
        key,
        box,
        signature,
        timeChartOptions(metric, ids, labels),
        data,
        metric === "busy" ? 40 + 34 * ids.length : 210,
      );
    }
  }

  /* ---------------------------------------------------------------- (c) models */

  /** Several requests at once: each answer, or ``fallback`` where one fails with ``status``. */
  async function optional(promise, status, fallback) {
    try {
      return await promise;
    } catch (e) {
      if (e instanceof ApiError && e.status === status) return fallback;
      throw e;
    }
  }

  async function refreshModels() {
    const [models, jobs, deployments] = await Promise.all([
      api("/models"),
      optional(api("/jobs"), 501, null), // a server without a job manager runs no jobs
      api("/deployments"),
    ]);
    const names = models.models.map((m) => m.name);
    const details = await Promise.all(
      names.map((name) => {
        const path = `/models/${encodeURIComponent(name)}`;
        return Promise.all([api(path), api(`${path}/versions`)]);
      }),
    );

    const jobList = jobs ? jobs.jobs : [];
    const byModel = new Map(
      names.map((n, i) => [n, { info: details[i][0], versions: details[i][1].versions }]),
    );
    // A running job may not have stored its model yet; it still gets a card.
    for (const job of jobList) {
      const name = job.model || "";
      if (!byModel.has(name)) byModel.set(name, { info: null, versions: [] });
    }

    const list = $("models-list");
    const keep = new Set();
    for (const [name, entry] of [...byModel].sort(([a], [b]) => a.localeCompare(b))) {
      const key = `model:${name}`;
      keep.add(key);
      let card = [...list.children].find((c) => c.dataset.key === key);
      if (!card) {
        card = h("article", {
          class: "card",
          "data-key": key,
          "data-testid": "model-card",
          "data-model": name,
        });
        list.append(card);
      }
      renderModel(
        card,
        name,
        entry,
        jobList.filter((j) => (j.model || "") === name),
        deployments.deployments.filter((d) => d.model === name),
      );
    }
    for (const card of [...list.children]) if (!keep.has(card.dataset.key)) card.remove();
    sweepCharts();

    $("models-empty").hidden = byModel.size > 0;
    const running = jobList.filter((j) => j.state === "running").length;
    $("models-counts").textContent =
      `${names.length} model${names.length === 1 ? "" : "s"} \u00b7 ` +
      (jobs
        ? `${jobList.length} job${jobList.length === 1 ? "" : "s"} (${running} running)`
        : "this server runs no jobs") +
      ` \u00b7 ${plural(deployments.deployments.length, "deployment")}`;
  }

  /** A child of ``parent`` marked ``part``, created by ``make`` the first time. */
  function part(parent, name, make) {
    let el = parent.querySelector(`:scope > [data-part="${name}"]`);
    if (!el) {
      el = make();
      el.dataset.part = name;
      parent.append(el);
    }
    return el;
  }

  function renderModel(card, name, { info, versions }, jobs, deployments) {
    const stats = info ? info.stats : null;
    const head = part(card, "head", () => h("header"));
    put(
      head,
      h("h3", { "data-testid": "model-name" }, name || "jobs without a model"),
      info ? h("span", { class: "muted" }, `architecture ${info.architecture}`) : null,
      info ? null : h("span", { class: "muted" }, "not in the repository yet"),
    );
    const summary = part(card, "facts", () => h("div"));
    put(
      summary,
      stats
        ? facts([
            ["versions", String(stats.versions), "model-versions-count"],
            [
              "latest",
              stats.latest_version == null ? DASH : `v${stats.latest_version}`,
              "model-latest",
            ],
            ["latest size", bytes(stats.latest_size), "model-latest-size"],
            ["stored", bytes(stats.total_size), "model-total-size"],
            ["deployments", String(stats.deployments), "model-deployments-count"],
            ["registered", when(info.created_at), "model-created"],
          ])
        : null,
    );

    // Jobs first: they change while one watches; newest first.
    const jobsBox = part(card, "jobs", () => h("div"));
    const keep = new Set();
    for (const job of [...jobs].sort((a, b) => b.created_at - a.created_at)) {
      const key = `job:${job.id}`;
      keep.add(key);
      let section = [...jobsBox.children].find((c) => c.dataset.key === key);
      if (!section) {
        section = h("section", {
          class: "job",
          "data-key": key,
          "data-testid": "job",
          "data-job": job.id,
        });
        jobsBox.append(section);
      }
      renderJob(section, job);
    }
    for (const section of [...jobsBox.children])
      if (!keep.has(section.dataset.key)) section.remove();

    const versionsBox = part(card, "versions", () => h("div", { "data-testid": "model-versions" }));
    const newest = [...versions].sort((a, b) => b.version - a.version);
    put(
      versionsBox,
      h("h4", null, `Versions (${versions.length})`),
      versions.length
        ? table(
            "versions-table",
            [
              ["Version", "num"],
              ["Round", "num"],
              ["Size", "num"],
              ["Accuracy", "num"],
              ["Parent", "num"],
              ["SHA-256"],
              ["Created"],
            ],
            newest
              .slice(0, VERSIONS_SHOWN)
              .map((v) => [
                `v${v.version}`,
                v.round == null ? DASH : String(v.round),
                bytes(v.size),
                fixed(v.metrics ? v.metrics.accuracy : null, 3),
                v.parent == null ? DASH : `v${v.parent}`,
                h("code", { title: v.sha256 }, v.sha256.slice(0, 12)),
                when(v.created_at),
              ]),
            { label: `Versions of ${name}` },
          )
        : h("p", { class: "empty" }, "No versions stored."),
      versions.length > VERSIONS_SHOWN
        ? h("p", { class: "muted" }, `The ${VERSIONS_SHOWN} newest of ${versions.length} versions.`)
        : null,
    );

    const deploymentsBox = part(card, "deployments", () =>
      h("div", { "data-testid": "model-deployments" }),
    );
    put(
      deploymentsBox,
      h("h4", null, `Deployments (${deployments.length})`),
      deployments.length
        ? table(
            "deployments-table",
            [["ID", "num"], ["Version", "num"], ["Devices", "wrap"], ["Created"]],
            [...deployments]
              .sort((a, b) => b.id - a.id)
              .map((d) => [
                String(d.id),
                `v${d.version}`,
                deploymentDevices(d.devices),
                when(d.created_at),
              ]),
            { label: `Deployments of ${name}` },
          )
        : h("p", { class: "empty" }, "Not deployed."),
    );
  }

  /** A deployment's devices: counts per state, and a badge per device for the first CHIPS. */
  function deploymentDevices(devices) {
    const entries = Object.entries(devices).sort(([a], [b]) => Number(a) - Number(b));
    const counts = new Map();
    for (const [, s] of entries) counts.set(s, (counts.get(s) || 0) + 1);
    const summary = [...counts].map(([s, n]) => `${n} ${s}`).join(", ");
    return h(
      "div",
      null,
      h("div", { class: "muted" }, summary || "no devices"),
      h(
        "div",
        { class: "chips" },
        entries
          .slice(0, CHIPS)
          .map(([dev, s]) =>
            h("span", { class: `badge ${s}`, "data-device": dev, "data-state": s }, `${dev}: ${s}`),
          ),
        entries.length > CHIPS
          ? h("span", { class: "muted" }, `and ${entries.length - CHIPS} more`)
          : null,
      ),
    );
  }

  function renderJob(section, job) {
    const rounds = job.rounds || [];
    const planned = job.rounds_planned;
    const elapsed = (job.finished_at || Date.now() / 1000) - job.created_at;
    put(
      part(section, "head", () => h("header")),
      h("strong", null, `Job ${job.id}`),
      h("span", { class: "muted" }, job.kind),
      badge(job.state),
      h(
        "span",
        { "data-testid": "job-progress" },
        `round ${job.round}${planned != null ? ` of ${planned}` : ""}`,
      ),
      h(
        "span",
        { class: "muted", title: `started ${when(job.created_at)}` },
        `${duration(elapsed)}${job.finished_at ? "" : " so far"}`,
      ),
    );
    part(section, "error", () => h("p", { class: "login-message", role: "alert" })).textContent =
      job.error || "";

    const chartsBox = part(section, "charts", () =>
      h(
        "div",
        { class: "charts" },
        h(
          "figure",
          { class: "chart" },
          h("figcaption", null, "Accuracy and loss ", h("span", { class: "unit" }, "per round")),
          h("div", { class: "plot", "data-testid": "job-quality-chart" }),
        ),
        h(
          "figure",
          { class: "chart" },
          h(
            "figcaption",
            null,
            "Round time and participants ",
            h("span", { class: "unit" }, "per round"),
          ),
          h("div", { class: "plot", "data-testid": "job-time-chart" }),
        ),
      ),
    );
    const [qualityBox, timeBox] = chartsBox.querySelectorAll(".plot");
    const x = rounds.map((r) => r.round);
    const qKey = `${section.dataset.key}:quality`;
    const tKey = `${section.dataset.key}:time`;
    if (!rounds.length) {
      noData(qKey, qualityBox, "No round has finished yet.");
      noData(tKey, timeBox, "No round has finished yet.");
    } else {
      const col = (f) => rounds.map((r) => (r[f] == null ? null : r[f]));
      draw(
        qKey,
        qualityBox,
        "quality",
        qualityOptions,
        [x, col("accuracy"), col("eval_loss"), col("train_loss")],
        200,
      );
      draw(tKey, timeBox, "time", timeOptions, [x, col("total_s"), col("completed")], 200);
    }

    put(
      part(section, "rounds", () => h("div")),
      rounds.length
        ? table(
            "rounds-table",
            [
              ["Round", "num"],
              ["Accuracy", "num"],
              ["Eval loss", "num"],
              ["Train loss", "num"],
              ["Participants", "num"],
              ["Failed", "num"],
              ["Round time", "num"],
            ],
            rounds.map((r) => [
              String(r.round),
              fixed(r.accuracy, 3),
              fixed(r.eval_loss, 4),
              fixed(r.train_loss, 4),
              r.selected == null ? String(r.completed) : `${r.completed} of ${r.selected}`,
              String(r.failed ?? 0),
              r.total_s == null ? DASH : `${r.total_s.toFixed(2)} s`,
            ]),
            { tall: true, label: `Rounds of job ${job.id}` },
          )
        : null,
    );
  }

  const roundScale = {
    time: false,
    range: (u, min, max) => (min === max ? [min - 1, max + 1] : [min, max]),
  };
  const roundAxis = () => ({
    ...timeAxis(),
    incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000],
    values: (u, s) => s.map(String),
  });
  const dots = (color) => ({ show: true, size: 6, stroke: color, fill: color });

  function qualityOptions() {
    return {
      series: [
        { label: "round", value: (u, v) => (v == null ? DASH : String(v)) },
        {
          label: "accuracy",
          scale: "acc",
          stroke: PALETTE[3],
          width: 2,
          spanGaps: true,
          points: dots(PALETTE[3]),
          value: (u, v) => fixed(v, 3),
        },
        {
          label: "eval loss",
          scale: "loss",
          stroke: PALETTE[2],
          width: 1.75,
          spanGaps: true,
          points: dots(PALETTE[2]),
          value: (u, v) => fixed(v, 4),
        },
        {
          label: "train loss",
          scale: "loss",
          stroke: PALETTE[1],
          width: 1.5,
          dash: [6, 4],
          spanGaps: true,
          points: dots(PALETTE[1]),
          value: (u, v) => fixed(v, 4),
        },
      ],
      scales: {
        x: roundScale,
        acc: { range: () => [0, 1] },
        loss: { range: (u, min, max) => [0, max > 0 ? max * 1.1 : 1] },
      },
      axes: [
        { ...roundAxis(), label: "round" },
        valueAxis((v) => `${+v.toFixed(2)}`, { scale: "acc", size: 44, label: "test accuracy" }),
        valueAxis((v) => `${+v.toFixed(3)}`, {
          scale: "loss",
          label: "loss",
          side: 1,
          grid: { show: false },
          size: 52,
        }),
      ],
    };
  }

  function timeOptions() {
    return {
      series: [
        { label: "round", value: (u, v) => (v == null ? DASH : String(v)) },
        {
          label: "round time",
          scale: "s",
          stroke: PALETTE[0],
          width: 2,
          points: dots(PALETTE[0]),
          value: (u, v) => (v == null ? DASH : `${v.toFixed(2)} s`),
        },
        {
          label: "participants",
          scale: "n",
          stroke: PALETTE[4],
          width: 1.5,
          paths: uPlot.paths.stepped({ align: 1 }),
          points: dots(PALETTE[4]),
          value: (u, v) => (v == null ? DASH : String(v)),
        },
      ],
      scales: {
        x: roundScale,
        s: { range: (u, min, max) => [0, max > 0 ? max * 1.15 : 1] },
        n: { range: (u, min, max) => [0, Math.max(1, max) + 1] },
      },
      axes: [
        { ...roundAxis(), label: "round" },
        valueAxis((v) => `${+v.toFixed(2)} s`, { scale: "s", size: 56, label: "round time" }),
        valueAxis((v) => (Number.isInteger(v) ? String(v) : ""), {
          scale: "n",
          label: "participants",
          side: 1,
          grid: { show: false },
          size: 36,
        }),
      ],
    };
  }

  /* ---------------------------------------------------------------- refresh, routing, sign-in */

  const REFRESH = { devices: refreshDevices, monitoring: refreshMonitoring, models: refreshModels };

  function setStatus(text, error = false) {
    const status = $("status");
    status.textContent = text;
    status.classList.toggle("error", error);
  }

  async function refresh() {
    clearTimeout(state.timer);
    const generation = ++state.generation;
    if (!state.token) return;
    if (document.hidden) {
      setStatus("Paused while the tab is hidden");
      return;
    }
    const view = state.view;
    try {
      await REFRESH[view]();
      if (generation === state.generation) {
        setStatus(`Live \u00b7 updated ${new Date().toLocaleTimeString()}`);
        const status = $("status");
        status.dataset.view = view;
        status.dataset.updated = String(Date.now());
      }
    } catch (e) {
      if (e instanceof AuthError) {
        signIn(e.message);
        return;
      }
      console.error("fedsim dashboard: refreshing", view, e);
      if (generation === state.generation) setStatus(`Update failed: ${e.message}`, true);
    }
    if (generation === state.generation) state.timer = setTimeout(refresh, POLL_MS);
  }

  function route() {
    const wanted = location.hash.slice(1);
    if (VIEWS.includes(wanted)) state.view = wanted;
    else if (!wanted) history.replaceState(null, "", `#${state.view}`);
    for (const view of VIEWS) {
      $(`view-${view}`).hidden = view !== state.view;
      const tab = document.querySelector(`.tabs a[data-view="${view}"]`);
      if (view === state.view) tab.setAttribute("aria-current", "page");
      else tab.removeAttribute("aria-current");
    }
    document.title = `fedsim dashboard \u00b7 ${state.view}`;
  }

  function signIn(message) {
    clearTimeout(state.timer);
    state.generation += 1;
    state.token = null;
    sessionStorage.removeItem(TOKEN_KEY);
    setStatus("Signed out");
    $("login-message").textContent = message || "";
    const dialog = $("login");
    if (!dialog.open) dialog.showModal();
    $("login-token").focus();
  }

  function start() {
    route();
    window.addEventListener("hashchange", () => {
      route();
      refresh();
    });
    document.addEventListener("visibilitychange", refresh);
    for (const id of [
      "devices-group",
      "monitoring-window",
      "monitoring-group",
      "monitoring-device",
    ]) {
      $(id).addEventListener("change", refresh);
    }
    $("sign-out").addEventListener("click", () =>
      signIn("Signed out. Enter the admin or viewer token to continue."),
    );
    const dialog = $("login");
    dialog.addEventListener("cancel", (e) => e.preventDefault()); // nothing works without a token
    $("login-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const token = $("login-token").value.trim();
      if (!token) return;
      state.token = token;
      sessionStorage.setItem(TOKEN_KEY, token);
      $("login-token").value = "";
      $("login-message").textContent = "";
      dialog.close();
      refresh();
    });
    if (state.token) refresh();
    else signIn("");
  }

  if (typeof uPlot === "undefined") {
    console.error("fedsim dashboard: the vendored uPlot did not load");
  }
  start();
})();
