"""From the composed Hydra config to one typed :class:`~fedsim.spec.ExperimentSpec`.

Hydra composes ``conf/`` against the schema in :mod:`fedsim.schema`, so an unknown key or a
wrong type is an error at composition. :func:`build_spec` then checks values and references
(bandwidths, profiles, device ids, strategies) and turns the config into the engine's objects;
every problem is a :class:`ConfigError` whose message starts with the path of the offending
field. :func:`compose` and :func:`compose_job` compose the config the way ``python -m fedsim``
does, for the CLI's preflight and for jobs a server is handed as plain data.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from fedsim.core import collector
from fedsim.core.attacks import attackers
from fedsim.core.calibration import StepModel
from fedsim.core.experiment import CrossoverGrid
from fedsim.core.faults import FaultPlan, LinkChange, Outage
from fedsim.core.fleet import (
    ASSIGNMENTS,
    Availability,
    FleetError,
    Spreads,
    alternating,
    assign_timelines,
    heterogeneous,
)
from fedsim.core.limits import INT64_MAX, walk
from fedsim.core.plugins import TARGET, PluginError, check_call, is_import_path, split_target
from fedsim.core.plugins import factory as plugin_factory
from fedsim.core.privacy import PrivacyConfig
from fedsim.core.secagg import SecAggParams
from fedsim.core.selection import selection_from
from fedsim.core.topology import (
    MEASURED,
    MEASURED_SECONDS,
    PROFILE_KINDS,
    Device,
    Group,
    HardwareProfile,
    LinkProfile,
    Topology,
    TopologyError,
)
from fedsim.core.traces import TraceError, load_availability, load_device_table
from fedsim.core.workload import DatasetSpec, WorkloadSpec
from fedsim.runtimes import RUNTIMES
from fedsim.scenarios import SCENARIOS
from fedsim.schema import (
    TLS_MODES,
    Config,
    FLConf,
    HardwareConf,
    ModeConf,
    NetworkConf,
    PaperConf,
    PartitionConf,
    ScaleConf,
    SecAggConf,
)
from fedsim.spec import ExperimentSpec

GB = 1e9
MB = 1e6
KINDS = tuple(SCENARIOS)  # the experiment kinds: one per registered scenario
# What a config may ask for: every registered runtime but "attached", which runs a server's
# jobs over the stores it is handed (mode.server_url sends an experiment there).
MODES = tuple(name for name in RUNTIMES if name != "attached")
# How simulated transfers share links: mode.network (fedsim.runtimes.sim).
NETWORKS = ("shared", "independent")
PARTITIONS = ("dirichlet", "iid")


class ConfigError(ValueError):
    """A configuration value or reference that cannot work; the message names the field."""


def conf_dir() -> Path:
    """The Hydra configs: ``conf/`` of the clone, reached through the ``fedsim/conf`` link.

    In a wheel the link is a real directory, so an installed fedsim finds the same files.
    """
    return Path(__file__).resolve().parent / "conf"


def register_configs() -> None:
    ConfigStore.instance().store(name="fedsim_schema", node=Config)


def compose(overrides: Sequence[str] = ()) -> DictConfig:
    """The config ``python -m fedsim OVERRIDES`` would run (without Hydra's own settings)."""
    register_configs()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base=None):
        return hydra_compose(config_name="config", overrides=list(overrides))


def compose_job(config: Mapping[str, Any]) -> DictConfig:
    """A job's ``config`` (plain data) over the schema and defaults of its experiment.

    The experiment's own defaults apply when ``experiment.name`` names one in ``conf/``;
    raises :class:`ConfigError` naming what does not fit the schema.
    """
    if not isinstance(config, Mapping):
        raise ConfigError("config: must be an object")
    experiment = config.get("experiment")
    name = experiment.get("name") if isinstance(experiment, Mapping) else None
    known = isinstance(name, str) and (conf_dir() / "experiment" / f"{name}.yaml").is_file()
    try:
        base = compose([f"+experiment={name}"] if known else [])
        merged = OmegaConf.merge(base, OmegaConf.create(dict(config)))
    except OmegaConfBaseException as e:
        # OmegaConf's message goes on with lines of its own (full_key, reference_type,
        # object_type); the key and the first line say it all, in one line.
        key = getattr(e, "full_key", "") or ""
        text = str(getattr(e, "msg", None) or e).strip()
        first = text.splitlines()[0] if text else type(e).__name__
        raise ConfigError(f"config{'.' + key if key else ''}: {first}") from None
    # Merging onto a DictConfig gives a DictConfig; OmegaConf's annotation allows a ListConfig.
    assert isinstance(merged, DictConfig)
    return merged


def as_container(cfg: Any) -> dict[str, Any]:
    """The resolved config as plain data, without Hydra's own node."""
    out = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(out, dict)
    # str(): the keys are the schema's field names; OmegaConf annotates them as any key type.
    return {str(k): v for k, v in out.items() if k != "hydra"}


def _typed(where: str, node: Any, schema: type | None = None) -> Any:
    """The dataclass instance behind a config node; its checks raise as :class:`ConfigError`."""
    try:
        if schema is not None and not OmegaConf.is_config(node):
            node = OmegaConf.merge(OmegaConf.structured(schema), node)
        return OmegaConf.to_object(node)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", "") or ""
        raise ConfigError(f"{where}{'.' + key if key else ''}: {getattr(e, 'msg', e)}") from None
    except ValueError as e:
        raise ConfigError(f"{where}.{e}") from None


