"""The SimPy runtime: compute model, scenario timings derived by hand, determinism."""

from dataclasses import replace

import numpy as np
import pytest
from topologies import hardware, link, star

from fedsim.core.calibration import StepModel
from fedsim.core.events import EventKind
from fedsim.core.experiment import compare
from fedsim.core.faults import FaultPlan, Outage
from fedsim.core.runtime import Cost, FitIns, ModelRef, Task, UploadDataIns
from fedsim.core.scenarios import client_based, cloud_based
from fedsim.core.topology import CpuQuota, with_cpu_quotas
from fedsim.core.workload import DatasetSpec, ModelSpec, WorkloadSpec
from fedsim.sim.compute import compute_seconds, jitter_factor
from fedsim.sim.runtime import SimTransport

MB = 1e6


def workload(samples=10, train_gflops=100.0, values=25_000_000):
    model = ModelSpec(
        name="m",
        input_size=32,
        num_classes=10,
        parameters=values,
        buffers=0,
        forward_flops=int(train_gflops * 1e9 / 3),
        train_flops=int(train_gflops * 1e9),
    )
    data = DatasetSpec(name="d", samples=1000, total_bytes=int(1000 * MB))  # 1 MB per sample
    return WorkloadSpec(
        model=model, dataset=data, samples_per_device=samples, batch_size=10, epochs=1
    )


def test_compute_time_scales_with_flops():
    hw = hardware(tflops=2.0)
    assert compute_seconds(Cost(flops=4e12), hw) == pytest.approx(2.0)
    assert compute_seconds(Cost(flops=8e12), hw) == pytest.approx(
        2 * compute_seconds(Cost(flops=4e12), hw)
    )
    # Memory-bound work takes bytes / bandwidth when that is the larger ceiling.
    assert compute_seconds(Cost(flops=1.0, memory_bytes=20e9), hw) == pytest.approx(2.0)
    assert compute_seconds(Cost(disk_bytes=1e9), hw) == pytest.approx(1.0)


def test_an_evaluation_is_timed_by_the_evaluation_step_model_training_by_the_training_one():
    # Prepare: a measured device that trains "m" at 10 ms + 1 ms a sample and evaluates it at
    # 2 ms + 10 us a sample (per batch), and one with spec-sheet figures only (2 TFLOP/s).
    measured = replace(
        hardware(tflops=2.0),
        kind="measured",
        steps={"m": StepModel(overhead_s=0.01, per_sample_s=1e-3)},
        eval_steps={"m": StepModel(overhead_s=0.002, per_sample_s=1e-5)},
    )
    spec = hardware(tflops=2.0)
    work = {"flops": 4e12, "model": "m", "samples": 1500, "batch_size": 1024}
    evaluation, training = Cost(**work, evaluation=True), Cost(**work)

    # Execute
    timed = {
        (name, cost.evaluation): compute_seconds(cost, hw)
        for name, hw in (("measured", measured), ("spec", spec))
        for cost in (evaluation, training)
    }

    # Assert: two batches of 1024 each way on the measured device; FLOPs on the other, and
    # for an evaluation of a model the measured device has no evaluation step model of.
    assert timed["measured", True] == pytest.approx(2 * 0.002 + 1500 * 1e-5)
    assert timed["measured", False] == pytest.approx(2 * 0.01 + 1500 * 1e-3)
    assert timed["spec", True] == timed["spec", False] == pytest.approx(2.0)
    other = Cost(**{**work, "model": "n"}, evaluation=True)
    assert compute_seconds(other, measured) == pytest.approx(2.0)


def test_jitter_has_mean_one_and_the_profiles_spread():
    rng = np.random.default_rng(0)
    draws = np.array([jitter_factor(rng, 0.1) for _ in range(20000)])
    assert draws.mean() == pytest.approx(1.0, abs=0.005)
    assert draws.std() == pytest.approx(0.1, abs=0.005)
    assert jitter_factor(rng, 0.0) == 1.0


