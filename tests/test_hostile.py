"""Hostile requests over real sockets to a real relay in front of SeaweedFS: each
gets SPEC's status and ``{"error", "detail"}`` body (framing the HTTP parser
itself rejects included), and leaves the bucket and spool as they were."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest
from conftest import Relay
from rawhttp import (
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
from test_metrics import requests, scrape

from app.locals3 import LocalS3

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

pytestmark = pytest.mark.integration

TOKEN = "hostile-suite-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MAX_MEDIA = 64 * 1024
MAX_PLAYLIST = 4 * 1024
MAX_HEAD = 8 * 1024
STALL_S = 2

RELAY_ENV = {
    "HLSRELAY_AUTH_TOKEN": TOKEN,
    "HLSRELAY_MAX_BODY_BYTES": str(MAX_MEDIA),
    "HLSRELAY_MAX_PLAYLIST_BYTES": str(MAX_PLAYLIST),
    "HLSRELAY_MAX_HEADER_BYTES": str(MAX_HEAD),
    "HLSRELAY_BODY_IDLE_TIMEOUT_S": str(STALL_S),
    "HLSRELAY_HEADER_TIMEOUT_S": str(STALL_S),
}

UPLOAD = "/LiveApp/hls-upload/"
PLAYLIST_OK = b"#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2,\ns0.ts\n"


@dataclass(frozen=True)
class Hostile:
    id: str
    request: bytes
    status: int
    # SPEC's error name.
    error: str


def put(
    target: str | bytes,
    body: bytes = b"x",
    *,
    headers: dict[str, str] | None = None,
    chunked: bool = False,
    length: int | None = None,
) -> bytes:
    """An authorised PUT, so each case meets the check it is about."""
    return request_bytes(
        "PUT",
        target,
        body,
        headers={**AUTH, **(headers or {})},
        chunked=chunked,
        length=length,
    )


def up(path: str) -> str:
    return UPLOAD + path


def raw_head(method: bytes, target: bytes, *headers: bytes) -> bytes:
    lines = [method + b" " + target + b" HTTP/1.1", b"Host: 127.0.0.1"]
    lines += [f"Authorization: Bearer {TOKEN}".encode(), *headers]
    return b"\r\n".join(lines) + b"\r\n\r\n"


CASES = [
    # Traversal, in its many spellings.
    Hostile("dotdot", put(up("../x.ts")), 400, "invalid_path"),
    Hostile("dotdot-deep", put(up("a/../../x.ts")), 400, "invalid_path"),
    Hostile("dotdot-encoded", put(up("%2e%2e/x.ts")), 400, "invalid_path"),
    Hostile("dotdot-upper", put(up("%2E%2E%2Fetc%2Fx.ts")), 400, "invalid_path"),
    Hostile("dotdot-mixed", put(up("..%2fx.ts")), 400, "invalid_path"),
    Hostile("dotdot-double", put(up("%252e%252e/x.ts")), 400, "invalid_path"),
    Hostile("dotdot-overlong", put(up("%c0%ae%c0%ae/x.ts")), 400, "invalid_path"),
    Hostile("dotdot-backslash", put(up("..%5cx.ts")), 400, "invalid_path"),
    Hostile("dot-part", put(up("./a.ts")), 400, "invalid_path"),
    Hostile("backslash", put(up("a\\b.ts")), 400, "invalid_path"),
    # Separators where none may be.
    Hostile("slash-in-app", put("/Live%2fApp/hls-upload/a.ts"), 400, "invalid_path"),
    Hostile("slash-before", put("/LiveApp%2Fhls-upload/a.ts"), 400, "invalid_path"),
    Hostile("slash-in-name", put(up("a%2fb.ts")), 400, "invalid_path"),
    Hostile("empty-part", put(up("a//b.ts")), 400, "invalid_path"),
    Hostile("leading-slash", put(up("/a.ts")), 400, "invalid_path"),
    Hostile("trailing-slash", put(up("a/")), 400, "invalid_path"),
    # NUL and control characters, escaped and raw.
    Hostile("nul-escaped", put(up("a%00.ts")), 400, "invalid_path"),
    Hostile("newline-escaped", put(up("a%0a.ts")), 400, "invalid_path"),
    Hostile("crlf-injection", put(up("a%0d%0aX-Evil:%201.ts")), 400, "invalid_path"),
    Hostile("tab-escaped", put(up("a%09b.ts")), 400, "invalid_path"),
    Hostile("del-escaped", put(up("a%7f.ts")), 400, "invalid_path"),
    Hostile("c1-escaped", put(up("a%c2%85.ts")), 400, "invalid_path"),
    Hostile("control-in-app", put("/Live%01App/hls-upload/a.ts"), 400, "invalid_path"),
    Hostile("nul-raw", put(UPLOAD.encode() + b"a\x00.ts"), 400, "invalid_request"),
    # A coding the relay would store undecoded.
    Hostile(
        "transfer-gzip",
        raw_head(b"PUT", up("gz.ts").encode(), b"Transfer-Encoding: gzip, chunked")
        + b"5\r\nGGGGG\r\n0\r\n\r\n",
        400,
        "unsupported_transfer_coding",
    ),
    Hostile("non-ascii", put(up("%C3%A9t%C3%A9.ts")), 400, "invalid_path"),
    # Overlong names.
    Hostile("path-513", put(up("a" * 510 + ".ts")), 400, "invalid_path"),
    Hostile("app-65", put("/" + "A" * 65 + "/hls-upload/a.ts"), 400, "invalid_path"),
    Hostile(
        "request-line-huge", put(up("a/" * 5000 + "a.ts")), 431, "headers_too_large"
    ),
    # Extensions that are not media, key files among them.
    Hostile("key-file", put(up("enc.key")), 415, "unsupported_media_type"),
    Hostile("executable", put(up("a.exe")), 415, "unsupported_media_type"),
    Hostile("no-extension", put(up("segment")), 415, "unsupported_media_type"),
    Hostile("double-extension", put(up("a.ts.php")), 415, "unsupported_media_type"),
    Hostile("near-m3u8", put(up("a.m3u8x")), 415, "unsupported_media_type"),
    Hostile("semicolon", put(up("a.ts;.m3u8")), 400, "invalid_path"),
    # Oversize bodies, declared and streamed.
    Hostile(
        "media-declared-too-big",
        put(up("big.ts"), b"", length=MAX_MEDIA + 1),
        413,
        "body_too_large",
    ),
    Hostile(
        "media-chunked-too-big",
        put(up("big.ts"), b"a" * (MAX_MEDIA + 1), chunked=True),
        413,
        "body_too_large",
    ),
    Hostile(
        "playlist-declared-too-big",
        put(up("big.m3u8"), b"", length=MAX_PLAYLIST + 1),
        413,
        "body_too_large",
    ),
    Hostile(
        "playlist-chunked-too-big",
        put(up("big.m3u8"), PLAYLIST_OK.ljust(MAX_PLAYLIST + 1, b"#"), chunked=True),
        413,
        "body_too_large",
    ),
    Hostile(
        "delete-with-body",
        request_bytes("DELETE", up("a.ts"), b"a" * 70000, headers=AUTH),
        413,
        "body_too_large",
    ),
    # Content-Length that lies.
    Hostile(
        "length-longer-then-stall",
        put(up("lie.ts"), b"only ten b", length=1000),
        408,
        "request_timeout",
    ),
    Hostile(
        "length-shorter-than-playlist",
        put(up("short.m3u8"), PLAYLIST_OK, length=4),
        400,
        "invalid_playlist",
    ),
    Hostile(
        "length-and-chunked",
        raw_head(
            b"PUT",
            up("smuggle.ts").encode(),
            b"Content-Length: 4",
            b"Transfer-Encoding: chunked",
        )
        + b"5\r\nhello\r\n0\r\n\r\n",
        400,
        "invalid_request",
    ),
    Hostile(
        "two-lengths",
        raw_head(
            b"PUT", up("two.ts").encode(), b"Content-Length: 3", b"Content-Length: 5"
        )
        + b"hello",
        400,
        "invalid_request",
    ),
    Hostile(
        "negative-length",
        raw_head(b"PUT", up("neg.ts").encode(), b"Content-Length: -5") + b"hello",
        400,
        "invalid_request",
    ),
    Hostile(
        "length-not-a-number",
        raw_head(b"PUT", up("nan.ts").encode(), b"Content-Length: 12abc") + b"hello",
        400,
        "invalid_request",
    ),
    # Chunked encoding, malformed.
    Hostile(
        "chunk-size-not-hex",
        raw_head(b"PUT", up("c.ts").encode(), b"Transfer-Encoding: chunked")
        + b"zz\r\nhello\r\n0\r\n\r\n",
        400,
        "invalid_request",
    ),
    Hostile(
        "chunk-size-overflow",
        raw_head(b"PUT", up("c.ts").encode(), b"Transfer-Encoding: chunked")
        + b"ffffffffffffffffffff\r\nhello\r\n0\r\n\r\n",
        400,
        "invalid_request",
    ),
    Hostile(
        "chunk-missing-crlf",
        raw_head(b"PUT", up("c.ts").encode(), b"Transfer-Encoding: chunked")
        + b"5\r\nhelloXX0\r\n\r\n",
        400,
        "invalid_request",
    ),
    Hostile(
        "chunk-longer-then-stall",
        raw_head(b"PUT", up("c.ts").encode(), b"Transfer-Encoding: chunked")
        + b"400\r\nonly a few bytes",
        408,
        "request_timeout",
    ),
    Hostile(
        "chunked-no-last-chunk",
        raw_head(b"PUT", up("c.m3u8").encode(), b"Transfer-Encoding: chunked")
        + b"%x\r\n%s\r\n" % (len(PLAYLIST_OK), PLAYLIST_OK),
        408,
        "request_timeout",
    ),
    # Playlists that are not playlists.
    Hostile(
        "playlist-not-utf8",
        put(up("p.m3u8"), b"#EXTM3U\n#EXTINF:2,\n\xff\xfe.ts\n"),
        400,
        "invalid_playlist",
    ),
    Hostile(
        "playlist-utf16",
        put(up("p.m3u8"), "#EXTM3U\n#EXTINF:2,\ns0.ts\n".encode("utf-16")),
        400,
        "invalid_playlist",
    ),
    Hostile(
        "playlist-html", put(up("p.m3u8"), b"<html>hi</html>"), 400, "invalid_playlist"
    ),
    Hostile("playlist-json", put(up("p.m3u8"), b'{"a": 1}'), 400, "invalid_playlist"),
    Hostile("playlist-empty", put(up("p.m3u8"), b""), 400, "invalid_playlist"),
    Hostile(
        "playlist-nul",
        put(up("p.m3u8"), b"#EXTM3U\n#EXTINF:2,\ns0\x00.ts\n"),
        400,
        "invalid_playlist",
    ),
    Hostile(
        "playlist-broken-map",
        put(up("p.m3u8"), b'#EXTM3U\n#EXT-X-MAP:URI="init.mp4\n#EXTINF:2,\ns0.m4s\n'),
        400,
        "invalid_playlist",
    ),
    # Credentials, and heads that are too big or too slow.
    Hostile(
        "no-credentials",
        request_bytes("PUT", up("a.ts"), b"x"),
        401,
        "unauthorized",
    ),
    Hostile(
        "wrong-token",
        request_bytes(
            "PUT", up("a.ts"), b"x", headers={"Authorization": "Bearer nope"}
        ),
        401,
        "unauthorized",
    ),
    Hostile(
        "token-as-basic",
        request_bytes(
            "PUT", up("a.ts"), b"x", headers={"Authorization": f"Basic {TOKEN}"}
        ),
        401,
        "unauthorized",
    ),
    Hostile(
        "header-too-big",
        put(up("a.ts"), headers={"X-Pad": "p" * MAX_HEAD}),
        431,
        "headers_too_large",
    ),
    Hostile(
        "many-headers",
        put(up("a.ts"), headers={f"X-Pad-{n}": "p" for n in range(1500)}),
        431,
        "headers_too_large",
    ),
    Hostile(
        "head-stalls",
        b"PUT " + up("slow.ts").encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n",
        408,
        "request_timeout",
    ),
    # Methods the upload path does not take.
    Hostile(
        "get-media",
        request_bytes("GET", up("a.ts"), headers=AUTH),
        405,
        "method_not_allowed",
    ),
    Hostile(
        "patch-media",
        request_bytes("PATCH", up("a.ts"), b"x", headers=AUTH),
        405,
        "method_not_allowed",
    ),
]


@pytest.fixture(scope="module")
def hostile_relay(
    local_s3: LocalS3, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Relay, str]]:
    relay, bucket = start_relay(local_s3, tmp_path_factory.mktemp("hostile"), RELAY_ENV)
    yield relay, bucket
    relay.terminate()


@pytest.fixture(scope="module")
def s3(local_s3: LocalS3) -> S3Client:
    return local_s3.client()


def test_hostile_table_is_large_and_distinct() -> None:
    assert len(CASES) >= 30
    assert len({case.id for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_hostile_request_is_refused_and_changes_nothing(
    case: Hostile, hostile_relay: tuple[Relay, str], s3: S3Client
) -> None:
    relay, bucket = hostile_relay
    wait_settled(relay)
    keys_before = bucket_keys(s3, bucket)
    spool_before = spool_files(relay.spool_dir)

    response = send_raw(relay.port, case.request, timeout_s=STALL_S * 10)

    assert response is not None, f"no answer; log:\n{relay.log_text()[-2000:]}"
    assert response.status == case.status, response.body[:300]
    assert response.header("content-type") == "application/json"
    body = response.json()
    assert set(body) == {"error", "detail"}
    assert body["error"] == case.error
    assert isinstance(body["detail"], str) and body["detail"]
    if case.status == 401:
        assert "Bearer" in (response.header("www-authenticate") or "")
    if case.status == 405:
        # Every case here is a media file: it can be written and deleted only.
        assert response.header("allow") == "DELETE, POST, PUT"

    wait_settled(relay)
    assert bucket_keys(s3, bucket) == keys_before
    assert spool_files(relay.spool_dir) == spool_before
    assert relay.is_running


def test_hostile_relay_stores_a_clean_request(
    hostile_relay: tuple[Relay, str], s3: S3Client
) -> None:
    # The control: the same relay and checks do see a write that is allowed,
    # so the table above cannot pass by watching the wrong bucket.
    relay, bucket = hostile_relay
    response = send_raw(relay.port, put(up("control/ok.ts"), b"a" * MAX_MEDIA))

    assert response is not None and response.status == 201
    wait_settled(relay)
    assert "streams/control/ok.ts" in bucket_keys(s3, bucket)


@pytest.mark.parametrize(
    ("method", "target", "allow"),
    [
        ("PATCH", up("live/index.m3u8"), "DELETE, GET, HEAD, POST, PUT"),
        ("PATCH", up("live/seg1.ts"), "DELETE, POST, PUT"),
        ("POST", "/healthz", "GET"),
    ],
)
def test_a_method_not_allowed_is_told_what_is(
    method: str, target: str, allow: str, hostile_relay: tuple[Relay, str]
) -> None:
    relay, _ = hostile_relay
    response = send_raw(relay.port, request_bytes(method, target, headers=AUTH))

    assert response is not None and response.status == 405
    assert response.header("allow") == allow
    assert response.json() == {
        "error": "method_not_allowed",
        "detail": f"{method} is not allowed here; allowed: {allow}",
    }


def log_lines_with(relay: Relay, needle: str) -> list[str]:
    """The relay's log lines holding ``needle``, once the first is there.

    An access line is written after its answer has gone; a moment more
    leaves room for a second line, if there were one.
    """
    deadline = time.monotonic() + 30
    while needle not in relay.log_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)
    return [line for line in relay.log_text().splitlines() if needle in line]


@pytest.mark.parametrize(
    ("request_id", "sent", "status", "why"),
    [
        # Refused by a route's handler.
        ("refused-extension", put(up("a.exe")), 415, "error=unsupported_media_type: "),
        # Refused before routing, by the request limits.
        ("refused-control", put(up("a%0a.ts")), 400, "error=invalid_path: "),
    ],
)
def test_a_refusal_is_one_log_line_that_says_why(
    request_id: str,
    sent: bytes,
    status: int,
    why: str,
    hostile_relay: tuple[Relay, str],
) -> None:
    relay, _ = hostile_relay
    tagged = sent.replace(b"\r\n", f"\r\nX-Request-Id: {request_id}\r\n".encode(), 1)
    response = send_raw(relay.port, tagged)
    assert response is not None and response.status == status

    lines = log_lines_with(relay, f"request_id={request_id}")
    assert len(lines) == 1, lines
    assert f"status={status}" in lines[0]
    detail = response.json()["detail"]
    assert f"{why}{detail}" in lines[0]


def test_heads_refused_before_the_app_are_counted(
    hostile_relay: tuple[Relay, str],
) -> None:
    # The 431 and 408 are the protocol's own answers: no route, no access
    # middleware; they still show in hlsrelay_requests_total.
    relay, _ = hostile_relay
    by_id = {case.id: case for case in CASES}
    before = scrape(relay)

    for case_id in ("header-too-big", "head-stalls"):
        case = by_id[case_id]
        response = send_raw(relay.port, case.request, timeout_s=STALL_S * 10)
        assert response is not None and response.status == case.status
    # A connection that never sends a byte: no method to name.
    silent = send_raw(relay.port, b"", timeout_s=STALL_S * 10)
    assert silent is not None and silent.status == 408

    after = scrape(relay)
    for method, status in (("PUT", "431"), ("PUT", "408"), ("other", "408")):
        counted = requests(after, "unmatched", method, status)
        assert counted == requests(before, "unmatched", method, status) + 1, status
    # One line each, in the words of the protocol's other refusals; a
    # connection that sent nothing was no request.
    text = relay.log_text()
    for path, status in (("a.ts", 431), ("slow.ts", 408)):
        line = f"refused request client=127.0.0.1 path='{up(path)}' status={status}: "
        assert line in text
    idle = "closed idle connection client=127.0.0.1 status=408: no request within"
    idle += f" {STALL_S}s"
    assert idle in text


def test_a_path_the_parser_refuses_is_logged_as_it_was_sent(
    hostile_relay: tuple[Relay, str],
) -> None:
    # llhttp refuses a NUL in the path before handing the path over; the
    # operator still learns which file the encoder tried, escaped.
    relay, _ = hostile_relay
    response = send_raw(relay.port, put(UPLOAD.encode() + b"nul-logged\x00.ts"))
    assert response is not None and response.status == 400

    lines = log_lines_with(relay, "nul-logged")
    assert len(lines) == 1, lines
    assert (
        f"refused request client=127.0.0.1 path='{UPLOAD}nul-logged\\x00.ts' "
        "status=400: the request is not valid HTTP/1.1" in lines[0]
    )


def test_a_head_refused_by_the_protocol_logs_no_query(
    hostile_relay: tuple[Relay, str],
) -> None:
    # Forwarding and signed URLs carry tokens in the query; access lines
    # leave it out, and so must the protocol's own refusals.
    relay, _ = hostile_relay
    target = up("query-kept-out.ts") + "?token=s3cr3t-q&X-Amz-Signature=sig-zq-w"
    two_lengths = raw_head(
        b"PUT", target.encode(), b"Content-Length: 3", b"Content-Length: 5"
    )
    response = send_raw(relay.port, two_lengths)
    assert response is not None and response.status == 400

    lines = log_lines_with(relay, "query-kept-out")
    assert len(lines) == 1, lines
    assert f"path='{up('query-kept-out.ts')}' status=400" in lines[0]
    assert "s3cr3t-q" not in relay.log_text()
    assert "sig-zq-w" not in relay.log_text()


def test_bytes_that_are_not_http_are_refused_in_one_line_each(
    hostile_relay: tuple[Relay, str],
) -> None:
    relay, _ = hostile_relay
    before = scrape(relay)
    # Refused in the head: the protocol's own line, naming the path.
    two_lengths = raw_head(
        b"PUT",
        up("not-http/two.ts").encode(),
        b"Content-Length: 3",
        b"Content-Length: 5",
    )
    # Refused in the body: the request's access line says what its client
    # was answered, and counts the bytes of that answer.
    bad_chunk = raw_head(
        b"PUT", up("not-http/chunk.ts").encode(), b"Transfer-Encoding: chunked"
    )
    answers = []
    for sent in (two_lengths + b"hello", bad_chunk + b"zz\r\nhello\r\n0\r\n\r\n"):
        response = send_raw(relay.port, sent)
        assert response is not None and response.status == 400
        assert response.json()["error"] == "invalid_request"
        answers.append(response)

    (head_line,) = log_lines_with(relay, "not-http/two.ts")
    assert "refused request client=127.0.0.1" in head_line
    assert "status=400: the request is not valid HTTP/1.1 (" in head_line
    (body_line,) = log_lines_with(relay, "not-http/chunk.ts")
    assert "status=400" in body_line
    assert f"bytes_out={len(answers[1].body)} " in body_line
    assert f"error=invalid_request: {answers[1].json()['detail']}" in body_line
    assert "Invalid HTTP request received" not in relay.log_text()

    after = scrape(relay)
    head_count = requests(after, "unmatched", "PUT", "400")
    assert head_count == requests(before, "unmatched", "PUT", "400") + 1
    route = "/{application}/hls-upload/{path}"
    body_count = requests(after, route, "PUT", "400")
    assert body_count == requests(before, route, "PUT", "400") + 1


def kept_alive_put(path: str, size: int = 10) -> bytes:
    """A PUT that leaves the connection open (put() asks to close)."""
    length = f"Content-Length: {size}".encode()
    return raw_head(b"PUT", up(path).encode(), length) + b"g" * size


def two_answers(port: int, sent: bytes) -> tuple[RawResponse, RawResponse]:
    """The first two answers to ``sent``, written at once on one connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(sent)
        received = read_until_closed(sock)
    # Split where the second status line starts: a 204 has no length.
    second_at = received.find(b"HTTP/1.1 ", 1)
    first = parse_response(received[:second_at] if second_at > 0 else received)
    second = parse_response(received[second_at:]) if second_at > 0 else None
    assert first is not None and second is not None, received[:500]
    return first, second


