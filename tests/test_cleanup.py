"""Clean-up on the media server's publish_finished notice (SPEC, C10): the notice
itself, which keys are a stream's, bulk deletes and their fallback, and the
whole path against a real bucket, a newer publish of the stream included."""

from __future__ import annotations

import http.client
import http.server
import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from conftest import Relay, RelayFactory
from faultproxy import FaultProxy
from s3script import Reply, ScriptedS3, Sent, error, ok
from wireproxy import RecordingProxy

from app.cleanup import (
    FALLBACK_DELAY_S,
    PROTECT_RECORD_S,
    Stream,
    live_window_s,
    parse_notice,
    select_stream_keys,
)
from app.config import Settings
from app.errors import InvalidNotice, RetryableStorageError, UnknownCommand
from app.locals3 import LocalS3
from app.main import create_app
from app.storage import BULK_DELETE_MAX, S3Storage, build_client
from app.uploader import WRITE_SLICE

WAIT_S = 90.0


@pytest.fixture(autouse=True)
def _no_operator_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("HLSRELAY_"):
            monkeypatch.delenv(name)


def make_settings(**values: Any) -> Settings:
    """Settings from keyword values, as the environment would give them."""
    return Settings(**values)


# -- the notice ------------------------------------------------------------


def _notice(**fields: Any) -> bytes:
    body = {"streamId": "stream1", "command": "publish_finished"}
    body.update(fields)
    return json.dumps({k: v for k, v in body.items() if v is not None}).encode()


@pytest.mark.parametrize(
    ("file_path", "folder", "name"),
    [
        ("streams/stream1", "", "stream1"),
        ("streams/stream1.m3u8", "", "stream1"),
        ("stream1", "", "stream1"),
        ("streams/sub/deep/stream1", "sub/deep", "stream1"),
        (None, "", "stream1"),
        ("", "", "stream1"),
    ],
)
def test_notice_file_path_gives_stream_folder_and_name(
    file_path: str | None, folder: str, name: str
) -> None:
    stream_id, stream = parse_notice("LiveApp", _notice(filePath=file_path))

    assert stream_id == "stream1"
    assert stream == Stream(app="LiveApp", folder=folder, name=name)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"[]",
        b'"publish_finished"',
        _notice(streamId=None),
        _notice(streamId=7),
        _notice(streamId="../x"),
        _notice(streamId="a/b"),
        _notice(command=None),
        _notice(command=["publish_finished"]),
        _notice(filePath="/usr/local/antmedia/webapps/LiveApp/streams/stream1"),
        _notice(filePath="streams/../conf/x"),
        _notice(filePath="streams//stream1"),
        _notice(filePath=3),
    ],
)
def test_notice_malformed_is_refused(body: bytes) -> None:
    with pytest.raises(InvalidNotice):
        parse_notice("LiveApp", body)


@pytest.mark.parametrize("command", ["publish_started", "PUBLISH_FINISHED", ""])
def test_notice_unknown_command_is_refused(command: str) -> None:
    with pytest.raises(UnknownCommand, match="publish_finished"):
        parse_notice("LiveApp", _notice(command=command))


def _client(tmp_path: Path, **values: Any) -> httpx.AsyncClient:
    settings = make_settings(spool_dir=tmp_path / "spool", s3_bucket="b", **values)
    app = create_app(settings)
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://relay.test"
    )


@pytest.mark.anyio
async def test_notice_unknown_command_answers_400_json(tmp_path: Path) -> None:
    async with _client(tmp_path, delete_on_end=True) as client:
        response = await client.post(
            "/LiveApp/hls-upload", content=_notice(command="reboot")
        )

    assert response.status_code == 400
    assert response.json() == {
        "error": "unknown_command",
        "detail": "command 'reboot' is not known; known: publish_finished",
    }


@pytest.mark.anyio
async def test_notice_malformed_answers_400_json(tmp_path: Path) -> None:
    async with _client(tmp_path, delete_on_end=True) as client:
        response = await client.post("/LiveApp/hls-upload", content=b"{")

    assert response.status_code == 400
    assert response.json()["error"] == "invalid_notice"


@pytest.mark.anyio
async def test_notice_with_clean_up_off_is_ignored(tmp_path: Path) -> None:
    async with _client(tmp_path) as client:
        response = await client.post("/LiveApp/hls-upload", content=_notice())

    assert response.status_code == 200
    assert response.json()["status"] == "ignored"
    assert "HLSRELAY_DELETE_ON_END" in response.json()["detail"]


async def _notify_scheduled(spool_dir: Path) -> httpx.Response:
    """A notice to a relay with clean-up on and a long wait, stopped after."""
    settings = make_settings(
        spool_dir=spool_dir,
        s3_bucket="b",
        delete_on_end=True,
        delete_on_end_delay_s=600,
    )
    app = create_app(settings)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://relay.test"
    ) as client:
        response = await client.post("/LiveApp/hls-upload", content=_notice())
    app.state.cleanup.stop()
    return response


