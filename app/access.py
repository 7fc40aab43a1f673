"""Per-request bookkeeping: request id, the access log line and HTTP metrics.

A pure ASGI middleware: it only watches the messages going by, so it never
cancels or delays the work of a request (Starlette's BaseHTTPMiddleware runs
the app in a task it may cancel when the client goes away, which would lose
bodies that arrived whole).
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Sequence

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import logs
from app.auth import Network, client_address, sent_path
from app.metrics import Metrics, method_label
from app.paths import is_valid_app

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = b"x-request-id"
# An id from a proxy in front (nginx's $request_id, say) is kept when it is
# short and plain, so one id follows the request through both logs.
_CLIENT_ID = re.compile(rb"[A-Za-z0-9._-]{1,64}")
# Probes hit these every few seconds; their successes go to debug.
_PROBE_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
# nginx's code for a request that ended before any answer was sent.
CANCELLED_STATUS = 499
UNMATCHED_ROUTE = "unmatched"
# Set in a request's scope["state"] by the HTTP protocol when it answered
# the request itself (bytes that are not HTTP/1.1 in mid-body): (status,
# error, detail, bytes sent). The route's own answer never reached the wire.
PROTOCOL_ANSWER = "hlsrelay.protocol_answer"


def route_template(scope: Scope) -> str:
    """The matched route's path template, a bounded label for metrics."""
    route = scope.get("route")
    endpoint = scope.get("endpoint")
    if route is None and endpoint is not None:
        # Starlette's plain routes (FastAPI's /docs and /openapi.json) name
        # only their endpoint in the scope, not themselves.
        routes = getattr(scope.get("app"), "routes", ())
        route = next(
            (r for r in routes if getattr(r, "endpoint", None) is endpoint), None
        )
    template = getattr(route, "path_format", None) or getattr(route, "path", None)
    return template if isinstance(template, str) else UNMATCHED_ROUTE


def application_of(path: str) -> str | None:
    """The application of ``/{application}/...`` paths, if the name is valid."""
    parts = path.split("/", 3)
    if len(parts) >= 3 and parts[2] and is_valid_app(parts[1]):
        return parts[1]
    return None


def _request_id(scope: Scope) -> str:
    for name, value in scope.get("headers", ()):
        if name == REQUEST_ID_HEADER and _CLIENT_ID.fullmatch(value):
            return str(value.decode("ascii"))
    return uuid.uuid4().hex


class AccessMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        metrics: Metrics,
        trusted_proxies: Sequence[Network] = (),
    ) -> None:
        self.app = app
        self.metrics = metrics
        # Behind a trusted reverse proxy the log names the encoder, not nginx.
        self.trusted_proxies = list(trusted_proxies)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = _request_id(scope)
        rid_token = logs.request_id.set(rid)
        app_token = logs.application.set(application_of(scope["path"]))
        refusal = logs.Refusal()
        refusal_token = logs.refusal.set(refusal)
        started = time.perf_counter()
        status = 0
        received = 0
        sent = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
            return message

        async def tagging_send(message: Message) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [
                    *message.get("headers", ()),
                    (REQUEST_ID_HEADER, rid.encode()),
                ]
                message = {**message, "headers": headers}
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        self.metrics.requests_in_flight.inc()
        try:
            await self.app(scope, counting_receive, tagging_send)
        except Exception:
            status = status or 500
            raise
        except BaseException:
            status = status or CANCELLED_STATUS
            if not refusal.error:
                refusal.error, refusal.level = "cancelled", logging.WARNING
                refusal.detail = (
                    "the request was cancelled before its answer (a shutdown past "
                    "its grace, or a middleware)"
                )
            raise
        finally:
            self.metrics.requests_in_flight.dec()
            self._record(
                scope, status, time.perf_counter() - started, received, sent, refusal
            )
            logs.refusal.reset(refusal_token)
            logs.application.reset(app_token)
            logs.request_id.reset(rid_token)

    def _record(
        self,
        scope: Scope,
        status: int,
        duration: float,
        received: int,
        sent: int,
        refusal: logs.Refusal,
    ) -> None:
        answered = scope.get("state", {}).get(PROTOCOL_ANSWER)
        if answered is not None:
            status, refusal.error, refusal.detail, sent = answered
        route = route_template(scope)
        method = method_label(scope["method"])
        self.metrics.requests.labels(route, method, str(status)).inc()
        self.metrics.request_seconds.labels(route, method).observe(duration)

        path = scope["path"]
        if status >= 500:
            level = logging.WARNING
        elif path in _PROBE_PATHS and status < 400:
            level = logging.DEBUG
        else:
            level = logging.INFO
        # A refusal says why at the end of the line, after its error name.
        why = ""
        if refusal.error:
            # A refusal may lower its line (a routine challenge) or raise it.
            level = (
                refusal.level
                if refusal.level < logging.INFO
                else max(level, refusal.level)
            )
            why = f" error={refusal.error}: {refusal.detail}"
        log.log(
            level,
            "request method=%s path=%r route=%s status=%d duration=%.4f "
            "bytes_in=%d bytes_out=%d client=%s%s",
            scope["method"][:16],
            sent_path(scope)[:300],
            route,
            status,
            duration,
            received,
            sent,
            client_address(scope, self.trusted_proxies) or "-",
            why,
        )
