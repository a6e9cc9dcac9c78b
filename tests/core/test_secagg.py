"""Secure aggregation: Shamir, fixed point, masking, dropouts and what the server sees."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedsim.core.secagg import (
    FIELD_PRIME,
    SecAggAborted,
    SecAggClient,
    SecAggDevices,
    SecAggParams,
    SecAggServer,
    dequantize,
    flatten,
    neighbourhoods,
    quantize,
    shamir_combine,
    shamir_split,
    unflatten,
)
from fedsim.real.secagg_crypto import X25519Crypto

CRYPTO = X25519Crypto()


def run_round(
    values: dict[int, np.ndarray],
    weights: dict[int, int],
    params: SecAggParams,
    *,
    drop_before_masked: frozenset[int] = frozenset(),
    drop_before_unmask: frozenset[int] = frozenset(),
) -> tuple[np.ndarray, SecAggServer, float]:
    """One protocol round among ``values``' clients; returns the unmasked sum, the server and
    the fixed-point scale."""
    ids = sorted(values)
    length = next(iter(values.values())).size
    scale = params.scale(sum(weights.values()))
    server = SecAggServer(
        params=params, crypto=CRYPTO, clients=ids, length=length, scale=scale, seed=7
    )
    clients = {u: SecAggClient(id=u, params=params, crypto=CRYPTO) for u in ids}
    rosters = server.collect_keys({u: c.advertise() for u, c in clients.items()})
    forwarded = server.collect_shares({u: clients[u].share_keys(r) for u, r in rosters.items()})
    masked = {
        u: clients[u].masked_input(f, values[u], weights[u], scale)
        for u, f in forwarded.items()
        if u not in drop_before_masked
    }
    requests = server.collect_masked(masked)
    replies = {u: clients[u].unmask(r) for u, r in requests.items() if u not in drop_before_unmask}
    return server.unmask(replies), server, scale


def updates(n: int, length: int, seed: int = 0) -> tuple[dict[int, np.ndarray], dict[int, int]]:
    rng = np.random.default_rng(seed)
    values = {u: rng.normal(0.0, 1.0, length) for u in range(n)}
    weights = {u: int(rng.integers(1, 50)) for u in range(n)}
    return values, weights


# -- Shamir ---------------------------------------------------------------------------------------


def test_shamir_any_threshold_shares_rebuild_the_secret():
    # Prepare
    secret = int.from_bytes(b"\x07" * 32, "big")
    shares = shamir_split(secret, [1, 2, 3, 4, 5], 3)
    # Execute
    rebuilt = [shamir_combine({x: shares[x] for x in xs}) for xs in ([1, 2, 3], [2, 4, 5])]
    # Assert
    assert rebuilt == [secret, secret]


def test_shamir_fewer_shares_than_threshold_give_another_value():
    # Prepare
    secret = 123456789
    shares = shamir_split(secret, [1, 2, 3, 4], 3)
    # Execute
    guess = shamir_combine({1: shares[1], 2: shares[2]})
    # Assert
    assert guess != secret and 0 <= guess < FIELD_PRIME


def test_shamir_refuses_bad_holders_and_thresholds():
    with pytest.raises(ValueError, match="threshold"):
        shamir_split(1, [1, 2], 3)
    with pytest.raises(ValueError, match="distinct non-zero"):
        shamir_split(1, [0, 1], 2)


# -- fixed point and the graph --------------------------------------------------------------------


def test_quantize_round_trips_within_half_a_unit_and_clips():
    # Prepare
    params = SecAggParams(bits=32, clip=2.0)
    scale = params.scale(10)
    x = np.array([-3.0, -0.1234567, 0.0, 1.5, 7.0])
    # Execute
    back = dequantize(quantize(x, 3, params, scale), params, scale)
    # Assert: weighted by 3, clipped to [-2, 2], off by at most half a fixed-point unit
    assert np.allclose(back, 3 * np.clip(x, -2, 2), atol=0.5 / scale)


def test_scale_refuses_a_sum_that_cannot_fit():
    with pytest.raises(ValueError, match="raise bits or lower clip"):
        SecAggParams(bits=16, clip=100.0).scale(1000)


def test_neighbourhoods_are_symmetric_and_of_the_degree():
    # Execute
    graph = neighbourhoods(range(10), 4, seed=3)
    full = neighbourhoods(range(5), None, seed=3)
    # Assert
    assert all(len(vs) == 4 and u not in vs for u, vs in graph.items())
    assert all(u in graph[v] for u, vs in graph.items() for v in vs)
    assert full[0] == frozenset({1, 2, 3, 4})


# -- whole rounds ---------------------------------------------------------------------------


@pytest.mark.parametrize("neighbours", [None, 4])
def test_unmasked_sum_is_the_plain_weighted_sum(neighbours):
    # Prepare
    values, weights = updates(8, 300)
    params = SecAggParams(bits=32, clip=10.0, neighbours=neighbours)
    # Execute
    total, _, scale = run_round(values, weights, params)
    # Assert: the sum, then FedAvg's mean, within quantization tolerance
    plain = sum(weights[u] * values[u] for u in values)
    assert np.allclose(total, plain, atol=len(values) * 0.5 / scale)
    mean = total / sum(weights.values())
    assert np.allclose(mean, plain / sum(weights.values()), atol=1e-6)


def test_server_never_receives_an_update_in_the_clear():
    # Prepare
    values, weights = updates(5, 2000, seed=1)
    params = SecAggParams(bits=32, clip=10.0)
    # Execute
    _, server, scale = run_round(values, weights, params)
    # Assert: each masked input differs from its client's fixed-point update almost everywhere
    # and its values spread uniformly over [0, 2^32) (mean 2^31, no visible structure)
    masked = [(u, m) for stage, u, m in server.received if stage == "masked input"]
    assert len(masked) == len(values)
    for u, m in masked:
        seen = np.frombuffer(m, dtype="<u4").astype(np.float64)
        plain = quantize(values[u], weights[u], params, scale).astype(np.float64)
        assert np.mean(seen == plain) < 0.01
        assert abs(seen.mean() / 2**32 - 0.5) < 0.03
        assert abs(np.corrcoef(seen, plain)[0, 1]) < 0.1
    # and nothing the server relayed or received holds the plain bytes of an update
    for u in values:
        needle = quantize(values[u], weights[u], params, scale).astype("<u4").tobytes()[:64]
        assert all(needle not in m for _, _, m in server.received)


def test_round_completes_when_clients_drop_after_sharing_keys():
    # Prepare
    values, weights = updates(8, 200, seed=2)
    params = SecAggParams(bits=32, clip=10.0, threshold=0.5, neighbours=6)
    dropped = frozenset({2, 5})
    # Execute
    total, _, scale = run_round(values, weights, params, drop_before_masked=dropped)
    # Assert: the survivors' sum, the dropped clients' masks removed
    plain = sum(weights[u] * values[u] for u in values if u not in dropped)
    assert np.allclose(total, plain, atol=len(values) * 0.5 / scale)


def test_round_completes_when_survivors_drop_before_unmasking():
    # Prepare
    values, weights = updates(8, 100, seed=3)
    params = SecAggParams(bits=40, clip=10.0, threshold=0.5)
    # Execute: 1 drops before its input, 6 after sending it but before revealing shares
    total, _, scale = run_round(
        values,
        weights,
        params,
        drop_before_masked=frozenset({1}),
        drop_before_unmask=frozenset({6}),
    )
    # Assert: 6's input counts, its seed rebuilt from the others' shares
    plain = sum(weights[u] * values[u] for u in values if u != 1)
    assert np.allclose(total, plain, atol=len(values) * 0.5 / scale)


def test_round_aborts_cleanly_below_the_threshold():
    # Prepare
    values, weights = updates(6, 50, seed=4)
    params = SecAggParams(bits=32, clip=10.0, threshold=0.8)
    # Execute / Assert: 3 of 6 left, 5 shares needed
    with pytest.raises(SecAggAborted, match="below the threshold"):
        run_round(values, weights, params, drop_before_masked=frozenset({0, 1, 2}))


def test_too_few_unmasking_replies_abort_cleanly():
    # Prepare
    values, weights = updates(6, 50, seed=5)
    params = SecAggParams(bits=32, clip=10.0, threshold=0.5)
    # Execute / Assert: all send inputs, only 2 reveal shares, 3 of each secret are needed
    with pytest.raises(SecAggAborted, match="shares of client"):
        run_round(values, weights, params, drop_before_unmask=frozenset({0, 1, 2, 3}))


def test_a_client_reveals_one_kind_of_share_per_neighbour():
    # Prepare
    values, weights = updates(4, 20, seed=6)
    params = SecAggParams(bits=32, clip=10.0)
    # Execute
    _, server, _ = run_round(values, weights, params, drop_before_masked=frozenset({3}))
    # Assert: shares of 3's mask key only, of the others' seeds only

    for stage, _, m in server.received:
        if stage == "unmasking":
            revealed = json.loads(m)
            assert set(revealed["3"]) == {"s"}
            assert all(set(revealed[str(u)]) == {"b"} for u in (0, 1, 2))


def test_server_refuses_a_masked_input_of_the_wrong_size():
    # Prepare
    params = SecAggParams()
    server = SecAggServer(params=params, crypto=CRYPTO, clients=[0, 1], length=10, scale=1.0)
    clients = {u: SecAggClient(id=u, params=params, crypto=CRYPTO) for u in (0, 1)}
    rosters = server.collect_keys({u: c.advertise() for u, c in clients.items()})
    server.collect_shares({u: clients[u].share_keys(r) for u, r in rosters.items()})
    # Execute / Assert
    with pytest.raises(ValueError, match="expected 40"):
        server.collect_masked({0: b"\x00" * 8, 1: b"\x00" * 40})


def test_params_refuse_bad_settings():
    with pytest.raises(ValueError, match="bits"):
        SecAggParams(bits=64)
    with pytest.raises(ValueError, match="threshold"):
        SecAggParams(threshold=0.0)
    with pytest.raises(ValueError, match="clip"):
        SecAggParams(clip=float("inf"))


def test_random_dropouts_give_the_survivors_sum_or_a_clean_abort():
    # Prepare: 30 rounds of random sizes, graphs and dropouts at both stages
    rng = np.random.default_rng(11)
    outcomes = []
    for _ in range(30):
        n = int(rng.integers(3, 10))
        values, weights = updates(n, 40, seed=int(rng.integers(1000)))
        params = SecAggParams(
            bits=int(rng.choice([24, 32, 48])),
            clip=5.0,
            threshold=float(rng.choice([0.3, 0.5, 0.7])),
            neighbours=None if rng.random() < 0.5 else 2 * int(rng.integers(1, 3)),
        )
        early = frozenset(int(u) for u in np.flatnonzero(rng.random(n) < 0.2))
        late = frozenset(int(u) for u in np.flatnonzero(rng.random(n) < 0.2)) - early
        # Execute
        try:
            total, _, scale = run_round(
                values, weights, params, drop_before_masked=early, drop_before_unmask=late
            )
        except SecAggAborted:
            outcomes.append("aborted")
            continue
        # Assert: what came out is the sum of the inputs the server received
        plain = sum(weights[u] * np.clip(values[u], -5, 5) for u in values if u not in early)
        assert np.allclose(total, plain, atol=n * 0.5 / scale)
        outcomes.append("summed")
    assert outcomes.count("summed") >= 15 and "aborted" in outcomes


def test_devices_run_a_round_through_their_messages_and_forget_it_after_unmasking():
    # Prepare: three devices' side in one SecAggDevices, the server's side apart; arrays whose
    # names come in different orders on each device.
    params = SecAggParams(bits=32, clip=10.0)
    devices = SecAggDevices(crypto=CRYPTO)
    arrays = {
        1: {"w": np.full(3, 0.5), "b": np.array([1.0])},
        2: {"b": np.array([-2.0]), "w": np.full(3, 0.25)},
        3: {"w": np.zeros(3), "b": np.array([4.0])},
    }
    weights = {1: 1, 2: 2, 3: 1}
    scale = params.scale(sum(weights.values()))
    server = SecAggServer(params=params, crypto=CRYPTO, clients=[1, 2, 3], length=4, scale=scale)

    def answer(stage: str, messages: dict[int, bytes]) -> dict[int, bytes]:
        return {d: devices.step(d, "s1", stage, params, m) for d, m in messages.items()}

    # Execute
    rosters = server.collect_keys(answer("advertise", dict.fromkeys(arrays, b"")))
    forwarded = server.collect_shares(answer("share", rosters))
    assert answer("mask", forwarded) == dict.fromkeys(arrays, b"")
    masked = {d: devices.mask(d, "s1", a, weights[d], scale) for d, a in arrays.items()}
    total = server.unmask(answer("unmask", server.collect_masked(masked)))

    # Assert: the sum in sorted-name order (b, then w), and the session gone afterwards.
    expected = sum(weights[d] * flatten(a) for d, a in arrays.items())
    np.testing.assert_allclose(total, expected, atol=3 / scale)
    assert set(unflatten(total, arrays[2])) == {"b", "w"}
    with pytest.raises(ValueError, match="holds no secure aggregation session 's1'"):
        devices.step(1, "s1", "share", params, rosters[1])


def test_devices_refuse_a_stage_out_of_order_and_changed_settings():
    # Prepare
    params = SecAggParams(bits=32, clip=10.0)
    devices = SecAggDevices(crypto=CRYPTO)
    devices.step(1, "s", "advertise", params, b"")

    # Execute / Assert
    with pytest.raises(ValueError, match="holds no shares"):
        devices.mask(1, "s", {"w": np.zeros(2)}, 1, 1.0)
    with pytest.raises(ValueError, match="settings changed"):
        devices.step(1, "s", "mask", SecAggParams(bits=40, clip=10.0), b"{}")
    with pytest.raises(ValueError, match="unknown secure aggregation stage"):
        devices.step(1, "s", "dance", params, b"")
