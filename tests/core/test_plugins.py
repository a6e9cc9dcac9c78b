"""Users' code by import path: finding it, calling it, and every way that fails as one line.

The strategy and the selection policy are the worked example's (``examples/byo/byo_fl``),
put on the path as a user's package would be.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedsim.core.plugins import PluginError, build, locate, restrict, split_target
from fedsim.core.runtime import Update
from fedsim.core.scheduling import DeviceView
from fedsim.core.selection import AllSelection, SelectionPolicy, selection_from
from fedsim.core.strategies.base import Strategy
from fedsim.core.strategies.clipping import Clipped
from fedsim.core.strategies.registry import strategy_from

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "byo"


@pytest.fixture
def byo(monkeypatch: pytest.MonkeyPatch) -> None:
    """The example's package ``byo_fl`` on the path."""
    monkeypatch.syspath_prepend(str(EXAMPLE))


def view(dev: int, *, online: bool = True) -> DeviceView:
    return DeviceView(id=dev, group=1, online=online, throughput=1e9, bandwidth=1e6)


@pytest.mark.parametrize(
    ("path", "words"),
    [
        ("nosuch_package_xyz.Thing", "cannot import nosuch_package_xyz.Thing: no module"),
        ("json.no_such_name", "cannot import json.no_such_name: json has no 'no_such_name'"),
        ("json.decoder.Nope", "json.decoder has no 'Nope'"),
        ("json.-x", "is not an import path"),
    ],
)
def test_a_path_that_does_not_resolve_is_one_line_naming_field_and_path(path, words):
    # Execute
    with pytest.raises(PluginError) as caught:
        locate("strategy", path)

    # Assert
    message = str(caught.value)
    assert message.startswith("strategy: ") and words in message and "\n" not in message