def test_a_head_stalled_behind_a_request_in_the_same_read_is_timed(
    hostile_relay: tuple[Relay, str],
) -> None:
    # The second head begins in the read that ends the first request; it
    # gets HLSRELAY_HEADER_TIMEOUT_S like any head, not uvicorn's keep-alive
    # close without an answer.
    relay, _ = hostile_relay
    first = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    stalled = b"PUT " + up("pipelined/stalled.ts").encode() + b" HTTP/1.1\r\nHo"
    healthy, answer = two_answers(relay.port, first + stalled)

    assert (healthy.status, answer.status) == (200, 408)
    assert answer.json()["error"] == "request_timeout"
    line = f"refused request client=127.0.0.1 path='{up('pipelined/stalled.ts')}'"
    assert f"{line} status=408: " in relay.log_text()


def test_a_malformed_request_pipelined_after_a_good_one_is_answered_second(
    hostile_relay: tuple[Relay, str], s3: S3Client
) -> None:
    # HTTP/1.1 answers in order: the stored PUT gets its 201 first, then the
    # bytes after it their 400, in one packet as a client may send them.
    relay, bucket = hostile_relay
    # Kept alive: a closing request ends the connection.
    good = kept_alive_put("pipelined/good.ts")
    for after in (
        b"PUT /x HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
        b"junk after the body\r\n\r\n",
    ):
        first, second = two_answers(relay.port, good + after)
        assert (first.status, second.status) == (201, 400)
        assert second.json()["error"] == "invalid_request"
    wait_settled(relay)
    assert "streams/pipelined/good.ts" in bucket_keys(s3, bucket)


