"""Recordings and previews (SPEC, C08): large MP4/WebM bodies pass through the
spool to S3 as multipart uploads with bounded memory and arrive whole; a body
cut short, or an upload cut by a crash, leaves nothing behind in the bucket."""

from __future__ import annotations

import hashlib
import os
import random
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from botocore.exceptions import ClientError
from conftest import Relay, RelayFactory

from app.locals3 import LocalS3

pytestmark = pytest.mark.integration

MiB = 1024**2
GiB = 1024**3
# Past 2**31, and not a whole number of parts: sizes held in 32 bits or a
# last part dropped would show. HLSRELAY_TEST_RECORDING_BYTES makes it larger.
RECORDING_BYTES = int(
    os.environ.get("HLSRELAY_TEST_RECORDING_BYTES", 2 * GiB + 3 * MiB + 17)
)
# What the relay may grow by while taking a multi-GiB body: parts in flight
# (4 of 16 MiB) and buffers, far from the body's size (7 MiB seen here).
RSS_GROWTH_LIMIT = 128 * MiB
CHUNK = MiB
WAIT_S = 600.0


class Body:
    """A generated body, never held whole: chunks differ, so a part sent twice
    or out of order changes the checksum."""

    def __init__(self, size: int, seed: int = 4) -> None:
        self.size = size
        self._block = random.Random(seed).randbytes(CHUNK)
        self.sha256 = hashlib.sha256()

    def chunks(self, stop_after: int | None = None) -> Iterator[bytes]:
        sent = 0
        index = 0
        limit = self.size if stop_after is None else stop_after
        while sent < limit:
            chunk = (index.to_bytes(8, "big") + self._block[8:])[: limit - sent]
            self.sha256.update(chunk)
            yield chunk
            sent += len(chunk)
            index += 1


class RssSampler:
    """Samples a process's resident memory from /proc while it runs."""

    def __init__(self, pid: int, every_s: float = 0.05) -> None:
        self.pid = pid
        self.every_s = every_s
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def rss(self) -> int:
        status = Path(f"/proc/{self.pid}/status").read_text()
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError(f"no VmRSS in /proc/{self.pid}/status")

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(self.rss())
            self._stop.wait(self.every_s)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak(self) -> int:
        return max(self.samples)


def _wait_for(
    what: str, check: Callable[[], object], timeout_s: float = WAIT_S
) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout_s:g} s waiting for {what}")
        time.sleep(0.05)


def _size_in_bucket(local_s3: LocalS3, bucket: str, key: str) -> int | None:
    try:
        head = local_s3.client().head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if exc.response["ResponseMetadata"]["HTTPStatusCode"] == 404:
            return None
        raise
    return int(head["ContentLength"])


def _stored(local_s3: LocalS3, bucket: str, key: str) -> Callable[[], bool]:
    return lambda: _size_in_bucket(local_s3, bucket, key) is not None


def _sha256_in_bucket(local_s3: LocalS3, bucket: str, key: str) -> str:
    digest = hashlib.sha256()
    body = local_s3.client().get_object(Bucket=bucket, Key=key)["Body"]
    for chunk in body.iter_chunks(4 * MiB):
        digest.update(chunk)
    return digest.hexdigest()


def _multipart_uploads(local_s3: LocalS3, bucket: str) -> list[str]:
    listing = local_s3.client().list_multipart_uploads(Bucket=bucket)
    return [upload["Key"] for upload in listing.get("Uploads", [])]


def _spool_files(relay: Relay) -> list[Path]:
    return [p for p in relay.spool_dir.rglob("*") if p.is_file()]


def _put(relay: Relay, path: str, body: Iterator[bytes] | bytes) -> httpx.Response:
    return httpx.put(relay.base_url_for("LiveApp", path), content=body, timeout=WAIT_S)


