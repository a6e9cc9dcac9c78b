"""``fedsim export-topology``: write a recorded fleet as a config the simulator replays.

From a live server (``--server URL --token-file F``, the admin token): its registry's devices
and groups, each device's measured hardware profile (what its agent reported, ``PUT
.../profile``) and its link as the agent's probe last measured it (``bandwidth_up``,
``bandwidth_down`` and ``rtt`` in the heartbeats' resources). From a local calibration
(``--calibration FILE``, a profile ``fedsim calibrate`` wrote): ``--devices`` trainers of that
hardware on links of ``--bandwidth-mbps`` and ``--latency-ms``.

It writes, under ``--out DIR``, a config directory Hydra adds to its search path::

    topology/NAME.yaml         the recorded devices and groups, one by one
    topology/NAME_fleet.yaml   a generated fleet, to scale, each trainer one of the recorded
                               devices drawn at random (hardware, link speed and latency)
    traces/NAME_devices.csv    the recorded devices as a device table (docs/fleets.md), which
                               NAME_fleet draws from as any other fleet draws from a table
    hardware/NAME_*.yaml       the measured profiles (kind: measured, with their source)
    network/NAME_*.yaml        the links, from the probe

and prints how to replay it::

    python -m fedsim --config-dir DIR +experiment=fl_digits topology=NAME
    python -m fedsim --config-dir DIR +experiment=fl_scale topology=NAME_fleet \\
        topology.generate.groups=100 topology.generate.devices_per_group=1000

How the measurements become a topology, and what that assumes:

- every registered device (not removed) is a trainer, in its registered group with its id in
  the group; the server, which the registry does not list, is one more device in a group of
  its own, with ``--server-hardware`` (a profile name of ``conf/hardware`` or a profile file,
  e.g. one ``fedsim calibrate`` wrote on the server's host);
- a device's link gets the probe's slower direction as its bandwidth (the simulator's links
  are symmetric) and half the round-trip time as its one-way latency: the probe measures the
  whole path to the server, so the whole of it sits on the device's own link, and the server's
  link and every group's uplink are fast and add no latency. An uplink carries as much as its
  devices' links together: the probe measures one device at a time and cannot tell whether
  they share a bottleneck (edit ``network/NAME_uplink_gK.yaml`` where they do).

Exit codes: 0 when written, 2 for a bad argument, a server that cannot be read, a fleet that
cannot be exported (a device with no measured profile or no probe yet), or files in ``--out``
that exist already without ``--force``, in one line.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import io
import itertools
import re
import statistics
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from fedsim.cli_args import OneLineParser
from fedsim.config import ConfigError, conf_dir, load_hardware_profile
from fedsim.core.topology import MEASURED
from fedsim.files import refuse_existing
from fedsim.real.protocol import Paths
from fedsim.remote import ServerCallError, server_call

PROG = "fedsim export-topology"
MBIT = 1e6 / 8  # bytes/s in one Mbit/s
# The server's side of every path: fast enough never to be the bottleneck, no latency (the
# probe's round trip is on the devices' links).
CORE_MBPS = 100_000.0
DEFAULT_SERVER_HARDWARE = "cloud_vm_8c"


class ExportError(ValueError):
    """A fleet that cannot be exported; the message names the device and what is missing."""


@dataclass(frozen=True, kw_only=True)
class Link:
    """A link as the simulator's network config describes it."""

    bandwidth_mbps: float
    latency_ms: float
    description: str

    def document(self) -> dict[str, Any]:
        return {
            "description": self.description,
            "bandwidth_mbps": self.bandwidth_mbps,
            "latency_ms": self.latency_ms,
            "loss": 0.0,
            "jitter_ms": 0.0,
        }


@dataclass(frozen=True, kw_only=True)
class Recorded:
    """One device of the recorded fleet."""

    id: int
    description: str
    group: int
    id_in_group: int
    hardware: dict[str, Any]  # a measured profile's fields
    link: Link


