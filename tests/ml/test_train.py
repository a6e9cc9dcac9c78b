"""Local training for real: parameter round trips, learning, determinism, FedProx, accuracy."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from fedsim.core.runtime import FitIns, ModelRef, NDArrays
from fedsim.ml.data import load_digits_split
from fedsim.ml.params import get_parameters, set_parameters
from fedsim.ml.train import Evaluator, MomentumSGD, TorchTrainer, evaluate

MODEL = "digits_cnn"


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    return load_digits_split(test_fraction=0.2, seed=0)


@pytest.fixture(scope="module")
def shards(digits) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Three devices with 100 training images each."""
    X, y = digits[0], digits[1]
    return {d: (X[100 * d : 100 * (d + 1)], y[100 * d : 100 * (d + 1)]) for d in range(3)}


def fit_ins(
    parameters: NDArrays | None,
    *,
    version: int = 0,
    samples: int = 100,
    epochs: int = 1,
    batch_size: int = 20,
    **config: Any,
) -> FitIns:
    return FitIns(
        model=ModelRef(name=MODEL, version=version, nbytes=0),
        samples=samples,
        epochs=epochs,
        batch_size=batch_size,
        flops=0.0,
        update_nbytes=0,
        parameters=parameters,
        config=config,
    )


def trainer(data, seed: int = 0) -> TorchTrainer:
    return TorchTrainer(model_name=MODEL, num_classes=10, data=data, seed=seed)


def distance(a: NDArrays, b: NDArrays) -> float:
    return float(np.sqrt(sum(np.sum((a[k] - b[k]) ** 2) for k in a)))


def test_parameters_round_trip_skips_integer_buffers() -> None:
    # Prepare: BatchNorm brings float buffers to ship and an integer counter to leave behind.
    source = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    source[1].running_mean.fill_(0.5)
    target = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))

    # Execute
    arrays = get_parameters(source)
    set_parameters(target, arrays)

    # Assert
    assert set(arrays) == {
        "0.weight",
        "0.bias",
        "1.weight",
        "1.bias",
        "1.running_mean",
        "1.running_var",
    }
    assert all(a.dtype == np.float32 for a in arrays.values())
    for name, tensor in target.state_dict().items():
        if name in arrays:
            np.testing.assert_array_equal(tensor.numpy(), arrays[name])
    arrays["0.weight"][:] = 7.0  # copies: changing them leaves both models alone
    assert not torch.any(source[0].weight == 7.0)


def test_set_parameters_rejects_mismatched_names_and_shapes() -> None:
    # Prepare
    model = nn.Linear(3, 4)
    arrays = get_parameters(model)

    # Execute / Assert
    with pytest.raises(ValueError, match=r"missing \['bias'\], unexpected \['b'\]"):
        set_parameters(model, {"weight": arrays["weight"], "b": arrays["bias"]})
    with pytest.raises(ValueError, match=r"weight: \(4, 2\) != \(4, 3\)"):
        set_parameters(model, {**arrays, "weight": np.zeros((4, 2), np.float32)})


def test_training_changes_parameters_and_lowers_loss(shards) -> None:
    # Prepare
    train = trainer(shards)
    initial = train.initial_parameters()
    before = evaluate(MODEL, 10, initial, *shards[1])

    # Execute
    trained, metrics = train(1, fit_ins(None, epochs=10))
    after = evaluate(MODEL, 10, trained, *shards[1])

    # Assert
    assert trained.keys() == initial.keys()
    assert distance(trained, initial) > 0.1
    assert after["loss"] < 0.5 * before["loss"]
    assert metrics["loss"] < before["loss"]
    assert metrics["num_examples"] == 100
    assert metrics["samples_processed"] == 1000
    assert metrics["loss_rms"] >= metrics["loss"]


def test_same_seed_gives_identical_arrays_whatever_the_call_order(shards) -> None:
    # Prepare
    start = trainer(shards).initial_parameters()
    first = trainer(shards)
    second = trainer(shards)

    # Execute: the second trainer trains other devices in between.
    a, _ = first(1, fit_ins(start, version=3))
    second(0, fit_ins(start, version=3))
    second(2, fit_ins(start, version=4))
    b, _ = second(1, fit_ins(start, version=3))

    # Assert
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])


