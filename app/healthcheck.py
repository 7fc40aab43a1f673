"""The container's health probe: exit 0 when the relay here answers ``/healthz``.

The Dockerfile's HEALTHCHECK runs ``python -m app.healthcheck``, since a slim
image has no curl. It reads ``HLSRELAY_HOST`` and ``HLSRELAY_PORT`` as the
relay does, and imports nothing heavy: it runs every few seconds.
"""

from __future__ import annotations

import os
import sys
import urllib.request
from collections.abc import Mapping

DEFAULT_TIMEOUT_S = 3.0


def probe_url(env: Mapping[str, str]) -> str:
    """The /healthz URL of a relay started with this environment."""
    host = env.get("HLSRELAY_HOST", "").strip() or "127.0.0.1"
    # A wildcard address accepts connections on loopback too.
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    port = env.get("HLSRELAY_PORT", "").strip() or "5080"
    return f"http://{host}:{port}/healthz"


def is_healthy(url: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return bool(response.status == 200)
    except (OSError, ValueError):  # URLError and HTTPError are OSErrors
        return False


def main() -> int:
    url = probe_url(os.environ)
    if is_healthy(url):
        return 0
    print(f"hlsrelay healthcheck: no 200 from {url}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    # NOTE: a process entry point like app/__main__.py, so it may exit.
    sys.exit(main())
