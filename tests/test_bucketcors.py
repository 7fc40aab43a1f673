"""The CORS rule ``hlsrelay cors`` writes: origins as browsers send them, and
other rules of the bucket left alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from s3script import ScriptedS3, error

from app.bucketcors import (
    RULE_ID,
    OriginRefused,
    check_origins,
    differences,
    merge_rules,
    player_rule,
    read_rules,
)
from app.config import Settings
from app.errors import StorageError
from app.storage import CorsRule, S3Storage


@pytest.mark.parametrize(
    "origin",
    [
        "player.example.com",
        "ftp://player.example.com",
        "https://player.example.com/watch",
        "https://player.example.com?x=1",
        "https://user@player.example.com",
        "https://pl*yer.example.com",
        "https://*.*.example.com",
        "",
    ],
)
def test_check_origins_malformed_origin_is_refused(origin: str) -> None:
    with pytest.raises(OriginRefused):
        check_origins([origin], allow_any=True)


def test_check_origins_forms_browsers_send_are_kept() -> None:
    got = check_origins(
        [
            "https://Player.Example.com",
            "http://localhost:8080",
            "https://*.cdn.example",
        ],
        allow_any=False,
    )
    assert got == (
        "https://player.example.com",
        "http://localhost:8080",
        "https://*.cdn.example",
    )


def test_check_origins_duplicates_are_dropped() -> None:
    got = check_origins(["https://a.example", " https://a.example "], False)
    assert got == ("https://a.example",)


def test_check_origins_none_given_is_refused() -> None:
    with pytest.raises(OriginRefused, match="--origin"):
        check_origins([], allow_any=False)


def test_merge_rules_replaces_own_rule_and_keeps_others() -> None:
    other = CorsRule(methods=("PUT",), origins=("https://admin.example",), rule_id="x")
    old = player_rule(["https://old.example"])
    new = player_rule(["https://new.example"])

    merged = merge_rules([other, old], new)

    assert merged == (other, new)
    assert new.rule_id == RULE_ID


def test_differences_lost_expose_headers_are_reported() -> None:
    wanted = player_rule(["https://a.example"])
    stored = CorsRule(
        methods=("GET", "HEAD"),
        origins=("https://a.example",),
        allowed_headers=("range",),
        rule_id=RULE_ID,
    )
    lost = differences(wanted, [stored])
    assert len(lost) == 1
    assert lost[0].startswith("exposed headers")
    assert differences(wanted, [wanted]) == []


def test_differences_rule_id_dropped_by_provider_matched_by_origins() -> None:
    wanted = player_rule(["https://a.example"])
    stored = CorsRule.from_s3({**wanted.to_s3(), "ID": None})
    assert differences(wanted, [stored]) == []
    assert differences(wanted, []) == [f"no rule {RULE_ID!r} was read back"]


def test_read_rules_provider_without_bucket_cors_says_where_to_set_them(
    tmp_path: Path,
) -> None:
    values: dict[str, Any] = {
        "spool_dir": tmp_path,
        "s3_bucket": "bkt",
        "s3_endpoint": "https://minio.example.test",
        "s3_access_key": "AKIDEXAMPLE",
        "s3_secret_key": "not-a-real-secret",
    }
    settings = Settings(**values)
    storage = S3Storage(settings)
    ScriptedS3(
        storage.client,
        lambda sent: error(
            501,
            "NotImplemented",
            "A header you provided implies functionality that is not implemented",
        ),
    )

    with pytest.raises(StorageError) as caught:
        read_rules(storage)

    assert "does not take bucket CORS rules" in caught.value.detail
    assert "docs/providers.md" in caught.value.detail