def test_another_version_or_seed_shuffles_differently(shards) -> None:
    # Prepare
    train = trainer(shards)
    start = train.initial_parameters()

    # Execute
    base, _ = train(1, fit_ins(start, version=3))
    other_version, _ = train(1, fit_ins(start, version=4))
    other_seed, _ = trainer(shards, seed=1)(1, fit_ins(start, version=3))

    # Assert
    assert distance(base, other_version) > 0
    assert distance(base, other_seed) > 0


def test_more_samples_than_the_shard_cycles_through_it(shards) -> None:
    # Prepare
    train = trainer(shards)

    # Execute
    _, metrics = train(2, fit_ins(None, samples=250, epochs=2))

    # Assert
    assert metrics["num_examples"] == 250
    assert metrics["samples_processed"] == 500


def test_fedprox_keeps_weights_near_the_global_model(shards) -> None:
    # Prepare: lr * mu = 0.5 keeps the proximal step stable while it dominates the data's pull.
    train = trainer(shards)
    start = train.initial_parameters()

    # Execute
    free, free_metrics = train(0, fit_ins(start, epochs=5))
    held, _ = train(0, fit_ins(start, epochs=5, proximal_mu=10.0))
    off, off_metrics = train(0, fit_ins(start, epochs=5, proximal_mu=0.0))

    # Assert
    assert distance(held, start) < 0.2 * distance(free, start)
    assert distance(off, free) == 0 and off_metrics == free_metrics  # mu = 0: plain training


def test_data_may_come_from_a_function_and_unknown_devices_are_named(shards) -> None:
    # Prepare
    calls: list[int] = []

    def load(device: int) -> tuple[np.ndarray, np.ndarray]:
        calls.append(device)
        return shards[device]

    from_function = trainer(load)
    from_mapping = trainer(shards)

    # Execute
    a, _ = from_function(2, fit_ins(None))
    from_function(2, fit_ins(None, version=1))
    b, _ = from_mapping(2, fit_ins(None))

    # Assert
    assert calls == [2]  # loaded once, then kept
    assert distance(a, b) == 0
    with pytest.raises(KeyError, match="no training data for device 7"):
        from_mapping(7, fit_ins(None))


def test_training_leaves_the_global_rng_alone(shards) -> None:
    # Prepare
    train = trainer(shards)
    torch.manual_seed(42)
    expected = torch.rand(3)
    torch.manual_seed(42)

    # Execute
    train(0, fit_ins(None))
    drawn = torch.rand(3)

    # Assert
    torch.testing.assert_close(drawn, expected)


def test_central_training_reaches_90_percent_on_digits(digits) -> None:
    # Prepare: the whole training split on one device.
    X_train, y_train, X_test, y_test = digits
    train = trainer({0: (X_train, y_train)})
    evaluator = Evaluator(model_name=MODEL, num_classes=10, X=X_test, y=y_test)
    before = evaluator(train.initial_parameters())

    # Execute
    trained, _ = train(0, fit_ins(None, samples=len(y_train), epochs=5, batch_size=32))
    after = evaluator(trained)

    # Assert
    assert before["accuracy"] < 0.3
    assert after["accuracy"] >= 0.9
    assert after == evaluate(MODEL, 10, trained, X_test, y_test)


@pytest.mark.parametrize("momentum", [0.9, 0.0])
def test_momentum_sgd_steps_equal_torch_sgd(momentum: float) -> None:
    # Prepare: two copies of one model, a frozen layer among them, and the same batches.
    torch.manual_seed(0)
    ours = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    theirs = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    theirs.load_state_dict(ours.state_dict())
    for model in (ours, theirs):
        model[0].bias.requires_grad_(False)
    batches = [(torch.randn(4, 6), torch.randint(0, 3, (4,))) for _ in range(5)]

    def train(model: nn.Module, optimizer: Any) -> None:
        for X, y in batches:
            optimizer.zero_grad()  # torch's default also sets the gradients to None
            nn.functional.cross_entropy(model(X), y).backward()
            optimizer.step()

    # Execute
    params = [p for p in ours.parameters() if p.requires_grad]
    train(ours, MomentumSGD(params, lr=0.05, momentum=momentum))
    params = [p for p in theirs.parameters() if p.requires_grad]
    train(theirs, torch.optim.SGD(params, lr=0.05, momentum=momentum))

    # Assert: bit for bit, the frozen bias untouched.
    for (name, a), b in zip(ours.state_dict().items(), theirs.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert torch.equal(ours[0].bias, theirs[0].bias)
