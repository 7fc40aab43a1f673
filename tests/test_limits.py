"""Both sides of every request limit, against a real relay over real sockets:
body sizes, head size, stalled and slow bodies, and uploads open at once per
client and in all."""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest
from conftest import Relay
from rawhttp import (
    HOST,
    RawResponse,
    bucket_keys,
    parse_response,
    read_until_closed,
    request_bytes,
    send_raw,
    spool_files,
    start_relay,
    wait_settled,
)

from app.locals3 import LocalS3

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

pytestmark = pytest.mark.integration

MAX_MEDIA = 64 * 1024
MAX_PLAYLIST = 4 * 1024
MAX_HEAD = 4 * 1024
IDLE_S = 3.0
TOTAL_S = 5.0
PER_CLIENT = 2
IN_ALL = 3
PLAYLIST = b"#EXTM3U\n#EXT-X-TARGETDURATION:2\n"


@pytest.fixture(scope="module")
def s3(local_s3: LocalS3) -> S3Client:
    return local_s3.client()


@pytest.fixture(scope="module")
def sized_relay(
    local_s3: LocalS3, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Relay, str]]:
    env = {
        "HLSRELAY_MAX_BODY_BYTES": str(MAX_MEDIA),
        "HLSRELAY_MAX_PLAYLIST_BYTES": str(MAX_PLAYLIST),
        "HLSRELAY_MAX_HEADER_BYTES": str(MAX_HEAD),
        "HLSRELAY_BODY_IDLE_TIMEOUT_S": str(IDLE_S),
        "HLSRELAY_BODY_TIMEOUT_S": str(TOTAL_S),
    }
    relay, bucket = start_relay(local_s3, tmp_path_factory.mktemp("sized"), env)
    yield relay, bucket
    relay.terminate()


@pytest.fixture(scope="module")
def counted_relay(
    local_s3: LocalS3, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Relay, str]]:
    # 127.0.0.1 is a trusted proxy here, so X-Forwarded-For names the client
    # and one test process can be several clients.
    env = {
        "HLSRELAY_MAX_UPLOADS_PER_CLIENT": str(PER_CLIENT),
        "HLSRELAY_MAX_UPLOADS": str(IN_ALL),
        "HLSRELAY_TRUSTED_PROXIES": "127.0.0.1/32",
        "HLSRELAY_BODY_IDLE_TIMEOUT_S": "60",
    }
    relay, bucket = start_relay(local_s3, tmp_path_factory.mktemp("counted"), env)
    yield relay, bucket
    relay.terminate()


def put(
    path: str,
    body: bytes,
    *,
    chunked: bool = False,
    length: int | None = None,
    headers: dict[str, str] | None = None,
) -> bytes:
    return request_bytes(
        "PUT",
        f"/LiveApp/hls-upload/{path}",
        body,
        chunked=chunked,
        length=length,
        headers=headers,
    )


def head_of_size(size: int, path: str = "h.ts") -> bytes:
    """A PUT head of exactly ``size`` bytes, blank line included."""
    base = request_bytes("PUT", f"/LiveApp/hls-upload/{path}", b"x")
    head, _, body = base.partition(b"\r\n\r\n")
    pad_line = b"\r\nX-Pad: "
    pad = size - len(head) - len(pad_line) - 4
    assert pad >= 0
    return head + pad_line + b"p" * pad + b"\r\n\r\n" + body


def assert_refused(response: RawResponse | None, status: int, error: str) -> None:
    assert response is not None
    assert response.status == status, response.body[:300]
    assert response.json()["error"] == error


@pytest.mark.parametrize(
    ("path", "limit"),
    [("at-limit.ts", MAX_MEDIA), ("at-limit.m3u8", MAX_PLAYLIST)],
)
@pytest.mark.parametrize("chunked", [False, True], ids=["length", "chunked"])
def test_limits_body_at_its_limit_is_stored_and_one_byte_more_is_413(
    sized_relay: tuple[Relay, str], s3: S3Client, path: str, limit: int, chunked: bool
) -> None:
    relay, bucket = sized_relay
    fill = b"\n" if path.endswith(".m3u8") else b"a"
    at_limit = PLAYLIST.ljust(limit, fill) if fill == b"\n" else fill * limit
    over = at_limit + fill
    kind = "chunked" if chunked else "length"

    ok = send_raw(relay.port, put(f"{kind}/{path}", at_limit, chunked=chunked))
    too_big = send_raw(relay.port, put(f"{kind}/over-{path}", over, chunked=chunked))

    assert ok is not None and ok.status == 201, ok
    assert ok.json()["size"] == limit
    assert_refused(too_big, 413, "body_too_large")
    wait_settled(relay)
    keys = bucket_keys(s3, bucket)
    assert f"streams/{kind}/{path}" in keys
    assert f"streams/{kind}/over-{path}" not in keys