@pytest.mark.parametrize(
    ("refused", "status"), [("../bad.ts", 400), ("bad.exe", 415)], ids=["400", "415"]
)
def test_requests_pipelined_after_an_answer_that_closes_are_not_run(
    hostile_relay: tuple[Relay, str], s3: S3Client, refused: str, status: int
) -> None:
    # RFC 9112 9.6: after answering Connection: close the relay handles no
    # more requests of that connection; the client resends them elsewhere.
    relay, bucket = hostile_relay
    name = f"pipe-close-{status}"
    sent = b"".join(
        kept_alive_put(path, 188)
        for path in (f"{name}/pipeA.ts", refused, f"{name}/pipeB.ts")
    )
    with socket.create_connection(("127.0.0.1", relay.port), timeout=30) as sock:
        sock.sendall(sent)
        received = read_until_closed(sock)

    assert received.count(b"HTTP/1.1 ") == 2, received[:500]
    second_at = received.find(b"HTTP/1.1 ", 1)
    first = parse_response(received[:second_at])
    second = parse_response(received[second_at:])
    assert first is not None and first.status == 201
    assert second is not None and second.status == status
    assert second.header("connection") == "close"
    wait_settled(relay)
    keys = bucket_keys(s3, bucket)
    assert f"streams/{name}/pipeA.ts" in keys
    assert f"streams/{name}/pipeB.ts" not in keys
    assert f"{name}/pipeB.ts" not in relay.log_text()
    dropped = "dropped requests pipelined after an answer that closed the connection"
    assert f"{dropped} count=1 client=127.0.0.1" in log_lines_with(relay, dropped)[-1]


