"""The recorder that keeps a federated run's model versions in a repository."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedsim.core.coordinator import RoundReport
from fedsim.core.repository import DeploymentState
from fedsim.store.recorder import RepositoryRecorder
from fedsim.store.sqlite import SqliteRepository


def _round(number: int) -> RoundReport:
    return RoundReport(
        round=number,
        started=0.0,
        finished=1.0,
        selected=(1, 2),
        completed=(1, 2),
        aggregated=True,
        metrics={"accuracy": 0.5},
    )


def test_a_second_run_on_the_same_repository_continues_the_models_history(tmp_path: Path):
    # Prepare: a first job registered the model and stored a round's version (issue 15: a
    # second job on a running server failed with DuplicateModel).
    initial = {"w": np.zeros(3, dtype=np.float32)}
    trained = {"w": np.ones(3, dtype=np.float32)}
    with SqliteRepository(tmp_path) as repository:
        first = RepositoryRecorder(repository, name="m", architecture="m", initial=initial)
        first.record(_round(1), trained)

        # Execute
        second = RepositoryRecorder(repository, name="m", architecture="m", initial=trained)
        second.record(_round(1), initial)

        # Assert
        versions = repository.list_versions("m")
        assert [m.name for m in repository.list_models()] == ["m"]
    assert len(versions) == 4
    assert second.version == versions[-1].version and versions[-1].parent == versions[2].version


def test_an_async_aggregation_with_two_updates_from_one_device_deploys_to_it_once(
    tmp_path: Path,
):
    # Prepare: a FedBuff aggregation whose buffer holds two updates of device 8 (a fast client
    # restarted on the new version before the others finished; fl.mode=async on fl_digits
    # stopped with "device ids must be distinct, got [8, 4, 3, 8]").
    initial = {"w": np.zeros(3, dtype=np.float32)}
    report = RoundReport(
        round=0,
        started=0.0,
        finished=1.0,
        selected=(8, 4, 3, 8),
        completed=(8, 4, 3, 8),
        aggregated=True,
    )
    with SqliteRepository(tmp_path) as repository:
        recorder = RepositoryRecorder(repository, name="m", architecture="m", initial=initial)

        # Execute
        recorder.record(report, {"w": np.ones(3, dtype=np.float32)})

        # Assert
        [deployment] = repository.list_deployments("m")
    assert sorted(deployment.devices) == [3, 4, 8]
    assert set(deployment.devices.values()) == {DeploymentState.DEPLOYED}


def test_a_round_that_selected_no_device_records_no_deployment(tmp_path: Path):
    # Prepare: a job on a server whose only client was not online when the round began.
    initial = {"w": np.zeros(3, dtype=np.float32)}
    nobody = RoundReport(
        round=0, started=0.0, finished=0.0, selected=(), completed=(), aggregated=False
    )
    with SqliteRepository(tmp_path) as repository:
        recorder = RepositoryRecorder(repository, name="m", architecture="m", initial=initial)

        # Execute: the job failed here, "ValueError: a deployment needs at least one device".
        recorder.record(nobody, None)
        recorder.record(_round(1), {"w": np.ones(3, dtype=np.float32)})

        # Assert: the empty round left nothing; the next one is recorded as usual.
        deployments = repository.list_deployments("m")
        versions = repository.list_versions("m")
    assert [d.devices for d in deployments] == [{1: "deployed", 2: "deployed"}]
    assert len(versions) == 2 and recorder.version == versions[-1].version
