"""secagg=on from Hydra: the settings reach the spec, what it cannot run with is refused, and a
federated run in the simulator trains under it, its protocol in the events."""

from __future__ import annotations

import pytest

from fedsim.config import ConfigError, build_spec, compose, conf_dir
from fedsim.pipeline import run
from fedsim.runtimes import runtime
from fedsim.scenarios import Hooks


def test_secagg_is_off_by_default_and_on_with_its_settings():
    # Execute
    off = build_spec(compose(["+experiment=fl_digits"]), conf_dir())
    on = build_spec(
        compose(["+experiment=fl_digits", "secagg=on", "secagg.bits=40", "secagg.neighbours=2"]),
        conf_dir(),
    )
    # Assert
    assert off.secagg is None
    assert on.secagg is not None and (on.secagg.bits, on.secagg.neighbours) == (40, 2)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["mode=emulated"], "mode=emulated does not run secure aggregation"),
        (
            ["mode.server_url=http://127.0.0.1:9"],
            "server .mode.server_url. does not run",
        ),
        (["strategy=median"], "strategy must be fedavg"),
        (["strategy.clip_norm=1.0"], "without clip_norm"),
        (["fl.mode=async"], "synchronous rounds"),
        (["fl.training=modelled"], "fl.training=real"),
        (["secagg.bits=8"], "secagg.bits: must be in"),
    ],
)
def test_what_secagg_cannot_run_with_is_refused(overrides, message):
    # Prepare
    cfg = compose(["+experiment=fl_digits", "secagg=on", *overrides])
    # Execute / Assert
    with pytest.raises(ConfigError, match=message):
        build_spec(cfg, conf_dir())


def test_a_secure_federated_run_trains_and_logs_its_protocol(tmp_path):
    # Prepare: fl_digits, 2 rounds, with and without secure aggregation
    base = ["+experiment=fl_digits", "fl.rounds=2"]
    plain = build_spec(compose(base), conf_dir())
    secure = build_spec(compose([*base, "secagg=on"]), conf_dir())
    # Execute
    plain_result = run(plain, runtime("sim"), tmp_path / "plain", Hooks(progress=False))
    secure_result = run(secure, runtime("sim"), tmp_path / "secure", Hooks(progress=False))
    # Assert: the same accuracy within quantization, longer rounds, the protocol in the events
    for a, b in zip(plain_result.rows, secure_result.rows, strict=True):
        assert b.accuracy == pytest.approx(a.accuracy, abs=0.02)
        assert b.total_s > a.total_s and b.bytes_moved > a.bytes_moved
    assert secure_result.summary["secagg"]["bits"] == 32 and "secagg" not in plain_result.summary
    events = (tmp_path / "secure" / "events.csv").read_text()
    assert "secagg_upload" in events and "secagg_download" in events
