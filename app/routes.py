"""HTTP routes: uploads, deletes, playlist reads, health and metrics.

Every refusal leaves here as ``{"error", "detail"}`` with its status; the
handlers validate, hand bodies to the uploader, and answer.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import anyio.to_thread
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from app import logs
from app.auth import WriteGuard
from app.config import Settings
from app.errors import (
    BodyIncomplete,
    BodyTooLarge,
    InvalidPath,
    MethodNotAllowed,
    NoPlaylistYet,
    PlaylistError,
    RelayError,
    UnsupportedCoding,
)
from app.metrics import Metrics
from app.openapi import (
    DELETE_RESPONSES,
    GET_PLAYLIST_RESPONSES,
    METRICS_RESPONSES,
    PUT_BODY,
    PUT_RESPONSES,
    READY_RESPONSES,
)
from app.paths import Upload, extension_of, parse_upload
from app.readiness import Readiness
from app.storage import S3Storage
from app.uploader import Uploader

log = logging.getLogger(__name__)

UPLOAD_PATH = "/{application}/hls-upload/{path:path}"
MAX_DELETE_BODY = 64 * 1024
# What the upload path takes, by kind of file: only a playlist can be read
# back. Starlette's own 405 names the methods of one of the path's routes.
ALLOW_PLAYLIST = "DELETE, GET, HEAD, POST, PUT"
ALLOW_MEDIA = "DELETE, POST, PUT"


def upload_allow(path: str) -> str | None:
    """The Allow value for a request path on the upload route, else None."""
    _, marker, rest = path.partition("/hls-upload/")
    if not marker or not rest:
        return None
    return ALLOW_PLAYLIST if extension_of(rest) == "m3u8" else ALLOW_MEDIA


@dataclass
class Relay:
    """What the routes need, built once by create_app."""

    settings: Settings
    uploader: Uploader
    storage: S3Storage
    guard: WriteGuard
    metrics: Metrics


router = APIRouter()


def get_relay(request: Request) -> Relay:
    relay: Relay = request.app.state.relay
    return relay


# Async on purpose: FastAPI runs a plain def dependency in a worker thread,
# where a request can overtake one that arrived before it and take an earlier
# sequence number, so an older playlist version would win. The check is a few
# hashes, fine on the event loop.
async def require_writer(request: Request) -> None:
    get_relay(request).guard.check(request)


async def require_metrics_reader(request: Request) -> None:
    get_relay(request).guard.check_metrics(request)


def _upload(relay: Relay, application: str, path: str, request: Request) -> Upload:
    raw_path: bytes = request.scope.get("raw_path") or request.url.path.encode()
    return parse_upload(application, path, raw_path, relay.settings.extensions)


def _declared_length(request: Request) -> int | None:
    value = request.headers.get("content-length")
    if value is None:
        return None
    if not value.isdigit():
        raise InvalidPath(f"Content-Length {value[:40]!r} is not a number")
    return int(value)


def _check_transfer_coding(request: Request) -> None:
    """Chunked is the one transfer coding the HTTP parser decodes; under any
    other (``gzip, chunked``) the body would be stored still encoded."""
    value = request.headers.get("transfer-encoding")
    if value is None:
        return
    codings = [coding.strip().lower() for coding in value.split(",")]
    if codings != ["chunked"]:
        raise UnsupportedCoding(
            f"Transfer-Encoding {value[:60]!r} is not supported: send the body "
            "chunked or with a Content-Length, not compressed; nothing stored"
        )


async def _body(request: Request) -> AsyncIterator[bytes]:
    try:
        async for chunk in request.stream():
            if chunk:
                yield chunk
    except ClientDisconnect:
        raise BodyIncomplete(
            "the connection ended before the body did (the client closed it, or "
            "sent bytes that are not valid HTTP/1.1)"
        ) from None


@router.put(
    UPLOAD_PATH,
    status_code=201,
    dependencies=[Depends(require_writer)],
    responses=PUT_RESPONSES,
    openapi_extra=PUT_BODY,
)
# POST is ffmpeg's HTTP output method when -method is not given, and ffmpeg
# (5.1 at least) POSTs the WebVTT subtitle playlist even with -method PUT.
@router.post(
    UPLOAD_PATH,
    status_code=201,
    dependencies=[Depends(require_writer)],
    include_in_schema=False,
)
async def put_file(application: str, path: str, request: Request) -> JSONResponse:
    """Store a playlist or media file; answered once it is durable."""
    relay = get_relay(request)
    upload = _upload(relay, application, path, request)

    settings = relay.settings
    limit = (
        settings.max_playlist_bytes
        if upload.kind == "playlist"
        else settings.max_body_bytes
    )
    _check_transfer_coding(request)
    declared = _declared_length(request)
    if declared is not None and declared > limit:
        raise BodyTooLarge(
            f"{upload.path!r} declares {declared} bytes; the limit is {limit}"
        )
    relay.uploader.check_can_accept(declared)

    receipt = await relay.uploader.receive_put(upload, _body(request), limit, declared)
    return JSONResponse({"key": receipt.key, "size": receipt.size}, status_code=201)


@router.delete(
    UPLOAD_PATH,
    status_code=204,
    dependencies=[Depends(require_writer)],
    responses=DELETE_RESPONSES,
)
async def delete_file(application: str, path: str, request: Request) -> Response:
    """Delete an object; 204 also when it was never there."""
    relay = get_relay(request)
    upload = _upload(relay, application, path, request)

    size = 0
    async for chunk in _body(request):
        size += len(chunk)
        if size > MAX_DELETE_BODY:
            raise BodyTooLarge("a DELETE body must be empty")
    await relay.uploader.receive_delete(upload)
    return Response(status_code=204)


@router.api_route(
    UPLOAD_PATH,
    methods=["GET", "HEAD"],
    dependencies=[Depends(require_writer)],
    responses=GET_PLAYLIST_RESPONSES,
)
async def get_playlist(application: str, path: str, request: Request) -> Response:
    """The newest version of a playlist, as ffmpeg's append_list reads it."""
    relay = get_relay(request)
    upload = _upload(relay, application, path, request)
    if upload.kind != "playlist":
        raise MethodNotAllowed(
            "only playlists can be read back from the upload path", allow=ALLOW_MEDIA
        )

    key = relay.settings.key_for(upload.app, upload.path)
    data = None
    entry = relay.uploader.newest_spooled(key)
    if entry is not None:
        try:
            data = await anyio.to_thread.run_sync(relay.uploader.spool.read_body, entry)
        except FileNotFoundError:
            data = None  # uploaded meanwhile: S3 has it now
    if data is None:
        data = await anyio.to_thread.run_sync(
            relay.storage.get, key, relay.settings.max_playlist_bytes
        )
    if data is None:
        raise NoPlaylistYet(
            f"no playlist {upload.path!r} in application {upload.app!r}"
        )
    return Response(
        data, media_type=upload.content_type, headers={"Cache-Control": "no-cache"}
    )


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get("/readyz", responses=READY_RESPONSES)
async def readyz(request: Request) -> JSONResponse:
    """Readiness: the bucket answers, uploads work, the spool has room."""
    readiness: Readiness = request.app.state.readiness
    problems = await readiness.check()
    if problems:
        return JSONResponse(
            {"status": "not ready", "problems": problems}, status_code=503
        )
    return JSONResponse({"status": "ready"})


