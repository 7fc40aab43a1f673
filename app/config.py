"""The relay's settings: one pydantic-settings model read from ``HLSRELAY_*``.

Values are checked here, once, at start-up; everything else receives the
``Settings`` object through its constructor.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_EXTENSIONS = (
    "m3u8", "ts", "m4s", "mp4", "m4a", "m4v", "aac", "ac3",
    "ec3", "mp3", "vtt", "webvtt", "png", "jpg", "jpeg",
)  # fmt: skip


def default_spool_dir() -> Path:
    """The spool under the user's state dir (XDG), as an operator expects."""
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "hlsrelay" / "spool"


def _split_list(value: object) -> object:
    # Lists come from the environment as "a, b,c": items are trimmed and
    # empty items dropped, so a trailing comma or stray space is harmless.
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


CommaList = Annotated[list[str], NoDecode]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="HLSRELAY_", extra="ignore", str_strip_whitespace=True
    )

    host: str = "127.0.0.1"
    port: int = Field(5080, ge=1, le=65535)

    s3_bucket: str | None = None
    s3_endpoint: str | None = None
    s3_region: str = "us-east-1"
    s3_access_key: str | None = None
    s3_secret_key: SecretStr | None = None
    s3_addressing: Literal["auto", "path", "virtual"] = "auto"
    s3_acl: str | None = None
    s3_storage_class: str | None = None
    # Recent botocore adds CRC32 trailers and aws-chunked encoding to every
    # PUT; many S3-compatible stores refuse or mis-sign those, so by default
    # a checksum is sent only where the operation requires one.
    s3_checksum: Literal["when_required", "when_supported"] = "when_required"
    s3_max_connections: int = Field(64, ge=1, le=1024)
    s3_connect_timeout_s: float = Field(5.0, gt=0)
    s3_read_timeout_s: float = Field(30.0, gt=0)

    key_template: str = "streams/{path}"
    playlist_cache_control: str = "max-age=1"
    segment_cache_control: str = "max-age=86400"
    extensions: CommaList = Field(default_factory=lambda: list(DEFAULT_EXTENSIONS))

    spool_dir: Path = Field(default_factory=default_spool_dir)
    spool_max_bytes: int = Field(8 * 1024**3, ge=1)
    ack: Literal["spool", "upload"] = "spool"
    ack_timeout_s: float = Field(30.0, gt=0)
    segment_wait_s: float = Field(10.0, ge=0)
    upload_concurrency: int = Field(16, ge=1, le=512)
    multipart_threshold_bytes: int = Field(16 * 1024**2, ge=5 * 1024**2)
    shutdown_grace_s: float = Field(10.0, ge=0)

    auth_token: CommaList = Field(default_factory=list)
    basic_auth: SecretStr | None = None
    allow_cidrs: CommaList = Field(default_factory=list)

    max_body_bytes: int = Field(4 * 1024**3, ge=1)
    max_playlist_bytes: int = Field(4 * 1024**2, ge=1)

    forward_extensions: CommaList = Field(default_factory=list)
    forward_base_url: str | None = None
    cors_origins: CommaList = Field(default_factory=list)

    log_format: Literal["text", "json"] = "text"
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    _split = field_validator(
        "extensions",
        "auth_token",
        "allow_cidrs",
        "forward_extensions",
        "cors_origins",
        mode="before",
    )(_split_list)

    @field_validator("extensions", "forward_extensions")
    @classmethod
    def _lower_extensions(cls, value: list[str]) -> list[str]:
        return [ext.lower().lstrip(".") for ext in value]

    @field_validator("s3_bucket", "s3_endpoint", "s3_acl", "s3_storage_class")
    @classmethod
    def _empty_is_unset(cls, value: str | None) -> str | None:
        return value or None

    @field_validator("key_template")
    @classmethod
    def _check_template(cls, value: str) -> str:
        if value.count("{path}") != 1 or not value.endswith("{path}"):
            raise ValueError("must end with {path}, once, e.g. 'streams/{path}'")
        rest = value.replace("{path}", "").replace("{app}", "")
        if "{" in rest or "}" in rest or value.startswith("/") or "//" in value:
            raise ValueError(
                "may hold only {app} and {path}, with no leading or double '/'"
            )
        return value

    @model_validator(mode="after")
    def _check_credentials(self) -> Settings:
        if bool(self.s3_access_key) != bool(self.s3_secret_key):
            raise ValueError(
                "set both HLSRELAY_S3_ACCESS_KEY and HLSRELAY_S3_SECRET_KEY, or neither"
            )
        return self

    @property
    def has_auth(self) -> bool:
        return bool(self.auth_token or self.basic_auth or self.allow_cidrs)

    def key_for(self, app: str, path: str) -> str:
        """The object key of an upload path; the path is already validated."""
        return self.key_template.replace("{app}", app).replace("{path}", path)
