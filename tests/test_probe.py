"""``hlsrelay check`` against scripted providers: each refusal a real provider
gives becomes a failed step that names the setting to fix."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from s3script import Reply, ScriptedS3, Sent, error

from app.config import Settings
from app.probe import Step, describe, probe_key, run_check
from app.storage import S3Storage


@pytest.fixture(autouse=True)
def _no_operator_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("HLSRELAY_", "AWS_")):
            monkeypatch.delenv(name)


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "spool_dir": tmp_path,
        "s3_bucket": "bkt",
        "s3_endpoint": "https://s3.example.test",
        "s3_access_key": "AKIDEXAMPLE1234",
        "s3_secret_key": "not-a-real-secret",
        "s3_addressing": "path",
    }
    values.update(overrides)
    return Settings(**values)


class FakeBucket:
    """A bucket that stores objects; ``refuse`` may answer a request instead."""

    def __init__(self, refuse: Callable[[Sent], Reply | None] | None = None) -> None:
        self.objects: dict[str, tuple[bytes, dict[str, str]]] = {}
        self.refuse = refuse
        self.head_bucket_headers: dict[str, str] = {}

    def __call__(self, sent: Sent) -> Reply:
        refusal = self.refuse(sent) if self.refuse else None
        if refusal is not None:
            return refusal
        key = sent.path.removeprefix("/bkt").lstrip("/")
        if not key:
            return Reply(200, b"", self.head_bucket_headers)
        if sent.method == "PUT":
            meta = {
                "Content-Type": sent.headers.get("content-type", ""),
                "Cache-Control": sent.headers.get("cache-control", ""),
            }
            self.objects[key] = (sent.body, meta)
            return Reply(200, b"", {"ETag": '"e"'})
        if sent.method == "DELETE":
            self.objects.pop(key, None)
            return Reply(204)
        if key not in self.objects:
            return error(404, "NoSuchKey") if sent.method == "GET" else Reply(404)
        body, meta = self.objects[key]
        headers = {**meta, "Content-Length": str(len(body))}
        return Reply(200, body if sent.method == "GET" else b"", headers)


def check(settings: Settings, bucket: FakeBucket) -> list[Step]:
    storage = S3Storage(settings)
    ScriptedS3(storage.client, bucket)
    return list(run_check(settings, "LiveApp", storage))


def failed(steps: list[Step]) -> Step:
    failures = [step for step in steps if step.status == "fail"]
    assert len(failures) == 1, steps
    return failures[0]


def test_check_working_bucket_passes_every_step_and_leaves_nothing(
    tmp_path: Path,
) -> None:
    bucket = FakeBucket()
    steps = check(make_settings(tmp_path), bucket)

    assert [(s.name, s.status) for s in steps] == [
        ("bucket", "ok"),
        ("write", "ok"),
        ("read", "ok"),
        ("delete", "ok"),
    ]
    assert bucket.objects == {}


def test_check_probe_key_is_under_the_template_prefix(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, key_template="live/{app}/{path}")
    key = probe_key(settings, "LiveApp")
    assert key.startswith("live/LiveApp/hlsrelay-check-")
    assert key != probe_key(settings, "LiveApp")


def test_check_acl_on_owner_enforced_bucket_names_acl(tmp_path: Path) -> None:
    # Buckets with Object Ownership "bucket owner enforced" (every new AWS
    # bucket since April 2023) refuse any request that carries an ACL.
    def refuse(sent: Sent) -> Reply | None:
        if "x-amz-acl" in sent.headers:
            return error(
                400,
                "AccessControlListNotSupported",
                "The bucket does not allow ACLs",
            )
        return None

    bucket = FakeBucket(refuse)
    steps = check(make_settings(tmp_path, s3_acl="public-read"), bucket)

    step = failed(steps)
    assert step.name == "write"
    assert "AccessControlListNotSupported" in step.detail
    assert step.fix.startswith("HLSRELAY_S3_ACL")
    assert check(make_settings(tmp_path), FakeBucket(refuse))[-1].status == "ok"


def test_check_wrong_region_names_region(tmp_path: Path) -> None:
    def refuse(sent: Sent) -> Reply | None:
        if sent.path == "/bkt":
            return Reply(400)  # HEAD: no body, so no code
        return error(
            400,
            "AuthorizationHeaderMalformed",
            "the region 'us-east-1' is wrong; expecting 'eu-west-3'",
        )

    step = failed(check(make_settings(tmp_path), FakeBucket(refuse)))
    assert step.name == "write"
    assert "AuthorizationHeaderMalformed" in step.detail
    assert step.fix.startswith("HLSRELAY_S3_REGION")


def test_check_region_answered_by_bucket_differs_warns(tmp_path: Path) -> None:
    bucket = FakeBucket()
    bucket.head_bucket_headers = {"x-amz-bucket-region": "eu-west-3"}
    steps = check(make_settings(tmp_path, s3_region="us-east-1"), bucket)

    region = next(step for step in steps if step.name == "region")
    assert region.status == "warn"
    assert region.fix == "HLSRELAY_S3_REGION=eu-west-3"
    assert steps[-1].status == "ok"


def test_check_bad_access_key_names_access_key(tmp_path: Path) -> None:
    def refuse(sent: Sent) -> Reply | None:
        if sent.path == "/bkt":
            return Reply(403)
        return error(403, "InvalidAccessKeyId")

    step = failed(check(make_settings(tmp_path), FakeBucket(refuse)))
    assert step.fix.startswith("HLSRELAY_S3_ACCESS_KEY")


def test_check_clock_skew_names_the_clock(tmp_path: Path) -> None:
    def refuse(sent: Sent) -> Reply | None:
        if sent.path == "/bkt":
            return Reply(403)
        return error(403, "RequestTimeTooSkewed")

    step = failed(check(make_settings(tmp_path), FakeBucket(refuse)))
    assert "RequestTimeTooSkewed" in step.detail
    assert "clock" in step.fix


def test_check_head_refused_but_writes_work_warns_about_list_bucket(
    tmp_path: Path,
) -> None:
    def refuse(sent: Sent) -> Reply | None:
        return Reply(403) if sent.path == "/bkt" else None

    bucket = FakeBucket(refuse)
    steps = check(make_settings(tmp_path), bucket)

    warning = next(step for step in steps if step.status == "warn")
    assert "s3:ListBucket" in warning.fix
    assert [s.status for s in steps if s.name in ("write", "read", "delete")] == [
        "ok",
        "ok",
        "ok",
    ]


def test_check_unknown_bucket_stops_before_writing(tmp_path: Path) -> None:
    def refuse(sent: Sent) -> Reply | None:
        return Reply(404) if sent.method == "HEAD" else None

    bucket = FakeBucket(refuse)
    steps = check(make_settings(tmp_path), bucket)

    step = failed(steps)
    assert step.name == "bucket"
    assert step.fix.startswith("HLSRELAY_S3_BUCKET")
    assert bucket.objects == {}  # a write could create the bucket on some stores


def test_check_metadata_dropped_by_provider_warns(tmp_path: Path) -> None:
    bucket = FakeBucket()
    original = bucket.__call__

    def drop_cache_control(sent: Sent) -> Reply:
        reply = original(sent)
        reply.headers.pop("Cache-Control", None)
        return reply

    storage = S3Storage(make_settings(tmp_path))
    ScriptedS3(storage.client, drop_cache_control)
    steps = list(run_check(storage.settings, "LiveApp", storage))

    metadata = next(step for step in steps if step.name == "metadata")
    assert metadata.status == "warn"
    assert "Cache-Control ''" in metadata.detail


def test_check_no_bucket_configured_fails_without_network(tmp_path: Path) -> None:
    steps = list(run_check(make_settings(tmp_path, s3_bucket=None), "LiveApp"))
    assert [(s.name, s.status) for s in steps] == [("settings", "fail")]
    assert "HLSRELAY_S3_BUCKET" in steps[0].fix


def test_check_no_credentials_anywhere_names_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An empty home: no ~/.aws files; metadata lookups off so no instance role.
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    settings = make_settings(tmp_path, s3_access_key=None, s3_secret_key=None)

    step = failed(list(run_check(settings, "LiveApp")))
    assert step.name == "credentials"
    assert "HLSRELAY_S3_ACCESS_KEY" in step.fix


def test_describe_shows_key_id_masked_and_no_secret(tmp_path: Path) -> None:
    lines = dict(describe(make_settings(tmp_path)))
    text = "\n".join(f"{k} {v}" for k, v in lines.items())
    assert "not-a-real-secret" not in text
    assert "AKIDEXAMPLE1234" not in text
    assert lines["credentials"] == "static access key AKID…1234"