def test_a_segment_and_playlist_pipelined_then_closed_are_both_stored(
    hostile_relay: tuple[Relay, str], s3: S3Client
) -> None:
    # ffmpeg -http_persistent 1 leaves without reading either answer.
    relay, bucket = hostile_relay
    segment = kept_alive_put("pipe-leave/s0.ts", 188)
    head = f"Content-Length: {len(PLAYLIST_OK)}".encode()
    target = up("pipe-leave/live.m3u8").encode()
    playlist = raw_head(b"PUT", target, head) + PLAYLIST_OK
    with socket.create_connection(("127.0.0.1", relay.port), timeout=30) as sock:
        sock.sendall(segment + playlist)

    wait_settled(relay)
    keys = bucket_keys(s3, bucket)
    assert {"streams/pipe-leave/s0.ts", "streams/pipe-leave/live.m3u8"} <= keys


# What `curl --http2` adds to a request to an http:// URL.
H2C = (
    b"Connection: Upgrade, HTTP2-Settings",
    b"Upgrade: h2c",
    b"HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA",
)


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_body_sent_with_an_upgrade_to_h2c_is_refused_not_read_as_empty(
    hostile_relay: tuple[Relay, str], s3: S3Client, framing: str
) -> None:
    # The parser would hand the body to the new protocol, and the route an
    # empty one.
    relay, bucket = hostile_relay
    name = f"h2c/{framing}.m3u8"
    if framing == "chunked":
        body = f"{len(PLAYLIST_OK):x}\r\n".encode() + PLAYLIST_OK + b"\r\n0\r\n\r\n"
        framed = b"Transfer-Encoding: chunked"
    else:
        body, framed = PLAYLIST_OK, f"Content-Length: {len(PLAYLIST_OK)}".encode()
    before = scrape(relay)

    response = send_raw(
        relay.port, raw_head(b"PUT", up(name).encode(), framed, *H2C) + body
    )

    assert response is not None and response.status == 400
    assert response.json()["error"] == "invalid_request"
    assert "--http1.1" in response.json()["detail"]
    (line,) = log_lines_with(relay, up(name))
    assert "refused request client=127.0.0.1" in line
    assert "status=400: the request asks to switch to 'h2c'" in line
    wait_settled(relay)
    assert f"streams/{name}" not in bucket_keys(s3, bucket)
    assert requests(scrape(relay), "unmatched", "PUT", "400") == (
        requests(before, "unmatched", "PUT", "400") + 1
    )