def test_recording_of_several_gib_streams_through_with_bounded_memory(
    relay_factory: RelayFactory, local_s3: LocalS3, bucket: str
) -> None:
    relay = relay_factory()
    key = "streams/stream1_2024-05-01_10-00-00.mp4"
    # Warm up the paths a large upload takes (spool, multipart, threads) so
    # the baseline holds what any upload needs, not what this one adds.
    warm = Body(40 * MiB, seed=1)
    assert _put(relay, "warm.mp4", warm.chunks()).status_code == 201
    _wait_for(
        "the warm-up", lambda: _size_in_bucket(local_s3, bucket, "streams/warm.mp4")
    )
    body = Body(RECORDING_BYTES)

    with RssSampler(relay.pid) as sampler:
        baseline = sampler.rss()
        response = _put(relay, "stream1_2024-05-01_10-00-00.mp4", body.chunks())
        assert response.status_code == 201, response.text
        _wait_for(
            f"{key} in the bucket",
            lambda: _size_in_bucket(local_s3, bucket, key) is not None,
        )

    assert response.json()["size"] == RECORDING_BYTES
    assert _size_in_bucket(local_s3, bucket, key) == RECORDING_BYTES
    assert _sha256_in_bucket(local_s3, bucket, key) == body.sha256.hexdigest()
    head = local_s3.client().head_object(Bucket=bucket, Key=key)
    assert head["ContentType"] == "video/mp4"
    # Stored as a multipart upload: the ETag of one ends in -<part count>.
    assert re.fullmatch(r"[0-9a-f]+-[0-9]+", head["ETag"].strip('"'))
    assert len(sampler.samples) > 10
    growth = sampler.peak - baseline
    assert growth < RSS_GROWTH_LIMIT, (
        f"relay RSS grew by {growth / MiB:.0f} MiB for a "
        f"{RECORDING_BYTES / MiB:.0f} MiB body"
    )
    assert _multipart_uploads(local_s3, bucket) == []
    _wait_for("the spool to empty", lambda: not _spool_files(relay))


def _send_cut_short(relay: Relay, path: str, body: Body, sent_bytes: int) -> None:
    """A chunked PUT whose connection closes before the final chunk."""
    with socket.create_connection(("127.0.0.1", relay.port), timeout=60) as sock:
        sock.sendall(
            f"PUT /LiveApp/hls-upload/{path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Transfer-Encoding: chunked\r\n\r\n".encode()
        )
        for chunk in body.chunks(stop_after=sent_bytes):
            sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")


def test_recording_cut_off_leaves_nothing_behind(
    relay_factory: RelayFactory, local_s3: LocalS3, bucket: str
) -> None:
    relay = relay_factory()
    key = "streams/stream1.webm"
    complete = Body(20 * MiB, seed=2)
    assert _put(relay, "stream1.webm", complete.chunks()).status_code == 201
    _wait_for(f"{key} in the bucket", lambda: _size_in_bucket(local_s3, bucket, key))
    cut = Body(200 * MiB, seed=3)

    # Three times the multipart threshold arrives, then the encoder dies.
    _send_cut_short(relay, "stream1.webm", cut, 48 * MiB)
    _send_cut_short(relay, "stream2.webm", cut, 48 * MiB)
    _wait_for(
        "the relay to refuse both bodies",
        lambda: relay.log_text().count("incomplete_body") >= 2,
    )
    _wait_for("the spool to empty", lambda: not _spool_files(relay))

    # The older complete recording stands; the new one never appears.
    assert _size_in_bucket(local_s3, bucket, key) == complete.size
    assert _sha256_in_bucket(local_s3, bucket, key) == complete.sha256.hexdigest()
    assert _size_in_bucket(local_s3, bucket, "streams/stream2.webm") is None
    assert _multipart_uploads(local_s3, bucket) == []


def test_recording_upload_cut_by_crash_leaves_no_orphaned_parts(
    relay_factory: RelayFactory, local_s3: LocalS3, bucket: str
) -> None:
    relay = relay_factory()
    key = "streams/stream1.mp4"
    body = Body(640 * MiB, seed=5)

    assert _put(relay, "stream1.mp4", body.chunks()).status_code == 201
    _wait_for("a multipart upload", lambda: key in _multipart_uploads(local_s3, bucket))
    relay.kill()
    assert key in _multipart_uploads(local_s3, bucket)  # what a crash leaves
    assert _size_in_bucket(local_s3, bucket, key) is None

    relay.start()
    _wait_for(f"{key} in the bucket", lambda: _size_in_bucket(local_s3, bucket, key))

    assert _size_in_bucket(local_s3, bucket, key) == body.size
    assert _sha256_in_bucket(local_s3, bucket, key) == body.sha256.hexdigest()
    assert _multipart_uploads(local_s3, bucket) == []
    assert "aborted stale multipart uploads key=streams/stream1.mp4" in relay.log_text()


