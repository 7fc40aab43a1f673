"""A real player plays what landed: headless Chromium runs hls.js from the bucket
while ffmpeg pushes a live stream through the relay into SeaweedFS (issue 9).

Each test leaves a screenshot and the player's event log under test-artifacts/.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from botocore.exceptions import ClientError
from chromium import BrowserUnavailable, CdpError, Chromium, Page, install_chromium
from conftest import REPO_ROOT, FFmpeg, Relay, RelayFactory

from app.locals3 import LocalS3
from app.player import PlayerError, PlayerServer, install_hlsjs

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import CORSRuleTypeDef

pytestmark = pytest.mark.integration

ARTIFACTS = REPO_ROOT / "test-artifacts" / "browser"
PLAY_S = 10.0  # media seconds the video must advance while the stream is live
PLAYBACK_TIMEOUT_S = 60.0
LANDED_TIMEOUT_S = 30.0
# ffmpeg stops by itself after this long, should a test die without stopping it.
ENCODER_MAX_S = 120
POLL_S = 0.25
OTHER_SITE = "https://other-player.example"
X264 = ["-c:v", "libx264", "-preset", "ultrafast", "-g", "25", "-sc_threshold", "0"]

SAMPLE_JS = """(() => {
  const p = window.hlsrelayPlayer, v = document.getElementById("video");
  return {
    time: v.currentTime, paused: v.paused, ready: v.readyState,
    height: v.videoHeight, fatal: p ? p.fatalErrors : null,
    frags: p ? p.fragsLoaded : 0,
    level: p && p.hls ? p.hls.currentLevel : null,
  };
})()"""


def _unavailable(what: str, exc: Exception) -> None:
    # .ci/run installs chromium and npm up front; in CI a missing browser or
    # hls.js is a broken install step, not a reason to skip.
    message = f"NO BROWSER TEST RAN: {what} cannot be had here: {exc}"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def chromium_exe() -> str:
    try:
        return install_chromium()
    except BrowserUnavailable as exc:
        _unavailable("Debian's chromium", exc)
        raise


@pytest.fixture(scope="session")
def hlsjs() -> Path:
    try:
        return install_hlsjs(REPO_ROOT)
    except PlayerError as exc:
        _unavailable("hls.js", exc)
        raise


@pytest.fixture
def page(chromium_exe: str, tmp_path: Path) -> Iterator[Page]:
    chromium = Chromium(chromium_exe, tmp_path / "profile", tmp_path / "chromium.log")
    try:
        yield chromium.start()
    finally:
        chromium.stop()


@pytest.fixture
def player(hlsjs: Path) -> Iterator[PlayerServer]:
    with PlayerServer(hlsjs) as server:
        yield server


@pytest.fixture
def artifacts(request: pytest.FixtureRequest) -> Path:
    folder: Path = ARTIFACTS / request.node.name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


class Encoder:
    """ffmpeg pushing a live stream in the background, stopped by its PID."""

    def __init__(self, ffmpeg: FFmpeg, args: list[str], log_path: Path) -> None:
        command = [ffmpeg.exe, "-hide_banner", "-nostdin", "-loglevel", "error"]
        self.log_path = log_path
        with log_path.open("wb") as log_file:
            self.proc = subprocess.Popen(
                [*command, *args],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )

    @property
    def is_live(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        # SIGTERM lets ffmpeg finish its last segment and playlist.
        if self.is_live:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]


@pytest.fixture
def encoders(ffmpeg: FFmpeg, tmp_path: Path) -> Iterator[Callable[..., Encoder]]:
    started: list[Encoder] = []

    def start(*args: str) -> Encoder:
        log_path = tmp_path / f"encoder-{len(started)}.log"
        encoder = Encoder(ffmpeg, list(args), log_path)
        started.append(encoder)
        return encoder

    yield start
    for encoder in started:
        encoder.stop()


def allow_origin(local_s3: LocalS3, bucket: str, relay: Relay, origin: str) -> None:
    """`hlsrelay cors --origin`, with the relay's own settings, on a bucket that
    already serves another site's player.

    SeaweedFS lets every origin read a bucket that has no CORS rules at all,
    where AWS and most providers let none; with a rule in place it enforces
    them as they do, so the page plays only if the command's rule works.
    """
    other: CORSRuleTypeDef = {"AllowedMethods": ["GET"], "AllowedOrigins": [OTHER_SITE]}
    local_s3.client().put_bucket_cors(
        Bucket=bucket, CORSConfiguration={"CORSRules": [other]}
    )
    result = subprocess.run(
        [sys.executable, "-m", "app", "cors", "--origin", origin],
        cwd=REPO_ROOT,
        env=relay.env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def wait_landed(
    client: S3Client, bucket: str, keys: list[str], encoder: Encoder
) -> None:
    """Wait until every key is in the bucket: a player opened before its
    playlist exists sees a 404, which is not what these tests are about."""
    deadline = time.monotonic() + LANDED_TIMEOUT_S
    missing = list(keys)
    while missing and time.monotonic() < deadline:
        assert encoder.is_live, f"ffmpeg exited early:\n{encoder.log_text()}"
        for key in list(missing):
            with contextlib.suppress(ClientError):  # not there yet
                client.head_object(Bucket=bucket, Key=key)
                missing.remove(key)
        time.sleep(POLL_S)
    assert not missing, f"not in the bucket after {LANDED_TIMEOUT_S:g} s: {missing}"


@dataclass
class Playback:
    """What the player showed, sampled while the stream was live."""

    samples: list[dict[str, Any]] = field(default_factory=list)
    first_time: float | None = None  # currentTime when playback was first seen
    # Why sampling stopped; "done" only when every condition held while live.
    outcome: str = "not watched"

    @property
    def advanced_s(self) -> float:
        if self.first_time is None or not self.samples:
            return 0.0
        return float(self.samples[-1]["time"]) - self.first_time


def watch(
    page: Page,
    encoder: Encoder,
    playback: Playback,
    done: Callable[[Playback], bool] = lambda playback: True,
    on_sample: Callable[[Playback], None] = lambda playback: None,
    waiting_for: str = "playback",
) -> None:
    """Sample the video until it advanced PLAY_S and `done` holds, while the
    encoder still pushes; stop early on a fatal hls.js error."""
    deadline = time.monotonic() + PLAYBACK_TIMEOUT_S
    playback.outcome = f"still waiting for {waiting_for} after {PLAYBACK_TIMEOUT_S:g} s"
    while time.monotonic() < deadline:
        sample = page.evaluate(SAMPLE_JS)
        playback.samples.append(sample)
        if not encoder.is_live:
            playback.outcome = f"ffmpeg exited first:\n{encoder.log_text()}"
            return
        if sample["fatal"]:
            playback.outcome = "hls.js reported a fatal error"
            return
        if playback.first_time is None and sample["time"] > 0 and not sample["paused"]:
            playback.first_time = float(sample["time"])
        on_sample(playback)
        if playback.advanced_s >= PLAY_S and done(playback):
            playback.outcome = "done"
            return
        time.sleep(POLL_S)


def player_events(page: Page) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = page.evaluate("window.hlsrelayPlayer.events")
    return events


def save_artifacts(
    artifacts: Path, page: Page, url: str, playback: Playback
) -> dict[str, Any]:
    """Screenshot and event log; their paths are printed for the reader.

    Best effort: a browser that died must not hide why the test failed.
    """
    screenshot = artifacts / "screenshot.png"
    record: dict[str, Any] = {"artifacts": str(artifacts), "player_url": url}
    try:
        page.screenshot(screenshot)
        record["hls_events"] = player_events(page)
    except CdpError as exc:
        record["hls_events"] = []
        record["browser_error"] = str(exc)
    record["network"] = page.log.to_json()
    record["samples"] = playback.samples
    log_path = artifacts / "hls-events.json"
    log_path.write_text(json.dumps(record, indent=1))
    print(f"\nbrowser artifacts: {screenshot}\n                   {log_path}")
    return record


def assert_played_live(
    page: Page, playback: Playback, record: dict[str, Any], s3_prefix: str
) -> list[dict[str, Any]]:
    """The checks both streams share; returns the hls.js event log."""
    events: list[dict[str, Any]] = record["hls_events"]
    where = f"(event log in {record['artifacts']})"
    fatal = [e for e in events if e["event"] == "hlsError" and e["fatal"]]
    assert not fatal, f"fatal hls.js errors {where}: {fatal}"
    failed = [vars(r) for r in page.log.failures()]
    assert not failed, f"failed requests {where}: {failed}"

    assert playback.outcome == "done", (
        f"{playback.outcome}; the video advanced {playback.advanced_s:.1f} s of "
        f"{PLAY_S:g} s {where}; last samples {playback.samples[-3:]}; "
        f"console {page.log.console[-10:]}"
    )
    assert playback.advanced_s >= PLAY_S
    assert any(e["event"] == "hlsLevelLoaded" and e["live"] for e in events)

    frags = [e for e in events if e["event"] == "hlsFragLoaded"]
    # Segments are 1 s long: PLAY_S seconds of video take at least that many.
    assert len(frags) >= PLAY_S, f"only {len(frags)} segments loaded {where}"
    outside = [e["url"] for e in frags if not e["url"].startswith(s3_prefix)]
    assert not outside, outside
    return events


def test_browser_plays_live_ts_stream_from_bucket(
    local_s3: LocalS3,
    bucket: str,
    relay_factory: RelayFactory,
    encoders: Callable[..., Encoder],
    player: PlayerServer,
    page: Page,
    artifacts: Path,
) -> None:
    relay = relay_factory()
    allow_origin(local_s3, bucket, relay, player.origin)
    encoder = encoders(
        "-re", "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25",
        "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000",
        "-t", str(ENCODER_MAX_S), *X264, "-c:a", "aac",
        "-f", "hls", "-hls_time", "1", "-hls_list_size", "6",
        "-hls_flags", "delete_segments",
        "-method", "PUT", relay.base_url_for("LiveApp", "live.m3u8"),
    )  # fmt: skip
    wait_landed(local_s3.client(), bucket, ["streams/live.m3u8"], encoder)

    url = player.url_for(local_s3.url_for(bucket, "streams/live.m3u8"))
    page.open(url)
    playback = Playback()
    try:
        watch(page, encoder, playback)
    finally:
        record = save_artifacts(artifacts, page, url, playback)

    s3_prefix = local_s3.url_for(bucket, "streams/")
    events = assert_played_live(page, playback, record, s3_prefix)
    assert any(e["url"].endswith(".ts") for e in events if "url" in e)
    assert max(s["height"] for s in playback.samples) == 240


def test_browser_plays_fmp4_variants_and_switches_level(
    local_s3: LocalS3,
    bucket: str,
    relay_factory: RelayFactory,
    encoders: Callable[..., Encoder],
    player: PlayerServer,
    page: Page,
    artifacts: Path,
) -> None:
    relay = relay_factory()
    allow_origin(local_s3, bucket, relay, player.origin)
    encoder = encoders(
        "-re", "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25",
        "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000",
        "-t", str(ENCODER_MAX_S),
        "-map", "0:v", "-map", "1:a", "-map", "0:v", "-map", "1:a",
        *X264, "-b:v:0", "600k", "-s:v:1", "160x120", "-b:v:1", "150k",
        "-c:a", "aac", "-b:a", "64k",
        "-f", "hls", "-hls_time", "1", "-hls_list_size", "6",
        "-hls_segment_type", "fmp4", "-hls_fmp4_init_filename", "v%v_init.mp4",
        "-hls_flags", "delete_segments",
        "-var_stream_map", "v:0,a:0 v:1,a:1", "-master_pl_name", "master.m3u8",
        "-method", "PUT", relay.base_url_for("LiveApp", "abr/v%v.m3u8"),
    )  # fmt: skip
    playlists = [
        "streams/abr/master.m3u8",
        "streams/abr/v0.m3u8",
        "streams/abr/v1.m3u8",
    ]
    wait_landed(local_s3.client(), bucket, playlists, encoder)

    # Once playing, ask for the other level at the next segment (the viewer's
    # quality menu); hls.js must switch and keep playing.
    target: list[int] = []

    def switch_once(playback: Playback) -> None:
        if target or playback.advanced_s < 3:
            return
        js = "(() => { const h = hlsrelayPlayer.hls; const to = h.currentLevel ? 0 : 1;"
        target.append(page.evaluate(js + " h.nextLevel = to; return to; })()"))

    def switched(playback: Playback) -> bool:
        heights = {s["height"] for s in playback.samples if s["height"]}
        on_target = bool(target) and playback.samples[-1]["level"] == target[0]
        return on_target and len(heights) >= 2

    url = player.url_for(local_s3.url_for(bucket, "streams/abr/master.m3u8"))
    page.open(url)
    playback = Playback()
    try:
        watch(
            page,
            encoder,
            playback,
            done=switched,
            on_sample=switch_once,
            waiting_for="the switch to the other level",
        )
    finally:
        record = save_artifacts(artifacts, page, url, playback)

    s3_prefix = local_s3.url_for(bucket, "streams/abr/")
    events = assert_played_live(page, playback, record, s3_prefix)
    parsed = [e for e in events if e["event"] == "hlsManifestParsed"]
    assert len(parsed) == 1, parsed
    heights = sorted(level["height"] for level in parsed[0]["levels"])
    assert heights == [120, 240]
    frags = [e for e in events if e["event"] == "hlsFragLoaded"]
    assert all(e["url"].endswith(".m4s") for e in frags), frags

    # The bonus: the switch happened, segments of both levels were played,
    # and the picture took both sizes.
    assert target, "playback never got far enough to ask for a level switch"
    switches = [e["level"] for e in events if e["event"] == "hlsLevelSwitched"]
    assert target[0] in switches, switches
    assert {e["level"] for e in frags} == {0, 1}
    assert {s["height"] for s in playback.samples} >= {120, 240}, playback.samples
