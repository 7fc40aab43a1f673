"""A browser player for what landed in the bucket: player.html and hls.js, served
on loopback by a small HTTP server that `make play` and the browser tests share.

hls.js comes from the npm registry into `.local/node/` (ignored by git), pinned.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from types import TracebackType
from urllib.parse import quote, urlsplit

log = logging.getLogger(__name__)

HLSJS_VERSION = "1.7.4"
DEFAULT_PORT = 5081
NPM_TIMEOUT_S = 300.0


class PlayerError(RuntimeError):
    """hls.js could not be found or installed, or the page could not be served."""


def hlsjs_prefix(root: Path) -> Path:
    """The npm prefix that hls.js is installed under for the repository `root`."""
    return root / ".local" / "node"


def find_hlsjs(root: Path) -> Path | None:
    """hls.min.js of the pinned version under `root`, or None."""
    package = hlsjs_prefix(root) / "node_modules" / "hls.js"
    script = package / "dist" / "hls.min.js"
    try:
        version = json.loads((package / "package.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        return None
    return script if version == HLSJS_VERSION and script.is_file() else None


def install_hlsjs(root: Path) -> Path:
    """Return hls.min.js, installing the pinned hls.js with npm when it is missing."""
    found = find_hlsjs(root)
    if found is not None:
        return found
    npm = shutil.which("npm")
    if npm is None:
        raise PlayerError(
            "npm is not installed, and the player needs it to fetch hls.js "
            "(apt-get install npm)"
        )

    prefix = hlsjs_prefix(root)
    prefix.mkdir(parents=True, exist_ok=True)
    command = [npm, "install", "--no-save", "--no-audit", "--no-fund"]
    command += ["--prefix", str(prefix), f"hls.js@{HLSJS_VERSION}"]
    log.info("installing hls.js version=%s prefix=%s", HLSJS_VERSION, prefix)
    try:
        result = subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=NPM_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise PlayerError(
            f"npm install of hls.js took over {NPM_TIMEOUT_S:g} s"
        ) from exc
    found = find_hlsjs(root)
    if result.returncode != 0 or found is None:
        raise PlayerError(
            f"npm install hls.js@{HLSJS_VERSION} failed (exit code "
            f"{result.returncode}): {result.stderr.strip()[-2000:]}"
        )
    return found


def page_html() -> bytes:
    return resources.files("app").joinpath("player.html").read_bytes()


class PlayerServer:
    """player.html at `/` and hls.js beside it, on a loopback port of its own.

    Open `url_for(playlist_url)` in a browser; the bucket must allow `origin`
    by CORS (`hlsrelay cors --origin ORIGIN`), since the page is on another port.
    """

    def __init__(self, hlsjs: Path, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self._files = {
            "/": (page_html(), "text/html; charset=utf-8"),
            "/hls.min.js": (hlsjs.read_bytes(), "text/javascript; charset=utf-8"),
        }
        source_map = hlsjs.with_name(hlsjs.name + ".map")
        if source_map.is_file():
            # A developer's open devtools ask for it; a 404 would be noise.
            self._files["/hls.min.js.map"] = (
                source_map.read_bytes(),
                "application/json",
            )
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def origin(self) -> str:
        """What a browser sends as Origin from this page: scheme, host and port."""
        return f"http://{self.host}:{self.port}"

    def url_for(self, playlist_url: str) -> str:
        return f"{self.origin}/?src={quote(playlist_url, safe='')}"

    def start(self) -> PlayerServer:
        if self._server is not None:
            raise PlayerError(f"the player page is already served at {self.origin}")
        files = self._files

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self._answer(with_body=True)

            def do_HEAD(self) -> None:
                self._answer(with_body=False)

            def _answer(self, with_body: bool) -> None:
                path = urlsplit(self.path).path
                body, content_type = files.get(path, (b"not found\n", "text/plain"))
                status = HTTPStatus.OK if path in files else HTTPStatus.NOT_FOUND
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                if with_body:
                    self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                log.debug("player page request %s", format % args)

        try:
            self._server = ThreadingHTTPServer((self.host, self.port), Handler)
        except OSError as exc:
            raise PlayerError(
                f"cannot serve the player page on {self.host}:{self.port}: {exc}"
            ) from exc
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="player-page", daemon=True
        )
        self._thread.start()
        log.info("player page served origin=%s", self.origin)
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = None
        self._thread = None

    def __enter__(self) -> PlayerServer:
        return self.start() if self._server is None else self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
