"""The floor: the least a Python relay with a durable spool can spend.

Not a product, a yardstick for the streams and publish sections. It takes
the same PUTs and DELETEs as the relay and keeps the same promise for them,
on the cheapest path Python offers: uvloop, an ``asyncio.Protocol`` fed by
httptools with no ASGI server or framework, the body written to its file
from the event loop as it arrives.

- Default (spool) mode: the body and its folder are fsynced before the
  answer, in one hop to a worker thread per request, which then goes
  straight on to the S3 call when its stream folder has nothing ahead (S3
  writes of one folder keep their order of arrival, and a request sent
  after an answer is written after that one).
- ``HLSRELAY_ACK=upload``: a body with a Content-Length goes to S3 while it
  arrives, read back from its file by the relay's own ``GrowingBody``, and
  is answered once S3 has it.

What it leaves out is what the relay adds on top of that promise, and so
what the relay's extra CPU over it is spent on: checked paths and limits,
authentication, metrics, logs, CRC-32 of bodies, the playlist barrier (it
never parses a playlist: arrival order stands in for it), metadata beside
each body so that a restart can replay the spool, and retries. A relay of
this design cannot spend less per request than this, so where the floor
reaches a target, it shows what a leaner relay would reach, and where it
does not, no Python relay on this machine will.

Run: python -m bench.floor (settings from the relay's HLSRELAY_* variables).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import os
import signal
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, cast

import httptools
import uvloop

from app.config import Settings
from app.growing import GrowingBody
from app.paths import CONTENT_TYPES, extension_of
from app.spool import _fsync_dir
from app.storage import build_client

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = logging.getLogger("bench.floor")

UPLOAD_MARK = "/hls-upload/"
WORKERS = 16
_ANSWERS = {
    201: b"HTTP/1.1 201 Created\r\ncontent-length: 0\r\n\r\n",
    204: b"HTTP/1.1 204 No Content\r\n\r\n",
    200: b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
    404: b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n",
    502: b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n",
}


def _headers(settings: Settings, key: str) -> dict[str, str]:
    """The relay's Content-Type and Cache-Control for ``key``."""
    extension = extension_of(key)
    return {
        "ContentType": CONTENT_TYPES.get(extension, "application/octet-stream"),
        "CacheControl": settings.playlist_cache_control
        if extension == "m3u8"
        else settings.segment_cache_control,
    }


class Floor:
    """The spool folder, the S3 client, and one queue of S3 writes a folder."""

    def __init__(self, settings: Settings, spool: Path) -> None:
        self.settings = settings
        self.client: S3Client = build_client(settings)
        self.stream_client: S3Client = build_client(settings, streamed=True)
        self.ack_upload = settings.ack == "upload"
        self.bucket = settings.s3_bucket
        self.spool = spool
        self.spool.mkdir(parents=True, exist_ok=True)
        self.pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="floor")
        self.seq = itertools.count(1)
        self._lock = threading.Lock()
        # Folder -> S3 writes not yet started; a folder is in the dict while
        # one of its writes runs.
        self._queues: dict[str, collections.deque[Callable[[], None]]] = {}

    def commit(self, fd: int, path: Path) -> None:
        """Worker thread: make the file durable."""
        os.fsync(fd)
        os.close(fd)
        _fsync_dir(path.parent)

    def in_order(
        self, folder: str, write: Callable[[], None], answer: Callable[[], None]
    ) -> None:
        """Take the next place in the folder's S3 writes, answer, then run
        ``write`` in this thread if none is running: the thread that runs a
        folder's writes drains it. The answer comes after the place is taken,
        so what a client sends after it is written after it."""
        with self._lock:
            queue = self._queues.get(folder)
            if queue is not None:
                queue.append(write)
                answer()
                return
            queue = self._queues[folder] = collections.deque()
        answer()
        while True:
            try:
                write()
            except Exception:
                log.exception("S3 write failed folder=%s", folder)
            with self._lock:
                if not queue:
                    del self._queues[folder]
                    return
                write = queue.popleft()

    def put(self, key: str, path: Path) -> None:
        with open(path, "rb") as body:
            self.client.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=body,
                ContentLength=os.fstat(body.fileno()).st_size,
                **_headers(self.settings, key),  # type: ignore[arg-type]
            )
        path.unlink()

    def put_streamed(self, key: str, body: GrowingBody, size: int) -> None:
        self.stream_client.put_object(
            Bucket=self.bucket,
            Key=key,
            Body=body,  # type: ignore[arg-type]
            ContentLength=size,
            **_headers(self.settings, key),  # type: ignore[arg-type]
        )

    def delete(self, key: str, path: Path) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=key)
        path.unlink()


