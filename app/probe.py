"""``hlsrelay check``: prove that the configured bucket takes what the relay writes.

A probe object goes through the relay's own S3 code (write, read back, delete)
under the key template's prefix; each step reports what happened and, when it
fails, the setting to change.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import Literal

import boto3

from app.config import Settings
from app.errors import StorageError
from app.storage import S3Storage, fix_for

Status = Literal["ok", "warn", "fail"]

PROBE_CONTENT_TYPE = "video/mp2t"

# Codes from HEAD bucket that say nothing about the cause (a HEAD answer has
# no body); the write that follows gets the provider's real error code.
_VAGUE_HEAD_CODES = {"403", "400"}


@dataclass(frozen=True)
class Step:
    name: str
    status: Status
    detail: str
    fix: str = ""


def describe(settings: Settings) -> list[tuple[str, str]]:
    """The settings that decide where and how the relay writes; no secrets."""
    if settings.s3_access_key:
        keys = f"static access key {_mask(settings.s3_access_key)}"
    else:
        keys = "the AWS default credential chain"
    extras = [
        f"ACL {settings.s3_acl}" if settings.s3_acl else "no ACL",
        f"storage class {settings.s3_storage_class}"
        if settings.s3_storage_class
        else "default storage class",
        f"checksums {settings.s3_checksum}",
    ]
    return [
        ("bucket", settings.s3_bucket or "(unset)"),
        ("endpoint", settings.s3_endpoint or "AWS S3 (from the region)"),
        ("region", settings.s3_region),
        ("addressing", settings.s3_addressing),
        ("credentials", keys),
        ("objects", ", ".join(extras)),
        ("key template", settings.key_template),
    ]


def probe_key(settings: Settings, app: str) -> str:
    """A key no stream uses, where the relay writes for ``app``."""
    return settings.key_for(app, f"hlsrelay-check-{secrets.token_hex(6)}.ts")


def run_check(
    settings: Settings, app: str, storage: S3Storage | None = None
) -> Iterator[Step]:
    """Yield each step as it finishes; the last step that fails ends the run."""
    if not settings.s3_bucket:
        yield Step(
            "settings",
            "fail",
            "no bucket is configured",
            "HLSRELAY_S3_BUCKET (or --s3-bucket)",
        )
        return
    if not settings.s3_access_key and boto3.session.Session().get_credentials() is None:
        yield Step(
            "credentials",
            "fail",
            "no static keys are set and the AWS default chain found none",
            fix_for("NoCredentials"),
        )
        return

    storage = storage or S3Storage(settings)
    head_failure = yield from _check_bucket(settings, storage)
    if head_failure is None:
        return
    key = probe_key(settings, app)
    body = f"hlsrelay check probe {time.time():.0f} {key}\n".encode()
    if not (yield from _write(settings, storage, key, body)):
        return
    if head_failure:
        # The bucket takes writes, so the HEAD's 403 was a missing permission.
        yield Step(
            "bucket",
            "warn",
            f"HEAD bucket was refused ({head_failure}) but writes work",
            "the key's permissions: add s3:ListBucket on the bucket; /readyz "
            "and the relay's existence checks use it",
        )
    yield from _read_back(settings, storage, key, body)
    yield from _delete(storage, key)


def _check_bucket(
    settings: Settings, storage: S3Storage
) -> Generator[Step, None, str | None]:
    """Returns None to stop, "" when the bucket answered, or the vague code."""
    bucket = settings.s3_bucket
    try:
        region = storage.check_bucket()
    except StorageError as exc:
        if exc.code in _VAGUE_HEAD_CODES:
            return exc.code
        yield _failed("bucket", exc)
        return None  # writing could create the bucket on some providers

    yield Step("bucket", "ok", f"bucket {bucket!r} answers")
    if region and settings.s3_region not in (region, "auto"):
        yield Step(
            "region",
            "warn",
            f"bucket {bucket!r} is in region {region!r}, not "
            f"{settings.s3_region!r}; every request takes a redirect",
            f"HLSRELAY_S3_REGION={region}",
        )
    return ""


def _write(
    settings: Settings, storage: S3Storage, key: str, body: bytes
) -> Generator[Step, None, bool]:
    try:
        storage.put_bytes(key, body, PROBE_CONTENT_TYPE, settings.segment_cache_control)
    except StorageError as exc:
        yield _failed("write", exc)
        return False
    yield Step("write", "ok", f"PUT {key!r} ({len(body)} bytes)")
    return True


def _read_back(
    settings: Settings, storage: S3Storage, key: str, body: bytes
) -> Iterator[Step]:
    try:
        data = storage.get(key, len(body) + 1)
        info = storage.head(key)
    except StorageError as exc:
        yield _failed("read", exc)
        return
    if data != body or info is None:
        got = "nothing" if data is None else f"{len(data)} different bytes"
        yield Step(
            "read",
            "fail",
            f"GET {key!r} returned {got} right after the PUT",
            "HLSRELAY_S3_ENDPOINT: a cache or proxy there does not pass writes through",
        )
        return
    yield Step("read", "ok", f"GET {key!r} returned the same {len(body)} bytes")

    # Players refuse playlists of the wrong type and replay stale cached ones,
    # so a provider that drops these headers breaks playback (field case C11).
    wanted = (PROBE_CONTENT_TYPE, settings.segment_cache_control)
    if (info.content_type, info.cache_control) != wanted:
        yield Step(
            "metadata",
            "warn",
            f"the provider stored Content-Type {info.content_type!r} and "
            f"Cache-Control {info.cache_control!r}; the relay sent "
            f"{wanted[0]!r} and {wanted[1]!r}",
            "the provider or a proxy in front of it rewrites object metadata",
        )


def _delete(storage: S3Storage, key: str) -> Iterator[Step]:
    try:
        storage.delete(key)
        still_there = storage.exists(key)
    except StorageError as exc:
        yield _failed("delete", exc, f"; the probe {key!r} is left in the bucket")
        return
    if still_there:
        yield Step(
            "delete",
            "fail",
            f"{key!r} is still there after DELETE",
            "the key's permissions: it needs s3:DeleteObject, or the bucket "
            "keeps objects (object lock, retention)",
        )
        return
    yield Step("delete", "ok", f"DELETE {key!r}, and HEAD finds it gone")


def _failed(name: str, exc: StorageError, extra: str = "") -> Step:
    detail, _, fix = exc.detail.partition("; fix: ")
    return Step(name, "fail", detail + extra, fix or fix_for(exc.code))


def _mask(access_key: str) -> str:
    # The access key id is not secret, but logs and tickets need only enough
    # of it to tell keys apart.
    return access_key[:4] + "…" + access_key[-4:] if len(access_key) > 10 else "…"
