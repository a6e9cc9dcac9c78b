"""A user's model and data set in the ML layer: measured and cached like the zoo's models,
built by import path, and a data set factory's shards checked; ``.npz`` files built in."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fedsim.core.plugins import PluginError
from fedsim.core.workload import DatasetSpec
from fedsim.ml.data import factory_shards, load_split, training_size
from fedsim.ml.models import build_model, in_channels
from fedsim.ml.spec import model_spec

MODEL = """
from torch import nn


class Net(nn.Module):
    in_channels = 1

    def __init__(self, num_classes):
        super().__init__()
        self.fc = nn.Linear(WIDTH, num_classes)

    def forward(self, x):
        return self.fc(x.flatten(1)[:, :WIDTH])
"""


@pytest.fixture
def user_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A package ``mine_models`` with a Net of a width the test sets: ``write(width)``."""
    package = tmp_path / "pkgs" / "mine_models"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path / "pkgs"))

    def write(width: int) -> None:
        import importlib

        (package / "net.py").write_text(MODEL.replace("WIDTH", str(width)))
        for name in ("mine_models", "mine_models.net"):
            sys.modules.pop(name, None)
        importlib.invalidate_caches()

    return write


def test_a_users_model_is_measured_and_cached_under_its_import_path(user_model, tmp_path):
    # Prepare
    user_model(16)
    cache = tmp_path / "cache"

    # Execute
    spec = model_spec("mine_models.net.Net", input_size=8, num_classes=3, cache_dir=cache)

    # Assert: 16 x 3 weights and 3 biases; the cache's entry names the path and the source.
    assert spec.name == "mine_models.net.Net" and spec.parameters == 16 * 3 + 3
    assert spec.forward_flops == 2 * 16 * 3
    (entry,) = json.loads((cache / "model_specs.json").read_text())
    assert entry["name"].startswith("mine_models.net.Net@") and entry["parameters"] == 51


def test_an_edited_model_is_measured_again(user_model, tmp_path):
    # Prepare: measured once at width 16.
    cache = tmp_path / "cache"
    user_model(16)
    model_spec("mine_models.net.Net", input_size=8, num_classes=3, cache_dir=cache)

    # Execute: the user narrows the layer (a source of another length: a .pyc written in the
    # same second is checked by size).
    user_model(8)
    spec = model_spec("mine_models.net.Net", input_size=8, num_classes=3, cache_dir=cache)

    # Assert
    assert spec.parameters == 8 * 3 + 3
    assert len(json.loads((cache / "model_specs.json").read_text())) == 2


def test_a_users_model_is_built_by_path_and_states_its_channels(user_model):
    user_model(4)

    model = build_model("mine_models.net.Net", 5)

    assert isinstance(model, torch.nn.Module) and model.fc.out_features == 5
    assert in_channels("mine_models.net.Net") == 1


def test_a_factory_returning_no_module_is_refused():
    with pytest.raises(PluginError, match=r"returned a OrderedDict, not a torch\.nn\.Module"):
        build_model("collections.OrderedDict", 3)


def dataset(**fields) -> DatasetSpec:
    return DatasetSpec(**{"name": "mine", "samples": 10, "total_bytes": 640, **fields})


def test_an_npz_file_is_split_like_the_other_data_sets(tmp_path):
    # Prepare: 30 uint8 images, 3 classes.
    path = tmp_path / "d.npz"
    X = np.full((30, 1, 4, 4), 255, np.uint8)
    np.savez(path, X=X, y=np.arange(30) % 3)
    npz = dataset(name="npz", path=str(path))

    # Execute
    X_train, y_train, _, y_test = load_split(
        npz, input_size=4, channels=1, num_classes=3, test_fraction=0.2
    )

    # Assert: 2 of each class's 10 held out; pixels scaled to [0, 1].
    assert len(y_train) == 24 and len(y_test) == 6
    assert training_size(npz, num_classes=3, test_fraction=0.2) == 24
    assert X_train.dtype == np.float32 and X_train.max() == 1.0
    assert sorted(np.bincount(y_test)) == [2, 2, 2]


@pytest.mark.parametrize(
    ("arrays", "words"),
    [
        ({"X": np.zeros((4, 1, 2, 2))}, "no array y"),
        ({"X": np.zeros((4, 2, 2)), "y": np.zeros(4, np.int64)}, "X must be (n, channels"),
        ({"X": np.zeros((4, 1, 2, 2)), "y": np.zeros(4)}, "y must hold class indices"),
    ],
)
def test_a_malformed_npz_says_what_is_wrong(tmp_path, arrays, words):
    path = tmp_path / "d.npz"
    np.savez(path, **arrays)

    with pytest.raises(ValueError, match=words.replace("(", r"\(")):
        load_split(dataset(name="npz", path=str(path)), input_size=2, channels=1, num_classes=2)


def shards_of(fn, tmp_path, monkeypatch, **params):
    """``factory_shards`` of a factory ``fn`` written into a module on the path."""
    (tmp_path / "mine_data.py").write_text(fn)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "mine_data", raising=False)  # another test's module
    return factory_shards(
        dataset(factory="mine_data.make", factory_params=params),
        num_clients=2,
        num_classes=3,
        input_size=4,
        channels=1,
        seed=7,
    )


def test_a_factory_gets_what_it_declares_and_its_params(tmp_path, monkeypatch):
    # Prepare: a factory that declares two of fedsim's arguments and one of its own.
    fn = """
import numpy as np
def make(*, num_clients, seed, size):
    shard = (np.zeros((size, 1, 4, 4)), np.full(size, seed % 3))
    return [shard] * num_clients, (np.zeros((1, 1, 4, 4)), np.zeros(1, np.int64))
"""
    # Execute
    shards, (_, y_test) = shards_of(fn, tmp_path, monkeypatch, size=5)

    # Assert
    assert [len(y) for _, y in shards] == [5, 5] and shards[0][1].tolist() == [1] * 5
    assert shards[0][0].dtype == np.float32 and y_test.dtype == np.int64


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ("return None", "must return (shards, (X_test, y_test)), got a NoneType"),
        ("return [ok], ok", "one (X, y) shard per client (2), got 1"),
        ("return [ok, (ok[0], ok[1][:1])], ok", "shard 1: X has 2 samples and y 1"),
        ("return [ok, ok], (ok[0], ok[1] + 5)", "test set: labels must be in 0..2"),
        ("raise OSError('no such bucket')", "raised OSError: no such bucket"),
    ],
)
def test_a_factory_returning_the_wrong_thing_is_one_line(tmp_path, monkeypatch, body, words):
    fn = f"""
import numpy as np
def make():
    ok = (np.zeros((2, 1, 4, 4)), np.zeros(2, np.int64))
    {body}
"""
    with pytest.raises(PluginError) as caught:
        shards_of(fn, tmp_path, monkeypatch)

    message = str(caught.value)
    assert message.startswith("workload.dataset.factory: mine_data.make") and words in message
