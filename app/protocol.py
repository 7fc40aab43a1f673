"""uvicorn's httptools protocol with the two limits it lacks: request heads.

uvicorn (to at least 0.55) puts no bound on the size of a request line and
headers, nor on the time a client may take to send them, so one slow or
endless head holds a connection and its memory for as long as the client
likes. Here a head longer than ``HLSRELAY_MAX_HEADER_BYTES`` gets 431, and
one not finished within ``HLSRELAY_HEADER_TIMEOUT_S`` gets 408. Bytes that
are not HTTP/1.1 (broken framing, two lengths, a TLS hello on the plain
port) get the relay's JSON 400 with the parser's reason, where uvicorn
answers plain text and logs no client.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import httptools

from app.access import PROTOCOL_ANSWER, UNMATCHED_ROUTE
from app.config import Settings
from app.metrics import Metrics, method_label
from app.transport import RelayHttpProtocol

log = logging.getLogger(__name__)

_REASONS = {
    400: "Bad Request",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
}


class LimitedHttpProtocol(RelayHttpProtocol):
    """One instance per connection; the limits are class attributes set by
    ``protocol_for``, since uvicorn builds protocols from the class alone."""

    max_head_bytes = 16 * 1024
    head_timeout_s = 10.0
    # These refusals never reach the app, so its access middleware cannot
    # count them; they are counted here, under the route of no route.
    metrics: Metrics | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True
        self._head_bytes = 0
        self._message_ended = False
        self._refused = False
        self._head_timer: asyncio.TimerHandle | None = None
        # The size of a head parsed within one read, which the count in
        # data_received cannot see, rebuilt from its parts.
        self._parsed_head_bytes = 0
        # Whether this head got as far as its URL, so its method is known.
        self._url_seen = False
        # Whether a byte of the head being waited for has come.
        self._head_begun = False
        # For the log only: the request target as the bytes gave it, when
        # the parser refused it before handing it over (a NUL in the path).
        self._raw_target = ""
        # The detail of a 400 that waits for the answers of the requests
        # before it.
        self._deferred: str | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # A connection that sends nothing at all is as idle as a slow head.
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # answered and closing: the rest is not parsed
        if self._in_head and self._head_timer is None:
            self._arm_head_timer()
        self._message_ended = False
        self._feed(data)
        if self._refused:
            return
        # httptools buffers a header until it is whole, so the size is counted
        # here, on what arrives, not in on_header. A read in which a message
        # ended is not counted: part of it was the previous body.
        if self._in_head and not self._message_ended:
            self._head_bytes += len(data)
            if self._head_bytes > self.max_head_bytes:
                self._refuse_head_size()

    def eof_received(self) -> None:
        # The client sends no more: a close, or a half-close that still
        # reads. Part of a head is a request that never came; say so.
        begun = self._head_bytes or self._head_begun
        if self._in_head and begun and not self._refused:
            detail = "the connection ended within the request head; nothing was kept"
            self._log_refused(detail)
            self._refuse(400, "invalid_request", detail)

    def _feed(self, data: bytes) -> None:
        # uvicorn's own data_received (0.55), but for what its parser refuses.
        self._unset_keepalive_if_required()
        while True:
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserError as exc:
                if self._in_head and not (self._head_bytes or self._message_ended):
                    # This read began the head: its first line, for the log.
                    self._raw_target = _request_target(data)
                self._refuse_malformed(str(exc) or "unparsable bytes")
            except httptools.HttpParserUpgrade as upgrade:
                if self._refused:
                    return
                if self._should_upgrade():
                    self.handle_websocket_upgrade()
                    return
                # Any other upgrade (curl --http2 asks for h2c) was refused
                # by on_headers_complete, or its request is served as
                # HTTP/1.1: what follows its head is the next request.
                offset = upgrade.args[0] if upgrade.args else len(data)
                if 0 < offset < len(data):
                    data = data[offset:]
                    continue
            return

    def _refuse_malformed(self, reason: str) -> None:
        detail = f"the request is not valid HTTP/1.1 ({reason}); nothing of it was kept"
        if "PRI/Upgrade" in reason:
            # llhttp's words for "PRI * HTTP/2.0", the HTTP/2 preface that
            # `curl --http2-prior-knowledge` opens with.
            detail = (
                "an HTTP/2 connection preface: the relay speaks HTTP/1.1 only "
                "(curl: --http1.1 instead of --http2-prior-knowledge); nothing "
                "of it was kept"
            )
        if (
            not self._in_head
            and self.cycle is not None
            and not self.cycle.response_complete
        ):
            # A body was arriving: its request ends as cut short, and its
            # own access line tells the encoder's path, counts it, and says
            # what was answered here.
            self.cycle.disconnected = True
            self.cycle.message_event.set()
            sent = self._refuse(400, "invalid_request", detail, counted=False)
            state = self.cycle.scope.setdefault("state", {})
            state[PROTOCOL_ANSWER] = (400, "invalid_request", detail, sent)
            return
        self._log_refused(detail)
        self._refuse_in_order(detail)

    def _log_refused(self, detail: str, status: int = 400) -> None:
        """The one line of a refusal answered here, with the path as far as it came."""
        target = self.url.decode("latin-1") if self._url_seen else self._raw_target
        log.info(
            "refused request client=%s path=%r status=%d: %s",
            _client(self.client),
            # The query stays out, as on access lines: it may carry a token.
            target.partition("?")[0][:200],
            status,
            detail,
        )

    def _refuse_in_order(self, detail: str) -> None:
        """A 400 for these bytes, after the answers to the requests before them."""
        if self._answer_pending():
            # Pipelined behind requests not yet answered: by HTTP/1.1's order
            # the first answer on the wire is theirs, so this one waits.
            self._refused = True
            self._cancel_head_timer()
            self._deferred = detail
            return
        self._refuse(400, "invalid_request", detail)

    def _answer_pending(self) -> bool:
        running = self.cycle is not None and not self.cycle.response_complete
        return running or bool(self.pipeline)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._deferred is not None and not self._answer_pending():
            detail, self._deferred = self._deferred, None
            self._refuse(400, "invalid_request", detail)

    def on_message_begin(self) -> None:
        self._parsed_head_bytes = 0
        self._url_seen = False
        self._head_begun = True
        # A head that began in the read that ended the request before it
        # is timed from here: data_received armed no timer for it.
        if self._head_timer is None:
            self._arm_head_timer()
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        self._url_seen = True
        self._parsed_head_bytes += len(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        # "name: value" and CRLF, as a plain client writes it.
        self._parsed_head_bytes += len(name) + len(value) + 4
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        if self._refused:
            return
        self._cancel_head_timer()
        self._in_head = False
        self._head_bytes = 0
        # The rest of "PUT /url HTTP/1.1" CRLF (the url is counted already)
        # and the blank line that ends the head.
        method = self.parser.get_method()
        self._parsed_head_bytes += len(method) + len(b"  HTTP/1.1\r\n\r\n")
        if self._parsed_head_bytes > self.max_head_bytes:
            # The whole head came in one read: too large all the same.
            self._refuse_head_size()
            return
        # A server may ignore Upgrade (RFC 9110 7.8), and a request without a
        # body is served as HTTP/1.1. But the parser takes what follows the
        # head for the new protocol's, so a body would reach the route empty:
        # refused instead of read as nothing. (The parser says "upgrade" of
        # every CONNECT too; that one is the routes' 405.)
        upgrade = (
            self.parser.should_upgrade()
            and self._get_upgrade() is not None
            and not self._should_upgrade()
        )
        if upgrade and self._declares_body():
            self._refuse_upgrade()
            return
        super().on_headers_complete()

    def _declares_body(self) -> bool:
        for name, value in self.headers:
            if name == b"transfer-encoding":
                return True
            if name == b"content-length":
                try:
                    return int(value) > 0
                except ValueError:
                    return True  # the parser refuses it anyway
        return False

    def _refuse_upgrade(self) -> None:
        wanted = (self._get_upgrade() or b"").decode("latin-1")[:40]
        hint = " (curl: --http1.1 instead of --http2)" if wanted == "h2c" else ""
        detail = (
            f"the request asks to switch to {wanted!r} (Upgrade header) and "
            "has a body; the relay speaks HTTP/1.1 only: send it without "
            f"Upgrade{hint}; nothing was stored"
        )
        self._log_refused(detail)
        self._refuse_in_order(detail)

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        self._message_ended = True
        self._in_head = True
        self._head_bytes = 0
        self._head_begun = False
        if not self._refused:
            super().on_message_complete()

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        self._head_timer = self.loop.call_later(
            self.head_timeout_s, self._head_timed_out
        )

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self._in_head or self._refused or self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            # A pipelined head waits while the previous request is answered.
            self._arm_head_timer()
            return
        detail = (
            f"the request line and headers did not arrive within "
            f"{self.head_timeout_s:g} s"
        )
        if self._head_begun or self._head_bytes:
            self._log_refused(detail, 408)
        else:
            log.info(
                "closed idle connection client=%s status=408: no request within %gs",
                _client(self.client),
                self.head_timeout_s,
            )
        self._refuse(408, "request_timeout", detail)

    def _refuse_head_size(self) -> None:
        detail = (
            f"the request line and headers pass {self.max_head_bytes} bytes "
            "(HLSRELAY_MAX_HEADER_BYTES)"
        )
        self._log_refused(detail, 431)
        self._refuse(431, "headers_too_large", detail)

    def _refuse(
        self, status: int, error: str, detail: str, *, counted: bool = True
    ) -> int:
        """Answer ``status`` and close; the body's length, 0 if it went nowhere."""
        self._refused = True
        self._cancel_head_timer()
        if counted and self.metrics is not None:
            self.metrics.requests.labels(
                UNMATCHED_ROUTE, self._method(), str(status)
            ).inc()
        # Compact, as the routes' JSON answers are.
        body = json.dumps(
            {"error": error, "detail": detail}, separators=(",", ":")
        ).encode()
        head = (
            f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
            "content-type: application/json\r\n"
            f"content-length: {len(body)}\r\n"
            "connection: close\r\n\r\n"
        ).encode("ascii")
        sent = 0
        if not self.transport.is_closing():  # a deferred one may find it gone
            self.transport.write(head + body)
            sent = len(body)
        self.transport.close()
        return sent

    def _method(self) -> str:
        if not self._url_seen:
            return method_label("")  # nothing, or not even a request line
        return method_label(self.parser.get_method().decode("ascii", "replace"))


def _request_target(data: bytes) -> str:
    """The second word of the first line of a request's bytes."""
    parts = data[:1024].split(b"\n", 1)[0].split(b" ")
    return parts[1][:400].decode("latin-1") if len(parts) >= 3 else ""


def _client(client: tuple[str, int] | None) -> str:
    return client[0] if client else "unknown"


def protocol_for(
    settings: Settings, metrics: Metrics | None = None
) -> type[LimitedHttpProtocol]:
    """The protocol class for uvicorn.Config(http=...), with these limits."""

    class ConfiguredHttpProtocol(LimitedHttpProtocol):
        max_head_bytes = settings.max_header_bytes
        head_timeout_s = settings.header_timeout_s

    ConfiguredHttpProtocol.metrics = metrics

    return ConfiguredHttpProtocol
