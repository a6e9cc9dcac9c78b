"""``fedsim k8s-manifests``: valid Kubernetes objects, one agent per device on its node, and
arguments that the real ``fedsim server`` and ``fedsim agent`` command lines accept."""

from __future__ import annotations

import base64
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import numpy as np
import pytest
import yaml

from fedsim.__main__ import SUBCOMMANDS
from fedsim.config import conf_dir
from fedsim.deploy import cli
from fedsim.deploy.common import (
    HEALTH_PATH,
    LABEL_DEVICE,
    LABEL_GROUP,
    ManifestOptions,
)
from fedsim.deploy.k8s import build_manifests
from fedsim.deploy.placement import placements
from fedsim.report.grafana import grafana_files

# The Kubernetes release every manifest must be valid for; kubernetes-validate ships its
# schemas, so the check runs offline.
K8S_VERSION = "1.32.0"
SMALL_FLEET = ("topology.generate.groups=3", "topology.generate.devices_per_group=4")
NODE_IP, NODE_NAME = "10.1.2.3", "edge-node-7"


def generate(out: Path, *args: str) -> Path:
    assert cli.main([str(out), *args]) == 0
    return out


def documents(out: Path) -> dict[str, list[dict[str, Any]]]:
    """File name -> its YAML documents, for every manifest in ``out`` but the kustomization."""
    return {
        path.name: [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        for path in sorted(out.glob("*.yaml"))
        if path.name != "kustomization.yaml"
    }


def objects(out: Path) -> list[dict[str, Any]]:
    return [obj for docs in documents(out).values() for obj in docs]


def by_kind(objs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objs if o["kind"] == kind}


def agents(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        o
        for o in objs
        if o["kind"] == "Deployment"
        and o["metadata"]["labels"].get("app.kubernetes.io/component") == "agent"
    ]


def container(obj: dict[str, Any], name: str | None = None) -> dict[str, Any]:
    containers = obj["spec"]["template"]["spec"]["containers"]
    return containers[0] if name is None else next(c for c in containers if c["name"] == name)


def expand(args: list[str], env: list[dict[str, Any]], values: dict[str, str]) -> list[str]:
    """``$(VAR)`` in ``args`` as the kubelet expands it: only from the container's env.

    A reference to a variable the container does not define would stay literal in the pod,
    so it fails here.
    """
    defined = {e["name"] for e in env}

    def sub(m: re.Match) -> str:
        assert m.group(1) in defined, f"$({m.group(1)}) is not in the container's env"
        return values[m.group(1)]

    return [re.sub(r"\$\((\w+)\)", sub, a) for a in args]


def mount_path(obj: dict[str, Any], volume: str, name: str | None = None) -> str:
    return next(m["mountPath"] for m in container(obj, name)["volumeMounts"] if m["name"] == volume)


@pytest.fixture(scope="module")
def keti(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("keti"), "--topology", "keti_testbed")


@pytest.fixture(scope="module")
def fleet(tmp_path_factory) -> Path:
    sets = [a for s in SMALL_FLEET for a in ("--set", s)]
    return generate(tmp_path_factory.mktemp("fleet"), "--topology", "edge_fleet", *sets)


# -- schema validity ------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["keti", "fleet"])
def test_every_manifest_is_valid_for_the_pinned_kubernetes(which, request):
    out = request.getfixturevalue(which)

    docs = documents(out)

    assert set(docs) >= {"namespace.yaml", "server.yaml", "node-exporter.yaml", "grafana.yaml"}
    for name, objs in docs.items():
        assert objs, f"{name} is empty"
        for obj in objs:
            # strict: an unknown field (a typo) is an error, not silently dropped
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_a_manifest_with_a_typo_fails_validation(keti):
    # The check above can fail: the same validator rejects a misspelt field.
    server = by_kind(objects(keti), "Deployment")["fedsim-server"]
    server["spec"]["template"]["spec"]["nodeSelecter"] = server["spec"]["template"]["spec"].pop(
        "nodeSelector"
    )

    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(server, K8S_VERSION, strict=True)


def test_kustomization_lists_every_manifest_and_its_secret_files(keti):
    kustomization = yaml.safe_load((keti / "kustomization.yaml").read_text())

    resources = kustomization["resources"]
    assert sorted(resources) == sorted(documents(keti)) and len(set(resources)) == len(resources)
    assert resources[:2] == ["namespace.yaml", "server.yaml"]  # the namespace first
    assert kustomization["namespace"] == "fedsim"
    for generator in kustomization["secretGenerator"]:
        for entry in generator["files"]:
            _, _, path = entry.partition("=")
            assert (keti / path).is_file()


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="needs kubectl (kustomize)")
def test_kustomize_build_is_valid_and_wires_the_generated_secrets(keti):
    built = subprocess.run(
        ["kubectl", "kustomize", str(keti)], capture_output=True, text=True, check=True
    ).stdout
    objs = [d for d in yaml.safe_load_all(built) if d]

    for obj in objs:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    secrets = by_kind(objs, "Secret")
    tokens = next(s for name, s in secrets.items() if name.startswith("fedsim-tokens-"))
    for key in ("admin-token", "viewer-token", "enrollment-token"):
        value = base64.b64decode(tokens["data"][key]).decode()
        assert value == (keti / "secrets" / key).read_text()
    # Every reference to the Secret now names the generated one (with its hash suffix).
    refs = re.findall(r"(?:name|secretName): (fedsim-tokens\S*)", built)
    assert refs and set(refs) == {tokens["metadata"]["name"]}


