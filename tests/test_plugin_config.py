"""Plug-ins in the config: a bad ``_target_`` is a one-line ConfigError naming field and path.

The good ones come from the worked example's package (``examples/byo/byo_fl``), put on the
path as a user's package would be; ``tests/test_byo_example.py`` runs them end to end.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedsim.config import ConfigError, build_spec, compose, conf_dir

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "byo"


@pytest.fixture(autouse=True)
def byo(monkeypatch: pytest.MonkeyPatch) -> None:
    """The example's package ``byo_fl`` on the path."""
    monkeypatch.syspath_prepend(str(EXAMPLE))


def spec(*overrides: str):
    return build_spec(compose(["+experiment=fl_digits", *overrides]), conf_dir())


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        (
            ["+strategy._target_=nosuch_pkg.Strategy"],
            "strategy: cannot import nosuch_pkg.Strategy: no module 'nosuch_pkg'",
        ),
        (
            ["+strategy._target_=byo_fl.strategy.FedAvgM", "+strategy.lr=1"],
            "strategy: byo_fl.strategy.FedAvgM cannot take lr=1 (got an "
            "unexpected keyword argument 'lr'); it takes server_lr, momentum, record",
        ),
        (
            ["+strategy._target_=fractions.Fraction"],
            "strategy: fractions.Fraction returned a Fraction, not a Strategy",
        ),
        (
            ["+strategy._target_=byo_fl.strategy.Nope"],
            "strategy: cannot import byo_fl.strategy.Nope: byo_fl.strategy has no 'Nope'",
        ),
        (
            ["workload.model={_target_:byo_fl.model.Nope}"],
            "workload.model: cannot import byo_fl.model.Nope",
        ),
        (
            ["workload.model={_target_:collections.OrderedDict}"],
            "workload.model: collections.OrderedDict returned a OrderedDict, not a torch.nn.Module",
        ),
        (
            ["workload.model={_target_:byo_fl.model.TinyNet,width:3}"],
            "workload.model: byo_fl.model.TinyNet is called with num_classes only, not width",
        ),
        (
            ["workload.model={_target_:fedsim.ml.models.DigitsMLP}", "workload.input_size=4"],
            "workload.model: measuring fedsim.ml.models.DigitsMLP on a 4x4 input failed: ",
        ),
        (
            ["+workload.dataset.factory={_target_:byo_fl.data.stripes,colour:red}"],
            "workload.dataset.factory: byo_fl.data.stripes cannot take num_clients=0, ",
        ),
        (
            ["+workload.dataset.factory={_target_:byo_fl.data.nope}"],
            "workload.dataset.factory: cannot import byo_fl.data.nope",
        ),
        (
            ["fl.selection={_target_:byo_fl.strategy.FedAvgM}"],
            "fl.selection: byo_fl.strategy.FedAvgM returned a FedAvgM, not a SelectionPolicy",
        ),
        (
            ["fl.hierarchical=true", "+group_strategy._target_=byo_fl.strategy.Nope"],
            "group_strategy: cannot import byo_fl.strategy.Nope: byo_fl.strategy has no 'Nope'",
        ),
        (
            ["+group_strategy._target_=byo_fl.strategy.FedAvgM"],
            "group_strategy: only hierarchical rounds aggregate groups; set fl.hierarchical=true",
        ),
        (["fl.selection={_target_:3}"], "fl.selection._target_: must be an import path"),
        (["fl.selection=fastest"], "fl.selection: 'fastest' is not one of all, random"),
    ],
)
def test_a_bad_plugin_is_a_config_error_naming_field_and_path(overrides, words):
    # Execute
    with pytest.raises(ConfigError) as caught:
        spec(*overrides)

    # Assert
    message = str(caught.value)
    assert words in message and "\n" not in message, message