def build_spec(cfg: Any, profiles: Path | None = None) -> ExperimentSpec:
    """The checked, typed experiment ``cfg`` describes; hardware and network profiles the
    config does not include are read from ``profiles`` (a ``conf/`` directory)."""
    check_keys(cfg)
    check_numbers(as_container(cfg))
    kind = cfg.experiment.kind
    if kind not in KINDS:
        raise ConfigError(f"experiment.kind: {kind!r} is not one of {', '.join(KINDS)}")
    mode: ModeConf = _typed("mode", cfg.mode)
    if mode.name not in MODES:
        raise ConfigError(f"mode.name: {mode.name!r} is not one of {', '.join(MODES)}")
    if cfg.repetitions < 1:
        raise ConfigError(f"repetitions: must be >= 1, got {cfg.repetitions}")
    if cfg.seed < 0:
        # numpy's SeedSequence takes no negative entropy.
        raise ConfigError(f"seed: must be >= 0, got {cfg.seed}")
    check_mode(mode)
    topology = build_topology(cfg, profiles)
    clients = clients_of(cfg, topology)
    fl: FLConf = _typed("fl", cfg.fl)
    if kind == "federated" and fl.min_fit > len(clients):
        raise ConfigError(f"fl.min_fit: {fl.min_fit} > the {len(clients)} clients")
    if kind == "federated" and fl.attack.kind is not None:
        _check_attack(fl, clients)
    # The most updates a round brings each rule: in hierarchical rounds the cloud's combines
    # one a group, and each group's those of its members (by `strategy` without a
    # group_strategy).
    cloud = [(len(clients), "clients")]
    group: list[tuple[int, str]] = []
    if kind == "federated" and fl.hierarchical and clients:
        sizes = Counter(topology.devices[d].group for d in clients)
        smallest = min(sizes, key=lambda g: (sizes[g], g))
        cloud = [(len(sizes), "groups (fl.hierarchical)")]
        group = [(sizes[smallest], f"clients in group {smallest} (fl.hierarchical)")]
    strategy = _strategy("strategy", cfg.strategy, *cloud, *([] if cfg.group_strategy else group))
    group_strategy = None
    if cfg.group_strategy:
        group_strategy = _strategy("group_strategy", cfg.group_strategy, *group)
        if kind == "federated" and not fl.hierarchical:
            raise ConfigError(
                "group_strategy: only hierarchical rounds aggregate groups; "
                "set fl.hierarchical=true"
            )
    partition: PartitionConf = _typed("partition", cfg.partition)
    if partition.kind not in PARTITIONS:
        raise ConfigError(
            f"partition.kind: {partition.kind!r} is not one of {', '.join(PARTITIONS)}"
        )
    if not partition.alpha > 0:
        raise ConfigError(f"partition.alpha: must be > 0, got {partition.alpha}")
    if not 0 < partition.test_fraction < 1:
        raise ConfigError(
            f"partition.test_fraction: must be in (0, 1), got {partition.test_fraction}"
        )
    scale: ScaleConf | None = None
    if cfg.workload.scale is not None:
        scale = _typed("workload.scale", cfg.workload.scale)
        for key in ("input_size", "samples_per_device"):
            _positive(f"workload.scale.{key}", getattr(scale, key))
    paper: PaperConf | None = None if cfg.paper is None else _typed("paper", cfg.paper)
    if paper is not None:
        for key in ("t_ref_s", "t_new_s"):  # the paper's measured times
            _positive(f"paper.{key}", getattr(paper, key))
    workload = build_workload(cfg.workload)
    if isinstance(fl.selection, Mapping):
        try:  # built once here so that a bad _target_ is a config error, not a failed run
            selection_from(fl.selection, model_bytes=workload.model.state_bytes)
        except PluginError as e:
            raise ConfigError(str(e)) from None
    if kind == "federated" and fl.training == "real":
        check_shards(workload, partition, fl, len(clients))
    availability = build_availability(cfg, topology)
    if availability is not None and mode.name != "sim":
        raise ConfigError(
            "topology.fleet.availability: devices go offline on schedule in the simulator "
            f"only; mode={mode.name} runs agents that stay online"
        )
    faults = fault_plan(cfg.faults, topology, availability)
    privacy = build_privacy(cfg, kind, fl, strategy, len(clients))
    if faults.link_changes and mode.name != "sim":
        raise ConfigError(
            "faults.link_changes: links are changed in the simulator only; "
            f"mode={mode.name} runs over this host's own links"
        )
    secagg = build_secagg(cfg.secagg, kind, mode, fl, strategy)
    if secagg is not None and privacy.kind is not None:
        # Central DP clips each update, which secure aggregation hides from the server; local
        # DP's noised updates could be summed securely, but the round under secure
        # aggregation does not take wrapped strategies yet.
        raise ConfigError(
            f"privacy.kind: {privacy.kind} DP and secure aggregation (secagg=on) do not run "
            "together yet; choose one"
        )
    return ExperimentSpec(
        name=cfg.experiment.name,
        kind=kind,
        mode=mode,
        seed=int(cfg.seed),
        topology=topology,
        clients=tuple(clients),
        workload_name=cfg.workload.name,
        workload=workload,
        scale=scale,
        repetitions=int(cfg.repetitions),
        crossover=crossover_grid(cfg.crossover) if cfg.crossover is not None else None,
        paper=paper,
        fl=fl,
        strategy=strategy,
        group_strategy=group_strategy,
        partition=partition,
        faults=faults,
        privacy=privacy,
        config=as_container(cfg),
        secagg=secagg,
    )


