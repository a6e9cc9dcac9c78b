"""``report.md`` of a federated run: what was run, results, rounds, failures, assumptions, plots.

Also the small formatters that the console summary and the sweep report share with it.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from fedsim.core.results import RoundRow, RunResult
from fedsim.report.markdown import (
    assumptions_section,
    markdown_table,
    mode_text,
    plots_section,
)
from fedsim.report.tables import number_of_seconds, run_time

PLOT_CAPTIONS = {
    "accuracy_time": "Test accuracy and training loss over simulated time",
    "round_breakdown": "Where each round's time goes: transfer, compute, aggregation, waiting",
    "timeline": "Timeline of the run, per device",
    "label_distribution": "Training samples per class on each client (the non-IID split)",
}
ROUNDS_TABLE_MAX = 40  # more rounds: the table shows every k-th one
FAILED_ROWS_MAX = 10  # rounds not aggregated that a sampled table adds
NOT_AGGREGATED = "✗"
NO_DEVICE = -1  # the coordinator's device for "no device was available"
DEVICES_LISTED_MAX = 8  # more devices failing for one reason: a count


def percent(value: float | None) -> str:
    """An accuracy (a fraction) in percent, or ``—`` when there is none."""
    return "—" if value is None or math.isnan(value) else f"{100 * value:.1f} %"


def rounds_text(count: Any) -> str:
    """``1 round``, ``5 rounds``; ``? rounds`` when the count is unknown."""
    return f"{count} round" if count == 1 else f"{count} rounds"


def seconds(value: float | None) -> str:
    """Seconds, with minutes or hours beside them once they help: ``400.2 s (6.7 min)``."""
    if value is None or math.isnan(value):
        return "—"
    text = f"{number_of_seconds(value)} s"
    if value >= 2 * 3600:
        return f"{text} ({value / 3600:.1f} h)"
    if value >= 120:
        return f"{text} ({value / 60:.1f} min)"
    return text


def strategy_text(strategy: Any) -> str:
    """``fedavg (clip_norm=null)`` from the summary's strategy, a name or a dict with ``name``."""
    if not isinstance(strategy, Mapping):
        return str(strategy)
    params = {k: v for k, v in strategy.items() if k != "name"}
    name = str(strategy.get("name", "?"))
    return f"{name} ({parameters_text(params)})" if params else name


def parameters_text(params: Mapping[str, Any]) -> str:
    """``k=v`` pairs as in the configs: ``null`` for None, numbers in their short form."""

    def value(v: Any) -> str:
        if v is None:
            return "null"
        if isinstance(v, float):
            return f"{v:g}"
        return str(v)

    return ", ".join(f"{k}={value(v)}" for k, v in params.items())


def time_to_target_text(summary: Mapping[str, Any]) -> str:
    """When the target accuracy was first reached, that it was not, or ``—`` with no target."""
    target = summary.get("target_accuracy")
    if target is None:
        return "—"
    reached = summary.get("time_to_target_s")
    if reached is None:
        return f"not reached ({percent(target)} in {rounds_text(summary.get('rounds', '?'))})"
    where = summary.get("round_to_target")
    return f"{seconds(reached)} ({percent(target)} in round {where})"


def ranges(values: Iterable[int]) -> str:
    """Sorted integers as runs of three or more: ``1, 3–5, 8, 9``."""
    runs: list[list[int]] = []
    for v in sorted(set(values)):
        if runs and v == runs[-1][-1] + 1:
            runs[-1].append(v)
        else:
            runs.append([v])
    return ", ".join(f"{r[0]}–{r[-1]}" if len(r) > 2 else ", ".join(map(str, r)) for r in runs)


