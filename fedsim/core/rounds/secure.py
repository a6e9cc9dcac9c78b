"""Secure aggregation inside a synchronous round: the protocol run, and charged to the transport.

A round with ``Federation.secagg`` set gathers its updates through :func:`secure_collect`
instead of in the clear. Each of the protocol's message rounds is a
:class:`~fedsim.core.runtime.SecAggIns` task per client carrying the server's message; the
runtime has the device answer it (:class:`~fedsim.core.secagg.SecAggDevices`: in the
simulator's transport, in each agent in real mode) and charges or measures its bytes over the
device's link and its compute on the device. This module runs only the server's side and
never sees an update in the clear:

1. ``advertise``: upload two public keys;
2. ``share``: download the neighbours' keys, share and encrypt, upload the shares;
3. ``mask``: download the shares addressed to it, expand the masks (done before training, as
   the masks do not depend on the update);
4. the fit task itself (``FitIns.secagg``), whose upload is the masked input (``bits`` per
   value), masked on the device;
5. ``unmask``: download the survivors' list, decrypt, upload one share per neighbour;

then the server unmasks the sum (``EventKind.SECAGG``) and the strategy (FedAvg) divides it by
the survivors' examples. Devices lost at a stage leave the round there. Below the threshold
the round is not aggregated, and its failures say why under ``-1``.

Crypto work is charged as operations at the device's profile (one per FLOP of it), counted
as CPU cycles of the implementation fedsim runs, measured on a 2.6 GHz x86 core (Python 3.11,
``cryptography`` 48): an X25519 agreement with its HKDF 131 us (3.4e5 cycles), SHAKE-256
4.9 ns per byte (13 cycles), encrypting or decrypting one ~200-byte share with AES-GCM 3.5 us
(9e3 cycles), Shamir's sharing 27 us for 10 shares of threshold 5 (1.4e3 cycles per 521-bit
multiply-and-reduce of a coefficient).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import cast

import numpy as np

from fedsim.core.events import EventKind
from fedsim.core.rounds.base import Federation
from fedsim.core.runtime import Cost, FitIns, SecAggFit, SecAggIns, Task, TaskResult, Update
from fedsim.core.secagg import SecAggAborted, SecAggServer, unflatten

X25519_OPS = 3.4e5  # one agreement, HKDF included
SHAKE_OPS_PER_BYTE = 13.0
AEAD_OPS = 9e3  # one share's encryption or decryption
SHAMIR_OPS = 1.4e3  # one 521-bit multiply-and-reduce


# accepted results, lost and rejected devices (reasons), the updates to aggregate
SecureCollected = tuple[list[TaskResult], dict[int, str], dict[int, str], list[Update]]


def secure_collect(
    fed: Federation,
    rnd: int,
    selected: Sequence[int],
    shares: Mapping[int, int],
    deadline: float | None,
) -> SecureCollected:
    """One synchronous round's updates, summed under secure aggregation."""
    setup = fed.secagg
    if setup is None:
        raise ValueError("secure_collect needs a federation with secagg set")
    if fed.parameters is None:
        raise ValueError(
            "secure aggregation masks the model's values, and this run has none (a timing-only "
            "workload): run it with training"
        )
    params, crypto = setup.params, setup.crypto
    reference = fed.parameters
    length = sum(np.asarray(a).size for a in reference.values())
    epochs = fed.config.local_epochs
    scale = params.scale(sum(shares[d] * epochs for d in selected))
    server = SecAggServer(
        params=params,
        crypto=crypto,
        clients=list(selected),
        length=length,
        scale=scale,
        # The graph is public; seeding it by the round leaves the federation's draws as
        # they are without secure aggregation.
        seed=rnd,
    )
    session = f"r{rnd}"
    degree = {d: len(server.graph[d]) for d in selected}
    failures: dict[int, str] = {}

    def stage(
        name: str, down: Mapping[int, bytes], ops: Callable[[int], float]
    ) -> dict[int, bytes]:
        """One message round: each device fetches ``down[d]`` and answers it at a cost of
        ``ops(d)``; returns the answers of the devices that got through."""
        tasks = [
            Task(
                id=f"r{rnd}-secagg-{name}-d{d}",
                device=d,
                ins=SecAggIns(
                    session=session,
                    stage=name,
                    params=params,
                    message=down[d],
                    cost=Cost(flops=ops(d)),
                ),
            )
            for d in down
        ]
        fed.transport.submit(tasks)
        results = fed.gather({t.id: t.device for t in tasks}, stage_deadline())
        answers = {r.device: r.payload for r in results if r.ok and r.payload is not None}
        for r in results:
            if r.ok and r.payload is None:
                raise ValueError(f"task {r.task_id} came back without the device's answer")
        for d in down:
            if d not in answers:
                failures[d] = f"dropped out at secure aggregation's {name} stage"
        return dict(sorted(answers.items()))

    def stage_deadline() -> float | None:
        """Until when a protocol stage waits: its own timeout when set, else the round's
        deadline (which then bounds every stage, the fit's included)."""
        if params.stage_timeout_s is None:
            return deadline
        return fed.transport.now() + params.stage_timeout_s

    def mask_ops(d: int) -> float:
        return degree[d] * X25519_OPS + (degree[d] + 1) * 8 * length * SHAKE_OPS_PER_BYTE

    try:
        keys = stage("advertise", {d: b"" for d in selected}, lambda d: 2 * X25519_OPS)
        rosters = server.collect_keys(keys)
        shared = stage(
            "share",
            rosters,
            lambda d: (degree[d] + 1) * (X25519_OPS + AEAD_OPS + 2 * SHAMIR_OPS * degree[d]),
        )
        forwarded = server.collect_shares(shared)
        # The masks are expanded before training: they do not depend on the update.
        ready = stage("mask", forwarded, mask_ops)
        # The fit task's upload is the masked input: ``bits`` per value, not the update's size.
        masked_nbytes = length * params.value_bytes
        tasks = []
        for d in ready:
            task = fed.fit_task(rnd, d, shares[d])
            ins = replace(
                cast(FitIns, task.ins),
                update_nbytes=masked_nbytes,
                secagg=SecAggFit(session=session, scale=scale, nbytes=masked_nbytes),
            )
            tasks.append(replace(task, ins=ins))
        fed.transport.submit(tasks)
        results = fed.gather({t.id: t.device for t in tasks}, deadline)
        for r in results:
            if r.update is not None and r.update.parameters is not None:
                raise ValueError(f"device {r.device} sent its update in the clear")
        # The server checks what it can see (example count, metrics), never the arrays.
        accepted, rejected = fed.validate(results)
        failures.update(fed.lost(ready, results))
        masked = {}
        for r in accepted:
            if r.update is None or r.update.masked is None:
                raise ValueError(f"device {r.device} returned no masked input")
            masked[r.device] = r.update.masked
        requests = server.collect_masked(masked)
        replies = stage("unmask", requests, lambda d: (degree[d] + 1) * (X25519_OPS + AEAD_OPS))
        survivors, dropped = len(requests), len(shared) - len(requests)
        group = max(degree.values()) + 1
        unmask_ops = (survivors + dropped * group) * (
            8 * length * SHAKE_OPS_PER_BYTE + group * SHAMIR_OPS
        ) + dropped * group * X25519_OPS
        total = fed.transport.server_work(
            EventKind.SECAGG, Cost(flops=unmask_ops), lambda: server.unmask(replies)
        )
    except SecAggAborted as exc:
        failures[-1] = str(exc)
        return [], failures, {}, []
    accepted = [r for r in accepted if r.device in requests]
    weight = sum(r.update.num_examples for r in accepted if r.update is not None)
    if total is None or weight <= 0:
        failures[-1] = "secure aggregation returned no sum"
        return accepted, failures, rejected, []
    losses = [
        (r.update.metrics["loss"], r.update.num_examples)
        for r in accepted
        if r.update is not None and "loss" in r.update.metrics
    ]
    metrics = {}
    if len(losses) == len(accepted) and losses:
        metrics["loss"] = math.fsum(x * n for x, n in losses) / weight
    combined = Update(
        num_examples=weight,
        nbytes=length * params.value_bytes,
        parameters=unflatten(total / weight, reference),
        metrics=metrics,
    )
    return accepted, failures, rejected, [combined]