def build_secagg(
    node: Any, kind: str, mode: ModeConf, fl: FLConf, strategy: Mapping[str, Any]
) -> SecAggParams | None:
    """Secure aggregation's settings when ``secagg.enabled``; refuses what it cannot run with."""
    c: SecAggConf = _typed("secagg", node)
    try:
        # Checked when off too: a setting that cannot work is an error wherever it is.
        params = SecAggParams.of(c)
    except ValueError as e:
        raise ConfigError(f"secagg.{e}") from None
    if not c.enabled:
        return None
    if kind != "federated":
        raise ConfigError(f"secagg: secure aggregation needs a federated experiment, not {kind}")
    if mode.server_url is not None:
        # A server's jobs would run it over the same messages, untested there so far.
        raise ConfigError(
            "secagg: a job on a running server (mode.server_url) does not run secure "
            "aggregation yet; run it with mode=sim or mode=real"
        )
    if mode.name not in ("sim", "real"):
        # emulated runs the same agents and messages, untested so far in network namespaces.
        raise ConfigError(
            f"secagg: mode={mode.name} does not run secure aggregation yet; run it with "
            "mode=sim or mode=real"
        )
    if fl.mode != "sync" or fl.hierarchical:
        raise ConfigError("secagg: secure aggregation runs in synchronous rounds without groups")
    if strategy.get("name") != "fedavg" or strategy.get("clip_norm") is not None:
        raise ConfigError(
            "secagg: the server sees only the sum of the updates, so the strategy must be "
            "fedavg without clip_norm"
        )
    if fl.training != "real":
        raise ConfigError("secagg: secure aggregation masks real updates: needs fl.training=real")
    return params


def check_keys(node: Any, where: str = "") -> None:
    """Refuse a key the schema does not have where it has fields: ``+fl.roundz=3`` adds one
    that Hydra accepts and nothing reads, so the run went on as if it were not there. Mappings
    the schema leaves open (``strategy``, ``fl.aggregators``) take any key."""
    if isinstance(node, ListConfig):
        for i, item in enumerate(node):
            check_keys(item, f"{where}[{i}]")
        return
    if not isinstance(node, DictConfig):
        return
    try:
        items = node.items_ex(resolve=False)
    except OmegaConfBaseException:
        return  # a null or missing section: no keys
    schema = OmegaConf.get_type(node)
    closed = isinstance(schema, type) and dataclasses.is_dataclass(schema)
    fields = [f.name for f in dataclasses.fields(schema)] if closed and schema else []
    for item_key, value in items:
        key = str(item_key)
        name = f"{where}.{key}" if where else key
        if closed and key not in fields and name != "hydra":
            close = difflib.get_close_matches(key, fields, n=1)
            hint = f" (did you mean {where + '.' if where else ''}{close[0]}?)" if close else ""
            raise ConfigError(f"{name}: not a setting fedsim has{hint}")
        check_keys(value, name)


def check_numbers(value: Any, where: str = "") -> None:
    """Refuse any number the engine cannot work with, naming its field: a float that is not
    finite (``nan``, ``inf``, ``1e999``) or an integer beyond SQLite's and numpy's 64 bits.

    Every numeric field of every section passes through here before its own range is checked,
    so no field can carry such a value into a run, a strategy's parameters included.
    """
    for path, item, _ in walk(value, where):
        if isinstance(item, bool):
            continue
        if isinstance(item, float) and not math.isfinite(item):
            raise ConfigError(f"{path}: must be a finite number, got {item}")
        if isinstance(item, int) and not -INT64_MAX - 1 <= item <= INT64_MAX:
            raise ConfigError(f"{path}: must be a 64-bit integer, got {item}")


def check_mode(mode: ModeConf) -> None:
    """The ranges of ``mode``'s numbers (the emulated runtime checks its own two)."""
    if not 0 <= mode.port <= 65535:
        raise ConfigError(f"mode.port: must be in 0..65535, got {mode.port}")
    if mode.tls not in TLS_MODES:
        raise ConfigError(f"mode.tls: {mode.tls!r} is not one of {', '.join(TLS_MODES)}")
    if mode.network not in NETWORKS:
        raise ConfigError(f"mode.network: {mode.network!r} is not one of {', '.join(NETWORKS)}")
    if mode.network != "shared" and mode.name != "sim":
        # Agents send over this host's links (emulated: shaped ones), which share as links do.
        raise ConfigError(
            f"mode.network: {mode.network!r} is a model of the simulator only; "
            f"mode={mode.name} sends over real links, which are shared"
        )
    if mode.tls != "off" and (mode.name == "sim" or mode.server_url):
        # Only a cluster this run starts is this run's to secure.
        where = "mode=sim" if mode.name == "sim" else "mode.server_url (a running server)"
        raise ConfigError(
            f"mode.tls: {mode.tls!r} applies to the servers real mode starts, not {where}"
        )
    for name in ("startup_timeout_s", "heartbeat_interval_s", "patience_s"):
        _positive(f"mode.{name}", getattr(mode, name))


def check_shards(
    workload: WorkloadSpec, partition: PartitionConf, fl: FLConf, clients: int
) -> None:
    """Refuse a data set real training cannot read, or whose training split cannot give every
    client its least share: a batch under a Dirichlet split (the scenario draws until each has
    one), else one sample."""
    from fedsim.ml.data import DATASETS, training_size

    dataset = workload.dataset
    if dataset.factory is not None:
        return  # the user's factory makes the shards; their sizes are known once it has run
    if dataset.name not in DATASETS:
        raise ConfigError(
            f"workload.dataset.name: real training knows {', '.join(map(repr, DATASETS))}, "
            f"not {dataset.name!r}"
        )
    if dataset.name == "image_folder" and dataset.path is None:
        raise ConfigError("workload.dataset.path: an image_folder data set needs its root folder")
    if dataset.name == "npz" and dataset.path is None:
        raise ConfigError("workload.dataset.path: an npz data set needs its .npz file")
    try:
        # The split's size depends on test_fraction alone; the seed only picks which samples.
        available = training_size(
            dataset, num_classes=workload.model.num_classes, test_fraction=partition.test_fraction
        )
    except (OSError, ValueError) as e:
        raise ConfigError(f"workload.dataset: {e}") from None
    least = fl.batch_size if partition.kind == "dirichlet" else 1
    if available < clients * least:
        raise ConfigError(
            f"experiment.clients: {clients} clients need {clients * least} training samples "
            f"({least} each{', fl.batch_size' if least > 1 else ''}), the {dataset.name} "
            f"training split has {available}; use fewer clients, a smaller fl.batch_size, a "
            "smaller partition.test_fraction or a larger data set"
        )