def _what_was_run(summary: Mapping[str, Any]) -> str:
    workload = summary.get("workload", {})
    model, dataset = workload.get("model", {}), workload.get("dataset", {})
    # As runs of ids: a generated fleet's 100,000 clients one by one were most of the report.
    clients = ranges(summary.get("clients", []))
    rounds = summary.get("rounds", "?")
    mode = summary.get("fl_mode", "sync")
    unit = "aggregations (asynchronous, FedBuff-style)" if mode == "async" else "rounds"
    text = (
        f"fedsim {summary.get('fedsim_version', '?')} ran the experiment "
        f"`{summary.get('experiment', '?')}` in {mode_text(summary)} on the topology "
        f"`{summary.get('topology', '?')}` (clients: devices {clients}) with seed "
        f"{summary.get('seed', '?')}: {rounds} {unit} of "
        f"**{strategy_text(summary.get('strategy', '?'))}**, client selection "
        f"`{summary.get('selection', '?')}`."
    )
    if model:
        epochs = workload.get("local_epochs", "?")
        size = (
            f" ({model['parameters']:,} parameters, {model['state_bytes'] / 1e3:,.1f} kB of state)"
            if "parameters" in model and "state_bytes" in model
            else ""
        )
        text += (
            f" Each selected client trains {model.get('name', '?')}{size} on its shard of "
            f"{dataset.get('name', 'its data')} for {epochs} local epoch"
            f"{'s' if epochs != 1 else ''} with batch size {workload.get('batch_size', '?')}"
        )
        training = summary.get("training")
        text += (
            ", for real with PyTorch, while the simulator accounts the time."
            if training == "real"
            else "; only its time is modelled, no model is trained."
            if training == "modelled"
            else "."
        )
    partition = summary.get("partition") or {}
    if partition.get("kind") == "dirichlet":
        alpha = partition["alpha"]
        text += f" The data is split across clients by a Dirichlet draw, α = {alpha:g}."
    elif partition.get("kind"):
        text += f" The data split across clients is {partition['kind']}."
    faults = {k: v for k, v in (summary.get("faults") or {}).items() if v}
    text += (
        f" Faults injected: {parameters_text(faults)}." if faults else " No faults were injected."
    )
    return "## What was run\n\n" + text


def _results_section(summary: Mapping[str, Any]) -> str:
    clock, elapsed = run_time(summary)
    rows = [
        ["final accuracy", percent(summary.get("final_accuracy"))],
        ["best accuracy", percent(summary.get("best_accuracy"))],
        ["target accuracy", percent(summary.get("target_accuracy"))],
        [f"time to target ({clock})", time_to_target_text(summary)],
        [f"{clock} time", seconds(elapsed)],
        [
            "rounds aggregated / failed",
            f"{summary.get('rounds_aggregated', '?')} / {summary.get('rounds_failed', '?')}",
        ],
        ["updates lost", str(summary.get("updates_lost", "?"))],
        ["updates rejected", str(summary.get("updates_rejected", "?"))],
    ]
    return "## Results\n\n" + markdown_table(["quantity", "value"], rows, "lr")


ATTACK_TEXT = {
    "sign_flip": "send their move from the model reversed and scaled by {scale:g}",
    "scale": "send their move from the model scaled by {scale:g}",
    "gaussian": "send the model plus Gaussian noise of standard deviation {scale:g}, untrained",
    "label_flip": "train on their shards with every label c turned into (classes - 1 - c)",
    "count_inflation": "send honest updates claiming {scale:g} times the examples asked for",
}


def _attack_section(attack: Mapping[str, Any], summary: Mapping[str, Any]) -> str:
    """Who attacked, how, and what the coordinator let through."""
    kind = str(attack.get("kind", "?"))
    doing = ATTACK_TEXT.get(kind, "attack").format(scale=attack.get("scale", 1.0))
    who = attack.get("attackers", [])
    text = (
        f"{len(who)} of the {attack.get('clients', '?')} clients (devices {ranges(who)}, "
        f"{attack.get('fraction', 0):.0%}, chosen under seed {attack.get('seed', '?')}) are "
        f"Byzantine: they **{kind}**, i.e. {doing}. They sent {attack.get('updates_sent', '?')} "
        f"updates; the coordinator refused {attack.get('updates_rejected', '?')} of them. "
        f"Under this attack the final accuracy is {percent(summary.get('final_accuracy'))} "
        f"with {strategy_text(summary.get('strategy', '?'))}. `benchmarks/bench_byzantine.py` "
        "measures each attack against each rule beside a clean run."
    )
    baselines = attack.get("baselines")
    if baselines:
        rows = [
            [
                str(rule),
                percent(figures.get("attacked")),
                percent(figures.get("clean")),
                "-" if figures.get("drop_points") is None else f"{figures['drop_points']:+.1f}",
            ]
            for rule, figures in baselines.items()
        ]
        text += (
            "\n\nWhat the attack costs (final accuracy; the clean runs, and FedAvg under the "
            "attack where the run's rule is another, are the same spec and seed in the "
            "simulator):\n\n"
            + markdown_table(["rule", "under attack", "clean", "drop (points)"], rows, "lrrr")
        )
    return "## Byzantine clients\n\n" + text


