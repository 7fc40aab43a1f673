"""A recording HTTP(S) proxy for tests: it sits in front of a real S3 server on
127.0.0.1, keeps every request exactly as it arrived (headers, raw body,
chunked trailers), and passes it on unchanged so the signature still holds."""

from __future__ import annotations

import datetime
import http.client
import http.server
import ipaddress
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# Hop-by-hop or re-framed on the way back; everything else is passed as is.
_RESPONSE_DROPPED = {"transfer-encoding", "connection", "keep-alive", "content-length"}


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]  # names in lower case
    body: bytes  # as it came over the wire, chunk framing included
    trailers: dict[str, str] = field(default_factory=dict)
    decoded: bytes = b""  # the body without HTTP chunk framing


@dataclass(frozen=True)
class LocalCA:
    """A certificate authority and a server certificate for 127.0.0.1."""

    ca_path: Path
    cert_path: Path
    key_path: Path


def make_local_ca(folder: Path) -> LocalCA:
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hlsrelay test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_path = folder / "ca.pem"
    cert_path = folder / "server.pem"
    key_path = folder / "server-key.pem"
    ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return LocalCA(ca_path, cert_path, key_path)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def do_GET(self) -> None:
        self._relay()

    do_PUT = do_POST = do_DELETE = do_HEAD = do_OPTIONS = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: tests read what was recorded, not a log."""

    def _relay(self) -> None:
        headers = {name.lower(): value for name, value in self.headers.items()}
        if headers.get("transfer-encoding", "").lower() == "chunked":
            raw, decoded, trailers = self._read_chunked()
        else:
            raw = self.rfile.read(int(headers.get("content-length", "0")))
            decoded, trailers = raw, {}
        record = Recorded(self.command, self.path, headers, raw, trailers, decoded)
        with self.server.lock:
            self.server.records.append(record)

        upstream = http.client.HTTPConnection(*self.server.upstream, timeout=60)
        try:
            upstream.putrequest(
                self.command, self.path, skip_host=True, skip_accept_encoding=True
            )
            for name, value in self.headers.items():
                if name.lower() != "expect":  # answered here already
                    upstream.putheader(name, value)
            upstream.endheaders()
            if raw:
                upstream.send(raw)
            response = upstream.getresponse()
            body = response.read()
            self.send_response(response.status, response.reason)
            for name, value in response.getheaders():
                if name.lower() not in _RESPONSE_DROPPED:
                    self.send_header(name, value)
            length = response.getheader("Content-Length")
            if self.command == "HEAD" and length is not None:
                self.send_header("Content-Length", length)
            else:
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
        finally:
            upstream.close()

    def _read_chunked(self) -> tuple[bytes, bytes, dict[str, str]]:
        raw = bytearray()
        decoded = bytearray()
        while True:
            line = self.rfile.readline()
            raw += line
            size = int(line.split(b";")[0].strip(), 16)
            if size == 0:
                break
            data = self.rfile.read(size + 2)
            raw += data
            decoded += data[:-2]
        trailers = {}
        while True:
            line = self.rfile.readline()
            raw += line
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.decode().partition(":")
            trailers[name.strip().lower()] = value.strip()
        return bytes(raw), bytes(decoded), trailers


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, upstream: tuple[str, int]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.upstream = upstream
        self.records: list[Recorded] = []
        self.lock = threading.Lock()


class RecordingProxy:
    """``with RecordingProxy(upstream_url, ca) as proxy:`` then point a client
    at ``proxy.url``; ``ca`` makes it speak HTTPS with that CA's certificate."""

    def __init__(self, upstream_url: str, ca: LocalCA | None = None) -> None:
        target = urlsplit(upstream_url)
        self._server = _Server((target.hostname or "127.0.0.1", target.port or 80))
        self.scheme = "http"
        if ca is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(ca.cert_path, ca.key_path)
            self._server.socket = context.wrap_socket(
                self._server.socket, server_side=True
            )
            self.scheme = "https"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self._server.server_address[1]}"

    @property
    def records(self) -> list[Recorded]:
        with self._server.lock:
            return list(self._server.records)

    def find(self, method: str, path: str) -> list[Recorded]:
        return [r for r in self.records if r.method == method and r.path == path]

    def __enter__(self) -> RecordingProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