# Rules whose result is a function of the mean update: under central DP they see the noised
# mean alone, which is post-processing of a private release. Robust rules compare individual
# updates, which central DP does not give them.
DP_RULES = ("fedavg", "fedprox", "fedadam", "fedyogi", "fedadagrad")


def build_privacy(
    cfg: Any, kind: str, fl: FLConf, strategy: Mapping[str, Any], clients: int
) -> PrivacyConfig:
    """``privacy``, checked against the run, with the noise multiplier ``target_epsilon``
    implies filled in (central: ``fl.rounds`` steps at rate clients per round / clients;
    local: ``fl.rounds`` releases of a client selected every round)."""
    privacy: PrivacyConfig = _typed("privacy", cfg.privacy)
    if privacy.kind is None:
        return privacy
    if kind != "federated":
        raise ConfigError("privacy.kind: differential privacy applies to federated experiments")
    if fl.mode != "sync" or fl.hierarchical:
        raise ConfigError(
            "privacy.kind: differential privacy runs with synchronous, flat rounds "
            "(fl.mode=sync, fl.hierarchical=false); its accounting assumes one release a round"
        )
    name = strategy.get("name")
    if privacy.kind == "central" and name not in DP_RULES:
        raise ConfigError(
            f"privacy.kind: central DP gives the strategy one noised mean; {name!r} needs the "
            f"individual updates (use one of {', '.join(DP_RULES)}, or privacy.kind=local)"
        )
    if privacy.target_epsilon is not None and privacy.noise_multiplier is not None:
        raise ConfigError(
            "privacy.noise_multiplier: give exactly one of noise_multiplier and target_epsilon "
            "(set noise_multiplier=null to choose it from target_epsilon)"
        )
    if privacy.noise_multiplier is None:
        from fedsim.ml.accounting import noise_for_epsilon

        assert privacy.target_epsilon is not None
        z = noise_for_epsilon(
            target_epsilon=privacy.target_epsilon,
            sample_rate=privacy.sample_rate(fl.per_round(clients), clients),
            steps=fl.rounds,
            delta=privacy.delta,
        )
        privacy = dataclasses.replace(privacy, noise_multiplier=z)
    return privacy


def _check_attack(fl: FLConf, clients: Sequence[int]) -> None:
    """``fl.attack`` must choose at least one client and have something to poison."""
    try:
        attackers(clients, fl.attack)
    except ValueError as e:
        raise ConfigError(f"fl.{e}") from None
    if fl.attack.kind == "label_flip" and fl.training != "real":
        raise ConfigError(
            f"fl.attack.kind: label_flip poisons training data, and fl.training="
            f"{fl.training} trains on none"
        )


def _strategy(where: str, node: Any, *most: tuple[int, str]) -> dict[str, Any]:
    """A strategy's config (``name`` and parameters), checked by building it once, and against
    each of ``most``: the most updates a round can bring it (a count, and what it counts).

    A user's strategy (``_target_``) is kept as ``name: its import path``, so that reports name
    it as they name a built-in and the scenario builds it from the same path.
    """
    from fedsim.core.strategies.registry import strategy_from

    plain = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
    if not isinstance(plain, Mapping):
        raise ConfigError(f"{where}: must be a mapping with a name, got {plain!r}")
    c = {str(k): v for k, v in plain.items()}
    if TARGET in c:
        try:
            path, params = split_target(where, c)
        except PluginError as e:
            raise ConfigError(str(e)) from None
        c = {"name": path, **{k: v for k, v in params.items() if k != "name"}}
    try:
        built = strategy_from(c, where)
    except PluginError as e:
        raise ConfigError(str(e)) from None
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{where}: {e}") from None
    least = built.min_updates()
    for count, what in most:
        if least > count:
            raise ConfigError(
                f"{where}: {built.name} needs at least {least} updates a round, and the run "
                f"has {count} {what}"
            )
    return c


def build_workload(c: Any) -> WorkloadSpec:
    """The workload ``workload`` describes, with the model measured on its PyTorch module."""
    from fedsim.ml.spec import model_spec

    check_workload(c)
    name = model_name(c.model)
    try:
        model = model_spec(name, input_size=c.input_size, num_classes=c.num_classes)
    except KeyError as e:
        raise ConfigError(f"workload.model: {e.args[0]}") from None
    except PluginError as e:
        raise ConfigError(str(e)) from None
    except Exception as e:  # the user's module failed to build or run on a sample input
        if not is_import_path(name):
            raise
        raise ConfigError(
            f"workload.model: measuring {name} on a {c.input_size}x{c.input_size} input "
            f"failed: {type(e).__name__}: {e}"
        ) from None
    return WorkloadSpec(
        model=model,
        dataset=build_dataset(c.dataset),
        samples_per_device=c.samples_per_device,
        batch_size=c.batch_size,
        epochs=c.epochs,
    )


