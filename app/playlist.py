"""Find the files an HLS playlist refers to, so the relay can hold it back until
they are stored, and map those references to upload paths.

We scan line by line instead of using the m3u8 library: we need only the URIs,
every line can be read without context, and so a new version of an EVENT playlist
can be scanned from where the last one ended; that keeps a 10,000-segment list
cheap, where a full object model is slower and cannot resume.
"""

from __future__ import annotations

import codecs
import re
import string
from dataclasses import dataclass, field
from urllib.parse import unquote

from app.errors import PlaylistError
from app.paths import is_valid_path

# RFC 8216 4.3.1.1: EXTM3U must be the first line. Trailing blanks on it are
# tolerated; RFC 8216 4.1 forbids them, but refusing would cost a stream.
_HEADER_LINE = re.compile(r"#EXTM3U[ \t]*(?:\r\n?|\n|\Z)")

# RFC 8216 4.2: AttributeName=AttributeValue, where a quoted-string may hold
# commas and '=' but no '"', CR or LF, and any other value has no '"', ',' or
# white space.
_ATTRIBUTE = re.compile(r'([A-Z0-9-]+)=("[^"\r\n]*"|[^",\s]*)')

# Tags whose URI attribute names a file the encoder uploads next to the
# playlist: EXT-X-MAP (RFC 8216 4.3.2.5), EXT-X-MEDIA (4.3.4.1),
# EXT-X-I-FRAME-STREAM-INF (4.3.4.3) and EXT-X-PART (rfc8216bis, LL-HLS).
# Every other URI attribute is left alone on purpose: keys are not uploaded
# beside the media, a preload hint names a part that does not exist yet, and a
# rendition report names another live playlist, so waiting on it makes cycles.
_URI_TAGS = frozenset(
    {"EXT-X-MAP", "EXT-X-MEDIA", "EXT-X-I-FRAME-STREAM-INF", "EXT-X-PART"}
)

# RFC 8216 4.3.4: these appear only in a multivariant (master) playlist.
_MULTIVARIANT_TAGS = frozenset(
    {"EXT-X-STREAM-INF", "EXT-X-I-FRAME-STREAM-INF", "EXT-X-MEDIA"}
)

_UPLOAD_PATH_CHARS = frozenset(string.ascii_letters + string.digits + "._-")


@dataclass(frozen=True)
class PlaylistInfo:
    """What the relay needs from one playlist version."""

    references: tuple[str, ...]
    is_multivariant: bool
    has_endlist: bool


@dataclass
class _Scan:
    # A dict keeps first-seen order and drops repeats, e.g. one file named by
    # many EXT-X-BYTERANGE entries (RFC 8216 4.3.2.2).
    references: dict[str, None] = field(default_factory=dict)
    is_multivariant: bool = False
    has_endlist: bool = False


def decode_playlist(data: bytes) -> str:
    """Return the playlist text, or raise PlaylistError if it is not one."""
    if not data:
        raise PlaylistError("playlist body is empty")

    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    if b"\x00" in data:
        raise PlaylistError("playlist contains a NUL byte")

    # RFC 8216 4.1: a playlist is UTF-8, so decoding stays strict.
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PlaylistError(f"playlist is not UTF-8 at byte {exc.start}") from exc

    if not _HEADER_LINE.match(text):
        raise PlaylistError("playlist does not start with #EXTM3U")
    return text


def extract_references(text: str, start: int = 0) -> list[str]:
    """Return the URIs in text[start:] that the relay waits for, first seen first.

    ``start`` is normally the length of an earlier version this one extends;
    if it falls inside a line, scanning starts at the beginning of that line.
    Raises PlaylistError when the attribute list of a URI-bearing tag is broken.
    """
    return list(_scan(text, start).references)


def parse_playlist(data: bytes) -> PlaylistInfo:
    """Decode a whole playlist version and return its references and flags."""
    scan = _scan(decode_playlist(data), 0)
    return PlaylistInfo(
        references=tuple(scan.references),
        is_multivariant=scan.is_multivariant,
        has_endlist=scan.has_endlist,
    )


def resolve_reference(playlist_path: str, uri: str) -> str | None:
    """Return the upload path ``uri`` names, relative to the playlist's folder.

    None means the relay cannot wait for it: an absolute or root-relative URL,
    a path that climbs out of the application, or one that is not an upload path.
    """
    segments = _relative_segments(uri)
    if segments is None:
        return None
    parts = _join(playlist_path, segments)
    if parts is None:
        return None
    resolved = "/".join(parts)
    return resolved if is_valid_upload_path(resolved) else None


def is_outside_application(playlist_path: str, uri: str) -> bool:
    """Whether ``uri`` is a relative path that climbs above the application's
    folder (``../../x.ts`` from ``live_0/index.m3u8``): no upload can store it.
    """
    segments = _relative_segments(uri)
    return segments is not None and _join(playlist_path, segments) is None


