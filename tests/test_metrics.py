"""/metrics: what moves when a stream is pushed, and labels that stay bounded.

The in-process tests drive the ASGI app through httpx's ASGITransport (no
lifespan, so nothing reaches S3); the integration tests push through real
relay processes against SeaweedFS and scrape them over HTTP.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from conftest import Relay, RelayFactory, free_port
from fastapi import FastAPI, Request, Response
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from starlette.types import Message

from app import __version__
from app.config import Settings
from app.locals3 import LocalS3
from app.main import create_app
from app.metrics import ActiveStreams, Metrics, method_label

UPLOAD_ROUTE = "/{application}/hls-upload/{path}"
SETTLE_TIMEOUT_S = 60.0
HUNG_UP = 10

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """A sample's value; 0 when the series does not exist (yet)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def requests(samples: Samples, route: str, method: str, status: str) -> float:
    labels = {"route": route, "method": method, "status": status}
    return value(samples, "hlsrelay_requests_total", **labels)


def uploads(samples: Samples, application: str, kind: str) -> float:
    labels = {"application": application, "kind": kind}
    return value(samples, "hlsrelay_uploads_total", **labels)


def scrape(relay: Relay) -> Samples:
    response = httpx.get(f"{relay.url}/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return parse(response.text)


def wait_for(
    relay: Relay,
    what: str,
    check: Callable[[Samples], bool],
    timeout_s: float = SETTLE_TIMEOUT_S,
) -> Samples:
    """Scrape until ``check(samples)`` holds; fail with the relay's log if not."""
    deadline = time.monotonic() + timeout_s
    while True:
        samples = scrape(relay)
        if check(samples):
            return samples
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{what}: not reached in {timeout_s:g} s; log:\n"
                f"{relay.log_text()[-3000:]}"
            )
        time.sleep(0.1)


def settled(samples: Samples) -> bool:
    return (
        value(samples, "hlsrelay_pending_operations") == 0
        and value(samples, "hlsrelay_spool_files") == 0
    )


def label_values(samples: Samples) -> set[str]:
    return {v for _, labels in samples for _, v in labels}


# -- pieces ----------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_active_streams_counts_playlists_seen_within_window() -> None:
    clock = FakeClock()
    streams = ActiveStreams(window_s=60, clock=clock)

    streams.note("LiveApp", "streams/a/index.m3u8")
    streams.note("LiveApp", "streams/b/index.m3u8")
    streams.note("Other", "streams/c/index.m3u8")
    streams.note("LiveApp", "streams/a/index.m3u8")  # a new version: still one
    assert streams.counts() == {"LiveApp": 2, "Other": 1}

    clock.now += 45
    streams.note("LiveApp", "streams/b/index.m3u8")
    clock.now += 30  # a and c were last seen 75 s ago, b 30 s ago
    assert streams.counts() == {"LiveApp": 1}

    clock.now += 61
    assert streams.counts() == {}


def test_active_streams_memory_is_capped() -> None:
    streams = ActiveStreams(window_s=60, clock=FakeClock(), capacity=3)

    for n in range(10):
        streams.note("LiveApp", f"streams/{n}/index.m3u8")

    assert streams.counts() == {"LiveApp": 3}
    assert len(streams._seen) == 3


def test_method_label_folds_unknown_methods() -> None:
    assert method_label("PUT") == "PUT"
    assert method_label("BREW") == "other"


@pytest.fixture
def app(tmp_path: Path) -> FastAPI:
    settings = Settings(
        spool_dir=tmp_path,
        s3_bucket="live-bucket",
        s3_access_key="AKIDEXAMPLE",
        s3_secret_key="not-used-here",
    )
    return create_app(settings)


def asgi_client(app: FastAPI) -> httpx.AsyncClient:
    # No lifespan runs this way: no uploader and no S3, only the HTTP layer.
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://relay.test")


@pytest.mark.anyio
async def test_requests_counted_by_route_template_not_path(app: FastAPI) -> None:
    async with asgi_client(app) as client:
        for name in ("cam1/seg_1.exe", "cam2/seg_2.exe", "cam3/deep/seg_3.exe"):
            answer = await client.put(f"/LiveApp/hls-upload/{name}", content=b"x")
            assert answer.status_code == 415
        await client.get("/nowhere/at/all")
        await client.request("BREW", "/healthz")
        assert (await client.get("/openapi.json")).status_code == 200
        samples = parse((await client.get("/metrics")).text)

    assert requests(samples, UPLOAD_ROUTE, "PUT", "415") == 3
    assert requests(samples, "unmatched", "GET", "404") == 1
    assert requests(samples, "/healthz", "other", "405") == 1
    assert requests(samples, "/openapi.json", "GET", "200") == 1
    durations = value(
        samples,
        "hlsrelay_request_duration_seconds_count",
        route=UPLOAD_ROUTE,
        method="PUT",
    )
    assert durations == 3
    names = label_values(samples)
    assert not any("cam" in v or "seg_" in v or "nowhere" in v for v in names), names