# -- one agent per device, on its node -------------------------------------------------------


@pytest.mark.parametrize(
    ("which", "topology", "overrides"),
    [("keti", "keti_testbed", ()), ("fleet", "edge_fleet", SMALL_FLEET)],
)
def test_each_device_gets_exactly_one_agent_on_its_node(which, topology, overrides, request):
    out = request.getfixturevalue(which)
    expected = placements(topology, conf_dir(), overrides).devices

    found: dict[int, list[dict[str, Any]]] = {}
    for agent in agents(objects(out)):
        device = int(agent["spec"]["template"]["spec"]["nodeSelector"][LABEL_DEVICE])
        found.setdefault(device, []).append(agent)

    assert sorted(found) == [p.device for p in expected]
    for p in expected:
        (agent,) = found[p.device]
        pod = agent["spec"]["template"]
        assert agent["spec"]["replicas"] == 1
        assert agent["spec"]["strategy"]["type"] == "Recreate"
        assert pod["spec"]["nodeSelector"] == {
            LABEL_DEVICE: str(p.device),
            LABEL_GROUP: str(p.group),
        }
        # The selector picks this device's pod only.
        assert agent["spec"]["selector"]["matchLabels"][LABEL_DEVICE] == str(p.device)
        assert pod["metadata"]["labels"][LABEL_DEVICE] == str(p.device)
        args = container(agent)["args"]
        assert args[args.index("--device-id") + 1] == str(p.device)
        tolerations = pod["spec"]["tolerations"]
        assert {"key": "fedsim.io/edge", "operator": "Exists", "effect": "NoSchedule"} in (
            tolerations
        )
    # Agents of a group share its file.
    groups = {p.group for p in expected}
    assert {f"agents-group-{g}.yaml" for g in groups} <= set(documents(out))


@pytest.mark.slow
def test_the_full_edge_fleet_gets_one_agent_per_device():
    # Prepare: 100,001 devices; building the objects (not writing them) is enough here.
    topology = placements("edge_fleet", conf_dir())

    # Execute
    files = build_manifests(topology, ManifestOptions())

    # Assert
    devices = [
        a["spec"]["template"]["spec"]["nodeSelector"][LABEL_DEVICE]
        for name, objs in files.items()
        if name.startswith("agents-group-")
        for a in objs
    ]
    assert len(devices) == len(topology.devices) == 100_001
    assert sorted(map(int, devices)) == sorted(p.device for p in topology.devices)


