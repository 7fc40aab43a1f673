"""Shared fixtures: one local SeaweedFS per session, a fresh bucket per test, and
real relay processes started against them."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings

from app.config import Settings
from app.locals3 import REGION, LocalS3
from app.locals3 import free_port as _free_port

REPO_ROOT = Path(__file__).resolve().parent.parent
RELAY_START_TIMEOUT_S = 30.0
HTTP_TIMEOUT_S = 30.0

# The machines CI runs on are shared: an answer the relay gives in
# milliseconds can wait seconds for a core, and httpx's 5 s default turned
# that into failures that said nothing about the relay. Calls that test a
# timeout pass their own.
for _call in (
    httpx.request, httpx.get, httpx.head, httpx.options, httpx.put, httpx.post,
    httpx.patch, httpx.delete, httpx.Client.__init__, httpx.AsyncClient.__init__,
):  # fmt: skip
    _call.__kwdefaults__["timeout"] = httpx.Timeout(HTTP_TIMEOUT_S)

# For the same reason, Hypothesis's checks of wall time per example are off.
hypothesis_settings.register_profile(
    "shared-machine", deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
hypothesis_settings.load_profile("shared-machine")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    return _free_port()


@pytest.fixture(scope="session")
def local_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalS3]:
    s3 = LocalS3(tmp_path_factory.mktemp("local-s3"))
    s3.start()
    try:
        yield s3
    finally:
        s3.stop()


@pytest.fixture
def bucket(local_s3: LocalS3) -> str:
    # S3 bucket names: 3-63 characters, lower case letters, digits and dashes.
    name = f"t-{uuid.uuid4().hex[:20]}"
    local_s3.create_bucket(name)
    return name


def make_settings(
    local_s3: LocalS3, bucket: str, spool: Path, **extra: object
) -> Settings:
    return Settings(
        s3_bucket=bucket,
        s3_endpoint=local_s3.endpoint,
        s3_access_key=local_s3.access_key,
        s3_secret_key=local_s3.secret_key,
        s3_addressing="path",
        spool_dir=spool,
        segment_wait_s=2,
        **extra,
    )


class Relay:
    """A relay running as `python -m app serve` in a process of its own."""

    def __init__(
        self, env: Mapping[str, str], spool_dir: Path, log_path: Path, port: int
    ) -> None:
        self.env = dict(env)
        self.spool_dir = spool_dir
        self.log_path = log_path
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError("the relay is not running")
        return self._proc.pid

    @property
    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def base_url_for(self, app: str, path: str) -> str:
        """The upload URL an encoder PUTs `path` of application `app` to."""
        return f"{self.url}/{app}/hls-upload/{path.lstrip('/')}"

    def start(self) -> Relay:
        if self.is_running:
            raise RuntimeError(f"the relay already runs as pid {self.pid}")
        args = [sys.executable, "-m", "app", "serve"]
        args += ["--host", "127.0.0.1", "--port", str(self.port)]
        with self.log_path.open("ab") as log_file:
            log_file.write(f"\n--- {time.ctime()}: {' '.join(args)}\n".encode())
            log_file.flush()
            self._proc = subprocess.Popen(
                args,
                cwd=REPO_ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._wait_healthy()
        return self

    def kill(self) -> None:
        """SIGKILL: a crash, with no chance to drain or flush anything."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()

    def terminate(self, timeout_s: float = 30.0) -> int:
        """SIGTERM and wait; a relay that does not stop in time is a failure.

        Returns the exit code, which is -15 after a clean stop: uvicorn re-raises
        the signal once its graceful shutdown is done.
        """
        proc = self._proc
        if proc is None:
            raise RuntimeError("the relay was never started")
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                raise AssertionError(
                    f"relay pid {proc.pid} ignored SIGTERM for {timeout_s:g} s; "
                    f"log: {self.log_path}"
                ) from None
        return proc.returncode

    def restart(self) -> Relay:
        """Stop the relay if it runs, then start it again on the same spool
        and port, as a supervisor would after a crash."""
        if self.is_running:
            self.terminate()
        return self.start()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_ready(self, timeout_s: float = RELAY_START_TIMEOUT_S) -> httpx.Response:
        """Poll /readyz until 200: the first HEAD bucket runs after start-up."""
        deadline = time.monotonic() + timeout_s
        while (answer := httpx.get(f"{self.url}/readyz")).status_code != 200:
            assert time.monotonic() < deadline, f"/readyz never ready: {answer.text}"
            time.sleep(0.1)
        return answer

    def _wait_healthy(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + RELAY_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"relay exited with code {self._proc.returncode} during "
                    f"start-up; log {self.log_path}:\n{self.log_text()[-4000:]}"
                )
            with contextlib.suppress(httpx.HTTPError):  # not listening yet
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(
            f"relay gave no 200 on /healthz within {RELAY_START_TIMEOUT_S:g} s; "
            f"log {self.log_path}:\n{self.log_text()[-4000:]}"
        )


