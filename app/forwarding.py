"""HTTP forwarding: viewers' GET and HEAD of ``/{application}/streams/{path}``.

A request for a file whose extension is forwarded is redirected to the same
key under HLSRELAY_FORWARD_BASE_URL, as the media server does; CORS answers,
preflights included, follow HLSRELAY_CORS_ORIGINS.
"""

from __future__ import annotations

import contextlib
import logging
import re

from fastapi import APIRouter, Request
from fastapi.responses import Response

from app.config import Settings
from app.errors import Forbidden, InvalidPath, NotFound, UnsupportedMedia
from app.openapi import FORWARD_RESPONSES
from app.paths import Upload, parse_upload

log = logging.getLogger(__name__)

FORWARD_PATH = "/{application}/streams/{path:path}"

# 302 Found, not 301/308 or 307. Every HLS player (AVPlayer, ExoPlayer,
# hls.js through XHR or fetch, ffmpeg) and every HTTP library follows a 302
# for GET and HEAD, some old smart-TV players do not know 307/308, and it is
# what the media server answers, so a CDN in front behaves as it did. It is
# temporary (RFC 9110 15.4.3): with no Cache-Control it is not heuristically
# cacheable (RFC 9111 4.2.2), so neither browsers nor CDNs pin viewers to a
# base URL or a signed token that an operator later changes, which a 301 or
# 308 would. Players resolve a playlist's relative URIs against the URL
# they were redirected to, so segments are then read from the bucket itself.
REDIRECT_STATUS = 302
ALLOWED_METHODS = "GET, HEAD, OPTIONS"
PREFLIGHT_MAX_AGE_S = 600

# RFC 9110 5.6.1 and 5.6.2: a comma-separated list of header-name tokens.
_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_TOKEN_LIST = re.compile(rf"{_TOKEN}(?:[ \t]*,[ \t]*{_TOKEN})*")


class Forwarder:
    """Turns a viewer's request into a redirect and the CORS headers it needs."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.base_url = settings.forward_base_url
        self.extensions = list(settings.forward_extensions)
        self.origins = frozenset(settings.cors_origins)

    def target(self, application: str, path: str, request: Request) -> str:
        """The redirect location, or the refusal: 400 for a bad path, else 404."""
        raw_path: bytes = request.scope.get("raw_path") or request.url.path.encode()
        # A bad path is a 400 whatever its extension; only then is it a 404.
        upload: Upload | None = None
        with contextlib.suppress(UnsupportedMedia):
            upload = parse_upload(application, path, raw_path, self.extensions)
        if self.base_url is None:
            raise NotFound(
                "HTTP forwarding is off: HLSRELAY_FORWARD_BASE_URL is not set"
            )
        if upload is None:
            raise NotFound(
                f"{path[:120]!r} is not forwarded: its extension is not in "
                "HLSRELAY_FORWARD_EXTENSIONS"
            )
        return self._location(upload, request.scope.get("query_string", b""))

    def _location(self, upload: Upload, query: bytes) -> str:
        key = self.settings.key_for(upload.app, upload.path)
        location = f"{self.base_url}/{key}"
        if not query:
            return location
        # The query is passed on as it came (signed tokens are byte-exact);
        # the request line cannot carry CR or LF, but refuse other controls
        # rather than copy them into a header.
        if any(byte < 0x21 or byte == 0x7F for byte in query):
            raise InvalidPath("the query string holds a control character or space")
        return f"{location}?{query.decode('latin-1')}"

    def is_allowed(self, origin: str) -> bool:
        return "*" in self.origins or origin.lower() in self.origins

    def cors_headers(self, origin: str | None) -> dict[str, str]:
        """Headers for an answer to ``origin``; caches must key on it too."""
        if not self.origins:
            return {}
        if "*" in self.origins:
            return {"Access-Control-Allow-Origin": "*"} if origin else {}
        headers = {"Vary": "Origin"}
        if origin and self.is_allowed(origin):
            headers["Access-Control-Allow-Origin"] = origin
        return headers

    def preflight_headers(self, origin: str, request: Request) -> dict[str, str]:
        if not self.is_allowed(origin):
            where = (
                "is not in HLSRELAY_CORS_ORIGINS"
                if self.origins
                else "may not read: HLSRELAY_CORS_ORIGINS is not set"
            )
            raise Forbidden(f"origin {origin[:100]!r} {where}")
        headers = self.cors_headers(origin)
        headers["Access-Control-Allow-Methods"] = ALLOWED_METHODS
        headers["Access-Control-Max-Age"] = str(PREFLIGHT_MAX_AGE_S)
        wanted = request.headers.get("access-control-request-headers", "").strip()
        # Echoing the asked-for headers (Range, say) is what lets a player
        # send them; anything that is not a plain list of names is left out.
        if wanted and _TOKEN_LIST.fullmatch(wanted):
            headers["Access-Control-Allow-Headers"] = wanted
            if "*" not in self.origins:
                headers["Vary"] = "Origin, Access-Control-Request-Headers"
        return headers


def forwarding_warnings(settings: Settings) -> list[str]:
    """Settings that start but leave players with 404s; said once at start."""
    if settings.forward_base_url is None:
        return []
    if not settings.forward_extensions:
        return [
            "HLSRELAY_FORWARD_BASE_URL is set but HLSRELAY_FORWARD_EXTENSIONS is "
            "empty: nothing is forwarded"
        ]
    if "m3u8" in settings.extensions and "m3u8" not in settings.forward_extensions:
        return [
            "HLS uploads are on but m3u8 is not in HLSRELAY_FORWARD_EXTENSIONS: "
            "players asking /{app}/streams/<stream>.m3u8 get 404; add m3u8"
        ]
    return []


def build_router(settings: Settings) -> APIRouter:
    """The forwarding routes for these settings; warns about settings that bite."""
    for warning in forwarding_warnings(settings):
        log.warning("%s", warning)
    if settings.forward_base_url is not None:
        log.info(
            "forwarding extensions=%s to base_url=%s",
            ",".join(settings.forward_extensions),
            settings.forward_base_url,
        )
    forwarder = Forwarder(settings)
    router = APIRouter()

    @router.api_route(
        FORWARD_PATH, methods=["GET", "HEAD"], responses=FORWARD_RESPONSES
    )
    async def forward(application: str, path: str, request: Request) -> Response:
        """Redirect a viewer to the stored file."""
        location = forwarder.target(application, path, request)
        headers = forwarder.cors_headers(request.headers.get("origin"))
        headers["Location"] = location
        log.debug("forwarded app=%s path=%s", application, path[:200])
        return Response(status_code=REDIRECT_STATUS, headers=headers)

    @router.options(FORWARD_PATH, responses=FORWARD_RESPONSES)
    async def preflight(application: str, path: str, request: Request) -> Response:
        """Answer a CORS preflight (or a plain OPTIONS) for a forwarded file."""
        forwarder.target(application, path, request)
        origin = request.headers.get("origin")
        if origin is None or "access-control-request-method" not in request.headers:
            return Response(status_code=204, headers={"Allow": ALLOWED_METHODS})
        headers = forwarder.preflight_headers(origin, request)
        return Response(status_code=204, headers=headers)

    return router