def _relative_segments(uri: str) -> list[str] | None:
    # RFC 3986 3.4 and 3.5: the query and fragment never name another file.
    path = uri.partition("#")[0].partition("?")[0]

    # RFC 3986 4.2: a ':' in the first segment makes it a scheme (http:, data:),
    # and a leading '/' makes it absolute or network-path ('//cdn').
    if not path or path.startswith("/") or ":" in path.partition("/")[0]:
        return None

    segments = _decode_segments(path)
    # A last segment of '.' or '..' names a folder, not a file (RFC 3986 5.2.4).
    if segments is None or segments[-1] in (".", ".."):
        return None
    return segments


def _join(playlist_path: str, segments: list[str]) -> list[str] | None:
    # RFC 8216 4.1: relative URIs resolve against the playlist's own URI. None
    # when a '..' climbs above the application's folder.
    parts = playlist_path.split("/")[:-1]
    for segment in segments:
        if segment == "..":
            if not parts:
                return None
            parts.pop()
        elif segment != ".":
            parts.append(segment)
    return parts


def is_valid_upload_path(path: str) -> bool:
    """SPEC's path rule, the one uploads are held to (app/paths.py)."""
    return is_valid_path(path)


def _scan(text: str, start: int) -> _Scan:
    if not 0 <= start <= len(text):
        raise ValueError(f"start {start} is outside the playlist text")

    start = _line_start(text, start)

    scan = _Scan()
    for line in _split_lines(text[start:]):
        line = line.strip(" \t")
        if not line:
            continue
        # RFC 8216 4.1: a line is blank, a URI, or starts with '#'.
        if line[0] != "#":
            scan.references[line] = None
        elif line.startswith("#EXT-X-"):
            _scan_tag(line, scan)
    return scan


def _line_start(text: str, pos: int) -> int:
    # An earlier version that ended mid-line (no final newline) must not turn
    # the rest of that line into a URI of its own: rescan the whole line. Both
    # searches stop at the nearest line end, so this costs one line at most.
    if pos in (0, len(text)) or text[pos - 1] in "\r\n":
        return pos
    newline = text.rfind("\n", 0, pos)
    return max(newline, text.rfind("\r", newline + 1, pos)) + 1


def _split_lines(text: str) -> list[str]:
    # RFC 8216 4.1 ends lines with LF or CRLF; a lone CR is also accepted. Not
    # str.splitlines(): it also splits on U+2028 and friends, which an EXTINF
    # title may hold, and the piece after would look like a URI.
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def _scan_tag(line: str, scan: _Scan) -> None:
    name, _, attributes = line[1:].partition(":")
    if name in _MULTIVARIANT_TAGS:
        scan.is_multivariant = True
    elif name == "EXT-X-ENDLIST":
        scan.has_endlist = True

    if name in _URI_TAGS:
        uri = _parse_attributes(name, attributes).get("URI", "")
        # RFC 8216 4.2: the URI is a quoted-string; an unquoted one is still
        # waited for, since there is no doubt which file it names.
        if uri.startswith('"'):
            uri = uri[1:-1]
        if uri:
            scan.references[uri] = None


def _parse_attributes(tag: str, text: str) -> dict[str, str]:
    # RFC 8216 4.2, matched one attribute at a time so that a comma inside a
    # quoted-string is never taken for a separator.
    attributes: dict[str, str] = {}
    pos = _skip_blanks(text, 0)
    while pos < len(text):
        match = _ATTRIBUTE.match(text, pos)
        if match is None:
            raise PlaylistError(f"{tag} has a malformed attribute list")
        name, value = match.groups()
        if name in attributes:
            raise PlaylistError(f"{tag} repeats the attribute {name}")
        attributes[name] = value

        pos = match.end()
        if pos < len(text) and text[pos] != ",":
            raise PlaylistError(f"{tag} has a malformed attribute list")
        # NOTE: blanks after a comma are outside RFC 8216 4.2, but some
        # encoders write them and they change nothing.
        pos = _skip_blanks(text, pos + 1)
    return attributes


def _skip_blanks(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t":
        pos += 1
    return pos


def _decode_segments(path: str) -> list[str] | None:
    # Decoded after the query is cut off, so '%3F' stays part of a name. A
    # decoded '/', backslash, '%' or control character fails the character check:
    # it would smuggle a different path past the upload rules.
    segments = []
    for segment in path.split("/"):
        if "%" in segment:
            try:
                segment = unquote(segment, errors="strict")
            except UnicodeDecodeError:
                return None
        if not segment or not _UPLOAD_PATH_CHARS.issuperset(segment):
            return None
        segments.append(segment)
    return segments