def test_gpu_is_requested_only_where_the_profile_trains_on_one(keti):
    # keti_testbed: the server (8x Titan Xp) and the two GTX 1080 trainers train on GPUs; the
    # i7 CPU trainer, the service VMs, the Raspberry Pis and the camera do not.
    gpu_devices = {0, 4, 8}
    requested = {
        int(a["spec"]["template"]["spec"]["nodeSelector"][LABEL_DEVICE])
        for a in agents(objects(keti))
        if "resources" in container(a)
    }
    assert requested == gpu_devices

    for agent in agents(objects(keti)):
        device = int(agent["spec"]["template"]["spec"]["nodeSelector"][LABEL_DEVICE])
        c = container(agent)
        args = c["args"]
        torch_device = args[args.index("--torch-device") + 1]
        if device in gpu_devices:
            assert c["resources"] == {"limits": {"nvidia.com/gpu": 1}}
            assert torch_device == "cuda"
            assert c["image"] == "ghcr.io/fedsim/fedsim:0.1.0-cuda"
        else:
            assert "resources" not in c
            assert torch_device == "cpu"
            assert c["image"] == "ghcr.io/fedsim/fedsim:0.1.0"


def test_a_gpu_the_profile_does_not_train_on_is_not_requested(tmp_path):
    # The GTX 1080 clients set to train on their CPU: only the server's agent keeps a GPU.
    out = generate(
        tmp_path, "--topology", "keti_testbed", "--set", "hardware.client_i7_gtx1080.train_on=cpu"
    )

    requested = {
        a["spec"]["template"]["spec"]["nodeSelector"][LABEL_DEVICE]
        for a in agents(objects(out))
        if "resources" in container(a)
    }
    assert requested == {"0"}


def test_gpu_resource_and_images_are_options(tmp_path):
    out = generate(
        tmp_path,
        "--topology",
        "keti_testbed",
        "--gpu-resource",
        "amd.com/gpu",
        "--image",
        "registry.local:5000/fedsim:dev",
    )

    gpus = [
        c["resources"]["limits"] for a in agents(objects(out)) if "resources" in (c := container(a))
    ]
    assert gpus == [{"amd.com/gpu": 1}] * 3
    images = {container(a)["image"] for a in agents(objects(out))}
    assert images == {"registry.local:5000/fedsim:dev", "registry.local:5000/fedsim:dev-cuda"}


# -- the arguments parse with the real command lines ----------------------------------------


def test_agent_args_parse_with_the_agent_command_line(keti, monkeypatch):
    from fedsim.real.agent.cli import parse_config

    monkeypatch.setenv("FEDSIM_ENROLLMENT_TOKEN", "enrollment-token-from-the-secret")
    expected = {p.device: p for p in placements("keti_testbed", conf_dir()).devices}
    service = by_kind(objects(keti), "Service")["fedsim-server"]

    for agent in agents(objects(keti)):
        c = container(agent)
        args = expand(c["args"], c["env"], {"NODE_IP": NODE_IP, "NODE_NAME": NODE_NAME})
        assert args[0] == "agent" and SUBCOMMANDS["agent"].module == "fedsim.real.agent.cli"

        config, _ = parse_config(args[1:])

        p = expected[config.device_id]
        assert (config.group, config.id_in_group) == (p.group, p.id_in_group)
        assert (config.profile, config.description) == (p.profile, p.description)
        assert config.group_description == p.group_description
        assert config.enrollment_token == "enrollment-token-from-the-secret"
        assert str(config.state_dir) == mount_path(agent, "state")
        assert config.node_exporter == f"http://{NODE_IP}:9100/metrics"
        assert config.labels == {"k8s_node": NODE_NAME}
        assert config.metrics_host == "0.0.0.0"
        assert config.metrics_port == c["ports"][0]["containerPort"]
        # The server URL is the Service's name in the namespace, at the Service's port.
        url = urlsplit(config.server)
        assert url.hostname == f"{service['metadata']['name']}.fedsim.svc"
        assert url.port == service["spec"]["ports"][0]["port"]
        env = {e["name"]: e["valueFrom"] for e in c["env"]}
        assert env["NODE_IP"] == {"fieldRef": {"fieldPath": "status.hostIP"}}
        assert env["FEDSIM_ENROLLMENT_TOKEN"]["secretKeyRef"] == {
            "name": "fedsim-tokens",
            "key": "enrollment-token",
        }


