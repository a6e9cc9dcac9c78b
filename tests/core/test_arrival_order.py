"""Aggregation does not depend on the order in which results arrive.

A real server gathers updates as their transfers finish, an order that changes from run to run;
float32 sums are not associative, so the round's model must be combined in a fixed order (the
devices') for a real run to match its simulation, or another real run, to the bit.
"""

import itertools

import numpy as np

from fedsim.core.rounds.base import ClientWork, Federation
from fedsim.core.runtime import ModelRef, TaskResult, Update
from fedsim.core.strategies.registry import make_strategy

DEVICES = (3, 7, 11, 20)


def federation() -> Federation:
    rng = np.random.default_rng(0)
    params = {"w": rng.standard_normal((64, 33)).astype(np.float32)}
    work = ClientWork(
        samples=dict.fromkeys(DEVICES, 10),
        train_flops_per_sample=1.0,
        update_nbytes=8448,
        state_values=64 * 33,
    )
    return Federation(
        transport=None,  # validate and aggregate never touch it
        strategy=make_strategy("fedavg"),
        work=work,
        model=ModelRef(name="m", version=0, nbytes=8448),
        parameters=params,
    )


def results(fed: Federation) -> list[TaskResult]:
    """One accepted result per device, with updates far enough apart that float32 sums of
    them in different orders differ in their last bits."""
    rng = np.random.default_rng(1)
    out = []
    for dev in DEVICES:
        task = fed.fit_task(1, dev, 10)
        scale = 10.0 ** rng.integers(-3, 4)
        arrays = {
            "w": (fed.parameters["w"] + scale * rng.standard_normal((64, 33))).astype(np.float32)
        }
        update = Update(num_examples=int(rng.integers(1, 11)), nbytes=8448, parameters=arrays)
        out.append(
            TaskResult(task_id=task.id, device=dev, started=0.0, finished=1.0, update=update)
        )
    return out


def test_results_are_validated_in_device_order_whatever_their_arrival():
    # Prepare
    fed = federation()
    arrived = results(fed)[::-1]
    # Execute
    accepted, rejected = fed.validate(arrived)
    # Assert
    assert rejected == {}
    assert [r.device for r in accepted] == sorted(DEVICES)


def test_every_arrival_order_aggregates_to_the_same_bits():
    # Prepare
    validated, as_arrived = [], []
    for order in itertools.permutations(range(len(DEVICES))):
        fed = federation()
        made = [results(fed)[i] for i in order]
        # Execute
        accepted, _ = fed.validate(made)
        validated.append(fed.strategy.aggregate_fit(fed.parameters, [r.update for r in accepted]))
        as_arrived.append(fed.strategy.aggregate_fit(fed.parameters, [r.update for r in made]))
    # Assert: summed as they arrived, the 24 orders give more than one model (so the order
    # matters and this test can fail); validated first, one model, bit for bit.
    assert any(not np.array_equal(a["w"], as_arrived[0]["w"]) for a in as_arrived[1:])
    assert all(np.array_equal(v["w"], validated[0]["w"]) for v in validated[1:])