@dataclass(kw_only=True)
class Fleet:
    """What is exported: the devices, their groups' descriptions, where it was recorded."""

    devices: list[Recorded]
    groups: dict[int, str]
    origin: str
    server_hardware: dict[str, Any] | None = None  # a profile file's fields, else a name
    server_hardware_name: str = DEFAULT_SERVER_HARDWARE
    notes: list[str] = field(default_factory=list)


# -- reading a fleet -----------------------------------------------------------------------


def fleet_from_server(server: str, token: str) -> Fleet:
    """The fleet a live server's registry records (see the module docstring)."""
    base = server.rstrip("/")
    devices = _get(base + Paths.DEVICES, token)["devices"]
    groups = {g["id"]: g["description"] for g in _get(base + Paths.GROUPS, token)["groups"]}
    if not devices:
        raise ExportError(f"{server} has no registered devices")
    ids_in_group = _ids_in_group(devices)
    recorded = []
    for d in sorted(devices, key=lambda d: d["id"]):
        where = f"device {d['id']}"
        if not d.get("measured"):
            raise ExportError(
                f"{where} has reported no measured profile; start its agent with --calibrate "
                f"or ask for one: POST {Paths.DEVICE_CALIBRATE.format(id=d['id'])}"
            )
        res = d.get("resources") or {}
        missing = [k for k in ("bandwidth_up", "bandwidth_down", "rtt") if k not in res]
        if missing:
            raise ExportError(
                f"{where} has not reported {', '.join(missing)} yet (its agent's probe, "
                "--probe-interval > 0); try again after its first probe"
            )
        recorded.append(
            Recorded(
                id=int(d["id"]),
                description=d["description"] or f"device {d['id']}",
                group=int(d["group"]),
                id_in_group=ids_in_group[d["id"]],
                # The server shows a figure the agent did not report as null; a profile file
                # leaves it out (a null eval_steps, of an agent that measures none, would not
                # load).
                hardware={k: v for k, v in d["measured"].items() if v is not None},
                link=probe_link(
                    up_bps=res["bandwidth_up"],
                    down_bps=res["bandwidth_down"],
                    rtt_s=res["rtt"],
                    what=f"{where}'s path to the server, by its agent's probe",
                ),
            )
        )
    return Fleet(devices=recorded, groups=groups, origin=server)


def probe_link(*, up_bps: float, down_bps: float, rtt_s: float, what: str) -> Link:
    """A link of the probe's slower direction and half its round trip (one way)."""
    if not (up_bps > 0 and down_bps > 0 and rtt_s >= 0):
        raise ExportError(f"{what}: the probe's figures are not usable ({up_bps=}, {down_bps=})")
    return Link(
        bandwidth_mbps=min(up_bps, down_bps) / MBIT,
        latency_ms=rtt_s / 2 * 1e3,
        description=f"{what}: up {up_bps / MBIT:.4g} Mbit/s, down {down_bps / MBIT:.4g} Mbit/s, "
        f"round trip {rtt_s * 1e3:.4g} ms",
    )


def fleet_from_calibration(path: Path, *, devices: int, link: Link) -> Fleet:
    """``devices`` trainers in one group with the profile in ``path``, each on ``link``."""
    profile = _profile_file(path)
    recorded = [
        Recorded(
            id=i + 1,
            description=f"trainer {i + 1}",
            group=1,
            id_in_group=i,
            hardware=profile,
            link=link,
        )
        for i in range(devices)
    ]
    return Fleet(devices=recorded, groups={1: f"trainers like {path.stem}"}, origin=str(path))


def _profile_file(path: Path) -> dict[str, Any]:
    """A measured profile file's fields; :class:`ExportError` if it does not load as one."""
    try:
        profile = load_hardware_profile(path)
    except ConfigError as e:
        raise ExportError(f"{path}: {e}") from None
    except OSError as e:
        raise ExportError(f"{path}: {e.strerror or e}") from None
    if profile.kind != MEASURED:
        raise ExportError(f"{path}: not a measured profile (kind: {profile.kind})")
    document = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    assert isinstance(document, dict)
    return {str(k): v for k, v in document.items()}