def test_cloud_based_time_is_upload_then_server_training():
    # Prepare: 2 clients with 10 MB each behind a 10 MB/s shared uplink with 5 ms latency;
    # the server trains 20 samples x 100 GFLOP at 10 TFLOP/s.
    topo = star(2, uplink=link("up", 10.0, latency_s=0.005))
    tr = SimTransport(topo, seed=0)
    # Execute
    t = cloud_based(tr, clients=[1, 2], workload=workload())
    # Assert: 20 MB through 10 MB/s = 2 s (+5 ms), then 2e12 / 1e13 = 0.2 s.
    assert t == pytest.approx(0.005 + 2.0 + 0.2)
    kinds = [e.kind for e in tr.events]
    assert kinds.count(EventKind.DATA_UPLOAD) == 2 and kinds.count(EventKind.TRAIN) == 1


def test_client_based_time_is_deploy_train_upload_aggregate_publish():
    # Prepare: a 100 MB model (25M float32), clients train 10 x 100 GFLOP at 1 TFLOP/s = 1 s.
    topo = star(2, uplink=link("up", 100.0))
    tr = SimTransport(topo, seed=0)
    # Execute
    t, report = client_based(tr, clients=[1, 2], workload=workload())
    # Assert: two 100 MB downloads share 100 MB/s: 2 s; train 1 s; two uploads 2 s;
    # aggregate 3 x 100 MB at 10 GB/s = 0.03 s; publish 100 MB at 1 GB/s = 0.1 s.
    assert t == pytest.approx(2 + 1 + 2 + 0.03 + 0.1)
    assert report.aggregated and sorted(report.completed) == [1, 2] and report.version.version == 1


def test_deadline_leaves_stragglers_out():
    # Prepare: client 2 is 10x slower; a round deadline cuts it off.
    topo = star(2)
    slow = replace(topo.devices[2], hardware=hardware(tflops=0.1))
    topo = topo.__class__(topo.name, topo.groups, {**topo.devices, 2: slow})
    tr = SimTransport(topo, seed=0)
    ref = ModelRef(name="m", version=0, nbytes=1000)
    tasks = [
        Task(
            id=f"t{d}",
            device=d,
            ins=FitIns(
                model=ref, samples=1, epochs=1, batch_size=1, flops=1e12, update_nbytes=1000
            ),
        )
        for d in (1, 2)
    ]
    # Execute
    got = tr.run(tasks, deadline=5.0)
    # Assert: client 1 needs 1 s, client 2 needs 10 s: only client 1 arrives, at the deadline.
    assert [r.device for r in got] == [1]
    assert tr.now() == pytest.approx(5.0)
    assert [r.device for r in tr.wait(count=1)] == [2]


def test_training_tasks_run_by_callbacks_make_the_events_their_processes_made(monkeypatch):
    # Prepare: jittered devices behind a shared 10 MB/s uplink with latency; device 1 has two
    # training tasks (the second waits for its processor), a data upload runs as a process
    # between training tasks, device 4 goes offline while it downloads, some tasks drop out,
    # and the server deploys the model version first (its round overhead).
    topo = star(4, uplink=link("up", 10.0, latency_s=0.01))
    jittery = hardware("cli", tflops=1.0, jitter=0.2)
    deploys = replace(
        topo.devices[0].hardware,
        kind="measured",
        steps={"m": StepModel(overhead_s=0.0, per_sample_s=1e-6)},
        round_overhead_s=0.05,
    )
    topo = topo.__class__(
        topo.name,
        topo.groups,
        {k: replace(d, hardware=jittery if k else deploys) for k, d in topo.devices.items()},
    )
    ref = ModelRef(name="m", version=0, nbytes=2_000_000)

    def fit(tid, dev):
        ins = FitIns(
            model=ref, samples=1, epochs=1, batch_size=1, flops=5e11, update_nbytes=1_000_000
        )
        return Task(id=tid, device=dev, ins=ins)

    tasks = [
        fit("a", 1),
        fit("b", 2),
        Task(id="up", device=3, ins=UploadDataIns(samples=1, nbytes=500_000)),
        fit("c", 1),
        fit("d", 4),
        fit("e", 3),
    ]
    faults = FaultPlan(dropout=0.3, outages=[Outage(device=4, start=0.5, end=0.6)])

    def run():
        tr = SimTransport(topo, seed=3, faults=faults)
        got = tr.run(tasks, deadline=60.0)
        events = [(e.device, e.kind, e.start, e.end, e.nbytes, e.task) for e in tr.events]
        results = [
            (r.task_id, r.started, r.finished, r.update, r.cpu_s, r.train_cpu_s) for r in got
        ]
        return results, events

    # Execute: as callbacks, then every task as a SimPy process.
    fast = run()
    monkeypatch.setattr(SimTransport, "_plain_fit", lambda self, task: False)
    slow = run()
    # Assert: the same results and events, in the same order, to the last bit; and the case
    # covers a queued training, a dropout and an outage (not every task returns).
    assert fast == slow
    fits = [r for r in fast[0] if r[3] is not None]
    assert fits and all(r[4] >= r[5] > 0 for r in fits)  # processor seconds, as agents count
    assert 2 <= len(fast[0]) < len(tasks)
    assert min(r[1] for r in fast[0]) == pytest.approx(0.05)
    train_starts = [e[2] for e in fast[1] if e[0] == 1 and e[1] is EventKind.TRAIN]
    assert len(train_starts) == 2 and train_starts[1] > train_starts[0]


