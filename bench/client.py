"""Small HTTP/1.1 clients for load generation: a blocking one and an asyncio one.

Both send bodies that were framed once ahead of time (chunked, as ffmpeg
sends them, or with Content-Length), so the generator spends its time in the
kernel's socket copy rather than in Python, and measures the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass

HOST = "127.0.0.1"
# ffmpeg's avio buffer: each flush of it is one chunk on the wire.
FFMPEG_CHUNK = 32 * 1024
# uvicorn closes a kept-alive connection after 5 s idle; one idle this long
# is opened anew rather than written into as the server closes it.
STALE_AFTER_S = 2.0


def frame_chunked(body: bytes, chunk: int = FFMPEG_CHUNK) -> bytes:
    """The body as a chunked transfer coding, last chunk included."""
    parts = []
    for start in range(0, len(body), chunk):
        piece = body[start : start + chunk]
        parts.append(b"%x\r\n%s\r\n" % (len(piece), piece))
    parts.append(b"0\r\n\r\n")
    return b"".join(parts)


def request_head(method: str, path: str, port: int, length: int | None) -> bytes:
    """Request line and headers; ``length`` None means a chunked body."""
    framing = (
        "Transfer-Encoding: chunked" if length is None else f"Content-Length: {length}"
    )
    return (
        f"{method} {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
        f"User-Agent: hlsrelay-bench\r\n{framing}\r\n\r\n"
    ).encode("ascii")


@dataclass(frozen=True)
class Answer:
    status: int
    keep_alive: bool


def _parse_head(head: bytes) -> tuple[int, int, bool, bool]:
    """Status, body length (-1 when chunked), keep-alive, and chunked flag."""
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length = 0
    chunked = False
    keep_alive = True
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name, value = name.strip().lower(), value.strip().lower()
        if name == "content-length":
            length = int(value)
        elif name == "transfer-encoding" and "chunked" in value:
            chunked = True
        elif name == "connection" and value == "close":
            keep_alive = False
    return status, length, keep_alive, chunked


class BlockingClient:
    """One kept-alive connection, one request at a time."""

    def __init__(self, port: int, timeout_s: float = 120.0) -> None:
        self.port = port
        self.timeout_s = timeout_s
        self._sock: socket.socket | None = None
        self._rest = b""
        self._last_used = 0.0

    def _connect(self) -> socket.socket:
        if (
            self._sock is not None
            and time.monotonic() - self._last_used > STALE_AFTER_S
        ):
            self.close()
        if self._sock is None:
            sock = socket.create_connection((HOST, self.port), timeout=self.timeout_s)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._sock = sock
            self._rest = b""
        return self._sock

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def request(self, head: bytes, payload: bytes = b"") -> Answer:
        return self.stream(head, (payload,))[0]

    def stream(self, head: bytes, parts: Iterable[bytes]) -> tuple[Answer, float]:
        """Send the head and body parts, then read the answer.

        Returns the answer and the monotonic time the body's last byte was
        handed to the kernel.
        """
        sock = self._connect()
        try:
            sock.sendall(head)
            for part in parts:
                if part:
                    sock.sendall(part)
            body_sent = time.monotonic()
            answer = self._read_answer(sock)
        except BaseException:
            self.close()
            raise
        self._last_used = time.monotonic()
        if not answer.keep_alive:
            self.close()
        return answer, body_sent

    def _read_answer(self, sock: socket.socket) -> Answer:
        data = self._rest
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("the server closed before answering")
            data += chunk
        head, _, data = data.partition(b"\r\n\r\n")
        status, length, keep_alive, chunked = _parse_head(head)
        if chunked:
            while not data.endswith(b"0\r\n\r\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionError("the server closed inside its answer")
                data += chunk
            self._rest = b""
        else:
            while len(data) < length:
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionError("the server closed inside its answer")
                data += chunk
            self._rest = data[length:]
        return Answer(status, keep_alive)


async def read_answer(reader: asyncio.StreamReader) -> Answer:
    head = await reader.readuntil(b"\r\n\r\n")
    status, length, keep_alive, chunked = _parse_head(head[:-4])
    if chunked:
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif length:
        await reader.readexactly(length)
    return Answer(status, keep_alive)


class AsyncConnection:
    """A kept-alive asyncio connection that reconnects when the server closes."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def request(self, head: bytes, payload: bytes = b"") -> Answer:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(HOST, self.port)
        assert self._reader is not None
        writer = self._writer
        try:
            writer.write(head)
            if payload:
                writer.write(payload)
            await writer.drain()
            answer = await read_answer(self._reader)
        except BaseException:
            await self.close()
            raise
        if not answer.keep_alive:
            await self.close()
        return answer

    async def close(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()


async def request_once(port: int, head: bytes, payload: bytes = b"") -> Answer:
    """One request on a connection of its own, as ffmpeg sends each file."""
    connection = AsyncConnection(port)
    try:
        return await connection.request(head, payload)
    finally:
        await connection.close()
