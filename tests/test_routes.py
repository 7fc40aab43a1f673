"""Uploads over real sockets into a real uvicorn and a real bucket.

The relay runs in this process (so a test can add middleware to it) on a
free loopback port, against the session's SeaweedFS.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import uvicorn
from botocore.exceptions import ClientError
from conftest import make_settings
from fastapi import FastAPI
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import Response

from app.locals3 import LocalS3, free_port
from app.main import create_app

pytestmark = pytest.mark.integration

APP = "LiveApp"


class Server:
    def __init__(self, app: FastAPI, port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        config = uvicorn.Config(
            app, host="127.0.0.1", port=port, log_config=None, lifespan="on"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture
def serve(
    local_s3: LocalS3, bucket: str, tmp_path: Path
) -> Iterator[Callable[..., Server]]:
    servers: list[Server] = []

    def start(middleware: type | None = None, **extra: object) -> Server:
        app = create_app(make_settings(local_s3, bucket, tmp_path / "spool", **extra))
        if middleware is not None:
            app.add_middleware(middleware)
        server = Server(app, free_port()).__enter__()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.__exit__()


def send_chunked(
    port: int,
    method: str,
    path: str,
    body: bytes,
    chunk: int = 32 * 1024,
    cut_at: int | None = None,
    read_answer: bool = False,
) -> bytes:
    """Send a request the way ffmpeg does: chunked, then close at once."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    try:
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: Lavf/59\r\n"
            "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        )
        sock.sendall(head.encode())
        sent = 0
        for start in range(0, len(body), chunk):
            piece = body[start : start + chunk]
            if cut_at is not None and sent + len(piece) > cut_at:
                sock.sendall(b"%x\r\n" % len(piece) + piece[: cut_at - sent])
                return b""
            sock.sendall(b"%x\r\n" % len(piece) + piece + b"\r\n")
            sent += len(piece)
        sock.sendall(b"0\r\n\r\n")
        if not read_answer:
            return b""
        answer = b""
        while data := sock.recv(65536):
            answer += data
        return answer
    finally:
        sock.close()