def test_agent_state_dir_is_on_the_node_one_per_device(keti):
    paths = {}
    for agent in agents(objects(keti)):
        spec = agent["spec"]["template"]["spec"]
        device = spec["nodeSelector"][LABEL_DEVICE]
        (state,) = [v for v in spec["volumes"] if v["name"] == "state"]
        paths[device] = state["hostPath"]["path"]
        # The init container that hands it to the agent's user mounts the same volume.
        (init,) = spec["initContainers"]
        assert init["volumeMounts"] == [{"name": "state", "mountPath": mount_path(agent, "state")}]
        assert init["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["CHOWN"]}
        assert container(agent)["securityContext"]["allowPrivilegeEscalation"] is False
    assert paths == {d: f"/var/lib/fedsim/device-{d}" for d in paths}


def test_agent_data_on_the_node_is_mounted_read_only_and_parses(tmp_path, monkeypatch):
    from fedsim.real.agent.cli import parse_config

    shard = tmp_path / "shard.npz"
    # The agent checks at start that the file holds arrays X and y.
    np.savez(shard, X=np.zeros((2, 1, 8, 8), np.float32), y=np.zeros(2, np.int64))
    out = generate(tmp_path / "out", "--topology", "keti_testbed", "--agent-data", str(shard))
    monkeypatch.setenv("FEDSIM_ENROLLMENT_TOKEN", "t")

    for agent in agents(objects(out)):
        spec = agent["spec"]["template"]["spec"]
        c = container(agent)
        config, _ = parse_config(
            expand(c["args"], c["env"], {"NODE_IP": NODE_IP, "NODE_NAME": "n"})[1:]
        )
        assert config.data == str(shard)
        (volume,) = [v for v in spec["volumes"] if v["name"] == "data"]
        assert volume["hostPath"] == {"path": str(shard), "type": "File"}
        (mount,) = [m for m in c["volumeMounts"] if m["name"] == "data"]
        assert mount == {"name": "data", "mountPath": str(shard), "readOnly": True}


def test_server_args_parse_with_the_server_command_line(keti):
    from fedsim.real.server.cli import parser

    objs = objects(keti)
    server = by_kind(objs, "Deployment")["fedsim-server"]
    c = container(server)
    assert c["args"][0] == "server" and SUBCOMMANDS["server"].module == "fedsim.real.server.cli"

    args = parser().parse_args(c["args"][1:])

    assert args.host == "0.0.0.0"
    assert args.port == c["ports"][0]["containerPort"]
    assert str(args.data_dir) == mount_path(server, "data")
    # Tokens come from the Secret through the environment, never the command line.
    assert not any(hasattr(args, f"{t}_token") for t in ("admin", "viewer", "enrollment"))
    env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in c["env"]}
    assert env == {
        "FEDSIM_ADMIN_TOKEN": {"name": "fedsim-tokens", "key": "admin-token"},
        "FEDSIM_VIEWER_TOKEN": {"name": "fedsim-tokens", "key": "viewer-token"},
        "FEDSIM_ENROLLMENT_TOKEN": {"name": "fedsim-tokens", "key": "enrollment-token"},
    }
    spec = server["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    (volume,) = [v for v in spec["template"]["spec"]["volumes"] if v["name"] == "data"]
    claim = volume["persistentVolumeClaim"]["claimName"]
    assert claim in by_kind(objs, "PersistentVolumeClaim")
    # The server runs on the topology's server device.
    assert spec["template"]["spec"]["nodeSelector"] == {LABEL_DEVICE: "0", LABEL_GROUP: "0"}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"] == {"path": HEALTH_PATH, "port": "http"}


@pytest.mark.asyncio
async def test_the_probed_paths_are_served_by_the_real_server(keti, tmp_path, aiohttp_client):
    from fedsim.real.server.app import init_app
    from fedsim.real.server.config import ServerConfig

    server = by_kind(objects(keti), "Deployment")["fedsim-server"]
    paths = {container(server)[p]["httpGet"]["path"] for p in ("startupProbe", "livenessProbe")}
    app = init_app(ServerConfig(data_dir=tmp_path, admin_token="a", enrollment_token="e"))
    client = await aiohttp_client(app)

    for path in sorted(paths | {"/metrics"}):  # /metrics: Prometheus's server job
        response = await client.get(path)
        assert response.status == 200, path


@pytest.mark.asyncio
async def test_prometheus_token_is_a_viewer_of_the_server_it_discovers_through(
    keti, tmp_path, aiohttp_client
):
    from fedsim.real.protocol import Paths
    from fedsim.real.server.app import init_app
    from fedsim.real.server.cli import ADMIN_ENV, ENROLLMENT_ENV, VIEWER_ENV
    from fedsim.real.server.config import ServerConfig

    objs = objects(keti)
    server_env = {
        e["name"]: e["valueFrom"]["secretKeyRef"]["key"]
        for e in container(by_kind(objs, "Deployment")["fedsim-server"])["env"]
    }
    prometheus = by_kind(objs, "Deployment")["prometheus"]
    (volume,) = [
        v for v in prometheus["spec"]["template"]["spec"]["volumes"] if v["name"] == "token"
    ]
    (item,) = volume["secret"]["items"]
    # What the kubelet does: each variable holds its key's file from secrets/; the server's
    # command line reads these variables.
    env = {name: (keti / "secrets" / key).read_text() for name, key in server_env.items()}
    assert set(env) == {ADMIN_ENV, VIEWER_ENV, ENROLLMENT_ENV}
    config = ServerConfig(
        data_dir=tmp_path,
        admin_token=env[ADMIN_ENV],
        viewer_token=env[VIEWER_ENV],
        enrollment_token=env[ENROLLMENT_ENV],
    )
    client = await aiohttp_client(init_app(config))
    prometheus_token = (keti / "secrets" / item["key"]).read_text()
    auth = {"Authorization": f"Bearer {prometheus_token}"}

    discovery = await client.get(Paths.SD_TARGETS, headers=auth)
    change = await client.post(Paths.JOBS, headers=auth, json={})

    assert discovery.status == 200
    assert change.status == 403  # read-only: not the admin token
    assert prometheus_token != config.admin_token


# -- monitoring -------------------------------------------------------------------------------


def test_node_exporter_runs_on_every_device_node_where_agents_point(keti):
    objs = objects(keti)
    (daemon,) = by_kind(objs, "DaemonSet").values()
    spec = daemon["spec"]["template"]["spec"]

    assert spec["hostNetwork"] is True
    (port,) = container(daemon)["ports"]
    assert port["containerPort"] == port["hostPort"] == 9100
    terms = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert terms["nodeSelectorTerms"] == [
        {"matchExpressions": [{"key": LABEL_DEVICE, "operator": "Exists"}]}
    ]
    for agent in agents(objs):
        args = container(agent)["args"]
        url = urlsplit(args[args.index("--node-exporter") + 1])
        assert (url.hostname, url.port) == ("$(node_ip)", port["hostPort"])


def test_prometheus_discovers_devices_through_the_server_service(keti):
    objs = objects(keti)
    config = yaml.safe_load(
        by_kind(objs, "ConfigMap")["prometheus-config"]["data"]["prometheus.yml"]
    )
    prometheus = by_kind(objs, "Deployment")["prometheus"]

    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    assert jobs["fedsim-server"]["static_configs"][0]["targets"] == [
        "fedsim-server.fedsim.svc:8080"
    ]
    (sd,) = jobs["fedsim-devices"]["http_sd_configs"]
    assert sd["url"] == "http://fedsim-server.fedsim.svc:8080/api/v1/sd/targets"
    # The viewer token file is the Secret's key, mounted where the configuration says; the
    # admin token stays out of Prometheus's pod.
    token_file = Path(sd["authorization"]["credentials_file"])
    assert mount_path(prometheus, "token") == str(token_file.parent)
    spec = prometheus["spec"]["template"]["spec"]
    (token,) = [v for v in spec["volumes"] if v["name"] == "token"]
    assert token["secret"] == {
        "secretName": "fedsim-tokens",
        "items": [{"key": "viewer-token", "path": token_file.name}],
    }
    config_arg = next(a for a in container(prometheus)["args"] if a.startswith("--config.file="))
    assert config_arg == f"--config.file={mount_path(prometheus, 'config')}/prometheus.yml"


@pytest.mark.skipif(shutil.which("promtool") is None, reason="needs promtool")
def test_prometheus_config_passes_promtool(keti, tmp_path):
    config = by_kind(objects(keti), "ConfigMap")["prometheus-config"]["data"]["prometheus.yml"]
    path = tmp_path / "prometheus.yml"
    path.write_text(config)

    check = subprocess.run(
        ["promtool", "check", "config", str(path)], capture_output=True, text=True
    )

    assert check.returncode == 0, check.stdout + check.stderr


def test_grafana_mounts_its_provisioning_and_dashboards_where_they_point(keti):
    objs = objects(keti)
    grafana = by_kind(objs, "Deployment")["grafana"]
    maps = by_kind(objs, "ConfigMap")
    expected = grafana_files(prometheus_url="http://prometheus.fedsim.svc:9090")

    mounted: dict[str, str] = {}
    volumes = {v["name"]: v for v in grafana["spec"]["template"]["spec"]["volumes"]}
    for mount in container(grafana)["volumeMounts"]:
        source = volumes[mount["name"]].get("configMap")
        if source:
            for name, text in maps[source["name"]]["data"].items():
                mounted[f"{mount['mountPath']}/{name}"] = text

    providers = yaml.safe_load(mounted["/etc/grafana/provisioning/dashboards/fedsim.yaml"])
    dashboards = providers["providers"][0]["options"]["path"]
    for path, text in expected.items():
        directory, name = path.rsplit("/", 1)
        where = dashboards if directory == "dashboards" else f"/etc/grafana/{directory}"
        assert mounted[f"{where}/{name}"] == text
    datasources = yaml.safe_load(mounted["/etc/grafana/provisioning/datasources/fedsim.yaml"])
    service = by_kind(objs, "Service")["prometheus"]
    port = service["spec"]["ports"][0]["port"]
    assert datasources["datasources"][0]["url"] == f"http://prometheus.fedsim.svc:{port}"


# -- output: stable, secrets apart -----------------------------------------------------------


def _manifest_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file()}