def test_same_seed_same_numbers_different_seed_different_numbers():
    topo = star(2, uplink=link("up", 50.0))
    topo = topo.__class__(
        topo.name,
        topo.groups,
        {
            k: replace(d, hardware=hardware(tflops=1.0, jitter=0.1)) if k else d
            for k, d in topo.devices.items()
        },
    )

    def run(seed):
        out = compare(
            topo, workload(), [1, 2], lambda t, s: SimTransport(t, seed=s), repetitions=5, seed=seed
        )
        return out.t_ref + out.t_new

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_a_measured_step_model_times_training_of_its_model_only():
    # Prepare: 2 ms per step and 0.1 ms per sample for model "m"; 1 TFLOP/s otherwise.
    spec = hardware(tflops=1.0)
    measured = replace(
        spec,
        kind="measured",
        source="test",
        steps={"m": StepModel(overhead_s=0.002, per_sample_s=1e-4)},
    )
    train = Cost(flops=1e12, model="m", samples=50, batch_size=16, epochs=2)

    # Execute / Assert: 2 epochs x (4 batches x 2 ms + 50 samples x 0.1 ms) = 26 ms.
    assert compute_seconds(train, measured) == pytest.approx(2 * (4 * 0.002 + 50 * 1e-4))
    # Another model, and any device without a step model, take the FLOPs as before.
    assert compute_seconds(replace(train, model="other"), measured) == pytest.approx(1.0)
    assert compute_seconds(train, spec) == pytest.approx(1.0)


def measured_clients(topology, **figures):
    """``topology`` with every trainer on a measured profile: 2 ms + 0.1 ms x n per step of
    model "m", and ``figures`` (cold start, throughputs) on top."""
    measured = replace(
        hardware("measured_cli", 1.0),
        kind="measured",
        source="test",
        steps={"m": StepModel(overhead_s=0.002, per_sample_s=1e-4)},
        **figures,
    )
    devices = {
        d.id: replace(d, hardware=measured) if d.role == "trainer" else d
        for d in topology.devices.values()
    }
    return replace(topology, devices=devices)


def fit(nbytes=1000, update_nbytes=1000):
    return FitIns(
        model=ModelRef(name="m", version=0, nbytes=nbytes),
        samples=50,
        epochs=2,
        batch_size=16,
        flops=1e12,
        update_nbytes=update_nbytes,
    )


def train_durations(transport, tasks):
    """The TRAIN step's duration of each of ``tasks``, run one after the other."""
    for task in tasks:
        transport.run([task])
    by_task = {e.task: e.duration for e in transport.events if e.kind == EventKind.TRAIN}
    return [by_task[t.id] for t in tasks]