def fault_plan(c: Any, topology: Topology, availability: Availability | None = None) -> FaultPlan:
    """``faults``, checked against the topology's devices and link profiles, with the fleet's
    ``availability`` if it has one."""
    inf = float("inf")
    outages = []
    for i, o in enumerate(c.outages):
        if o.device not in topology.devices:
            raise ConfigError(f"faults.outages[{i}].device: no device {o.device}")
        try:
            outages.append(Outage(device=o.device, start=o.start_s, end=o.end_s or inf))
        except ValueError as e:
            raise ConfigError(f"faults.outages[{i}]: {e}") from None
    names = {p.name for p in topology.link_profiles()}
    changes = []
    for i, ch in enumerate(c.link_changes):
        if ch.network not in names:
            raise ConfigError(f"faults.link_changes[{i}].network: no link uses {ch.network!r}")
        try:
            changes.append(
                LinkChange(
                    network=ch.network, start=ch.start_s, end=ch.end_s or inf, factor=ch.factor
                )
            )
        except ValueError as e:
            raise ConfigError(f"faults.link_changes[{i}]: {e}") from None
    try:
        return FaultPlan(
            dropout=c.dropout, outages=outages, link_changes=changes, availability=availability
        )
    except ValueError as e:
        raise ConfigError(f"faults.{e}") from None


# -- conversion -----------------------------------------------------------------------------


def _positive(where: str, value: float, *, allow_zero: bool = False, scale: float = 1) -> float:
    """``value`` in base units (times ``scale``), checked: > 0 (or >= 0) and finite there."""
    if not value >= 0 or (value == 0 and not allow_zero):  # "not >=": NaN fails too
        raise ConfigError(f"{where}: must be {'>= 0' if allow_zero else '> 0'}, got {value}")
    if not math.isfinite(value):
        raise ConfigError(f"{where}: must be a finite number, got {value}")
    scaled = value * scale
    if not math.isfinite(scaled):  # finite, but not once in base units (1e308 Mb/s)
        raise ConfigError(f"{where}: too large, got {value}")
    return scaled


def _fraction(where: str, value: float) -> float:
    if not 0 < value <= 1:
        raise ConfigError(f"{where}: must be in (0, 1], got {value}")
    return value


def _load_profile(kind: str, name: str, schema: type, conf_dir: Path | None) -> Any:
    """A profile by name from ``conf/<kind>/<name>.yaml`` when the config did not include it."""
    path = None if conf_dir is None else conf_dir / kind / f"{name}.yaml"
    if path is None or not path.is_file():
        return None
    return _read_profile(kind, name, schema, path)


def _read_profile(kind: str, name: str, schema: type, path: Path) -> Any:
    try:
        return OmegaConf.merge(OmegaConf.structured(schema), OmegaConf.load(path))
    except OmegaConfBaseException as e:
        raise ConfigError(f"{kind}.{name} ({path}): {e.msg}") from None


def load_hardware_profile(path: Path) -> HardwareProfile:
    """The profile in the YAML file ``path``, named after the file, checked as a config's are."""
    return hardware_profile(path.stem, _read_profile("hardware", path.stem, HardwareConf, path))


MEASURED_THROUGHPUTS = ("serialize_bytes_per_s", "load_bytes_per_s", "aggregate_bytes_per_s")


def hardware_profile(name: str, c: Any) -> HardwareProfile:
    """A spec-sheet or measured profile from ``c`` (a ``HardwareConf``), every value checked.

    A measured profile needs no spec-sheet figure it does not use: without ``efficiency`` (and
    a peak), work that has no step model (evaluation without ``eval_steps``, other models,
    aggregation's arithmetic) runs at the fastest training rate its steps measured,
    ``flops_per_sample / per_sample_s``; without ``memory_bandwidth_gbps``, memory traffic
    moves at ``aggregate_bytes_per_s``.
    """
    where = f"hardware.{name}"
    if c.kind not in PROFILE_KINDS:
        kinds = ", ".join(PROFILE_KINDS)
        raise ConfigError(f"{where}.kind: must be one of {kinds}, got {c.kind!r}")
    measured = c.kind == MEASURED
    steps = {model: _step_model(f"{where}.steps.{model}", s) for model, s in c.steps.items()}
    eval_steps = {
        model: _step_model(f"{where}.eval_steps.{model}", s) for model, s in c.eval_steps.items()
    }
    throughputs = {
        f: _positive(f"{where}.{f}", getattr(c, f))
        for f in MEASURED_THROUGHPUTS
        if getattr(c, f) is not None
    }
    seconds = {
        key: _positive(f"{where}.{key}", float(getattr(c, key)), allow_zero=True)
        for key in MEASURED_SECONDS
        if getattr(c, key) is not None
    }
    if measured:
        if not steps:
            raise ConfigError(
                f"{where}.steps: a measured profile needs at least one step model "
                "(fedsim calibrate writes them)"
            )
        if not c.source.strip():
            raise ConfigError(
                f"{where}.source: a measured profile must say where its figures come from"
            )
    else:
        extra = (["steps"] if steps else []) + (["eval_steps"] if eval_steps else [])
        extra += list(throughputs)
        extra += list(seconds)
        if extra:
            raise ConfigError(
                f"{where}.{extra[0]}: measured figures belong to a profile with kind: measured"
            )

    _descriptive(where, c)
    spec_compute = (c.efficiency, c.cpu_peak_gflops, c.accelerator)
    if measured and all(v is None for v in spec_compute):
        units, peak, efficiency = 1, _measured_rate(where, c), 1.0
    else:
        units, peak = _peak(where, c)
        efficiency = _required(f"{where}.efficiency", c.efficiency)
        efficiency = _fraction(f"{where}.efficiency", efficiency)
    if c.memory_bandwidth_gbps is not None:
        memory_bandwidth = _positive(
            f"{where}.memory_bandwidth_gbps", c.memory_bandwidth_gbps, scale=GB
        )
    elif measured and "aggregate_bytes_per_s" in throughputs:
        memory_bandwidth = throughputs["aggregate_bytes_per_s"]
    else:
        alternative = " (or aggregate_bytes_per_s)" if measured else ""
        raise ConfigError(f"{where}.memory_bandwidth_gbps: required{alternative}")
    return HardwareProfile(
        name=name,
        description=c.description,
        kind=c.kind,
        source=c.source or "data sheets and the assumptions stated in the profile",
        peak_flops=peak,
        units=int(units),
        efficiency=efficiency,
        scaling_efficiency=_fraction(f"{where}.scaling_efficiency", c.scaling_efficiency),
        memory_bytes=_positive(f"{where}.memory_gb", c.memory_gb, scale=GB),
        memory_bandwidth=memory_bandwidth,
        disk_bandwidth=_positive(f"{where}.disk_write_mbps", c.disk_write_mbps, scale=MB),
        jitter=_positive(f"{where}.jitter", c.jitter, allow_zero=True),
        steps={model: step for model, (step, _) in steps.items()},
        eval_steps={model: step for model, (step, _) in eval_steps.items()},
        **seconds,
        **throughputs,
    )


