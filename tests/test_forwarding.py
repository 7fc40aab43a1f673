"""HTTP forwarding (SPEC, C14, C15): which requests are redirected, where to, with
which CORS answers, and which settings are refused or warned about at start."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import pytest
from conftest import REPO_ROOT, RelayFactory
from pydantic import ValidationError

from app import cli
from app.config import Settings
from app.forwarding import REDIRECT_STATUS
from app.main import create_app

BASE = "https://live-bucket.s3.eu-west-1.amazonaws.com"


@pytest.fixture(autouse=True)
def _no_operator_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # A developer's own HLSRELAY_* settings must not change what is tested.
    for name in list(os.environ):
        if name.startswith("HLSRELAY_"):
            monkeypatch.delenv(name)


def make_settings(**values: Any) -> Settings:
    """Settings from keyword values, as the environment would give them."""
    return Settings(**values)


def _settings(tmp_path: Path, **values: Any) -> Settings:
    values.setdefault("forward_extensions", "mp4, m3u8,ts")
    values.setdefault("forward_base_url", BASE)
    return make_settings(
        spool_dir=tmp_path / "spool", s3_bucket="live-bucket", **values
    )


@pytest.fixture
def client_for(tmp_path: Path) -> Iterator[Any]:
    clients: list[httpx.AsyncClient] = []

    def make(**values: Any) -> httpx.AsyncClient:
        app = create_app(_settings(tmp_path, **values))
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://relay.test"
        )
        clients.append(client)
        return client

    yield make


async def _raw_request(
    app: Any, raw_path: bytes, method: str = "GET"
) -> tuple[int, dict[str, str], bytes]:
    """Call the ASGI app with a path no client library would normalise."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": unquote(raw_path.decode("latin-1")),
        "raw_path": raw_path,
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"relay.test")],
        "client": ("127.0.0.1", 40000),
        "server": ("relay.test", 80),
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start = sent[0]
    headers = {k.decode(): v.decode() for k, v in start["headers"]}
    body = b"".join(m.get("body", b"") for m in sent[1:])
    return start["status"], headers, body


# -- where requests go -----------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("path", "key"),
    [
        ("a.m3u8", "streams/a.m3u8"),
        ("sub/b.ts", "streams/sub/b.ts"),
        ("vod.mp4", "streams/vod.mp4"),
        ("live_0/deep/er/stream123_360p800kbps0001.ts", None),
    ],
)
async def test_forwarding_redirects_forwarded_file_to_its_key(
    client_for: Any, path: str, key: str | None
) -> None:
    client = client_for()

    response = await client.get(f"/LiveApp/streams/{path}")

    assert response.status_code == REDIRECT_STATUS == 302
    assert response.headers["location"] == f"{BASE}/{key or 'streams/' + path}"


@pytest.mark.anyio
async def test_forwarding_matches_extension_case_insensitively(
    client_for: Any,
) -> None:
    client = client_for()

    response = await client.get("/LiveApp/streams/A.M3U8")

    assert response.status_code == 302
    # The key keeps the name's own case: S3 keys are case-sensitive.
    assert response.headers["location"] == f"{BASE}/streams/A.M3U8"


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("path", "forwarded"),
    [
        ("a.png.m3u8", True),
        ("a.m3u8.png", False),
        ("a.ts.txt", False),
        ("m3u8", False),
        ("sub.m3u8/a", False),
        ("a.", False),
    ],
)
async def test_forwarding_uses_extension_after_last_dot(
    client_for: Any, path: str, forwarded: bool
) -> None:
    client = client_for()

    response = await client.get(f"/LiveApp/streams/{path}")

    assert response.status_code == (302 if forwarded else 404)
    if not forwarded:
        assert response.json()["error"] == "not_found"
        assert "location" not in response.headers


@pytest.mark.anyio
@pytest.mark.parametrize(
    "query",
    [
        "token=T",
        "token=a%2Fb%3D%3D&expires=1700000000",
        "Signature=x~y_z&Key-Pair-Id=K",
    ],
)
async def test_forwarding_keeps_query_string_byte_exact(
    client_for: Any, query: str
) -> None:
    client = client_for()

    response = await client.get(f"/LiveApp/streams/a.m3u8?{query}")

    assert response.status_code == 302
    assert response.headers["location"] == f"{BASE}/streams/a.m3u8?{query}"


@pytest.mark.anyio
async def test_forwarding_head_is_redirected_like_get(client_for: Any) -> None:
    client = client_for()

    got = await client.get("/LiveApp/streams/sub/b.ts?token=T")
    head = await client.head("/LiveApp/streams/sub/b.ts?token=T")

    assert head.status_code == got.status_code == 302
    assert head.headers["location"] == got.headers["location"]
    assert head.content == b""