def test_a_request_without_a_body_is_served_despite_an_upgrade_to_h2c(
    hostile_relay: tuple[Relay, str], s3: S3Client
) -> None:
    relay, bucket = hostile_relay
    stored = send_raw(relay.port, put(up("h2c/kept.m3u8"), PLAYLIST_OK))
    assert stored is not None and stored.status == 201
    wait_settled(relay)

    got = send_raw(relay.port, raw_head(b"GET", up("h2c/kept.m3u8").encode(), *H2C))
    assert got is not None and got.status == 200
    assert got.body == PLAYLIST_OK
    gone = send_raw(relay.port, raw_head(b"DELETE", up("h2c/kept.m3u8").encode(), *H2C))
    assert gone is not None and gone.status == 204
    wait_settled(relay)
    assert "streams/h2c/kept.m3u8" not in bucket_keys(s3, bucket)
    assert "Unsupported upgrade request" not in relay.log_text()


def test_a_head_cut_short_by_the_client_is_answered_and_logged(
    hostile_relay: tuple[Relay, str],
) -> None:
    # The client shuts its side down mid-head but still reads, as a client
    # that gives up does; before, the connection closed with no word.
    relay, _ = hostile_relay
    before = scrape(relay)
    with socket.create_connection(("127.0.0.1", relay.port), timeout=30) as sock:
        sock.sendall(b"PUT " + up("cut/head.ts").encode() + b" HTTP/1.1\r\nHost: x\r\n")
        sock.shutdown(socket.SHUT_WR)
        response = parse_response(read_until_closed(sock))

    assert response is not None and response.status == 400
    assert response.json()["error"] == "invalid_request"
    (line,) = log_lines_with(relay, up("cut/head.ts"))
    assert "status=400: the connection ended within the request head" in line
    assert requests(scrape(relay), "unmatched", "PUT", "400") == (
        requests(before, "unmatched", "PUT", "400") + 1
    )

    # A connection closed between requests is no refusal.
    with socket.create_connection(("127.0.0.1", relay.port), timeout=30) as sock:
        sock.shutdown(socket.SHUT_WR)
        assert read_until_closed(sock) == b""


