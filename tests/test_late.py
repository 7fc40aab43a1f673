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
from faultproxy import BULK_DELETE, FaultProxy
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


def test_a_key_leaves_doubt_with_the_last_operation_applied_after_it() -> None:
    late = LateTries(settle_s=10)
    late.applied("k", Rewrite(1, "LiveApp", "a.m3u8", b"v1"))  # not in doubt
    assert "k" not in late
    late.timed_out("k", seq=2, now=100.0)
    late.timed_out("k", seq=3, now=104.0)  # again: the wait starts over
    assert late.next_due() == 114.0
    assert late.take_due(now=113.9) == []
    late.applied("k", Rewrite(2, "LiveApp", "a.m3u8", b"v2"))
    late.applied("k", Rewrite(3, "LiveApp", "a.m3u8", b"v3"))
    assert late.take_due(now=114.0) == ["k"]
    assert late.take_due(now=200.0) == []  # taken once
    assert late.settle("k") == Rewrite(3, "LiveApp", "a.m3u8", b"v3")
    assert "k" not in late and len(late) == 0 and late.next_due() is None
    assert late.settle("k") is None


def test_a_key_whose_timed_out_operation_is_the_last_is_not_written_again() -> None:
    # Its late try carries the same bytes as what S3 took.
    late = LateTries(settle_s=10)
    late.timed_out("a.m3u8", seq=5, now=0.0)
    late.applied("a.m3u8", Rewrite(5, "LiveApp", "a.m3u8", b"v5"))
    late.timed_out("seg.ts", seq=6, now=0.0)
    late.applied("seg.ts", None)  # a segment's PUT: no copy kept
    assert late.take_due(now=10.0) == ["a.m3u8", "seg.ts"]
    assert late.settle("a.m3u8") is None
    assert late.settle("seg.ts") is None
    assert len(late) == 0


def test_a_key_still_pending_is_looked_at_again_later() -> None:
    late = LateTries(settle_s=10)
    late.timed_out("a", seq=1, now=0.0)
    late.timed_out("b", seq=1, now=1.0)
    assert late.take_due(now=20.0) == ["a", "b"]
    late.recheck("a", at=21.0)
    assert late.settle("b") is None
    assert late.next_due() == 21.0
    assert late.take_due(now=21.0) == ["a"]
    late.timed_out("a", seq=2, now=21.5)  # again, before it was settled
    assert late.settle("a") is None and "a" in late
    assert late.next_due() == 31.5


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


KEY = "streams/late/index.m3u8"
V1 = b"#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2,\nseg0.ts\n"
V2 = V1 + b"#EXTINF:2,\nseg1.ts\n"


def _put_v1_held(relay: Relay, proxy: FaultProxy) -> None:
    """v1 with its segments (and v2's), v1's first try held by the proxy."""
    _put(relay, "late/seg0.ts", b"0" * 1000)
    _put(relay, "late/seg1.ts", b"1" * 1000)
    proxy.hold_first_put(KEY, HOLD_S)
    _put(relay, "late/index.m3u8", V1)


def _v1_lands_over_v2(relay: Relay, proxy: FaultProxy, stored: Stored) -> None:
    """v1's first try is held; the retry stores v1, then v2 is stored, and
    then the held try lands over v2."""
    _put_v1_held(relay, proxy)
    _wait("v1 stored by the retry", lambda: stored(KEY) == V1)
    _put(relay, "late/index.m3u8", V2)
    _wait("v2 stored", lambda: stored(KEY) == V2)
    # What viewers would keep from now on.
    _wait("the held try passed on", lambda: proxy.late_landed == [KEY])
    assert stored(KEY) == V1


def _ending_relay(
    relay_factory: RelayFactory, proxy: FaultProxy, delay_s: float
) -> Relay:
    """A relay like ``relay``'s that cleans a stream up ``delay_s`` after its end."""
    return relay_factory(
        extra_env={
            "HLSRELAY_S3_ENDPOINT": proxy.url,
            "HLSRELAY_S3_READ_TIMEOUT_S": "1",
            "HLSRELAY_DELETE_ON_END": "true",
            "HLSRELAY_DELETE_ON_END_DELAY_S": f"{delay_s:g}",
        }
    )


