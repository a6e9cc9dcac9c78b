"""The agent's local side of a task: --data forms and generated bodies."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from fedsim.real.agent.config import parse_data_spec
from fedsim.real.agent.work import TaskError, Trainers, data_bytes, load_shard, padding

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "byo"


def shard(spec, *, device_id=1, model_name="digits_cnn", input_size=8):
    return load_shard(
        spec,
        device_id=device_id,
        model_name=model_name,
        num_classes=10,
        seed=0,
        input_size=input_size,
    )


def test_synthetic_data_is_shaped_for_the_model_and_differs_per_device():
    # Prepare
    spec = parse_data_spec("synthetic:6")

    # Execute
    X1, y1 = shard(spec, device_id=1)
    X2, _ = shard(spec, device_id=2)
    X_rgb, _ = shard(spec, model_name="yolov4", input_size=32)

    # Assert
    assert tuple(X1.shape) == (6, 1, 8, 8) and tuple(y1.shape) == (6,)
    assert int(y1.min()) >= 0 and int(y1.max()) < 10
    assert not np.array_equal(np.asarray(X1), np.asarray(X2))
    assert tuple(X_rgb.shape) == (6, 3, 32, 32)


def test_an_image_folder_is_read_at_the_input_size(tmp_path):
    # Prepare: two classes of 4x4 grey .npy images.
    for label in ("cat", "dog"):
        (tmp_path / label).mkdir()
        np.save(tmp_path / label / "a.npy", np.full((4, 4), 200, np.uint8))
    spec = parse_data_spec(str(tmp_path))

    # Execute
    X, y = shard(spec, input_size=8)

    # Assert
    assert X.shape == (2, 1, 8, 8) and list(y) == [0, 1]


def test_an_npz_without_y_is_a_task_error(tmp_path):
    # Prepare
    path = tmp_path / "bad.npz"
    np.savez(path, X=np.zeros((2, 1, 8, 8), np.float32))

    # Execute / Assert
    with pytest.raises(TaskError, match="no array y"):
        shard(parse_data_spec(str(path)))


@pytest.mark.parametrize(
    ("config", "words"),
    [
        ({"num_classes": 10**12}, "'num_classes' must be an integer in 1..100000"),
        ({"num_classes": 0}, "'num_classes'"),
        ({"num_classes": "ten"}, "'num_classes'"),
        ({"num_classes": 10, "input_size": 10**6}, "'input_size' must be an integer in 1..4096"),
    ],
)
def test_a_config_asking_for_more_than_a_device_holds_is_a_task_error(config, words):
    # Prepare: a trainer factory that must not be reached.
    def factory(**kwargs):
        raise AssertionError(f"a trainer was built for {kwargs}")

    trainers = Trainers(
        data=parse_data_spec("synthetic:4"), input_size=None, factory=factory, torch_device="cpu"
    )

    # Execute / Assert
    with pytest.raises(TaskError, match=words):
        trainers.get({"model": "digits_cnn", **config})


@pytest.mark.parametrize(
    ("model", "plugins"),
    [
        ("os.system", ()),  # an import path the agent was not told to allow
        ("byo_fl.model.TinyNet", ("byo",)),  # a prefix of the package's name, not the package
        ("byo_fl.model.TinyNet", ("byo_fl.data",)),
        ("byo_fl.model.torch.nn.Linear", ("byo_fl",)),  # defined in torch, not under byo_fl
        ("byo_fl.model.TinyNet.__init__", ("byo_fl",)),
    ],
)
def test_a_model_outside_the_agents_plugins_is_refused(model, plugins, monkeypatch):
    # Prepare: the example package on the path; a trainer factory that must not be reached.
    monkeypatch.syspath_prepend(str(EXAMPLE))

    def factory(**kwargs):
        raise AssertionError(f"a trainer was built for {kwargs}")

    trainers = Trainers(
        data=parse_data_spec("synthetic:4"),
        input_size=None,
        factory=factory,
        torch_device="cpu",
        plugins=plugins,
    )

    # Execute / Assert: the reason names the agent's --plugin paths, or says it has none.
    where = "has no --plugin"
    if plugins:
        where = f"nor defined under this agent's --plugin {plugins[0]}"
    with pytest.raises(TaskError, match=rf"not one of the zoo's .* {re.escape(where)}"):
        trainers.get({"model": model, "num_classes": 4, "input_size": 8})


@pytest.mark.parametrize("plugins", [("byo_fl",), ("byo_fl.model",), ("byo_fl.model.TinyNet",)])
def test_a_model_under_the_agents_plugins_is_built_by_its_import_path(plugins, monkeypatch):
    # Prepare: the example package on the path, as a user's package would be.
    monkeypatch.syspath_prepend(str(EXAMPLE))
    built = {}

    def factory(**kwargs):
        built.update(kwargs)
        return lambda device_id, ins: ({}, {})

    trainers = Trainers(
        data=parse_data_spec("synthetic:4"),
        input_size=None,
        factory=factory,
        torch_device="cpu",
        plugins=plugins,
    )

    # Execute
    trainers.get({"model": "byo_fl.model.TinyNet", "num_classes": 4, "input_size": 8})
    X, _ = built["data"](3)

    # Assert: TinyNet takes grey images, so the synthetic shard has one channel.
    assert built["model_name"] == "byo_fl.model.TinyNet" and built["num_classes"] == 4
    assert tuple(X.shape) == (4, 1, 8, 8)


@pytest.mark.asyncio
@pytest.mark.parametrize("nbytes", [0, 1, (1 << 20) - 1, (1 << 20) + 1, 3 << 20])
async def test_generated_bodies_have_exactly_nbytes(nbytes):
    # Execute
    noise = b"".join([chunk async for chunk in data_bytes(None, nbytes)])
    zeros = b"".join([chunk async for chunk in padding(nbytes)])

    # Assert
    assert len(noise) == nbytes and len(zeros) == nbytes
    assert zeros == bytes(nbytes)
