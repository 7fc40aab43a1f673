"""Every Prometheus metric of the relay, on a registry of its own per app.

Labels stay bounded: route templates, HTTP methods and statuses, the
application name and fixed reasons, never a stream or file name.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from app import __version__

_SIZE_BUCKETS = (1e3, 1e4, 1e5, 1e6, 5e6, 2e7, 1e8, 1e9)
_TIME_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

# A live HLS playlist is rewritten once per segment, and segments rarely run
# past 10 s (RFC 8216 section 6.2.1 suggests far less for live): a playlist
# silent for a minute belongs to a stream that stopped.
ACTIVE_WINDOW_S = 60.0

# Methods outside this set share one label value, so a client sending made-up
# methods cannot create series.
KNOWN_METHODS = frozenset({"GET", "HEAD", "PUT", "POST", "DELETE", "OPTIONS", "PATCH"})


def method_label(method: str) -> str:
    return method if method in KNOWN_METHODS else "other"


class ActiveStreams(Collector):
    """Playlists that received a new version within the window, per application.

    Each playlist key counts once, so a stream with three variants and a
    multivariant playlist counts as its variants while they are being updated.
    Memory is one entry per playlist seen within the window, up to ``capacity``.
    """

    def __init__(
        self,
        window_s: float = ACTIVE_WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
        capacity: int = 100_000,
    ) -> None:
        self.window_s = window_s
        self.clock = clock
        self.capacity = capacity
        self._seen: OrderedDict[str, tuple[str, float]] = OrderedDict()
        # Noted from the event loop, read by a scrape that may run elsewhere.
        self._lock = threading.Lock()

    def note(self, application: str, key: str) -> None:
        now = self.clock()
        with self._lock:
            self._seen[key] = (application, now)
            self._seen.move_to_end(key)
            self._prune(now)
            while len(self._seen) > self.capacity:
                self._seen.popitem(last=False)

    def counts(self) -> dict[str, int]:
        with self._lock:
            self._prune(self.clock())
            result: dict[str, int] = {}
            for application, _ in self._seen.values():
                result[application] = result.get(application, 0) + 1
            return result

    def _prune(self, now: float) -> None:
        # Entries are kept oldest first, so expiry stops at the first fresh one.
        while self._seen:
            _, (_, seen_at) = next(iter(self._seen.items()))
            if now - seen_at <= self.window_s:
                break
            self._seen.popitem(last=False)

    def _family(self) -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "hlsrelay_streams_active",
            f"Playlists that received a new version in the last {self.window_s:g} s.",
            labels=["application"],
        )

    def describe(self) -> Iterable[Metric]:
        return [self._family()]

    def collect(self) -> Iterable[Metric]:
        family = self._family()
        for application, count in sorted(self.counts().items()):
            family.add_metric([application], count)
        return [family]


class Metrics:
    def __init__(self, active_window_s: float = ACTIVE_WINDOW_S) -> None:
        # No `*_created` series beside every counter and histogram: a start
        # time per label set that no alert here reads (process-wide switch).
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)
        self.build_info = Gauge(
            "hlsrelay_build_info",
            "Always 1; the version label tells which release runs.",
            ["version"],
            registry=r,
        )
        self.build_info.labels(__version__).set(1)

        # -- HTTP, counted by the access middleware ----------------------
        self.requests = Counter(
            "hlsrelay_requests_total",
            "HTTP requests by route template, method and status.",
            ["route", "method", "status"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "hlsrelay_request_duration_seconds",
            "Time from a request's start to its last response byte.",
            ["route", "method"],
            buckets=_TIME_BUCKETS,
            registry=r,
        )
        self.unanswered_challenges = Counter(
            "hlsrelay_auth_challenges_unanswered_total",
            "401s without credentials that no retry with credentials (same "
            "client, same path) followed: an encoder that sends none. ffmpeg's "
            "own challenge before each file is answered, and not counted.",
            registry=r,
        )
        self.requests_in_flight = Gauge(
            "hlsrelay_requests_in_flight",
            "Requests being received or answered right now.",
            registry=r,
        )

        # -- intake and S3 -----------------------------------------------
        self.received_bytes = Counter(
            "hlsrelay_received_bytes_total",
            "Body bytes received and spooled.",
            ["application"],
            registry=r,
        )
        self.uploaded_bytes = Counter(
            "hlsrelay_uploaded_bytes_total",
            "Bytes written to S3.",
            ["application"],
            registry=r,
        )
        self.uploads = Counter(
            "hlsrelay_uploads_total",
            "Operations applied to S3, by kind (playlist, media, delete).",
            ["application", "kind"],
            registry=r,
        )
        self.upload_seconds = Histogram(
            "hlsrelay_upload_duration_seconds",
            "Time one S3 operation took, retries included.",
            ["kind"],
            buckets=_TIME_BUCKETS,
            registry=r,
        )
        self.barrier_wait_seconds = Histogram(
            "hlsrelay_playlist_barrier_wait_seconds",
            "Time a playlist version waited, once spooled, for the files it "
            "references before its upload could start.",
            buckets=_TIME_BUCKETS,
            registry=r,
        )
        self.body_bytes = Histogram(
            "hlsrelay_body_size_bytes",
            "Size of received bodies.",
            ["kind"],
            buckets=_SIZE_BUCKETS,
            registry=r,
        )
        self.retries = Counter(
            "hlsrelay_upload_retries_total",
            "S3 attempts that failed and will be retried, by reason (the S3 "
            "error code, Unreachable, or unexpected).",
            ["reason"],
            registry=r,
        )
        self.failures = Counter(
            "hlsrelay_upload_failures_total",
            "S3 attempts refused in a way retrying cannot fix (bad credentials, "
            "no bucket), by reason; the entry stays spooled and is tried again.",
            ["reason"],
            registry=r,
        )
        self.missing_refs = Counter(
            "hlsrelay_playlists_missing_refs_total",
            "Playlists written after their wait ran out with a reference missing.",
            ["application"],
            registry=r,
        )
        self.streamed_uploads = Counter(
            "hlsrelay_streamed_uploads_total",
            "Media uploads started while their body still arrived, by outcome: "
            "stored (S3 took the streamed body), resent (it failed, and the body "
            "went again from the spool), abandoned (the request failed first; "
            "nothing of it was stored).",
            ["outcome"],
            registry=r,
        )
        self.stream_uploads_enabled = Gauge(
            "hlsrelay_stream_uploads_enabled",
            "1 while bodies with a Content-Length go to S3 as they arrive; 0 when "
            "HLSRELAY_STREAM_UPLOADS is off or S3 refused a streamed body (until "
            "a restart).",
            registry=r,
        )
        self.superseded = Counter(
            "hlsrelay_superseded_total",
            "Operations dropped because a newer one on the same key arrived.",
            registry=r,
        )
        self.late_rewrites = Counter(
            "hlsrelay_late_rewrites_total",
            "Playlists and deletes spooled again once S3 had time to finish an "
            "earlier try on their key that timed out and may have landed after "
            "them.",
            registry=r,
        )

        # -- state -------------------------------------------------------
        self.spool_files = Gauge(
            "hlsrelay_spool_files", "Entries waiting in the spool.", registry=r
        )
        self.spool_bytes = Gauge(
            "hlsrelay_spool_bytes", "Bytes held in the spool.", registry=r
        )
        self.pending = Gauge(
            "hlsrelay_pending_operations",
            "Operations received and not yet applied to S3.",
            registry=r,
        )
        self.streams = ActiveStreams(active_window_s)
        r.register(self.streams)
