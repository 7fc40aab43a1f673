"""A scripted S3 provider inside botocore: each request, as signed and about to
go on the wire, is recorded and answered by a test's function instead of a
server. For unit tests of what the relay sends and how it reads refusals."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from botocore.awsrequest import AWSPreparedRequest, AWSResponse

from app.config import Settings
from app.metrics import Metrics
from app.paths import parse_upload
from app.spool import Spool
from app.storage import S3Storage, build_client
from app.uploader import Uploader


@dataclass(frozen=True)
class Sent:
    method: str
    url: str
    headers: dict[str, str]  # names in lower case
    body: bytes

    @property
    def host(self) -> str:
        return urlsplit(self.url).netloc

    @property
    def path(self) -> str:
        return urlsplit(self.url).path

    @property
    def query(self) -> str:
        return urlsplit(self.url).query


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


def error(status: int, code: str, message: str = "") -> Reply:
    body = (
        f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
        f"<Message>{message or code}</Message></Error>"
    ).encode()
    return Reply(status, body, {"Content-Type": "application/xml"})


class _Raw(io.BytesIO):
    def stream(self, amt: int = 1024, decode_content: bool = False) -> Iterator[bytes]:
        while chunk := self.read(amt):
            yield chunk


def _body_of(request: AWSPreparedRequest) -> bytes:
    body: Any = request.body
    if body is None:
        return b""
    if isinstance(body, (bytes, bytearray)):
        return bytes(body)
    if isinstance(body, str):
        return body.encode()
    data = body.read()
    if hasattr(body, "seek"):
        body.seek(0)  # botocore rewinds for a retry; leave it as found
    return bytes(data)


def ok(sent: Sent) -> Reply:
    """Answers as a provider that takes everything."""
    return Reply(200, b"", {"ETag": '"0"'})


class ScriptedS3:
    """Records what a client sends; ``answer`` decides each reply."""

    def __init__(self, client: Any, answer: Callable[[Sent], Reply] = ok) -> None:
        self.sent: list[Sent] = []
        self.answer = answer
        client.meta.events.register("before-send.s3", self._send)

    def _send(self, request: AWSPreparedRequest, **_: Any) -> AWSResponse:
        headers = {
            name.lower(): _text(value) for name, value in request.headers.items()
        }
        sent = Sent(request.method or "", request.url or "", headers, _body_of(request))
        self.sent.append(sent)
        reply = self.answer(sent)
        answered: Any = reply.headers
        return AWSResponse(sent.url, reply.status, answered, _Raw(reply.body))

    def only(self, method: str) -> Sent:
        """The one request of ``method`` sent so far."""
        found = [s for s in self.sent if s.method == method]
        assert len(found) == 1, [(s.method, s.url) for s in self.sent]
        return found[0]


def scripted_uploader(
    settings: Settings, answer: Callable[[Sent], Reply] = ok
) -> tuple[Uploader, ScriptedS3]:
    """An uploader whose S3 is a ScriptedS3, with the spool ``settings`` name."""
    client = build_client(settings)
    script = ScriptedS3(client, answer)
    storage = S3Storage(settings, client=client)
    spool = Spool(settings.spool_dir, settings.spool_max_bytes)
    return Uploader(settings, spool, storage, Metrics()), script


def live_settings(spool_dir: Any, **overrides: Any) -> Settings:
    """Settings for a scripted uploader: a bucket on an address nothing
    answers, and a reference wait long enough to fail a test it holds up."""
    values: dict[str, Any] = {
        "spool_dir": spool_dir,
        "s3_bucket": "live-bucket",
        "s3_endpoint": "http://127.0.0.1:9",
        "s3_access_key": "k",
        "s3_secret_key": "s",
        "segment_wait_s": 60,
    }
    return Settings(**{**values, **overrides})


async def receive(uploader: Uploader, path: str, data: bytes) -> None:
    """``data`` PUT to ``path`` of the LiveApp application, as a request would."""

    async def body() -> AsyncIterator[bytes]:
        yield data

    raw = f"/LiveApp/hls-upload/{path}".encode()
    upload = parse_upload("LiveApp", path, raw, ["ts", "m3u8"])
    await uploader.receive_put(upload, body(), 8 << 20)


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value
