"""``hlsrelay cors``: the bucket CORS rule a browser player needs, and writing it.

The relay's rule is the one with ID ``hlsrelay-player``; it is replaced on each
run, and rules the bucket holds for other purposes are kept as they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import urlsplit

from app.errors import StorageError
from app.storage import CorsRule, S3Storage

RULE_ID = "hlsrelay-player"
METHODS = ("GET", "HEAD")
# hls.js sends Range for byte-range segments and EXT-X-MAP BYTERANGE; browsers
# preflight it unless it is a single simple range.
ALLOWED_HEADERS = ("Range",)
# What hls.js and the MSE players built on it read from a response: lengths
# and ranges for progress and byte-range loads; ETag and Last-Modified for
# players and service workers that compare versions. Some are CORS-safelisted
# already; listing them costs nothing and helps browsers behind the standard.
EXPOSED_HEADERS = (
    "Content-Length",
    "Content-Range",
    "Content-Type",
    "Accept-Ranges",
    "ETag",
    "Last-Modified",
)
# How long a browser may reuse a preflight answer; Chromium caps it at 2 hours.
MAX_AGE_S = 3600


class OriginRefused(ValueError):
    """An --origin value that would not do what the operator means."""


def check_origins(origins: Sequence[str], allow_any: bool) -> tuple[str, ...]:
    """Origins as browsers send them; raise OriginRefused on anything else."""
    if not origins:
        raise OriginRefused(
            "give at least one --origin (the page's scheme, host and port, "
            "e.g. https://player.example.com), or set HLSRELAY_CORS_ORIGINS"
        )
    checked: list[str] = []
    for raw in origins:
        origin = raw.strip()
        if origin == "*":
            if not allow_any:
                raise OriginRefused(
                    "--origin '*' lets every web site read the stream from the "
                    "bucket; pass --allow-any-origin as well if that is meant"
                )
        else:
            origin = _check_origin(origin)
        if origin not in checked:
            checked.append(origin)
    return tuple(checked)


def _check_origin(origin: str) -> str:
    parts = urlsplit(origin)
    host = parts.hostname or ""
    if parts.scheme not in ("http", "https") or not host:
        raise OriginRefused(
            f"origin {origin!r} is not scheme://host[:port], e.g. "
            "https://player.example.com"
        )
    # A browser's Origin header never has a path or a trailing slash, so a rule
    # holding one would match no request at all.
    if parts.path or parts.query or parts.fragment or parts.username:
        raise OriginRefused(
            f"origin {origin!r} has a path or more; an origin is only "
            f"scheme://host[:port], here {parts.scheme}://{parts.netloc}"
        )
    # S3 allows one '*' in an origin; as a whole label it stands for subdomains.
    if "*" in host and (host.count("*") > 1 or not host.startswith("*.")):
        raise OriginRefused(
            f"origin {origin!r}: a wildcard may only stand for subdomains, "
            "as in https://*.example.com"
        )
    return f"{parts.scheme}://{parts.netloc.lower()}"


def player_rule(origins: Sequence[str]) -> CorsRule:
    return CorsRule(
        rule_id=RULE_ID,
        methods=METHODS,
        origins=tuple(origins),
        allowed_headers=ALLOWED_HEADERS,
        expose_headers=EXPOSED_HEADERS,
        max_age_s=MAX_AGE_S,
    )


def merge_rules(existing: Sequence[CorsRule], rule: CorsRule) -> tuple[CorsRule, ...]:
    """The bucket's other rules as they are, then the relay's own rule."""
    kept = [old for old in existing if old.rule_id != rule.rule_id]
    return (*kept, rule)


def read_rules(storage: S3Storage) -> tuple[CorsRule, ...]:
    try:
        return tuple(storage.get_cors())
    except StorageError as exc:
        raise _explain(exc, storage) from exc


def write_rules(storage: S3Storage, rules: Sequence[CorsRule]) -> tuple[CorsRule, ...]:
    """Write ``rules`` and return what the bucket holds afterwards."""
    try:
        storage.put_cors(rules)
        return tuple(storage.get_cors())
    except StorageError as exc:
        raise _explain(exc, storage) from exc


def differences(wanted: CorsRule, stored: Sequence[CorsRule]) -> list[str]:
    """What of ``wanted`` the bucket did not keep; empty when all of it is there."""
    found = [rule for rule in stored if rule.rule_id == wanted.rule_id]
    if not found:
        # Some providers drop rule IDs: fall back to the rule with our origins.
        found = [rule for rule in stored if set(rule.origins) == set(wanted.origins)]
    if not found:
        return [f"no rule {wanted.rule_id!r} was read back"]
    got = found[0]
    lost = []
    for name, want, have in (
        ("methods", wanted.methods, got.methods),
        ("origins", wanted.origins, got.origins),
        ("allowed headers", wanted.allowed_headers, got.allowed_headers),
        ("exposed headers", wanted.expose_headers, got.expose_headers),
    ):
        missing = {v.lower() for v in want} - {v.lower() for v in have}
        if missing:
            lost.append(f"{name} {', '.join(sorted(missing))}")
    return lost


def _explain(exc: StorageError, storage: S3Storage) -> StorageError:
    # MinIO's community edition and GCS's XML API answer bucket CORS calls
    # with NotImplemented or a schema error: their CORS is set elsewhere.
    if exc.code in ("NotImplemented", "501", "MalformedXML"):
        if (
            storage.settings.s3_checksum == "when_supported"
            and exc.code != "MalformedXML"
        ):
            hint = "try HLSRELAY_S3_CHECKSUM=when_required; if it persists, "
        else:
            hint = ""
        detail = exc.detail.partition("; fix: ")[0]
        return StorageError(
            f"{detail}; fix: {hint}this provider does not take bucket CORS "
            "rules through the S3 API; set them its own way (docs/providers.md)",
            code=exc.code,
        )
    return exc


def format_rules(rules: Sequence[CorsRule]) -> str:
    """The rules as a few aligned lines each, for a terminal."""
    if not rules:
        return "  (no CORS rules)"
    lines = []
    for rule in rules:
        lines.append(f"  rule {rule.rule_id or '(no ID)'}")
        for name, values in (
            ("methods", rule.methods),
            ("origins", rule.origins),
            ("allowed headers", rule.allowed_headers),
            ("exposed headers", rule.expose_headers),
        ):
            lines.append(f"    {name:<16}{', '.join(values) or '-'}")
        max_age = "-" if rule.max_age_s is None else f"{rule.max_age_s} s"
        lines.append(f"    {'preflight cache':<16}{max_age}")
    return "\n".join(lines)