RelayFactory = Callable[..., Relay]


@pytest.fixture
def relay_factory(
    local_s3: LocalS3, bucket: str, tmp_path: Path
) -> Iterator[RelayFactory]:
    """Start relays: `relay_factory(spool_dir=None, extra_env=None, bucket=None)`.

    Each relay gets a free port and writes to the test's bucket unless told
    otherwise; every one is stopped at teardown.
    """
    relays: list[Relay] = []

    def start_relay(
        spool_dir: Path | None = None,
        extra_env: Mapping[str, str] | None = None,
        bucket_name: str | None = None,
    ) -> Relay:
        n = len(relays)
        spool = spool_dir if spool_dir is not None else tmp_path / f"spool-{n}"
        spool.mkdir(parents=True, exist_ok=True)

        # A developer's own HLSRELAY_* settings must not leak into the tests.
        env = {k: v for k, v in os.environ.items() if not k.startswith("HLSRELAY_")}
        env.update(
            HLSRELAY_S3_BUCKET=bucket_name or bucket,
            HLSRELAY_S3_ENDPOINT=local_s3.endpoint,
            HLSRELAY_S3_REGION=REGION,
            HLSRELAY_S3_ACCESS_KEY=local_s3.access_key,
            HLSRELAY_S3_SECRET_KEY=local_s3.secret_key,
            HLSRELAY_S3_ADDRESSING="path",
            HLSRELAY_SPOOL_DIR=str(spool),
        )
        env.update(extra_env or {})

        relay = Relay(env, spool, tmp_path / f"relay-{n}.log", free_port())
        relays.append(relay)
        return relay.start()

    yield start_relay

    # Stop every relay before the session's S3 goes away, so none is left
    # retrying against a dead endpoint. A relay that hangs on SIGTERM is killed
    # and then reported, after the others are stopped too.
    hung: list[str] = []
    for relay in relays:
        if not relay.is_running:
            continue
        try:
            relay.terminate(timeout_s=20)
        except AssertionError as exc:
            hung.append(str(exc))
    if hung:
        pytest.fail("; ".join(hung))


class FFmpeg:
    """Runs the ffmpeg binary with bounded time and captured diagnostics."""

    def __init__(self, log_dir: Path) -> None:
        found = shutil.which("ffmpeg")
        if found is None:
            pytest.fail("ffmpeg is not installed (.ci/run installs it with apt-get)")
        self.exe = found
        self.log_dir = log_dir
        self.runs = 0

    @staticmethod
    def test_source(seconds: float, size: str = "320x240", rate: int = 25) -> list[str]:
        """lavfi inputs: a moving test pattern and a tone, `seconds` long."""
        return [
            "-f", "lavfi", "-i", f"testsrc2=size={size}:rate={rate}",
            "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000",
            "-t", f"{seconds:g}",
        ]  # fmt: skip

    def run(
        self, *args: str, timeout_s: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        self.runs += 1
        command = [self.exe, "-hide_banner", "-nostdin", "-loglevel", "error", *args]
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout_s, check=False
        )
        log_path = self.log_dir / f"ffmpeg-{self.runs}.log"
        log_path.write_text(f"{' '.join(command)}\n{result.stderr}")
        return result

    def decode(
        self, url: str, timeout_s: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        """Read `url` as a player would and decode every frame to nowhere."""
        return self.run("-i", url, "-f", "null", "-", timeout_s=timeout_s)


@pytest.fixture
def ffmpeg(tmp_path: Path) -> FFmpeg:
    return FFmpeg(tmp_path)


@pytest.fixture
def anyio_backend() -> str:
    """Async tests run on asyncio, as uvicorn runs the relay."""
    return "asyncio"
