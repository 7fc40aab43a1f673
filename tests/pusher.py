"""A synthetic encoder over raw sockets that PUTs and DELETEs the way ffmpeg does
(chunked, one connection per file), recording for every request whether it
went out whole and which status came back, so tests can say what the relay
acknowledged and judge the bucket against it."""

from __future__ import annotations

import random
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import httpx
from botocore.exceptions import ClientError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

CHUNK = 32 * 1024


@dataclass
class Sent:
    """One request as the encoder saw it."""

    method: str
    path: str
    body: bytes
    complete: bool = False  # the last chunk went out
    status: int | None = None  # None: no answer could be read
    headers: dict[str, str] = field(default_factory=dict)
    error: str = ""

    @property
    def acked(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


def _read_response(sock: socket.socket) -> tuple[int, dict[str, str]]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before a status line")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if status == 100:
        # Expect: 100-continue answered; the caller sends the body next.
        return status, headers
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    headers["_body"] = rest.decode("utf-8", "replace")
    return status, headers


class OpenPut:
    """A chunked PUT whose headers are out and whose body goes out on demand."""

    def __init__(self, pusher: Pusher, sent: Sent, sock: socket.socket) -> None:
        self.pusher = pusher
        self.sent = sent
        self.sock = sock
        self.offset = 0

    def send(self, nbytes: int) -> None:
        """Send the next ``nbytes`` of the body, in chunks."""
        end = min(len(self.sent.body), self.offset + nbytes)
        while self.offset < end:
            piece = self.sent.body[self.offset : min(end, self.offset + CHUNK)]
            self.sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.offset += len(piece)

    def finish(self) -> Sent:
        """Send the rest and the last chunk, then read the answer."""
        try:
            self.send(len(self.sent.body))
            self.sock.sendall(b"0\r\n\r\n")
            self.sent.complete = True
            self.sent.status, self.sent.headers = _read_response(self.sock)
        except OSError as exc:
            self.sent.error = f"{type(exc).__name__}: {exc}"
        finally:
            self.sock.close()
        return self.sent


class Pusher:
    """Sends requests to a relay at 127.0.0.1:``port`` and logs each one."""

    def __init__(self, port: int, app: str = "LiveApp", timeout_s: float = 60.0):
        self.port = port
        self.app = app
        self.timeout_s = timeout_s
        self.log: list[Sent] = []
        self._lock = threading.Lock()

    def _record(self, sent: Sent) -> Sent:
        with self._lock:
            self.log.append(sent)
        return sent

    def _connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), self.timeout_s)
        sock.settimeout(self.timeout_s)
        return sock

    def _head(self, method: str, path: str, extra: str = "") -> bytes:
        return (
            f"{method} /{self.app}/hls-upload/{path} HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{self.port}\r\nUser-Agent: pusher\r\n"
            f"Accept: */*\r\nConnection: close\r\n{extra}\r\n"
        ).encode()

    def open_put(self, path: str, body: bytes) -> OpenPut:
        """Start a chunked PUT; raises OSError when the relay is not there."""
        sent = self._record(Sent("PUT", path, body))
        sock = None
        try:
            sock = self._connect()
            sock.sendall(self._head("PUT", path, "Transfer-Encoding: chunked\r\n"))
        except OSError as exc:
            sent.error = f"{type(exc).__name__}: {exc}"
            if sock is not None:
                sock.close()
            raise
        return OpenPut(self, sent, sock)

    def put(self, path: str, body: bytes) -> Sent:
        """A whole chunked PUT, as ffmpeg sends it; errors are recorded, not raised."""
        try:
            upload = self.open_put(path, body)
        except OSError:
            return self.log[-1]
        return upload.finish()

    def put_expecting(self, path: str, body: bytes) -> Sent:
        """A PUT with Content-Length and ``Expect: 100-continue``: a refusal comes
        back before the body is sent, so its status can always be read."""
        sent = self._record(Sent("PUT", path, body))
        extra = f"Content-Length: {len(body)}\r\nExpect: 100-continue\r\n"
        try:
            with self._connect() as sock:
                sock.sendall(self._head("PUT", path, extra))
                status, headers = _read_response(sock)
                if status == 100:
                    sock.sendall(body)
                    sent.complete = True
                    status, headers = _read_response(sock)
                sent.status, sent.headers = status, headers
        except OSError as exc:
            sent.error = f"{type(exc).__name__}: {exc}"
        return sent

    def delete(self, path: str) -> Sent:
        """A DELETE with an empty chunked body, as ffmpeg sends it."""
        sent = self._record(Sent("DELETE", path, b""))
        try:
            with self._connect() as sock:
                head = self._head("DELETE", path, "Transfer-Encoding: chunked\r\n")
                sock.sendall(head + b"0\r\n\r\n")
                sent.complete = True
                sent.status, sent.headers = _read_response(sock)
        except OSError as exc:
            sent.error = f"{type(exc).__name__}: {exc}"
        return sent

    def snapshot(self) -> list[Sent]:
        with self._lock:
            return list(self.log)