def test_an_upgrade_refused_behind_a_stored_put_is_answered_after_it(
    hostile_relay: tuple[Relay, str], s3: S3Client
) -> None:
    relay, bucket = hostile_relay
    good = kept_alive_put("h2c/first.ts")
    framed = f"Content-Length: {len(PLAYLIST_OK)}".encode()
    refused = raw_head(b"PUT", up("h2c/second.m3u8").encode(), framed, *H2C)
    first, second = two_answers(relay.port, good + refused + PLAYLIST_OK)

    assert (first.status, second.status) == (201, 400)
    assert "'h2c'" in second.json()["detail"]
    wait_settled(relay)
    keys = bucket_keys(s3, bucket)
    assert "streams/h2c/first.ts" in keys
    assert "streams/h2c/second.m3u8" not in keys


def test_requests_after_a_served_upgrade_in_one_read_are_served_too(
    hostile_relay: tuple[Relay, str], s3: S3Client
) -> None:
    # The parser hands back what follows an upgrade's head; it is the next
    # request, not the new protocol's bytes. "00" is no body either.
    relay, bucket = hostile_relay
    empty = raw_head(b"DELETE", up("h2c/none.ts").encode(), b"Content-Length: 00", *H2C)
    framed = f"Content-Length: {len(PLAYLIST_OK)}".encode()
    after = raw_head(
        b"PUT", up("h2c/after.m3u8").encode(), framed, b"Connection: close"
    )
    first, second = two_answers(relay.port, empty + after + PLAYLIST_OK)

    assert (first.status, second.status) == (204, 201)
    wait_settled(relay)
    assert "streams/h2c/after.m3u8" in bucket_keys(s3, bucket)


