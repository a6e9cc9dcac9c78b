"""The REST API against its own OpenAPI document, by schemathesis, on a live server.

schemathesis generates requests for every operation from the document (valid ones, and
invalid ones that must be refused with a 4xx) and checks each answer: no 5xx, a status code
the document declares, the declared content type and headers, a body that fits the declared
schema. Bounded for CI: a fixed number of cases per operation, derandomized so a run is
reproducible, about 2,500 cases in all.

What is shrunk so every case stays quick, and why: long polls are cut to 10 ms by the server's
``long_poll_max_s`` (a ``?wait=`` the generator picks would otherwise hold a case for a
minute); blob bodies and probe downloads are capped at 64 KiB by ``max_blob_bytes``. Nothing is
excluded. The admin token authenticates every case, so the guarded operations are exercised
past their auth check; a registered device and a model with a version give the paths
something to find.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from fedsim.real.launch import ServerThread
from fedsim.real.protocol import Paths
from fedsim.real.server.app import init_app
from fedsim.real.server.config import ServerConfig
from fedsim.real.server.openapi import build_openapi
from tests.real.conftest import ADMIN, ADMIN_TOKEN, ENROLL, ENROLLMENT_TOKEN, blob
from tests.real.test_server_api import FakeJobs

CASES_PER_OPERATION = 40  # x 41 operations, plus the coverage cases: about 2,500 in all
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]

schema = schemathesis.openapi.from_dict(build_openapi())
cases = {"count": 0}


@pytest.fixture(scope="module")
def live(tmp_path_factory) -> Iterator[str]:
    """A server on a free port with a device and a model version in it; its base URL."""
    config = ServerConfig(
        data_dir=tmp_path_factory.mktemp("schemathesis"),
        admin_token=ADMIN_TOKEN,
        enrollment_token=ENROLLMENT_TOKEN,
        long_poll_max_s=0.01,
        max_blob_bytes=64 * 1024,
        body_read_timeout_s=5.0,
    )
    # A job manager that starts nothing runnable (see FakeJobs), so /jobs answers, not 501.
    server = ServerThread(init_app(config, jobs=FakeJobs()))
    server.start()
    started = time.monotonic()
    try:
        base = server.url
        r = requests.post(base + Paths.DEVICES, json={"group": 1}, headers=ENROLL, timeout=10)
        assert r.status_code == 201, r.text
        model = {"name": "m", "architecture": "mlp"}
        assert requests.post(base + Paths.MODELS, json=model, headers=ADMIN, timeout=10).ok
        versions = base + Paths.VERSIONS.format(name="m")
        assert requests.post(versions, data=blob(), headers=ADMIN, timeout=10).ok
        yield base
    finally:
        server.stop()
        print(
            f"\nschemathesis: {cases['count']} cases in {time.monotonic() - started:.0f} s",
        )


@schema.parametrize()
@settings(
    max_examples=CASES_PER_OPERATION,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_the_api_conforms_to_its_document(case, live):
    # Execute / Assert: the checks raise on any failure.
    cases["count"] += 1
    case.call_and_validate(base_url=live, headers=dict(ADMIN), checks=CHECKS, timeout=30)
