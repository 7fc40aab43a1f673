"""Turning a run into the targets' verdicts, a table, JSON and the results file."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from bench.stats import json_safe

START = "<!-- bench:results:start -->"
END = "<!-- bench:results:end -->"
FULL_BIG_MIB = 1024
FULL_ENTRIES = 10_000
# One line of the table: what, then four measured cells.
Row = tuple[str, str, str, str, str]


def _get(document: dict[str, Any], *path: str) -> Any:
    value: Any = document.get("sections", {})
    for part in path:
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _target(
    name: str, value: Any, rule: str, met: bool | None, note: str = ""
) -> dict[str, Any]:
    return {"target": name, "value": value, "rule": rule, "met": met, "note": note}


def targets(document: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target of issue 7 with the measured value and whether it holds."""
    found = []
    p50 = _get(document, "publish", "sizes", "1MiB", "ratio_upload_direct_p50")
    p99 = _get(document, "publish", "sizes", "1MiB", "ratio_upload_direct_p99")
    found.append(
        _target("publish 1 MiB p50 relay/direct (upload ack)", p50, "<= 1.15",
                None if p50 is None else p50 <= 1.15)
    )  # fmt: skip
    found.append(
        _target("publish 1 MiB p99 relay/direct (upload ack)", p99, "<= 1.5",
                None if p99 is None else p99 <= 1.5)
    )  # fmt: skip
    streams = _get(document, "streams", "ratio_relay_direct")
    relay_n = _get(document, "streams", "relay", "max_streams_p99_under_1s")
    direct_n = _get(document, "streams", "direct", "max_streams_p99_under_1s")
    if _get(document, "streams", "direct", "limit_not_reached"):
        direct_n = f"{direct_n} or more"
    counts = f"relay {relay_n}, direct {direct_n}"
    floor_n = _get(document, "streams", "floor", "max_streams_p99_under_1s")
    if floor_n is not None:
        counts += f", floor {floor_n}"
    found.append(
        _target("streams with p99 < 1 s, relay/direct", streams, ">= 0.8",
                None if streams is None else streams >= 0.8, counts)
    )  # fmt: skip
    ceiling = _get(document, "ceiling", "sizes", "1MiB", "ratio_relay_nginx_1w")
    found.append(
        _target("ingest ceiling 1 MiB relay/nginx dav (1 worker)", ceiling, ">= 0.5",
                None if ceiling is None else ceiling >= 0.5)
    )  # fmt: skip
    growth_mib = _get(document, "memory", "rss_growth_mib")
    body_mib = _get(document, "memory", "body_mib")
    full_body = body_mib is not None and body_mib >= FULL_BIG_MIB
    found.append(
        _target("RSS growth during a 1 GiB PUT (MiB)", growth_mib, "< 64",
                None if growth_mib is None or not full_body else growth_mib < 64,
                "" if full_body else f"body was {body_mib} MiB, not 1 GiB")
    )  # fmt: skip
    cpu = _get(document, "growth", "ratio_cpu_large_small")
    entries = _get(document, "growth", "entries")
    full_list = entries is not None and entries >= FULL_ENTRIES
    found.append(
        _target("CPU per playlist version, 10,000 vs 10 entries", cpu, "<= 2",
                None if cpu is None or not full_list else cpu <= 2.0,
                "" if full_list else f"list grew to {entries} entries, not 10,000")
    )  # fmt: skip
    return found


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _tail(summary: dict[str, Any]) -> str:
    return f"p50 {_fmt(summary['p50_ms'])} p99 {_fmt(summary['p99_ms'])} ms"