def test_connect_with_a_body_is_not_taken_for_an_upgrade(
    hostile_relay: tuple[Relay, str],
) -> None:
    head = raw_head(b"CONNECT", up("h2c/tunnel.ts").encode(), b"Content-Length: 4")
    response = send_raw(hostile_relay[0].port, head + b"abcd")

    assert response is not None and response.status == 405
    assert response.json()["error"] == "method_not_allowed"


WEBSOCKET = (
    b"Connection: Upgrade",
    b"Upgrade: websocket",
    b"Sec-WebSocket-Version: 13",
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
)


def test_a_websocket_upgrade_is_served_or_refused_as_json(
    hostile_relay: tuple[Relay, str], s3: S3Client
) -> None:
    # No route takes a WebSocket: a request asking for one is plain HTTP.
    relay, bucket = hostile_relay
    got = send_raw(relay.port, raw_head(b"GET", b"/healthz", *WEBSOCKET))
    assert got is not None and got.status == 200
    assert got.json() == {"status": "ok"}

    framed = f"Content-Length: {len(PLAYLIST_OK)}".encode()
    head = raw_head(b"PUT", up("ws/live.m3u8").encode(), framed, *WEBSOCKET)
    refused = send_raw(relay.port, head + PLAYLIST_OK)
    assert refused is not None and refused.status == 400
    detail = refused.json()["detail"]
    assert "'websocket'" in detail and "curl" not in detail
    wait_settled(relay)
    assert "streams/ws/live.m3u8" not in bucket_keys(s3, bucket)


def test_an_http2_preface_is_refused_in_words_an_operator_can_act_on(
    hostile_relay: tuple[Relay, str],
) -> None:
    relay, _ = hostile_relay
    response = send_raw(relay.port, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")

    assert response is not None and response.status == 400
    assert "HTTP/2 connection preface" in response.json()["detail"]
    (line,) = log_lines_with(relay, "HTTP/2 connection preface")
    assert "refused request client=127.0.0.1" in line
    assert "--http1.1" in line


@pytest.mark.parametrize(
    "target", ["/hls-upload/x.ts", "/LiveApp/upload/x.ts", "/LiveApp/stream.m3u8"]
)
def test_a_put_to_no_route_says_where_uploads_go(
    hostile_relay: tuple[Relay, str], target: str
) -> None:
    response = send_raw(hostile_relay[0].port, put(target))

    assert response is not None and response.status == 404
    assert response.json()["error"] == "not_found"
    assert "/{application}/hls-upload/{path}" in response.json()["detail"]
