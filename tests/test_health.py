"""Liveness, readiness, the container's probe and ``hlsrelay --version``."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from conftest import REPO_ROOT, RelayFactory, free_port

from app import __version__
from app.healthcheck import is_healthy, probe_url


@pytest.mark.parametrize(
    ("env", "url"),
    [
        ({}, "http://127.0.0.1:5080/healthz"),
        (
            {"HLSRELAY_HOST": "0.0.0.0", "HLSRELAY_PORT": "8080"},
            "http://127.0.0.1:8080/healthz",
        ),
        ({"HLSRELAY_HOST": "::"}, "http://127.0.0.1:5080/healthz"),
        ({"HLSRELAY_HOST": "::1"}, "http://[::1]:5080/healthz"),
        ({"HLSRELAY_HOST": " 127.0.0.5 "}, "http://127.0.0.5:5080/healthz"),
    ],
)
def test_probe_url_follows_the_relay_settings(env: dict[str, str], url: str) -> None:
    assert probe_url(env) == url


def test_probe_fails_when_nothing_listens() -> None:
    assert is_healthy(f"http://127.0.0.1:{free_port()}/healthz", timeout_s=2) is False


@pytest.mark.parametrize(
    "command",
    [
        [sys.executable, "-m", "app", "--version"],
        [str(Path(sys.executable).parent / "hlsrelay"), "--version"],
    ],
    ids=["module", "console-script"],
)
def test_version_prints_the_release(command: list[str]) -> None:
    result = subprocess.run(
        command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False
    )

    assert result.returncode == 0
    assert result.stdout.strip() == f"hlsrelay {__version__}"


@pytest.mark.integration
def test_healthz_and_readyz_with_a_reachable_bucket(
    relay_factory: RelayFactory,
) -> None:
    relay = relay_factory()

    health = httpx.get(f"{relay.url}/healthz", timeout=10)
    ready = relay.wait_ready()

    assert (health.status_code, health.json()) == (200, {"status": "ok"})
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"
    env = {"HLSRELAY_PORT": str(relay.port)}
    assert is_healthy(probe_url(env)) is True


@pytest.mark.integration
def test_readyz_is_503_while_s3_is_unreachable(relay_factory: RelayFactory) -> None:
    relay = relay_factory(
        extra_env={"HLSRELAY_S3_ENDPOINT": f"http://127.0.0.1:{free_port()}"}
    )

    # Readiness comes from a probe in the background: poll until it has run.
    deadline = time.monotonic() + 60
    ready = httpx.get(f"{relay.url}/readyz", timeout=10)
    while ready.status_code != 503 and time.monotonic() < deadline:
        time.sleep(0.2)
        ready = httpx.get(f"{relay.url}/readyz", timeout=10)
    health = httpx.get(f"{relay.url}/healthz", timeout=10)

    assert health.status_code == 200  # alive: restarting it would not help
    assert ready.status_code == 503
    assert ready.json()["status"] != "ready"
    assert ready.json()["problems"]
