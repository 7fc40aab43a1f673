"""kill -9 of a real relay at the moments that matter, then a restart on the same
spool: everything acknowledged reaches the bucket byte for byte, the newest
acknowledged playlist is the one left there, and nothing cut short is stored."""

from __future__ import annotations

import random
import re
import threading
import time

import pytest
from conftest import Relay, RelayFactory
from pusher import Pusher, SyntheticStream, bucket_state, mismatches
from pusher import wait_settled as settle
from watcher import BucketWatcher

from app.locals3 import LocalS3

pytestmark = pytest.mark.integration

SETTLE_TIMEOUT_S = 90.0


def wait_settled(relay: Relay, timeout_s: float = SETTLE_TIMEOUT_S) -> None:
    try:
        settle(relay.url, timeout_s)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; log:\n{relay.log_text()[-3000:]}") from None


def spooled_entries(relay: Relay) -> int:
    return len(list((relay.spool_dir / "entries").glob("*.json")))


def assert_bucket_matches(local_s3: LocalS3, bucket: str, pusher: Pusher) -> None:
    problems = mismatches(local_s3.client(), bucket, pusher.snapshot())
    assert problems == [], "\n".join(problems)


def push_steps(stream: SyntheticStream, pusher: Pusher, steps: range) -> None:
    for n in steps:
        stream.step(pusher, n)
    assert all(sent.acked for sent in pusher.snapshot()), [
        (s.method, s.path, s.status, s.error) for s in pusher.log if not s.acked
    ]


def test_crash_during_segment_body_keeps_acked_and_drops_cut_short(
    relay_factory: RelayFactory, local_s3: LocalS3, bucket: str
) -> None:
    relay = relay_factory()
    pusher = Pusher(relay.port)
    stream = SyntheticStream()
    push_steps(stream, pusher, range(6))

    upload = pusher.open_put(stream.segment_path(6), stream.segment(6))
    upload.send(len(upload.sent.body) // 2)
    time.sleep(0.3)  # let the relay read that half into its spool
    relay.kill()
    cut = upload.finish()
    relay.start()
    wait_settled(relay)

    assert not cut.acked
    assert_bucket_matches(local_s3, bucket, pusher)
    client = local_s3.client()
    assert bucket_state(client, bucket, f"streams/{stream.segment_path(6)}") is None
    playlist = bucket_state(client, bucket, f"streams/{stream.playlist_path}")
    assert playlist == stream.playlist(5)
    assert list((relay.spool_dir / "incoming").iterdir()) == []


def test_crash_during_playlist_body_keeps_previous_playlist(
    relay_factory: RelayFactory, local_s3: LocalS3, bucket: str
) -> None:
    relay = relay_factory()
    pusher = Pusher(relay.port)
    stream = SyntheticStream()
    push_steps(stream, pusher, range(6))
    assert pusher.put(stream.segment_path(6), stream.segment(6)).acked

    upload = pusher.open_put(stream.playlist_path, stream.playlist(6))
    upload.send(len(upload.sent.body) - 10)
    time.sleep(0.3)
    relay.kill()
    upload.finish()
    relay.start()
    wait_settled(relay)

    assert_bucket_matches(local_s3, bucket, pusher)
    client = local_s3.client()
    playlist = bucket_state(client, bucket, f"streams/{stream.playlist_path}")
    assert playlist == stream.playlist(5)
    segment = bucket_state(client, bucket, f"streams/{stream.segment_path(6)}")
    assert segment == stream.segment(6)


def test_crash_right_after_ack_loses_nothing(
    relay_factory: RelayFactory, local_s3: LocalS3, bucket: str
) -> None:
    relay = relay_factory()
    pusher = Pusher(relay.port)
    stream = SyntheticStream(segment_bytes=512 * 1024)
    push_steps(stream, pusher, range(7))
    assert pusher.put(stream.segment_path(7), stream.segment(7)).acked
    assert pusher.put(stream.playlist_path, stream.playlist(7)).acked
    relay.kill()

    relay.start()
    wait_settled(relay)

    assert_bucket_matches(local_s3, bucket, pusher)
    playlist = bucket_state(
        local_s3.client(), bucket, f"streams/{stream.playlist_path}"
    )
    assert playlist == stream.playlist(7)


def test_crash_during_uploads_replays_the_spool(
    relay_factory: RelayFactory, local_s3: LocalS3, bucket: str
) -> None:
    relay = relay_factory()
    pusher = Pusher(relay.port)
    stream = SyntheticStream()
    push_steps(stream, pusher, range(2))
    wait_settled(relay)

    local_s3.freeze()
    try:
        # S3 hangs: every upload from here on is in flight or queued, and
        # each PUT is acknowledged from the spool alone.
        push_steps(stream, pusher, range(2, 8))
        assert spooled_entries(relay) > 0
        relay.kill()
    finally:
        local_s3.thaw()
    relay.start()
    wait_settled(relay)

    assert re.search(r"spool replay entries=[1-9]", relay.log_text())
    assert_bucket_matches(local_s3, bucket, pusher)
    playlist = bucket_state(
        local_s3.client(), bucket, f"streams/{stream.playlist_path}"
    )
    assert playlist == stream.playlist(7)


def test_crash_repeatedly_during_a_live_stream_keeps_every_guarantee(
    relay_factory: RelayFactory, local_s3: LocalS3, bucket: str
) -> None:
    relay = relay_factory()
    pusher = Pusher(relay.port, timeout_s=20)
    streams = [SyntheticStream("v0", seed=3), SyntheticStream("v1", seed=4)]
    stop = threading.Event()

    def encode() -> None:
        # Two variants pushed side by side at a steady pace, as a live
        # encoder does, until told to stop; requests that meet a dead relay
        # fail and are recorded as unacknowledged.
        n = 0
        while not stop.is_set():
            started = time.monotonic()
            for stream in streams:
                stream.step(pusher, n)
            n += 1
            time.sleep(max(0.0, 0.1 - (time.monotonic() - started)))

    def wait_for_acks(more: int) -> None:
        target = sum(sent.acked for sent in pusher.snapshot()) + more
        deadline = time.monotonic() + 120
        while sum(sent.acked for sent in pusher.snapshot()) < target:
            assert time.monotonic() < deadline, "the encoder stopped getting acks"
            time.sleep(0.05)

    watcher = BucketWatcher(local_s3.client(), bucket, prefix="streams/")
    rng = random.Random(7)
    with watcher:
        encoder = threading.Thread(target=encode, daemon=True)
        encoder.start()
        try:
            for _ in range(3):
                wait_for_acks(rng.randint(8, 20))
                relay.kill()
                relay.start()
            wait_for_acks(20)
        finally:
            stop.set()
            encoder.join(timeout=60)
        wait_settled(relay)

    log = pusher.snapshot()
    assert any(not sent.acked for sent in log), "no request met a dead relay"
    assert sum(sent.acked for sent in log) >= 50
    assert_bucket_matches(local_s3, bucket, pusher)
    assert watcher.violations == []
    # The watcher judged versions along the way, not only the last one (how
    # many it catches depends on how fast the relay drains after each start).
    assert len(watcher.versions_of("streams/v0.m3u8")) >= 2
