"""What a request must meet before the app works on it, checked in pure ASGI so
that no work is ever cancelled: a clean path (400 before routing), a body that
neither stalls nor drags on (408, nothing kept), and a bound on uploads open per
client (429) and in all (503), each with Retry-After.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import logs
from app.auth import client_address, parse_networks
from app.config import Settings
from app.errors import (
    InvalidPath,
    RelayError,
    RequestTimeout,
    ServerBusy,
    TooManyUploads,
)
from app.paths import check_request_path

log = logging.getLogger(__name__)

# Under a flood, one line per refusal would bury everything else.
REFUSAL_LOG_INTERVAL_S = 10.0


def _has_body(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"transfer-encoding" or (
            name == b"content-length" and value.strip() not in (b"", b"0")
        ):
            return True
    return False


def _is_upload(scope: Scope) -> bool:
    # PUT, and POST too: ffmpeg POSTs when -method is not given, and POSTs
    # WebVTT playlists even with it. A POST to ".../hls-upload" itself is a
    # media-server notice, not an upload.
    return scope["method"] in ("PUT", "POST") and "/hls-upload/" in scope["path"]


class RequestLimits:
    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.idle_s = settings.body_idle_timeout_s
        self.total_s = settings.body_timeout_s
        self.max_uploads = settings.max_uploads
        self.max_per_client = settings.max_uploads_per_client
        self.trusted_proxies = parse_networks(settings.trusted_proxies)
        self.open_uploads = 0
        self._per_client: Counter[str] = Counter()
        self._last_logged: dict[str, float] = {}
        self._unlogged: Counter[str] = Counter()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            check_request_path(scope["path"], scope.get("raw_path") or b"")
        except InvalidPath as exc:
            logs.note_refusal(exc.error, exc.detail)
            await _answer(exc, scope, receive, send)
            return
        if not _has_body(scope):
            await self.app(scope, receive, send)
            return
        body = _TimedBody(receive, self.idle_s, self.total_s)
        send = _closing_early(send, body)
        if not _is_upload(scope):
            await self.app(scope, body.receive, send)
            return

        client = client_address(scope, self.trusted_proxies)
        refusal = self._admit(client)
        if refusal is not None:
            self._log_refusal(refusal, client, scope)
            await _answer(refusal, scope, body.receive, send)
            return
        try:
            await self.app(scope, body.receive, send)
        finally:
            self._release(client)

    def _admit(self, client: str) -> RelayError | None:
        # One client over its share is told 429 (RFC 6585 4: that client asks
        # too much, others are still served); the relay as a whole being full
        # is 503 (RFC 9110 15.6.4), whoever asks. Both are short-lived, so
        # Retry-After is a second; a plain ffmpeg does not retry, which is why
        # the defaults sit far above what encoders open.
        if self._per_client[client] >= self.max_per_client:
            return TooManyUploads(
                f"client {client or 'unknown'} already has {self.max_per_client} "
                "uploads open (HLSRELAY_MAX_UPLOADS_PER_CLIENT)"
            )
        if self.open_uploads >= self.max_uploads:
            return ServerBusy(
                f"the relay already has {self.max_uploads} uploads open "
                "(HLSRELAY_MAX_UPLOADS)"
            )
        self._per_client[client] += 1
        self.open_uploads += 1
        return None

    def _release(self, client: str) -> None:
        self.open_uploads -= 1
        self._per_client[client] -= 1
        if self._per_client[client] <= 0:
            del self._per_client[client]

    def _log_refusal(self, refusal: RelayError, client: str, scope: Scope) -> None:
        now = time.monotonic()
        last = self._last_logged.get(refusal.error)
        if last is not None and now - last < REFUSAL_LOG_INTERVAL_S:
            self._unlogged[refusal.error] += 1
            return
        self._last_logged[refusal.error] = now
        log.warning(
            "refused upload client=%s path=%r status=%d error=%s "
            "similar_refusals_not_logged=%d: %s",
            client or "unknown",
            scope.get("raw_path", b"").decode("latin-1")[:200],
            refusal.status,
            refusal.error,
            self._unlogged.pop(refusal.error, 0),
            refusal.detail,
        )


class _TimedBody:
    """Wraps ``receive`` so that waiting for the body is bounded in time."""

    def __init__(self, receive: Receive, idle_s: float, total_s: float) -> None:
        self._receive = receive
        self._idle_s = idle_s
        self._total_s = total_s
        self._deadline = time.monotonic() + total_s
        self.done = False

    async def receive(self) -> Message:
        if self.done:
            # After the body only a disconnect can come: not ours to time.
            return await self._receive()
        remaining = self._deadline - time.monotonic()
        wait = min(self._idle_s, remaining)
        try:
            # asyncio's own timeout: this runs for every piece of every body,
            # and costs a third of anyio's fail_after.
            async with asyncio.timeout(max(wait, 0.0)):
                message = await self._receive()
        except TimeoutError:
            if wait < self._idle_s:
                detail = f"the body took longer than {self._total_s:g} s"
            else:
                detail = f"no body data arrived for {self._idle_s:g} s"
            raise RequestTimeout(detail + "; nothing of it was kept") from None
        if message["type"] != "http.request" or not message.get("more_body", False):
            self.done = True
        return message


def _closing_early(send: Send, body: _TimedBody) -> Send:
    """Adds ``Connection: close`` to an answer sent before the body ended.

    Otherwise uvicorn keeps the connection and reads the rest of the body to
    throw it away, for as long as the client cares to send it; no limit here
    applies once the answer is out.
    """

    async def send_closing(message: Message) -> None:
        if message["type"] == "http.response.start" and not body.done:
            headers = [
                (name, value)
                for name, value in message.get("headers", [])
                if name.lower() != b"connection"
            ]
            headers.append((b"connection", b"close"))
            message = {**message, "headers": headers}
        await send(message)

    return send_closing


async def _answer(
    refusal: RelayError, scope: Scope, receive: Receive, send: Send
) -> None:
    headers: dict[str, str] = {}
    retry_after = getattr(refusal, "retry_after", None)
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    response = JSONResponse(
        {"error": refusal.error, "detail": refusal.detail},
        status_code=refusal.status,
        headers=headers,
    )
    await response(scope, receive, send)