def test_a_measured_profile_pays_its_cold_start_once_per_device_on_its_first_training_task():
    # Prepare: two trainers whose first training task of a run takes 0.5 s more.
    topology = measured_clients(star(2), cold_start_s=0.5)
    steady = 2 * (4 * 0.002 + 50 * 1e-4)  # 2 epochs x (4 batches x 2 ms + 50 x 0.1 ms)
    tasks = [Task(id=f"t{i}", device=d, ins=fit()) for i, d in enumerate([1, 1, 2, 2, 1])]

    # Execute: two runs (two transports) of the same tasks.
    first_run = train_durations(SimTransport(topology, seed=0), tasks)
    second_run = train_durations(SimTransport(topology, seed=0), tasks)

    # Assert: each device's first task costs the cold start more than its later ones; a new
    # run starts cold again.
    expected = [steady + 0.5, steady, steady + 0.5, steady, steady]
    assert first_run == pytest.approx(expected)
    assert second_run == pytest.approx(expected)


def test_a_measured_profile_pays_loading_the_model_and_serializing_the_update():
    # Prepare: loads at 1 MB/s and serializes at 2 MB/s; a 3 MB model and a 4 MB update.
    topology = measured_clients(star(1), load_bytes_per_s=1e6, serialize_bytes_per_s=2e6)
    task = Task(id="t", device=1, ins=fit(nbytes=3_000_000, update_nbytes=4_000_000))
    transport = SimTransport(topology, seed=0)

    # Execute
    (train,) = train_durations(transport, [task])

    # Assert: 3 MB / 1 MB/s + 4 MB / 2 MB/s = 5 s on the device, between the two transfers.
    steady = compute_seconds(task.ins.cost(), topology.devices[1].hardware)
    assert train == pytest.approx(steady + 5.0)
    kinds = [e.kind for e in sorted(transport.events, key=lambda e: e.start)]
    assert kinds == [EventKind.MODEL_DOWNLOAD, EventKind.TRAIN, EventKind.UPDATE_UPLOAD]


def test_a_measured_profile_pays_its_task_overhead_on_every_training_task():
    # Prepare: a trainer whose every training task costs 5 ms beyond its steps.
    topology = measured_clients(star(1), task_overhead_s=0.005)
    steady = 2 * (4 * 0.002 + 50 * 1e-4)
    tasks = [Task(id=f"t{i}", device=1, ins=fit()) for i in range(3)]

    # Execute
    durations = train_durations(SimTransport(topology, seed=0), tasks)

    # Assert: each task, the first and the later ones, takes its steps and the 5 ms.
    assert durations == pytest.approx([steady + 0.005] * 3)


def test_a_spec_sheet_profile_pays_no_cold_start_nor_serialization():
    # Prepare: the trainers of star() are spec-sheet profiles (1 TFLOP/s).
    topology = star(1)
    tasks = [Task(id=f"t{i}", device=1, ins=fit(10**9, 10**9)) for i in range(2)]

    # Execute
    durations = train_durations(SimTransport(topology, seed=0), tasks)

    # Assert: the compute model's 1e12 FLOPs at 1 TFLOP/s, first task and later ones.
    assert durations == pytest.approx([1.0, 1.0])


def transfer_durations(transport):
    """Each transfer event's duration, by kind."""
    return {e.kind: e.duration for e in transport.events if e.kind.is_transfer}


def test_each_transfer_a_device_makes_costs_it_its_request_cpu_at_its_speed():
    # Prepare: one trainer behind a 1 MB/s link, at half its profile's speed; its profile costs
    # 10 ms of processor per request, or none. A 1 MB model down, a 1 MB update up.
    slow_link = star(1, access=link("a", 1.0))
    task = Task(id="t", device=1, ins=fit(nbytes=1_000_000, update_nbytes=1_000_000))
    runs = {}
    for cost in (0.0, 0.01):
        topology = measured_clients(slow_link, request_cpu_s=cost)
        devices = {**topology.devices, 1: replace(topology.devices[1], speed=0.5)}
        transport = SimTransport(replace(topology, devices=devices), seed=0)

        # Execute
        (result,) = transport.run([task])
        runs[cost] = (transfer_durations(transport), result.finished - result.started)

    # Assert: each of the two transfers takes 10 ms / 0.5 = 20 ms more, the task 40 ms more.
    (free, free_task), (costly, costly_task) = runs[0.0], runs[0.01]
    assert free[EventKind.MODEL_DOWNLOAD] == pytest.approx(1.0)
    for kind in (EventKind.MODEL_DOWNLOAD, EventKind.UPDATE_UPLOAD):
        assert costly[kind] == pytest.approx(free[kind] + 0.02)
    assert costly_task == pytest.approx(free_task + 0.04)


