"""What a result was measured on: hardware, software, the commit, and load."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.procs import REPO_ROOT, load_average


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _mem_total_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return round(int(line.split()[1]) / 2**20, 1)
    return 0.0


def _git(*args: str) -> str:
    # Read-only queries; the benchmark never changes the repository.
    try:
        result = subprocess.run(
            ["git", *args],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except OSError:
        return ""
    return result.stdout.strip()


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("uvicorn", "uvloop", "httptools", "fastapi", "starlette", "boto3"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def describe_machine(work_dir: Path) -> dict[str, Any]:
    usage = os.statvfs(work_dir)
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count() or 0,
        "cores_usable": len(os.sched_getaffinity(0)),
        "memory_gib": _mem_total_gib(),
        "python": sys.version.split()[0],
        "kernel": platform.release(),
        "disk_free_gib": round(usage.f_bavail * usage.f_frsize / 2**30, 1),
        "commit": _git("rev-parse", "--short", "HEAD")
        + (" (modified)" if dirty else ""),
        "packages": _versions(),
        "load_start": list(load_average()),
    }
