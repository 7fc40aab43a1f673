"""The ``hlsrelay`` command: serve, check and cors.

The only place that reads flags, configures logging, or exits the process.
Each setting has a flag spelled as its variable without the prefix
(``HLSRELAY_S3_BUCKET`` is ``--s3-bucket``); a flag wins over the variable.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import sys
import time
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from app import __version__
from app.config import Settings

log = logging.getLogger("app.cli")


class JsonFormatter(logging.Formatter):
    """One JSON object a line, for log collectors."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def setup_logging(settings: Settings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if settings.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # botocore's debug output holds request headers; keep it quiet.
    for name in ("botocore", "boto3", "s3transfer", "urllib3"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _add_setting_flags(parser: argparse.ArgumentParser) -> None:
    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        parser.add_argument(
            flag,
            dest=f"setting_{name}",
            default=None,
            metavar="VALUE",
            help=f"HLSRELAY_{name.upper()}"
            + (f": {field.description}" if field.description else ""),
        )


def load_settings(args: argparse.Namespace) -> Settings:
    overrides = {
        key.removeprefix("setting_"): value
        for key, value in vars(args).items()
        if key.startswith("setting_") and value is not None
    }
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            where = ".".join(str(part) for part in error["loc"]) or "settings"
            variable = (
                f"HLSRELAY_{where.upper()}" if where != "settings" else "settings"
            )
            lines.append(f"  {variable}: {error['msg']}")
        raise SystemExit(
            "hlsrelay: invalid configuration\n" + "\n".join(lines)
        ) from None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from app.main import create_app

    settings = load_settings(args)
    setup_logging(settings)
    if not settings.s3_bucket:
        log.error(
            "no bucket configured: set HLSRELAY_S3_BUCKET (or --s3-bucket); "
            "`make run` starts a local S3 for trying the relay"
        )
        return 2
    if (
        not _is_loopback(settings.host)
        and not settings.has_auth
        and not args.allow_anonymous
    ):
        log.error(
            "refusing to listen on %s with no authentication: anyone could write "
            "into bucket %s. Set HLSRELAY_AUTH_TOKEN, HLSRELAY_BASIC_AUTH or "
            "HLSRELAY_ALLOW_CIDRS, or pass --allow-anonymous",
            settings.host,
            settings.s3_bucket,
        )
        return 2

    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=int(settings.shutdown_grace_s) or None,
        server_header=False,
    )
    server = uvicorn.Server(config)
    server.run()
    return 0 if server.started else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hlsrelay",
        description="HLS ingest relay: encoders PUT, the bucket gets it.",
    )
    parser.add_argument(
        "--version", action="version", version=f"hlsrelay {__version__}"
    )
    commands = parser.add_subparsers(dest="command", required=True)

    serve_parser = commands.add_parser("serve", help="run the relay")
    _add_setting_flags(serve_parser)
    serve_parser.add_argument(
        "--allow-anonymous",
        action="store_true",
        help="allow a non-loopback address with no authentication",
    )
    serve_parser.set_defaults(func=serve)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    sys.exit(args.func(args))
