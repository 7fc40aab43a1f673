"""How log lines are made: per-request context, JSON and text formats, redaction.

``cli.setup_logging`` installs these on the one handler; the rest of the relay
only logs with %-args and key=value pairs, which the JSON format lifts into
fields of their own.
"""

from __future__ import annotations

import ast
import base64
import contextvars
import json
import logging
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from app.config import Settings

# Set by the access middleware for the length of one request; log records
# made while it runs (in its task or in threads it hands work to) carry them.
request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "hlsrelay_request_id", default=None
)
application: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "hlsrelay_application", default=None
)


@dataclass
class Refusal:
    """Why a request was refused, told to its access line (one line a request)."""

    error: str = ""
    detail: str = ""
    level: int = logging.INFO


# Also set by the access middleware; a shared object, so that a refusal noted
# in a context copied from the request's (a task, say) still reaches it.
refusal: contextvars.ContextVar[Refusal | None] = contextvars.ContextVar(
    "hlsrelay_refusal", default=None
)


def note_refusal(error: str, detail: str, level: int = logging.INFO) -> None:
    """Put the refusal on the request's access line.

    Outside one (no access middleware around the caller), a line of its own.
    """
    noted = refusal.get()
    if noted is None:
        logging.getLogger(__name__).log(level, "refused error=%s: %s", error, detail)
        return
    noted.error, noted.detail, noted.level = error, detail, level


REDACTED = "[redacted]"

# Fields a message's key=value pairs may not overwrite.
_RESERVED = frozenset(
    {"time", "level", "logger", "event", "message", "exception", "stack"}
)
# Attributes every LogRecord has; anything else on a record came from ``extra``
# (uvicorn adds ``color_message``, the same text with terminal colours).
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "request_id",
    "application",
    "color_message",
}

# A key=value pair (the value quoted by %r, or bare up to white space), the
# ": " that starts a message's free-text detail, or any other word.
_TOKEN = re.compile(
    r"""(?P<key>[A-Za-z_][A-Za-z0-9_]*)=(?P<value>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|\S*)"""
    r"""|(?P<sep>:(?=\s|$))|(?P<word>\S+)"""
)
_INT = re.compile(r"-?\d+")
_FLOAT = re.compile(r"-?\d+\.\d+(?:[eE][-+]?\d+)?")

# Credentials that can turn up in text no matter what is configured: an
# Authorization header and the user:password part of a URL.
_AUTH_HEADER = re.compile(
    r"(?i)(authorization['\"]?\s*[:=,]\s*['\"]?(?:(?:bearer|basic)\s+)?)[^\s'\",;]+"
)
_URL_PASSWORD = re.compile(r"(?i)(\b[a-z][a-z0-9+.-]*://[^/\s:@]+:)[^/\s@]+@")


def detached_context() -> contextvars.Context:
    """A copy of the current context with no request in it.

    Background tasks start from this, so an upload that one request's arrival
    happened to set off does not log under that request's id.
    """
    context = contextvars.copy_context()
    context.run(request_id.set, None)
    context.run(application.set, None)
    return context


def secrets_of(settings: Settings) -> list[str]:
    """Every configured value that must never reach a log line."""
    found: list[str] = []
    if settings.s3_secret_key is not None:
        found.append(settings.s3_secret_key.get_secret_value())
    found.extend(settings.auth_token)
    if settings.basic_auth is not None:
        pair = settings.basic_auth.get_secret_value()
        found.append(pair)
        found.append(base64.b64encode(pair.encode()).decode())
        _, _, password = pair.partition(":")
        found.append(password)
    return [secret for secret in found if secret]


class SecretRedactor:
    """Replaces configured secrets and credential-shaped text with a marker."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        # Longest first, so a password inside a longer secret goes with it.
        self.secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        text = _AUTH_HEADER.sub(lambda m: m.group(1) + REDACTED, text)
        return _URL_PASSWORD.sub(lambda m: m.group(1) + REDACTED + "@", text)

    def redact_value(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.redact(value)
        if isinstance(value, dict):
            return {k: self.redact_value(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.redact_value(v) for v in value]
        return value


class ContextFilter(logging.Filter):
    """Puts the current request id and application on every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = request_id.get()
        if getattr(record, "application", None) is None:
            record.application = application.get()
        return True


class UvicornServerNote(logging.Filter):
    """uvicorn's own lines, under the name ``uvicorn`` and at a fair level.

    uvicorn logs everything about its server (start-up, shutdown) to
    ``uvicorn.error``, which reads as an error on every start; the name
    given here is the one an operator would look for.

    Its "Cancel N running task(s)" at the end of the shutdown grace becomes a
    warning: the requests still running are cancelled, which the spool
    survives, and each one's access line then names its upload and what was
    kept. uvicorn says it at ERROR, for which nobody should be paged.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "uvicorn.error":
            record.name = "uvicorn"
        if isinstance(record.msg, str) and record.msg.startswith(
            "Cancel %s running task(s)"
        ):
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.msg = (
                "shutdown grace passed with %s request(s) running: cancelled; "
                "each one's access line says what was kept"
            )
        return True


def split_message(message: str) -> tuple[str, dict[str, Any]]:
    """The event (leading words) and key=value pairs of a message's head.

    Scanning stops at the first ": ", after which our messages carry free text
    such as an S3 error, which may hold '=' of its own.
    """
    words: list[str] = []
    fields: dict[str, Any] = {}
    for match in _TOKEN.finditer(message):
        if match.group("sep"):
            break
        key = match.group("key")
        if key is None:
            if not fields:
                words.append(match.group(0))
            continue
        raw = match.group("value")
        stop = raw.endswith(":") and not raw.startswith(("'", '"'))
        fields.setdefault(key, _parse_value(raw.rstrip(":;,") if stop else raw))
        if stop:
            break
    return " ".join(words) or message, fields


def _parse_value(raw: str) -> Any:
    if raw[:1] in ("'", '"') and len(raw) >= 2 and raw[-1] == raw[0]:
        try:
            return ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            return raw
    raw = raw.rstrip(";,")
    if _INT.fullmatch(raw):
        return int(raw)
    if _FLOAT.fullmatch(raw):
        return float(raw)
    return raw


def _timestamp(record: logging.LogRecord) -> str:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{stamp}.{int(record.msecs):03d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object a line, for log collectors.

    Always ``time``, ``level``, ``logger``, ``event`` and ``message``; then
    ``request_id`` and ``application`` when known, the message's key=value
    pairs (``key``, ``status``, ``duration`` in seconds, ...), and fields
    passed with ``extra``.
    """

    def __init__(self, redactor: SecretRedactor | None = None) -> None:
        super().__init__()
        self.redactor = redactor or SecretRedactor()

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        event, fields = split_message(message)
        entry: dict[str, Any] = {
            "time": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": event,
            "message": message,
        }
        for name in ("request_id", "application"):
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        if "application" not in entry and isinstance(fields.get("app"), str):
            entry["application"] = fields["app"]
        for key, value in fields.items():
            if key not in _RESERVED:
                entry.setdefault(key, value)
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRS and key not in _RESERVED:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(
            self.redactor.redact_value(entry), ensure_ascii=False, default=str
        )


class TextFormatter(logging.Formatter):
    """``time LEVEL logger message``, with the request id when there is one."""

    def __init__(self, redactor: SecretRedactor | None = None) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")
        self.redactor = redactor or SecretRedactor()

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        rid = getattr(record, "request_id", None)
        if rid is not None:
            head, newline, rest = line.partition("\n")
            line = f"{head} request_id={rid}{newline}{rest}"
        return self.redactor.redact(line)