def test_same_input_gives_byte_identical_manifests(tmp_path):
    a = generate(tmp_path / "a", "--topology", "keti_testbed")
    b = generate(tmp_path / "b", "--topology", "keti_testbed")

    assert _manifest_bytes(a) == _manifest_bytes(b)
    assert len(_manifest_bytes(a)) == 9  # 8 manifests and the kustomization
    # The secrets are the only difference: fresh tokens for each new directory.
    assert (a / "secrets" / "admin-token").read_text() != (
        b / "secrets" / "admin-token"
    ).read_text()


def test_secrets_are_random_private_and_kept_on_regeneration(tmp_path):
    out = generate(tmp_path / "out", "--topology", "keti_testbed")
    secrets = out / "secrets"
    before = {p.name: p.read_text() for p in secrets.iterdir()}

    generate(out, "--topology", "keti_testbed")

    assert {p.name: p.read_text() for p in secrets.iterdir()} == before
    assert stat.S_IMODE(secrets.stat().st_mode) == 0o700
    tokens = [p for p in secrets.iterdir() if p.name != ".gitignore"]
    assert sorted(p.name for p in tokens) == [
        "admin-token",
        "enrollment-token",
        "grafana-admin-password",
        "viewer-token",
    ]
    for path in tokens:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert re.fullmatch(r"[A-Za-z0-9_-]{43}", path.read_text())
    assert len({p.read_text() for p in tokens}) == 4
    # No token appears in any manifest.
    text = "".join(p.read_text() for p in out.glob("*.yaml"))
    assert not any(p.read_text() in text for p in tokens)