def test_polling_pays_latency_per_request_and_response_as_the_agents_do():
    # Prepare: one trainer behind a 1 MB/s link with 50 ms of latency each way (1 TFLOP/s,
    # 1e12 FLOPs: 1 s of training); a 1 MB model down, a 1 MB update up; two tasks in turn.
    topology = star(1, access=link("a", 1.0, latency_s=0.05))
    tasks = [
        Task(id=f"t{i}", device=1, ins=fit(nbytes=1_000_000, update_nbytes=1_000_000))
        for i in range(2)
    ]
    took = {}
    for polling in (False, True):
        transport = SimTransport(topology, seed=0, polling=polling)

        # Execute
        results = [transport.run([task])[0] for task in tasks]
        took[polling] = [r.finished - r.started for r in results]

    # Assert: per transfer, 50 ms + 1 s each way and 1 s of training: 3.1 s a task. Polling,
    # the task comes as the poll's answer (50 ms) and the download's request goes first
    # (50 ms): 3.2 s; the second task also waits for the poll sent after the first result's
    # answer came back (a 100 ms round trip): 3.3 s.
    assert took[False] == pytest.approx([3.1, 3.1])
    assert took[True] == pytest.approx([3.2, 3.3])


def test_a_polled_tasks_first_transfer_starts_when_the_server_hands_the_task_out():
    # Prepare: the trainer of the test above, polling (as a measured run's prediction).
    topology = star(1, access=link("a", 1.0, latency_s=0.05))
    transport = SimTransport(topology, seed=0, polling=True)
    task = Task(id="t", device=1, ins=fit(nbytes=1_000_000, update_nbytes=1_000_000))
    # Execute
    (result,) = transport.run([task])
    # Assert: the download's event holds the poll answer's trip (50 ms), the request (50 ms),
    # the bytes' latency and the bytes (1.05 s), as an agent's steps are laid out from the
    # moment the server handed the task out; the upload follows the training as before.
    steps = {e.kind: e for e in transport.events.events}
    download, upload = steps[EventKind.MODEL_DOWNLOAD], steps[EventKind.UPDATE_UPLOAD]
    assert download.start == pytest.approx(result.started) and download.start == pytest.approx(0)
    assert download.end == pytest.approx(1.15)
    assert upload.start == pytest.approx(2.15) and upload.end == pytest.approx(3.2)


def test_a_task_result_counts_the_processor_seconds_charged_as_an_agent_counts_its_own():
    # Prepare: a measured trainer (10 ms a request, 5 ms of task overhead), at half its
    # profile's speed, held to 0.25 core or not; a 1 MB model it loads at
    # 1 MB/s, a 1 MB update it serializes at 2 MB/s.
    topology = measured_clients(
        star(1),
        request_cpu_s=0.01,
        task_overhead_s=0.005,
        load_bytes_per_s=1e6,
        serialize_bytes_per_s=2e6,
    )
    devices = {**topology.devices, 1: replace(topology.devices[1], speed=0.5)}
    topology = replace(topology, devices=devices)
    held = with_cpu_quotas(topology, {1: CpuQuota(cores=0.25, period_s=0.1)})
    task = Task(id="t", device=1, ins=fit(nbytes=1_000_000, update_nbytes=1_000_000))

    # Execute
    (free,) = SimTransport(topology, seed=0).run([task])
    (quota,) = SimTransport(held, seed=0).run([task])

    # Assert: the task's whole cycle (two requests, the load, the steps, the serialization,
    # the overhead), at half speed; under the quota the same work at 0.25 of a core.
    steps = 2 * (4 * 0.002 + 50 * 1e-4) / 0.5
    assert free.train_cpu_s == pytest.approx(steps)
    assert free.cpu_s == pytest.approx(steps + (2 * 0.01 + 1.0 + 0.5 + 0.005) / 0.5)
    assert quota.train_cpu_s == pytest.approx(0.25 * free.train_cpu_s)
    assert quota.cpu_s == pytest.approx(0.25 * free.cpu_s)