@pytest.mark.anyio
async def test_request_id_is_kept_when_plain_and_made_otherwise(
    app: FastAPI,
) -> None:
    async with asgi_client(app) as client:
        kept = await client.get("/healthz", headers={"X-Request-ID": "edge-42.a_b"})
        replaced = await client.get("/healthz", headers={"X-Request-ID": "bad id;x"})
        fresh = await client.get("/healthz")

    assert kept.headers["x-request-id"] == "edge-42.a_b"
    assert replaced.headers["x-request-id"] != "bad id;x"
    assert len(replaced.headers["x-request-id"]) == 32
    assert fresh.headers["x-request-id"] != replaced.headers["x-request-id"]


@pytest.mark.anyio
async def test_unexpected_error_counted_as_500(
    app: FastAPI, caplog: pytest.LogCaptureFixture
) -> None:
    async def boom() -> None:
        raise RuntimeError("a bug")

    app.add_api_route("/boom", boom)

    async with asgi_client(app) as client:
        with caplog.at_level("INFO", logger="app.access"):
            assert (await client.get("/boom")).status_code == 500
        samples = parse((await client.get("/metrics")).text)

    assert requests(samples, "/boom", "GET", "500") == 1
    access = [r for r in caplog.records if r.name == "app.access"]
    assert access[0].levelname == "WARNING"
    assert "status=500" in access[0].getMessage()
    assert value(samples, "hlsrelay_requests_in_flight") == 1  # the scrape itself


class HungUpCycle:
    """Stands in for uvicorn's request cycle after the encoder hung up.

    The body's end is parsed and buffered (``more_body`` False) but ``receive``
    already answers with a disconnect, as uvicorn does (see app/transport.py).
    """

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.more_body = False

    async def receive(self) -> dict[str, object]:
        return {"type": "http.disconnect"}


@pytest.mark.anyio
async def test_access_middleware_leaves_hung_up_bodies_whole(app: FastAPI) -> None:
    # The access middleware wraps ``receive``; it must sit inside the
    # complete-body fix, or that fix no longer sees uvicorn's buffer.
    got: list[bytes] = []

    async def sink(request: Request) -> Response:
        got.append(await request.body())
        return Response(status_code=201)

    app.add_api_route("/sink", sink, methods=["PUT"])
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "PUT",
        "scheme": "http",
        "path": "/sink",
        "raw_path": b"/sink",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"transfer-encoding", b"chunked")],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 5080),
    }
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, HungUpCycle(b"whole body").receive, send)

    assert got == [b"whole body"]
    assert sent[0]["status"] == 201
    samples = parse(generate_latest(app.state.relay.metrics.registry).decode())
    assert requests(samples, "/sink", "PUT", "201") == 1
    assert value(samples, "hlsrelay_requests_in_flight") == 0


@pytest.mark.anyio
async def test_metrics_page_has_build_and_process_info(app: FastAPI) -> None:
    async with asgi_client(app) as client:
        answer = await client.get("/metrics")

    samples = parse(answer.text)
    assert value(samples, "hlsrelay_build_info", version=__version__) == 1
    assert value(samples, "process_resident_memory_bytes") > 0


# -- real relays -------------------------------------------------------------------