def test_limits_head_at_its_limit_passes_and_one_byte_more_is_431(
    sized_relay: tuple[Relay, str], s3: S3Client
) -> None:
    relay, bucket = sized_relay

    ok = send_raw(relay.port, head_of_size(MAX_HEAD, "head-ok.ts"))
    too_big = send_raw(relay.port, head_of_size(MAX_HEAD + 1, "head-over.ts"))

    assert ok is not None and ok.status == 201, ok
    assert_refused(too_big, 431, "headers_too_large")
    # Written the way the routes write theirs: compact JSON.
    assert too_big is not None and too_big.body.startswith(b'{"error":"headers_')
    # A client's mistake, at the level of every other refusal.
    assert re.search(
        r" INFO app\.protocol refused request client=127\.0\.0\.1 "
        r"path='/LiveApp/hls-upload/head-over\.ts' status=431: ",
        relay.log_text(),
    )
    wait_settled(relay)
    keys = bucket_keys(s3, bucket)
    assert "streams/head-ok.ts" in keys
    assert "streams/head-over.ts" not in keys


def _send_in_pieces(port: int, data: bytes) -> RawResponse | None:
    with socket.create_connection((HOST, port), timeout=30) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for start in range(0, len(data), 1000):
            try:
                sock.sendall(data[start : start + 1000])
            except (BrokenPipeError, ConnectionResetError):
                break
            time.sleep(0.02)
        return parse_response(read_until_closed(sock))


def test_limits_head_in_pieces_at_its_limit_passes(
    sized_relay: tuple[Relay, str],
) -> None:
    relay, _ = sized_relay

    response = _send_in_pieces(relay.port, head_of_size(MAX_HEAD, "pieces.ts"))

    assert response is not None and response.status == 201, response


def test_limits_head_that_never_ends_is_431_once_past_the_limit(
    sized_relay: tuple[Relay, str],
) -> None:
    # Counted as it arrives, not once whole: a head that keeps growing is
    # cut off at the limit, well before the header timeout would end it.
    relay, _ = sized_relay
    unfinished = head_of_size(MAX_HEAD * 4, "endless.ts").partition(b"\r\n\r\n")[0]

    response = _send_in_pieces(relay.port, unfinished)

    assert_refused(response, 431, "headers_too_large")


