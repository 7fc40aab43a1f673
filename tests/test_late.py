"""Guarantee 2 when S3 applies a try late (app/late.py).

A provider that stalls can apply a try after the relay stopped waiting for
it, and after the newer write that followed. The fault proxy plays that
provider: it holds one PutObject for longer than the relay's read timeout,
then passes it on.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import httpx
import pytest
from conftest import Relay, RelayFactory
from faultproxy import FaultProxy
from pusher import bucket_state
from test_metrics import scrape, value

from app.late import LateTries, Rewrite, settle_s
from app.locals3 import LocalS3

# Longer than the read timeout, and than the newer write takes on a slow
# machine; shorter than settle_s(1).
HOLD_S = 5.0


def test_settle_waits_twice_the_read_timeout_and_at_least_ten_seconds() -> None:
    assert settle_s(30) == 60
    assert settle_s(1) == 10


def test_a_key_leaves_doubt_with_its_last_applied_operation() -> None:
    late = LateTries(settle_s=10)
    late.applied("k", Rewrite("LiveApp", "a.m3u8", b"v0"))  # not in doubt: kept no copy
    assert "k" not in late
    assert late.timed_out("k", now=100.0)
    assert not late.timed_out("k", now=104.0)  # again: the wait starts over
    assert late.due_at("k") == 114.0
    late.applied("k", Rewrite("LiveApp", "a.m3u8", b"v1"))
    late.applied("k", Rewrite("LiveApp", "a.m3u8", b"v2"))
    assert late.settle("k") == Rewrite("LiveApp", "a.m3u8", b"v2")
    assert "k" not in late and len(late) == 0 and late.due_at("k") is None
    assert late.settle("k") is None


def test_a_key_with_nothing_applied_since_its_timeout_is_not_written_again() -> None:
    late = LateTries(settle_s=10)
    late.timed_out("seg.ts", now=0.0)
    late.applied("seg.ts", None)  # a segment's PUT: no copy kept
    assert late.settle("seg.ts") is None


@pytest.fixture
def proxy(local_s3: LocalS3) -> Iterator[FaultProxy]:
    with FaultProxy(local_s3.endpoint) as running:
        yield running


@pytest.fixture
def relay(relay_factory: RelayFactory, proxy: FaultProxy) -> Relay:
    # A read timeout shorter than the hold: the relay gives up on the held
    # try and tries again, which goes straight through.
    return relay_factory(
        extra_env={"HLSRELAY_S3_ENDPOINT": proxy.url, "HLSRELAY_S3_READ_TIMEOUT_S": "1"}
    )


Stored = Callable[[str], "bytes | None"]


@pytest.fixture
def stored(local_s3: LocalS3, bucket: str) -> Stored:
    """What the bucket holds under a key now, None for nothing."""
    client = local_s3.client()
    return lambda key: bucket_state(client, bucket, key)


def _wait(what: str, check: Callable[[], bool], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s:g} s"
        time.sleep(0.1)


def _put(relay: Relay, path: str, body: bytes) -> None:
    assert (
        httpx.put(relay.base_url_for("LiveApp", path), content=body).status_code == 201
    )


def _rewrites(relay: Relay) -> float:
    return value(scrape(relay), "hlsrelay_late_rewrites_total")


@pytest.mark.integration
def test_a_playlist_version_that_lands_late_is_written_over_again(
    relay: Relay, proxy: FaultProxy, stored: Stored
) -> None:
    key = "streams/late/index.m3u8"
    v1 = b"#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2,\nseg0.ts\n"
    v2 = v1 + b"#EXTINF:2,\nseg1.ts\n"
    _put(relay, "late/seg0.ts", b"0" * 1000)
    _put(relay, "late/seg1.ts", b"1" * 1000)

    proxy.hold_first_put(key, HOLD_S)
    _put(relay, "late/index.m3u8", v1)
    _wait("v1 stored by the retry", lambda: stored(key) == v1)
    _put(relay, "late/index.m3u8", v2)
    _wait("v2 stored", lambda: stored(key) == v2)

    # The held try of v1 reaches S3 now, over v2: what viewers would keep.
    _wait("the held try passed on", lambda: proxy.late_landed == [key])
    assert stored(key) == v1
    assert _rewrites(relay) == 0

    _wait("v2 written again", lambda: stored(key) == v2)
    assert _rewrites(relay) == 1
    assert f"writing playlist again key={key}" in relay.log_text()


@pytest.mark.integration
def test_a_deleted_segment_a_late_try_brings_back_is_deleted_again(
    relay: Relay, proxy: FaultProxy, stored: Stored
) -> None:
    key = "streams/late/seg7.ts"

    proxy.hold_first_put(key, HOLD_S)
    _put(relay, "late/seg7.ts", b"7" * 1000)
    _wait("the segment stored by a retry", lambda: stored(key))
    deleted = httpx.delete(relay.base_url_for("LiveApp", "late/seg7.ts"))
    assert deleted.status_code == 204
    _wait("the delete applied", lambda: stored(key) is None)

    _wait("the held try passed on", lambda: proxy.late_landed == [key])
    assert stored(key) == b"7" * 1000

    _wait("deleted again", lambda: stored(key) is None)
    assert _rewrites(relay) == 1
    assert f"writing delete again key={key}" in relay.log_text()
