"""Schemathesis against the relay's own OpenAPI schema, over real sockets to a
real relay in front of SeaweedFS: whatever it generates, no answer is a 5xx."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from conftest import Relay
from hypothesis import HealthCheck, settings
from rawhttp import start_relay
from schemathesis.checks import not_a_server_error

from app.config import Settings
from app.locals3 import LocalS3
from app.main import create_app

pytestmark = pytest.mark.integration

# Bounded so the whole run stays well under a minute on a shared machine.
EXAMPLES_PER_OPERATION = 25


@pytest.fixture(scope="module")
def fuzzed_relay(
    local_s3: LocalS3, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Relay]:
    # No credentials, so the generated requests reach the handlers; the
    # forwarding routes are on, so they are fuzzed too.
    env = {
        "HLSRELAY_FORWARD_EXTENSIONS": "m3u8,ts",
        "HLSRELAY_FORWARD_BASE_URL": "http://127.0.0.1:9/bucket",
        "HLSRELAY_CORS_ORIGINS": "https://player.example",
        "HLSRELAY_MAX_BODY_BYTES": str(1024 * 1024),
    }
    relay, _ = start_relay(local_s3, tmp_path_factory.mktemp("fuzz"), env)
    yield relay
    relay.terminate()


def _own_schema() -> dict[str, Any]:
    """The schema the relay serves, built from the app itself: operations are
    known when tests are collected, before any relay runs."""
    settings = Settings(
        s3_bucket="schema-only",
        spool_dir=Path(tempfile.gettempdir()) / "hlsrelay-schema-only",
        forward_extensions=["m3u8", "ts"],
        forward_base_url="http://127.0.0.1:9/bucket",
    )
    return create_app(settings).openapi()


schema = schemathesis.openapi.from_dict(_own_schema())


@schema.parametrize()
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_fuzz_relay_never_answers_5xx(
    case: schemathesis.Case[Any], fuzzed_relay: Relay
) -> None:
    case.call_and_validate(base_url=fuzzed_relay.url, checks=[not_a_server_error])
    assert fuzzed_relay.is_running
