"""``report.md``: what was run, Table II, workload, breakdown, crossover, plots.

Tables are written by hand as GitHub-flavoured Markdown, so no extra package is needed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from fedsim.core.results import RunResult
from fedsim.report.tables import (
    SCENARIO_LABELS,
    crossover_frame,
    runs_frame,
    scenario_order,
    short_number,
    table_ii,
)

MB = 1e6  # decimal megabytes, as link bandwidths are decimal megabits
PLOT_CAPTIONS = {
    "tref_tnew": "t_ref and t_new: fedsim (mean ± std) beside the paper's Table II",
    "breakdown": "Where the time goes: mean transfer, compute, aggregation and waiting time",
    "timeline": "Timeline of one repetition, per device, both scenarios",
    "crossover": "Time-saving rate over link bandwidth and data per device",
}
# A run without reference figures plots fedsim's bars alone.
FEDSIM_ONLY_CAPTIONS = {**PLOT_CAPTIONS, "tref_tnew": "t_ref and t_new: fedsim (mean ± std)"}


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str) -> str:
    """A Markdown table; ``align`` holds one letter per column, ``l`` or ``r``."""
    rule = ["---:" if a == "r" else ":---" for a in align]
    lines = [header, rule, *rows]
    return "\n".join("| " + " | ".join(line) + " |" for line in lines)


def _span(first: float, last: float) -> str:
    return short_number(first) if first == last else f"{short_number(first)}–{short_number(last)}"


def _bandwidth_ranges(bandwidths: Sequence[float], grid: Sequence[float]) -> str:
    """Winning bandwidths as runs of neighbouring grid values, e.g. ``1–10, 100``."""
    position = {b: i for i, b in enumerate(grid)}
    runs: list[list[float]] = []
    for b in bandwidths:
        if runs and position[b] == position[runs[-1][-1]] + 1:
            runs[-1].append(b)
        else:
            runs.append([b])
    return ", ".join(_span(r[0], r[-1]) for r in runs)


def mode_text(summary: Mapping[str, Any]) -> str:
    """How the run ran: its mode, and where the simulator shared no link, that it did not (its
    times then leave out all contention, so a reader must not take them for the default's)."""
    text = f"{summary.get('mode', '?')} mode"
    if summary.get("network") == "independent":
        text += (
            " with no link shared (`mode.network=independent`: each transfer alone at its "
            "path's narrowest link)"
        )
    return text


def scaled_text(summary: Mapping[str, Any]) -> str:
    """What a measured run's scaled job changed (``summary["scaled"]``), or ``""`` if none."""
    scaled = summary.get("scaled")
    if not scaled:
        return ""
    (full_size, size), (full_samples, samples) = scaled["input_size"], scaled["samples_per_device"]
    return (
        f"a scaled job (workload.scale): {size}x{size} inputs instead of {full_size}x{full_size}, "
        f"{samples} samples per client instead of {full_samples}"
    )


def _what_was_run(summary: Mapping[str, Any]) -> str:
    workload = summary["workload"]
    clients = ", ".join(str(c) for c in summary["clients"])
    epochs = workload["epochs"]
    samples, batch, note = workload["samples_per_device"], workload["batch_size"], ""
    if summary.get("scaled"):
        # The run trained the scaled job; the summary's workload is the full one, which the
        # workload section and the crossover (the simulator's) describe.
        samples = summary["scaled"]["samples_per_device"][1]
        batch = min(batch, samples)  # a batch cannot hold more samples than there are
        note = (
            f" The {summary['mode']} run measured {scaled_text(summary)}, so its times "
            "compare with each other, not with the paper's; the workload and crossover "
            "sections describe the full job, as the simulator models it."
        )
    return (
        "## What was run\n\n"
        f"fedsim {summary['fedsim_version']} ran the experiment `{summary['experiment']}` in "
        f"{mode_text(summary)} on the topology `{summary['topology']}` (server: device "
        f"{summary['server']}; clients: devices {clients}), {summary['repetitions']} "
        f"repetitions with seed {summary['seed']}. Each repetition times two scenarios. "
        "**Cloud-based** (t_ref): every client uploads its "
        f"{samples} local samples of {workload['dataset']['name']} to "
        f"the server, which trains {workload['model']['name']} on all of them. "
        "**Client-based** (t_new): one federated round: the server deploys the model, each "
        f"client trains on its own samples ({epochs} epoch{'s' if epochs != 1 else ''}, batch "
        f"size {batch}), uploads its update, and the server aggregates. The "
        "time-saving rate is the paper's formula (1), Δt = (1/n) Σ (t_ref − t_new) / t_ref "
        "over the n repetitions: positive when client-based training is the faster." + note
    )


_TABLE_II_NAMES = {
    "t_ref": "t_ref, cloud-based [s]",
    "t_new": "t_new, client-based [s]",
    "time-saving rate": "time-saving rate Δt [%]",
}


def _table_ii_table(table: pd.DataFrame, stds: Mapping[str, float]) -> str:
    """Table II in Markdown: fedsim's column, with the paper's and the differences if given."""
    with_paper = "paper" in table
    rows = []
    for quantity, row in table.iterrows():
        seconds = row["unit"] == "s"
        fedsim = (
            f"{row['fedsim']:.2f} ± {stds[quantity]:.2f}" if seconds else f"{row['fedsim']:.1f}"
        )
        if not with_paper:
            rows.append([_TABLE_II_NAMES[quantity], fedsim])
        elif seconds:
            rows.append(
                [
                    _TABLE_II_NAMES[quantity],
                    f"{row['paper']:.2f}",
                    fedsim,
                    f"{row['difference']:+.2f} s",
                    f"{100 * row['relative difference']:+.1f} %",
                ]
            )
        else:
            rows.append(
                [
                    _TABLE_II_NAMES[quantity],
                    f"{row['paper']:.1f}",
                    fedsim,
                    f"{row['difference']:+.1f} pp",
                    "",
                ]
            )
    if not with_paper:
        return markdown_table(["", "fedsim (mean ± std)"], rows, "lr")
    header = ["", "paper", "fedsim (mean ± std)", "difference", "relative difference"]
    return markdown_table(header, rows, "lrrrr")


def _paper_comparison(fedsim_rate: float, paper: Mapping[str, Any] | None) -> tuple[str, str]:
    """The clause that compares fedsim's rate with the paper's, and the note on the paper.

    Both are empty when the run has no reference figures.
    """
    if paper is None:
        return "", ""
    paper_rate = float(paper["time_saving_rate"])
    agreement = (
        ", the same sign as the paper's"
        if (fedsim_rate > 0) == (paper_rate > 0)
        else ", the opposite sign to the paper's"
    )
    if paper_rate >= 0:
        return agreement, ""
    note = (
        '\n\nNote on the paper: its text speaks of "a speed improvement of about 11%", '
        "but its Table II has t_new > t_ref, which formula (1) turns into a negative rate "
        f"({100 * paper_rate:.1f} %): in the paper's measurement client-based training was "
        "the slower one."
    )
    return agreement, note


def _table_ii_section(summary: Mapping[str, Any]) -> str:
    t_ref, t_new = summary["t_ref_s"], summary["t_new_s"]
    table = _table_ii_table(table_ii(dict(summary)), {"t_ref": t_ref["std"], "t_new": t_new["std"]})
    paper = summary.get("paper")
    source = str(paper.get("source") or "").strip().rstrip(".") if paper is not None else ""
    fedsim_rate = float(summary["time_saving_rate"])
    verdict = "faster" if fedsim_rate > 0 else "slower"
    agreement, note = _paper_comparison(fedsim_rate, paper)
    return (
        f"## Table II: average training time over {summary['repetitions']} repetitions\n\n"
        + table
        + "\n\n"
        + (f"Paper figures: {source}.\n\n" if source else "")
        + f"fedsim's range over the repetitions: t_ref {t_ref['min']:.2f}–{t_ref['max']:.2f} s, "
        f"t_new {t_new['min']:.2f}–{t_new['max']:.2f} s. In fedsim, client-based training is "
        f"{verdict} than cloud-based by {abs(100 * fedsim_rate):.1f} % on average{agreement}. "
        "Δt averages the per-repetition ratios, so it differs slightly from the ratio of the "
        "mean times." + note
    )


def _workload_section(workload: Mapping[str, Any]) -> str:
    model, dataset = workload["model"], workload["dataset"]
    shard_mb = workload["samples_per_device"] * dataset["bytes_per_sample"] / MB
    rows = [
        ["model", f"{model['name']}, input {model['input_size']}², {model['num_classes']} classes"],
        ["parameters", f"{model['parameters']:,}"],
        ["buffers (BatchNorm statistics)", f"{model['buffers']:,}"],
        ["state values shipped (parameters + buffers)", f"{model['state_values']:,}"],
        ["model state, float32 [MB]", f"{model['state_bytes'] / MB:.1f}"],
        ["forward [GFLOPs per sample]", f"{model['forward_flops'] / 1e9:.1f}"],
        ["training step [GFLOPs per sample]", f"{model['train_flops'] / 1e9:.1f}"],
        ["data set", f"{dataset['name']}, {dataset['samples']:,} samples"],
        ["data set size [GB]", f"{dataset['total_bytes'] / 1e9:.1f}"],
        ["bytes per sample [kB]", f"{dataset['bytes_per_sample'] / 1e3:.1f}"],
        ["samples per device", f"{workload['samples_per_device']:,}"],
        ["data per device [MB]", f"{shard_mb:.2f}"],
        ["batch size, epochs", f"{workload['batch_size']}, {workload['epochs']}"],
    ]
    return (
        "## Workload\n\n"
        "Model size and cost are measured from the PyTorch model, not typed in; one "
        "multiply-add counts as two FLOPs. MB and GB are decimal (10⁶, 10⁹ bytes).\n\n"
        + markdown_table(["quantity", "value"], rows, "lr")
    )


def _breakdown_section(runs: pd.DataFrame) -> str:
    order = scenario_order(runs["scenario"])
    grouped = runs.groupby("scenario")
    means = grouped.mean(numeric_only=True)
    stds = grouped["total_s"].std(ddof=0).fillna(0.0)
    rows = [
        [
            SCENARIO_LABELS.get(s, s),
            f"{means.loc[s, 'total_s']:.2f} ± {stds[s]:.2f}",
            f"{means.loc[s, 'transfer_s']:.2f}",
            f"{means.loc[s, 'compute_s']:.2f}",
            f"{means.loc[s, 'aggregation_s']:.2f}",
            f"{means.loc[s, 'waiting_s']:.2f}",
            f"{means.loc[s, 'bytes_moved'] / MB:.1f}",
        ]
        for s in order
    ]
    header = [
        "scenario",
        "total [s]",
        "transfer [s]",
        "compute [s]",
        "aggregation [s]",
        "waiting [s]",
        "data moved [MB]",
    ]
    return (
        "## Time breakdown per scenario\n\n"
        f"Means over {runs['repetition'].nunique()} repetitions of the time on each scenario's "
        "critical path; transfer + compute + aggregation + waiting = total. Waiting is time on "
        "the critical path when none of its steps ran (queueing, stragglers).\n\n"
        + markdown_table(header, rows, "lrrrrrr")
    )


def assumptions_section(assumptions: Sequence[str]) -> str:
    if not assumptions:
        return "## Assumptions\n\nThe run recorded no assumptions."
    return "## Assumptions\n\n" + "\n".join(f"- {a}" for a in assumptions)


def _crossover_rows(
    crossover: pd.DataFrame, bandwidths: Sequence[float], bytes_per_sample: float
) -> str:
    """A table with, per data size of the grid, the bandwidths at which client-based wins."""
    header = [
        "data per device [samples]",
        "data per device [MB]",
        "client-based wins at [Mb/s]",
        "Δt over the row [%]",
    ]
    rows = []
    for samples, row in crossover.groupby("samples_per_device"):
        winning = sorted(row.loc[row["time_saving_rate"] > 0, "bandwidth_mbps"])
        rate = 100.0 * row["time_saving_rate"]
        rows.append(
            [
                short_number(samples),
                f"{samples * bytes_per_sample / MB:.2f}",
                _bandwidth_ranges(winning, bandwidths) if winning else "nowhere",
                f"{rate.min():,.1f} to {rate.max():,.1f}",
            ]
        )
    return markdown_table(header, rows, "r" * len(header))


def _crossover_section(
    crossover: pd.DataFrame,
    link: str,
    current_samples: int,
    bytes_per_sample: float,
    summary: Mapping[str, Any],
) -> str:
    heading = "## Where client-based training wins\n\n"
    if crossover.empty:
        return heading + "No crossover grid was computed for this run."
    bandwidths = sorted(crossover["bandwidth_mbps"].unique())
    samples = sorted(crossover["samples_per_device"].unique())
    rates = 100.0 * crossover["time_saving_rate"]
    wins = int((crossover["time_saving_rate"] > 0).sum())
    link_name = f"`{link}`" if link else "the swept link"
    text = (
        f"{heading}The grid sweeps the bandwidth of {link_name} over "
        f"{_span(bandwidths[0], bandwidths[-1])} Mb/s ({len(bandwidths)} values) and the data "
        f"per device over {_span(samples[0], samples[-1])} samples ({len(samples)} values), "
        "and compares the expected times of both scenarios at each of its "
        f"{len(crossover)} points. Client-based training wins (Δt > 0) at {wins} of them."
    )
    if wins == 0:
        best = crossover.loc[crossover["time_saving_rate"].idxmax()]
        text += (
            " It does not win anywhere in this grid: Δt ranges from "
            f"{rates.min():,.1f} % to {rates.max():,.1f} %, closest to a win at "
            f"{short_number(best['bandwidth_mbps'])} Mb/s with "
            f"{short_number(best['samples_per_device'])} samples per device. Whether it wins "
            "outside the grid, this run does not say."
        )
    elif wins == len(crossover):
        text += (
            f" It wins everywhere in this grid: Δt ranges from {rates.min():,.1f} % to "
            f"{rates.max():,.1f} %."
        )
    else:
        text += "\n\n" + _crossover_rows(crossover, bandwidths, bytes_per_sample)
    on_link = (
        f" and {short_number(summary['crossover_bandwidth_mbps'])} Mb/s on {link_name}"
        if "crossover_bandwidth_mbps" in summary
        else ""
    )
    text += (
        f"\n\nThe configuration that was run has {current_samples} samples per device{on_link}; "
        f"its measured Δt is {100 * float(summary['time_saving_rate']):.1f} %."
    )
    paper = summary.get("paper")
    if paper is not None:
        target = 100 * float(paper["time_saving_rate"])
        text += (
            f" The crossover plot's dashed line marks where Δt equals the paper's {target:.1f} %."
            if rates.min() <= target <= rates.max()
            else f" The grid never reaches the paper's Δt of {target:.1f} %."
        )
    return text


_IMPLIED_NAMES = {
    "samples_per_device": "data per device",
    "path_bandwidth_mbps": "path bandwidth",
    "server_gpus": "server GPUs",
    "efficiency": "GPU efficiency",
}


def _implied_value(quantity: str, value: float) -> str:
    if quantity == "path_bandwidth_mbps":
        return f"{value:,.0f} Mb/s"
    if quantity == "efficiency":
        return f"{value:.2f}"
    if quantity == "samples_per_device":
        return f"{value:,.0f} samples"
    return f"{value:.0f}"


def _implied_span(quantity: str, values: Sequence[float]) -> str:
    low, high = min(values), max(values)
    if _implied_value(quantity, low) == _implied_value(quantity, high):
        return _implied_value(quantity, low)
    unit = {"path_bandwidth_mbps": " Mb/s", "samples_per_device": " samples"}.get(quantity, "")
    return f"{_implied_value(quantity, low).removesuffix(unit)}–{_implied_value(quantity, high)}"


def _implied_times(fit: Mapping[str, Any], unit: str = "") -> list[str]:
    """t_ref and t_new with their relative errors; -0.0 reads as +0.0."""
    return [
        f"{fit[f't_{x}_s']:.2f}{unit} ({round(100 * fit[f'error_{x}'], 1) or 0.0:+.1f} %)"
        for x in ("ref", "new")
    ]


def _implied_names(quantities: Sequence[str]) -> str:
    names = [_IMPLIED_NAMES[q] for q in quantities]
    if len(names) <= 1:
        return "".join(names) or "none"
    return ", ".join(names[:-1]) + " and " + names[-1]


def _implied_section(implied: Mapping[str, Any]) -> str:
    """What Table II implies: the fit of the unstated quantities, labelled as implied values."""
    stated, bounds = implied["stated"], implied["bounds"]
    target, tol = implied["target"], 100 * float(implied["tolerance"])
    default = implied["stated_fit"]
    links = ", ".join(f"`{name}`" for name in implied["edge_links"])
    text = (
        "## What Table II implies\n\n"
        "The paper does not state four quantities that fedsim has to assume. fedsim's stated "
        f"defaults are {stated['samples_per_device']:,} samples per device, "
        f"{stated['path_bandwidth_mbps']:,.0f} Mb/s on the clients' links to the backbone "
        f"({links}), {stated['server_gpus']} server GPUs training data-parallel and a "
        f"sustained GPU efficiency of {stated['efficiency']:g}; without jitter they give "
        f"t_ref {default['t_ref_s']:.2f} s and t_new {default['t_new_s']:.2f} s. Here the "
        "simulator, without jitter, is fitted to both of the paper's times "
        f"({target['t_ref_s']:.2f} s and {target['t_new_s']:.2f} s) over those four "
        "quantities. The values below are **implied by Table II**: they change neither the "
        "defaults nor the prediction above. A combination reproduces Table II when both times "
        f"are within {tol:g} % of the paper's.\n\n"
        "The efficiency is one value for the server's GPUs and the clients' (each client keeps "
        "its stated ratio to the server): the server's efficiency and its GPU count enter t_ref "
        "only as a product, so separate efficiencies could not be told apart from the GPU count. "
        "Two times cannot pin down four quantities: the combinations are members of a family, "
        "not measurements. Search bounds: "
        f"{bounds['samples_per_device'][0]}–{bounds['samples_per_device'][1]:,} samples per "
        f"device, {bounds['path_bandwidth_mbps'][0]:,.0f}–"
        f"{bounds['path_bandwidth_mbps'][1]:,.0f} Mb/s, {bounds['server_gpus'][0]}–"
        f"{bounds['server_gpus'][1]} GPUs, efficiency {bounds['efficiency'][0]:g}–"
        f"{bounds['efficiency'][1]:g}; {implied['evaluations']} simulations of both scenarios."
    )
    header = [
        "kept at stated value",
        "data per device [samples]",
        "path bandwidth [Mb/s]",
        "server GPUs",
        "GPU efficiency",
        "t_ref [s] (error)",
        "t_new [s] (error)",
        "contradicts",
    ]

    def row(fit: Mapping[str, Any]) -> list[str]:
        return [
            ", ".join(_IMPLIED_NAMES[q] for q in fit["held"]) or "–",
            f"{fit['samples_per_device']:,}",
            f"{fit['path_bandwidth_mbps']:,.0f}",
            str(fit["server_gpus"]),
            f"{fit['efficiency']:.2f}",
            *_implied_times(fit),
            ", ".join(_IMPLIED_NAMES[q] for q in fit["contradicts"]) or "nothing",
        ]

    within = implied["within"]
    if within:
        text += (
            f"\n\n### Combinations that reproduce both times within {tol:g} %\n\n"
            + markdown_table(header, [row(f) for f in within], "lrrrrrrl")
            + "\n\n"
            + _implied_contradictions(within, stated)
        )
    else:
        text += f"\n\nNo combination within the bounds reproduces both times within {tol:g} %."
    per_gpus = implied["per_gpus"]
    text += "\n\n### Best fit for each number of server GPUs\n\n" + markdown_table(
        ["server GPUs", *header[1:2], header[2], header[4], *header[5:7], "reproduces"],
        [
            [
                str(f["server_gpus"]),
                f"{f['samples_per_device']:,}",
                f"{f['path_bandwidth_mbps']:,.0f}",
                f"{f['efficiency']:.2f}",
                *_implied_times(f),
                "yes" if f["within_tolerance"] else "no",
            ]
            for f in per_gpus
        ],
        "rrrrrrl",
    )
    at_bound = [
        f
        for f in per_gpus
        if not f["within_tolerance"]
        and (
            f["path_bandwidth_mbps"] >= bounds["path_bandwidth_mbps"][1] * (1 - 1e-9)
            or f["efficiency"] >= bounds["efficiency"][1]
        )
    ]
    if at_bound:
        gpus = _implied_span("server_gpus", [f["server_gpus"] for f in at_bound])
        text += (
            f"\n\nWith {gpus} GPUs the best fit sits at the highest bandwidth or efficiency "
            "searched and still misses the paper's times."
        )
    return text + "\n\n" + _implied_under_defaults(implied)


def _implied_contradictions(within: Sequence[Mapping[str, Any]], stated: Mapping[str, Any]) -> str:
    """A sentence per stated default that the reproducing combinations contradict."""
    sentences = []
    for q, name in _IMPLIED_NAMES.items():
        against = [f for f in within if q in f["contradicts"]]
        if not against:
            continue
        implied_values = _implied_span(q, [float(f[q]) for f in against])
        default = _implied_value(q, float(stated[q]))
        if len(against) == len(within):
            sentences.append(
                f"- **{name}**: every combination that reproduces Table II implies "
                f"{implied_values}, against the stated {default}."
            )
        else:
            sentences.append(
                f"- **{name}**: {len(within) - len(against)} of the {len(within)} combinations "
                f"{'keeps' if len(within) - len(against) == 1 else 'keep'} the stated "
                f"{default}; the others imply {implied_values}."
            )
    return "\n".join(sentences)


def _implied_under_defaults(implied: Mapping[str, Any]) -> str:
    """The closest fit on the stated hardware, and what every reproducing combination changes."""
    hardware = ["server_gpus", "efficiency"]
    closest = next(f for f in implied["holding"] if f["held"] == hardware)
    stated = implied["stated"]
    on = (
        f"With the stated hardware ({stated['server_gpus']} server GPUs, efficiency "
        f"{stated['efficiency']:g}), "
    )
    if closest["within_tolerance"]:
        text = (
            on + f"{closest['samples_per_device']:,} samples per device and "
            f"{closest['path_bandwidth_mbps']:,.0f} Mb/s reproduce Table II."
        )
    else:
        t_ref, t_new = _implied_times(closest, " s")
        text = (
            on + "no data per device and path bandwidth reproduce Table II. The closest, "
            f"{closest['samples_per_device']:,} samples per device at "
            f"{closest['path_bandwidth_mbps']:,.0f} Mb/s, gives t_ref {t_ref} and "
            f"t_new {t_new}."
        )
    within = implied["within"]
    if within:
        always = [q for q in _IMPLIED_NAMES if all(q in f["contradicts"] for f in within)]
        sometimes = [
            q
            for q in _IMPLIED_NAMES
            if q not in always and any(q in f["contradicts"] for f in within)
        ]
        text += (
            " What would have to differ from the stated defaults: "
            f"{_implied_names(always)} in every combination that reproduces it"
            + (f", and {_implied_names(sometimes)} in some of them." if sometimes else ".")
        )
    return text


def plots_section(plots: Mapping[str, Path], captions: Mapping[str, str]) -> str:
    if not plots:
        return "## Plots\n\nNo plots were written (`report.plots=false`)."
    blocks = [
        f"### {captions.get(name, name)}\n\n![{name}](plots/{path.name})"
        for name, path in plots.items()
    ]
    return "## Plots\n\n" + "\n\n".join(blocks)


def render_report(result: RunResult, plots: Mapping[str, Path]) -> str:
    """The text of ``report.md``; ``plots`` maps plot names to files inside ``plots/``."""
    summary = result.summary
    workload = summary["workload"]
    sections = [
        f"# fedsim report: {summary['experiment']}\n\n"
        "Cloud-based against client-based training time, the comparison of the seed paper's "
        "Table II.",
        _what_was_run(summary),
        _table_ii_section(summary),
        _workload_section(workload),
        _breakdown_section(runs_frame(result.rows)),
        assumptions_section(result.assumptions),
        _crossover_section(
            crossover_frame(result.crossover),
            result.crossover_link,
            workload["samples_per_device"],
            workload["dataset"]["bytes_per_sample"],
            summary,
        ),
        plots_section(plots, PLOT_CAPTIONS if "paper" in summary else FEDSIM_ONLY_CAPTIONS),
    ]
    if "implied" in summary:
        sections.insert(-1, _implied_section(summary["implied"]))
    return "\n\n".join(sections) + "\n"
