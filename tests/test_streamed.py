"""Bodies with a Content-Length go to S3 while they arrive (real SeaweedFS).

A byte-counting TCP relay sits between the relay and S3, so a test can see
the upload start before the client has sent its body's end, and stop there:
a client that leaves mid-body must leave S3 as it was.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import httpx
import pytest
from conftest import REGION, Relay, RelayFactory
from faultproxy import FaultProxy
from rawhttp import parse_response, wait_settled
from test_metrics import scrape, value, wait_for

from app.config import Settings
from app.errors import DiskFull
from app.locals3 import LocalS3
from app.metrics import Metrics
from app.paths import parse_upload
from app.spool import BodyWriter, Spool, SpoolEntry
from app.storage import S3Storage
from app.uploader import Uploader

pytestmark = pytest.mark.integration

BODY = 1024 * 1024
SENT_FIRST = 768 * 1024
REQUEST_LINE = re.compile(rb"(?:GET|HEAD|PUT|POST|DELETE) /\S* HTTP/1\.1")


class CountingPipe:
    """Forwards TCP to S3, counting the bytes that go towards it and noting
    the request lines among them."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.to_s3 = 0
        self.requests: list[str] = []
        self._lock = threading.Lock()
        self._closed = False
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            except OSError:
                client.close()
                return
            with self._lock:
                # A connection accepted while close() ran is not pumped.
                self._sockets += [client, upstream]
                if self._closed:
                    client.close()
                    upstream.close()
                    return
            threading.Thread(
                target=self._pump, args=(client, upstream, True), daemon=True
            ).start()
            threading.Thread(
                target=self._pump, args=(upstream, client, False), daemon=True
            ).start()

    def _pump(self, source: socket.socket, sink: socket.socket, counted: bool) -> None:
        with contextlib.suppress(OSError):  # either side hung up
            while data := source.recv(65536):
                if counted:
                    with self._lock:
                        self.to_s3 += len(data)
                        self.requests += [
                            line.decode("latin-1")
                            for line in REQUEST_LINE.findall(data)
                        ]
                sink.sendall(data)
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def wait_for(self, nbytes: int, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                if self.to_s3 >= nbytes:
                    return True
            time.sleep(0.01)
        return False

    def requests_for(self, key: str) -> list[str]:
        with self._lock:
            return [line for line in self.requests if f"/{key}" in line]

    def close(self) -> None:
        with self._lock:
            self._closed = True
            sockets = list(self._sockets)
        self._listener.close()
        for sock in sockets:
            sock.close()


@pytest.fixture
def pipe(local_s3: LocalS3) -> Iterator[CountingPipe]:
    port = int(local_s3.endpoint.rsplit(":", 1)[1])
    counting = CountingPipe(port)
    yield counting
    counting.close()


def _open_put(port: int, path: str, size: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(
        f"PUT /LiveApp/hls-upload/{path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Length: {size}\r\nContent-Type: video/mp2t\r\n\r\n".encode()
    )
    return sock


def _read_answer(sock: socket.socket) -> int:
    received = b""
    while (answer := parse_response(received)) is None or (
        len(answer.body) < int(answer.header("content-length") or 0)
    ):
        chunk = sock.recv(65536)
        if not chunk:
            break
        received += chunk
    assert answer is not None, received
    return answer.status


def _streamed(relay: Relay) -> dict[str, float]:
    """The relay's count of streamed uploads by outcome, and whether it streams."""
    samples = scrape(relay)
    counts = {
        outcome: value(samples, "hlsrelay_streamed_uploads_total", outcome=outcome)
        for outcome in ("stored", "resent", "abandoned")
    }
    counts["enabled"] = value(samples, "hlsrelay_stream_uploads_enabled")
    return counts


def _relay_through(relay_factory: RelayFactory, endpoint: str, **env: str) -> Relay:
    return relay_factory(
        extra_env={"HLSRELAY_S3_ENDPOINT": endpoint, "HLSRELAY_ACK": "upload", **env}
    )


def _send_until_streaming(
    relay: Relay, pipe: CountingPipe, body: bytes, sent: int = SENT_FIRST
) -> socket.socket:
    """Start a PUT of ``body``, send ``sent`` bytes, wait until S3 gets them."""
    sock = _open_put(relay.port, "live/seg1.ts", len(body))
    before = pipe.to_s3
    sock.sendall(body[:sent])
    # Most of what the client sent is on its way to S3 already.
    assert pipe.wait_for(before + sent // 2, timeout_s=10), (
        f"only {pipe.to_s3 - before} bytes went to S3 while the body arrived"
    )
    return sock


def test_a_body_is_sent_to_s3_before_it_has_arrived_whole(
    relay_factory: RelayFactory, local_s3: LocalS3, bucket: str, pipe: CountingPipe
) -> None:
    relay = _relay_through(relay_factory, f"http://127.0.0.1:{pipe.port}")
    body = os.urandom(BODY)
    sock = _send_until_streaming(relay, pipe, body)
    sock.sendall(body[SENT_FIRST:])
    assert _read_answer(sock) == 201
    sock.close()
    stored = local_s3.client().get_object(Bucket=bucket, Key="streams/live/seg1.ts")
    assert stored["Body"].read() == body
    assert stored["ContentType"] == "video/mp2t"
    wait_settled(relay)
    assert _streamed(relay) == {
        "stored": 1.0, "resent": 0.0, "abandoned": 0.0, "enabled": 1.0
    }  # fmt: skip


def test_with_streaming_off_nothing_leaves_before_the_body_ends(
    relay_factory: RelayFactory, local_s3: LocalS3, bucket: str, pipe: CountingPipe
) -> None:
    relay = _relay_through(
        relay_factory,
        f"http://127.0.0.1:{pipe.port}",
        HLSRELAY_STREAM_UPLOADS="false",
    )
    body = os.urandom(BODY)
    sock = _open_put(relay.port, "live/seg1.ts", BODY)
    sock.sendall(body[:SENT_FIRST])
    # Only the PUT's request line is looked for: the relay's readiness probe
    # goes through the same pipe every two seconds.
    time.sleep(1.0)
    assert pipe.requests_for("streams/live/seg1.ts") == []
    sock.sendall(body[SENT_FIRST:])
    assert _read_answer(sock) == 201
    sock.close()
    assert len(pipe.requests_for("streams/live/seg1.ts")) == 1
    stored = local_s3.client().get_object(Bucket=bucket, Key="streams/live/seg1.ts")
    assert stored["Body"].read() == body
    assert _streamed(relay) == {
        "stored": 0.0, "resent": 0.0, "abandoned": 0.0, "enabled": 0.0
    }  # fmt: skip


@pytest.mark.parametrize("ack", ["upload", "spool"])
def test_a_client_that_leaves_mid_body_leaves_the_old_object(
    relay_factory: RelayFactory,
    local_s3: LocalS3,
    bucket: str,
    pipe: CountingPipe,
    ack: str,
) -> None:
    relay = _relay_through(
        relay_factory, f"http://127.0.0.1:{pipe.port}", HLSRELAY_ACK=ack
    )
    old = os.urandom(BODY)
    answer = httpx.put(f"{relay.url}/LiveApp/hls-upload/live/seg1.ts", content=old)
    assert answer.status_code == 201
    wait_settled(relay)

    new = os.urandom(BODY)
    sock = _send_until_streaming(relay, pipe, new, sent=BODY - 1)  # all but one
    sock.close()
    wait_for(
        relay,
        "the streamed upload abandoned",
        lambda samples: (
            value(samples, "hlsrelay_streamed_uploads_total", outcome="abandoned") == 1
        ),
    )
    wait_settled(relay)
    time.sleep(0.5)  # an upload that went on would have ended by now

    stored = local_s3.client().get_object(Bucket=bucket, Key="streams/live/seg1.ts")
    assert stored["Body"].read() == old
    log = relay.log_text()
    assert "error=incomplete_body" in log
    # The upload stopped for the client's sake: nothing to blame S3 for.
    assert "S3 try failed" not in log
    counts = _streamed(relay)
    assert (counts["abandoned"], counts["resent"], counts["enabled"]) == (1, 0, 1)


def test_a_delete_sent_during_the_body_is_applied_after_it(
    relay_factory: RelayFactory, local_s3: LocalS3, bucket: str, pipe: CountingPipe
) -> None:
    relay = _relay_through(relay_factory, f"http://127.0.0.1:{pipe.port}")
    body = os.urandom(BODY)
    sock = _send_until_streaming(relay, pipe, body)
    deleted = httpx.delete(f"{relay.url}/LiveApp/hls-upload/live/seg1.ts")
    assert deleted.status_code == 204
    sock.sendall(body[SENT_FIRST:])
    assert _read_answer(sock) == 201
    sock.close()
    wait_settled(relay)
    listed = local_s3.client().list_objects_v2(Bucket=bucket, Prefix="streams/live/")
    assert listed.get("KeyCount", 0) == 0, listed.get("Contents")


def test_a_refused_streamed_upload_is_uploaded_again_from_the_spool(
    relay_factory: RelayFactory, local_s3: LocalS3, bucket: str
) -> None:
    with FaultProxy(local_s3.endpoint) as proxy:
        # Every try botocore makes of the streamed upload is refused; the
        # uploader's own retry from the spool gets through.
        proxy.fail_first_puts(3)
        relay = _relay_through(relay_factory, proxy.url)
        body = os.urandom(BODY)
        answer = httpx.put(
            f"{relay.url}/LiveApp/hls-upload/live/seg1.ts", content=body, timeout=60
        )
        assert answer.status_code == 201
        stored = local_s3.client().get_object(Bucket=bucket, Key="streams/live/seg1.ts")
        assert stored["Body"].read() == body
        assert len(proxy.injected_for("streams/live/seg1.ts")) == 3
    assert "streamed upload failed key=streams/live/seg1.ts" in relay.log_text()
    assert _streamed(relay) == {
        "stored": 0.0, "resent": 1.0, "abandoned": 0.0, "enabled": 1.0
    }  # fmt: skip


def test_a_provider_that_refuses_streamed_uploads_gets_whole_bodies(
    relay_factory: RelayFactory, local_s3: LocalS3, bucket: str
) -> None:
    with FaultProxy(local_s3.endpoint) as proxy:
        # As a provider without unsigned payloads answers.
        proxy.refuse_unsigned(400, "InvalidRequest")
        relay = _relay_through(relay_factory, proxy.url)
        bodies = {f"live/seg{n}.ts": os.urandom(256 * 1024) for n in range(3)}
        for path, body in bodies.items():
            url = f"{relay.url}/LiveApp/hls-upload/{path}"
            assert httpx.put(url, content=body, timeout=60).status_code == 201
        for path, body in bodies.items():
            stored = local_s3.client().get_object(Bucket=bucket, Key=f"streams/{path}")
            assert stored["Body"].read() == body
        # Only the first body was streamed; the rest went whole at once.
        assert len(proxy.injected_for("streams/live/")) == 1
    log = relay.log_text()
    assert log.count("S3 refused a streamed upload and took the same body") == 1
    assert "streamed upload failed" not in log
    assert _streamed(relay) == {
        "stored": 0.0, "resent": 1.0, "abandoned": 0.0, "enabled": 0.0
    }  # fmt: skip


class RefusingSpool(Spool):
    """A spool whose disk fills up just as a whole body is committed."""

    def commit_put(self, writer: BodyWriter, entry: SpoolEntry) -> None:
        writer.abort()
        raise DiskFull(f"the spool's disk is full while writing {entry.key}")


@pytest.mark.anyio
async def test_a_body_the_spool_refuses_at_its_end_is_not_stored(
    local_s3: LocalS3, bucket: str, pipe: CountingPipe, tmp_path: Path
) -> None:
    settings = Settings(
        s3_bucket=bucket,
        s3_endpoint=f"http://127.0.0.1:{pipe.port}",
        s3_region=REGION,
        s3_access_key=local_s3.access_key,
        s3_secret_key=local_s3.secret_key,  # type: ignore[arg-type]
        s3_addressing="path",
        spool_dir=tmp_path / "spool",
        ack="upload",
    )
    old = os.urandom(BODY)
    local_s3.client().put_object(Bucket=bucket, Key="streams/live/seg1.ts", Body=old)
    spool = RefusingSpool(settings.spool_dir, settings.spool_max_bytes)
    uploader = Uploader(settings, spool, S3Storage(settings), Metrics())
    await uploader.start()
    upload = parse_upload(
        "LiveApp", "live/seg1.ts", b"/LiveApp/hls-upload/live/seg1.ts", ["ts"]
    )
    new = os.urandom(BODY)
    sent_before_end: list[int] = []

    async def body() -> AsyncIterator[bytes]:
        for start in range(0, BODY, 256 * 1024):
            if start == BODY - 256 * 1024:
                # Everything but the last slice is written; S3 has most of it.
                with anyio.fail_after(10):
                    while pipe.to_s3 < before + SENT_FIRST // 2:
                        await anyio.sleep(0.01)
                sent_before_end.append(pipe.to_s3 - before)
            yield new[start : start + 256 * 1024]

    before = pipe.to_s3
    try:
        with pytest.raises(DiskFull), anyio.fail_after(30):
            await uploader.receive_put(upload, body(), BODY, declared=BODY)
    finally:
        await uploader.stop(grace_s=5)
    assert sent_before_end and sent_before_end[0] >= SENT_FIRST // 2
    stored = local_s3.client().get_object(Bucket=bucket, Key="streams/live/seg1.ts")
    assert stored["Body"].read() == old


@pytest.mark.parametrize("ack", ["upload", "spool"])
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_recycled_spool_file_carries_only_the_next_segment(
    relay_factory: RelayFactory, local_s3: LocalS3, bucket: str, ack: str, framing: str
) -> None:
    # Each segment's spool file is written over by the next one once S3 has
    # it: every object holds its own bytes, a shorter one after a longer one
    # too (the file's cut to size is pinned in test_spool).
    relay = relay_factory(extra_env={"HLSRELAY_ACK": ack})
    bodies = [os.urandom(BODY), os.urandom(BODY // 3), os.urandom(BODY // 2)]
    for n, body in enumerate(bodies):
        content = (
            body if framing == "content-length" else iter([body[:1000], body[1000:]])
        )
        answer = httpx.put(
            relay.base_url_for("LiveApp", f"live/seg{n}.ts"),
            content=content,
            timeout=30,
        )
        assert answer.status_code == 201, answer.text
        wait_settled(relay)
    for n, body in enumerate(bodies):
        stored = local_s3.client().get_object(
            Bucket=bucket, Key=f"streams/live/seg{n}.ts"
        )
        assert stored["Body"].read() == body
    # The last segment's file waits for the next one.
    assert len(list((relay.spool_dir / "incoming").glob("*.free"))) == 1