def wait_for(predicate: Callable[[], bool], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def object_bytes(local_s3: LocalS3, bucket: str, key: str) -> bytes | None:
    try:
        return local_s3.client().get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as exc:
        if exc.response["Error"]["Code"] == "NoSuchKey":
            return None
        raise


def keys_in(local_s3: LocalS3, bucket: str) -> set[str]:
    listing = local_s3.client().list_objects_v2(Bucket=bucket)
    return {item["Key"] for item in listing.get("Contents", [])}


class LoggingMiddleware(BaseHTTPMiddleware):
    async def dispatch(
        self, request: Request, call_next: RequestResponseEndpoint
    ) -> Response:
        response = await call_next(request)
        logging.getLogger("test.access").info("%s %s", request.method, request.url.path)
        return response


@pytest.mark.parametrize(
    "middleware", [None, LoggingMiddleware], ids=["plain", "logging-mw"]
)
def test_put_then_hang_up_stores_all_fifty_bodies(
    serve: Callable[..., Server],
    local_s3: LocalS3,
    bucket: str,
    middleware: type | None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # C03: 50 encoders each send 3 MB chunked and close without reading.
    server = serve(middleware)
    # Sizes around 3 MB, spread so that the end of a body falls at every
    # offset of the relay's write slices and of uvicorn's read buffer.
    bodies = {
        f"c03/seg{n:02d}.ts": os.urandom(3_000_000 + n * 5_003) for n in range(50)
    }
    with caplog.at_level(logging.WARNING), ThreadPoolExecutor(50) as pool:
        for future in [
            pool.submit(
                send_chunked, server.port, "PUT", f"/{APP}/hls-upload/{path}", body
            )
            for path, body in bodies.items()
        ]:
            future.result()

        expected = {f"streams/{path}" for path in bodies}
        wait_for(lambda: expected <= keys_in(local_s3, bucket), timeout_s=180)
    for path, body in bodies.items():
        stored = object_bytes(local_s3, bucket, f"streams/{path}")
        assert (
            stored is not None
            and hashlib.sha256(stored).digest() == hashlib.sha256(body).digest()
        )
    # A slow HEAD bucket under this load may mark the relay not ready for a
    # moment; the uploads themselves must go without a warning.
    failures = [
        r
        for r in caplog.records
        if r.levelno >= logging.WARNING
        and r.name.startswith("app")
        and r.name != "app.readiness"
    ]
    assert failures == []


def test_small_put_then_hang_up_is_stored(
    serve: Callable[..., Server], local_s3: LocalS3, bucket: str
) -> None:
    # A body small enough to arrive with its headers and the client's FIN in
    # one read: uvicorn reports the disconnect before the app reads anything.
    server = serve()
    bodies = {f"small/s{n}.ts": os.urandom(n * 97 + 1) for n in range(40)}
    for path, body in bodies.items():
        send_chunked(server.port, "PUT", f"/{APP}/hls-upload/{path}", body)
    expected = {f"streams/{path}" for path in bodies}
    wait_for(lambda: expected <= keys_in(local_s3, bucket))
    for path, body in bodies.items():
        assert object_bytes(local_s3, bucket, f"streams/{path}") == body


def test_body_cut_short_is_not_stored_and_keeps_older_object(
    serve: Callable[..., Server], local_s3: LocalS3, bucket: str, tmp_path: Path
) -> None:
    server = serve()
    old = os.urandom(100_000)
    send_chunked(
        server.port, "PUT", f"/{APP}/hls-upload/cut/a.ts", old, read_answer=True
    )
    wait_for(lambda: object_bytes(local_s3, bucket, "streams/cut/a.ts") == old)

    send_chunked(
        server.port,
        "PUT",
        f"/{APP}/hls-upload/cut/a.ts",
        os.urandom(200_000),
        cut_at=150_000,
    )
    send_chunked(
        server.port, "PUT", f"/{APP}/hls-upload/cut/b.ts", os.urandom(200_000), cut_at=1
    )
    # A later complete upload is the marker that everything before it was handled.
    send_chunked(
        server.port, "PUT", f"/{APP}/hls-upload/cut/marker.ts", b"m", read_answer=True
    )
    wait_for(lambda: "streams/cut/marker.ts" in keys_in(local_s3, bucket))
    time.sleep(0.5)

    assert object_bytes(local_s3, bucket, "streams/cut/a.ts") == old
    assert "streams/cut/b.ts" not in keys_in(local_s3, bucket)
    spooled = list((tmp_path / "spool").rglob("*.body")) + list(
        (tmp_path / "spool").rglob("*.part")
    )
    assert spooled == []


@pytest.mark.parametrize("existing", [True, False], ids=["uploaded", "never-uploaded"])
def test_delete_with_empty_chunked_body_answers_204(
    serve: Callable[..., Server], local_s3: LocalS3, bucket: str, existing: bool
) -> None:
    # C06: ffmpeg's DELETE carries "0\r\n\r\n"; nginx's dav module answers 415.
    server = serve()
    if existing:
        send_chunked(
            server.port,
            "PUT",
            f"/{APP}/hls-upload/c06/s1_000.ts",
            b"ts",
            read_answer=True,
        )
        wait_for(lambda: "streams/c06/s1_000.ts" in keys_in(local_s3, bucket))
    answer = send_chunked(
        server.port, "DELETE", f"/{APP}/hls-upload/c06/s1_000.ts", b"", read_answer=True
    )
    assert answer.startswith(b"HTTP/1.1 204"), answer[:200]
    wait_for(lambda: "streams/c06/s1_000.ts" not in keys_in(local_s3, bucket))


def test_chunked_40_mb_body_is_stored_with_its_length(
    serve: Callable[..., Server], local_s3: LocalS3, bucket: str
) -> None:
    # C08: S3 refuses a PutObject of unknown length; the spool gives it one.
    server = serve()
    body = os.urandom(40 * 1024 * 1024)
    answer = send_chunked(
        server.port,
        "PUT",
        f"/{APP}/hls-upload/rec/big.mp4",
        body,
        chunk=64 * 1024,
        read_answer=True,
    )
    assert answer.startswith(b"HTTP/1.1 201"), answer[:300]
    wait_for(lambda: "streams/rec/big.mp4" in keys_in(local_s3, bucket))
    head = local_s3.client().head_object(Bucket=bucket, Key="streams/rec/big.mp4")
    assert head["ContentLength"] == len(body)
    assert object_bytes(local_s3, bucket, "streams/rec/big.mp4") == body


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("c11/index.m3u8", "application/vnd.apple.mpegurl"),
        ("c11/s0.ts", "video/mp2t"),
        ("c11/s0.m4s", "video/iso.segment"),
        ("c11/init.mp4", "video/mp4"),
        ("c11/sub.vtt", "text/vtt"),
        ("c11/a.aac", "audio/aac"),
        ("c11/p.png", "image/png"),
        ("c11/p.jpg", "image/jpeg"),
    ],
)
def test_objects_get_type_and_cache_control_by_extension(
    serve: Callable[..., Server],
    local_s3: LocalS3,
    bucket: str,
    path: str,
    content_type: str,
) -> None:
    # C11: Safari refuses playlists of the wrong type; CDNs replay stale ones.
    server = serve()
    body = b"#EXTM3U\n#EXT-X-ENDLIST\n" if path.endswith(".m3u8") else b"data"
    answer = send_chunked(
        server.port, "PUT", f"/{APP}/hls-upload/{path}", body, read_answer=True
    )
    assert answer.startswith(b"HTTP/1.1 201"), answer[:300]
    wait_for(lambda: f"streams/{path}" in keys_in(local_s3, bucket))
    head = local_s3.client().head_object(Bucket=bucket, Key=f"streams/{path}")
    assert head["ContentType"] == content_type
    if path.endswith(".m3u8"):
        assert head["CacheControl"] in ("no-cache", "max-age=0", "max-age=1")
    else:
        max_age = int(head["CacheControl"].split("max-age=")[1].split(",")[0])
        assert max_age >= 3600


