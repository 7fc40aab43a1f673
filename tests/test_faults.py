"""Faults injected into real processes: S3 frozen or refusing, the spool at its
limit, its disk full, SIGTERM mid-stream. Through all of them nothing
acknowledged is lost, no playlist names a missing file, the newest playlist
is the one left, and the statuses tell the truth."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import FFmpeg, Relay, RelayFactory
from faultproxy import FaultProxy
from pusher import Pusher, Sent, SyntheticStream, bucket_state, mismatches
from pusher import wait_settled as settle
from watcher import BucketWatcher

from app.locals3 import LocalS3

pytestmark = pytest.mark.integration


def wait_settled(relay: Relay, timeout_s: float = 120.0) -> None:
    try:
        settle(relay.url, timeout_s)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; log:\n{relay.log_text()[-3000:]}") from None


def readyz(relay: Relay) -> int:
    return httpx.get(f"{relay.url}/readyz", timeout=10).status_code


def wait_readyz(relay: Relay, status: int, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while readyz(relay) != status:
        assert time.monotonic() < deadline, f"/readyz never answered {status}"
        time.sleep(0.2)


def metric(relay: Relay, name: str, **labels: str) -> float:
    text = httpx.get(f"{relay.url}/metrics", timeout=10).text
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    total = 0.0
    for line in text.splitlines():
        head, _, value = line.rpartition(" ")
        if head.startswith(name) and (not wanted or f"{{{wanted}}}" in head):
            total += float(value)
    return total


def assert_bucket_matches(local_s3: LocalS3, bucket: str, pusher: Pusher) -> None:
    problems = mismatches(local_s3.client(), bucket, pusher.snapshot())
    assert problems == [], "\n".join(problems)


def unacked(pusher: Pusher) -> list[tuple[str, str, int | None, str]]:
    return [(s.method, s.path, s.status, s.error) for s in pusher.log if not s.acked]


def retry_after(sent: Sent) -> int:
    value = sent.headers.get("retry-after", "")
    assert value.isdigit() and int(value) > 0, sent.headers
    return int(value)


# -- S3 frozen -------------------------------------------------------------


def test_faults_s3_frozen_mid_stream_loses_nothing_and_readyz_follows(
    relay_factory: RelayFactory, local_s3: LocalS3, bucket: str
) -> None:
    # The default S3 timeouts (30 s) outlast the freeze: the requests in
    # flight complete after it. With timeouts shorter than the freeze, a try
    # abandoned by the client can still land after the thaw, after newer
    # operations on its key (see the NOTE in app/uploader.py).
    relay = relay_factory()
    pusher = Pusher(relay.port)
    stream = SyntheticStream("live")
    watcher = BucketWatcher(local_s3.client(), bucket, prefix="streams/")
    saw_not_ready = False
    with watcher:
        for n in range(4):
            stream.step(pusher, n)
        wait_readyz(relay, 200)

        local_s3.freeze()
        try:
            # SIGSTOP: connections open, nothing answers, as in a bad minute
            # of a real provider. The encoder goes on, acknowledged from the
            # spool, for several seconds and until /readyz has said so.
            frozen_at = time.monotonic()
            while time.monotonic() - frozen_at < 6 or not saw_not_ready:
                assert time.monotonic() - frozen_at < 60, "never reported not ready"
                stream.step(pusher, n := n + 1)
                saw_not_ready |= readyz(relay) == 503
                health = httpx.get(f"{relay.url}/healthz", timeout=10)
                assert health.status_code == 200
                time.sleep(0.2)
        finally:
            local_s3.thaw()

        for _ in range(4):
            stream.step(pusher, n := n + 1)
        wait_readyz(relay, 200)
        wait_settled(relay)

    assert unacked(pusher) == []
    assert_bucket_matches(local_s3, bucket, pusher)
    assert watcher.violations == []
    final = bucket_state(local_s3.client(), bucket, "streams/live.m3u8")
    assert final == stream.playlist(n)
    assert saw_not_ready


# -- S3 refusing (C02) -----------------------------------------------------


MASTER = (
    b"#EXTM3U\n"
    b"#EXT-X-STREAM-INF:BANDWIDTH=800000,RESOLUTION=640x360\nv0.m3u8\n"
    b"#EXT-X-STREAM-INF:BANDWIDTH=400000,RESOLUTION=320x180\nv1.m3u8\n"
)


@pytest.fixture
def proxy(local_s3: LocalS3) -> Iterator[FaultProxy]:
    with FaultProxy(local_s3.endpoint) as proxy:
        yield proxy


def test_faults_c02_refused_tries_and_a_failing_variant_lose_nothing(
    relay_factory: RelayFactory, local_s3: LocalS3, bucket: str, proxy: FaultProxy
) -> None:
    # C02: the first two tries of every PutObject get 503, and one variant
    # gets 500 for everything for 10 s, under a live stream.
    proxy.fail_first_puts(2, 503, "ServiceUnavailable")
    relay = relay_factory(extra_env={"HLSRELAY_S3_ENDPOINT": proxy.url})
    pusher = Pusher(relay.port)
    variants = [SyntheticStream("v0", seed=5), SyntheticStream("v1", seed=6)]
    watcher = BucketWatcher(local_s3.client(), bucket, prefix="streams/")
    failing_since: float | None = None
    cleared_at_step: int | None = None
    with watcher:
        n = -1
        while cleared_at_step is None or n < cleared_at_step + 6:
            n += 1
            started = time.monotonic()
            for variant in variants:
                variant.step(pusher, n)
            if n == 1:
                pusher.put("master.m3u8", MASTER)
            if n == 4:
                proxy.fail_prefix("streams/v1", 500, "InternalError")
                failing_since = time.monotonic()
            if (
                failing_since is not None
                and cleared_at_step is None
                and time.monotonic() - failing_since >= 10
            ):
                proxy.clear_prefix("streams/v1")
                cleared_at_step = n
            # Paced like ffmpeg -re with short segments.
            time.sleep(max(0.0, 0.25 - (time.monotonic() - started)))
        wait_settled(relay)

    assert unacked(pusher) == []
    assert_bucket_matches(local_s3, bucket, pusher)
    assert watcher.violations == []
    client = local_s3.client()
    for variant in variants:
        final = bucket_state(client, bucket, f"streams/{variant.playlist_path}")
        assert final == variant.playlist(n)
    assert proxy.injected_for("streams/v1")

    log = relay.log_text()
    assert re.search(
        r"S3 try failed op=PutObject key=streams/v0_\d+\.ts try=1 "
        r"code=ServiceUnavailable",
        log,
    ), log[-3000:]
    assert re.search(r"retry key=streams/v1_\d+\.ts attempt=\d+ .*InternalError", log)
    assert metric(relay, "hlsrelay_upload_retries_total", reason="ServiceUnavailable")
    assert metric(relay, "hlsrelay_upload_retries_total", reason="InternalError")


def _put_until_answered(pusher: Pusher, path: str, body: bytes) -> Sent:
    """A PUT that got an answer. A 503 sent before the body was read (S3
    known to be down) can reach a client still sending as a reset instead;
    on a loaded machine that client is this test."""
    for _ in range(20):
        sent = pusher.put(path, body)
        if sent.status is not None:
            return sent
        time.sleep(0.5)
    raise AssertionError(f"no answer to 20 PUTs of {path}: {sent}")


def test_faults_upload_ack_answers_503_while_s3_refuses_then_201(
    relay_factory: RelayFactory, local_s3: LocalS3, bucket: str, proxy: FaultProxy
) -> None:
    relay = relay_factory(
        extra_env={
            "HLSRELAY_S3_ENDPOINT": proxy.url,
            "HLSRELAY_ACK": "upload",
            "HLSRELAY_ACK_TIMEOUT_S": "5",
        }
    )
    pusher = Pusher(relay.port)
    assert pusher.put("up_0.ts", b"0" * 50_000).status == 201

    proxy.fail_prefix("streams/", 503, "SlowDown")
    refused = _put_until_answered(pusher, "up_1.ts", b"1" * 50_000)
    assert refused.status == 503, refused
    assert retry_after(refused)
    proxy.clear_prefix("streams/")

    # A client that reads the status tries again as Retry-After says.
    deadline = time.monotonic() + 60
    again = _put_until_answered(pusher, "up_1.ts", b"1" * 50_000)
    while not again.acked:
        assert time.monotonic() < deadline, again
        time.sleep(retry_after(again))
        again = _put_until_answered(pusher, "up_1.ts", b"1" * 50_000)
    assert again.status == 201
    wait_settled(relay)
    assert_bucket_matches(local_s3, bucket, pusher)


# -- the spool's limits ----------------------------------------------------


def test_faults_spool_limit_answers_503_with_retry_after_then_recovers(
    relay_factory: RelayFactory, local_s3: LocalS3, bucket: str
) -> None:
    limit = 1_000_000
    relay = relay_factory(extra_env={"HLSRELAY_SPOOL_MAX_BYTES": str(limit)})
    pusher = Pusher(relay.port)

    local_s3.freeze()
    try:
        # Nothing drains while S3 hangs: exactly the limit is taken, one byte
        # more is refused, and a chunked body that would cross it is cut off.
        exact = pusher.put("lim_0.ts", b"x" * limit)
        over = pusher.put_expecting("lim_1.ts", b"y")
        chunked = pusher.put("lim_2.ts", b"z" * 300_000)
        not_ready = httpx.get(f"{relay.url}/readyz", timeout=10)
    finally:
        local_s3.thaw()

    assert exact.status == 201, exact
    assert over.status == 503, over
    assert retry_after(over)
    assert '"spool_full"' in over.headers["_body"]
    assert not chunked.acked
    assert not_ready.status_code == 503
    assert "HLSRELAY_SPOOL_READY_PERCENT" in not_ready.text

    deadline = time.monotonic() + 60
    again = pusher.put_expecting("lim_1.ts", b"y")
    while not again.acked:
        assert time.monotonic() < deadline, again
        time.sleep(retry_after(again))
        again = pusher.put_expecting("lim_1.ts", b"y")
    wait_settled(relay)
    wait_readyz(relay, 200)
    assert_bucket_matches(local_s3, bucket, pusher)
    assert bucket_state(local_s3.client(), bucket, "streams/lim_2.ts") is None


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MB tmpfs, mounted for the test and unmounted after it."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs for the full-disk test needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)
        if os.path.ismount(mount):
            subprocess.run(["umount", "-l", str(mount)], check=True)


def test_faults_full_disk_answers_507_and_keeps_the_spool_whole(
    small_disk: Path, relay_factory: RelayFactory, local_s3: LocalS3, bucket: str
) -> None:
    spool = small_disk / "spool"
    relay = relay_factory(spool_dir=spool)
    pusher = Pusher(relay.port)

    local_s3.freeze()
    try:
        first = pusher.put("disk_0.ts", b"a" * 700_000)
        second = pusher.put("disk_1.ts", b"b" * 700_000)
        too_big = pusher.put_expecting("disk_2.ts", b"c" * 1_200_000)
        chunked = pusher.put("disk_3.ts", b"d" * 1_200_000)
    finally:
        local_s3.thaw()

    assert first.status == 201 and second.status == 201
    assert too_big.status == 507, too_big
    assert '"insufficient_storage"' in too_big.headers["_body"]
    assert not chunked.acked
    wait_settled(relay)
    assert list((spool / "incoming").iterdir()) == []

    # Room again once the spool drained: the same file is taken now.
    retried = pusher.put("disk_2.ts", b"c" * 1_200_000)
    assert retried.status == 201, retried
    wait_settled(relay)
    assert_bucket_matches(local_s3, bucket, pusher)
    assert "disk is full" in relay.log_text()


# -- SIGTERM ---------------------------------------------------------------


def is_refusing(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def test_faults_sigterm_finishes_bodies_exits_within_grace_then_replays(
    relay_factory: RelayFactory, local_s3: LocalS3, bucket: str
) -> None:
    grace = 6.0
    relay = relay_factory(extra_env={"HLSRELAY_SHUTDOWN_GRACE_S": f"{grace:g}"})
    pusher = Pusher(relay.port)
    stream = SyntheticStream()
    for n in range(3):
        stream.step(pusher, n)
    wait_settled(relay)

    local_s3.freeze()
    try:
        # Uploads hang from here; the PUTs are acknowledged from the spool.
        for n in range(3, 6):
            stream.step(pusher, n)
        finishing = pusher.open_put(stream.segment_path(6), stream.segment(6))
        finishing.send(len(finishing.sent.body) // 2)
        stuck = pusher.open_put("stuck.ts", b"s" * 200_000)
        stuck.send(100_000)
        time.sleep(0.3)

        signalled = time.monotonic()
        os.kill(relay.pid, signal.SIGTERM)
        deadline = signalled + 10
        while not is_refusing(relay.port):
            assert time.monotonic() < deadline, "still accepting after SIGTERM"
            time.sleep(0.05)
        finished = finishing.finish()  # a body in flight is still taken
        code = relay.terminate(timeout_s=grace + 20)
        took = time.monotonic() - signalled
        stuck.finish()
    finally:
        local_s3.thaw()

    assert finished.status == 201, finished
    assert not stuck.sent.acked
    # uvicorn re-raises the signal once the app is down, as a shell expects.
    assert code in (0, -signal.SIGTERM), code
    # Well short of S3's 30 s read timeout, which a stop must not wait out;
    # the margin is for a loaded machine.
    assert took < grace + 8, f"exit took {took:.1f}s with a grace of {grace:g}s"
    log = relay.log_text()
    assert "relay stopped" in log
    assert "Traceback" not in log
    assert list((relay.spool_dir / "entries").glob("*.json"))

    relay.start()
    wait_settled(relay)
    replayed = re.search(r"spool replay entries=([1-9]\d*)", relay.log_text())
    assert replayed, relay.log_text()[-2000:]
    # Once everything replayed is in S3 (or moot), one line says so.
    done = f"spool replay done entries={replayed.group(1)} in_s="
    assert relay.log_text().count(done) == 1, relay.log_text()[-2000:]
    assert_bucket_matches(local_s3, bucket, pusher)
    assert bucket_state(local_s3.client(), bucket, "streams/stuck.ts") is None


def test_faults_s3_frozen_under_ffmpeg_keeps_every_segment(
    relay_factory: RelayFactory, local_s3: LocalS3, bucket: str, ffmpeg: FFmpeg
) -> None:
    relay = relay_factory()
    client = local_s3.client()
    watcher = BucketWatcher(local_s3.client(), bucket, prefix="streams/")
    command = [
        ffmpeg.exe, "-hide_banner", "-nostdin", "-loglevel", "error",
        "-re", *ffmpeg.test_source(seconds=14),
        "-c:v", "libx264", "-preset", "ultrafast", "-g", "25", "-c:a", "aac",
        "-f", "hls", "-hls_time", "1", "-hls_list_size", "0",
        "-method", "PUT", relay.base_url_for("LiveApp", "ff.m3u8"),
    ]  # fmt: skip
    with watcher:
        encoder = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 60
            while bucket_state(client, bucket, "streams/ff.m3u8") is None:
                assert time.monotonic() < deadline, "no playlist reached S3"
                time.sleep(0.2)
            local_s3.freeze()
            try:
                time.sleep(5)
            finally:
                local_s3.thaw()
            _, stderr = encoder.communicate(timeout=120)
        finally:
            if encoder.poll() is None:
                encoder.kill()
                encoder.wait()
        assert encoder.returncode == 0, stderr
        wait_settled(relay)

    assert watcher.violations == []
    final = bucket_state(client, bucket, "streams/ff.m3u8")
    assert final is not None and b"#EXT-X-ENDLIST" in final
    segments = re.findall(r"^ff(\d+)\.ts$", final.decode(), re.M)
    # -hls_list_size 0 lists every segment: the newest playlist names all.
    assert [int(n) for n in segments] == list(range(len(segments)))
    assert len(segments) >= 12
    for n in segments:
        assert bucket_state(client, bucket, f"streams/ff{n}.ts")
