"""Field case C16: each provider's settings give the URL, signing region and
headers that provider expects, and hostile paths never reach any bucket."""

from __future__ import annotations

import http.client
import os
from pathlib import Path
from typing import Any

import pytest
from conftest import RelayFactory
from s3script import ScriptedS3
from test_check import keys_in

from app.config import Settings
from app.locals3 import LocalS3
from app.storage import S3Storage

KEY = "streams/live/seg_001.ts"

# name, settings, the URL the segment's PUT goes to, the signing region.
PROFILES: list[tuple[str, dict[str, Any], str, str]] = [
    (
        "aws",
        {"s3_region": "eu-west-3"},
        f"https://bkt.s3.eu-west-3.amazonaws.com/{KEY}",
        "eu-west-3",
    ),
    (
        "aws-path",
        {"s3_region": "eu-west-3", "s3_addressing": "path"},
        f"https://s3.eu-west-3.amazonaws.com/bkt/{KEY}",
        "eu-west-3",
    ),
    (
        "ovh",
        {"s3_endpoint": "https://s3.gra.io.cloud.ovh.net", "s3_region": "gra"},
        f"https://s3.gra.io.cloud.ovh.net/bkt/{KEY}",
        "gra",
    ),
    (
        "ovh-virtual",
        {
            "s3_endpoint": "https://s3.gra.io.cloud.ovh.net",
            "s3_region": "gra",
            "s3_addressing": "virtual",
        },
        f"https://bkt.s3.gra.io.cloud.ovh.net/{KEY}",
        "gra",
    ),
    (
        "digitalocean",
        {
            "s3_endpoint": "https://ams3.digitaloceanspaces.com",
            "s3_region": "ams3",
            "s3_addressing": "virtual",
        },
        f"https://bkt.ams3.digitaloceanspaces.com/{KEY}",
        "ams3",
    ),
    (
        "wasabi",
        {
            "s3_endpoint": "https://s3.eu-central-1.wasabisys.com",
            "s3_region": "eu-central-1",
        },
        f"https://s3.eu-central-1.wasabisys.com/bkt/{KEY}",
        "eu-central-1",
    ),
    (
        "gcs",
        {"s3_endpoint": "https://storage.googleapis.com", "s3_region": "auto"},
        f"https://storage.googleapis.com/bkt/{KEY}",
        "auto",
    ),
    (
        "r2",
        {
            "s3_endpoint": "https://0123abcd.r2.cloudflarestorage.com",
            "s3_region": "auto",
        },
        f"https://0123abcd.r2.cloudflarestorage.com/bkt/{KEY}",
        "auto",
    ),
    (
        "minio",
        {"s3_endpoint": "http://127.0.0.1:9000", "s3_addressing": "path"},
        f"http://127.0.0.1:9000/bkt/{KEY}",
        "us-east-1",
    ),
    (
        "seaweedfs",
        {"s3_endpoint": "http://127.0.0.1:8333", "s3_addressing": "path"},
        f"http://127.0.0.1:8333/bkt/{KEY}",
        "us-east-1",
    ),
    (
        "ceph-rgw",
        {
            "s3_endpoint": "https://rgw.storage.internal:7480",
            "s3_region": "default",
            "s3_addressing": "path",
        },
        f"https://rgw.storage.internal:7480/bkt/{KEY}",
        "default",
    ),
]


@pytest.fixture(autouse=True)
def _no_operator_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("HLSRELAY_", "AWS_")):
            monkeypatch.delenv(name)


@pytest.mark.parametrize(
    ("profile", "url", "region"),
    [(settings, url, region) for _, settings, url, region in PROFILES],
    ids=[name for name, *_ in PROFILES],
)
def test_provider_profile_reaches_its_url_signed_for_its_region(
    tmp_path: Path, profile: dict[str, Any], url: str, region: str
) -> None:
    values: dict[str, Any] = {
        "spool_dir": tmp_path,
        "s3_bucket": "bkt",
        "s3_access_key": "AKIDEXAMPLE",
        "s3_secret_key": "not-a-real-secret",
        **profile,
    }
    settings = Settings(**values)
    storage = S3Storage(settings)
    script = ScriptedS3(storage.client)

    storage.put_bytes(KEY, b"ts", "video/mp2t", "max-age=86400")

    sent = script.only("PUT")
    assert sent.url == url
    scope = sent.headers["authorization"].split("Credential=")[1].split(",")[0]
    assert scope.split("/")[2:] == [region, "s3", "aws4_request"]
    # Buckets with ACLs disabled, the AWS default since 2023, refuse any ACL.
    assert "x-amz-acl" not in sent.headers
    assert not [n for n in sent.headers if n.startswith("x-amz-checksum-")]


@pytest.mark.integration
@pytest.mark.parametrize("path", ["../../x.ts", "a//b.ts", "sub/../../x.ts"])
def test_provider_traversal_path_is_refused_and_stores_nothing(
    relay_factory: RelayFactory, local_s3: LocalS3, bucket: str, path: str
) -> None:
    relay = relay_factory()
    # http.client sends the path as written; httpx would resolve the dots.
    connection = http.client.HTTPConnection("127.0.0.1", relay.port, timeout=30)
    try:
        connection.request("PUT", f"/LiveApp/hls-upload/{path}", body=b"x" * 188)
        response = connection.getresponse()
        body = response.read()
    finally:
        connection.close()

    assert response.status == 400, body
    assert keys_in(local_s3, bucket) == []
    assert not [p for p in relay.spool_dir.rglob("*") if p.is_file()]