def _descriptive(where: str, c: Any) -> None:
    """The figures a profile may carry that its timing does not use (the processor on a
    GPU-trained device, the accelerator's memory), checked as strictly as the rest: reports
    and exported fleets show them."""
    if c.cpu_cores < 1:
        raise ConfigError(f"{where}.cpu_cores: must be >= 1, got {c.cpu_cores}")
    _positive(f"{where}.cpu_ghz", c.cpu_ghz)
    if c.cpu_peak_gflops is not None:
        _positive(f"{where}.cpu_peak_gflops", c.cpu_peak_gflops)
    if c.accelerator is not None:
        acc = c.accelerator
        _positive(f"{where}.accelerator.memory_gb", acc.memory_gb, allow_zero=True)
        _positive(f"{where}.accelerator.memory_bandwidth_gbps", acc.memory_bandwidth_gbps)


def _peak(where: str, c: Any) -> tuple[int, float]:
    """Units and total peak FLOP/s of what trains, from the spec-sheet figures."""
    if c.train_on == "accelerator":
        acc = c.accelerator
        if acc is None:
            raise ConfigError(f"{where}.accelerator: train_on is 'accelerator' but none is given")
        units = int(_positive(f"{where}.accelerator.count", acc.count))
        return units, _positive(
            f"{where}.accelerator.peak_tflops", acc.peak_tflops, scale=1e12 * units
        )
    if c.train_on == "cpu":
        peak = _required(f"{where}.cpu_peak_gflops", c.cpu_peak_gflops)
        return 1, _positive(f"{where}.cpu_peak_gflops", peak, scale=1e9)
    raise ConfigError(f"{where}.train_on: must be 'accelerator' or 'cpu', got {c.train_on!r}")


def _step_model(where: str, c: Any) -> tuple[StepModel, float | None]:
    """A checked step model and the training FLOPs per sample it was measured with, if given."""
    for f in ("overhead_s", "per_sample_s", "residual_s"):
        _positive(f"{where}.{f}", getattr(c, f), allow_zero=True)
    if c.flops_per_sample is not None:
        _positive(f"{where}.flops_per_sample", c.flops_per_sample)
    bad = [b for b in c.batch_sizes if b < 1]
    if bad:
        raise ConfigError(f"{where}.batch_sizes: must be >= 1, got {bad}")
    return StepModel(overhead_s=c.overhead_s, per_sample_s=c.per_sample_s), c.flops_per_sample


def _measured_rate(where: str, c: Any) -> float:
    """The fastest FLOP/s the profile's steps measured (flops_per_sample / per_sample_s)."""
    rates = [
        s.flops_per_sample / s.per_sample_s
        for s in c.steps.values()
        if s.flops_per_sample is not None and s.per_sample_s > 0
    ]
    if not rates:
        raise ConfigError(
            f"{where}.efficiency: required unless a step gives flops_per_sample (and a "
            "per_sample_s > 0), to time work that has no step model"
        )
    return max(rates)


def _required(where: str, value: float | None) -> float:
    if value is None:
        raise ConfigError(f"{where}: required")
    return value


def link_profile(name: str, c: Any) -> LinkProfile:
    where = f"network.{name}"
    if not 0 <= c.loss < 1:
        raise ConfigError(f"{where}.loss: must be in [0, 1), got {c.loss}")
    return LinkProfile(
        name=name,
        bandwidth=_positive(f"{where}.bandwidth_mbps", c.bandwidth_mbps, scale=MB / 8),
        latency=_positive(f"{where}.latency_ms", c.latency_ms, allow_zero=True, scale=1e-3),
        loss=c.loss,
        latency_jitter=_positive(f"{where}.jitter_ms", c.jitter_ms, allow_zero=True, scale=1e-3),
    )


class _Profiles:
    """Profiles by name: those in the config first, else ``conf/<kind>/<name>.yaml``."""

    def __init__(self, kind: str, configured: Any, schema: type, make, conf_dir: Path | None):
        self.kind, self.configured, self.schema = kind, configured, schema
        self.make, self.conf_dir = make, conf_dir
        self.cache: dict[str, Any] = {}

    def __call__(self, name: str, where: str) -> Any:
        if name not in self.cache:
            c = self.configured.get(name) if name in self.configured else None
            if c is None:
                c = _load_profile(self.kind, name, self.schema, self.conf_dir)
            if c is None:
                # Those the config included and those conf/<kind>/ holds, found by name.
                names = set(self.configured or ())
                if self.conf_dir is not None:
                    names.update(p.stem for p in (self.conf_dir / self.kind).glob("*.yaml"))
                known = sorted(names)
                raise ConfigError(
                    f"{where}: unknown {self.kind} profile {name!r} (known: {', '.join(known)})"
                )
            self.cache[name] = self.make(name, c)
        return self.cache[name]