def test_a_module_failing_to_import_is_reported_with_its_error(tmp_path, monkeypatch):
    # Prepare: a package whose module raises on import.
    (tmp_path / "broken_pkg").mkdir()
    (tmp_path / "broken_pkg" / "__init__.py").write_text("")
    (tmp_path / "broken_pkg" / "mod.py").write_text("raise RuntimeError('no GPU here')\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    # Execute / Assert
    with pytest.raises(PluginError, match=r"importing broken_pkg\.mod .* RuntimeError: no GPU"):
        locate("workload.model", "broken_pkg.mod.Net")


@pytest.fixture
def lifted():
    """restrict() is process-wide: lifted again after the test, whatever happens."""
    yield
    restrict(None)


def test_a_restricted_process_loads_plugins_only_from_allowed_modules(
    tmp_path, monkeypatch, lifted
):
    # Prepare: two packages whose import leaves a mark; only one of them allowed.
    for name in ("kept_pkg", "other_pkg"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(
            f"import pathlib\npathlib.Path({str(tmp_path / name)!r} + '.imported').touch()\n"
            "def make():\n    return 1\n"
        )
    monkeypatch.syspath_prepend(str(tmp_path))
    restrict(["kept_pkg"])

    # Execute
    made = locate("strategy", "kept_pkg.make")()
    with pytest.raises(PluginError) as refused:
        locate("fl.selection", "other_pkg.make")
    with pytest.raises(PluginError, match=r"os\.system is not a plug-in this server loads"):
        locate("fl.selection", "os.system")

    # Assert: the allowed one loads; the other is refused by name before it is imported.
    assert made == 1
    assert str(refused.value) == (
        "fl.selection: other_pkg.make is not a plug-in this server loads (allowed: kept_pkg; "
        "fedsim server --plugin MODULE allows one)"
    )
    assert (tmp_path / "kept_pkg.imported").exists()
    assert not (tmp_path / "other_pkg.imported").exists()
    restrict(None)
    assert locate("strategy", "other_pkg.make")() == 1


def test_a_nested_attribute_is_found_as_hydra_finds_it():
    assert locate("x", "json.JSONDecoder.decode") is __import__("json").JSONDecoder.decode


def test_build_checks_arguments_errors_and_the_type_returned():
    # Execute / Assert: arguments the callable does not take, before it runs.
    with pytest.raises(PluginError, match=r"fl\.selection: fractions\.Fraction.* cannot take"):
        build("fl.selection", "fractions.Fraction", {"colour": "red"})
    # An error the callable raises.
    with pytest.raises(PluginError, match="raised ValueError"):
        build("fl.selection", "fractions.Fraction", {"numerator": "not a number"})
    # The wrong type returned.
    with pytest.raises(PluginError, match="returned a Fraction, not a SelectionPolicy"):
        build("fl.selection", "fractions.Fraction", {"numerator": 1}, expect=SelectionPolicy)


@pytest.mark.parametrize(
    "node",
    [{"name": "fedavg"}, {"_target_": "fedavg"}, {"_target_": 3}],
)
def test_a_target_must_be_an_import_path(node):
    with pytest.raises(PluginError, match=r"^strategy\._target_: must be an import path"):
        split_target("strategy", node)


@pytest.mark.usefixtures("byo")
@pytest.mark.parametrize("key", ["_target_", "name"])
def test_a_users_strategy_is_built_from_its_import_path(key):
    # Prepare
    config = {key: "byo_fl.strategy.FedAvgM", "server_lr": 1.0, "momentum": 0.0}
    updates = [
        Update(num_examples=1, nbytes=4, parameters={"w": np.array([1.0], np.float32)}),
        Update(num_examples=3, nbytes=4, parameters={"w": np.array([5.0], np.float32)}),
    ]

    # Execute
    strategy = strategy_from(config)
    new = strategy.aggregate_fit({"w": np.array([0.0], np.float32)}, updates)

    # Assert: without momentum and at server_lr 1 it is FedAvg: (1 x 1 + 3 x 5) / 4.
    assert isinstance(strategy, Strategy) and type(strategy).__name__ == "FedAvgM"
    assert new is not None and new["w"].tolist() == [4.0]


@pytest.mark.usefixtures("byo")
def test_clip_norm_clips_a_users_strategy_as_it_clips_the_built_ins():
    strategy = strategy_from({"_target_": "byo_fl.strategy.FedAvgM", "clip_norm": 1.0})

    assert isinstance(strategy, Clipped) and type(strategy.inner).__name__ == "FedAvgM"


@pytest.mark.usefixtures("byo")
@pytest.mark.parametrize(
    ("config", "words"),
    [
        ({"_target_": "byo_fl.strategy.FedAvgM", "lr": 1}, "cannot take lr=1"),
        ({"_target_": "byo_fl.strategy.FedAvgM", "momentum": 2}, "momentum must be in [0, 1)"),
        ({"_target_": "byo_fl.model.TinyNet"}, "cannot take"),  # num_classes is not given
        ({"_target_": "fractions.Fraction"}, "returned a Fraction, not a Strategy"),
    ],
)
def test_a_bad_strategy_target_is_one_line(config, words):
    with pytest.raises(PluginError) as caught:
        strategy_from(config)

    assert str(caught.value).startswith("strategy: ") and words in str(caught.value)


@pytest.mark.usefixtures("byo")
def test_a_users_selection_policy_is_built_and_selects():
    # Prepare
    views = [view(3), view(4), view(8), view(9, online=False)]
    rng = np.random.default_rng(0)

    # Execute
    policy = selection_from({"_target_": "byo_fl.selection.RoundRobin"}, model_bytes=100.0)
    rounds = [policy.select(views, 2, rnd=r, rng=rng) for r in (1, 2, 3)]

    # Assert: the online clients take turns, two a round.
    assert rounds == [[3, 4], [3, 8], [4, 8]]


def test_a_selection_factory_is_given_the_model_size_when_it_asks_for_it():
    # Execute: ResourceAware declares model_bytes; the node does not set it.
    policy = selection_from(
        {"_target_": "fedsim.core.selection.ResourceAware", "max_cpu_busy": 0.5},
        model_bytes=1234.0,
    )

    # Assert
    assert policy.model_bytes == 1234.0 and policy.max_cpu_busy == 0.5  # type: ignore[attr-defined]


def test_selection_by_name_and_a_bad_selection():
    assert isinstance(selection_from("all", model_bytes=1.0), AllSelection)
    with pytest.raises(ValueError, match="'fastest' is not one of all, random, resource, oort"):
        selection_from("fastest", model_bytes=1.0)
    with pytest.raises(PluginError, match="returned a Fraction, not a SelectionPolicy"):
        selection_from({"_target_": "fractions.Fraction"}, model_bytes=1.0)