@pytest.mark.integration
def test_metrics_move_with_a_pushed_stream(relay_factory: RelayFactory) -> None:
    relay = relay_factory()

    def put(app: str, path: str, body: bytes) -> httpx.Response:
        return httpx.put(relay.base_url_for(app, path), content=body, timeout=30)

    segments = {
        "seg_0.ts": b"0" * 1000,
        "seg_1.ts": b"1" * 2000,
        "seg_2.ts": b"2" * 3000,
    }
    versions = [["seg_0.ts"], ["seg_0.ts", "seg_1.ts"], ["seg_1.ts", "seg_2.ts"]]
    playlist_bytes = 0
    for n, (name, body) in enumerate(segments.items()):
        assert put("LiveApp", f"cam1/{name}", body).status_code == 201
        text = "#EXTM3U\n#EXT-X-TARGETDURATION:2\n" + "".join(
            f"#EXTINF:2,\n{ref}\n" for ref in versions[n]
        )
        playlist_bytes += len(text)
        assert put("LiveApp", "cam1/index.m3u8", text.encode()).status_code == 201
        # One version at a time, so none is superseded before it is written.
        written = n + 1
        wait_for(
            relay,
            f"playlist version {written} written",
            lambda s: uploads(s, "LiveApp", "playlist") == written,  # noqa: B023
        )
    delete = httpx.delete(relay.base_url_for("LiveApp", "cam1/seg_0.ts"), timeout=30)
    assert delete.status_code == 204
    assert put("OtherApp", "x/seg.ts", b"o" * 500).status_code == 201

    s = wait_for(
        relay,
        "delete applied",
        lambda s: uploads(s, "LiveApp", "delete") == 1 and settled(s),
    )

    live_bytes = sum(len(b) for b in segments.values()) + playlist_bytes
    assert requests(s, UPLOAD_ROUTE, "PUT", "201") == 7
    assert requests(s, UPLOAD_ROUTE, "DELETE", "204") == 1
    assert requests(s, "/metrics", "GET", "200") >= 3
    put_durations = {"route": UPLOAD_ROUTE, "method": "PUT"}
    assert value(s, "hlsrelay_request_duration_seconds_count", **put_durations) == 7
    received = "hlsrelay_received_bytes_total"
    assert value(s, received, application="LiveApp") == live_bytes
    assert value(s, received, application="OtherApp") == 500
    uploaded = "hlsrelay_uploaded_bytes_total"
    assert value(s, uploaded, application="LiveApp") == live_bytes
    assert value(s, uploaded, application="OtherApp") == 500
    assert uploads(s, "LiveApp", "media") == 3
    assert uploads(s, "OtherApp", "media") == 1
    assert value(s, "hlsrelay_upload_duration_seconds_count", kind="media") == 4
    assert value(s, "hlsrelay_upload_duration_seconds_count", kind="playlist") == 3
    assert value(s, "hlsrelay_upload_duration_seconds_count", kind="delete") == 1
    assert value(s, "hlsrelay_upload_duration_seconds_sum", kind="media") > 0
    assert value(s, "hlsrelay_playlist_barrier_wait_seconds_count") == 3
    assert value(s, "hlsrelay_body_size_bytes_count", kind="media") == 4
    assert value(s, "hlsrelay_body_size_bytes_sum", kind="playlist") == playlist_bytes
    assert value(s, "hlsrelay_playlists_missing_refs_total", application="LiveApp") == 0
    assert value(s, "hlsrelay_upload_retries_total", reason="Unreachable") == 0
    assert value(s, "hlsrelay_spool_bytes") == 0
    assert value(s, "hlsrelay_streams_active", application="LiveApp") == 1
    assert (
        "hlsrelay_streams_active",
        frozenset({("application", "OtherApp")}),
    ) not in s
    names = label_values(s)
    assert not any("cam1" in v or "seg_" in v or "index" in v for v in names), names


@pytest.mark.integration
def test_metrics_count_playlist_written_with_missing_reference(
    relay_factory: RelayFactory,
) -> None:
    relay = relay_factory(extra_env={"HLSRELAY_SEGMENT_WAIT_S": "0.5"})
    text = "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2,\nnever_sent.ts\n"

    answer = httpx.put(relay.base_url_for("LiveApp", "cam1/index.m3u8"), content=text)
    assert answer.status_code == 201

    s = wait_for(
        relay,
        "playlist written with a missing reference",
        lambda s: (
            value(s, "hlsrelay_playlists_missing_refs_total", application="LiveApp")
            == 1
        ),
    )
    assert value(s, "hlsrelay_playlist_barrier_wait_seconds_count") == 1
    # It waited out its bound (0.5 s) before being written, by the rule.
    assert value(s, "hlsrelay_playlist_barrier_wait_seconds_bucket", le="0.25") == 0
    assert value(s, "hlsrelay_playlist_barrier_wait_seconds_sum") >= 0.5
    # And the operator's line says which playlist, what it lacks, how long.
    (line,) = [
        line for line in relay.log_text().splitlines() if "missing references" in line
    ]
    assert f"key=streams/cam1/index.m3u8 bytes={len(text)} waited_ms=" in line
    assert int(line.split("waited_ms=")[1].split()[0]) >= 500
    assert line.endswith("missing=streams/cam1/never_sent.ts"), line