def test_key_template_places_objects(
    serve: Callable[..., Server], local_s3: LocalS3, bucket: str
) -> None:
    server = serve(key_template="live/{app}/{path}")
    send_chunked(
        server.port, "PUT", f"/{APP}/hls-upload/sub/x.ts", b"x", read_answer=True
    )
    wait_for(lambda: f"live/{APP}/sub/x.ts" in keys_in(local_s3, bucket))


def test_upload_ack_mode_answers_after_object_is_in_bucket(
    serve: Callable[..., Server], local_s3: LocalS3, bucket: str
) -> None:
    server = serve(ack="upload")
    for n in range(5):
        response = httpx.put(
            f"{server.url}/{APP}/hls-upload/ack/s{n}.ts", content=b"z" * 5000
        )
        assert response.status_code == 201
        # No waiting: in upload mode the 201 means S3 has it.
        assert object_bytes(local_s3, bucket, f"streams/ack/s{n}.ts") == b"z" * 5000


def test_malformed_playlist_is_refused_and_nothing_stored(
    serve: Callable[..., Server], local_s3: LocalS3, bucket: str, tmp_path: Path
) -> None:
    server = serve()
    for body in (b"\xff\xfe not utf-8", b"seg1.ts\n", b""):
        response = httpx.put(f"{server.url}/{APP}/hls-upload/bad/x.m3u8", content=body)
        assert response.status_code == 400
        assert response.json()["error"] == "invalid_playlist"
    assert keys_in(local_s3, bucket) == set()
    assert list((tmp_path / "spool").rglob("*.json")) == []


def test_get_playlist_returns_newest_version_or_404(
    serve: Callable[..., Server], local_s3: LocalS3, bucket: str
) -> None:
    server = serve()
    url = f"{server.url}/{APP}/hls-upload/ev/ev.m3u8"
    assert httpx.get(url).status_code == 404
    for n in range(3):
        body = b"#EXTM3U\n" + b"".join(
            b"#EXTINF:1,\nmissing%d.ts\n" % k for k in range(n + 1)
        )
        assert httpx.put(url, content=body).status_code == 201
        got = httpx.get(url, headers={"Range": "bytes=0-"})
        assert got.status_code == 200 and got.content == body
        assert got.headers["content-type"] == "application/vnd.apple.mpegurl"
        head = httpx.head(url)
        assert head.status_code == 200 and head.content == b""
        assert head.headers["content-length"] == str(len(body))