def _ids_in_group(devices: Sequence[Mapping[str, Any]]) -> dict[int, int]:
    """Each device's id in its group: the one it registered, else the group's smallest free
    ones, in the order of the devices' ids."""
    ids: dict[int, int] = {}
    for group in sorted({d["group"] for d in devices}):
        members = sorted((d for d in devices if d["group"] == group), key=lambda d: d["id"])
        taken = {d["id_in_group"] for d in members if d.get("id_in_group") is not None}
        free = (i for i in itertools.count() if i not in taken)
        for d in members:
            given = d.get("id_in_group")
            ids[d["id"]] = int(given) if given is not None else next(free)
    return ids


def _get(url: str, token: str) -> dict[str, Any]:
    try:
        return server_call("GET", url, token)
    except ServerCallError as e:
        raise ExportError(str(e)) from None


# -- writing it ----------------------------------------------------------------------------


def write(fleet: Fleet, name: str, out: Path, command: str, *, force: bool = False) -> list[Path]:
    """Write the fleet's config files under ``out``; the paths written. ``FileExistsError``
    names the files that exist already, before any is written, unless ``force``."""
    today = datetime.date.today().isoformat()
    header = f"# Exported by `{command}` from {fleet.origin}, {today}.\n"
    files: dict[Path, tuple[str, dict[str, Any]]] = {}

    # One profile per device: devices that measured alike still measured separately.
    hardware_of: dict[int, str] = {}
    network_of: dict[int, str] = {}
    for d in fleet.devices:
        hardware_of[d.id] = f"{name}_dev{d.id}"
        network_of[d.id] = f"{name}_dev{d.id}"
        files[Path("hardware", f"{hardware_of[d.id]}.yaml")] = (
            f"# The measured profile device {d.id} ({d.description}) reported.\n",
            d.hardware,
        )
        files[Path("network", f"{network_of[d.id]}.yaml")] = (
            f"# Device {d.id}'s link.\n",
            d.link.document(),
        )
    server_id = max(d.id for d in fleet.devices) + 1
    server_group = max(fleet.groups.keys() | {d.group for d in fleet.devices}) + 1
    server_hw = fleet.server_hardware_name
    if fleet.server_hardware is not None:
        server_hw = f"{name}_server"
        files[Path("hardware", f"{server_hw}.yaml")] = (
            "# The server's profile, as given to the export.\n",
            fleet.server_hardware,
        )
    core = f"{name}_core"
    files[Path("network", f"{core}.yaml")] = (
        "# The server's side: the probe's whole path is on the devices' own links.\n",
        Link(bandwidth_mbps=CORE_MBPS, latency_ms=0.0, description="the server's side").document(),
    )
    groups = sorted({d.group for d in fleet.devices})
    for g in groups:
        members = [d for d in fleet.devices if d.group == g]
        files[Path("network", f"{name}_uplink_g{g}.yaml")] = (
            f"# Group {g}'s uplink: as much as its devices' links together (the probe cannot\n"
            "# tell whether they share a bottleneck; lower it where they do).\n",
            Link(
                bandwidth_mbps=sum(d.link.bandwidth_mbps for d in members),
                latency_ms=0.0,
                description=f"group {g}'s uplink",
            ).document(),
        )

    hardware_names = sorted(set(hardware_of.values()))
    networks = sorted({*network_of.values(), core, *(f"{name}_uplink_g{g}" for g in groups)})
    topology = {
        "defaults": [
            *(_include("hardware", h) for h in [*hardware_names, server_hw]),
            *(_include("network", n) for n in networks),
        ],
        "name": name,
        "description": f"recorded from {fleet.origin} on {today}",
        "groups": [
            {"id": g, "description": fleet.groups.get(g, ""), "uplink": f"{name}_uplink_g{g}"}
            for g in groups
        ]
        + [{"id": server_group, "description": "server", "uplink": core}],
        "devices": [
            {
                "id": server_id,
                "description": "server",
                "group": server_group,
                "id_in_group": 0,
                "role": "server",
                "hardware": server_hw,
                "link": {"network": core},
            }
        ]
        + [
            {
                "id": d.id,
                "description": d.description,
                "group": d.group,
                "id_in_group": d.id_in_group,
                "role": "trainer",
                "hardware": hardware_of[d.id],
                "link": {"network": network_of[d.id]},
            }
            for d in fleet.devices
        ],
    }
    replay = (
        f"# Replay: python -m fedsim --config-dir {out} +experiment=fl_digits topology={name}\n"
    )
    files[Path("topology", f"{name}.yaml")] = (
        f"# The recorded fleet, device by device.\n{replay}",
        topology,
    )

    # The recorded devices as a device table: a generated fleet draws its trainers from it.
    table = Path("traces", f"{name}_devices.csv")
    rows = [
        [d.id, hardware_of[d.id], d.link.bandwidth_mbps * 1e3, d.link.latency_ms]
        for d in fleet.devices
    ]
    # The generated fleet: trainers start from the median link and the recorded kinds of
    # hardware, then each takes a recorded device's hardware and link (the table's rows).
    fleet_link, fleet_uplink = f"{name}_link", f"{name}_uplink"
    links = [d.link for d in fleet.devices]
    files[Path("network", f"{fleet_link}.yaml")] = (
        "# The recorded devices' median link.\n",
        Link(
            bandwidth_mbps=statistics.median(lk.bandwidth_mbps for lk in links),
            latency_ms=statistics.median(lk.latency_ms for lk in links),
            description="the recorded devices' median link",
        ).document(),
    )
    per_group = max(sum(d.group == g for d in fleet.devices) for g in groups)
    files[Path("network", f"{fleet_uplink}.yaml")] = (
        "# A generated group's uplink: the median link times the recorded group size.\n",
        Link(
            bandwidth_mbps=statistics.median(lk.bandwidth_mbps for lk in links) * per_group,
            latency_ms=0.0,
            description="a generated group's uplink",
        ).document(),
    )
    generated = {
        "defaults": [
            *(_include("hardware", h) for h in [*hardware_names, server_hw]),
            *(_include("network", n) for n in (fleet_link, fleet_uplink, core)),
        ],
        "name": f"{name}_fleet",
        "description": f"generated from the kinds of device recorded at {fleet.origin}",
        "generate": {
            "groups": len(groups),
            "devices_per_group": per_group,
            "hardware": hardware_names,
            "link": fleet_link,
            "uplink": fleet_uplink,
            "server_hardware": server_hw,
            "server_link": core,
            "cloud_uplink": core,
        },
        # Absolute: the table lives beside this file, wherever --config-dir is run from.
        "fleet": {"devices": {"file": str((out / table).resolve()), "assign": "sample"}},
    }
    files[Path("topology", f"{name}_fleet.yaml")] = (
        "# The recorded devices as a generated fleet; scale it with\n"
        "# topology.generate.groups=G topology.generate.devices_per_group=N\n"
        "# (each trainer is a recorded device drawn at random, by the run's seed).\n"
        + replay.replace(f"topology={name}", f"topology={name}_fleet"),
        generated,
    )

    texts = {
        out / relative: header + comment + _yaml(document)
        for relative, (comment, document) in sorted(files.items())
    }
    csv_text = io.StringIO()
    writer = csv.writer(csv_text, lineterminator="\n")
    writer.writerow(["client_id", "hardware", "communication", "latency_ms"])
    writer.writerows(rows)
    texts[out / table] = csv_text.getvalue()
    refuse_existing(texts, force=force)
    for path, text in texts.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return list(texts)


