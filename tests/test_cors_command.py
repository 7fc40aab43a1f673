"""``hlsrelay cors`` against a real SeaweedFS: the rules are read back, and the
bucket then answers a browser's requests from those origins only."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from botocore.exceptions import ClientError
from test_check import keys_in, relay_env, run_cli

from app.bucketcors import EXPOSED_HEADERS, RULE_ID
from app.locals3 import LocalS3

pytestmark = pytest.mark.integration

PLAYER = "https://player.example.com"


def rules_of(local_s3: LocalS3, bucket: str) -> list[dict[str, object]]:
    try:
        response = local_s3.client().get_bucket_cors(Bucket=bucket)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "NoSuchCORSConfiguration":
            return []
        raise
    return [dict(rule) for rule in response["CORSRules"]]


def put_object(local_s3: LocalS3, bucket: str, key: str) -> str:
    local_s3.client().put_object(
        Bucket=bucket, Key=key, Body=b"0123456789", ContentType="video/mp2t"
    )
    return local_s3.url_for(bucket, key)


def test_cors_origins_written_and_read_back(local_s3: LocalS3, bucket: str) -> None:
    result = run_cli(
        relay_env(local_s3, bucket),
        "--origin",
        PLAYER,
        "--origin",
        "http://localhost:8080",
        command="cors",
    )

    assert result.returncode == 0, result.stdout + result.stderr
    before, _, after = result.stdout.partition("after:")
    assert "(no CORS rules)" in before
    assert PLAYER in after
    rules = rules_of(local_s3, bucket)
    assert len(rules) == 1
    rule = rules[0]
    assert rule["ID"] == RULE_ID
    assert rule["AllowedMethods"] == ["GET", "HEAD"]
    assert rule["AllowedOrigins"] == [PLAYER, "http://localhost:8080"]
    assert rule["AllowedHeaders"] == ["Range"]
    assert set(rule["ExposeHeaders"]) >= {  # type: ignore[call-overload]
        "Content-Length",
        "Content-Range",
        "ETag",
    }


def test_cors_bucket_then_answers_the_player_origin_only(
    local_s3: LocalS3, bucket: str
) -> None:
    url = put_object(local_s3, bucket, "streams/live/seg_1.ts")
    result = run_cli(relay_env(local_s3, bucket), "--origin", PLAYER, command="cors")
    assert result.returncode == 0, result.stderr

    ranged = httpx.get(url, headers={"Origin": PLAYER, "Range": "bytes=0-3"})
    assert ranged.status_code == 206
    assert ranged.headers["access-control-allow-origin"] == PLAYER
    exposed = {
        h.strip() for h in ranged.headers["access-control-expose-headers"].split(",")
    }
    assert exposed == set(EXPOSED_HEADERS)

    preflight = httpx.options(
        url,
        headers={
            "Origin": PLAYER,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "range",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == PLAYER
    assert "range" in preflight.headers["access-control-allow-headers"].lower()

    stranger = httpx.get(url, headers={"Origin": "https://elsewhere.example"})
    assert "access-control-allow-origin" not in stranger.headers


def test_cors_any_origin_refused_without_flag(local_s3: LocalS3, bucket: str) -> None:
    result = run_cli(relay_env(local_s3, bucket), "--origin", "*", command="cors")

    assert result.returncode == 2
    assert "--allow-any-origin" in result.stderr
    assert rules_of(local_s3, bucket) == []


def test_cors_any_origin_with_flag_is_written(local_s3: LocalS3, bucket: str) -> None:
    result = run_cli(
        relay_env(local_s3, bucket),
        "--origin",
        "*",
        "--allow-any-origin",
        command="cors",
    )

    assert result.returncode == 0, result.stderr
    assert rules_of(local_s3, bucket)[0]["AllowedOrigins"] == ["*"]


def test_cors_other_rules_kept_and_own_rule_replaced(
    local_s3: LocalS3, bucket: str
) -> None:
    uploads: Any = {
        "ID": "browser-uploads",
        "AllowedMethods": ["PUT"],
        "AllowedOrigins": ["https://admin.example.com"],
    }
    local_s3.client().put_bucket_cors(
        Bucket=bucket, CORSConfiguration={"CORSRules": [uploads]}
    )
    env = relay_env(local_s3, bucket)
    assert run_cli(env, "--origin", PLAYER, command="cors").returncode == 0

    result = run_cli(env, "--origin", "https://new-player.example.com", command="cors")

    assert result.returncode == 0, result.stderr
    before, _, after = result.stdout.partition("after:")
    assert PLAYER in before
    assert PLAYER not in after
    by_id = {rule["ID"]: rule for rule in rules_of(local_s3, bucket)}
    assert set(by_id) == {"browser-uploads", RULE_ID}
    assert by_id["browser-uploads"]["AllowedMethods"] == ["PUT"]
    assert by_id[RULE_ID]["AllowedOrigins"] == ["https://new-player.example.com"]


def test_cors_dry_run_writes_nothing(local_s3: LocalS3, bucket: str) -> None:
    result = run_cli(
        relay_env(local_s3, bucket), "--origin", PLAYER, "--dry-run", command="cors"
    )

    assert result.returncode == 0, result.stderr
    assert "dry run" in result.stdout
    assert PLAYER in result.stdout
    assert rules_of(local_s3, bucket) == []


def test_cors_origins_default_to_cors_origins_setting(
    local_s3: LocalS3, bucket: str
) -> None:
    env = relay_env(local_s3, bucket, HLSRELAY_CORS_ORIGINS=f" {PLAYER} ,")
    result = run_cli(env, command="cors")

    assert result.returncode == 0, result.stderr
    assert rules_of(local_s3, bucket)[0]["AllowedOrigins"] == [PLAYER]


def test_cors_origin_with_path_refused_and_nothing_written(
    local_s3: LocalS3, bucket: str
) -> None:
    result = run_cli(
        relay_env(local_s3, bucket), "--origin", f"{PLAYER}/", command="cors"
    )

    assert result.returncode == 2
    assert f"here {PLAYER}" in result.stderr
    assert rules_of(local_s3, bucket) == []
    assert keys_in(local_s3, bucket) == []