def test_an_output_from_before_the_viewer_token_gains_one_and_keeps_the_others(tmp_path):
    out = generate(tmp_path / "out", "--topology", "keti_testbed")
    secrets = out / "secrets"
    (secrets / "viewer-token").unlink()
    before = {p.name: p.read_text() for p in secrets.iterdir()}

    generate(out, "--topology", "keti_testbed")

    after = {p.name: p.read_text() for p in secrets.iterdir()}
    assert set(after) == set(before) | {"viewer-token"}
    assert {k: after[k] for k in before} == before
    assert after["viewer-token"] not in before.values()


def test_user_supplied_secrets_are_used_as_they_are(tmp_path):
    out = tmp_path / "out"
    (out / "secrets").mkdir(parents=True)
    (out / "secrets" / "enrollment-token").write_text("my-own-enrollment-token")

    generate(out, "--topology", "keti_testbed")

    assert (out / "secrets" / "enrollment-token").read_text() == "my-own-enrollment-token"
    assert (out / "secrets" / "admin-token").exists()


def test_regeneration_removes_files_the_topology_no_longer_needs(tmp_path):
    out = generate(
        tmp_path / "out",
        "--topology",
        "edge_fleet",
        "--set",
        SMALL_FLEET[0],
        "--set",
        SMALL_FLEET[1],
    )
    assert (out / "agents-group-3.yaml").exists()

    generate(
        out,
        "--topology",
        "edge_fleet",
        "--set",
        "topology.generate.groups=2",
        "--set",
        SMALL_FLEET[1],
    )

    assert not (out / "agents-group-3.yaml").exists()
    listed = yaml.safe_load((out / "kustomization.yaml").read_text())["resources"]
    assert sorted(listed) == sorted(
        p.name for p in out.glob("*.yaml") if p.name != "kustomization.yaml"
    )