def _include(group: str, name: str) -> str:
    """A defaults entry that puts profile ``group/name`` at ``group.name``."""
    return f"/{group}@_global_.{group}.{name}: {name}"


def _yaml(document: Mapping[str, Any]) -> str:
    text = OmegaConf.to_yaml(OmegaConf.create(dict(document)))
    # A defaults entry is written "key: value" in a list; OmegaConf would quote it as a string.
    return re.sub(r"^- '(.*)'$", r"- \1", text, flags=re.MULTILINE)


# -- the command ---------------------------------------------------------------------------


def _name(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_-]*", text):
        raise argparse.ArgumentTypeError(
            f"{text!r}: use letters, digits, '_' and '-' (it names files and config keys)"
        )
    return text


def _positive(kind: type) -> Any:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog=PROG,
        description=(
            "Write a recorded fleet (a live server's registry: devices, groups, measured "
            "profiles, probed links; or a local calibration) as topology, hardware and "
            "network configs that `python -m fedsim --config-dir DIR ... topology=NAME` "
            "replays in the simulator, device by device or scaled up (NAME_fleet)."
        ),
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--server", metavar="URL", help="a running fedsim server's base URL")
    source.add_argument(
        "--calibration",
        type=Path,
        metavar="FILE",
        help="a measured profile (fedsim calibrate --out FILE) to build a fleet of",
    )
    p.add_argument(
        "--token-file",
        type=Path,
        metavar="FILE",
        help="a file holding the server's admin token (with --server)",
    )
    p.add_argument("--name", type=_name, required=True, help="the topology's name")
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="DIR",
        help="the config directory to write (topology/, hardware/, network/ under it)",
    )
    p.add_argument("--force", action="store_true", help="replace files in --out that exist already")
    p.add_argument(
        "--server-hardware",
        default=DEFAULT_SERVER_HARDWARE,
        metavar="NAME|FILE",
        help=(
            "the server's hardware: a profile of conf/hardware, or a profile file such as "
            "`fedsim calibrate` writes on the server's host (default: %(default)s)"
        ),
    )
    p.add_argument(
        "--devices",
        type=_positive(int),
        default=3,
        metavar="N",
        help="with --calibration: how many trainers (default: %(default)s)",
    )
    p.add_argument(
        "--bandwidth-mbps",
        type=_positive(float),
        default=1000.0,
        metavar="X",
        help="with --calibration: each trainer's link, Mbit/s (default: %(default)g)",
    )
    p.add_argument(
        "--latency-ms",
        type=float,
        default=0.2,
        metavar="X",
        help="with --calibration: each link's one-way latency, ms (default: %(default)g)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Export the fleet ``argv`` names; the process's exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    command = " ".join([PROG, *(argv if argv is not None else sys.argv[2:])])
    try:
        if args.server is not None:
            if args.token_file is None:
                parser.error("--server needs --token-file (the admin token)")
            try:
                token = args.token_file.read_text().strip()
            except OSError as e:
                parser.error(f"--token-file {args.token_file}: {e.strerror or e}")
            fleet = fleet_from_server(args.server, token)
        else:
            if args.latency_ms < 0:
                parser.error(f"--latency-ms must be >= 0, got {args.latency_ms:g}")
            link = Link(
                bandwidth_mbps=args.bandwidth_mbps,
                latency_ms=args.latency_ms,
                description="a trainer's link, as given to the export",
            )
            fleet = fleet_from_calibration(args.calibration, devices=args.devices, link=link)
        server_hw = Path(args.server_hardware)
        if server_hw.suffix == ".yaml":
            fleet.server_hardware = _profile_file(server_hw)
        elif not (conf_dir() / "hardware" / f"{args.server_hardware}.yaml").is_file():
            parser.error(
                f"--server-hardware {args.server_hardware!r}: neither a .yaml file nor a "
                "profile of conf/hardware"
            )
        else:
            fleet.server_hardware_name = args.server_hardware
        written = write(fleet, args.name, args.out, command, force=args.force)
    except (ExportError, FileExistsError) as e:
        parser.error(str(e))
    except OSError as e:
        parser.error(f"--out {args.out}: {e.strerror or e}")
    trainers = len(fleet.devices)
    print(f"{args.name}: {trainers} trainer{'s' * (trainers != 1)} in {len(written)} files")
    print(
        f"replay:   python -m fedsim --config-dir {args.out} +experiment=fl_digits "
        f"topology={args.name}"
    )
    print(
        f"at scale: python -m fedsim --config-dir {args.out} +experiment=fl_scale "
        f"topology={args.name}_fleet topology.generate.groups=G "
        "topology.generate.devices_per_group=N"
    )
    return 0