@pytest.mark.anyio
async def test_notice_with_clean_up_on_is_scheduled(tmp_path: Path) -> None:
    response = await _notify_scheduled(tmp_path)

    assert response.status_code == 202
    assert response.json()["status"] == "scheduled"
    assert response.json()["delay_s"] == 600
    assert "memory only" not in response.json()["detail"]
    [record] = (tmp_path / "cleanups").glob("*.json")
    assert json.loads(record.read_text())["stream_id"] == "stream1"


@pytest.mark.anyio
async def test_notice_whose_record_cannot_be_written_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "cleanups").write_text("a file where the folder goes")
    response = await _notify_scheduled(tmp_path)

    assert response.status_code == 202
    assert "kept in memory only" in response.json()["detail"]
    assert "clean-up record not written, it waits in memory only" in caplog.text
    assert "its record could not be written stream=stream1" in caplog.text


@pytest.mark.anyio
async def test_notice_larger_than_limit_answers_413(tmp_path: Path) -> None:
    settings = make_settings(
        spool_dir=tmp_path, s3_bucket="b", delete_on_end=True, delete_on_end_delay_s=600
    )
    app = create_app(settings)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://relay.test"
    ) as client:
        small = await client.post(
            "/LiveApp/hls-upload", content=_notice(pad="x" * 60_000)
        )
        large = await client.post(
            "/LiveApp/hls-upload", content=_notice(pad="x" * 70_000)
        )
    app.state.cleanup.stop()

    assert small.status_code == 202
    assert large.status_code == 413


@pytest.mark.anyio
async def test_notice_needs_write_credentials(tmp_path: Path) -> None:
    async with _client(tmp_path, delete_on_end=True, auth_token="s3cret") as client:
        refused = await client.post("/LiveApp/hls-upload", content=_notice())

    assert refused.status_code == 401


def test_settings_delete_on_end_delay_must_not_be_negative(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="delete_on_end_delay_s"):
        make_settings(spool_dir=tmp_path, delete_on_end_delay_s=-1)
    assert (
        make_settings(spool_dir=tmp_path, delete_on_end_delay_s=0).delete_on_end_delay_s
        == 0
    )


# -- which keys are the stream's -------------------------------------------


def _keys(*names: str) -> list[str]:
    return [f"streams/{name}" for name in names]


def test_select_matches_stream_naming_not_bare_prefix() -> None:
    listed = _keys(
        "stream1.m3u8",
        "stream1_0001.ts",
        "stream1_0002.ts",
        "stream10.m3u8",
        "stream10_0001.ts",
        "stream10_0002.ts",
        "stream100000001.ts",
    )
    refs = {"streams/stream1.m3u8": frozenset(_keys("stream1_0002.ts"))}

    delete, kept = select_stream_keys("stream1", listed, refs, set())

    assert sorted(delete) == _keys("stream1.m3u8", "stream1_0001.ts", "stream1_0002.ts")
    assert kept == []


def test_select_spares_recordings_and_previews() -> None:
    listed = _keys(
        "stream1.m3u8",
        "stream1.mp4",
        "stream1_2024-05-01_10-00-00.mp4",
        "stream1.webm",
        "stream1.png",
        "stream1_preview.jpg",
        "stream1_init.mp4",
        "stream1_0001.m4s",
    )
    refs = {"streams/stream1.m3u8": frozenset(_keys("stream1_init.mp4"))}

    delete, _ = select_stream_keys("stream1", listed, refs, set())

    assert sorted(delete) == _keys(
        "stream1.m3u8", "stream1_0001.m4s", "stream1_init.mp4"
    )


def test_select_takes_adaptive_variants_audio_and_subtitles() -> None:
    listed = _keys(
        "stream123_adaptive.m3u8",
        "stream123_360p800kbps.m3u8",
        "stream123_360p800kbps0001.ts",
        "stream123_audio.m3u8",
        "stream123_audio_0001.aac",
        "stream123_subs.m3u8",
        "stream123_subs_0001.vtt",
    )
    refs = {
        "streams/stream123_adaptive.m3u8": frozenset(
            _keys(
                "stream123_360p800kbps.m3u8",
                "stream123_audio.m3u8",
                "stream123_subs.m3u8",
            )
        ),
        "streams/stream123_360p800kbps.m3u8": frozenset(
            _keys("stream123_360p800kbps0001.ts")
        ),
        "streams/stream123_audio.m3u8": frozenset(_keys("stream123_audio_0001.aac")),
        "streams/stream123_subs.m3u8": frozenset(_keys("stream123_subs_0001.vtt")),
    }

    delete, _ = select_stream_keys("stream123", listed, refs, set())

    assert sorted(delete) == sorted(listed)


def test_select_spares_other_stream_sharing_the_name() -> None:
    # "stream1_b" is a stream of its own: its playlist is not one of stream1's.
    listed = _keys(
        "stream1.m3u8", "stream1_0001.ts", "stream1_b.m3u8", "stream1_b_0001.ts"
    )
    refs = {"streams/stream1.m3u8": frozenset(_keys("stream1_0001.ts"))}

    delete, _ = select_stream_keys("stream1", listed, refs, set())

    assert sorted(delete) == _keys("stream1.m3u8", "stream1_0001.ts")


