"""The player page server and the hls.js pin, without a browser."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from app.player import (
    HLSJS_VERSION,
    PlayerError,
    PlayerServer,
    find_hlsjs,
    hlsjs_prefix,
    install_hlsjs,
)


def fake_hlsjs(root: Path, version: str = HLSJS_VERSION) -> Path:
    """An npm layout like `npm install hls.js` leaves, with a stand-in script."""
    package = hlsjs_prefix(root) / "node_modules" / "hls.js"
    (package / "dist").mkdir(parents=True)
    (package / "package.json").write_text(json.dumps({"version": version}))
    script = package / "dist" / "hls.min.js"
    script.write_text("window.Hls = undefined;\n")
    return script


def test_player_server_serves_page_and_hlsjs_uncached(tmp_path: Path) -> None:
    with PlayerServer(fake_hlsjs(tmp_path)) as server:
        page = httpx.get(f"{server.origin}/?src=x", trust_env=False)
        script = httpx.get(f"{server.origin}/hls.min.js", trust_env=False)

    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "window.hlsrelayPlayer" in page.text
    assert '<script src="hls.min.js">' in page.text
    assert script.status_code == 200
    assert script.text == "window.Hls = undefined;\n"
    assert page.headers["cache-control"] == "no-store"


def test_player_server_other_path_is_404(tmp_path: Path) -> None:
    with PlayerServer(fake_hlsjs(tmp_path)) as server:
        answer = httpx.get(f"{server.origin}/../app/player.py", trust_env=False)
        head = httpx.head(f"{server.origin}/hls.min.js.map", trust_env=False)

    assert answer.status_code == 404
    assert head.status_code == 404  # the stand-in has no source map


def test_player_server_url_carries_playlist_url_whole(tmp_path: Path) -> None:
    playlist = "http://127.0.0.1:9000/b/streams/live.m3u8?token=a&b=c"
    with PlayerServer(fake_hlsjs(tmp_path)) as server:
        url = server.url_for(playlist)
        origin = server.origin

    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}" == origin
    assert parse_qs(parts.query) == {"src": [playlist]}


def test_player_server_port_taken_raises(tmp_path: Path) -> None:
    script = fake_hlsjs(tmp_path)
    with PlayerServer(script) as first, pytest.raises(PlayerError, match="cannot"):
        PlayerServer(script, port=first.port).start()


def test_find_hlsjs_other_version_is_none(tmp_path: Path) -> None:
    fake_hlsjs(tmp_path, version="1.0.0")

    assert find_hlsjs(tmp_path) is None


def test_find_hlsjs_pinned_version_found(tmp_path: Path) -> None:
    script = fake_hlsjs(tmp_path)

    assert find_hlsjs(tmp_path) == script


def test_install_hlsjs_without_npm_raises(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))

    with pytest.raises(PlayerError, match="npm is not installed"):
        install_hlsjs(tmp_path)
    assert not hlsjs_prefix(tmp_path).exists()
