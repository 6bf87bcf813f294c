"""A loopback TLS endpoint that records what a client sends: the raw ClientHello, then the request.

It peeks at the first TLS record without consuming it, parses the ClientHello (cipher suites in
order, ALPN list, supported groups, supported versions, signature algorithms), then completes the
handshake with a throwaway certificate (made by the `openssl` CLI, see `make_ca`) choosing
http/1.1 by ALPN, and reads the HTTP/1.1 request (header names in order, version). It answers 200
JSON with `Connection: close`, so every request starts a new handshake and is recorded.
"""

from __future__ import annotations

import socket
import ssl
import struct
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class ClientHello:
    ciphers: tuple[int, ...]
    groups: tuple[int, ...]
    signature_algorithms: tuple[int, ...]
    versions: tuple[int, ...]
    alpn: tuple[str, ...] | None  # None: no ALPN extension


@dataclass
class Visit:
    hello: ClientHello
    request_line: str = ""
    header_names: list[str] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)


def make_ca(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1 / localhost: (ca.pem, cert, key)."""
    directory.mkdir(parents=True, exist_ok=True)

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    openssl(
        "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=tp test CA"
    )
    openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost")
    (directory / "san.cnf").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "server.pem", "-days", "2", "-extfile", "san.cnf",
    )  # fmt: skip
    return directory / "ca.pem", directory / "server.pem", directory / "server.key"


def parse_client_hello(record: bytes) -> ClientHello:
    """The fields we check, from one TLS record holding a ClientHello."""
    body = record[5:]
    assert record[0] == 22 and body[0] == 1, "not a ClientHello"
    pos = 4 + 2 + 32  # handshake header, legacy version, random
    pos += 1 + body[pos]  # session id
    (length,) = struct.unpack_from("!H", body, pos)
    ciphers = struct.unpack_from(f"!{length // 2}H", body, pos + 2)
    pos += 2 + length
    pos += 1 + body[pos]  # compression methods
    (end,) = struct.unpack_from("!H", body, pos)
    pos, end = pos + 2, pos + 2 + end
    found: dict[int, bytes] = {}
    while pos < end:
        kind, size = struct.unpack_from("!HH", body, pos)
        found[kind] = body[pos + 4 : pos + 4 + size]
        pos += 4 + size
    return ClientHello(
        ciphers=tuple(ciphers),
        groups=_u16_list(found.get(10, b"\0\0"), 2),
        signature_algorithms=_u16_list(found.get(13, b"\0\0"), 2),
        versions=_u16_list(found.get(43, b"\0"), 1),
        alpn=_alpn(found[16]) if 16 in found else None,
    )


def _u16_list(data: bytes, prefix: int) -> tuple[int, ...]:
    data = data[prefix:]
    return struct.unpack(f"!{len(data) // 2}H", data)


def _alpn(data: bytes) -> tuple[str, ...]:
    names, pos = [], 2
    while pos < len(data):
        size = data[pos]
        names.append(data[pos + 1 : pos + 1 + size].decode())
        pos += 1 + size
    return tuple(names)


class TlsEndpoint:
    """Serves on 127.0.0.1 in a thread; `visits` lists what each connection sent."""

    def __init__(self, cert: Path, key: Path) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert, key)
        self.context.set_alpn_protocols(["http/1.1"])
        self.visits: list[Visit] = []
        self._closing = False
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self.url = f"https://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._closing = True
        socket.create_connection(("127.0.0.1", self.port), timeout=5).close()  # wakes accept()
        self._thread.join(5)
        self._listener.close()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self._listener.accept()
            except OSError:
                return
            if self._closing:
                connection.close()
                return
            with connection:
                connection.settimeout(10)
                try:
                    self._handle(connection)
                except (OSError, ssl.SSLError, AssertionError):
                    pass  # a client that gave up (e.g. an untrusted certificate) is no visit

    def _handle(self, connection: socket.socket) -> None:
        record = _peek_record(connection)
        visit = Visit(parse_client_hello(record))
        self.visits.append(visit)
        with self.context.wrap_socket(connection, server_side=True) as tls:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = tls.recv(65536)
                if not chunk:
                    return
                data += chunk
            head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
            visit.request_line = head[0]
            for line in head[1:]:
                name, _, value = line.partition(":")
                visit.header_names.append(name)
                visit.headers[name.lower()] = value.strip()
            body = b'{"object":"list","data":[]}'
            tls.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
            )


def _peek_record(connection: socket.socket) -> bytes:
    """The first TLS record, left in the socket for the handshake to read."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        data = connection.recv(65536, socket.MSG_PEEK)
        if not data:
            raise OSError("closed before a ClientHello")
        if len(data) >= 5:
            (length,) = struct.unpack_from("!H", data, 3)
            if len(data) >= 5 + length:
                return data[: 5 + length]
        time.sleep(0.005)  # MSG_PEEK returns at once with a partial record: poll until it is whole
    raise OSError("no complete ClientHello within 10 s")
