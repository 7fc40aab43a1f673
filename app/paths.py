"""Upload paths: the naming rules of SPEC, extensions, and what each kind of file is.

Everything that turns a request path into an object key passes through here,
so a path that breaks a rule is refused before anything is written.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from app.errors import InvalidPath, UnsupportedMedia

MAX_PATH_CHARS = 512
_APP_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_PART_RE = re.compile(r"[A-Za-z0-9._-]+")
# Percent-encoded '/' or '\' would smuggle a separator past the router; other
# escapes decode to characters that the part rule then judges.
_ENCODED_SEPARATOR_RE = re.compile(r"%(2f|5c)", re.IGNORECASE)
# C0, DEL and C1 controls, as uvicorn leaves them after decoding escapes.
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")

CONTENT_TYPES = {
    "m3u8": "application/vnd.apple.mpegurl",
    "ts": "video/mp2t",
    "m4s": "video/iso.segment",
    "mp4": "video/mp4",
    "m4v": "video/mp4",
    "m4a": "audio/mp4",
    "aac": "audio/aac",
    "ac3": "audio/ac3",
    "ec3": "audio/eac3",
    "mp3": "audio/mpeg",
    "vtt": "text/vtt",
    "webvtt": "text/vtt",
    "png": "image/png",
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "webm": "video/webm",
    "key": "application/octet-stream",
    "json": "application/json",
}

Kind = Literal["playlist", "media"]


@dataclass(frozen=True)
class Upload:
    """A validated upload target: ``path`` is relative to the application."""

    app: str
    path: str
    extension: str

    @property
    def kind(self) -> Kind:
        return "playlist" if self.extension == "m3u8" else "media"

    @property
    def content_type(self) -> str:
        return CONTENT_TYPES.get(self.extension, "application/octet-stream")


def is_valid_app(app: str) -> bool:
    return _APP_RE.fullmatch(app) is not None


def is_valid_path(path: str) -> bool:
    return path_problem(path) is None


def path_problem(path: str) -> str | None:
    """What breaks the path rule, said for the refusal; None for a good path."""
    if not path:
        return "is empty"
    if len(path) > MAX_PATH_CHARS:
        return f"is longer than {MAX_PATH_CHARS} characters"
    for part in path.split("/"):
        if not part:
            return "has an empty part ('//', or '/' at an end)"
        if part in (".", ".."):
            return f"has a {part!r} part"
        if _PART_RE.fullmatch(part) is None:
            bad = next(char for char in part if _PART_RE.fullmatch(char) is None)
            return f"has {bad!r} in {part[:60]!r}"
    return None


def extension_of(path: str) -> str:
    name = path.rsplit("/", 1)[-1]
    return name.rsplit(".", 1)[-1].lower() if "." in name else ""


def check_request_path(path: str, raw_path: bytes) -> None:
    """Refuse what no route of the relay may see, before routing.

    The router would answer such paths with 404, or match them wrongly: its
    ``{path:path}`` stops at a newline, and an escaped '/' in the application
    moves every part along. SPEC makes both a 400, for every route.
    """
    if _CONTROL_RE.search(path):
        raise InvalidPath("the path holds a control character")
    if _ENCODED_SEPARATOR_RE.search(raw_path.decode("latin-1")):
        raise InvalidPath("the path holds a percent-encoded separator")


def parse_upload(app: str, path: str, raw_path: bytes, extensions: list[str]) -> Upload:
    """Check an application and path from a request, or raise the refusal."""
    if not is_valid_app(app):
        raise InvalidPath(
            f"application {app[:80]!r} must be 1 to 64 letters, digits, '_' or '-'"
        )
    check_request_path(path, raw_path)
    problem = path_problem(path)
    if problem is not None:
        raise InvalidPath(
            f"path {path[:120]!r} {problem}; a path is '/'-separated parts of "
            "letters, digits, '.', '_' or '-'"
        )
    extension = extension_of(path)
    if extension not in extensions:
        raise UnsupportedMedia(
            f"extension {extension!r} of {path!r} is not accepted; accepted: "
            + ", ".join(extensions)
        )
    return Upload(app=app, path=path, extension=extension)