def _text(url: bytes) -> str:
    return url.decode("ascii", "replace")


class FloorProtocol(asyncio.Protocol):
    """One connection: requests parsed by httptools, bodies to files."""

    def __init__(self, floor: Floor) -> None:
        self.floor = floor
        self.loop = asyncio.get_running_loop()
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.length = 0
        self.fd = -1
        self.path = Path()
        self.written = 0
        self.streamed: GrowingBody | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's own class

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._send(404)
            self._close()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"content-length":
            self.length = int(value)

    def on_headers_complete(self) -> None:
        if self.parser.get_method() != b"PUT" or UPLOAD_MARK.encode() not in self.url:
            return
        self.path = self.floor.spool / f"{next(self.floor.seq):020d}"
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC)
        self.written = 0
        if self.floor.ack_upload and self.length > 0:
            # Upload mode: to S3 while it arrives, answered once S3 has it.
            key = self._key(_text(self.url))
            self.streamed = body = GrowingBody(self, self.length)
            path, length = self.path, self.length

            def job() -> None:
                status = 201
                try:
                    self.floor.put_streamed(key, body, length)
                except Exception:
                    log.exception("S3 write failed key=%s", key)
                    status = 502
                finally:
                    body.close()
                    path.unlink()
                self.loop.call_soon_threadsafe(self._send, status)

            self.floor.pool.submit(job)

    def fileno(self) -> int:
        """The body file, for the streamed upload's reader."""
        return self.fd

    def on_body(self, body: bytes) -> None:
        if self.fd >= 0:
            os.write(self.fd, body)
            self.written += len(body)
            if self.streamed is not None:
                self.streamed.grow(self.written)

    def on_message_complete(self) -> None:
        url, method = _text(self.url), self.parser.get_method()
        self.url, self.length = b"", 0
        if url == "/healthz":
            self._send(200)
            return
        if UPLOAD_MARK not in url or method not in (b"PUT", b"DELETE"):
            self._send(404)
            return
        key = self._key(url)
        if self.streamed is not None:
            self.streamed.complete()
            self.streamed = None
            os.close(self.fd)
            self.fd = -1
            return
        folder = key.rpartition("/")[0]
        floor = self.floor
        if method == b"PUT":
            fd, path, self.fd = self.fd, self.path, -1
            status, write = 201, lambda: floor.put(key, path)
        else:
            path = floor.spool / f"{next(floor.seq):020d}"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.write(fd, key.encode())
            status, write = 204, lambda: floor.delete(key, path)

        def answer() -> None:
            self.loop.call_soon_threadsafe(self._send, status)

        def job() -> None:
            floor.commit(fd, path)
            floor.in_order(folder, write, answer)

        floor.pool.submit(job)

    def _key(self, url: str) -> str:
        app, _, rest = url.partition(UPLOAD_MARK)
        return self.floor.settings.key_for(app.strip("/"), rest)

    def _send(self, status: int) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(_ANSWERS[status])

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.streamed is not None:
            self.streamed.abandon()
        if self.fd >= 0:
            os.close(self.fd)
            self.path.unlink(missing_ok=True)
            self.fd = -1


async def serve(floor: Floor, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: FloorProtocol(floor), "127.0.0.1", port, backlog=4096
    )
    stopped = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stopped.set)
    async with server:
        await stopped.wait()
    floor.pool.shutdown(wait=True)


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    settings = Settings()
    floor = Floor(settings, settings.spool_dir / "entries")
    uvloop.run(serve(floor, settings.port))


if __name__ == "__main__":
    main()