@pytest.mark.integration
def test_metrics_count_retries_while_s3_is_unreachable(
    relay_factory: RelayFactory,
) -> None:
    # Nothing listens there: every attempt is refused at once.
    relay = relay_factory(
        extra_env={
            "HLSRELAY_S3_ENDPOINT": f"http://127.0.0.1:{free_port()}",
            "HLSRELAY_SHUTDOWN_GRACE_S": "1",
        }
    )

    answer = httpx.put(
        relay.base_url_for("LiveApp", "cam1/seg_0.ts"), content=b"z" * 100
    )
    assert answer.status_code == 201  # durable in the spool

    s = wait_for(
        relay,
        "a retry counted",
        lambda s: value(s, "hlsrelay_upload_retries_total", reason="Unreachable") >= 1,
    )
    assert value(s, "hlsrelay_received_bytes_total", application="LiveApp") == 100
    assert value(s, "hlsrelay_uploaded_bytes_total", application="LiveApp") == 0
    assert value(s, "hlsrelay_spool_files") == 1
    assert value(s, "hlsrelay_spool_bytes") == 100
    assert value(s, "hlsrelay_pending_operations") == 1


def failure_reasons(samples: Samples) -> dict[str, float]:
    return {
        dict(labels)["reason"]: count
        for (name, labels), count in samples.items()
        if name == "hlsrelay_upload_failures_total"
    }


@pytest.mark.integration
def test_metrics_count_failures_by_reason(relay_factory: RelayFactory) -> None:
    # S3 refuses a wrong secret for good: no retry can fix that.
    relay = relay_factory(
        extra_env={
            "HLSRELAY_S3_SECRET_KEY": "not-the-secret",
            "HLSRELAY_SHUTDOWN_GRACE_S": "1",
        }
    )

    answer = httpx.put(relay.base_url_for("LiveApp", "cam1/seg_0.ts"), content=b"z")
    assert answer.status_code == 201

    s = wait_for(relay, "a failure counted", lambda s: bool(failure_reasons(s)))
    reasons = failure_reasons(s)
    assert set(reasons) <= {"SignatureDoesNotMatch", "AccessDenied"}, reasons
    assert value(s, "hlsrelay_upload_retries_total", reason="Unreachable") == 0
    assert value(s, "hlsrelay_spool_files") == 1


def _put_and_hang_up(port: int, path: str, body: bytes) -> None:
    """PUT chunked as ffmpeg does, then close without reading the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(
            f"PUT {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n".encode()
        )
        for start in range(0, len(body), 32 * 1024):
            chunk = body[start : start + 32 * 1024]
            sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        sock.sendall(b"0\r\n\r\n")


@pytest.mark.integration
def test_requests_counted_when_encoders_hang_up_after_last_chunk(
    relay_factory: RelayFactory, local_s3: LocalS3, bucket: str
) -> None:
    relay = relay_factory()
    bodies = {
        f"cam{n}/seg_0.ts": bytes([n]) * (1024 * 1024 + n) for n in range(HUNG_UP)
    }
    threads = [
        threading.Thread(
            target=_put_and_hang_up,
            args=(relay.port, f"/LiveApp/hls-upload/{path}", body),
        )
        for path, body in bodies.items()
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    s = wait_for(
        relay,
        "all hung-up PUTs counted and applied",
        lambda s: uploads(s, "LiveApp", "media") == HUNG_UP and settled(s),
    )
    assert requests(s, UPLOAD_ROUTE, "PUT", "201") == HUNG_UP
    assert value(s, "hlsrelay_received_bytes_total", application="LiveApp") == sum(
        len(b) for b in bodies.values()
    )
    client = local_s3.client()
    for path, body in bodies.items():
        stored = client.get_object(Bucket=bucket, Key=f"streams/{path}")["Body"].read()
        assert stored == body, path


def test_metrics_carry_no_created_series() -> None:
    # prometheus_client adds a `_created` sample per counter and histogram
    # label set unless told not to: noise on every scrape.
    metrics = Metrics()
    metrics.requests.labels("/{application}/hls-upload/{path}", "PUT", "201").inc()
    metrics.upload_seconds.labels("media").observe(0.1)

    text = generate_latest(metrics.registry).decode()

    assert "hlsrelay_requests_total{" in text
    assert "_created" not in text
