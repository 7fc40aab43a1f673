"""Sampling profiles of a relay under load, with py-spy, summarised by function.

py-spy reads the process from outside, so the relay runs unchanged; its raw
output (one line per distinct stack with a sample count) is kept beside the
results, and the summary names where the samples fell.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from bench.procs import stop_process

RATE_HZ = 200
TOP = 15


def find_py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    if beside.is_file():
        return str(beside)
    return shutil.which("py-spy")


class Profiler:
    def __init__(self, pid: int, output: Path, gil: bool = False) -> None:
        self.pid = pid
        # Only the thread holding the GIL: what the interpreter is busy with,
        # as opposed to every thread, waiting ones included.
        self.gil = gil
        self.output = output
        self._proc: subprocess.Popen[bytes] | None = None
        self.error = ""

    def start(self) -> None:
        exe = find_py_spy()
        if exe is None:
            self.error = "py-spy is not installed (pip install py-spy)"
            return
        self.output.parent.mkdir(parents=True, exist_ok=True)
        args = [
            exe, "record", "--pid", str(self.pid), "--rate", str(RATE_HZ),
            "--format", "raw", "--output", str(self.output), "--threads",
            "--nonblocking",
        ]  # fmt: skip
        if self.gil:
            args.append("--gil")
        self._proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )

    def stop(self) -> dict[str, Any]:
        if self._proc is None:
            return {"error": self.error}
        # py-spy writes its output when interrupted, as after Ctrl-C.
        stop_process(self._proc, signal.SIGINT, 20.0)
        stderr = (
            self._proc.stderr.read().decode(errors="replace")
            if self._proc.stderr
            else ""
        )
        self._proc = None
        if not self.output.is_file():
            return {"error": f"py-spy wrote nothing: {stderr[-500:]}"}
        return summarize(self.output)


def _frame_name(frame: str) -> str:
    # "function (path/to/module.py:123)" -> "function (module.py)"
    name, _, where = frame.partition(" (")
    module = where.rsplit("/", 1)[-1].split(":", 1)[0]
    return f"{name} ({module})" if module else name


def summarize(path: Path) -> dict[str, Any]:
    """Samples by leaf function (self) and by any frame on the stack (total)."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    by_thread: Counter[str] = Counter()
    samples = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        samples += count
        # The first frame names the thread: "thread (TID): NAME".
        by_thread[frames[0].partition(": ")[2] or frames[0]] += count
        names = [_frame_name(frame) for frame in frames[1:]] or [frames[0]]
        own[names[-1]] += count
        for name in set(names):
            total[name] += count

    def top(counter: Counter[str]) -> list[list[Any]]:
        return [
            [name, round(100.0 * count / samples, 1)]
            for name, count in counter.most_common(TOP)
        ]

    return {
        "samples": samples,
        "raw": str(path),
        "self_percent": top(own) if samples else [],
        "total_percent": top(total) if samples else [],
        "threads_percent": top(by_thread) if samples else [],
    }
