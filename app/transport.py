"""Glue between uvicorn and the app: bodies that arrived whole stay whole.

ffmpeg sends the last chunk of a PUT and closes the socket without reading the
answer. uvicorn (0.30 to at least 0.55) then answers ``receive()`` with
``http.disconnect`` even when the rest of the body already sits in its buffer,
so the app would throw away a complete upload. This middleware hands that
buffered remainder to the app as the final ``http.request`` message instead.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, cast

from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger(__name__)


class CompleteBodyMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body_done = False

        async def receive_whole() -> Message:
            nonlocal body_done
            message = await receive()
            if message["type"] == "http.request":
                body_done = not message.get("more_body", False)
            elif message["type"] == "http.disconnect" and not body_done:
                rest = _buffered_final_body(receive)
                if rest is not None:
                    body_done = True
                    return {"type": "http.request", "body": rest, "more_body": False}
            return message

        await self.app(scope, receive_whole, send)


def _buffered_final_body(receive: Receive) -> bytes | None:
    """The body uvicorn parsed to its end but did not hand over, if any.

    uvicorn's ``receive`` is a bound method of its request cycle, which keeps
    the unread bytes in ``body`` and sets ``more_body`` False once the parser
    saw the end of the message. Anything else (another server, a body cut
    short) gives None, and the disconnect stands.
    """
    cycle: Any = getattr(receive, "__self__", None)
    if cycle is None or getattr(cycle, "more_body", True) is not False:
        return None
    body = getattr(cycle, "body", None)
    if not isinstance(body, (bytes, bytearray)):
        return None
    cycle.body = type(body)()
    return bytes(body)


class RelayHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, finishing what a departed client sent whole.

    ffmpeg with ``-http_persistent 1`` pipelines: it sends a segment, then the
    playlist on the same connection without waiting for the first answer, then
    closes. uvicorn starts a pipelined request only after a response completes
    on an open transport, so the playlist would be dropped without a trace,
    and the segment's answer would be written to a closed transport. Here the
    running and pipelined requests of a closed connection are marked
    disconnected (their answers go nowhere) and still run in order; the
    complete-body middleware hands each its body if it arrived whole. But once
    an answer says ``Connection: close`` (the relay's refusal, uvicorn's own),
    the requests pipelined after it are dropped unrun, whether or not the
    client was still there to read it (RFC 9112 9.6).

    NOTE: a pipelined body larger than uvicorn's read buffer is still in the
    kernel when the first answer goes out; a client that has closed answers
    that with a reset, which discards it. Such a body never arrived whole and
    is not stored, and a playlist naming it waits only the bounded time.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._running: set[Any] = set()
        # Set by the first answer that ends the connection.
        self._answered_close = False

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        async def run_then_continue(scope: Scope, receive: Receive, send: Send) -> None:
            async def send_unless_closed(message: Message) -> None:
                if message["type"] == "http.response.start" and (
                    not cycle.keep_alive or _says_close(message)
                ):
                    self._answered_close = True
                if self.transport.is_closing():
                    cycle.disconnected = True
                    return
                await send(message)

            try:
                await app(scope, receive, send_unless_closed)
            except asyncio.CancelledError:
                # uvicorn cancels the requests still open when the graceful
                # shutdown's time is up, then logs each as a traceback. The
                # uploader has already undone what such a request began, the
                # access line says so, and the closed connection answers for it.
                cycle.disconnected = True
            except Exception:
                # uvicorn answers a 500 with Connection: close, or cuts its answer.
                self._answered_close = True
                raise
            finally:
                self._running.discard(cycle)
                self._continue_after_close()

        self._running.add(cycle)
        super()._start_asgi_task(cycle, cast(Any, run_then_continue))

    def _continue_after_close(self) -> None:
        if self._running or not self.pipeline or not self.transport.is_closing():
            return
        if self._answered_close:
            # Not run: the client was told the connection ends before them.
            log.info(
                "dropped requests pipelined after an answer that closed the "
                "connection count=%d client=%s",
                len(self.pipeline),
                self.client[0] if self.client else "-",
            )
            self.pipeline.clear()
            return
        cycle, app = self.pipeline.pop()
        cycle.disconnected = True
        cycle.message_event.set()
        self._start_asgi_task(cycle, app)

    def connection_lost(self, exc: Exception | None) -> None:
        for cycle in self._running:
            if not cycle.response_complete:
                cycle.disconnected = True
                cycle.message_event.set()
        super().connection_lost(exc)


def _says_close(start: Message) -> bool:
    """Whether a response head carries the ``close`` connection option."""
    for name, value in start.get("headers", ()):
        if name.lower() == b"connection":
            options = [option.strip() for option in value.lower().split(b",")]
            if b"close" in options:
                return True
    return False