@pytest.mark.anyio
async def test_forwarding_follows_key_template(client_for: Any) -> None:
    client = client_for(key_template="live/{app}/{path}")

    response = await client.get("/LiveApp/streams/sub/b.ts")

    assert response.headers["location"] == f"{BASE}/live/LiveApp/sub/b.ts"


@pytest.mark.anyio
async def test_forwarding_keeps_base_url_path(client_for: Any) -> None:
    client = client_for(forward_base_url="https://cdn.example/media/")

    response = await client.get("/LiveApp/streams/a.m3u8")

    assert response.headers["location"] == "https://cdn.example/media/streams/a.m3u8"


# -- what is not forwarded -------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    "path",
    [
        "/LiveApp/rest/v2/broadcasts/stats",
        "/LiveApp/stream/a.m3u8",
        "/streams/a.m3u8",
        "/LiveApp/hls-upload/a.ts",
    ],
)
async def test_forwarding_outside_streams_path_is_json_404(
    client_for: Any, path: str
) -> None:
    client = client_for()

    response = await client.get(path)

    assert response.status_code in (404, 405)
    assert "location" not in response.headers
    assert set(response.json()) == {"error", "detail"}


@pytest.mark.anyio
async def test_forwarding_extension_not_listed_is_404(client_for: Any) -> None:
    client = client_for()

    response = await client.get("/LiveApp/streams/preview.png")

    assert response.status_code == 404
    assert "HLSRELAY_FORWARD_EXTENSIONS" in response.json()["detail"]


@pytest.mark.anyio
async def test_forwarding_off_answers_404(client_for: Any) -> None:
    client = client_for(forward_extensions="", forward_base_url="")

    response = await client.get("/LiveApp/streams/a.m3u8")

    assert response.status_code == 404
    assert "HLSRELAY_FORWARD_BASE_URL" in response.json()["detail"]


@pytest.mark.anyio
@pytest.mark.parametrize(
    "raw_path",
    [
        b"/LiveApp/streams/../conf/x.mp4",
        b"/LiveApp/streams/%2e%2e/conf/x.mp4",
        b"/LiveApp/streams/%2E%2E/conf/x.mp4",
        b"/LiveApp/streams/sub/../../conf/x.mp4",
        b"/LiveApp/streams/..%2fconf/x.mp4",
        b"/LiveApp/streams/a%5c..%5cx.mp4",
        b"/LiveApp/streams/./x.mp4",
        b"/LiveApp/streams//x.mp4",
        b"/LiveApp/streams/a%00.mp4",
    ],
)
async def test_forwarding_refuses_traversal_with_400(
    tmp_path: Path, raw_path: bytes
) -> None:
    app = create_app(_settings(tmp_path))

    status, headers, body = await _raw_request(app, raw_path)

    assert status == 400
    assert "location" not in headers
    assert b'"invalid_path"' in body


@pytest.mark.anyio
async def test_forwarding_refuses_bad_application_with_400(tmp_path: Path) -> None:
    app = create_app(_settings(tmp_path))

    status, headers, _ = await _raw_request(app, b"/Live%20App/streams/a.m3u8")

    assert status == 400
    assert "location" not in headers


# -- CORS ------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("method", ["GET", "HEAD"])
async def test_forwarding_redirect_carries_cors_for_allowed_origin(
    client_for: Any, method: str
) -> None:
    client = client_for(cors_origins=" https://Player.example/ , https://b.example")

    response = await client.request(
        method, "/LiveApp/streams/a.m3u8", headers={"Origin": "https://player.example"}
    )

    assert response.status_code == 302
    assert response.headers["access-control-allow-origin"] == "https://player.example"
    assert "Origin" in response.headers["vary"]


@pytest.mark.anyio
async def test_forwarding_redirect_has_no_cors_for_other_origin(
    client_for: Any,
) -> None:
    client = client_for(cors_origins="https://player.example")

    response = await client.get(
        "/LiveApp/streams/a.m3u8", headers={"Origin": "https://evil.example"}
    )

    # Still redirected (only a browser enforces CORS), but not readable there.
    assert response.status_code == 302
    assert "access-control-allow-origin" not in response.headers
    assert response.headers["vary"] == "Origin"


@pytest.mark.anyio
async def test_forwarding_any_origin_gets_star(client_for: Any) -> None:
    client = client_for(cors_origins="*")

    response = await client.get(
        "/LiveApp/streams/a.m3u8", headers={"Origin": "https://anyone.example"}
    )

    assert response.headers["access-control-allow-origin"] == "*"


@pytest.mark.anyio
async def test_forwarding_without_cors_origins_sends_no_cors(client_for: Any) -> None:
    client = client_for()

    response = await client.get(
        "/LiveApp/streams/a.m3u8", headers={"Origin": "https://player.example"}
    )

    assert response.status_code == 302
    assert not any(h.startswith("access-control-") for h in response.headers)


