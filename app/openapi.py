"""What the OpenAPI document says about each route: bodies, answers and errors.

Routes pass ``responses=error_responses(...)``; every refusal is described by
``ErrorBody``, the ``{"error", "detail"}`` body that routes.py sends.
"""

from __future__ import annotations

import warnings
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field


class ErrorBody(BaseModel):
    """Every refusal the relay answers."""

    error: str = Field(
        description="A stable code, e.g. invalid_path or spool_full.",
        examples=["unsupported_media_type"],
    )
    detail: str = Field(
        description="One sentence an operator or encoder can act on.",
        examples=["extension 'exe' of 'a.exe' is not accepted; accepted: m3u8, ts"],
    )


class Stored(BaseModel):
    """A PUT that was accepted: durable in the spool, or in S3 with ack=upload."""

    key: str = Field(examples=["streams/live_0/seg_00042.ts"])
    size: int = Field(description="Bytes received.", examples=[188000])


class ReadinessBody(BaseModel):
    status: str = Field(examples=["ready", "not ready"])
    problems: list[str] = Field(
        default_factory=list,
        description="What keeps the relay from being ready, when it is not.",
    )


_ERRORS: dict[int, str] = {
    400: "Bad application or path, malformed playlist, or a body cut short "
    "(invalid_path, invalid_playlist, incomplete_body, invalid_request).",
    401: "Missing or wrong credentials (unauthorized).",
    403: "The client's address is not in HLSRELAY_ALLOW_CIDRS, or a browser's "
    "Origin is not in HLSRELAY_CORS_ORIGINS (forbidden).",
    404: "Nothing there (not_found).",
    408: "The body stalled past HLSRELAY_BODY_IDLE_TIMEOUT_S or ran past "
    "HLSRELAY_BODY_TIMEOUT_S (request_timeout); nothing of it was kept.",
    405: "Not allowed on this path, e.g. GET of a media file (method_not_allowed).",
    413: "The body passes HLSRELAY_MAX_BODY_BYTES, or HLSRELAY_MAX_PLAYLIST_BYTES "
    "for a playlist (body_too_large).",
    415: "The extension is not accepted (unsupported_media_type).",
    429: "This client already has HLSRELAY_MAX_UPLOADS_PER_CLIENT uploads open "
    "(too_many_uploads); try again after Retry-After.",
    502: "S3 refused the read (storage_error).",
    503: "The spool is full, the relay has HLSRELAY_MAX_UPLOADS open, or in "
    "upload ack mode S3 could not take the file in time (spool_full, "
    "server_busy, storage_unavailable); try again after Retry-After.",
    507: "The spool's disk is full (insufficient_storage).",
}
_ERROR_HEADERS: dict[int, dict[str, Any]] = {
    401: {
        "WWW-Authenticate": {
            "description": "The schemes accepted: Basic and Bearer.",
            "schema": {"type": "string"},
        }
    },
}
_ERROR_HEADERS[429] = _ERROR_HEADERS[503] = {
    "Retry-After": {
        "description": "Seconds to wait before sending again.",
        "schema": {"type": "integer"},
    }
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` entries for the refusals a route can answer."""
    responses: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        response: dict[str, Any] = {"model": ErrorBody, "description": _ERRORS[status]}
        if status in _ERROR_HEADERS:
            response["headers"] = _ERROR_HEADERS[status]
        responses[status] = response
    return responses


PUT_RESPONSES = {
    201: {"model": Stored, "description": "Stored; the body is durable."},
    **error_responses(400, 401, 403, 408, 413, 415, 429, 503, 507),
}
DELETE_RESPONSES = {
    204: {"description": "Deleted, or it was never there."},
    **error_responses(400, 401, 403, 408, 413, 415, 507),
}
NOTICE_RESPONSES = error_responses(400, 401, 403, 408, 413)
FORWARD_RESPONSES = error_responses(400, 403, 404)
GET_PLAYLIST_RESPONSES = {
    200: {
        "description": "The newest version received of the playlist.",
        "content": {"application/vnd.apple.mpegurl": {"schema": {"type": "string"}}},
    },
    **error_responses(400, 401, 403, 404, 405, 415, 502),
}
READY_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "model": ReadinessBody,
        "description": "The bucket answers and the spool can be written.",
    },
    503: {"model": ReadinessBody, "description": "Not ready; `problems` says why."},
}
METRICS_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Prometheus text exposition format.",
        "content": {"text/plain": {"schema": {"type": "string"}}},
    },
    # Only with HLSRELAY_METRICS_AUTH on: the writers' credentials then apply.
    **error_responses(401, 403),
}
# ffmpeg and media servers send raw bytes, usually chunked, with no type.
PUT_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "The file, sent whole (chunked or with Content-Length).",
        "content": {
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary"}
            }
        },
    }
}


def install_openapi(app: FastAPI) -> None:
    """Post-process FastAPI's document so that it tells the truth, and serve
    the page (``/docs``) that shows it.

    FastAPI adds a 422 answer to every route with parameters, but the relay
    answers 400 instead; and a route serving several methods (GET and HEAD)
    gets one operation id for all of them, which clients generated from the
    document cannot tell apart.
    """
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            with warnings.catch_warnings():
                warnings.filterwarnings(
                    "ignore", message="Duplicate Operation ID", category=UserWarning
                )
                schema = build()
            _drop_validation_errors(schema)
            _make_operation_ids_unique(schema)
        assert app.openapi_schema is not None
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return swagger_page(app.title)


# Swagger UI comes from a CDN; where the browser cannot reach it, this text
# stays in the element Swagger UI would otherwise render into.
DOCS_FALLBACK = (
    "<p>Loading Swagger UI from cdn.jsdelivr.net. If this stays, the browser "
    'cannot reach it: the same description is at <a href="/openapi.json">'
    "/openapi.json</a>.</p>"
)


def swagger_page(title: str) -> HTMLResponse:
    page = get_swagger_ui_html(openapi_url="/openapi.json", title=f"{title} - docs")
    html = bytes(page.body).decode("utf-8")
    mount = '<div id="swagger-ui">'
    if mount in html:
        html = html.replace(mount, mount + DOCS_FALLBACK, 1)
    return HTMLResponse(html)


def _make_operation_ids_unique(schema: dict[str, Any]) -> None:
    seen: set[str] = set()
    for operations in schema.get("paths", {}).values():
        for method, operation in operations.items():
            if not isinstance(operation, dict) or "operationId" not in operation:
                continue
            operation_id = str(operation["operationId"])
            if operation_id in seen:
                stem = operation_id.rsplit("_", 1)[0]
                operation_id = f"{stem}_{method}"
                while operation_id in seen:
                    operation_id += "_"
                operation["operationId"] = operation_id
            seen.add(operation_id)


def _drop_validation_errors(schema: dict[str, Any]) -> None:
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            if isinstance(operation, dict):
                operation.get("responses", {}).pop("422", None)
    schemas = schema.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