def test_namespace_option_reaches_every_object_and_url(tmp_path):
    out = generate(tmp_path / "out", "--topology", "keti_testbed", "--namespace", "fl-lab")

    objs = objects(out)
    assert by_kind(objs, "Namespace").keys() == {"fl-lab"}
    for obj in objs:
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == "fl-lab"
    text = "".join(p.read_text() for p in out.glob("*.yaml"))
    assert "fedsim-server.fl-lab.svc:8080" in text and ".fedsim.svc" not in text


# -- errors ----------------------------------------------------------------------------------


def _fails(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("fedsim k8s-manifests: error: "), err
    return err


def test_unknown_topology_is_one_line_naming_it_and_the_known_ones(tmp_path, capsys):
    err = _fails(capsys, [str(tmp_path / "out"), "--topology", "nope"])

    assert "'nope'" in err and "edge_fleet, keti_testbed" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("extra", "names"),
    [
        (["--namespace", "Fed_Sim"], "--namespace"),
        (["--storage-size", "ten"], "--storage-size"),
        (["--agent-data", "data/shard.npz"], "--agent-data"),
        (["--gpu-resource", "gpu"], "--gpu-resource"),
        (["--image", "repo/fedsim@sha256:abc"], "--gpu-image"),
        (["--set", "topology.generate.groups=2"], "topology"),  # keti_testbed generates none
        (["--set", "topology.devices.4.hardware=quantum_9000"], "quantum_9000"),
    ],
)
def test_bad_options_are_one_line_naming_the_input(extra, names, tmp_path, capsys):
    err = _fails(capsys, [str(tmp_path / "out"), "--topology", "keti_testbed", *extra])

    assert names in err


def test_output_path_that_is_a_file_is_refused(tmp_path, capsys):
    path = tmp_path / "file"
    path.write_text("not a directory")

    err = _fails(capsys, [str(path), "--topology", "keti_testbed"])

    assert str(path) in err and "not a directory" in err


def test_a_file_not_written_by_the_generator_is_never_overwritten(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "kustomization.yaml").write_text("resources: [mine.yaml]\n")

    err = _fails(capsys, [str(out), "--topology", "keti_testbed"])

    assert "kustomization.yaml" in err
    assert (out / "kustomization.yaml").read_text() == "resources: [mine.yaml]\n"
    assert not (out / "server.yaml").exists()


def test_the_fedsim_command_dispatches_k8s_manifests(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "fedsim",
            "k8s-manifests",
            "--topology",
            "keti_testbed",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert proc.returncode == 0, proc.stderr
    assert (
        proc.stdout.splitlines()[-1] == f"9 agents; apply with: kubectl apply -k {tmp_path / 'o'}"
    )
    assert SUBCOMMANDS["k8s-manifests"].module == "fedsim.deploy.cli"
