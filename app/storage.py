"""The S3 side: one boto3 client, the calls the relay makes, and their errors.

botocore's exceptions are mapped to ``StorageError`` (retrying cannot help)
or ``RetryableStorageError`` (S3 is down, slow or throttling) here and only
here, so the rest of the relay never imports botocore.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
)
from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)

from app.config import Settings
from app.errors import RetryableStorageError, StorageError

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

log = logging.getLogger(__name__)

# S3 error codes that mean "try again later"; every other 4xx is final.
_RETRYABLE_CODES = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestTimeout",
    "RequestTimeoutException",
    "InternalError",
    "ServiceUnavailable",
    "OperationAborted",
    "503",
    "500",
}


@dataclass(frozen=True)
class ObjectInfo:
    content_type: str
    cache_control: str


def build_client(settings: Settings) -> S3Client:
    """A client for the configured provider, pool sized for many streams."""
    config = Config(
        region_name=settings.s3_region,
        signature_version="s3v4",
        s3={"addressing_style": settings.s3_addressing},
        retries={"mode": "standard", "max_attempts": 3},
        connect_timeout=settings.s3_connect_timeout_s,
        read_timeout=settings.s3_read_timeout_s,
        max_pool_connections=settings.s3_max_connections,
        request_checksum_calculation=settings.s3_checksum,
        response_checksum_validation="when_required",
        tcp_keepalive=True,
    )
    secret = (
        settings.s3_secret_key.get_secret_value() if settings.s3_secret_key else None
    )
    session = boto3.session.Session()
    return session.client(
        "s3",
        endpoint_url=settings.s3_endpoint,
        aws_access_key_id=settings.s3_access_key,
        aws_secret_access_key=secret,
        config=config,
    )


def map_error(exc: Exception, what: str) -> StorageError:
    """Turn a botocore failure into the relay's retryable or final error."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
        message = str(error.get("Message", "")) or code
        detail = f"S3 refused {what}: {code} ({status}) {message}".strip()
        if code in _RETRYABLE_CODES or status >= 500 or status == 429:
            return RetryableStorageError(detail, code=code)
        return StorageError(detail, code=code)
    if isinstance(exc, (BotoConnectionError, HTTPClientError)):
        return RetryableStorageError(
            f"S3 is unreachable for {what}: {exc}", code="Unreachable"
        )
    if isinstance(exc, BotoCoreError):
        return StorageError(f"S3 client failed for {what}: {exc}", code="ClientError")
    if isinstance(exc, OSError):
        return RetryableStorageError(f"S3 I/O failed for {what}: {exc}", code="IO")
    raise exc


class S3Storage:
    """Blocking S3 calls for the uploader's worker threads."""

    def __init__(self, settings: Settings, client: S3Client | None = None) -> None:
        self.settings = settings
        self.bucket = settings.s3_bucket or ""
        self.client = client or build_client(settings)
        self._transfer = TransferConfig(
            multipart_threshold=settings.multipart_threshold_bytes,
            multipart_chunksize=settings.multipart_threshold_bytes,
            max_concurrency=4,
        )

    def _extra_args(self, content_type: str, cache_control: str) -> dict[str, Any]:
        extra: dict[str, Any] = {
            "ContentType": content_type,
            "CacheControl": cache_control,
        }
        # Many buckets (all new AWS buckets since 2023) refuse any ACL header,
        # so none is sent unless the operator asked for one.
        if self.settings.s3_acl:
            extra["ACL"] = self.settings.s3_acl
        if self.settings.s3_storage_class:
            extra["StorageClass"] = self.settings.s3_storage_class
        return extra

    def put_file(
        self, key: str, path: Path, size: int, content_type: str, cache_control: str
    ) -> None:
        extra = self._extra_args(content_type, cache_control)
        try:
            if size < self.settings.multipart_threshold_bytes:
                # One PutObject streamed from the file: the transfer manager's
                # thread pool per call costs more than the upload itself here.
                with open(path, "rb") as body:
                    self.client.put_object(
                        Bucket=self.bucket,
                        Key=key,
                        Body=body,
                        ContentLength=size,
                        **extra,
                    )
            else:
                self.client.upload_file(
                    str(path), self.bucket, key, ExtraArgs=extra, Config=self._transfer
                )
        except Exception as exc:
            raise map_error(exc, f"PUT {key!r}") from exc

    def put_bytes(
        self, key: str, data: bytes, content_type: str, cache_control: str
    ) -> None:
        extra = self._extra_args(content_type, cache_control)
        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=data, **extra)
        except Exception as exc:
            raise map_error(exc, f"PUT {key!r}") from exc

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return
            raise map_error(exc, f"DELETE {key!r}") from exc
        except Exception as exc:
            raise map_error(exc, f"DELETE {key!r}") from exc

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status == 404 or exc.response.get("Error", {}).get("Code") in (
                "404",
                "NoSuchKey",
                "NotFound",
            ):
                return False
            raise map_error(exc, f"HEAD {key!r}") from exc
        except Exception as exc:
            raise map_error(exc, f"HEAD {key!r}") from exc
        return True

    def get(self, key: str, limit: int) -> bytes | None:
        """The object's bytes (at most ``limit``), or None when it is absent."""
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise map_error(exc, f"GET {key!r}") from exc
        except Exception as exc:
            raise map_error(exc, f"GET {key!r}") from exc
        with response["Body"] as body:
            return body.read(limit)

    def check_bucket(self) -> None:
        """Raise unless the bucket answers; used by /readyz."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except Exception as exc:
            raise map_error(exc, f"HEAD bucket {self.bucket!r}") from exc
