"""The OpenAPI document: every route with its errors, and answers that match it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from app.config import Settings
from app.main import create_app
from app.openapi import ErrorBody

UPLOAD = "/{application}/hls-upload/{path}"
# Routes that refuse nothing a client could fix: they document no error.
NO_CLIENT_ERRORS = {("get", "/healthz")}


@pytest.fixture
def app(tmp_path: Path) -> FastAPI:
    settings = Settings(
        spool_dir=tmp_path,
        s3_bucket="live-bucket",
        s3_access_key="AKIDEXAMPLE",
        s3_secret_key="not-used-here",
        auth_token="doc-token-123",
        max_body_bytes=1000,
        forward_extensions="m3u8,ts",
        forward_base_url="https://cdn.example",
    )
    return create_app(settings)


@pytest.fixture
def document(app: FastAPI) -> dict[str, Any]:
    return app.openapi()


def operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method, path, operation)
        for path, methods in document["paths"].items()
        for method, operation in methods.items()
    ]


def error_statuses(operation: dict[str, Any]) -> set[int]:
    return {int(code) for code in operation["responses"] if int(code) >= 400}


def test_openapi_every_route_documents_its_errors(document: dict[str, Any]) -> None:
    undocumented = [
        f"{method.upper()} {path}"
        for method, path, operation in operations(document)
        if (method, path) not in NO_CLIENT_ERRORS and not error_statuses(operation)
    ]

    assert undocumented == []


def test_openapi_errors_use_the_error_body(document: dict[str, Any]) -> None:
    ref = "#/components/schemas/ErrorBody"
    for method, path, operation in operations(document):
        for code, response in operation["responses"].items():
            if int(code) < 400 or (method, path) == ("get", "/readyz"):
                continue
            schema = response["content"]["application/json"]["schema"]
            assert schema == {"$ref": ref}, (method, path, code)

    body = document["components"]["schemas"]["ErrorBody"]
    assert set(body["required"]) == {"error", "detail"}


def test_openapi_has_no_validation_422(document: dict[str, Any]) -> None:
    # The relay answers malformed requests with 400 and an ErrorBody.
    for method, path, operation in operations(document):
        assert "422" not in operation["responses"], (method, path)
    assert "HTTPValidationError" not in document["components"]["schemas"]


def test_openapi_operation_ids_are_unique(document: dict[str, Any]) -> None:
    ids = [op["operationId"] for _, _, op in operations(document)]

    assert len(ids) == len(set(ids))


def test_openapi_put_documents_limits_and_retry(document: dict[str, Any]) -> None:
    put = document["paths"][UPLOAD]["put"]

    assert {400, 401, 403, 408, 413, 415, 429, 503, 507} <= error_statuses(put)
    assert "Retry-After" in put["responses"]["503"]["headers"]
    assert "Retry-After" in put["responses"]["429"]["headers"]
    assert "WWW-Authenticate" in put["responses"]["401"]["headers"]
    assert "application/octet-stream" in put["requestBody"]["content"]


@pytest.mark.anyio
async def test_refusals_match_the_document(
    app: FastAPI, document: dict[str, Any]
) -> None:
    auth = {"Authorization": "Bearer doc-token-123"}
    cases = [
        ("put", UPLOAD, "/LiveApp/hls-upload/a//b.ts", auth, b"x"),
        ("put", UPLOAD, "/LiveApp/hls-upload/a.exe", auth, b"x"),
        ("put", UPLOAD, "/LiveApp/hls-upload/a.ts", {}, b"x"),
        ("put", UPLOAD, "/LiveApp/hls-upload/a.ts", auth, b"x" * 1001),
        ("delete", UPLOAD, "/LiveApp/hls-upload/a.exe", auth, b""),
        ("get", UPLOAD, "/LiveApp/hls-upload/a.ts", auth, b""),
    ]
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        for method, route, url, headers, body in cases:
            answer = await client.request(
                method.upper(), url, headers=headers, content=body or None
            )

            documented = error_statuses(document["paths"][route][method])
            assert answer.status_code in documented, (method, url, answer.status_code)
            ErrorBody.model_validate(answer.json())


@pytest.mark.anyio
async def test_docs_page_says_where_the_description_is_when_its_cdn_is_out_of_reach(
    app: FastAPI,
) -> None:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        page = await client.get("/docs")
        described = await client.get("/openapi.json")

    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    # Inside the element Swagger UI renders into: shown only when it cannot.
    assert (
        '<div id="swagger-ui"><p>Loading Swagger UI from cdn.jsdelivr.net' in page.text
    )
    assert '<a href="/openapi.json">' in page.text
    assert "swagger-ui-bundle.js" in page.text
    assert described.status_code == 200
    assert "/docs" not in described.json()["paths"]