def _publish_rows(document: dict[str, Any]) -> list[Row]:
    rows = []
    for size, data in (_get(document, "publish", "sizes") or {}).items():
        p50 = _fmt(data["ratio_upload_direct_p50"])
        p99 = _fmt(data["ratio_upload_direct_p99"])
        rows.append(
            (
                f"publish {size}",
                f"direct {_tail(data['direct'])}",
                f"relay upload {_tail(data['upload'])}",
                f"ratio p50 {p50} p99 {p99}",
                f"spool ack {_tail(data['spool_ack'])}, "
                f"visible {_tail(data['spool_visible'])}",
            )
        )
        if data.get("floor"):
            p50 = _fmt(data["ratio_floor_direct_p50"])
            p99 = _fmt(data["ratio_floor_direct_p99"])
            rows.append(
                (
                    f"publish {size} floor",
                    "",
                    f"floor upload {_tail(data['floor'])}",
                    f"ratio p50 {p50} p99 {p99}",
                    "",
                )
            )
    return rows


def _stream_rows(document: dict[str, Any]) -> list[Row]:
    rows = []
    for arm in ("direct", "relay", "floor"):
        levels = _get(document, "streams", arm, "levels") or []
        for level in sorted(levels, key=lambda lv: lv["streams"]):
            usage = level.get("relay")
            s3_cores = level.get("s3", {}).get("cores", 0)
            if usage:
                cost = (
                    f"{arm} {usage['cores']:g} cores, "
                    f"{level.get('relay_cpu_ms_per_cycle', '-')} ms CPU/cycle "
                    f"(event loop {level.get('relay_loop_cpu_ms_per_cycle', '-')}), "
                    f"{usage['rss_peak_mib']:g} MiB; S3 {s3_cores:g} cores"
                )
            else:
                cost = (
                    f"uploader {level['generator'].get('cores', 0):g} cores, "
                    f"{level.get('uploader_cpu_ms_per_cycle', '-')} ms CPU/cycle; "
                    f"S3 {s3_cores:g} cores"
                )
            rows.append(
                (
                    f"streams {arm} N={level['streams']}",
                    _tail(level["latency"]),
                    "pass" if level["passed"] else "FAIL",
                    cost,
                    f"errors {level['errors']}, "
                    f"lag p99 {level['schedule_lag_p99_ms']} ms",
                )
            )
    return rows


def _ceiling_rows(document: dict[str, Any]) -> list[Row]:
    rows = []
    for size, data in (_get(document, "ceiling", "sizes") or {}).items():
        for name, run in data.items():
            if isinstance(run, dict):
                rows.append(
                    (
                        f"ceiling {size} {name}",
                        f"{_fmt(run['puts_per_s'])} PUT/s",
                        f"{_fmt(run['mib_per_s'])} MiB/s",
                        f"server {run['server_cores']} cores",
                        f"errors {run['errors']}",
                    )
                )
    return rows


def _memory_rows(document: dict[str, Any]) -> list[Row]:
    memory = document.get("sections", {}).get("memory")
    if not memory or "error" in memory:
        return []
    return [
        (
            f"memory {memory['body_mib']} MiB PUT",
            f"RSS {memory['rss_baseline_mib']} -> {memory['rss_peak_mib']} MiB",
            f"growth {memory['rss_growth_mib']} MiB",
            f"receive {memory['receive_s']} s, upload {memory['upload_s']} s",
            f"HTTP {memory['status']}",
        )
    ]


def _growth_rows(document: dict[str, Any]) -> list[Row]:
    growth = document.get("sections", {}).get("growth")
    if not growth or "error" in growth:
        return []
    rows = []
    for name in ("small", "large"):
        window = growth[name]
        rows.append(
            (
                f"growth {window['entries_from']}-{window['entries_to']} entries",
                f"{window['cpu_ms_per_version']} ms CPU/version",
                f"{window['wall_ms_per_version']} ms wall/version",
                f"playlist {window['playlist_bytes']} B",
                f"RSS {window['rss_mib']} MiB",
            )
        )
    per = growth["per_stream"]
    rows.append(
        (
            f"memory per stream ({per['streams']} live)",
            f"{per['kib_per_stream']} KiB/stream",
            f"then {per['kib_per_stream_after_more_versions']} KiB/stream",
            f"RSS {per['rss_baseline_mib']} -> "
            f"{per['rss_after_more_versions_mib']} MiB",
            "",
        )
    )
    return rows