@pytest.mark.anyio
async def test_forwarding_preflight_answered_for_allowed_origin(
    client_for: Any,
) -> None:
    client = client_for(cors_origins="https://player.example")

    response = await client.options(
        "/LiveApp/streams/sub/b.ts",
        headers={
            "Origin": "https://player.example",
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "range, x-playback-session-id",
        },
    )

    assert response.status_code == 204
    headers = response.headers
    assert headers["access-control-allow-origin"] == "https://player.example"
    assert {"GET", "HEAD"} <= set(headers["access-control-allow-methods"].split(", "))
    assert headers["access-control-allow-headers"] == "range, x-playback-session-id"
    assert int(headers["access-control-max-age"]) > 0
    assert "Origin" in headers["vary"]


@pytest.mark.anyio
async def test_forwarding_preflight_refused_for_other_origin(client_for: Any) -> None:
    client = client_for(cors_origins="https://player.example")

    response = await client.options(
        "/LiveApp/streams/a.m3u8",
        headers={
            "Origin": "https://evil.example",
            "Access-Control-Request-Method": "GET",
        },
    )

    assert response.status_code == 403
    assert "access-control-allow-origin" not in response.headers
    assert "HLSRELAY_CORS_ORIGINS" in response.json()["detail"]


@pytest.mark.anyio
async def test_forwarding_preflight_drops_malformed_header_list(
    client_for: Any,
) -> None:
    client = client_for(cors_origins="https://player.example")

    response = await client.options(
        "/LiveApp/streams/a.m3u8",
        headers={
            "Origin": "https://player.example",
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "range; evil=1",
        },
    )

    assert response.status_code == 204
    assert "access-control-allow-headers" not in response.headers


@pytest.mark.anyio
async def test_forwarding_plain_options_lists_methods(client_for: Any) -> None:
    client = client_for()

    response = await client.options("/LiveApp/streams/a.m3u8")

    assert response.status_code == 204
    assert response.headers["allow"] == "GET, HEAD, OPTIONS"


@pytest.mark.anyio
async def test_forwarding_preflight_of_unforwarded_file_is_404(
    client_for: Any,
) -> None:
    client = client_for(cors_origins="https://player.example")

    response = await client.options(
        "/LiveApp/streams/a.png",
        headers={
            "Origin": "https://player.example",
            "Access-Control-Request-Method": "GET",
        },
    )

    assert response.status_code == 404


# -- settings --------------------------------------------------------------


def test_forwarding_settings_ignore_surrounding_white_space(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HLSRELAY_FORWARD_EXTENSIONS", " mp4 ,\tM3U8, .ts ,, ")
    monkeypatch.setenv("HLSRELAY_FORWARD_BASE_URL", "  https://cdn.example/  \n")
    monkeypatch.setenv("HLSRELAY_CORS_ORIGINS", " https://player.example , ")

    settings = make_settings(spool_dir=tmp_path)

    assert settings.forward_extensions == ["mp4", "m3u8", "ts"]
    assert settings.forward_base_url == "https://cdn.example"
    assert settings.cors_origins == ["https://player.example"]


@pytest.mark.anyio
async def test_forwarding_with_white_space_in_env_redirects_cleanly(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HLSRELAY_FORWARD_EXTENSIONS", " mp4, m3u8 ,ts ")
    monkeypatch.setenv("HLSRELAY_FORWARD_BASE_URL", " https://cdn.example/ ")
    app = create_app(make_settings(spool_dir=tmp_path, s3_bucket="b"))

    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://relay.test"
    ) as client:
        m3u8 = await client.get("/LiveApp/streams/a.m3u8")
        ts = await client.get("/LiveApp/streams/a.ts")

    assert m3u8.headers["location"] == "https://cdn.example/streams/a.m3u8"
    assert ts.headers["location"] == "https://cdn.example/streams/a.ts"


@pytest.mark.parametrize(
    "url",
    [
        "cdn.example",
        "//cdn.example",
        "/streams",
        "ftp://cdn.example",
        "https://",
        "https:///path",
        "https://cdn.example/?token=1",
        "https://cdn.example/#x",
        "https://cdn example",
    ],
)
def test_forwarding_base_url_not_absolute_http_is_refused(
    tmp_path: Path, url: str
) -> None:
    with pytest.raises(ValidationError, match="forward_base_url"):
        make_settings(
            spool_dir=tmp_path, forward_base_url=url, forward_extensions="m3u8"
        )


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8333/live-bucket", "https://cdn.example", " https://x/ "]
)
def test_forwarding_base_url_absolute_http_is_accepted(
    tmp_path: Path, url: str
) -> None:
    settings = make_settings(spool_dir=tmp_path, forward_base_url=url)

    assert settings.forward_base_url == url.strip().rstrip("/")


