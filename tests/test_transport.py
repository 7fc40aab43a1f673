"""A client that sends whole requests and leaves: every whole body is handled.

Real uvicorn on a loopback port, with a tiny ASGI app that records what it
was given, so the protocol and middleware are tested on their own.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
from rawhttp import read_until_closed

from app.locals3 import free_port
from app.transport import CompleteBodyMiddleware, RelayHttpProtocol


class Recorder:
    def __init__(self) -> None:
        self.seen: list[tuple[str, int | str]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        # Busy before reading, as the relay is while it checks the request:
        # the client's whole request and its FIN arrive in the meantime.
        await asyncio.sleep(0.05)
        body = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.seen.append((scope["path"], "disconnect"))
                return
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.seen.append((scope["path"], len(body)))
        # A path naming "close" is answered as a refusal that ends the connection.
        headers = [(b"connection", b"close")] if "close" in scope["path"] else []
        await send({"type": "http.response.start", "status": 201, "headers": headers})
        await send({"type": "http.response.body", "body": b""})


@pytest.fixture
def server() -> Iterator[tuple[int, Recorder]]:
    recorder = Recorder()
    port = free_port()
    config = uvicorn.Config(
        CompleteBodyMiddleware(recorder),
        host="127.0.0.1",
        port=port,
        log_config=None,
        http=RelayHttpProtocol,
        lifespan="off",
    )
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert thread.is_alive(), "uvicorn did not start"
        assert time.monotonic() < deadline, "uvicorn did not start in time"
        time.sleep(0.01)
    yield port, recorder
    srv.should_exit = True
    thread.join(timeout=10)


def chunked(path: str, body: bytes) -> bytes:
    head = f"PUT {path} HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    data = b"%x\r\n" % len(body) + body + b"\r\n" if body else b""
    return head.encode() + data + b"0\r\n\r\n"


def send_and_leave(port: int, data: bytes) -> None:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(data)
    sock.close()


def wait_seen(recorder: Recorder, count: int) -> list[tuple[str, int | str]]:
    deadline = time.monotonic() + 20
    while len(recorder.seen) < count and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.2)  # anything more would be a fault too
    return recorder.seen


@pytest.mark.parametrize("size", [0, 1, 5000])
def test_whole_body_then_close_reaches_app(
    server: tuple[int, Recorder], size: int
) -> None:
    port, recorder = server
    send_and_leave(port, chunked("/a.ts", b"x" * size))
    assert wait_seen(recorder, 1) == [("/a.ts", size)]


def test_pipelined_requests_then_close_all_run_in_order(
    server: tuple[int, Recorder],
) -> None:
    # ffmpeg -http_persistent 1: the segment, then its playlist, then close.
    port, recorder = server
    data = chunked("/seg.ts", b"s" * 200_000) + chunked("/live.m3u8", b"#EXTM3U\n")
    send_and_leave(port, data)
    assert wait_seen(recorder, 2) == [("/seg.ts", 200_000), ("/live.m3u8", 8)]


def test_many_pipelined_requests_then_close_all_run(
    server: tuple[int, Recorder],
) -> None:
    # A stream's end with -http_persistent 1: requests queued on one
    # connection, then a close with earlier answers unread (a reset).
    port, recorder = server
    paths = [f"/s{n}.ts" for n in range(4)] + [f"/p{n}.m3u8" for n in range(4)]
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(chunked("/first.ts", b"f"))
    wait_seen(recorder, 1)  # its answer now waits, unread, at the client
    sock.sendall(b"".join(chunked(path, b"#EXTM3U\n" * 50) for path in paths))
    sock.close()
    expected = [("/first.ts", 1)] + [(path, 400) for path in paths]
    assert wait_seen(recorder, len(expected)) == expected


@pytest.mark.parametrize("client_leaves", [False, True], ids=["reads", "leaves"])
def test_requests_pipelined_after_an_answer_that_closes_are_dropped(
    server: tuple[int, Recorder], client_leaves: bool
) -> None:
    # Whether the client's close comes before the relay's or after it,
    # what follows the answer with Connection: close is not run.
    port, recorder = server
    data = b"".join(chunked(path, b"x") for path in ("/a.ts", "/close.ts", "/b.ts"))
    if client_leaves:
        send_and_leave(port, data)
    else:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(data)
            received = read_until_closed(sock)
        # Two answers, the second ending the connection; none for /b.ts.
        assert received.count(b"HTTP/1.1 ") == 2, received[:500]
        assert received.lower().count(b"connection: close") == 1
    assert wait_seen(recorder, 2) == [("/a.ts", 1), ("/close.ts", 1)]


def test_body_cut_short_is_a_disconnect(server: tuple[int, Recorder]) -> None:
    port, recorder = server
    whole = chunked("/cut.ts", b"c" * 10_000)
    send_and_leave(port, whole[: len(whole) - 100])
    assert wait_seen(recorder, 1) == [("/cut.ts", "disconnect")]


def test_pipelined_request_cut_short_after_whole_one(
    server: tuple[int, Recorder],
) -> None:
    port, recorder = server
    second = chunked("/cut.ts", b"c" * 10_000)
    send_and_leave(port, chunked("/ok.ts", b"k" * 100) + second[:-100])
    assert wait_seen(recorder, 2) == [("/ok.ts", 100), ("/cut.ts", "disconnect")]
