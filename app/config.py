"""The relay's settings: one pydantic-settings model read from ``HLSRELAY_*``.

Values are checked here, once, at start-up; everything else receives the
``Settings`` object through its constructor.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_EXTENSIONS = (
    "m3u8", "ts", "m4s", "mp4", "m4a", "m4v", "aac", "ac3",
    "ec3", "mp3", "vtt", "webvtt", "png", "jpg", "jpeg", "webm",
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
    # Errors never echo the input: it may be a token or a password.
    model_config = SettingsConfigDict(
        env_prefix="HLSRELAY_",
        extra="ignore",
        str_strip_whitespace=True,
        hide_input_in_errors=True,
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
    # PUT; many S3-compatible stores refuse or mis-sign those. when_required
    # sends no checksum on uploads and Content-MD5, which every provider
    # takes, where S3 demands one (DeleteObjects, PutBucketCors); see
    # docs/providers.md for what each mode puts on the wire.
    s3_checksum: Literal["when_required", "when_supported"] = "when_required"
    s3_ca_bundle: Path | None = None
    s3_max_connections: int = Field(64, ge=1, le=1024)
    s3_connect_timeout_s: float = Field(5.0, gt=0)
    s3_read_timeout_s: float = Field(30.0, gt=0)

    key_template: str = "streams/{path}"
    playlist_cache_control: str = "max-age=1"
    segment_cache_control: str = "max-age=86400"
    extensions: CommaList = Field(default_factory=lambda: list(DEFAULT_EXTENSIONS))

    spool_dir: Path = Field(default_factory=default_spool_dir)
    spool_max_bytes: int = Field(8 * 1024**3, ge=1)
    # /readyz turns not ready past this share of spool_max_bytes, before PUTs
    # start getting 503: a balancer can send new streams elsewhere first.
    spool_ready_percent: float = Field(80.0, gt=0, le=100)
    ack: Literal["spool", "upload"] = "spool"
    ack_timeout_s: float = Field(30.0, gt=0)
    segment_wait_s: float = Field(10.0, ge=0)
    upload_concurrency: int = Field(16, ge=1, le=512)
    multipart_threshold_bytes: int = Field(16 * 1024**2, ge=5 * 1024**2)
    # A media body with a Content-Length below the multipart threshold goes
    # to S3 while it arrives (app/growing.py), when nothing on its key is
    # ahead of it; its last byte is sent once the spool has the whole body.
    stream_uploads: bool = True
    shutdown_grace_s: float = Field(10.0, ge=0)

    auth_token: CommaList = Field(default_factory=list)
    basic_auth: SecretStr | None = None
    allow_cidrs: CommaList = Field(default_factory=list)
    # Peers whose X-Forwarded-For is believed (a reverse proxy in front);
    # from anyone else the header is ignored, so it cannot fake an address.
    trusted_proxies: CommaList = Field(default_factory=list)
    metrics_auth: bool = False

    max_body_bytes: int = Field(4 * 1024**3, ge=1)
    max_playlist_bytes: int = Field(4 * 1024**2, ge=1)
    # Request limits (app/protocol.py, app/limits.py). A plain ffmpeg never
    # retries a refused upload, so the defaults sit far above what encoders
    # need; the total body time leaves room for a long recording on a slow link.
    max_header_bytes: int = Field(16 * 1024, ge=1024, le=1024**2)
    header_timeout_s: float = Field(10.0, gt=0)
    body_idle_timeout_s: float = Field(30.0, gt=0)
    body_timeout_s: float = Field(3600.0, gt=0)
    max_uploads: int = Field(512, ge=1)
    max_uploads_per_client: int = Field(64, ge=1)

    forward_extensions: CommaList = Field(default_factory=list)
    forward_base_url: str | None = None
    cors_origins: CommaList = Field(default_factory=list)

    # Clean-up on the media server's publish_finished notice. With no delay
    # set, the stream's own live window is waited for (see app/cleanup.py).
    delete_on_end: bool = False
    delete_on_end_delay_s: float | None = Field(
        None, ge=0, description="the stream's own live window"
    )

    log_format: Literal["text", "json"] = "text"
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    _split = field_validator(
        "extensions",
        "auth_token",
        "allow_cidrs",
        "trusted_proxies",
        "forward_extensions",
        "cors_origins",
        mode="before",
    )(_split_list)

    @field_validator("extensions", "forward_extensions")
    @classmethod
    def _lower_extensions(cls, value: list[str]) -> list[str]:
        return [ext.lower().lstrip(".") for ext in value]

    @field_validator("forward_extensions")
    @classmethod
    def _check_forward_extensions(cls, value: list[str]) -> list[str]:
        for ext in value:
            if not ext.isascii() or not ext.isalnum():
                raise ValueError(
                    f"{ext!r} is not an extension; give a comma-separated list "
                    "such as 'm3u8,ts,mp4'"
                )
        return value

    @field_validator("forward_base_url")
    @classmethod
    def _check_forward_base_url(cls, value: str | None) -> str | None:
        if not value:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                "must be an absolute http(s) URL such as "
                "https://live-bucket.s3.eu-west-1.amazonaws.com"
            )
        if parts.query or parts.fragment or any(c.isspace() for c in value):
            raise ValueError(
                "must be a URL with no query string, fragment or white space"
            )
        return value.rstrip("/")

    @field_validator("cors_origins")
    @classmethod
    def _check_origins(cls, value: list[str]) -> list[str]:
        # Browsers send Origin as scheme://host[:port] in lower case, with no
        # path (RFC 6454 6.2); a pasted "https://Player.example/" must match.
        origins = []
        for item in value:
            origin = item.rstrip("/").lower()
            parts = urlsplit(origin)
            if origin != "*" and (
                parts.scheme not in ("http", "https")
                or not parts.hostname
                or parts.path
                or parts.query
                or parts.fragment
            ):
                raise ValueError(
                    f"{item!r} is not an origin such as https://player.example or *"
                )
            origins.append(origin)
        return origins

    @field_validator("allow_cidrs", "trusted_proxies")
    @classmethod
    def _check_networks(cls, value: list[str]) -> list[str]:
        # Host bits are allowed ("10.1.2.3/8" means 10.0.0.0/8), as operators
        # often paste an address with the mask of its network.
        networks = []
        for item in value:
            try:
                networks.append(str(ipaddress.ip_network(item, strict=False)))
            except ValueError:
                raise ValueError(
                    f"{item!r} is not a network such as 10.0.0.0/8 or 2001:db8::/32"
                ) from None
        return networks

    @field_validator("auth_token")
    @classmethod
    def _check_tokens(cls, value: list[str]) -> list[str]:
        if any(any(c.isspace() or not c.isprintable() for c in t) for t in value):
            raise ValueError("tokens may not hold white space or control characters")
        return value

    @field_validator("basic_auth")
    @classmethod
    def _check_basic(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None
        user, colon, _ = value.get_secret_value().partition(":")
        # RFC 7617 2: the user-id cannot hold a colon; the password may.
        if not user or not colon:
            raise ValueError("must be user:password, with a user name before ':'")
        return value

    @field_validator("s3_bucket", "s3_endpoint", "s3_acl", "s3_storage_class")
    @classmethod
    def _empty_is_unset(cls, value: str | None) -> str | None:
        return value or None

    @field_validator("s3_ca_bundle", mode="before")
    @classmethod
    def _empty_path_is_unset(cls, value: object) -> object:
        return value or None

    @field_validator("s3_endpoint")
    @classmethod
    def _check_endpoint(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                "must be a URL such as https://s3.gra.io.cloud.ovh.net "
                "(with https:// or http://)"
            )
        if parts.query or parts.fragment:
            raise ValueError("must be a URL with no query string or fragment")
        return value.rstrip("/")

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
        # With "{app}-{path}", app "a-b" path "c" and app "a" path "b-c" share
        # a key; a '/' after the application (which holds none) tells them apart.
        if "{app}" in value and "/" not in value.rsplit("{app}", 1)[1]:
            raise ValueError(
                "needs a '/' between {app} and {path}, e.g. 'live/{app}/{path}'"
            )
        return value

    @model_validator(mode="after")
    def _check_credentials(self) -> Settings:
        if bool(self.s3_access_key) != bool(self.s3_secret_key):
            raise ValueError(
                "set both HLSRELAY_S3_ACCESS_KEY and HLSRELAY_S3_SECRET_KEY, or neither"
            )
        return self

    @model_validator(mode="after")
    def _check_s3_location(self) -> Settings:
        # Region "auto" is how R2 and GCS sign; AWS itself has no such region,
        # and without an endpoint botocore would look up s3.auto.amazonaws.com.
        if self.s3_region == "auto" and not self.s3_endpoint:
            raise ValueError(
                "HLSRELAY_S3_REGION=auto needs HLSRELAY_S3_ENDPOINT "
                "(e.g. https://storage.googleapis.com)"
            )
        # Consoles show a bucket's own URL (https://b.ams3.digitaloceanspaces.com);
        # used as the endpoint, botocore would put the bucket in twice.
        if self.s3_endpoint and self.s3_bucket:
            parts = urlsplit(self.s3_endpoint)
            host = parts.hostname or ""
            first = parts.path.strip("/").split("/")[0]
            if host.startswith(self.s3_bucket + ".") or first == self.s3_bucket:
                raise ValueError(
                    f"HLSRELAY_S3_ENDPOINT {self.s3_endpoint!r} holds the bucket "
                    f"name; give the service only (e.g. {parts.scheme}://"
                    f"{parts.netloc.removeprefix(self.s3_bucket + '.')})"
                )
        return self

    @model_validator(mode="after")
    def _check_forwarding(self) -> Settings:
        if self.forward_extensions and not self.forward_base_url:
            raise ValueError(
                "HLSRELAY_FORWARD_EXTENSIONS needs HLSRELAY_FORWARD_BASE_URL, "
                "the URL that forwarded requests are redirected to"
            )
        return self

    @model_validator(mode="after")
    def _check_metrics_auth(self) -> Settings:
        # Asking for a protected /metrics and silently getting a public one
        # would be worse than refusing to start.
        if self.metrics_auth and not self.has_auth:
            raise ValueError(
                "HLSRELAY_METRICS_AUTH needs HLSRELAY_AUTH_TOKEN, "
                "HLSRELAY_BASIC_AUTH or HLSRELAY_ALLOW_CIDRS to check against"
            )
        return self

    @property
    def has_auth(self) -> bool:
        return bool(self.auth_token or self.basic_auth or self.allow_cidrs)

    def key_for(self, app: str, path: str) -> str:
        """The object key of an upload path; the path is already validated."""
        return self.key_template.replace("{app}", app).replace("{path}", path)