@router.get(
    "/metrics",
    dependencies=[Depends(require_metrics_reader)],
    responses=METRICS_RESPONSES,
)
async def metrics(request: Request) -> Response:
    """Prometheus text format."""
    registry = get_relay(request).metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


def _error(
    status: int, error: str, detail: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        {"error": error, "detail": detail}, status_code=status, headers=headers
    )


def install_error_handlers(app: FastAPI) -> None:
    """Map every refusal to SPEC's status and body; nothing a client sends is a 500."""

    async def relay_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RelayError)
        headers = None
        retry_after = getattr(exc, "retry_after", None)
        if retry_after is not None:
            headers = {"Retry-After": str(retry_after)}
        challenge = getattr(exc, "challenge", "")
        if challenge:
            headers = {"WWW-Authenticate": challenge}
        allow = getattr(exc, "allow", "")
        if allow:
            headers = {"Allow": allow}
        if exc.status >= 500 or exc.status == 413 or isinstance(exc, PlaylistError):
            level = logging.WARNING
        elif getattr(exc, "routine", False):
            level = logging.DEBUG
        else:
            level = logging.INFO
        logs.note_refusal(exc.error, exc.detail, level)
        return _error(exc.status, exc.error, exc.detail, headers)

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        names = {404: "not_found", 405: "method_not_allowed"}
        error = names.get(exc.status_code, "http_error")
        headers = dict(exc.headers or {})
        detail = str(exc.detail)
        if exc.status_code == 405:
            allow = upload_allow(request.url.path) or headers.get("Allow", "")
            headers["Allow"] = allow
            detail = f"{request.method[:16]} is not allowed here; allowed: {allow}"
        elif exc.status_code == 404 and detail == "Not Found":
            # No route matched: most often an encoder's URL missing a part.
            detail = (
                "no such route; encoders PUT and DELETE under "
                "/{application}/hls-upload/{path}, e.g. "
                "/LiveApp/hls-upload/stream.m3u8"
            )
        logs.note_refusal(error, detail)
        return _error(exc.status_code, error, detail, headers)

    async def validation_error(request: Request, exc: Exception) -> JSONResponse:
        return _error(
            400, "invalid_request", "the request's path or parameters are malformed"
        )

    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error(
            "unexpected error method=%s path=%r",
            request.method,
            request.url.path[:200],
            exc_info=exc,
        )
        return _error(500, "internal", "the relay failed; see its log")

    app.add_exception_handler(RelayError, relay_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, unexpected)