def _topology(cfg: Any, conf_dir: Path | None) -> Topology:
    hw = _Profiles("hardware", cfg.hardware, HardwareConf, hardware_profile, conf_dir)
    net = _Profiles("network", cfg.network, NetworkConf, link_profile, conf_dir)
    t = cfg.topology
    if t.generate is not None:
        topology = _generated(t.name, t.generate, hw, net)
    else:
        topology = _listed(t, hw, net)
    f = t.fleet
    if f.devices.file is not None or any(getattr(f.spread, k) for k in SPREADS):
        topology = _fleet(f, topology, _fleet_seed(cfg), hw)
    return topology


def build_topology(cfg: Any, conf_dir: Path | None = None) -> Topology:
    """The validated topology of ``cfg`` with its hardware and link profiles resolved.

    Built with the cyclic garbage collector paused: a generated fleet is millions of objects
    that form no cycles, and the collector's walks over them took a quarter of the time.
    """
    with collector.paused():
        return _topology(cfg, conf_dir)


def _listed(t: Any, hw: _Profiles, net: _Profiles) -> Topology:
    """The topology of ``t.groups`` and ``t.devices``, device by device."""
    groups: dict[int, Group] = {}
    for i, g in enumerate(t.groups):
        if g.id < 0:
            raise ConfigError(f"topology.groups[{i}].id: must be >= 0, got {g.id}")
        if g.id in groups:
            raise ConfigError(f"topology.groups[{i}].id: group {g.id} appears twice")
        groups[g.id] = Group(
            id=g.id, description=g.description, uplink=net(g.uplink, f"topology.groups[{i}].uplink")
        )
    devices: dict[int, Device] = {}
    for i, d in enumerate(t.devices):
        where = f"topology.devices[{i}]"
        for key in ("id", "id_in_group"):
            if getattr(d, key) < 0:
                raise ConfigError(f"{where}.{key}: must be >= 0, got {getattr(d, key)}")
        if d.id in devices:
            raise ConfigError(f"{where}.id: device {d.id} appears twice")
        if d.group not in groups:
            raise ConfigError(f"{where}.group: no group {d.group} in topology.groups")
        if d.link.to is not None and d.link.to not in {x.id for x in t.devices}:
            raise ConfigError(f"{where}.link.to: links to device {d.link.to}, which does not exist")
        devices[d.id] = Device(
            id=d.id,
            description=d.description,
            group=d.group,
            id_in_group=d.id_in_group,
            role=d.role,
            hardware=hw(d.hardware, f"{where}.hardware"),
            link=net(d.link.network, f"{where}.link.network"),
            attach_to=d.link.to,
        )
    try:
        return Topology(t.name, groups, devices)
    except TopologyError as e:
        raise ConfigError(str(e)) from None


SPREADS = ("speed", "bandwidth", "latency")


def _fleet_seed(cfg: Any) -> int:
    fleet = cfg.topology.fleet
    seed = cfg.seed if fleet.seed is None else fleet.seed
    if seed < 0:
        raise ConfigError(f"topology.fleet.seed: must be >= 0, got {seed}")
    return int(seed)


def fleet_file(where: str, name: str) -> Path:
    """A fleet's file: ``name`` as given (absolute, or from the working directory), else
    relative to ``conf/`` (where ``conf/traces/`` holds the examples)."""
    path = Path(name).expanduser()
    for candidate in (path, conf_dir() / path):
        if candidate.is_file():
            return candidate
    tried = str(path) if path.is_absolute() else f"{path}, {conf_dir() / path}"
    raise ConfigError(f"{where}: no such file ({tried})")


def _assign(where: str, how: str) -> str:
    if how not in ASSIGNMENTS:
        raise ConfigError(f"{where}: must be one of {', '.join(ASSIGNMENTS)}, got {how!r}")
    return how


def _fleet(f: Any, topology: Topology, seed: int, hw: _Profiles) -> Topology:
    """``topology`` with every trainer given its own figures as the fleet section says."""
    where = "topology.fleet"
    table = []
    assign = "order"
    if f.devices.file is not None:
        path = fleet_file(f"{where}.devices.file", f.devices.file)
        assign = _assign(f"{where}.devices.assign", f.devices.assign)
        reference = f.devices.reference_ms_per_sample
        if reference is not None:
            _positive(f"{where}.devices.reference_ms_per_sample", reference)
        try:
            table = load_device_table(path, reference_ms_per_sample=reference)
        except TraceError as e:
            raise ConfigError(f"{where}.devices.file: {e}") from None
    names = sorted({row.hardware for row in table if row.hardware is not None})
    profiles = {n: hw(n, f"{where}.devices.file ({n})") for n in names}
    for key in SPREADS:
        _positive(f"{where}.spread.{key}", getattr(f.spread, key), allow_zero=True)
    spreads = Spreads(speed=f.spread.speed, bandwidth=f.spread.bandwidth, latency=f.spread.latency)
    if not topology.trainers:
        raise ConfigError(f"{where}: the topology has no trainers to vary")
    try:
        return heterogeneous(
            topology,
            topology.trainers,
            seed=seed,
            table=table,
            assign=assign,
            spreads=spreads,
            hardware=profiles,
        )
    except (FleetError, TopologyError) as e:
        raise ConfigError(f"{where}: {e}") from None


