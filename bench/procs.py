"""The processes a benchmark runs and watches: relays, nginx, and /proc readings.

Every process is started on a free 127.0.0.1 port in a session of its own and
stopped by its PID (SIGTERM, then SIGKILL after a bound), never by name.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from prometheus_client.parser import text_string_to_metric_families

from app.locals3 import REGION, LocalS3, free_port

REPO_ROOT = Path(__file__).resolve().parent.parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


class BenchError(RuntimeError):
    """A process the benchmark needs could not be started or used."""


def cpu_times(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of a process, its exited threads included."""
    text = Path(f"/proc/{pid}/stat").read_text()
    # The command name (field 2) may hold spaces; fields after it are plain.
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[11]) / CLOCK_TICKS, int(fields[12]) / CLOCK_TICKS


def thread_cpu_ns(pid: int) -> dict[int, int]:
    """Nanoseconds on CPU of each live thread of a process, by thread id.

    /proc/PID/stat counts in clock ticks (10 ms here), too coarse for the
    few cycles of a short level; schedstat's first field is exact. A thread
    that exits is gone from it, so this is for threads, not the process.
    """
    times: dict[int, int] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, ValueError, IndexError):
            times[int(task.name)] = int((task / "schedstat").read_text().split()[0])
    return times


def cpu_seconds(pid: int) -> float:
    user, system = cpu_times(pid)
    return user + system


def rss_bytes(pid: int) -> int:
    """Resident set size of a process, from /proc/PID/statm."""
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_SIZE


def load_average() -> tuple[float, float, float]:
    one, five, fifteen = Path("/proc/loadavg").read_text().split()[:3]
    return float(one), float(five), float(fifteen)


def stop_process(proc: subprocess.Popen[bytes], sig: int, timeout_s: float) -> None:
    if proc.poll() is not None:
        return
    os.kill(proc.pid, sig)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


@dataclass
class Usage:
    """CPU and memory of one process over an interval."""

    cpu_s: float
    system_s: float
    wall_s: float
    rss_start: int
    rss_peak: int
    rss_end: int
    # CPU of the main thread alone: for the relay, its event loop, where
    # every request is parsed and answered; the rest is its worker threads.
    main_thread_cpu_s: float = 0.0

    @property
    def cores(self) -> float:
        return self.cpu_s / self.wall_s if self.wall_s > 0 else 0.0

    def as_dict(self) -> dict[str, float]:
        return {
            "cpu_s": round(self.cpu_s, 3),
            "system_s": round(self.system_s, 3),
            "wall_s": round(self.wall_s, 3),
            "cores": round(self.cores, 3),
            "main_thread_cpu_s": round(self.main_thread_cpu_s, 3),
            "rss_start_mib": round(self.rss_start / 2**20, 1),
            "rss_peak_mib": round(self.rss_peak / 2**20, 1),
            "rss_end_mib": round(self.rss_end / 2**20, 1),
        }


class UsageWatch:
    """Samples a process's RSS in a thread and its CPU time at both ends."""

    def __init__(self, pid: int, interval_s: float = 0.05) -> None:
        self.pid = pid
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._peak = 0
        self._start_cpu = (0.0, 0.0)
        self._start_threads: dict[int, int] = {}
        self._start_wall = 0.0
        self._start_rss = 0
        self.usage: Usage | None = None

    def __enter__(self) -> UsageWatch:
        self._start_cpu = cpu_times(self.pid)
        self._start_threads = thread_cpu_ns(self.pid)
        self._start_wall = time.monotonic()
        self._start_rss = self._peak = rss_bytes(self.pid)
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()
        rss = rss_bytes(self.pid)
        user, system = cpu_times(self.pid)
        threads = thread_cpu_ns(self.pid)
        spent = {
            tid: (ns - self._start_threads.get(tid, 0)) / 1e9
            for tid, ns in threads.items()
        }
        self.usage = Usage(
            # The process's ticks are off by up to one tick either way; the
            # threads' exact times leave out threads that exited meanwhile.
            cpu_s=max(user + system - sum(self._start_cpu), sum(spent.values())),
            system_s=system - self._start_cpu[1],
            wall_s=time.monotonic() - self._start_wall,
            rss_start=self._start_rss,
            rss_peak=max(self._peak, rss),
            rss_end=rss,
            main_thread_cpu_s=spent.get(self.pid, 0.0),
        )

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            with contextlib.suppress(OSError):
                self._peak = max(self._peak, rss_bytes(self.pid))


