"""A fault-injecting HTTP proxy on 127.0.0.1 in front of one S3 endpoint.

Requests pass through unchanged (the Host header too, so SigV4 signatures still
match) unless a rule says to answer with an S3 error instead: the first tries
of every PutObject of a key, or everything under a key prefix for a while. Or
to hold a PutObject a while before passing it on, as a stalling provider
applies a try long after its sender stopped waiting. Or to answer with the
times of a provider whose clock is off.

Run alone: python tests/faultproxy.py --upstream http://127.0.0.1:8333 --port P
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import http.client
import re
import threading
import time
import urllib.parse
from collections import Counter
from dataclasses import dataclass
from email.utils import format_datetime, parsedate_to_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from httpbody import read_body

_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "expect",
}


# What late_landed records for a held DeleteObjects, which names no key.
BULK_DELETE = "?delete"


@dataclass(frozen=True)
class Injected:
    method: str
    key: str
    status: int
    code: str


def _s3_error(status: int, code: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f"<Error><Code>{code}</Code><Message>injected by faultproxy</Message>"
        "<Resource>/</Resource><RequestId>faultproxy</RequestId></Error>"
    ).encode()


class FaultProxy:
    """Forwards to ``upstream`` (path-style S3) and fails what the rules say."""

    def __init__(self, upstream: str, port: int = 0) -> None:
        parts = urllib.parse.urlsplit(upstream)
        self.upstream_host = parts.hostname or "127.0.0.1"
        self.upstream_port = parts.port or 80
        self._lock = threading.Lock()
        self._put_tries: Counter[str] = Counter()
        self._fail_first_puts = 0
        self._first_puts_status = (503, "ServiceUnavailable")
        self._failing_prefixes: dict[str, tuple[int, str]] = {}
        self._unsigned_refusal: tuple[int, str] | None = None
        self._holds: dict[str, float] = {}
        self._clock_shift = datetime.timedelta(0)
        self.holding: list[str] = []  # held tries, from when they came
        self.late_landed: list[str] = []  # and once passed on
        self.injected: list[Injected] = []
        self.forwarded = 0
        self._server = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- rules -------------------------------------------------------------

    def fail_first_puts(
        self, tries: int, status: int = 503, code: str = "ServiceUnavailable"
    ) -> None:
        """Fail the first ``tries`` PutObject requests of every key."""
        with self._lock:
            self._fail_first_puts = tries
            self._first_puts_status = (status, code)

    def fail_prefix(
        self, prefix: str, status: int = 500, code: str = "InternalError"
    ) -> None:
        """Fail every request on a key under ``prefix`` until ``clear_prefix``."""
        with self._lock:
            self._failing_prefixes[prefix] = (status, code)

    def refuse_unsigned(self, status: int = 400, code: str = "InvalidRequest") -> None:
        """Refuse every request sent with UNSIGNED-PAYLOAD, as some providers do."""
        with self._lock:
            self._unsigned_refusal = (status, code)

    def hold_first_put(self, key: str, hold_s: float) -> None:
        """Pass the next PutObject of ``key`` on to S3 only ``hold_s`` after
        it came; its answer goes nowhere if the sender gave up meanwhile."""
        with self._lock:
            self._holds[key] = hold_s

    def hold_next_bulk_delete(self, hold_s: float) -> None:
        """The same for the next DeleteObjects, whatever keys it names."""
        with self._lock:
            self._holds[BULK_DELETE] = hold_s

    def _hold_for(self, method: str, key: str, query: str) -> float:
        if method == "POST" and not key and "delete" in query:
            key = BULK_DELETE
        elif method != "PUT" or "partNumber" in query:
            return 0.0
        with self._lock:
            return self._holds.pop(key, 0.0)

    def shift_clock(self, seconds: int) -> None:
        """Answer as a provider whose clock is ``seconds`` off: Date and
        Last-Modified headers and the LastModified of listings are moved."""
        with self._lock:
            self._clock_shift = datetime.timedelta(seconds=seconds)

    def _shifted(
        self, headers: dict[str, str], body: bytes
    ) -> tuple[dict[str, str], bytes]:
        with self._lock:
            shift = self._clock_shift
        if not shift:
            return headers, body
        for name, value in headers.items():
            if name.lower() in ("date", "last-modified"):
                at = parsedate_to_datetime(value) + shift
                headers[name] = format_datetime(at, usegmt=True)

        def listed(match: re.Match[bytes]) -> bytes:
            at = datetime.datetime.fromisoformat(match.group(1).decode()) + shift
            stamp = at.isoformat(timespec="milliseconds").replace("+00:00", "Z")
            return b"<LastModified>" + stamp.encode() + b"</LastModified>"

        return headers, re.sub(rb"<LastModified>([^<]+)</LastModified>", listed, body)

    def clear_prefix(self, prefix: str) -> None:
        with self._lock:
            self._failing_prefixes.pop(prefix, None)

    def injected_for(self, prefix: str = "") -> list[Injected]:
        with self._lock:
            return [fault for fault in self.injected if fault.key.startswith(prefix)]

    def _verdict(
        self, method: str, key: str, query: str, unsigned: bool = False
    ) -> tuple[int, str] | None:
        with self._lock:
            if unsigned and self._unsigned_refusal is not None:
                return self._unsigned_refusal
            for prefix, answer in self._failing_prefixes.items():
                if key.startswith(prefix):
                    return answer
            is_put_object = method == "PUT" and key and "partNumber" not in query
            if is_put_object and self._fail_first_puts:
                self._put_tries[key] += 1
                if self._put_tries[key] <= self._fail_first_puts:
                    return self._first_puts_status
        return None

    def _note(self, fault: Injected) -> None:
        with self._lock:
            self.injected.append(fault)

    # -- serving -----------------------------------------------------------

    def start(self) -> FaultProxy:
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="faultproxy", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                """Quiet: tests read what was recorded, not a log."""

            def date_time_string(self, timestamp: float | None = None) -> str:
                # The Date header the proxy adds beside the provider's own.
                with proxy._lock:
                    shift = proxy._clock_shift.total_seconds()
                when = time.time() if timestamp is None else timestamp
                return super().date_time_string(when + shift)

            def _body(self) -> bytes:
                return read_body(self.headers, self.rfile)

            def _handle(self) -> None:
                body = self._body()
                split = urllib.parse.urlsplit(self.path)
                # Path style: /{bucket}/{key}; a bucket-level call has no key.
                _, _, key = urllib.parse.unquote(split.path).lstrip("/").partition("/")
                unsigned = (
                    self.headers.get("x-amz-content-sha256") == "UNSIGNED-PAYLOAD"
                )
                verdict = proxy._verdict(self.command, key, split.query, unsigned)
                if verdict is not None:
                    status, code = verdict
                    proxy._note(Injected(self.command, key, status, code))
                    self._answer(
                        status,
                        {"Content-Type": "application/xml"},
                        body=_s3_error(status, code),
                    )
                    return
                hold_s = proxy._hold_for(self.command, key, split.query)
                if not hold_s:
                    self._forward(body)
                    return
                held = key or BULK_DELETE
                with proxy._lock:
                    proxy.holding.append(held)
                time.sleep(hold_s)
                with contextlib.suppress(OSError):  # the sender has gone
                    self._forward(body)
                with proxy._lock:
                    proxy.late_landed.append(held)

            def _forward(self, body: bytes) -> None:
                headers = {
                    name: value
                    for name, value in self.headers.items()
                    if name.lower() not in _HOP_BY_HOP
                }
                if body or self.command in ("PUT", "POST"):
                    headers["Content-Length"] = str(len(body))
                upstream = http.client.HTTPConnection(
                    proxy.upstream_host, proxy.upstream_port, timeout=120
                )
                try:
                    upstream.request(
                        self.command, self.path, body=body, headers=headers
                    )
                    response = upstream.getresponse()
                    data = response.read()
                    answer = {
                        name: value
                        for name, value in response.getheaders()
                        if name.lower() not in _HOP_BY_HOP
                    }
                finally:
                    upstream.close()
                with proxy._lock:
                    proxy.forwarded += 1
                answer, data = proxy._shifted(answer, data)
                self._answer(response.status, answer, body=data)

            def _answer(
                self, status: int, headers: dict[str, str], body: bytes
            ) -> None:
                self.send_response(status)
                for name, value in headers.items():
                    if name.lower() != "content-length":
                        self.send_header(name, value)
                if self.command == "HEAD":
                    length = headers.get("Content-Length") or headers.get(
                        "content-length", "0"
                    )
                    self.send_header("Content-Length", length)
                    self.end_headers()
                    return
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--fail-first-puts", type=int, default=0)
    options = parser.parse_args()
    proxy = FaultProxy(options.upstream, options.port)
    proxy.fail_first_puts(options.fail_first_puts)
    print(f"faultproxy on {proxy.url} -> {options.upstream}", flush=True)
    proxy._server.serve_forever()


if __name__ == "__main__":
    main()