PRIVACY_TEXT = {
    "central": (
        "**Central DP-FedAvg** (McMahan et al., ICLR 2018): the server clipped each client's "
        "move to an L2 norm of {clip:g}, averaged the moves over the {m} clients a round "
        "expects and added Gaussian noise of standard deviation {std:.3g} (noise multiplier "
        "{z:.3g}) to every value; the strategy saw only that noised mean."
    ),
    "local": (
        "**Local DP**: each client clipped its own move to an L2 norm of {clip:g} and added "
        "Gaussian noise of standard deviation {std:.3g} (noise multiplier {z:.3g}) before "
        "sending it; the server aggregated noised updates only."
    ),
}


def _privacy_section(privacy: Mapping[str, Any], summary: Mapping[str, Any]) -> str:
    """What the DP did and what it spent: epsilon at delta, after the run and round by round."""
    kind = str(privacy.get("kind"))
    z, clip, std = (
        privacy.get("noise_multiplier"),
        privacy.get("clip_norm"),
        privacy.get("noise_std"),
    )
    m = privacy.get("clients_per_round", "?")
    text = PRIVACY_TEXT.get(kind, "Differential privacy ({kind}).").format(
        clip=clip, m=m, std=std, z=z, kind=kind
    )
    target = privacy.get("target_epsilon")
    chosen = (
        f" The noise multiplier was chosen for a budget of epsilon {target:g}." if target else ""
    )
    by_round = list(privacy.get("epsilon_by_round", []))
    whose = "" if kind == "central" else " for the client selected most often"
    text += (
        f"{chosen} After {privacy.get('releases')} releases at sampling rate "
        f"{privacy.get('sample_rate', 1.0):.3g}, the run spent **epsilon "
        f"{privacy.get('epsilon', 0.0):.3g} at delta {privacy.get('delta', 0.0):g}**{whose} "
        f"({privacy.get('accountant', 'RDP accountant')}). Final accuracy under it: "
        f"{percent(summary.get('final_accuracy'))}."
    )
    if by_round:
        step = max(1, len(by_round) // 10)
        shown = sorted({*range(step - 1, len(by_round), step), len(by_round) - 1})
        rows = [[str(i + 1), f"{by_round[i]:.3g}"] for i in shown]
        text += "\n\nEpsilon spent by the end of each round shown:\n\n" + markdown_table(
            ["round", "epsilon"], rows, "rr"
        )
    return "## Differential privacy\n\n" + text


def _shown_rounds(rounds: Sequence[RoundRow]) -> tuple[list[RoundRow], str]:
    """The rounds the table shows, and a note on which when it is not all of them.

    Up to ROUNDS_TABLE_MAX rounds: all. Beyond: one evaluated round in k (one round in k if
    none was evaluated), the last round, and the rounds not aggregated if they are few.
    """
    if len(rounds) <= ROUNDS_TABLE_MAX:
        return list(rounds), ""
    evaluated = [r for r in rounds if r.accuracy is not None]
    pool = evaluated or list(rounds)
    step = math.ceil(len(pool) / ROUNDS_TABLE_MAX)
    keep = {r.round for r in pool[::step]} | {pool[-1].round, rounds[-1].round}
    failed = [r.round for r in rounds if not r.aggregated]
    if len(failed) <= FAILED_ROWS_MAX:
        keep |= set(failed)
    what = "evaluated round" if evaluated else "round"
    extra = " and every one not aggregated" if failed and len(failed) <= FAILED_ROWS_MAX else ""
    which = f"The {len(pool)} {what}s are" if step == 1 else f"One {what} in {step} is"
    note = f"{which} shown, with the last{extra}; `runs.csv` has all {len(rounds)} rounds."
    return [r for r in rounds if r.round in keep], note


def _loss(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def _rounds_section(rounds: Sequence[RoundRow], fl_mode: str) -> str:
    heading = "## Rounds\n\n"
    if not rounds:
        return heading + "No rounds were run."
    shown, sampled = _shown_rounds(rounds)
    all_aggregated = all(r.aggregated for r in rounds)
    rows = [
        [
            f"{r.round} {NOT_AGGREGATED}" if not r.aggregated else str(r.round),
            number_of_seconds(r.finished_s),
            f"{r.completed} / {r.selected}",
            _loss(r.train_loss),
            percent(r.accuracy),
        ]
        for r in shown
    ]
    header = ["round", "ends at [s]", "completed / selected", "train loss", "test accuracy"]
    notes = [f"{NOT_AGGREGATED}: the round aggregated nothing."] if not all_aggregated else []
    if fl_mode == "async":
        notes.insert(0, "In asynchronous mode a row is one aggregation of the buffer.")
    if sampled:
        notes.append(sampled)
    table = markdown_table(header, rows, "rrrrr")
    return heading + table + ("\n\n" + " ".join(notes) if notes else "")


def _devices(devices: Iterable[int]) -> str:
    named = sorted(set(devices) - {NO_DEVICE})
    if len(named) > DEVICES_LISTED_MAX:
        return f"{len(named)} devices"
    return ", ".join(str(d) for d in named) or "—"


def _failures_section(failures: Sequence[tuple[int, int, str]], rounds: Sequence[RoundRow]) -> str:
    heading = "## Failures\n\n"
    failed_rounds = [r.round for r in rounds if not r.aggregated]
    if not failures and not failed_rounds:
        return heading + "No update was lost or rejected, and every round was aggregated."
    text = ""
    if failures:
        by_reason: dict[str, list[tuple[int, int]]] = defaultdict(list)
        for rnd, device, reason in failures:
            by_reason[reason].append((rnd, device))
        ordered = sorted(by_reason.items(), key=lambda item: (-len(item[1]), item[0]))
        rows = [
            [
                reason.replace("|", "\\|").replace("\n", " "),
                str(len(hits)),
                _devices(d for _, d in hits),
                ranges(r for r, _ in hits),
            ]
            for reason, hits in ordered
        ]
        affected = len({r for r, _, _ in failures})
        text += (
            f"{len(failures)} updates were lost or rejected, in {affected} of {len(rounds)} "
            "rounds.\n\n" + markdown_table(["reason", "updates", "devices", "rounds"], rows, "lrrr")
        )
    if failed_rounds:
        text += (
            "\n\n" if text else ""
        ) + f"Rounds not aggregated ({len(failed_rounds)}): {ranges(failed_rounds)}."
    return heading + text


def _captions(clock: str) -> dict[str, str]:
    """The plots' captions, naming the clock their time axes run on."""
    return {
        name: text.replace("simulated time", f"{clock} time")
        for name, text in PLOT_CAPTIONS.items()
    }


def render_federated_report(result: RunResult, plots: Mapping[str, Path]) -> str:
    """The text of a federated run's ``report.md``; ``plots`` maps names to files in ``plots/``."""
    summary = result.summary
    title = str(summary.get("experiment", "federated run"))
    if summary.get("job"):
        title += f" (job {summary['job']} on {summary.get('server_url')})"
    sections = [
        f"# fedsim report: {title}\n\n"
        "Federated training: how accurate the model gets, how fast, and where the time goes.",
        _what_was_run(summary),
        _results_section(summary),
        *([_attack_section(summary["attack"], summary)] if summary.get("attack") else []),
        *([_privacy_section(summary["privacy"], summary)] if summary.get("privacy") else []),
        _rounds_section(result.rows, str(summary.get("fl_mode", "sync"))),
        _failures_section(result.failures, result.rows),
        assumptions_section(result.assumptions),
        plots_section(plots, _captions(run_time(summary)[0])),
    ]
    return "\n\n".join(sections) + "\n"