def _rows(document: dict[str, Any]) -> list[Row]:
    rows = [
        *_publish_rows(document),
        *_stream_rows(document),
        *_ceiling_rows(document),
        *_memory_rows(document),
        *_growth_rows(document),
    ]
    for name, section in document.get("sections", {}).items():
        if "error" in section:
            rows.append((name, "ERROR", section["error"][:80], "", ""))
    return rows


def _machine_line(machine: dict[str, Any]) -> str:
    return (
        f"{machine['cpu_model']}, {machine['cores']} cores, "
        f"{machine['memory_gib']} GiB, Python {machine['python']}, "
        f"Linux {machine['kernel']}, commit {machine['commit']}"
    )


def _verdict(item: dict[str, Any], no: str) -> str:
    return {True: "met", False: no, None: "n/a"}[item["met"]]


def table(document: dict[str, Any]) -> str:
    machine = document["machine"]
    lines = [
        "",
        f"hlsrelay bench {document['date']}  ({document['command']})",
        _machine_line(machine),
        f"load average at start {machine['load_start']}, "
        f"at end {machine.get('load_end')}",
        "",
    ]
    rows = _rows(document)
    widths = [max(len(row[i]) for row in rows) for i in range(5)] if rows else []
    for row in rows:
        lines.append(
            "  ".join(
                cell.ljust(width) for cell, width in zip(row, widths, strict=True)
            ).rstrip()
        )
    lines += ["", "targets:"]
    for item in document["targets"]:
        note = f"  ({item['note']})" if item["note"] else ""
        value = f"{_fmt(item['value'])} {item['rule']}"
        lines.append(
            f"  {_verdict(item, 'NOT MET'):<8} {item['target']}: {value}{note}"
        )
    lines.append(f"\ntook {document['seconds']:g} s")
    return "\n".join(lines)


def write_json(document: dict[str, Any], out_dir: Path) -> Path:
    stamp = re.sub(r"[^0-9T]", "", document["date"])[:15]
    kind = "quick" if document["quick"] else "full"
    path = out_dir / f"bench-{stamp}-{kind}.json"
    path.write_text(json.dumps(json_safe(document), indent=2) + "\n")
    (out_dir / f"latest-{kind}.json").write_text(path.read_text())
    return path


def markdown(document: dict[str, Any], json_path: Path) -> str:
    machine = document["machine"]
    lines = [
        f"### Run of {document['date']}",
        "",
        f"Command: `{document['command']}` (took {document['seconds']:g} s; "
        f"JSON: `{json_path.name}`).",
        "",
        f"Machine: {_machine_line(machine)}. Load average "
        f"{machine['load_start']} at start, {machine.get('load_end')} at end.",
        "",
        "| target | value | rule | verdict |",
        "| --- | --- | --- | --- |",
    ]
    for item in document["targets"]:
        note = f" ({item['note']})" if item["note"] else ""
        cells = (item["target"], f"{_fmt(item['value'])}{note}", item["rule"])
        lines.append(f"| {' | '.join(cells)} | {_verdict(item, '**not met**')} |")
    lines += ["", "| measurement | | | | |", "| --- | --- | --- | --- | --- |"]
    for row in _rows(document):
        lines.append("| " + " | ".join(cell.replace("|", "/") for cell in row) + " |")
    lines.append("")
    for name, section in document.get("sections", {}).items():
        if isinstance(section, dict) and "load_start" in section:
            lines.append(
                f"- {name}: {section.get('seconds', '?')} s, load average "
                f"{section['load_start']} -> {section['load_end']}"
            )
    return "\n".join(lines) + "\n"


def update_docs(document: dict[str, Any], path: Path, json_path: Path) -> None:
    """Replace the results between the markers; the prose around them stays."""
    block = f"{START}\n{markdown(document, json_path)}{END}"
    text = path.read_text() if path.is_file() else f"# Benchmarks\n\n{START}\n{END}\n"
    if START in text and END in text:
        head, _, rest = text.partition(START)
        _, _, tail = rest.partition(END)
        text = head + block + tail
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)
