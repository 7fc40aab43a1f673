"""Who may write: each authentication mode alone and combined, against real
relays; ffmpeg itself pushing with URL credentials; the start-up refusal on a
non-loopback address; and the client address rule behind trusted proxies."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from conftest import REPO_ROOT, FFmpeg, Relay, RelayFactory, free_port
from fastapi import FastAPI
from rawhttp import bucket_keys, read_until_closed, wait_settled

from app import locals3
from app.auth import FOLLOW_UP_S, client_address, parse_networks
from app.config import Settings
from app.main import create_app

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

    from app.locals3 import LocalS3

TOKENS = ("old-token-4f2a9c", "new-token-77d1e0")
USER, PASSWORD = "encoder", "p@ss:w0rd-9z"


def basic(user: str, password: str) -> dict[str, str]:
    pair = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {pair}"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def put(
    relay: Relay, path: str, headers: dict[str, str] | None = None
) -> httpx.Response:
    return httpx.put(
        relay.base_url_for("LiveApp", path),
        content=b"data",
        headers=headers,
        timeout=30,
    )


def assert_refused(response: httpx.Response, status: int, error: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["error"] == error


def assert_no_secret_logged(relay: Relay, *secrets: str) -> None:
    text = relay.log_text()
    for secret in secrets:
        assert secret not in text
        assert base64.b64encode(secret.encode()).decode() not in text


# -- client addresses ------------------------------------------------------


def scope(peer: str, *forwarded: str) -> dict[str, object]:
    headers = [(b"x-forwarded-for", value.encode()) for value in forwarded]
    return {"type": "http", "client": (peer, 40000), "headers": headers}


PROXIES = parse_networks(["127.0.0.1/32", "10.9.0.0/16"])


@pytest.mark.parametrize(
    ("peer", "forwarded", "expected"),
    [
        # No trusted proxy in front: the header proves nothing.
        ("192.0.2.7", ["10.1.1.1"], "192.0.2.7"),
        # The proxy's own append is the client; what the client wrote is not.
        ("127.0.0.1", ["10.1.1.1, 192.0.2.7"], "192.0.2.7"),
        ("127.0.0.1", ["192.0.2.7, 10.1.1.1"], "10.1.1.1"),
        # Two proxies in a row: skip both, from the right.
        ("127.0.0.1", ["198.51.100.3, 10.9.4.4"], "198.51.100.3"),
        # Several header lines read as one list.
        ("127.0.0.1", ["198.51.100.3", "10.9.4.4"], "198.51.100.3"),
        # Every hop a trusted proxy: the first one is the client.
        ("127.0.0.1", ["10.9.1.1, 10.9.2.2"], "10.9.1.1"),
        # A proxy that sent no header, or an empty one: the proxy itself.
        ("127.0.0.1", [], "127.0.0.1"),
        ("127.0.0.1", [""], "127.0.0.1"),
        ("127.0.0.1", ["198.51.100.3, "], "198.51.100.3"),
        # Ports and brackets are not part of the address.
        ("127.0.0.1", ["[2001:db8::5]:443"], "2001:db8::5"),
        ("127.0.0.1", ["203.0.113.9:5555"], "203.0.113.9"),
        # An unreadable hop is no address at all: no network contains it.
        ("127.0.0.1", ["10.1.1.1, not-an-ip"], ""),
        # A dual-stack socket reports IPv4 peers as mapped IPv6.
        ("::ffff:192.0.2.7", [], "192.0.2.7"),
        ("::ffff:127.0.0.1", ["198.51.100.3"], "198.51.100.3"),
    ],
)
def test_client_address_believes_forwarded_for_only_from_trusted_proxies(
    peer: str, forwarded: list[str], expected: str
) -> None:
    assert client_address(scope(peer, *forwarded), PROXIES) == expected


def test_client_address_without_trusted_proxies_is_the_peer() -> None:
    assert client_address(scope("127.0.0.1", "10.1.1.1"), []) == "127.0.0.1"


@pytest.mark.anyio
async def test_auth_check_runs_on_the_event_loop_so_arrival_order_holds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A check run in a worker thread lets a later request overtake an earlier
    # one before either is given its sequence number; then an older playlist
    # version is published over a newer one (seen with append_list runs).
    app = create_app(
        Settings(s3_bucket="b", spool_dir=tmp_path, auth_token=[TOKENS[0]])
    )
    guard = app.state.relay.guard
    threads: list[int] = []
    check = guard.check

    def recording_check(request: Any) -> None:
        threads.append(threading.get_ident())
        check(request)

    monkeypatch.setattr(guard, "check", recording_check)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.put("/LiveApp/hls-upload/a.ts", content=b"x")

    assert response.status_code == 401
    assert threads == [threading.get_ident()]


def access_levels(caplog: pytest.LogCaptureFixture, status: int) -> list[str]:
    return [
        record.levelname
        for record in caplog.records
        if record.name == "app.access" and f" status={status} " in record.getMessage()
    ]


def basic_auth_client(
    tmp_path: Path, address: str
) -> tuple[FastAPI, httpx.AsyncClient]:
    # No lifespan runs: the HTTP layer alone, with the client at `address`.
    app = create_app(
        Settings(s3_bucket="b", spool_dir=tmp_path, basic_auth=f"{USER}:{PASSWORD}")
    )
    transport = httpx.ASGITransport(app=app, client=(address, 40000))
    return app, httpx.AsyncClient(transport=transport, base_url="http://t")


@pytest.mark.anyio
async def test_auth_challenge_is_debug_when_retried_and_info_when_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # ffmpeg is answered 401 before every file it sends on a new connection:
    # two access lines a file at INFO would hide the one that matters. But an
    # encoder that sends no credentials must stay seen, also beside a good
    # one on the same address (one host, or a NAT).
    monkeypatch.setattr("app.auth.FOLLOW_UP_S", 1.0)
    caplog.set_level(logging.DEBUG)
    app, client = basic_auth_client(tmp_path, "192.0.2.7")
    async with client:
        # A known extension would need the uploader; .exe is refused after auth.
        challenged = await client.put("/LiveApp/hls-upload/a.exe", content=b"x")
        retried = await client.put(
            "/LiveApp/hls-upload/a.exe", content=b"x", headers=basic(USER, PASSWORD)
        )
        forgotten = await client.put("/LiveApp/hls-upload/b.ts", content=b"x")
        # A retry with the wrong password is its own warning, not "none sent".
        await client.put("/LiveApp/hls-upload/c.ts", content=b"x")
        await client.put(
            "/LiveApp/hls-upload/c.ts", content=b"x", headers=basic(USER, "wrong")
        )
        await asyncio.sleep(1.5)
        metrics = (await client.get("/metrics")).text
        # Still waiting when the relay stops: told then, as no retry can come.
        await client.put("/LiveApp/hls-upload/d.ts", content=b"x")
        app.state.relay.guard.close()

    assert [r.status_code for r in (challenged, retried, forgotten)] == [401, 415, 401]
    assert access_levels(caplog, 401) == ["DEBUG", "DEBUG", "DEBUG", "INFO", "DEBUG"]
    unanswered = [
        r.getMessage()
        for r in caplog.records
        if r.name == "app.auth" and r.levelname == "INFO"
    ]
    assert unanswered == [
        "refused request without credentials client=192.0.2.7 "
        "path=/LiveApp/hls-upload/b.ts status=401: no request with credentials "
        "followed within 1s; does the encoder send any?",
        "refused request without credentials client=192.0.2.7 "
        "path=/LiveApp/hls-upload/d.ts status=401: the relay stopped before a "
        "retry came; does the encoder send any?",
    ]
    assert "refused credentials client=192.0.2.7 scheme=basic" in caplog.text
    assert "hlsrelay_auth_challenges_unanswered_total 1.0" in metrics


@pytest.mark.anyio
async def test_auth_challenges_past_the_pending_limit_are_info_lines_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr("app.auth.MAX_PENDING_CHALLENGES", 2)
    caplog.set_level(logging.DEBUG, logger="app.access")
    _, client = basic_auth_client(tmp_path, "192.0.2.9")
    async with client:
        for name in ("a", "a", "b", "c", "d"):
            answer = await client.put(f"/LiveApp/hls-upload/{name}.ts", content=b"x")
            assert answer.status_code == 401
        metrics = (await client.get("/metrics")).text

    # "a" asked twice is one pending challenge; "b" fills the two; then INFO,
    # counted at once since no retry is watched for.
    assert access_levels(caplog, 401) == ["DEBUG", "DEBUG", "DEBUG", "INFO", "INFO"]
    assert "hlsrelay_auth_challenges_unanswered_total 2.0" in metrics


# -- modes, against real relays --------------------------------------------


@pytest.mark.integration
def test_auth_tokens_and_basic_each_let_a_writer_in(
    relay_factory: RelayFactory, local_s3: LocalS3, bucket: str
) -> None:
    relay = relay_factory(
        extra_env={
            "HLSRELAY_AUTH_TOKEN": ",".join(TOKENS),
            "HLSRELAY_BASIC_AUTH": f"{USER}:{PASSWORD}",
        }
    )

    # Either token works, so an operator can roll encoders from one to the
    # other without a stream dropping.
    old = put(relay, "old.ts", bearer(TOKENS[0]))
    new = put(relay, "new.ts", bearer(TOKENS[1]))
    with_basic = put(relay, "basic.ts", basic(USER, PASSWORD))
    scheme_case = put(relay, "case.ts", {"Authorization": f"bearer {TOKENS[0]}"})
    missing = put(relay, "missing.ts")
    wrong_token = put(relay, "wrong.ts", bearer(TOKENS[0] + "x"))
    prefix_token = put(relay, "prefix.ts", bearer(TOKENS[0][:-1]))
    wrong_password = put(relay, "wrongpw.ts", basic(USER, PASSWORD + "x"))
    wrong_user = put(relay, "wronguser.ts", basic("other", PASSWORD))
    garbage = put(relay, "garbage.ts", {"Authorization": "Basic !!!not-base64"})
    other_scheme = put(relay, "digest.ts", {"Authorization": "Digest x=1"})

    assert [r.status_code for r in (old, new, with_basic, scheme_case)] == [201] * 4
    for refused in (
        missing,
        wrong_token,
        prefix_token,
        wrong_password,
        wrong_user,
        garbage,
        other_scheme,
    ):
        assert_refused(refused, 401, "unauthorized")
        challenge = refused.headers["www-authenticate"]
        assert challenge.startswith('Basic realm="hlsrelay"')
        assert 'Bearer realm="hlsrelay"' in challenge
    wait_settled(relay)
    keys = bucket_keys(local_s3.client(), bucket)
    assert keys == {f"streams/{n}.ts" for n in ("old", "new", "basic", "case")}
    assert_no_secret_logged(relay, *TOKENS, PASSWORD, f"{USER}:{PASSWORD}")
    assert "refused credentials client=127.0.0.1 scheme=bearer" in relay.log_text()


@pytest.mark.integration
def test_auth_challenge_names_only_the_configured_scheme(
    relay_factory: RelayFactory,
) -> None:
    basic_only = relay_factory(extra_env={"HLSRELAY_BASIC_AUTH": f"{USER}:{PASSWORD}"})
    token_only = relay_factory(extra_env={"HLSRELAY_AUTH_TOKEN": TOKENS[0]})

    token_at_basic = put(basic_only, "a.ts", bearer(TOKENS[0]))
    basic_at_token = put(token_only, "a.ts", basic(USER, PASSWORD))

    assert_refused(token_at_basic, 401, "unauthorized")
    assert token_at_basic.headers["www-authenticate"] == (
        'Basic realm="hlsrelay", charset="UTF-8"'
    )
    assert_refused(basic_at_token, 401, "unauthorized")
    assert basic_at_token.headers["www-authenticate"] == 'Bearer realm="hlsrelay"'


@pytest.mark.integration
def test_auth_networks_alone_gate_by_address_and_ignore_forwarded_for(
    relay_factory: RelayFactory,
) -> None:
    inside = relay_factory(extra_env={"HLSRELAY_ALLOW_CIDRS": "127.0.0.0/8"})
    outside = relay_factory(extra_env={"HLSRELAY_ALLOW_CIDRS": "10.0.0.0/8"})

    allowed = put(inside, "a.ts")
    refused = put(outside, "a.ts")
    # With no trusted proxy configured, a client cannot claim another address
    # (uvicorn's own default would believe this header from 127.0.0.1).
    spoofed = put(outside, "b.ts", {"X-Forwarded-For": "10.1.2.3"})

    assert allowed.status_code == 201
    assert_refused(refused, 403, "forbidden")
    assert "www-authenticate" not in refused.headers
    assert_refused(spoofed, 403, "forbidden")
    assert "not in HLSRELAY_ALLOW_CIDRS" in outside.log_text()


@pytest.mark.integration
def test_auth_networks_and_token_together_need_both(
    relay_factory: RelayFactory,
) -> None:
    relay = relay_factory(
        extra_env={
            "HLSRELAY_ALLOW_CIDRS": "10.0.0.0/8",
            "HLSRELAY_TRUSTED_PROXIES": "127.0.0.1",
            "HLSRELAY_AUTH_TOKEN": TOKENS[0],
        }
    )
    inside = {"X-Forwarded-For": "10.1.2.3"}

    both = put(relay, "both.ts", {**inside, **bearer(TOKENS[0])})
    no_token = put(relay, "notoken.ts", inside)
    outside_with_token = put(
        relay, "outside.ts", {"X-Forwarded-For": "192.0.2.1", **bearer(TOKENS[0])}
    )
    # The client wrote 10.1.2.3 itself; the proxy appended the real address.
    forged = put(
        relay,
        "forged.ts",
        {"X-Forwarded-For": "10.1.2.3, 192.0.2.1", **bearer(TOKENS[0])},
    )

    assert both.status_code == 201, both.text
    assert_refused(no_token, 401, "unauthorized")
    assert_refused(outside_with_token, 403, "forbidden")
    assert_refused(forged, 403, "forbidden")


@pytest.mark.integration
def test_auth_health_and_forwarding_are_public_and_metrics_only_when_asked(
    relay_factory: RelayFactory,
) -> None:
    forwarding = {
        "HLSRELAY_FORWARD_EXTENSIONS": "m3u8,ts",
        "HLSRELAY_FORWARD_BASE_URL": "https://cdn.example/live",
    }
    open_metrics = relay_factory(
        extra_env={"HLSRELAY_AUTH_TOKEN": TOKENS[0], **forwarding}
    )
    closed_metrics = relay_factory(
        extra_env={
            "HLSRELAY_AUTH_TOKEN": TOKENS[0],
            "HLSRELAY_METRICS_AUTH": "true",
            **forwarding,
        }
    )

    for relay in (open_metrics, closed_metrics):
        assert httpx.get(f"{relay.url}/healthz", timeout=10).status_code == 200
        relay.wait_ready()
        # Players read through forwarding with no credentials at all.
        player = httpx.get(f"{relay.url}/LiveApp/streams/live.m3u8", timeout=10)
        assert player.status_code == 302
        assert player.headers["location"].startswith("https://cdn.example/live/")
    public = httpx.get(f"{open_metrics.url}/metrics", timeout=10)
    anonymous = httpx.get(f"{closed_metrics.url}/metrics", timeout=10)
    scraper = httpx.get(
        f"{closed_metrics.url}/metrics", headers=bearer(TOKENS[0]), timeout=10
    )

    assert public.status_code == 200 and "hlsrelay_" in public.text
    assert_refused(anonymous, 401, "unauthorized")
    assert scraper.status_code == 200 and "hlsrelay_" in scraper.text


@pytest.mark.integration
def test_auth_probe_with_expect_100_gets_401_before_any_body(
    relay_factory: RelayFactory,
) -> None:
    # ffmpeg's first try of every file: headers only, then it waits. The
    # relay must say 401 at once and never invite the body with a 100.
    relay = relay_factory(extra_env={"HLSRELAY_BASIC_AUTH": f"{USER}:{PASSWORD}"})
    with socket.create_connection(("127.0.0.1", relay.port), timeout=30) as sock:
        sock.sendall(
            b"PUT /LiveApp/hls-upload/probe.ts HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Expect: 100-continue\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        answer = read_until_closed(sock)

    assert answer.startswith(b"HTTP/1.1 401 "), answer[:200]
    assert b"100 Continue" not in answer
    assert b'www-authenticate: basic realm="hlsrelay"' in answer.lower()


# -- ffmpeg itself -----------------------------------------------------------

X264 = ["-c:v", "libx264", "-preset", "ultrafast", "-g", "25", "-c:a", "aac"]


def push(
    ffmpeg: FFmpeg, url: str, *extra: str, deletes: bool = True
) -> subprocess.CompletedProcess[str]:
    flags = ["-hls_flags", "delete_segments"] if deletes else []
    result = ffmpeg.run(
        *ffmpeg.test_source(seconds=4), *X264,
        "-f", "hls", "-hls_time", "1", "-hls_list_size", "2", *flags, *extra,
        "-method", "PUT", url,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result


def url_with_credentials(relay: Relay, user: str, password: str, path: str) -> str:
    quoted = "".join(
        c if c.isalnum() or c in "-_." else f"%{ord(c):02X}" for c in password
    )
    return relay.base_url_for("LiveApp", path).replace(
        "http://", f"http://{user}:{quoted}@", 1
    )


def wait_for_keys(client: S3Client, bucket: str, wanted: set[str]) -> set[str]:
    deadline = time.monotonic() + 60
    keys: set[str] = set()
    while time.monotonic() < deadline:
        keys = bucket_keys(client, bucket)
        if wanted <= keys:
            return keys
        time.sleep(0.2)
    raise AssertionError(f"missing {sorted(wanted - keys)}; bucket has {sorted(keys)}")


def challenges(relay: Relay, method: str, level: str = r"\w+") -> int:
    line = rf" {level} app\.access request method={method} .* status=401 "
    return len(re.findall(line, relay.log_text()))


@pytest.mark.integration
def test_auth_ffmpeg_pushes_with_url_credentials(
    relay_factory: RelayFactory, local_s3: LocalS3, bucket: str, ffmpeg: FFmpeg
) -> None:
    # ffmpeg 5.1 sends no credentials at first: it asks with Expect:
    # 100-continue, reads the 401 and its Basic challenge, then sends the
    # file on a new connection with Authorization: Basic. The password holds
    # '@' and ':', percent-encoded in the URL as users must.
    relay = relay_factory(
        extra_env={
            "HLSRELAY_BASIC_AUTH": f"{USER}:{PASSWORD}",
            "HLSRELAY_LOG_LEVEL": "debug",
        }
    )
    client = local_s3.client()

    push(ffmpeg, url_with_credentials(relay, USER, PASSWORD, "cred.m3u8"))

    wait_for_keys(client, bucket, {"streams/cred.m3u8", "streams/cred3.ts"})
    wait_settled(relay)
    keys = bucket_keys(client, bucket)
    # delete_segments went through the same challenge: old segments are gone.
    assert "streams/cred0.ts" not in keys
    playlist = client.get_object(Bucket=bucket, Key="streams/cred.m3u8")["Body"].read()
    assert b"#EXT-X-ENDLIST" in playlist
    # One challenge per file: each is a connection of its own.
    assert challenges(relay, "PUT") == relay.log_text().count("status=201 ")
    assert challenges(relay, "DELETE") >= 1

    # A second encoder on the same address that was given no credentials:
    # every file refused, ffmpeg exits 0 all the same.
    push(ffmpeg, relay.base_url_for("LiveApp", "forgot.m3u8"))

    def unanswered_now() -> list[str]:
        return re.findall(
            r" INFO app\.auth refused request without credentials "
            r"client=127\.0\.0\.1 path=/LiveApp/hls-upload/(\S+) status=401",
            relay.log_text(),
        )

    # Told once FOLLOW_UP_S has passed with no retry.
    deadline = time.monotonic() + FOLLOW_UP_S + 30
    while "forgot.m3u8" not in (unanswered := unanswered_now()):
        assert time.monotonic() < deadline, relay.log_text()[-3000:]
        time.sleep(0.1)
    text = relay.log_text()
    # Each challenge that ffmpeg answered was routine: none at INFO.
    assert challenges(relay, r"\w+", "INFO") == 0
    assert unanswered and all(name.startswith("forgot") for name in unanswered)
    assert "forgot.m3u8" in unanswered
    assert "refused credentials" not in text
    assert_no_secret_logged(relay, PASSWORD, f"{USER}:{PASSWORD}")


@pytest.mark.integration
def test_auth_ffmpeg_persistent_connection_is_challenged_once(
    relay_factory: RelayFactory, local_s3: LocalS3, bucket: str, ffmpeg: FFmpeg
) -> None:
    # With -http_persistent 1 the credentials learnt from the first 401 stay
    # with the connection, so every later PUT on it carries them.
    relay = relay_factory(
        extra_env={
            "HLSRELAY_BASIC_AUTH": f"{USER}:{PASSWORD}",
            "HLSRELAY_LOG_LEVEL": "debug",
        }
    )

    push(
        ffmpeg,
        url_with_credentials(relay, USER, PASSWORD, "keep.m3u8"),
        "-http_persistent",
        "1",
        deletes=False,
    )

    # NOTE: only the first files are awaited: ffmpeg closes a persistent
    # connection with answers unread, so the kernel resets it and may drop
    # the last requests before the relay reads them (a transport matter,
    # not an authentication one).
    wait_for_keys(local_s3.client(), bucket, {"streams/keep0.ts", "streams/keep1.ts"})
    assert challenges(relay, "PUT") == 1
    assert "refused credentials" not in relay.log_text()


@pytest.mark.integration
def test_auth_ffmpeg_with_a_wrong_password_stores_nothing(
    relay_factory: RelayFactory, local_s3: LocalS3, bucket: str, ffmpeg: FFmpeg
) -> None:
    relay = relay_factory(extra_env={"HLSRELAY_BASIC_AUTH": f"{USER}:{PASSWORD}"})

    # ffmpeg exits 0 all the same: it never reads an upload's status.
    push(ffmpeg, url_with_credentials(relay, USER, "guess", "nope.m3u8"))

    wait_settled(relay)
    assert bucket_keys(local_s3.client(), bucket) == set()
    assert "refused credentials client=127.0.0.1 scheme=basic" in relay.log_text()


@pytest.mark.integration
def test_auth_ffmpeg_sends_a_bearer_token_with_headers_option(
    relay_factory: RelayFactory, local_s3: LocalS3, bucket: str, ffmpeg: FFmpeg
) -> None:
    relay = relay_factory(extra_env={"HLSRELAY_AUTH_TOKEN": ",".join(TOKENS)})

    push(
        ffmpeg,
        relay.base_url_for("LiveApp", "tok.m3u8"),
        "-headers",
        f"Authorization: Bearer {TOKENS[1]}\r\n",
    )

    wait_for_keys(local_s3.client(), bucket, {"streams/tok.m3u8", "streams/tok3.ts"})
    assert "challenged" not in relay.log_text()


# -- start-up ------------------------------------------------------------------


def serve(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("HLSRELAY_")}
    clean.update(HLSRELAY_S3_BUCKET="any-bucket", HLSRELAY_S3_REGION="us-east-1")
    clean.update(env or {})
    return subprocess.Popen(
        [sys.executable, "-m", "app", "serve", *args],
        cwd=REPO_ROOT,
        env=clean,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.integration
@pytest.mark.parametrize(
    "env",
    [{}, {"HLSRELAY_AUTH_TOKEN": " , "}, {"HLSRELAY_BASIC_AUTH": ""}],
    ids=["nothing", "empty-token-list", "empty-basic"],
)
def test_serve_refuses_a_public_address_without_authentication(
    env: dict[str, str],
) -> None:
    proc = serve("--host", "0.0.0.0", "--port", str(free_port()), env=env)
    output, _ = proc.communicate(timeout=60)

    assert proc.returncode == 2, output
    assert "refusing to listen on 0.0.0.0 with no authentication" in output
    for fix in ("HLSRELAY_AUTH_TOKEN", "HLSRELAY_BASIC_AUTH", "HLSRELAY_ALLOW_CIDRS"):
        assert fix in output
    assert "--allow-anonymous" in output


@pytest.mark.integration
@pytest.mark.parametrize(
    ("args", "env"),
    [
        (["--allow-anonymous"], {}),
        ([], {"HLSRELAY_AUTH_TOKEN": TOKENS[0]}),
        ([], {"HLSRELAY_ALLOW_CIDRS": "127.0.0.0/8"}),
    ],
    ids=["allow-anonymous", "token", "cidrs"],
)
def test_serve_starts_on_a_public_address_when_told_or_protected(
    args: list[str], env: dict[str, str], tmp_path: Path
) -> None:
    port = free_port()
    proc = serve(
        "--host", "0.0.0.0", "--port", str(port), "--spool-dir", str(tmp_path), *args,
        env=env,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        healthy = False
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                healthy = httpx.get(
                    f"http://127.0.0.1:{port}/healthz", timeout=1
                ).is_success
            except httpx.HTTPError:
                healthy = False
            if healthy:
                break
            time.sleep(0.1)
    finally:
        proc.terminate()
        output, _ = proc.communicate(timeout=30)
    assert healthy, output


@pytest.mark.integration
@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"HLSRELAY_BASIC_AUTH": "no-colon-secret"}, "HLSRELAY_BASIC_AUTH"),
        ({"HLSRELAY_AUTH_TOKEN": "two words-secret"}, "HLSRELAY_AUTH_TOKEN"),
        ({"HLSRELAY_ALLOW_CIDRS": "10.0.0.0/33"}, "HLSRELAY_ALLOW_CIDRS"),
        ({"HLSRELAY_TRUSTED_PROXIES": "proxy.local"}, "HLSRELAY_TRUSTED_PROXIES"),
        ({"HLSRELAY_METRICS_AUTH": "true"}, "HLSRELAY_METRICS_AUTH"),
    ],
)
def test_serve_names_the_bad_auth_setting_and_never_echoes_it(
    env: dict[str, str], variable: str
) -> None:
    proc = serve("--port", str(free_port()), env=env)
    output, _ = proc.communicate(timeout=60)

    assert proc.returncode != 0
    assert variable in output
    assert "secret" not in output


# -- make demo against a relay that asks for credentials -------------------


@pytest.mark.integration
def test_make_demo_pushes_with_the_relays_credentials_and_stops_without(
    relay_factory: RelayFactory,
    local_s3: LocalS3,
    bucket: str,
    ffmpeg: FFmpeg,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # ffmpeg exits 0 with every file refused: `make demo` must not say
    # "Done" then, and must push with the relay's credentials when given.
    relay = relay_factory(extra_env={"HLSRELAY_BASIC_AUTH": f"{USER}:{PASSWORD}"})
    monkeypatch.chdir(tmp_path)
    for name in ("HLSRELAY_HOST", "HLSRELAY_AUTH_TOKEN", "HLSRELAY_KEY_TEMPLATE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HLSRELAY_PORT", str(relay.port))
    monkeypatch.setenv("HLSRELAY_S3_BUCKET", bucket)

    monkeypatch.delenv("HLSRELAY_BASIC_AUTH", raising=False)
    assert locals3.demo(seconds=2) == 1
    assert "asks for credentials, and they are needed" in capsys.readouterr().out
    monkeypatch.setenv("HLSRELAY_BASIC_AUTH", f"{USER}:{PASSWORD}x")
    assert locals3.demo(seconds=2) == 1
    assert "they were not accepted" in capsys.readouterr().out
    assert "streams/demo.m3u8" not in bucket_keys(local_s3.client(), bucket)

    monkeypatch.setenv("HLSRELAY_BASIC_AUTH", f"{USER}:{PASSWORD}")
    assert locals3.demo(seconds=2) == 0

    wait_for_keys(local_s3.client(), bucket, {"streams/demo.m3u8"})
    assert PASSWORD not in capsys.readouterr().out


def test_make_demo_credentials_for_ffmpeg(monkeypatch: pytest.MonkeyPatch) -> None:
    # Sent as a header: ffmpeg prints its URL, credentials and all, in every
    # error line.
    basic = locals3._Credentials(basic=f"{USER}:{PASSWORD}")
    pair = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    assert basic.ffmpeg_headers() == ["-headers", f"Authorization: Basic {pair}\r\n"]
    token = locals3._Credentials(token=TOKENS[0])
    assert token.ffmpeg_headers() == [
        "-headers",
        f"Authorization: Bearer {TOKENS[0]}\r\n",
    ]
    assert token.header() == bearer(TOKENS[0])
    assert locals3._Credentials().header() == {}
    assert locals3._Credentials().ffmpeg_headers() == []
    # Stripped as the relay's settings strip them.
    monkeypatch.setenv("HLSRELAY_BASIC_AUTH", f" {USER}:{PASSWORD} ")
    monkeypatch.setenv("HLSRELAY_AUTH_TOKEN", f" {TOKENS[1]} , {TOKENS[0]}")
    from_env = locals3._Credentials.from_env()
    assert (from_env.basic, from_env.token) == (f"{USER}:{PASSWORD}", TOKENS[1])
    # The make run banner says how its ffmpeg line gets past them.
    assert "http://user:password@" in "\n".join(locals3._auth_hint(basic))
    assert "Authorization: Bearer TOKEN" in "\n".join(locals3._auth_hint(token))
    assert locals3._auth_hint(locals3._Credentials()) == []
