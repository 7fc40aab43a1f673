"""The benchmark's quick mode, run for a tiny configuration, so it cannot rot:
every section must finish and report what the results file quotes."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SECTIONS = ("publish", "streams", "ceiling", "memory", "growth")
TINY = [
    "--quick",
    "--rounds", "2",
    "--streams", "1,2",
    "--stream-seconds", "4",
    "--ceiling-seconds", "0.5",
    "--big-mib", "8",
    "--entries", "40",
]  # fmt: skip


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _positive(value: object) -> bool:
    return _finite(value) and value > 0  # type: ignore[operator]


def _run_module(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    # Without nginx the ceiling section reports an error naming the package,
    # and the first test below shows it.
    out = tmp_path_factory.mktemp("bench")
    result = _run_module("bench", *TINY, "--out", str(out), "--no-docs")
    document: dict[str, object] = json.loads((out / "latest-quick.json").read_text())
    document["stdout"] = result.stdout
    return document


@pytest.mark.integration
def test_bench_quick_run_reports_every_section(quick_run: dict[str, object]) -> None:
    sections = quick_run["sections"]
    assert isinstance(sections, dict)
    assert sorted(sections) == sorted(SECTIONS)
    for name in SECTIONS:
        assert "error" not in sections[name], sections[name]
        assert len(sections[name]["load_start"]) == 3
        assert len(sections[name]["load_end"]) == 3


@pytest.mark.integration
def test_bench_quick_run_describes_machine_and_targets(
    quick_run: dict[str, object],
) -> None:
    machine = quick_run["machine"]
    assert isinstance(machine, dict)
    for field in ("cpu_model", "cores", "memory_gib", "python", "kernel"):
        assert machine[field], field
    assert len(machine["load_start"]) == 3 and len(machine["load_end"]) == 3
    targets = quick_run["targets"]
    assert isinstance(targets, list) and len(targets) == 6
    assert all(_finite(item["value"]) for item in targets), targets
    assert "targets:" in str(quick_run["stdout"])


@pytest.mark.integration
def test_bench_quick_run_measures_real_latencies(quick_run: dict[str, object]) -> None:
    sections = quick_run["sections"]
    assert isinstance(sections, dict)
    for size in ("100KiB", "1MiB", "5MiB"):
        data = sections["publish"]["sizes"][size]
        for arm in ("direct", "upload", "spool_ack", "spool_visible", "floor"):
            assert data[arm]["n"] == 2, (size, arm)
            assert _positive(data[arm]["p50_ms"]), (size, arm, data[arm])
    for arm in ("direct", "relay", "floor"):
        levels = sections["streams"][arm]["levels"]
        assert levels and all(level["versions"] > 0 for level in levels)
        # A version never seen in the bucket counts as an infinite latency.
        assert all(_positive(level["latency"]["p99_ms"]) for level in levels)
    for level in (
        sections["streams"]["relay"]["levels"] + sections["streams"]["floor"]["levels"]
    ):
        total, loop = (
            level["relay_cpu_ms_per_cycle"],
            level["relay_loop_cpu_ms_per_cycle"],
        )
        assert _positive(loop) and loop <= total, level
    for level in sections["streams"]["direct"]["levels"]:
        assert _positive(level["uploader_cpu_ms_per_cycle"]), level
    for size in ("100KiB", "1MiB"):
        ceiling = sections["ceiling"]["sizes"][size]
        assert _positive(ceiling["relay"]["puts_per_s"])
        assert _positive(ceiling["nginx_1w"]["puts_per_s"])
    assert sections["memory"]["status"] == 201
    growth = sections["growth"]
    assert growth["entries"] == 40
    assert _positive(growth["small"]["cpu_ms_per_version"])
    assert _positive(growth["large"]["cpu_ms_per_version"])
    assert growth["per_stream"]["drained"] is True


@pytest.mark.integration
def test_bench_costs_prints_every_piece_of_a_cycle() -> None:
    result = _run_module("bench.costs", "--calls", "3")
    values = dict(line.split() for line in result.stdout.splitlines()[1:])
    assert set(values) == {
        "sha256_ms_per_mib",
        "crc32_ms_per_mib",
        "md5_ms_per_mib",
        "put_1mib_file_signed_ms",
        "put_1mib_file_unsigned_ms",
        "put_playlist_signed_ms",
        "delete_ms",
        "request_full_stack_ms",
        "request_own_middleware_bare_handler_ms",
    }
    assert all(_positive(float(value)) for value in values.values()), values
