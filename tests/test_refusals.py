"""A refusal that retrying cannot fix, with a real relay and SeaweedFS: one
clear error line for the operator, not one per segment, and /readyz says why.

SeaweedFS answers every PUT with an unknown storage class InvalidStorageClass
while HEAD bucket still works, which is how a bucket that forbids ACLs, or a
key without s3:PutObject, looks to the relay.
"""

from __future__ import annotations

import time

import httpx
import pytest
from conftest import Relay, RelayFactory

pytestmark = pytest.mark.integration

SEGMENTS = 4
WAIT_S = 60.0


def wait_for(what: str, relay: Relay, predicate: object) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    pytest.fail(f"{what} not seen within {WAIT_S:g} s; log:\n{relay.log_text()}")


def readyz(relay: Relay) -> httpx.Response:
    return httpx.get(f"{relay.url}/readyz", timeout=30)


def test_refusal_logged_once_and_shown_on_readyz(relay_factory: RelayFactory) -> None:
    relay = relay_factory(
        extra_env={
            "HLSRELAY_S3_STORAGE_CLASS": "NO_SUCH_CLASS",
            "HLSRELAY_LOG_LEVEL": "debug",
        }
    )
    relay.wait_ready()

    for n in range(SEGMENTS):
        url = relay.base_url_for("LiveApp", f"bad/seg_{n}.ts")
        assert httpx.put(url, content=b"G" * 1880, timeout=30).status_code == 201

    def every_segment_refused() -> bool:
        log = relay.log_text()
        return all(
            f"S3 refused key=streams/bad/seg_{n}.ts" in log for n in range(SEGMENTS)
        )

    wait_for("a refusal for every segment", relay, every_segment_refused)
    errors = [
        line
        for line in relay.log_text().splitlines()
        if " ERROR " in line and "InvalidStorageClass" in line
    ]
    assert len(errors) == 1, errors
    assert "HLSRELAY_S3_STORAGE_CLASS" in errors[0]

    # One failed call is not yet an outage for /readyz; a refusal that lasts is.
    wait_for("/readyz not ready", relay, lambda: readyz(relay).status_code == 503)
    problems = " ".join(readyz(relay).json()["problems"])
    assert "InvalidStorageClass" in problems
    assert "HLSRELAY_S3_STORAGE_CLASS" in problems