def test_each_segment_of_a_transfer_costs_processor_work_done_while_the_bytes_flow():
    # Prepare: a trainer behind a 1 MB/s link with 0.1 s of latency; its profile costs 1 ms
    # of processor per 1448-byte segment (or none), or the same behind a 100 MB/s link; a
    # model of 144,800 B (100 segments) down.
    ins = fit(nbytes=144_800)
    times = {}
    for per_segment, link_mb in ((0.0, 1.0), (0.001, 1.0), (0.001, 100.0)):
        measured = measured_clients(
            star(1, access=link("a", link_mb, latency_s=0.1)), segment_cpu_s=per_segment
        )
        transport = SimTransport(measured, seed=0)

        # Execute
        (result,) = transport.run([Task(id="t", device=1, ins=ins)])
        times[per_segment, link_mb] = (
            transfer_durations(transport)[EventKind.MODEL_DOWNLOAD],
            result.cpu_s,
        )

    # Assert: at 1 MB/s the bytes take 0.1448 s and the 100 ms of processor work fits in
    # them; at 100 MB/s the work, begun as the bytes start to arrive, ends the transfer.
    assert times[0.0, 1.0][0] == pytest.approx(0.1 + 0.1448)
    assert times[0.001, 1.0][0] == pytest.approx(0.1 + 0.1448)
    assert times[0.001, 100.0][0] == pytest.approx(0.1 + 0.1)
    # Both transfers' segments are the task's processor seconds (a 1000 B update: 1 segment).
    assert times[0.001, 1.0][1] - times[0.0, 1.0][1] == pytest.approx(0.101)


def test_the_server_pays_its_round_overhead_once_per_model_version_it_deploys():
    # Prepare: a server whose profile takes 0.2 s to deploy a version, at twice its speed.
    topology = star(2)
    server = topology.devices[0]
    measured = replace(
        server.hardware,
        kind="measured",
        source="test",
        steps={"m": StepModel(overhead_s=0.0, per_sample_s=1e-6)},
        round_overhead_s=0.2,
    )
    devices = {**topology.devices, 0: replace(server, hardware=measured, speed=2.0)}
    transport = SimTransport(replace(topology, devices=devices), seed=0)

    def version(v, tag):
        ins = replace(fit(), model=ModelRef(name="m", version=v, nbytes=1000))
        return [Task(id=f"{tag}{d}", device=d, ins=ins) for d in (1, 2)]

    # Execute: a round of version 0, another task batch of version 0, then version 1.
    starts = []
    for tasks in (version(0, "a"), version(0, "b"), version(1, "c")):
        begun = transport.now()
        results = transport.run(tasks)
        starts.append(sorted(r.started - begun for r in results))

    # Assert: a new version delays its tasks by 0.2 s / 2 (both tasks alike); the same
    # version again costs nothing.
    assert starts[0] == pytest.approx([0.1, 0.1])
    assert starts[1] == pytest.approx([0.0, 0.0])
    assert starts[2] == pytest.approx([0.1, 0.1])


def trained_fit(nbytes=1_000_000, update_nbytes=1_000_000):
    """A fit task that carries the model's parameters: its update is one the agent keeps."""
    return replace(fit(nbytes, update_nbytes), parameters={"w": np.zeros(3, dtype=np.float32)})


