"""Log output: JSON lines with their fields, the text default, and no secrets.

Unit tests drive ``setup_logging`` and the formatters directly; the
integration tests read the stderr of real relay processes.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest
from conftest import REPO_ROOT, Relay, RelayFactory, free_port, make_settings
from s3script import live_settings, receive, scripted_uploader

from app import logs
from app import uploader as uploader_module
from app.cli import setup_logging
from app.config import Settings
from app.locals3 import LocalS3
from app.logs import (
    REDACTED,
    ContextFilter,
    JsonFormatter,
    SecretRedactor,
    TextFormatter,
    split_message,
)
from app.main import create_app

S3_SECRET = "s3-Secret/Key+With=Signs"
TOKENS = ("tok-one-4d2a91f0", "tok-two-77be0c13")
BASIC_USER = "encoder"
BASIC_PASSWORD = "pass-9f8e7d6c"
BASIC = f"{BASIC_USER}:{BASIC_PASSWORD}"
BASIC_B64 = base64.b64encode(BASIC.encode()).decode()


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """setup_logging changes process-wide state; put it back after the test."""
    root = logging.getLogger()
    names = ("uvicorn", "uvicorn.error", "uvicorn.access", "botocore", "urllib3")
    saved = (root.handlers[:], root.level)
    saved_named = {
        name: (
            logging.getLogger(name).handlers[:],
            logging.getLogger(name).propagate,
            logging.getLogger(name).level,
        )
        for name in names
    }
    try:
        yield
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
        for name, (handlers, propagate, lvl) in saved_named.items():
            logger = logging.getLogger(name)
            logger.handlers[:] = handlers
            logger.propagate = propagate
            logger.setLevel(lvl)


def _secret_settings(tmp_path: Path, log_format: str) -> Settings:
    return Settings(
        spool_dir=tmp_path,
        s3_bucket="live-bucket",
        s3_access_key="AKIDEXAMPLE",
        s3_secret_key=S3_SECRET,
        auth_token=",".join(TOKENS),
        basic_auth=BASIC,
        log_format=log_format,
        log_level="debug",
    )


def _all_secrets() -> list[str]:
    return [S3_SECRET, *TOKENS, BASIC, BASIC_PASSWORD, BASIC_B64]


def _log_every_way_a_secret_could_leak() -> None:
    log = logging.getLogger("app.test_logging")
    log.debug("config secret_key=%s token=%s", S3_SECRET, TOKENS[0])
    log.debug("header Authorization: Bearer %s", TOKENS[1])
    log.debug("header authorization=Basic %s", BASIC_B64)
    log.info("pushing to http://%s@ingest.example/LiveApp/hls-upload/a.m3u8", BASIC)
    log.warning("extra fields", extra={"given": TOKENS[0], "nested": [S3_SECRET]})
    try:
        raise RuntimeError(f"S3 said no to {S3_SECRET} with {BASIC_PASSWORD}")
    except RuntimeError:
        log.exception("upload failed key=streams/a.ts")
    logging.getLogger("uvicorn.error").error("boom %s", TOKENS[0])


def _assert_no_secret(text: str) -> None:
    for secret in _all_secrets():
        assert secret not in text, f"secret {secret[:4]}... appears in the log"
        escaped = json.dumps(secret)[1:-1]
        assert escaped not in text, f"escaped secret {secret[:4]}... appears"


# -- pieces --------------------------------------------------------------------


def test_split_message_lifts_pairs_and_stops_at_detail() -> None:
    event, fields = split_message(
        "retry key=streams/live/a.ts attempt=2 in_s=0.35: S3 said Code=SlowDown"
    )

    assert event == "retry"
    assert fields == {"key": "streams/live/a.ts", "attempt": 2, "in_s": 0.35}


def test_split_message_quoted_value_cannot_forge_fields() -> None:
    path = "/LiveApp/hls-upload/a status=200 key=forged.ts"
    event, fields = split_message(
        f"refused method=PUT path={path!r} status=400 error=invalid_path: bad"
    )

    assert event == "refused"
    assert fields["path"] == path
    assert fields["status"] == 400
    assert "key" not in fields


def test_split_message_without_pairs_is_all_event() -> None:
    event, fields = split_message("Uvicorn running on http://127.0.0.1:5080")

    assert event == "Uvicorn running on http://127.0.0.1:5080"
    assert fields == {}


def test_json_formatter_line_carries_context_and_fields() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(ContextFilter())
    log = logging.getLogger("app.test_json_fields")
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    log.propagate = False
    rid = logs.request_id.set("req-123")
    app = logs.application.set("LiveApp")
    try:
        log.info(
            "request method=PUT path=%r status=%d duration=%.4f",
            "/LiveApp/hls-upload/x\n.ts",
            201,
            0.0123,
        )
        log.warning("published playlist key=%s seq=%d", "streams/x.m3u8", 7)
    finally:
        logs.application.reset(app)
        logs.request_id.reset(rid)
        log.removeHandler(handler)
        log.propagate = True

    lines = stream.getvalue().splitlines()
    assert len(lines) == 2  # the newline in the path did not split a line
    first, second = (json.loads(line) for line in lines)
    assert first["time"].endswith("Z") and "T" in first["time"]
    assert first["level"] == "info"
    assert first["event"] == "request"
    assert first["request_id"] == "req-123"
    assert first["application"] == "LiveApp"
    assert first["status"] == 201
    assert first["duration"] == pytest.approx(0.0123)
    assert first["path"] == "/LiveApp/hls-upload/x\n.ts"
    assert second["level"] == "warning"
    assert second["event"] == "published playlist"
    assert second["key"] == "streams/x.m3u8"
    assert second["seq"] == 7


def test_json_formatter_exception_stays_on_one_line() -> None:
    record = logging.LogRecord(
        "app.x", logging.ERROR, __file__, 1, "failed key=%s", ("k",), None
    )
    try:
        raise ValueError("first\nsecond")
    except ValueError:
        record.exc_info = sys.exc_info()

    line = JsonFormatter().format(record)

    assert "\n" not in line
    entry = json.loads(line)
    assert "ValueError: first" in entry["exception"]
    assert entry["key"] == "k"


def test_detached_context_has_no_request() -> None:
    token = logs.request_id.set("req-9")
    try:
        context = logs.detached_context()
        assert context.run(logs.request_id.get) is None
        assert logs.request_id.get() == "req-9"
    finally:
        logs.request_id.reset(token)


def test_redactor_hides_secret_and_credential_shapes() -> None:
    redactor = SecretRedactor(["hunter2-long"])

    text = redactor.redact(
        "a hunter2-long b; Authorization: Bearer abc.def; "
        "authorization='Basic Zm9vOmJhcg=='; https://u:p4ss@host/x"
    )

    assert "hunter2-long" not in text
    assert "abc.def" not in text
    assert "Zm9vOmJhcg==" not in text
    assert "p4ss" not in text
    assert text.count(REDACTED) == 4


# -- setup_logging, as `hlsrelay serve` runs it --------------------------------


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_setup_logging_hides_configured_secrets_at_debug(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    restore_logging: None,
    log_format: str,
) -> None:
    setup_logging(_secret_settings(tmp_path, log_format))

    _log_every_way_a_secret_could_leak()

    err = capsys.readouterr().err
    assert err.count("\n") >= 7  # every call made a line, debug included
    assert REDACTED in err
    _assert_no_secret(err)
    if log_format == "json":
        for line in err.splitlines():
            json.loads(line)


def test_setup_logging_json_lines_parse(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], restore_logging: None
) -> None:
    setup_logging(Settings(spool_dir=tmp_path, log_format="json"))

    logging.getLogger("app.uploader").info("published playlist key=%s", "k.m3u8")
    logging.getLogger("uvicorn.error").info("Started server process [%d]", 42)

    entries = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [e["logger"] for e in entries] == ["app.uploader", "uvicorn"]
    assert entries[0]["key"] == "k.m3u8"
    assert entries[1]["event"] == "Started server process [42]"


def test_setup_logging_default_is_text(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], restore_logging: None
) -> None:
    setup_logging(Settings(spool_dir=tmp_path))
    token = logs.request_id.set("req-text")
    try:
        logging.getLogger("app.routes").warning("refused status=%d", 413)
    finally:
        logs.request_id.reset(token)

    line = capsys.readouterr().err.strip()
    assert not line.startswith("{")
    assert " WARNING app.routes refused status=413 request_id=req-text" in line


def test_text_formatter_redacts_whole_line() -> None:
    record = logging.LogRecord(
        "app.x", logging.INFO, __file__, 1, "got %s", ("tok-long-secret",), None
    )

    line = TextFormatter(SecretRedactor(["tok-long-secret"])).format(record)

    assert "tok-long-secret" not in line
    assert line.endswith(f"got {REDACTED}")


@pytest.mark.anyio
async def test_access_log_names_the_client_behind_a_trusted_proxy(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(
        spool_dir=tmp_path, s3_bucket="live-bucket", trusted_proxies="127.0.0.0/8"
    )
    transport = httpx.ASGITransport(app=create_app(settings))
    headers = {"X-Forwarded-For": "198.51.100.9, 203.0.113.7"}

    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        with caplog.at_level("DEBUG", logger="app.access"):
            await client.get("/healthz", headers=headers)

    (line,) = [r.getMessage() for r in caplog.records if r.name == "app.access"]
    assert "client=203.0.113.7" in line  # the hop nginx saw, not 127.0.0.1
    assert "198.51.100.9" not in line  # written by the client: proves nothing


@pytest.mark.anyio
async def test_access_log_gives_the_path_as_sent_without_its_query(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(spool_dir=tmp_path, s3_bucket="live-bucket")
    transport = httpx.ASGITransport(app=create_app(settings))
    sent = "/LiveApp/hls-upload/a/%2E%2E%2Fevil.ts"

    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        with caplog.at_level("DEBUG", logger="app.access"):
            answer = await client.put(f"{sent}?sig=secret-token", content=b"x")

    assert answer.status_code == 400
    (line,) = [r.getMessage() for r in caplog.records if r.name == "app.access"]
    # Decoded, the refused name would read as a "../" that was let through.
    assert f"path='{sent}'" in line, line
    assert "secret-token" not in line and "../" not in line


@pytest.mark.integration
@pytest.mark.anyio
async def test_access_log_levels_follow_what_the_operator_must_do(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    local_s3: LocalS3,
    bucket: str,
) -> None:
    app = create_app(make_settings(local_s3, bucket, tmp_path))
    transport = httpx.ASGITransport(app=app)
    up = "/LiveApp/hls-upload"

    async with (
        app.router.lifespan_context(app),  # the spool, for the PUTs
        httpx.AsyncClient(transport=transport, base_url="http://t") as client,
    ):
        with caplog.at_level("DEBUG", logger="app.access"):
            # ffmpeg's append_list, before the stream's first upload: routine.
            missing = await client.get(f"{up}/new.m3u8")
            # A stream whose viewers stay on the version before: a warning.
            broken = await client.put(f"{up}/live.m3u8", content=b"<html>")
            # A client's mistake, nothing wrong with the relay or a stream.
            bad_name = await client.put(f"{up}/x.exe", content=b"x")

    assert [missing.status_code, broken.status_code, bad_name.status_code] == [
        404,
        400,
        415,
    ]
    levels = [r.levelname for r in caplog.records if r.name == "app.access"]
    assert levels == ["DEBUG", "WARNING", "INFO"]


# -- warnings about streams ------------------------------------------------------


def _outside_playlist(n: int, outside: str) -> bytes:
    # A live window: each version names the same file outside the application.
    return (
        f"#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:{n}\n"
        f"#EXTINF:2.0,\n{outside}\n#EXTINF:2.0,\nseg{n}.ts\n"
        "#EXTINF:2.0,\nhttps://cdn.example.com/ad.ts\n"
    ).encode()


@pytest.mark.anyio
async def test_playlist_naming_a_file_outside_its_application_is_warned_of_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    uploader, s3 = scripted_uploader(live_settings(tmp_path))
    last = {
        "a/index.m3u8": _outside_playlist(2, "../../x.ts"),
        "c/index.m3u8": _outside_playlist(0, "../../../other/x.ts"),
    }
    await uploader.start()
    try:
        with caplog.at_level(logging.WARNING, logger="app.uploader"):
            for n in range(3):
                await receive(uploader, f"a/seg{n}.ts", b"ts")
                playlist = _outside_playlist(n, "../../x.ts")
                await receive(uploader, "a/index.m3u8", playlist)
            await receive(uploader, "c/seg0.ts", b"ts")
            await receive(uploader, "c/index.m3u8", last["c/index.m3u8"])

            # Published, and not held for what they name outside.
            with anyio.fail_after(10):
                while not set(last.values()) <= {s.body for s in s3.sent}:
                    await anyio.sleep(0.01)
    finally:
        await uploader.stop(grace_s=5)

    warnings = [r.getMessage() for r in caplog.records if "outside" in r.getMessage()]
    assert warnings == [
        "playlist names a file outside its application, not waited for "
        "key=streams/a/index.m3u8 reference='../../x.ts'",
        "playlist names a file outside its application, not waited for "
        "key=streams/c/index.m3u8 reference='../../../other/x.ts'",
    ]


@pytest.mark.anyio
async def test_playlists_warned_of_are_remembered_up_to_a_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(uploader_module, "WARNED_PLAYLISTS", 2)
    uploader, _ = scripted_uploader(live_settings(tmp_path))
    await uploader.start()
    try:
        with caplog.at_level(logging.WARNING, logger="app.uploader"):
            for n, name in enumerate("abca"):
                data = _outside_playlist(n, "../../x.ts")
                await receive(uploader, f"{name}/index.m3u8", data)
    finally:
        await uploader.stop(grace_s=5)

    # "a" was the least recently seen of three: forgotten, then warned of again.
    warned = [r.args[0] for r in caplog.records if "outside" in r.getMessage()]
    assert warned == [f"streams/{name}/index.m3u8" for name in "abca"]
    assert len(uploader._warned_outside) == 2


# -- real relays -----------------------------------------------------------------


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _relay_lines(relay: Relay) -> list[str]:
    # The fixture writes a "--- <time>: <command>" line before each start.
    return [
        line
        for line in relay.log_text().splitlines()
        if line.strip() and not line.startswith("--- ")
    ]


def _wait_for_line(relay: Relay, needle: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if needle in relay.log_text():
            return
        time.sleep(0.05)
    raise AssertionError(f"no log line with {needle!r}:\n{relay.log_text()[-3000:]}")


@pytest.mark.integration
def test_relay_json_logs_parse_and_carry_fields(
    relay_factory: RelayFactory,
) -> None:
    relay = relay_factory(
        extra_env={
            "HLSRELAY_LOG_FORMAT": "json",
            "HLSRELAY_LOG_LEVEL": "debug",
            "HLSRELAY_AUTH_TOKEN": TOKENS[0],
        }
    )
    auth = {"Authorization": f"Bearer {TOKENS[0]}"}
    segment = httpx.put(
        relay.base_url_for("LiveApp", "cam1/seg_0.ts"),
        content=b"s" * 5000,
        headers=auth,
    )
    playlist = httpx.put(
        relay.base_url_for("LiveApp", "cam1/index.m3u8"),
        content=b"#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2,\nseg_0.ts\n",
        headers=auth,
    )
    refused = httpx.put(relay.base_url_for("LiveApp", "cam1/x.exe"), content=b"x")
    assert (segment.status_code, playlist.status_code) == (201, 201)
    assert refused.status_code == 401
    _wait_for_line(relay, "published playlist")
    relay.terminate()

    entries = [json.loads(line) for line in _relay_lines(relay)]
    for entry in entries:
        assert {"time", "level", "logger", "event", "message"} <= entry.keys()
    loggers = {entry["logger"] for entry in entries}
    assert {"uvicorn", "app.main", "app.access", "app.uploader"} <= loggers
    assert entries[-1]["event"].startswith("Finished server process")

    access = [
        e for e in entries if e["logger"] == "app.access" and e["method"] == "PUT"
    ]
    assert [e["status"] for e in access] == [201, 201, 401]
    seg_line = access[0]
    assert seg_line["request_id"] == segment.headers["x-request-id"]
    assert seg_line["application"] == "LiveApp"
    assert seg_line["route"] == "/{application}/hls-upload/{path}"
    assert isinstance(seg_line["duration"], float)
    assert seg_line["bytes_in"] == 5000

    # The debug line of the same request shares its id and names the key.
    spooled = [e for e in entries if e["event"] == "spooled"]
    assert spooled[0]["key"] == "streams/cam1/seg_0.ts"
    assert spooled[0]["request_id"] == seg_line["request_id"]
    published = [e for e in entries if e["event"] == "published playlist"]
    assert published[0]["key"] == "streams/cam1/index.m3u8"
    assert published[0]["application"] == "LiveApp"
    # Its size, and how long it waited in the barrier for its segment.
    assert published[0]["bytes"] == len(playlist.request.content)
    assert isinstance(published[0]["waited_ms"], int)
    assert 0 <= published[0]["waited_ms"] < 30_000
    # Published from a background task: it must not borrow a request's id.
    assert "request_id" not in published[0]


@pytest.mark.integration
def test_relay_logs_hold_no_configured_secret(relay_factory: RelayFactory) -> None:
    secrets = {
        "HLSRELAY_AUTH_TOKEN": ",".join(TOKENS),
        "HLSRELAY_BASIC_AUTH": BASIC,
        "HLSRELAY_LOG_LEVEL": "debug",
    }
    good = relay_factory(extra_env={**secrets, "HLSRELAY_LOG_FORMAT": "json"})
    # A second relay whose S3 secret is wrong: S3 refuses every upload, so
    # the error paths log too.
    bad_s3 = relay_factory(
        extra_env={
            **secrets,
            "HLSRELAY_S3_SECRET_KEY": S3_SECRET,
            "HLSRELAY_SHUTDOWN_GRACE_S": "1",
        }
    )
    good_basic = (BASIC_USER, BASIC_PASSWORD)
    for relay in (good, bad_s3):
        url = relay.base_url_for("LiveApp", "s/seg_0.ts")
        # A configured token in a path: logged paths are redacted too.
        bad_path = f"{relay.url}/LiveApp/hls-upload/{TOKENS[0]}/..%2fx.ts"
        answers = [
            httpx.put(url, content=b"a", headers=_bearer(TOKENS[1])),
            httpx.put(url, content=b"b", auth=good_basic),
            httpx.put(url, content=b"c", auth=(BASIC_USER, TOKENS[0])),
            httpx.put(url, content=b"d", headers=_bearer(S3_SECRET)),
            httpx.put(bad_path, content=b"e", auth=good_basic),
        ]
        assert [a.status_code for a in answers] == [201, 201, 401, 401, 400]
    _wait_for_line(bad_s3, "S3 refused")
    for relay in (good, bad_s3):
        relay.terminate()

    good_text, bad_text = good.log_text(), bad_s3.log_text()
    assert '"event": "request"' in good_text
    assert "SignatureDoesNotMatch" in bad_text or "AccessDenied" in bad_text
    _assert_no_secret(good_text)
    _assert_no_secret(bad_text)
    # The real S3 secret of the first relay must not show either.
    assert good.env["HLSRELAY_S3_SECRET_KEY"] not in good_text


@pytest.mark.integration
def test_relay_refusing_to_start_logs_no_secret(tmp_path: Path) -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "HLSRELAY_S3_SECRET_KEY": S3_SECRET,
        "HLSRELAY_S3_ACCESS_KEY": "AKIDEXAMPLE",
        "HLSRELAY_BASIC_AUTH": BASIC,
        "HLSRELAY_LOG_LEVEL": "debug",
        "HLSRELAY_SPOOL_DIR": str(tmp_path / "spool"),
    }
    result = subprocess.run(
        [sys.executable, "-m", "app", "serve", "--port", str(free_port())],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 2
    assert "HLSRELAY_S3_BUCKET" in result.stderr
    _assert_no_secret(result.stdout + result.stderr)