def build_availability(cfg: Any, topology: Topology) -> Availability | None:
    """When each trainer is online, from ``topology.fleet.availability`` (None: always)."""
    a = cfg.topology.fleet.availability
    where = "topology.fleet.availability"
    modelled = (a.mean_online_s, a.mean_offline_s)
    _positive(f"{where}.period_s", a.period_s)  # checked when unused too: a typo shows
    if a.file is None and all(v is None for v in modelled):
        return None
    seed = _fleet_seed(cfg)
    if a.file is not None:
        if any(v is not None for v in modelled):
            raise ConfigError(f"{where}: give a file or mean_online_s and mean_offline_s, not both")
        path = fleet_file(f"{where}.file", a.file)
        try:
            timelines = load_availability(path)
        except TraceError as e:
            raise ConfigError(f"{where}.file: {e}") from None
        assign = _assign(f"{where}.assign", a.assign)
        return assign_timelines(timelines, topology.trainers, seed=seed, assign=assign)
    if any(v is None for v in modelled):
        raise ConfigError(f"{where}: give a file, or both mean_online_s and mean_offline_s")
    for key in ("mean_online_s", "mean_offline_s"):
        _positive(f"{where}.{key}", getattr(a, key))
    return alternating(
        topology.trainers,
        seed=seed,
        mean_online_s=a.mean_online_s,
        mean_offline_s=a.mean_offline_s,
        period_s=a.period_s,
    )


def _generated(name: str, g: Any, hw: _Profiles, net: _Profiles) -> Topology:
    where = "topology.generate"
    for key in ("groups", "devices_per_group"):
        if getattr(g, key) < 1:
            raise ConfigError(f"{where}.{key}: must be >= 1, got {getattr(g, key)}")
    if not g.hardware:
        raise ConfigError(f"{where}.hardware: name at least one profile")
    kinds = [hw(h, f"{where}.hardware") for h in g.hardware]
    link, uplink = net(g.link, f"{where}.link"), net(g.uplink, f"{where}.uplink")
    groups = {
        0: Group(
            id=0, description="cloud group", uplink=net(g.cloud_uplink, f"{where}.cloud_uplink")
        )
    }
    devices = {
        0: Device(
            id=0,
            description="server",
            group=0,
            id_in_group=0,
            role="server",
            hardware=hw(g.server_hardware, f"{where}.server_hardware"),
            link=net(g.server_link, f"{where}.server_link"),
        )
    }
    for gid in range(1, g.groups + 1):
        groups[gid] = Group(id=gid, description=f"edge group {gid}", uplink=uplink)
        for j in range(g.devices_per_group):
            dev = len(devices)
            devices[dev] = Device(
                id=dev,
                description=f"trainer {dev}",
                group=gid,
                id_in_group=j,
                role="trainer",
                hardware=kinds[dev % len(kinds)],
                link=link,
            )
    return Topology(name, groups, devices)


def model_name(node: Any) -> str:
    """``workload.model`` as one name: a built-in's, or the import path of its ``_target_``
    (which takes no parameters there: ``num_classes`` comes from the workload)."""
    if isinstance(node, str):
        return node
    plain = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
    if not isinstance(plain, Mapping):
        raise ConfigError(f"workload.model: a model name or a _target_ node, got {plain!r}")
    try:
        path, params = split_target("workload.model", plain)
    except PluginError as e:
        raise ConfigError(str(e)) from None
    if params:
        raise ConfigError(
            f"workload.model: {path} is called with num_classes only, not "
            f"{', '.join(sorted(params))}; set those in a factory function of your own"
        )
    return path


def build_dataset(c: Any) -> DatasetSpec:
    path: str | None = None
    params: dict[str, Any] = {}
    if c.factory is not None:
        from fedsim.ml.data import FACTORY_ARGUMENTS, factory_arguments

        where = "workload.dataset.factory"
        plain = (
            OmegaConf.to_container(c.factory, resolve=True)
            if OmegaConf.is_config(c.factory)
            else c.factory
        )
        if not isinstance(plain, Mapping):
            raise ConfigError(f"{where}: must be a _target_ node, got {plain!r}")
        try:
            path, params = split_target(where, plain)
            make = plugin_factory(where, path)
            offered = dict.fromkeys(FACTORY_ARGUMENTS, 0)
            check_call(where, path, make, {**factory_arguments(make, offered), **params})
        except PluginError as e:
            raise ConfigError(str(e)) from None
    return DatasetSpec(
        name=c.name,
        samples=int(_positive("workload.dataset.samples", c.samples)),
        total_bytes=round(_positive("workload.dataset.total_gb", c.total_gb, scale=GB)),
        path=c.path,
        factory=path,
        factory_params=params,
    )


def check_workload(c: Any) -> None:
    for key in ("num_classes", "input_size", "batch_size", "samples_per_device", "epochs"):
        _positive(f"workload.{key}", getattr(c, key))


def clients_of(cfg: Any, topology: Topology) -> list[int]:
    clients = list(cfg.experiment.clients) or topology.trainers
    if not clients:
        raise ConfigError("experiment.clients: empty, and the topology has no trainers")
    for i, c in enumerate(clients):
        if c not in topology.devices:
            raise ConfigError(f"experiment.clients[{i}]: no device {c} in topology {topology.name}")
        if c == topology.server:
            raise ConfigError(f"experiment.clients[{i}]: device {c} is the server")
    if len(set(clients)) != len(clients):
        raise ConfigError("experiment.clients: a device is listed twice")
    return clients


def _logspace(where: str, r: Any, *, integer: bool) -> tuple:
    import numpy as np

    _positive(f"{where}.start", r.start)
    if not r.stop > r.start:
        raise ConfigError(f"{where}.stop: must be > start ({r.start}), got {r.stop}")
    if r.num < 2:
        raise ConfigError(f"{where}.num: must be >= 2, got {r.num}")
    values = np.geomspace(r.start, r.stop, int(r.num))
    if integer:
        return tuple(sorted({round(v) for v in values}))
    return tuple(float(v) for v in values)


def crossover_grid(c: Any) -> CrossoverGrid:
    return CrossoverGrid(
        link=c.link,
        bandwidth_mbps=_logspace("crossover.bandwidth_mbps", c.bandwidth_mbps, integer=False),
        samples_per_device=_logspace(
            "crossover.samples_per_device", c.samples_per_device, integer=True
        ),
    )
