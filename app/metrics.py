"""Every Prometheus metric of the relay, on a registry of its own per app.

Labels stay bounded: the application name and fixed reasons, never a stream
or file name.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_SIZE_BUCKETS = (1e3, 1e4, 1e5, 1e6, 5e6, 2e7, 1e8, 1e9)
_TIME_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "hlsrelay_requests_total",
            "HTTP requests by route, method and status.",
            ["route", "method", "status"],
            registry=r,
        )
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
            "hlsrelay_playlist_wait_seconds",
            "Time from a playlist being received to it being written to S3.",
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
            "S3 operations retried, by reason (the S3 error code).",
            ["reason"],
            registry=r,
        )
        self.failures = Counter(
            "hlsrelay_upload_failures_total",
            "S3 operations that failed in a way retrying could not fix.",
            ["reason"],
            registry=r,
        )
        self.missing_refs = Counter(
            "hlsrelay_playlists_missing_refs_total",
            "Playlists written after their wait ran out with a reference missing.",
            ["application"],
            registry=r,
        )
        self.superseded = Counter(
            "hlsrelay_superseded_total",
            "Operations dropped because a newer one on the same key arrived.",
            registry=r,
        )
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
