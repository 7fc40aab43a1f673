"""Debian's headless Chromium for the browser tests, driven over the DevTools
protocol with a small websocket client. Nothing here downloads a browser: it is
the system package or nothing, and every request the page makes is recorded."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

APT_TIMEOUT_S = 900.0
START_TIMEOUT_S = 30.0
CALL_TIMEOUT_S = 30.0

# No network beyond loopback: background services, updates and sync are off,
# names resolve to nothing, and anything that is not loopback (Chromium never
# proxies loopback) goes to a dead proxy port instead of leaving the machine.
FLAGS = (
    "--headless=new",
    "--no-sandbox",  # root, in a container: the sandbox cannot start
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-breakpad",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    "--proxy-server=http://127.0.0.1:9",
    "--autoplay-policy=no-user-gesture-required",
    "--mute-audio",
    "--window-size=800,700",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
)


class BrowserUnavailable(RuntimeError):
    """Chromium is not installed and could not be installed here."""


def find_chromium() -> str | None:
    return shutil.which("chromium")


def install_chromium() -> str:
    """Debian's chromium, installed with apt-get when missing (CI runs as root)."""
    found = find_chromium()
    if found is not None:
        return found
    apt = shutil.which("apt-get")
    if apt is None or os.geteuid() != 0:
        raise BrowserUnavailable(
            "chromium is not installed and apt-get cannot run here as root; "
            "install Debian's chromium package (.ci/run does)"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for args in (["update"], ["install", "-y", "--no-install-recommends", "chromium"]):
        result = subprocess.run(
            [apt, *args],
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=APT_TIMEOUT_S,
            check=False,
        )
        if result.returncode != 0:
            raise BrowserUnavailable(
                f"apt-get {' '.join(args)} failed with exit code "
                f"{result.returncode}: {result.stderr.strip()[-1500:]}"
            )
    found = find_chromium()
    if found is None:
        raise BrowserUnavailable("apt-get installed chromium, yet it is not on PATH")
    return found


class CdpError(RuntimeError):
    """Chromium answered a DevTools call with an error, or not at all."""


@dataclass
class Request:
    """One request the page made, as the Network domain reported it."""

    url: str
    method: str
    status: int | None = None
    failure: str = ""
    canceled: bool = False

    @property
    def failed(self) -> bool:
        """Answered with an HTTP error, or failed without being canceled."""
        if self.status is not None and self.status >= 400:
            return True
        return bool(self.failure) and not self.canceled


@dataclass
class PageLog:
    """Everything the page did on the network and printed, in arrival order."""

    requests: dict[str, Request] = field(default_factory=dict)
    console: list[str] = field(default_factory=list)
    # The CDP reader thread writes while a test reads.
    lock: threading.Lock = field(default_factory=threading.Lock)

    def failures(self) -> list[Request]:
        with self.lock:
            return [r for r in self.requests.values() if r.failed]

    def to_json(self) -> dict[str, Any]:
        with self.lock:
            return {
                "requests": [dict(vars(r)) for r in self.requests.values()],
                "console": list(self.console),
            }


class Page:
    """A CDP session to one page target: calls, and a reader thread for events."""

    def __init__(self, ws_url: str) -> None:
        # Entered as a context manager: websockets 17 deprecates a bare connect().
        self._stack = contextlib.ExitStack()
        self._ws: ClientConnection = self._stack.enter_context(
            connect(ws_url, max_size=None, proxy=None, compression=None)
        )
        self._next_id = 0
        self._lock = threading.Lock()
        self._replies: dict[int, dict[str, Any]] = {}
        self._arrived = threading.Condition(self._lock)
        self._closed = False
        self._loads = 0  # Page.loadEventFired seen so far
        self.log = PageLog()
        self._reader = threading.Thread(target=self._read, name="cdp", daemon=True)
        self._reader.start()

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        with self._lock:
            self._next_id += 1
            call_id = self._next_id
        self._ws.send(json.dumps({"id": call_id, "method": method, "params": params}))
        deadline = time.monotonic() + CALL_TIMEOUT_S
        with self._arrived:
            while call_id not in self._replies:
                left = deadline - time.monotonic()
                if self._closed or left <= 0:
                    raise CdpError(f"no answer to {method} within {CALL_TIMEOUT_S} s")
                self._arrived.wait(left)
            reply = self._replies.pop(call_id)
        if "error" in reply:
            raise CdpError(f"{method}: {reply['error']}")
        result: dict[str, Any] = reply.get("result", {})
        return result

    def evaluate(self, expression: str) -> Any:
        """The JSON value of a JavaScript expression in the page."""
        result = self.call(
            "Runtime.evaluate",
            expression=expression,
            returnByValue=True,
            awaitPromise=True,
        )
        if "exceptionDetails" in result:
            raise CdpError(f"{expression!r} threw: {result['exceptionDetails']}")
        return result["result"].get("value")

    def open(self, url: str) -> None:
        """Start recording the network and the console, then load `url`."""
        for domain in ("Network", "Runtime", "Log", "Page"):
            self.call(f"{domain}.enable")
        self.call("Network.setCacheDisabled", cacheDisabled=True)
        loads = self._loads
        answer = self.call("Page.navigate", url=url)
        if answer.get("errorText"):
            raise CdpError(f"navigation to {url} failed: {answer['errorText']}")
        deadline = time.monotonic() + CALL_TIMEOUT_S
        with self._arrived:
            while self._loads == loads:
                left = deadline - time.monotonic()
                if self._closed or left <= 0:
                    raise CdpError(f"{url} did not finish loading")
                self._arrived.wait(left)

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._stack.close()
        self._reader.join(timeout=5)

    def _read(self) -> None:
        # A closed connection just ends the loop; the waiters hear of it below.
        try:
            with contextlib.suppress(ConnectionClosed):
                for message in self._ws:
                    event = json.loads(message)
                    if "id" in event:
                        with self._arrived:
                            self._replies[event["id"]] = event
                            self._arrived.notify_all()
                    else:
                        with self.log.lock:
                            params = event.get("params", {})
                            self._record(event.get("method", ""), params)
        finally:
            with self._arrived:
                self._closed = True
                self._arrived.notify_all()

    def _record(self, method: str, params: dict[str, Any]) -> None:
        requests = self.log.requests
        if method == "Page.loadEventFired":
            with self._arrived:
                self._loads += 1
                self._arrived.notify_all()
        elif method == "Network.requestWillBeSent":
            request = params["request"]
            # data: URLs are the page's own icons, not traffic.
            if request["url"].startswith(("http:", "https:")):
                requests[params["requestId"]] = Request(
                    request["url"], request["method"]
                )
        elif method == "Network.responseReceived":
            found = requests.get(params["requestId"])
            if found is not None:
                found.status = int(params["response"]["status"])
        elif method == "Network.loadingFailed":
            found = requests.get(params["requestId"])
            if found is not None:
                reason = params.get("blockedReason") or params.get("corsErrorStatus")
                found.failure = params.get("errorText", "") + (
                    f" ({reason})" if reason else ""
                )
                found.canceled = bool(params.get("canceled"))
        elif method == "Runtime.consoleAPICalled":
            texts = [
                str(a.get("value", a.get("description", ""))) for a in params["args"]
            ]
            self.log.console.append(f"console.{params['type']}: {' '.join(texts)}")
        elif method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details["text"]
            self.log.console.append(f"exception: {text}")
        elif method == "Log.entryAdded":
            entry = params["entry"]
            self.log.console.append(f"log.{entry['level']}: {entry['text']}")


class Chromium:
    """One headless Chromium process with a fresh profile, stopped by its PID."""

    def __init__(self, exe: str, profile_dir: Path, log_path: Path) -> None:
        self.exe = exe
        self.profile_dir = profile_dir
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None
        self._pages: list[Page] = []

    def start(self) -> Page:
        """Start the browser and return a session to its first (blank) tab."""
        self.profile_dir.mkdir(parents=True, exist_ok=False)
        args = [self.exe, *FLAGS, f"--user-data-dir={self.profile_dir}", "about:blank"]
        with self.log_path.open("ab") as log_file:
            self._proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        port = self._wait_devtools_port()
        page = Page(self._wait_page_target(port))
        self._pages.append(page)
        return page

    def stop(self) -> None:
        for page in self._pages:
            page.close()
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def _wait_devtools_port(self) -> int:
        # With port 0 Chromium picks a free one and writes it to this file.
        assert self._proc is not None
        port_file = self.profile_dir / "DevToolsActivePort"
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise BrowserUnavailable(
                    f"chromium exited with code {self._proc.returncode} at start:\n"
                    f"{self.log_text()}"
                )
            with contextlib.suppress(OSError):
                # Read only once the port's line is whole: the file may be
                # caught half written.
                port, newline, _ = port_file.read_text().partition("\n")
                if newline and port.isdigit():
                    return int(port)
            time.sleep(0.05)
        raise BrowserUnavailable(
            f"chromium wrote no DevTools port within {START_TIMEOUT_S:g} s:\n"
            f"{self.log_text()}"
        )

    def _wait_page_target(self, port: int) -> str:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError, ValueError):
                url = f"http://127.0.0.1:{port}/json/list"
                targets = httpx.get(url, timeout=2, trust_env=False).json()
                for target in targets:
                    if target.get("type") == "page":
                        return str(target["webSocketDebuggerUrl"])
            time.sleep(0.05)
        raise BrowserUnavailable(f"chromium showed no page target on port {port}")