def test_recording_of_unknown_length_is_stored_with_its_real_length(
    relay_factory: RelayFactory, local_s3: LocalS3, bucket: str
) -> None:
    # C08: S3 refuses a PutObject of unknown length; ffmpeg always chunks.
    relay = relay_factory()
    body = Body(40 * 1000**2, seed=6)

    response = _put(relay, "stream1_240p.mp4", body.chunks())

    assert response.status_code == 201
    key = "streams/stream1_240p.mp4"
    _wait_for(f"{key} in the bucket", lambda: _size_in_bucket(local_s3, bucket, key))
    assert _size_in_bucket(local_s3, bucket, key) == body.size
    assert _sha256_in_bucket(local_s3, bucket, key) == body.sha256.hexdigest()


def test_recording_over_configured_cap_is_refused_and_not_stored(
    relay_factory: RelayFactory, local_s3: LocalS3, bucket: str
) -> None:
    cap = 100 * 1000**2
    relay = relay_factory(extra_env={"HLSRELAY_MAX_BODY_BYTES": str(cap)})

    at_cap = _put(relay, "at-cap.mp4", Body(cap).chunks())
    over = _put(relay, "over-cap.mp4", Body(150 * 1000**2).chunks())

    assert at_cap.status_code == 201
    assert over.status_code == 413
    assert over.json()["error"] == "body_too_large"
    _wait_for(
        "the capped body in the bucket",
        lambda: _size_in_bucket(local_s3, bucket, "streams/at-cap.mp4") == cap,
    )
    assert _size_in_bucket(local_s3, bucket, "streams/over-cap.mp4") is None
    _wait_for("the spool to empty", lambda: not _spool_files(relay))


def test_recordings_in_parallel_keep_memory_bounded(
    relay_factory: RelayFactory, local_s3: LocalS3, bucket: str
) -> None:
    # C08: 50 concurrent 5 MB uploads; memory follows limits, not traffic.
    relay = relay_factory()
    bodies = [Body(5 * 1000**2, seed=n) for n in range(50)]
    statuses: list[int] = []

    def send(n: int) -> None:
        statuses.append(_put(relay, f"rec_{n:02d}.mp4", bodies[n].chunks()).status_code)

    assert _put(relay, "warm.mp4", Body(5 * 1000**2).chunks()).status_code == 201
    with RssSampler(relay.pid) as sampler:
        baseline = sampler.rss()
        threads = [threading.Thread(target=send, args=(n,)) for n in range(50)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(WAIT_S)

    assert statuses == [201] * 50
    growth = sampler.peak - baseline
    assert growth < 128 * MiB, f"relay RSS grew by {growth / MiB:.0f} MiB"
    for n, body in enumerate(bodies):
        key = f"streams/rec_{n:02d}.mp4"
        _wait_for(key, _stored(local_s3, bucket, key))
        assert _sha256_in_bucket(local_s3, bucket, key) == body.sha256.hexdigest()


def test_recording_and_preview_accepted_by_default_with_their_type(
    relay_factory: RelayFactory, local_s3: LocalS3, bucket: str
) -> None:
    relay = relay_factory()
    types = {
        "stream1.webm": "video/webm",
        "stream1.mp4": "video/mp4",
        "stream1.png": "image/png",
        "stream1.jpg": "image/jpeg",
        "stream1.jpeg": "image/jpeg",
    }

    statuses = {name: _put(relay, name, b"media").status_code for name in types}
    refused = _put(relay, "stream1.mkv", b"media")

    assert statuses == dict.fromkeys(types, 201)
    assert refused.status_code == 415
    for name, content_type in types.items():
        key = f"streams/{name}"
        _wait_for(key, _stored(local_s3, bucket, key))
        head = local_s3.client().head_object(Bucket=bucket, Key=key)
        assert head["ContentType"] == content_type