def test_the_spec_carries_the_import_paths_the_runtimes_build_from():
    # Execute
    s = spec(
        "+strategy._target_=byo_fl.strategy.FedAvgM",
        "+strategy.momentum=0.5",
        "workload.model={_target_:byo_fl.model.TinyNet}",
        "workload.num_classes=4",
        "+workload.dataset.factory={_target_:byo_fl.data.stripes,noise:0.5}",
        "fl.selection={_target_:byo_fl.selection.RoundRobin}",
    )

    # Assert: a user's strategy is named by its path, as a built-in by its name.
    assert s.strategy == {"name": "byo_fl.strategy.FedAvgM", "clip_norm": None, "momentum": 0.5}
    assert s.workload.model.name == "byo_fl.model.TinyNet"
    assert s.workload.model.parameters == 80 + 33 * 4
    assert s.workload.dataset.factory == "byo_fl.data.stripes"
    assert s.workload.dataset.factory_params == {"noise": 0.5}
    assert s.fl.selection == {"_target_": "byo_fl.selection.RoundRobin"}


@pytest.mark.parametrize(
    "overrides",
    [
        ["+group_strategy._target_=byo_fl.strategy.FedAvgM", "+group_strategy.momentum=0.3"],
        ["+group_strategy={_target_:byo_fl.strategy.FedAvgM,momentum:0.3}"],
    ],
)
def test_a_users_group_strategy_is_set_from_the_command_line(overrides):
    # Execute: issue 15's OmegaConf could not merge a mapping onto the schema's None.
    s = spec("fl.hierarchical=true", *overrides)

    # Assert: the groups combine with the user's rule; the cloud keeps the configured one.
    assert s.group_strategy == {"name": "byo_fl.strategy.FedAvgM", "momentum": 0.3}
    assert s.strategy["name"] == "fedavg"


def test_without_a_group_strategy_each_group_combines_as_the_strategy():
    # Execute
    s = spec("fl.hierarchical=true")

    # Assert
    assert s.group_strategy is None


def test_a_hierarchical_run_aggregates_groups_with_the_users_strategy(tmp_path):
    # Prepare: byo_fl's FedAvgM writes one line per aggregation it makes.
    record = tmp_path / "aggregations.jsonl"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(EXAMPLE), str(ROOT)])}

    # Execute
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "fedsim",
            "+experiment=fl_digits",
            "fl.rounds=1",
            "fl.hierarchical=true",
            "+group_strategy._target_=byo_fl.strategy.FedAvgM",
            f"+group_strategy.record={record}",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )

    # Assert: the keti testbed's group of two trainers (3 and 4) went through it.
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(line) for line in record.read_text().splitlines()]
    assert [(r["round"], r["updates"]) for r in lines] == [(1, 2)]


def test_an_npz_data_set_is_checked_like_the_built_in_ones(tmp_path):
    # Prepare: 20 grey 8x8 images of 2 classes.
    path = tmp_path / "mine.npz"
    np.savez(path, X=np.zeros((20, 1, 8, 8), np.float32), y=np.arange(20) % 2)

    # Execute / Assert: 16 training samples do not give 3 clients a batch of 16 each.
    with pytest.raises(ConfigError, match=r"3 clients need 48 training samples .* has 16"):
        spec("workload.dataset.name=npz", f"workload.dataset.path={path}")
    with pytest.raises(ConfigError, match=r"workload.dataset.path: an npz data set needs"):
        spec("workload.dataset.name=npz")


def test_an_npz_whose_images_have_no_channel_axis_is_refused_before_the_run(tmp_path):
    # Prepare: images (n, 8, 8), as digits.images are; the shape was checked only once the
    # run loaded the pixels, and the command line printed a traceback.
    path = tmp_path / "flat.npz"
    np.savez(path, X=np.zeros((100, 8, 8), np.float32), y=np.arange(100) % 2)

    # Execute / Assert
    with pytest.raises(ConfigError, match=r"workload.dataset: .*X must be \(n, channels"):
        spec(
            "workload.dataset.name=npz",
            f"workload.dataset.path={path}",
            "fl.batch_size=4",
        )


def test_the_command_line_reports_a_bad_target_in_one_line_and_exits_1(tmp_path):
    # Execute
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "fedsim",
            "+experiment=fl_digits",
            "+strategy._target_=nosuch_pkg.MyStrategy",
            f"hydra.run.dir={tmp_path}",
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )

    # Assert
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: strategy: cannot import nosuch_pkg.MyStrategy: no module 'nosuch_pkg' "
        "(is its package installed or on PYTHONPATH?)"
    )
    assert "Traceback" not in proc.stderr