def _end_stream(relay: Relay) -> None:
    """The media server's notice that the stream of ``KEY`` ended."""
    notice = httpx.post(
        f"{relay.url}/LiveApp/hls-upload",
        json={
            "streamId": "s",
            "command": "publish_finished",
            "filePath": KEY.removesuffix(".m3u8"),
        },
    )
    assert notice.status_code == 202


@pytest.mark.integration
def test_a_playlist_version_that_lands_late_is_written_over_again(
    relay: Relay, proxy: FaultProxy, stored: Stored
) -> None:
    _v1_lands_over_v2(relay, proxy, stored)
    assert _rewrites(relay) == 0

    _wait("v2 written again", lambda: stored(KEY) == V2)
    assert _rewrites(relay) == 1
    assert f"spooled playlist again key={KEY}" in relay.log_text()


@pytest.mark.integration
def test_a_stop_before_the_wait_is_over_writes_the_newer_version_again(
    relay: Relay, proxy: FaultProxy, stored: Stored
) -> None:
    _v1_lands_over_v2(relay, proxy, stored)
    relay.terminate()
    relay.start()
    _wait("v2 written again", lambda: stored(KEY) == V2, timeout_s=30)
    assert f"spooled playlist again key={KEY}" in relay.log_text()


@pytest.mark.integration
def test_a_playlist_a_clean_up_is_about_to_delete_is_not_written_again(
    relay_factory: RelayFactory, proxy: FaultProxy, stored: Stored
) -> None:
    # Moot, and after a restart the resumed clean-up would take the copy for
    # a newer publish and keep the ended stream for good.
    relay = _ending_relay(relay_factory, proxy, delay_s=60)
    _v1_lands_over_v2(relay, proxy, stored)
    _end_stream(relay)
    _wait("the clean-up scheduled", lambda: "clean-up scheduled" in relay.log_text())
    time.sleep(settle_s(1) + 2)  # past the settle time
    assert _rewrites(relay) == 0
    assert stored(KEY) == V1


@pytest.mark.integration
def test_a_new_publish_a_late_clean_up_deletes_gets_its_playlist_back(
    relay_factory: RelayFactory, proxy: FaultProxy, stored: Stored
) -> None:
    relay = _ending_relay(relay_factory, proxy, delay_s=1)
    _put(relay, "late/seg0.ts", b"0" * 1000)
    _put(relay, "late/index.m3u8", V1)
    proxy.hold_next_bulk_delete(HOLD_S)
    _end_stream(relay)
    _wait("the clean-up done", lambda: "clean-up done stream=s" in relay.log_text())
    assert stored(KEY) is None

    # The stream is published again; then the clean-up's held try lands.
    _put(relay, "late/seg0.ts", b"0" * 1000)
    _put(relay, "late/index.m3u8", V1)
    _wait("the new playlist stored", lambda: stored(KEY) == V1)
    _wait("the held try passed on", lambda: proxy.late_landed == [BULK_DELETE])
    assert stored(KEY) is None

    _wait("the new playlist written again", lambda: stored(KEY) == V1)
    assert f"spooled playlist again key={KEY}" in relay.log_text()


@pytest.mark.integration
def test_a_try_left_by_a_crashed_run_is_written_over_after_the_replay(
    relay: Relay, proxy: FaultProxy, stored: Stored
) -> None:
    _put_v1_held(relay, proxy)  # spooled; its first try is held
    _wait("the first try held", lambda: proxy.holding == [KEY])
    relay.kill()
    relay.start()  # the replay stores v1 again, straight through
    _wait("v1 stored by the replay", lambda: stored(KEY) == V1)
    _put(relay, "late/index.m3u8", V2)
    _wait("v2 stored", lambda: stored(KEY) == V2)
    _wait("the crashed run's try passed on", lambda: proxy.late_landed == [KEY])
    assert stored(KEY) == V1

    _wait("v2 written again", lambda: stored(KEY) == V2)
    assert f"spooled playlist again key={KEY}" in relay.log_text()


@pytest.mark.integration
def test_a_late_try_of_the_last_version_itself_is_left_alone(
    relay: Relay, proxy: FaultProxy, stored: Stored
) -> None:
    _put_v1_held(relay, proxy)
    _wait("the held try passed on", lambda: proxy.late_landed == [KEY])
    assert stored(KEY) == V1
    time.sleep(settle_s(1) - HOLD_S + 2)  # past the settle time
    assert _rewrites(relay) == 0
    assert "again key=" not in relay.log_text()


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
    assert f"spooled delete again key={key}" in relay.log_text()
