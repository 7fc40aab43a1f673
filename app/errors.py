"""The relay's own exceptions, each mapped to one HTTP status in routes.py.

RelayError
 +-- InvalidPath          400, the application or path breaks the naming rules
 +-- PlaylistError        400, the body is not a playlist (not UTF-8, no #EXTM3U)
 +-- UnsupportedMedia     415, the extension is not accepted
 +-- BodyTooLarge         413, the body passes the configured limit
 +-- BodyIncomplete       400, the client went away before the body was whole
 +-- UnsupportedCoding    400, a transfer coding other than chunked
 +-- InvalidNotice        400, a media-server notice is not the JSON it must be
 +-- UnknownCommand       400, a notice names a command the relay does not know
 +-- NotFound             404
 +-- MethodNotAllowed     405
 +-- Unauthorized         401 with a challenge, Forbidden 403
 +-- RequestTimeout       408, the body stalled or took too long
 +-- TooManyUploads       429 with Retry-After, one client has too many open
 +-- ServerBusy           503 with Retry-After, the relay has too many open
 +-- SpoolFull            503 with Retry-After, the spool passed its size limit
 +-- DiskFull             507, the spool's disk has no room
 +-- StorageError         S3 refused in a way retrying cannot fix
      +-- RetryableStorageError   S3 is down, slow or throttling; try again
"""

from __future__ import annotations


class RelayError(Exception):
    """Base class: ``detail`` is one sentence an operator or encoder can act on."""

    status = 500
    error = "internal"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class InvalidPath(RelayError):
    status = 400
    error = "invalid_path"


class PlaylistError(RelayError):
    """A playlist the relay will not store: viewers stay on the version before,
    so the stream looks stuck; its refusal is logged as a warning."""

    status = 400
    error = "invalid_playlist"


class BodyIncomplete(RelayError):
    status = 400
    error = "incomplete_body"


class UnsupportedCoding(RelayError):
    """A body in a transfer coding the relay does not decode (gzip, say): its
    bytes would be stored still encoded. RFC 9112 6.1 suggests 501; SPEC's
    refusals of bytes that are not plain HTTP/1.1 are 400s."""

    status = 400
    error = "unsupported_transfer_coding"


class EmptyBody(RelayError):
    """A media file with no bytes: it would replace a stored one with nothing."""

    status = 400
    error = "empty_body"


class UnsupportedMedia(RelayError):
    status = 415
    error = "unsupported_media_type"


class BodyTooLarge(RelayError):
    status = 413
    error = "body_too_large"


class InvalidNotice(RelayError):
    status = 400
    error = "invalid_notice"


class UnknownCommand(RelayError):
    status = 400
    error = "unknown_command"


class NotFound(RelayError):
    status = 404
    error = "not_found"


class NoPlaylistYet(NotFound):
    """A GET of a playlist never uploaded. ffmpeg's append_list asks for it
    before a stream's first upload, so the refusal is routine: at debug."""

    routine = True


class MethodNotAllowed(RelayError):
    """``allow`` is the Allow value: what the resource does take (RFC 9110 15.5.6)."""

    status = 405
    error = "method_not_allowed"

    def __init__(self, detail: str, *, allow: str) -> None:
        super().__init__(detail)
        self.allow = allow


class Unauthorized(RelayError):
    """``challenge`` is the WWW-Authenticate value naming the schemes accepted.

    ``routine`` marks a challenge whose retry with credentials is awaited:
    the 401 ffmpeg asks for before each file, its access line at debug.
    """

    status = 401
    error = "unauthorized"

    def __init__(
        self, detail: str, *, challenge: str = "", routine: bool = False
    ) -> None:
        super().__init__(detail)
        self.challenge = challenge
        self.routine = routine


class RequestTimeout(RelayError):
    """The body stalled or took too long; nothing of it was kept."""

    status = 408
    error = "request_timeout"


class TooManyUploads(RelayError):
    """One client has too many uploads open at once (RFC 6585 4)."""

    status = 429
    error = "too_many_uploads"
    retry_after = 1


class ServerBusy(RelayError):
    """The relay as a whole has as many uploads open as it takes."""

    status = 503
    error = "server_busy"
    retry_after = 1


class Forbidden(RelayError):
    status = 403
    error = "forbidden"


class SpoolFull(RelayError):
    status = 503
    error = "spool_full"
    retry_after = 2


class DiskFull(RelayError):
    status = 507
    error = "insufficient_storage"


class StorageUnavailable(RelayError):
    """In upload ack mode S3 could not take the file in time; the client retries."""

    status = 503
    error = "storage_unavailable"
    retry_after = 5


class StorageError(RelayError):
    """S3 refused in a way that retrying cannot fix (bad keys, no bucket)."""

    status = 502
    error = "storage_error"

    def __init__(self, detail: str, *, code: str = "") -> None:
        super().__init__(detail)
        self.code = code


class RetryableStorageError(StorageError):
    """S3 is unreachable, slow or throttling: the same request may succeed later."""