def _dribble(
    port: int, path: str, chunks: int, pause_s: float, stop_after_s: float
) -> tuple[RawResponse | None, int]:
    """PUT ``chunks`` small chunks ``pause_s`` apart; returns the answer and
    how many chunks went out before it came."""
    head = (
        f"PUT /LiveApp/hls-upload/{path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Connection: close\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode()
    with socket.create_connection((HOST, port), timeout=60) as sock:
        sock.sendall(head)
        sock.settimeout(pause_s)
        sent = 0
        deadline = time.monotonic() + stop_after_s
        for _ in range(chunks):
            try:
                early = sock.recv(65536)
            except TimeoutError:
                early = b""
            if early:
                sock.settimeout(30)
                return parse_response(early + read_until_closed(sock)), sent
            if time.monotonic() > deadline:
                break
            try:
                sock.sendall(b"4\r\ndata\r\n")
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += 1
        else:
            sock.sendall(b"0\r\n\r\n")
        sock.settimeout(30)
        return parse_response(read_until_closed(sock)), sent


def test_limits_steady_slow_body_is_stored(
    sized_relay: tuple[Relay, str], s3: S3Client
) -> None:
    # Gaps well under the idle timeout, and the whole well under the total:
    # a low-bitrate encoder looks like this and must not be cut off.
    relay, bucket = sized_relay

    response, sent = _dribble(relay.port, "steady.ts", 6, IDLE_S / 10, TOTAL_S * 4)

    assert response is not None and response.status == 201, response
    assert sent == 6
    wait_settled(relay)
    assert "streams/steady.ts" in bucket_keys(s3, bucket)


def test_limits_body_slower_than_the_total_bound_is_408_and_not_kept(
    sized_relay: tuple[Relay, str], s3: S3Client
) -> None:
    # Each gap is below the idle timeout, so only the total bound can stop it.
    relay, bucket = sized_relay
    spool_before = spool_files(relay.spool_dir)

    response, sent = _dribble(relay.port, "endless.ts", 1000, IDLE_S / 3, TOTAL_S * 6)

    assert_refused(response, 408, "request_timeout")
    assert response is not None and "longer than" in response.json()["detail"]
    assert sent >= 2
    wait_settled(relay)
    assert "streams/endless.ts" not in bucket_keys(s3, bucket)
    assert spool_files(relay.spool_dir) == spool_before


def test_limits_stalled_body_is_408_and_not_kept(
    sized_relay: tuple[Relay, str], s3: S3Client
) -> None:
    relay, bucket = sized_relay

    response = send_raw(
        relay.port, put("stalled.ts", b"part", length=100), timeout_s=IDLE_S * 10
    )

    assert_refused(response, 408, "request_timeout")
    assert response is not None and "no body data" in response.json()["detail"]
    assert response.header("connection") == "close"
    wait_settled(relay)
    assert "streams/stalled.ts" not in bucket_keys(s3, bucket)


class HeldUpload:
    """A chunked PUT admitted by the relay and kept open until ``finish``.

    It asks for 100-continue: uvicorn sends it when the app first reads the
    body, which is after the relay counted the upload, so the test knows
    where the count stands without sleeping.
    """

    def __init__(self, port: int, path: str, client: str) -> None:
        self.sock = socket.create_connection((HOST, port), timeout=30)
        self.sock.sendall(
            (
                f"PUT /LiveApp/hls-upload/{path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"X-Forwarded-For: {client}\r\nExpect: 100-continue\r\n"
                "Connection: close\r\nTransfer-Encoding: chunked\r\n\r\n"
            ).encode()
        )
        first = b""
        while b"\r\n\r\n" not in first:
            chunk = self.sock.recv(4096)
            assert chunk, "the relay closed an upload it should have admitted"
            first += chunk
        assert first.startswith(b"HTTP/1.1 100"), first[:200]

    def finish(self) -> RawResponse | None:
        self.sock.sendall(b"5\r\nhello\r\n0\r\n\r\n")
        response = parse_response(read_until_closed(self.sock))
        self.sock.close()
        return response


def open_upload(port: int, path: str, client: str) -> RawResponse | None:
    data = put(path, b"hello", headers={"X-Forwarded-For": client})
    return send_raw(port, data)


def test_limits_uploads_per_client_and_in_all_are_bounded(
    counted_relay: tuple[Relay, str], s3: S3Client
) -> None:
    relay, bucket = counted_relay
    held = [HeldUpload(relay.port, f"a{n}.ts", "10.0.0.1") for n in range(PER_CLIENT)]

    over_share = open_upload(relay.port, "a-over.ts", "10.0.0.1")
    # ffmpeg POSTs some files (WebVTT playlists): they count as uploads too.
    over_share_post = send_raw(
        relay.port,
        request_bytes(
            "POST",
            "/LiveApp/hls-upload/a-post.vtt",
            b"WEBVTT\n",
            headers={"X-Forwarded-For": "10.0.0.1"},
        ),
    )
    held.append(HeldUpload(relay.port, "b0.ts", "10.0.0.2"))
    over_all = open_upload(relay.port, "c-over.ts", "10.0.0.3")
    finished = [upload.finish() for upload in held]
    after = open_upload(relay.port, "a-after.ts", "10.0.0.1")

    assert_refused(over_share, 429, "too_many_uploads")
    assert over_share is not None and over_share.header("retry-after") == "1"
    assert_refused(over_share_post, 429, "too_many_uploads")
    assert_refused(over_all, 503, "server_busy")
    assert over_all is not None and over_all.header("retry-after") == "1"
    assert [r.status if r else None for r in finished] == [201] * (PER_CLIENT + 1)
    assert after is not None and after.status == 201
    wait_settled(relay)
    keys = bucket_keys(s3, bucket)
    assert {"streams/a0.ts", "streams/a1.ts", "streams/b0.ts"} <= keys
    assert "streams/a-after.ts" in keys
    assert not {"streams/a-over.ts", "streams/a-post.vtt", "streams/c-over.ts"} & keys