def test_select_spares_newer_publish_and_what_its_playlist_names() -> None:
    listed = _keys(
        "stream1.m3u8", "stream1_0001.ts", "stream1_0002.ts", "stream1_0003.ts"
    )
    refs = {
        "streams/stream1.m3u8": frozenset(_keys("stream1_0001.ts", "stream1_0002.ts"))
    }
    protected = {"streams/stream1.m3u8", "streams/stream1_0002.ts"}

    delete, kept = select_stream_keys("stream1", listed, refs, protected)

    assert delete == _keys("stream1_0003.ts")
    assert sorted(kept) == _keys("stream1.m3u8", "stream1_0001.ts", "stream1_0002.ts")


def test_live_window_sums_media_durations() -> None:
    text = (
        "#EXTM3U\n#EXT-X-TARGETDURATION:4\n#EXTINF:4.000,\na.ts\n#EXTINF:3.5,t\nb.ts\n"
    )

    assert live_window_s(text) == 7.5
    assert live_window_s("#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1\nv.m3u8\n") is None
    assert FALLBACK_DELAY_S > 0


# -- bulk delete and its fallback (a scripted provider) ---------------------


def _storage(answer: Callable[[Sent], Reply]) -> tuple[S3Storage, ScriptedS3]:
    settings = make_settings(
        s3_bucket="live-bucket",
        s3_endpoint="http://127.0.0.1:9",
        s3_access_key="k",
        s3_secret_key="s",
        s3_addressing="path",
    )
    client = build_client(settings)
    return S3Storage(settings, client=client), ScriptedS3(client, answer)


def _is_bulk(sent: Sent) -> bool:
    return sent.method == "POST" and "delete" in parse_qs(sent.query, True)


def _refusing(status: int, code: str, message: str = "") -> Callable[[Sent], Reply]:
    def answer(sent: Sent) -> Reply:
        if _is_bulk(sent):
            return error(status, code, message)
        if sent.method == "DELETE":
            return Reply(204)
        return ok(sent)

    return answer


def test_delete_many_uses_one_bulk_call() -> None:
    storage, s3 = _storage(lambda sent: Reply(200, b"<DeleteResult/>"))

    failed = storage.delete_many(_keys("a.ts", "b.ts", "c.m3u8"))

    assert failed == {}
    assert [s.method for s in s3.sent] == ["POST"]
    assert s3.sent[0].body.count(b"<Key>") == 3
    # Providers that predate flexible checksums demand Content-MD5 here.
    assert "content-md5" in s3.sent[0].headers


def test_delete_many_splits_at_provider_limit() -> None:
    storage, s3 = _storage(lambda sent: Reply(200, b"<DeleteResult/>"))

    storage.delete_many([f"streams/s_{n}.ts" for n in range(BULK_DELETE_MAX + 1)])

    assert [s.body.count(b"<Key>") for s in s3.sent] == [BULK_DELETE_MAX, 1]


@pytest.mark.parametrize(
    ("status", "code", "message"),
    [
        (501, "NotImplemented", "A header you provided implies functionality"),
        (
            400,
            "InvalidRequest",
            "Missing required header for this request: Content-MD5",
        ),
        (400, "MissingContentMD5", ""),
    ],
)
def test_delete_many_falls_back_when_provider_refuses_bulk(
    status: int, code: str, message: str
) -> None:
    storage, s3 = _storage(_refusing(status, code, message))

    first = storage.delete_many(_keys("a.ts", "b.ts"))
    second = storage.delete_many(_keys("c.ts"))

    assert first == second == {}
    methods = [(s.method, urlsplit(s.url).path) for s in s3.sent]
    assert methods == [
        ("POST", "/live-bucket"),
        ("DELETE", "/live-bucket/streams/a.ts"),
        ("DELETE", "/live-bucket/streams/b.ts"),
        # Remembered: no second bulk attempt once single deletes worked.
        ("DELETE", "/live-bucket/streams/c.ts"),
    ]
    assert storage.bulk_delete_refused


def test_delete_many_keeps_bulk_when_single_deletes_fail_too() -> None:
    def answer(sent: Sent) -> Reply:
        return error(403, "AccessDenied", "no")

    storage, _ = _storage(answer)

    failed = storage.delete_many(_keys("a.ts"))

    assert set(failed) == {"streams/a.ts"}
    assert failed["streams/a.ts"].code == "AccessDenied"
    assert not storage.bulk_delete_refused


def test_delete_many_retryable_outage_is_not_a_refusal() -> None:
    storage, s3 = _storage(lambda sent: error(503, "SlowDown"))

    failed = storage.delete_many(_keys("a.ts", "b.ts"))

    assert set(failed) == set(_keys("a.ts", "b.ts"))
    assert all(isinstance(e, RetryableStorageError) for e in failed.values())
    assert not storage.bulk_delete_refused
    assert all(_is_bulk(s) for s in s3.sent)