def test_uploading_a_trained_update_costs_keeping_it_on_disk_first():
    # Prepare: a trainer at half its profile's speed behind a 1 MB/s link; keeping an update
    # costs its profile 10 ms of processor and 30 ms of waiting for the disk.
    slow_link = star(1, access=link("a", 1.0))
    topology = measured_clients(slow_link, persist_cpu_s=0.01, persist_io_s=0.03)
    devices = {**topology.devices, 1: replace(topology.devices[1], speed=0.5)}
    topology = replace(topology, devices=devices)
    durations = {}
    for name, ins in (("trained", trained_fit()), ("timing only", fit(1_000_000, 1_000_000))):
        transport = SimTransport(topology, seed=0)

        # Execute
        transport.run([Task(id="t", device=1, ins=ins)])
        durations[name] = transfer_durations(transport)

    # Assert: the trained update's upload takes 10 ms / 0.5 + 30 ms longer (the disk's wait
    # does not scale with the processor's speed); downloads, and a timing-only update that the
    # agent does not keep, pay nothing for it.
    kept, plain = durations["trained"], durations["timing only"]
    assert plain[EventKind.UPDATE_UPLOAD] == pytest.approx(1.0)
    assert kept[EventKind.UPDATE_UPLOAD] == pytest.approx(1.0 + 0.02 + 0.03)
    assert kept[EventKind.MODEL_DOWNLOAD] == pytest.approx(plain[EventKind.MODEL_DOWNLOAD])


def test_a_device_under_a_cpu_quota_works_in_bursts_of_its_periods_quota():
    # Prepare: the steady training task takes 26 ms at the profile's (average) speed; the same
    # device held to a tenth of a core in 100 ms periods does that work (2.6 ms of a whole
    # core) at once, and ten times the work (26 ms of a core) in three periods. Free links.
    topology = measured_clients(star(1))
    held = with_cpu_quotas(topology, {1: CpuQuota(cores=0.1, period_s=0.1)})
    steady = 2 * (4 * 0.002 + 50 * 1e-4)
    slow = replace(
        held.devices[1].hardware, steps={"m": StepModel(overhead_s=0.02, per_sample_s=1e-3)}
    )
    slow_held = replace(held, devices={**held.devices, 1: replace(held.devices[1], hardware=slow)})
    task = Task(id="t", device=1, ins=fit())

    # Execute
    (free,) = train_durations(SimTransport(topology, seed=0), [task])
    (burst,) = train_durations(SimTransport(held, seed=0), [task])
    transport = SimTransport(slow_held, seed=0)
    transport.run([task])
    (train,) = [e for e in transport.events if e.kind == EventKind.TRAIN]

    # Assert: the unheld device at its profile's speed; the short burst ten times faster; the
    # long one (260 ms at the average speed), begun early in the first period after the
    # download, ends 6 ms into the third: 10 ms of work, throttled to 100 ms, 10 ms,
    # throttled to 200 ms, 6 ms.
    assert free == pytest.approx(steady)
    assert burst == pytest.approx(steady * 0.1)
    assert train.start < 0.09
    assert train.end == pytest.approx(0.206)


def test_devices_under_quotas_share_the_cores_of_their_host():
    # Prepare: two trainers, each held to half a core, whose task is 20 ms of training at
    # that average speed (50 samples x 0.4 ms: 10 ms of a whole core, within a period's 50 ms
    # of quota); on a host of one core, or with no host named. Free links.
    topology = measured_clients(star(2))
    slow = replace(
        topology.devices[1].hardware, steps={"m": StepModel(overhead_s=0.0, per_sample_s=4e-4)}
    )
    topology = replace(
        topology,
        devices={d: replace(dev, hardware=slow) if d in (1, 2) else dev
                 for d, dev in topology.devices.items()},
    )  # fmt: skip
    tasks = [Task(id=f"t{d}", device=d, ins=replace(fit(), epochs=1)) for d in (1, 2)]
    ends = {}
    for host in (None, 1):
        quota = CpuQuota(cores=0.5, period_s=0.1, host_cores=host)
        transport = SimTransport(with_cpu_quotas(topology, {1: quota, 2: quota}), seed=0)

        # Execute
        transport.run(tasks)
        trains = [e for e in transport.events if e.kind == EventKind.TRAIN]
        ends[host] = sorted(e.end - e.start for e in trains)

    # Assert: each alone takes its 10 ms at a whole core's speed; on one core the second
    # waits for the first's 10 ms.
    assert ends[None] == pytest.approx([0.01, 0.01])
    assert ends[1] == pytest.approx([0.01, 0.02])
