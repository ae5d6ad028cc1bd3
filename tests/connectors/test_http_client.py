"""The hardened HTTP client (connectors/_http.py) writing requests, on real sockets, plain and TLS.

Each request's line and headers go out in the same write as its body (issue 15); the server must still
receive every body exactly once and whole, small or large (a large body is written as urllib3 writes it),
over plain TCP and over TLS.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from config.model import ConnectorSpec
from connectors._http import HttpClient

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


class _Echo(BaseHTTPRequestHandler):
    """Records each request's method, path and body; answers its body's length as JSON."""

    protocol_version = "HTTP/1.1"
    received: list[tuple[str, str, bytes]]

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        self.received.append((self.command, self.path, body))
        reply = json.dumps({"length": len(body)}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    do_POST = do_PUT = do_GET = _answer  # noqa: N815 - http.server's names

    def log_message(self, *_args: Any) -> None:
        """Quiet."""


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp / "cert.pem", tmp / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_file, key_file


@pytest.fixture(params=["http", "https"])
def server(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[str, list[tuple[str, str, bytes]], str | None]]:
    """An echo server, plain or TLS: its URL, what it received, and the CA file to trust (TLS)."""
    received: list[tuple[str, str, bytes]] = []
    handler = type("Echo", (_Echo,), {"received": received})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    ca_file = None
    if request.param == "https":
        cert_file, key_file = _self_signed(tmp_path)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert_file, key_file)
        httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
        ca_file = str(cert_file)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"{request.param}://127.0.0.1:{httpd.server_address[1]}", received, ca_file
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_every_body_arrives_once_and_whole(server: tuple[str, list[tuple[str, str, bytes]], str | None]) -> None:
    """Small, empty, non-ASCII and over-blocksize bodies, POST, PUT and GET, on one kept-alive connection each
    ▶ the server got each request once, its body byte for byte."""
    url, received, ca_file = server
    options: dict[str, Any] = {"ca_file": ca_file} if ca_file else {}
    client = HttpClient("echo", ConnectorSpec(type="x", endpoint=url, options=options))
    bodies = [{"note": "Hệ thống đã nhận hồ sơ"}, {}, {"big": "x" * 40_000}, {"n": 1}]
    try:
        for i, body in enumerate(bodies):
            method = "PUT" if i % 2 else "POST"
            reply = client.request(
                method, f"/pa/dossier/D-{i}/--bus-note", deadline=_later(), effect=True, json_body=body
            )
            assert reply.status == 200
        client.request("GET", "/pa/dossier/search", deadline=_later(), effect=False, params={"page": 0})
    finally:
        client.close()
    expected = [json.dumps(b, ensure_ascii=False, separators=(",", ":")).encode() for b in bodies]
    assert [r[2] for r in received[:4]] == expected
    assert [(r[0], r[1]) for r in received] == [
        ("POST", "/pa/dossier/D-0/--bus-note"),
        ("PUT", "/pa/dossier/D-1/--bus-note"),
        ("POST", "/pa/dossier/D-2/--bus-note"),
        ("PUT", "/pa/dossier/D-3/--bus-note"),
        ("GET", "/pa/dossier/search?page=0"),
    ]
    assert received[4][2] == b""


def _later() -> float:
    return time.monotonic() + 10