class SyntheticStream:
    """One live variant: numbered segments and a sliding-window playlist.

    Every segment and every playlist version has distinct bytes, so a stale
    version in the bucket can be told from the newest.
    """

    def __init__(
        self,
        name: str = "live",
        window: int = 4,
        segment_bytes: int = 96 * 1024,
        seed: int = 1,
    ) -> None:
        self.name = name
        self.window = window
        self.segment_bytes = segment_bytes
        self.seed = seed

    @property
    def playlist_path(self) -> str:
        return f"{self.name}.m3u8"

    def segment_path(self, n: int) -> str:
        return f"{self.name}_{n:05d}.ts"

    def segment(self, n: int) -> bytes:
        rng = random.Random(f"{self.seed}/{self.name}/{n}")
        return f"seg {self.name} {n}\n".encode() + rng.randbytes(self.segment_bytes)

    def playlist(self, n: int) -> bytes:
        """The playlist once segment ``n`` is out: the last ``window`` segments."""
        first = max(0, n - self.window + 1)
        lines = [
            "#EXTM3U",
            "#EXT-X-VERSION:3",
            "#EXT-X-TARGETDURATION:2",
            f"#EXT-X-MEDIA-SEQUENCE:{first}",
        ]
        for i in range(first, n + 1):
            lines += ["#EXTINF:2.000000,", self.segment_path(i)]
        return ("\n".join(lines) + "\n").encode()

    def step(self, pusher: Pusher, n: int) -> None:
        """What ffmpeg does when segment ``n`` is done: the segment, the
        playlist, then a DELETE of the segment that left the list one ago."""
        pusher.put(self.segment_path(n), self.segment(n))
        pusher.put(self.playlist_path, self.playlist(n))
        old = n - self.window - 1
        if old >= 0:
            pusher.delete(self.segment_path(old))


# -- judging a bucket against what was acknowledged ------------------------


def acceptable_states(log: list[Sent], path: str) -> list[bytes | None]:
    """What the bucket may hold for ``path`` once the relay has settled.

    The state the last acknowledged request left, or that of any later
    request that went out whole (it may have been stored before its answer
    was lost); never that of a request cut short. None means absent.
    """
    ops = [sent for sent in log if sent.path == path]
    last_acked = max((i for i, op in enumerate(ops) if op.acked), default=-1)
    states: list[bytes | None] = []
    states.append(None if last_acked < 0 else _state_after(ops[last_acked]))
    for op in ops[last_acked + 1 :]:
        if op.complete:
            states.append(_state_after(op))
    return states


def _state_after(op: Sent) -> bytes | None:
    return op.body if op.method == "PUT" else None


def bucket_state(client: S3Client, bucket: str, key: str) -> bytes | None:
    try:
        return client.get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey"):
            return None
        raise


def _describe(state: bytes | None) -> str:
    if state is None:
        return "absent"
    return f"{len(state)} bytes {state[:40]!r}"


def mismatches(
    client: S3Client, bucket: str, log: list[Sent], prefix: str = "streams/"
) -> list[str]:
    """Every key whose bucket state is not acceptable, as readable lines."""
    problems = []
    paths = sorted({sent.path for sent in log})
    for path in paths:
        key = prefix + path
        state = bucket_state(client, bucket, key)
        allowed = acceptable_states(log, path)
        if state not in allowed:
            problems.append(
                f"{key}: bucket has {_describe(state)}, allowed "
                + " or ".join(_describe(s) for s in allowed)
            )
    listed = client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    for item in listed:
        if item["Key"].removeprefix(prefix) not in paths:
            problems.append(f"{item['Key']}: in the bucket but never sent")
    return problems


def wait_settled(relay_url: str, timeout_s: float = 90.0) -> None:
    """Poll the relay's /metrics until it has nothing left to apply to S3."""
    deadline = time.monotonic() + timeout_s
    text = ""
    while time.monotonic() < deadline:
        try:
            text = httpx.get(f"{relay_url}/metrics", timeout=5).text
        except httpx.HTTPError:
            text = ""
        pending = re.search(r"^hlsrelay_pending_operations (\S+)$", text, re.M)
        files = re.search(r"^hlsrelay_spool_files (\S+)$", text, re.M)
        if pending and files and float(pending[1]) == 0 and float(files[1]) == 0:
            return
        time.sleep(0.1)
    raise AssertionError(
        f"relay {relay_url} still busy after {timeout_s:g} s:\n{text[-2000:]}"
    )


def wait_for_bucket(
    client: S3Client,
    bucket: str,
    log: list[Sent],
    timeout_s: float = 90.0,
    prefix: str = "streams/",
) -> list[str]:
    """Poll until the bucket matches the log; return what is still wrong."""
    deadline = time.monotonic() + timeout_s
    while True:
        problems = mismatches(client, bucket, log, prefix)
        if not problems or time.monotonic() > deadline:
            return problems
        time.sleep(0.25)
