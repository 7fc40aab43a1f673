"""A deliberately wrong relay, for proving that `BucketWatcher` catches the
fault the real relay exists to prevent: it stores every PUT as soon as its body
arrives, with media made slow and playlists sent at once, as on a real S3 where
a big segment takes longer to upload than the small playlist naming it.

Run: python tests/naive_relay.py --port P (S3 settings from HLSRELAY_S3_*).
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING

import boto3
from botocore.config import Config
from httpbody import read_body

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = logging.getLogger("naive_relay")

UPLOAD_MARK = "/hls-upload/"
MEDIA_DELAY_S = (0.5, 1.0)


def build_client() -> S3Client:
    env = os.environ
    return boto3.session.Session().client(
        "s3",
        endpoint_url=env["HLSRELAY_S3_ENDPOINT"],
        region_name=env.get("HLSRELAY_S3_REGION", "us-east-1"),
        aws_access_key_id=env["HLSRELAY_S3_ACCESS_KEY"],
        aws_secret_access_key=env["HLSRELAY_S3_SECRET_KEY"],
        config=Config(s3={"addressing_style": "path"}),
    )


class NaiveHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    client: S3Client
    bucket: str

    def do_GET(self) -> None:
        self._answer(200 if self.path == "/healthz" else 404)

    def do_PUT(self) -> None:
        key = self._key()
        body = self._read_body()
        if key is None:
            self._answer(400)
            return
        if key.endswith(".m3u8"):
            self._store(key, body)
        else:
            delay = random.uniform(*MEDIA_DELAY_S)
            threading.Timer(delay, self._store, args=(key, body)).start()
        self._answer(201)

    def do_DELETE(self) -> None:
        key = self._key()
        self._read_body()
        if key is not None:
            self.client.delete_object(Bucket=self.bucket, Key=key)
        self._answer(204)

    def log_message(self, format: str, *args: object) -> None:
        log.info(format, *args)

    def _key(self) -> str | None:
        path = self.path.split("?", 1)[0]
        if UPLOAD_MARK not in path:
            return None
        return "streams/" + path.split(UPLOAD_MARK, 1)[1]

    def _store(self, key: str, body: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=key, Body=body)
        log.info("stored key=%s bytes=%d", key, len(body))

    def _read_body(self) -> bytes:
        return read_body(self.headers, self.rfile)

    def _answer(self, status: int) -> None:
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    options = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    NaiveHandler.client = build_client()
    NaiveHandler.bucket = os.environ["HLSRELAY_S3_BUCKET"]
    server = ThreadingHTTPServer(("127.0.0.1", options.port), NaiveHandler)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    log.info("naive relay listening port=%d", options.port)
    try:
        server.serve_forever()
    finally:
        # Let the delayed uploads land so the bucket ends up complete.
        time.sleep(MEDIA_DELAY_S[1])


if __name__ == "__main__":
    main()
