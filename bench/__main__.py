"""``python -m bench`` (``make bench``): run every section, print, write results.

A full run takes about 13 minutes on the 2-core machine; ``--quick`` runs
every section with few rounds and small sizes in about a minute, to check
the benchmark itself, and leaves docs/benchmarks.md alone.
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import ceiling, growth, memory, publish, report, streams
from bench.context import Bench
from bench.machine import describe_machine
from bench.procs import REPO_ROOT, load_average

SECTIONS = ("publish", "streams", "ceiling", "memory", "growth")
# The bench writes sizeable files (1 GiB bodies, many segments); below this
# much free disk a full run could fill it for everyone on the machine.
MIN_FREE_GIB_FULL = 16.0
MIN_FREE_GIB_QUICK = 2.0


def _int_list(text: str) -> list[int]:
    try:
        values = [int(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list like 10,50") from None
    if not values or any(value < 1 for value in values):
        raise argparse.ArgumentTypeError("give whole numbers of 1 or more")
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark the relay against a direct S3 upload and nginx dav.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="few rounds, small N and small bodies: checks the benchmark works",
    )
    parser.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help=f"comma-separated subset of {','.join(SECTIONS)}",
    )
    parser.add_argument("--rounds", type=int, help="publish rounds per size")
    parser.add_argument(
        "--streams", type=_int_list, help="stream counts to try, e.g. 10,50,100,200"
    )
    parser.add_argument(
        "--stream-seconds", type=float, help="how long each stream count runs"
    )
    parser.add_argument(
        "--stream-arms",
        default="direct,relay,floor",
        help="which uploaders the streams section runs (direct,relay,floor; "
        "the floor is the least a relay could spend, bench/floor.py)",
    )
    parser.add_argument(
        "--ceiling-seconds", type=float, help="how long each ceiling run lasts"
    )
    parser.add_argument(
        "--big-mib", type=int, help="size of the big PUT of the memory section"
    )
    parser.add_argument(
        "--entries", type=int, help="length the EVENT playlist grows to"
    )
    parser.add_argument(
        "--relay-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting for every relay, e.g. HLSRELAY_UPLOAD_CONCURRENCY=64",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="record py-spy profiles of the relay in each section",
    )
    parser.add_argument(
        "--profile-gil",
        action="store_true",
        help="with --profile, sample only the thread that holds the GIL",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO_ROOT / "bench" / "results",
        help="folder for the JSON results (and profiles)",
    )
    parser.add_argument(
        "--docs",
        type=Path,
        default=None,
        help="results file to update (default docs/benchmarks.md on a full run, "
        "none with --quick)",
    )
    parser.add_argument(
        "--no-docs", action="store_true", help="do not update the results file"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the work folder for a look after"
    )
    return parser


def plan(args: argparse.Namespace) -> dict[str, Any]:
    """Sizes and counts of the run: full by default, small with --quick."""
    quick = args.quick
    return {
        "rounds": args.rounds or (5 if quick else 100),
        "warmup": 2 if quick else 5,
        "streams": args.streams or ([2, 4] if quick else [10, 50, 100, 200, 300, 400]),
        "stream_seconds": args.stream_seconds or (6.0 if quick else 24.0),
        "ceiling_seconds": args.ceiling_seconds or (1.5 if quick else 8.0),
        "ceiling_concurrency": 4 if quick else 16,
        "big_mib": args.big_mib or (64 if quick else 1024),
        "entries": args.entries or (200 if quick else 10_000),
        "window": 10 if quick else 100,
        "memory_streams": 10 if quick else 200,
    }


def _run_section(name: str, func: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    started = time.monotonic()
    print(f"[bench] {name} ...", flush=True)
    try:
        result = func()
    except Exception as exc:
        traceback.print_exc()
        result = {"error": f"{type(exc).__name__}: {exc}"}
    result["seconds"] = round(time.monotonic() - started, 1)
    print(f"[bench] {name} done in {result['seconds']:g} s", flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    chosen = [name.strip() for name in args.sections.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(SECTIONS))
    if unknown:
        print(f"unknown sections: {', '.join(unknown)}", file=sys.stderr)
        return 2
    sizes = plan(args)
    relay_env = {}
    for item in args.relay_env:
        name, equals, value = item.partition("=")
        if not equals or not name.startswith(("HLSRELAY_", "PYTHON")):
            print(
                f"--relay-env {item!r}: give HLSRELAY_NAME=VALUE (or PYTHON...)",
                file=sys.stderr,
            )
            return 2
        relay_env[name] = value
    command = "python -m bench" + (" " + shlex.join(argv or sys.argv[1:])).rstrip()

    work_dir = Path(tempfile.mkdtemp(prefix="hlsrelay-bench-"))
    machine = describe_machine(work_dir)
    need = MIN_FREE_GIB_QUICK if args.quick else MIN_FREE_GIB_FULL
    if machine["disk_free_gib"] < need:
        print(
            f"only {machine['disk_free_gib']} GiB free under {work_dir}; the "
            f"benchmark needs {need:g} GiB",
            file=sys.stderr,
        )
        shutil.rmtree(work_dir, ignore_errors=True)
        return 2

    args.out.mkdir(parents=True, exist_ok=True)
    profile_dir = args.out if args.profile else None
    bench = Bench(
        work_dir=work_dir,
        quick=args.quick,
        profile_dir=profile_dir,
        relay_env=relay_env,
        profile_gil=args.profile_gil,
    )
    began = time.monotonic()
    stamp = datetime.datetime.now(datetime.UTC)
    results: dict[str, Any] = {}
    try:
        bench.start()
        runners: dict[str, Callable[[], dict[str, Any]]] = {
            "publish": lambda: publish.run(bench, sizes["rounds"], sizes["warmup"]),
            "streams": lambda: streams.run(
                bench,
                sizes["streams"],
                sizes["stream_seconds"],
                tuple(arm for arm in args.stream_arms.split(",") if arm),
            ),
            "ceiling": lambda: ceiling.run(
                bench, sizes["ceiling_seconds"], sizes["ceiling_concurrency"]
            ),
            "memory": lambda: memory.run(bench, sizes["big_mib"]),
            "growth": lambda: growth.run(
                bench, sizes["entries"], sizes["window"], sizes["memory_streams"]
            ),
        }
        for name in SECTIONS:
            if name in chosen:
                results[name] = _run_section(name, runners[name])
    finally:
        bench.stop()
        if args.keep:
            print(f"[bench] work folder kept: {work_dir}")
        else:
            shutil.rmtree(work_dir, ignore_errors=True)

    machine["load_end"] = list(load_average())
    document = {
        "schema": 1,
        "date": stamp.isoformat(timespec="seconds"),
        "command": command,
        "quick": args.quick,
        "plan": sizes,
        "relay_env": relay_env,
        "seconds": round(time.monotonic() - began, 1),
        "machine": machine,
        "sections": results,
        "profiles": bench.profiles,
    }
    document["targets"] = report.targets(document)
    print(report.table(document))
    json_path = report.write_json(document, args.out)
    print(f"[bench] results: {json_path}")
    docs = args.docs
    if docs is None and not args.quick:
        docs = REPO_ROOT / "docs" / "benchmarks.md"
    if docs is not None and not args.no_docs:
        report.update_docs(document, docs, json_path)
        print(f"[bench] results file: {docs}")
    errors = [name for name, result in results.items() if "error" in result]
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