def test_forwarding_extensions_without_base_url_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="HLSRELAY_FORWARD_BASE_URL"):
        make_settings(spool_dir=tmp_path, forward_extensions="m3u8,ts")


@pytest.mark.parametrize("extensions", ["m3u8 ts", "m3u8;ts", "*.ts"])
def test_forwarding_extension_list_must_be_comma_separated(
    tmp_path: Path, extensions: str
) -> None:
    with pytest.raises(ValidationError, match="comma-separated"):
        make_settings(
            spool_dir=tmp_path, forward_base_url=BASE, forward_extensions=extensions
        )


@pytest.mark.parametrize(
    "origin", ["player.example", "https://player.example/app", "null"]
)
def test_forwarding_cors_origin_must_be_an_origin(tmp_path: Path, origin: str) -> None:
    with pytest.raises(ValidationError, match="not an origin"):
        make_settings(spool_dir=tmp_path, cors_origins=origin)


def test_forwarding_bad_base_url_stops_serve_with_clear_message(
    tmp_path: Path,
) -> None:
    with pytest.raises(SystemExit) as stopped:
        cli.main(
            [
                "serve",
                "--s3-bucket",
                "b",
                "--spool-dir",
                str(tmp_path),
                "--forward-base-url",
                "live-bucket.s3.amazonaws.com",
            ]
        )

    message = str(stopped.value.code)
    assert "HLSRELAY_FORWARD_BASE_URL" in message
    assert "absolute http(s) URL" in message


def test_forwarding_warns_at_start_when_m3u8_not_forwarded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="app.forwarding"):
        create_app(_settings(tmp_path, forward_extensions="mp4,ts"))

    assert any("m3u8 is not in" in r.getMessage() for r in caplog.records)


def test_forwarding_no_warning_when_m3u8_forwarded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="app.forwarding"):
        create_app(_settings(tmp_path, forward_extensions="mp4, M3U8,ts"))
        create_app(_settings(tmp_path, forward_extensions="", forward_base_url=""))

    assert not [r for r in caplog.records if r.name == "app.forwarding"]


def test_forwarding_no_warning_when_playlists_not_uploaded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="app.forwarding"):
        create_app(_settings(tmp_path, forward_extensions="mp4", extensions="mp4,png"))

    assert not [r for r in caplog.records if r.name == "app.forwarding"]


# -- the real server -------------------------------------------------------


def _raw_http(
    port: int, request_line: str, headers: str = ""
) -> tuple[int, dict[str, str]]:
    """Send a request line as written: no client normalises its path."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(
            f"{request_line} HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}"
            "Connection: close\r\n\r\n".encode("latin-1")
        )
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    status_line, *lines = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    fields = dict(line.split(": ", 1) for line in lines)
    return int(status_line.split(" ", 2)[1]), {k.lower(): v for k, v in fields.items()}


@pytest.mark.integration
def test_forwarding_through_uvicorn_refuses_raw_traversal(
    relay_factory: RelayFactory,
) -> None:
    relay = relay_factory(
        extra_env={
            "HLSRELAY_FORWARD_EXTENSIONS": "mp4, m3u8,ts",
            "HLSRELAY_FORWARD_BASE_URL": f" {BASE}/ ",
            "HLSRELAY_CORS_ORIGINS": "https://player.example",
        }
    )

    dotted, _ = _raw_http(relay.port, "GET /LiveApp/streams/../conf/x.mp4")
    encoded, _ = _raw_http(relay.port, "GET /LiveApp/streams/%2e%2e/conf/x.mp4")
    status, headers = _raw_http(
        relay.port,
        "GET /LiveApp/streams/sub/b.ts?token=T",
        "Origin: https://player.example\r\n",
    )

    assert dotted == encoded == 400
    assert status == 302
    assert headers["location"] == f"{BASE}/streams/sub/b.ts?token=T"
    assert headers["access-control-allow-origin"] == "https://player.example"
    # The signed token never reaches the log.
    assert "token=T" not in relay.log_text()


@pytest.mark.integration
def test_forwarding_serve_warns_and_refuses_at_start(
    relay_factory: RelayFactory, tmp_path: Path
) -> None:
    relay = relay_factory(
        extra_env={
            "HLSRELAY_FORWARD_EXTENSIONS": "mp4,ts",
            "HLSRELAY_FORWARD_BASE_URL": BASE,
        }
    )
    assert "m3u8 is not in HLSRELAY_FORWARD_EXTENSIONS" in relay.log_text()

    env = dict(relay.env, HLSRELAY_FORWARD_BASE_URL="s3.amazonaws.com/live-bucket")
    refused = subprocess.run(
        [sys.executable, "-m", "app", "serve", "--port", "1"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert refused.returncode != 0
    assert "HLSRELAY_FORWARD_BASE_URL" in refused.stderr
    assert "absolute http(s) URL" in refused.stderr