def test_delete_many_reports_per_key_errors_and_ignores_absent() -> None:
    result = (
        b"<DeleteResult>"
        b"<Error><Key>streams/a.ts</Key><Code>NoSuchKey</Code><Message>x</Message></Error>"
        b"<Error><Key>streams/b.ts</Key><Code>InternalError</Code><Message>y</Message></Error>"
        b"<Error><Key>streams/c.ts</Key><Code>AccessDenied</Code><Message>z</Message></Error>"
        b"</DeleteResult>"
    )
    storage, _ = _storage(lambda sent: Reply(200, result))

    failed = storage.delete_many(_keys("a.ts", "b.ts", "c.ts", "d.ts"))

    assert set(failed) == set(_keys("b.ts", "c.ts"))
    assert isinstance(failed["streams/b.ts"], RetryableStorageError)
    assert not isinstance(failed["streams/c.ts"], RetryableStorageError)


# -- against a real bucket -------------------------------------------------


class RefusingProxy:
    """Passes S3 requests to the real server but answers DeleteObjects with a
    provider's refusal, as GCS's XML API does; counts what it saw."""

    def __init__(self, upstream: str, status: int, code: str) -> None:
        target = urlsplit(upstream)
        proxy = self
        self.bulk_calls = 0
        self.single_deletes: list[str] = []
        self._lock = threading.Lock()

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet: tests read what was recorded, not a log."""

            def do_GET(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                query = parse_qs(urlsplit(self.path).query, keep_blank_values=True)
                with proxy._lock:
                    if self.command == "POST" and "delete" in query:
                        proxy.bulk_calls += 1
                        self._answer(status, code)
                        return
                    if self.command == "DELETE":
                        proxy.single_deletes.append(urlsplit(self.path).path)
                self._forward(body)

            do_PUT = do_POST = do_DELETE = do_HEAD = do_GET

            def _answer(self, status: int, code: str) -> None:
                xml = f"<Error><Code>{code}</Code><Message>no</Message></Error>"
                self.send_response(status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(xml)))
                self.end_headers()
                self.wfile.write(xml.encode())

            def _forward(self, body: bytes) -> None:
                conn = http.client.HTTPConnection(
                    target.hostname or "127.0.0.1", target.port or 80, timeout=60
                )
                try:
                    conn.putrequest(
                        self.command,
                        self.path,
                        skip_host=True,
                        skip_accept_encoding=True,
                    )
                    for name, value in self.headers.items():
                        if name.lower() != "expect":
                            conn.putheader(name, value)
                    conn.endheaders(body or None)
                    response = conn.getresponse()
                    data = response.read()
                    self.send_response(response.status, response.reason)
                    for name, value in response.getheaders():
                        if name.lower() not in (
                            "transfer-encoding",
                            "connection",
                            "content-length",
                        ):
                            self.send_header(name, value)
                    length = response.getheader("Content-Length")
                    if self.command != "HEAD" or length is None:
                        length = str(len(data))
                    self.send_header("Content-Length", length)
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(data)
                finally:
                    conn.close()

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> RefusingProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def _playlist(*segments: str, duration: float = 0.5, end: bool = True) -> bytes:
    lines = ["#EXTM3U", "#EXT-X-VERSION:3", "#EXT-X-TARGETDURATION:1"]
    for segment in segments:
        lines += [f"#EXTINF:{duration:.3f},", segment]
    if end:
        lines.append("#EXT-X-ENDLIST")
    return ("\n".join(lines) + "\n").encode()


def _put(relay: Relay, path: str, body: bytes) -> None:
    response = httpx.put(relay.base_url_for("LiveApp", path), content=body, timeout=60)
    assert response.status_code == 201, response.text


def _bucket_keys(local_s3: LocalS3, bucket: str) -> dict[str, bytes]:
    client = local_s3.client()
    found = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            body = client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
            found[item["Key"]] = body
    return found


def _wait_for(what: str, check: Callable[[], bool], timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout_s:g} s waiting for {what}")
        time.sleep(0.05)


def _wait_for_log(relay: Relay, text: str) -> None:
    _wait_for(f"{text!r} in {relay.log_path}", lambda: text in relay.log_text())


def _wait_for_keys(local_s3: LocalS3, bucket: str, keys: set[str]) -> None:
    _wait_for(
        f"keys {sorted(keys)}", lambda: keys <= set(_bucket_keys(local_s3, bucket))
    )


def _notify(relay: Relay, stream_id: str, file_path: str) -> httpx.Response:
    return httpx.post(
        f"{relay.url}/LiveApp/hls-upload",
        json={
            "streamId": stream_id,
            "command": "publish_finished",
            "filePath": file_path,
        },
        timeout=30,
    )


@pytest.fixture
def recording_proxy(local_s3: LocalS3) -> Iterator[RecordingProxy]:
    with RecordingProxy(local_s3.endpoint) as proxy:
        yield proxy


@pytest.mark.integration
def test_cleanup_deletes_stream_after_live_window_and_spares_stream10(
    relay_factory: RelayFactory,
    local_s3: LocalS3,
    bucket: str,
    recording_proxy: RecordingProxy,
) -> None:
    # C10, with no delay set: the wait is the stream's own live window.
    relay = relay_factory(
        extra_env={
            "HLSRELAY_DELETE_ON_END": "true",
            "HLSRELAY_S3_ENDPOINT": recording_proxy.url,
        }
    )
    for n in (1, 2, 3):
        _put(relay, f"stream1_000{n}.ts", f"stream1 segment {n}".encode())
        _put(relay, f"stream10_000{n}.ts", f"stream10 segment {n}".encode())
    _put(relay, "stream1.m3u8", _playlist("stream1_0002.ts", "stream1_0003.ts"))
    _put(relay, "stream10.m3u8", _playlist("stream10_0002.ts", "stream10_0003.ts"))
    for name in ("stream1.mp4", "stream1.png", "stream1_2024-05-01_10-00.webm"):
        _put(relay, name, b"a recording or preview")
    # A file the relay never saw (an earlier run's), found by the listing.
    local_s3.client().put_object(
        Bucket=bucket, Key="streams/stream1_0000.ts", Body=b"0"
    )
    spared = {
        "streams/stream10.m3u8",
        *(f"streams/stream10_000{n}.ts" for n in (1, 2, 3)),
        "streams/stream1.mp4",
        "streams/stream1.png",
        "streams/stream1_2024-05-01_10-00.webm",
    }
    _wait_for_keys(local_s3, bucket, spared | {"streams/stream1.m3u8"})

    response = _notify(relay, "stream1", "streams/stream1")
    assert response.status_code == 202, response.text
    _wait_for_log(relay, "clean-up done stream=stream1")

    assert set(_bucket_keys(local_s3, bucket)) == spared
    log = relay.log_text()
    assert "delay_s=1" in log  # two segments of 0.5 s each
    assert "deleted=5 kept_newer=0 method=bulk" in log
    bulk = [
        r for r in recording_proxy.records if r.method == "POST" and "?delete" in r.path
    ]
    assert bulk, "the clean-up sent no DeleteObjects"
    singles = [r for r in recording_proxy.records if r.method == "DELETE"]
    assert singles == []


@pytest.mark.integration
def test_cleanup_deletes_adaptive_stream_in_sub_folder(
    relay_factory: RelayFactory, local_s3: LocalS3, bucket: str
) -> None:
    relay = relay_factory(
        extra_env={"HLSRELAY_DELETE_ON_END": "1", "HLSRELAY_DELETE_ON_END_DELAY_S": "0"}
    )
    variants = {
        "stream123_360p800kbps": "stream123_360p800kbps0001.ts",
        "stream123_audio": "stream123_audio0001.aac",
        "stream123_subs": "stream123_subs0001.vtt",
    }
    for variant, segment in variants.items():
        _put(relay, f"sub/{segment}", b"media")
        _put(relay, f"sub/{variant}.m3u8", _playlist(segment))
    master = (
        b"#EXTM3U\n"
        b'#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="a",NAME="en",URI="stream123_audio.m3u8"\n'
        b'#EXT-X-MEDIA:TYPE=SUBTITLES,GROUP-ID="s",NAME="en",URI="stream123_subs.m3u8"\n'
        b'#EXT-X-STREAM-INF:BANDWIDTH=800000,AUDIO="a",SUBTITLES="s"\n'
        b"stream123_360p800kbps.m3u8\n"
    )
    _put(relay, "sub/stream123_adaptive.m3u8", master)
    _put(relay, "stream123_360p800kbps0001.ts", b"same name, other folder")
    _wait_for_keys(local_s3, bucket, {"streams/sub/stream123_adaptive.m3u8"})

    response = _notify(relay, "stream123", "streams/sub/stream123")
    assert response.status_code == 202
    _wait_for_log(relay, "clean-up done stream=stream123")

    assert set(_bucket_keys(local_s3, bucket)) == {
        "streams/stream123_360p800kbps0001.ts"
    }


@pytest.mark.integration
def test_cleanup_spares_newer_publish_that_started_meanwhile(
    relay_factory: RelayFactory, local_s3: LocalS3, bucket: str
) -> None:
    relay = relay_factory(
        extra_env={
            "HLSRELAY_DELETE_ON_END": "true",
            "HLSRELAY_DELETE_ON_END_DELAY_S": "8",
        }
    )
    for n in (1, 2, 3):
        _put(relay, f"stream1_000{n}.ts", f"old {n}".encode())
    _put(
        relay,
        "stream1.m3u8",
        _playlist("stream1_0001.ts", "stream1_0002.ts", "stream1_0003.ts"),
    )
    _put(relay, "stream10_0001.ts", b"stream10")
    _wait_for_keys(
        local_s3, bucket, {"streams/stream1.m3u8", "streams/stream10_0001.ts"}
    )

    assert _notify(relay, "stream1", "streams/stream1").status_code == 202

    # The encoder reconnects within the grace period and numbers from 1 again.
    _put(relay, "stream1_0001.ts", b"new 1")
    release = threading.Event()

    def held_body() -> Iterator[bytes]:
        # A whole slice, so that the relay writes it and the body file exists.
        yield b"new 2, first half; ".ljust(WRITE_SLICE, b".")
        release.wait(WAIT_S)
        yield b"second half"

    held: dict[str, int] = {}

    def put_held() -> None:
        url = relay.base_url_for("LiveApp", "stream1_0002.ts")
        held["status"] = httpx.put(url, content=held_body(), timeout=WAIT_S).status_code

    sender = threading.Thread(target=put_held)
    sender.start()
    try:
        # The relay takes a PUT's place in line before it writes the body
        # file: once that file exists, the playlist below is ordered after it.
        _wait_for(
            "the held body to be spooling",
            lambda: any((relay.spool_dir / "incoming").glob("*.part")),
        )
        new_playlist = _playlist("stream1_0001.ts", "stream1_0002.ts", end=False)
        _put(relay, "stream1.m3u8", new_playlist)
        _wait_for_log(relay, "clean-up started stream=stream1")

        # The written playlist (the old one, while the new one waits for its
        # segment) still names stream1_0003.ts, so its delete waits too.
        assert _bucket_keys(local_s3, bucket)["streams/stream1_0003.ts"] == b"old 3"
    finally:
        release.set()
        sender.join(WAIT_S)
    assert held["status"] == 201
    _wait_for_log(relay, "clean-up done stream=stream1")

    assert _bucket_keys(local_s3, bucket) == {
        "streams/stream1.m3u8": new_playlist,
        "streams/stream1_0001.ts": b"new 1",
        "streams/stream1_0002.ts": b"new 2, first half; ".ljust(WRITE_SLICE, b".")
        + b"second half",
        "streams/stream10_0001.ts": b"stream10",
    }
    assert "deleting=1 kept_newer=3" in relay.log_text()


@pytest.mark.integration
@pytest.mark.parametrize(
    ("status", "code"), [(501, "NotImplemented"), (400, "InvalidRequest")]
)
def test_cleanup_falls_back_to_single_deletes_when_bulk_refused(
    relay_factory: RelayFactory, local_s3: LocalS3, bucket: str, status: int, code: str
) -> None:
    with RefusingProxy(local_s3.endpoint, status, code) as proxy:
        relay = relay_factory(
            extra_env={
                "HLSRELAY_DELETE_ON_END": "on",
                "HLSRELAY_DELETE_ON_END_DELAY_S": "0.5",
                "HLSRELAY_S3_ENDPOINT": proxy.url,
            }
        )
        for stream in ("stream1", "stream2"):
            _put(relay, f"{stream}_0001.ts", b"1")
            _put(relay, f"{stream}_0002.ts", b"2")
            _put(
                relay,
                f"{stream}.m3u8",
                _playlist(f"{stream}_0001.ts", f"{stream}_0002.ts"),
            )
        _put(relay, "stream10_0001.ts", b"stream10")
        _wait_for_keys(
            local_s3, bucket, {"streams/stream2.m3u8", "streams/stream10_0001.ts"}
        )

        assert _notify(relay, "stream1", "streams/stream1").status_code == 202
        _wait_for_log(relay, "clean-up done stream=stream1")
        assert _notify(relay, "stream2", "streams/stream2").status_code == 202
        _wait_for_log(relay, "clean-up done stream=stream2")

        assert set(_bucket_keys(local_s3, bucket)) == {"streams/stream10_0001.ts"}
        # One refused bulk call, then single deletes only, for both streams.
        assert proxy.bulk_calls == 1
        assert len(proxy.single_deletes) == 6
        log = relay.log_text()
        assert f"provider refuses DeleteObjects bucket={bucket} code={code}" in log
        assert "deleted=3 kept_newer=0 method=single" in log


@pytest.mark.anyio
async def test_notice_with_trailing_slash_is_a_notice(tmp_path: Path) -> None:
    async with _client(tmp_path) as client:
        response = await client.post("/LiveApp/hls-upload/", content=_notice())

    assert response.status_code == 200
    assert response.json()["status"] == "ignored"


def _records(relay: Relay) -> list[dict[str, Any]]:
    folder = relay.spool_dir / "cleanups"
    return [json.loads(path.read_text()) for path in sorted(folder.glob("*.json"))]


def _ended_stream(
    relay_factory: RelayFactory,
    local_s3: LocalS3,
    bucket: str,
    delay_s: float,
    spool_dir: Path | None = None,
    s3_endpoint: str | None = None,
) -> Relay:
    """A relay with clean-up on end, and the stream1 that just ended on it."""
    env = {
        "HLSRELAY_DELETE_ON_END": "true",
        "HLSRELAY_DELETE_ON_END_DELAY_S": f"{delay_s:g}",
    }
    if s3_endpoint is not None:
        env["HLSRELAY_S3_ENDPOINT"] = s3_endpoint
    relay = relay_factory(spool_dir=spool_dir, extra_env=env)
    for n in (1, 2):
        _put(relay, f"stream1_000{n}.ts", f"old {n}".encode())
    _put(relay, "stream1.m3u8", _playlist("stream1_0001.ts", "stream1_0002.ts"))
    _put(relay, "stream10_0001.ts", b"stream10")
    _wait_for_keys(
        local_s3, bucket, {"streams/stream1.m3u8", "streams/stream10_0001.ts"}
    )
    return relay


def _crash_after_notice(relay: Relay) -> dict[str, Any]:
    """The notice answered, then SIGKILL: the record it left behind."""
    assert _notify(relay, "stream1", "streams/stream1").status_code == 202
    relay.kill()
    [record] = _records(relay)
    return record


@pytest.mark.integration
def test_cleanup_scheduled_before_a_crash_is_done_after_the_restart(
    relay_factory: RelayFactory, local_s3: LocalS3, bucket: str
) -> None:
    relay = _ended_stream(relay_factory, local_s3, bucket, delay_s=3)
    # Killed as soon as it answered: the record was written before the 202.
    record = _crash_after_notice(relay)
    assert (record["app"], record["folder"], record["name"]) == (
        "LiveApp",
        "",
        "stream1",
    )
    assert record["stream_id"] == "stream1"

    relay.start()
    _wait_for_log(relay, "clean-up resumed stream=stream1 app=LiveApp")
    _wait_for_log(relay, "clean-up done stream=stream1")
    assert set(_bucket_keys(local_s3, bucket)) == {"streams/stream10_0001.ts"}
    assert _records(relay) == []


@pytest.mark.integration
def test_cleanup_resumed_after_a_stop_keeps_its_due_time_and_the_newer_publish(
    relay_factory: RelayFactory, local_s3: LocalS3, bucket: str
) -> None:
    # Long enough that a restart on a loaded machine ends within the wait.
    relay = _ended_stream(relay_factory, local_s3, bucket, delay_s=15)
    sent = time.time()
    assert _notify(relay, "stream1", "streams/stream1").status_code == 202
    answered = time.time()
    # The encoder comes back within the wait: its file is remembered as newer.
    _put(relay, "stream1_0001.ts", b"new 1")
    _wait_for(
        "the newer file in the record",
        lambda: _records(relay)[0]["protected"] == ["streams/stream1_0001.ts"],
    )
    [record] = _records(relay)
    assert sent + 15 <= record["due_at"] <= answered + 15

    relay.terminate()
    assert "clean-up resumes at the next start stream=stream1" in relay.log_text()
    starting = time.time()
    relay.start()
    started = time.time()
    _wait_for_log(relay, "clean-up done stream=stream1")
    done_at = time.time()

    assert _bucket_keys(local_s3, bucket) == {
        "streams/stream1_0001.ts": b"new 1",
        "streams/stream10_0001.ts": b"stream10",
    }
    log = relay.log_text()
    assert "deleting=2 kept_newer=1" in log
    # Not started again from zero: it waits out what was left of the first wait.
    match = re.search(
        r"clean-up resumed stream=stream1 app=LiveApp .* in_s=([0-9.]+)", log
    )
    assert match is not None, log
    # Logged to a tenth of a second, during the start-up.
    resumed_at = record["due_at"] - float(match.group(1))
    assert starting - 0.1 <= resumed_at <= started + 0.1
    assert done_at >= record["due_at"]


@pytest.mark.integration
def test_second_notice_replaces_the_first_record(
    relay_factory: RelayFactory, local_s3: LocalS3, bucket: str
) -> None:
    relay = _ended_stream(relay_factory, local_s3, bucket, delay_s=60)
    assert _notify(relay, "stream1", "streams/stream1").status_code == 202
    [first] = _records(relay)
    assert _notify(relay, "stream1", "streams/stream1").status_code == 202
    [second] = _records(relay)
    assert second["noticed_at"] > first["noticed_at"]


@pytest.mark.integration
def test_saved_cleanups_are_dropped_when_clean_up_is_turned_off(
    relay_factory: RelayFactory, local_s3: LocalS3, bucket: str, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    relay = _ended_stream(relay_factory, local_s3, bucket, 60, spool_dir=spool)
    _crash_after_notice(relay)

    relay.env["HLSRELAY_DELETE_ON_END"] = "false"
    relay.start()
    log = relay.log_text()
    assert "clean-up not resumed, HLSRELAY_DELETE_ON_END is off stream=stream1" in log
    assert list((spool / "cleanups").iterdir()) == []
    assert "streams/stream1_0001.ts" in _bucket_keys(local_s3, bucket)


def _record(**changes: Any) -> str:
    record = {
        "app": "LiveApp",
        "folder": "",
        "name": "stream1",
        "stream_id": "stream1",
        "prefix": "streams/stream1",
        "noticed_at": time.time() - 5,
        "due_at": time.time() - 4,
        "protected": [],
    }
    return json.dumps({**record, **changes})


@pytest.mark.integration
def test_records_not_written_by_the_relay_are_dropped_and_it_starts(
    relay_factory: RelayFactory, local_s3: LocalS3, bucket: str, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    records = spool / "cleanups"
    records.mkdir(parents=True)
    bad = {
        "torn.json": '{"app": "LiveApp", ',
        "deep.json": "[" * 100_000,
        "list.json": "[1, 2]",
        "escape.json": _record(folder="../x"),
        "null-folder.json": _record(folder=None),
        "number-app.json": _record(app=7),
        "bool-time.json": _record(noticed_at=True),
        "nan-due.json": _record(due_at=float("nan")),
        "text-s3-time.json": _record(noticed_at_s3="yesterday"),
        "epoch-s3-time.json": _record(noticed_at_s3=0),
        "forever.json": _record(due_at=1e18),
        "keys-as-text.json": _record(protected="streams/stream1_0002.ts"),
        "huge.json": _record(protected=["streams/x" * 100] * 2000),
    }
    for name, text in bad.items():
        (records / name).write_text(text)
    (records / "folder.json").mkdir()
    (records / "folder.tmp").mkdir()
    os.mkfifo(records / "fifo.json")
    (records / "link.json").symlink_to(tmp_path / "elsewhere.json")
    (tmp_path / "elsewhere.json").write_text(_record())
    # Written under another key template: its files are not under this one.
    (records / "moved.json").write_text(_record(prefix="old/stream1"))

    relay = _ended_stream(relay_factory, local_s3, bucket, 60, spool_dir=spool)

    log = relay.log_text()
    assert log.count("clean-up record dropped file=") == len(bad) + 3
    assert "clean-up not resumed, the key template changed since its notice" in log
    assert "clean-up resumed" not in log
    assert sorted(path.name for path in records.iterdir()) == [
        "folder.json",
        "folder.tmp",
    ]
    assert (tmp_path / "elsewhere.json").exists()
    assert "streams/stream1_0001.ts" in _bucket_keys(local_s3, bucket)


@pytest.mark.integration
@pytest.mark.parametrize("s3_behind_s", [0, 30], ids=["clocks_agree", "s3_behind"])
def test_a_resumed_cleanup_spares_what_s3_wrote_after_its_notice(
    relay_factory: RelayFactory, local_s3: LocalS3, bucket: str, s3_behind_s: int
) -> None:
    # Keys a record missed (it could not be rewritten, or not removed after
    # its clean-up) are still a newer publish's when S3 wrote them later, by
    # S3's clock: with it 30 s behind, they are older than the notice by the
    # relay's.
    with FaultProxy(local_s3.endpoint) as proxy:
        proxy.shift_clock(-s3_behind_s)
        relay = _ended_stream(
            relay_factory, local_s3, bucket, delay_s=4, s3_endpoint=proxy.url
        )
        record = _crash_after_notice(relay)
        assert record["protected"] == []
        time.sleep(2.5)
        local_s3.client().put_object(
            Bucket=bucket, Key="streams/stream1_0001.ts", Body=b"new 1"
        )

        relay.start()
        _wait_for_log(relay, "clean-up done stream=stream1")
    assert _bucket_keys(local_s3, bucket) == {
        "streams/stream1_0001.ts": b"new 1",
        "streams/stream10_0001.ts": b"stream10",
    }
    assert "deleting=2 kept_newer=1" in relay.log_text()
    # The notice by S3's clock: early by up to a second, never late.
    skew = record["noticed_at_s3"] - record["noticed_at"]
    assert -s3_behind_s - 2 < skew <= -s3_behind_s


@pytest.mark.integration
def test_a_resumed_cleanup_spares_a_newer_put_still_in_the_spool(
    relay_factory: RelayFactory, local_s3: LocalS3, bucket: str
) -> None:
    # A PUT acknowledged from the spool but not yet in S3 when the relay
    # restarts: S3 still shows the ended stream's file under its key, so only
    # the spool says it is newer than the notice.
    with FaultProxy(local_s3.endpoint) as proxy:
        relay = relay_factory(
            extra_env={
                "HLSRELAY_DELETE_ON_END": "true",
                "HLSRELAY_DELETE_ON_END_DELAY_S": "16",
                "HLSRELAY_S3_ENDPOINT": proxy.url,
            }
        )
        for n in (1, 2):
            _put(relay, f"stream1_000{n}.ts", f"old {n}".encode())
        _put(relay, "stream1.m3u8", _playlist("stream1_0001.ts", "stream1_0002.ts"))
        _wait_for_keys(local_s3, bucket, {"streams/stream1.m3u8"})
        assert _notify(relay, "stream1", "streams/stream1").status_code == 202
        # Past the seconds in which the record takes the newer keys itself.
        time.sleep(PROTECT_RECORD_S + 0.5)
        proxy.fail_prefix("streams/stream1_0001")
        _put(relay, "stream1_0001.ts", b"new 1")
        relay.kill()
        assert _records(relay)[0]["protected"] == []

        relay.start()
        _wait_for_log(relay, "clean-up started stream=stream1")
        proxy.clear_prefix("streams/stream1_0001")
        _wait_for_log(relay, "clean-up done stream=stream1")
        _wait_for_log(relay, "spool replay done")
    assert _bucket_keys(local_s3, bucket) == {"streams/stream1_0001.ts": b"new 1"}
    assert "deleting=2 kept_newer=1" in relay.log_text()