def _wait_http(url: str, proc: subprocess.Popen[bytes], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status < 500:
                    return True
        except urllib.error.HTTPError as exc:
            if exc.code < 500:
                return True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.05)
    return False


class RelayProcess:
    """``python -m app serve`` against a bucket of a LocalS3, with extra env."""

    command = ("-m", "app", "serve", "--host", "127.0.0.1")

    def __init__(
        self,
        name: str,
        s3: LocalS3,
        bucket: str,
        work_dir: Path,
        extra_env: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.spool_dir = work_dir / f"spool-{name}"
        self.log_path = work_dir / f"relay-{name}.log"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("HLSRELAY_")}
        env.update(
            HLSRELAY_S3_BUCKET=bucket,
            HLSRELAY_S3_ENDPOINT=s3.endpoint,
            HLSRELAY_S3_REGION=REGION,
            HLSRELAY_S3_ACCESS_KEY=s3.access_key,
            HLSRELAY_S3_SECRET_KEY=s3.secret_key,
            HLSRELAY_S3_ADDRESSING="path",
            HLSRELAY_SPOOL_DIR=str(self.spool_dir),
            HLSRELAY_PORT=str(self.port),
            # Every synthetic encoder comes from 127.0.0.1; in production each
            # has its own address and the per-client bound is never near.
            HLSRELAY_MAX_UPLOADS="4096",
            HLSRELAY_MAX_UPLOADS_PER_CLIENT="4096",
        )
        env.update(extra_env or {})
        self.env = env
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise BenchError(f"relay {self.name} is not running")
        return self._proc.pid

    def start(self) -> RelayProcess:
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        args = [sys.executable, *self.command]
        with self.log_path.open("ab") as log_file:
            self._proc = subprocess.Popen(
                args,
                cwd=REPO_ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        if not _wait_http(f"{self.url}/healthz", self._proc, 30.0):
            self.stop()
            tail = self.log_path.read_text(errors="replace")[-2000:]
            raise BenchError(f"relay {self.name} did not start; log:\n{tail}")
        return self

    def stop(self, timeout_s: float = 20.0) -> None:
        if self._proc is not None:
            stop_process(self._proc, signal.SIGTERM, timeout_s)
            self._proc = None

    def metrics(self) -> dict[str, float]:
        """Mean durations the relay measured itself (ms), and its supersede count."""
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=10) as response:
            text = response.read().decode()
        sums: dict[str, float] = {}
        counts: dict[str, float] = {}
        found: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = sample.labels
                if sample.name == "hlsrelay_superseded_total":
                    found["superseded"] = sample.value
                    continue
                route = labels.get("route", "")
                if route and "hls-upload" not in route:
                    continue  # probes and /metrics itself
                what = labels.get("kind") or labels.get("method") or ""
                stem = sample.name.removeprefix("hlsrelay_")
                for suffix, table in (
                    ("_seconds_sum", sums),
                    ("_seconds_count", counts),
                ):
                    if stem.endswith(suffix):
                        name = stem.removesuffix(suffix) + (f".{what}" if what else "")
                        table[name] = table.get(name, 0.0) + sample.value
        for name, total in sums.items():
            if counts.get(name):
                found[f"{name}_mean_ms"] = round(1000 * total / counts[name], 2)
        return found

    def kill(self) -> None:
        """SIGKILL by PID, for a relay whose spool is thrown away anyway."""
        if self._proc is not None:
            stop_process(self._proc, signal.SIGKILL, 10.0)
            self._proc = None

    def spool_entries(self) -> int:
        """Operations durable in the spool and not yet applied to S3."""
        try:
            return sum(1 for _ in (self.spool_dir / "entries").glob("*.json"))
        except OSError:
            return 0

    def wait_drained(self, timeout_s: float) -> bool:
        """True once the spool is empty: S3 has everything acknowledged."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.spool_entries() == 0:
                return True
            time.sleep(0.05)
        return False

    def __enter__(self) -> RelayProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class FloorProcess(RelayProcess):
    """``python -m bench.floor``: the least a relay can spend (bench/floor.py)."""

    command = ("-m", "bench.floor")

    def spool_entries(self) -> int:
        try:
            return sum(1 for _ in (self.spool_dir / "entries").iterdir())
        except OSError:
            return 0


NGINX_CANDIDATES = ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx")


def find_nginx() -> str | None:
    for candidate in NGINX_CANDIDATES:
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def _nginx_config(root: Path, port: int, workers: int) -> str:
    # Every path nginx writes is under root, so it needs nothing of the
    # system's /var/lib/nginx; the temp paths of modules it does not use are
    # left alone, since nginx-light lacks some of those modules.
    user = "user root root;\n" if os.geteuid() == 0 else ""
    return (
        f"{user}worker_processes {workers};\n"
        "daemon off;\n"
        f"pid {root}/nginx.pid;\n"
        f"error_log {root}/error.log warn;\n"
        "events { worker_connections 4096; }\n"
        "http {\n"
        "  access_log off;\n"
        f"  client_body_temp_path {root}/body;\n"
        "  client_max_body_size 0;\n"
        "  client_body_buffer_size 1m;\n"
        "  server {\n"
        f"    listen 127.0.0.1:{port};\n"
        "    location / {\n"
        f"      root {root}/www;\n"
        "      dav_methods PUT DELETE;\n"
        "      create_full_put_path on;\n"
        "      dav_access user:rw;\n"
        "    }\n"
        "  }\n"
        "}\n"
    )


class NginxDav:
    """nginx with its dav module taking PUTs into a folder of ours."""

    def __init__(self, work_dir: Path, workers: int = 1) -> None:
        exe = find_nginx()
        if exe is None:
            raise BenchError(
                "nginx is not installed; `apt-get install -y nginx-light` "
                "(Debian) gives the dav module the ceiling is compared with"
            )
        self.exe = exe
        self.root = work_dir / f"nginx-{workers}"
        self.workers = workers
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise BenchError("nginx is not running")
        return self._proc.pid

    def worker_pids(self) -> list[int]:
        """The master's children: the workers that do the writing."""
        children = Path(f"/proc/{self.pid}/task/{self.pid}/children")
        return [int(pid) for pid in children.read_text().split()]

    def start(self) -> NginxDav:
        for folder in ("www", "body"):
            (self.root / folder).mkdir(parents=True, exist_ok=True)
        config = self.root / "nginx.conf"
        config.write_text(_nginx_config(self.root, self.port, self.workers))
        args = [self.exe, "-p", str(self.root), "-c", str(config)]
        with (self.root / "stderr.log").open("ab") as log_file:
            self._proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        if not _wait_http(f"{self.url}/", self._proc, 15.0):
            self.stop()
            errors = (self.root / "stderr.log").read_text(errors="replace")
            raise BenchError(f"nginx did not start: {errors[-2000:]}")
        return self

    def stop(self) -> None:
        if self._proc is not None:
            # SIGTERM is nginx's fast shutdown; the master stops its workers.
            stop_process(self._proc, signal.SIGTERM, 10.0)
            self._proc = None

    def __enter__(self) -> NginxDav:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
