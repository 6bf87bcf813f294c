"""A loopback TLS endpoint that records what a client sends: the raw ClientHello, then the requests.

It peeks at the first TLS record without consuming it and parses the ClientHello (tests/fingerprints.py
computes JA3, JA3N and JA4 from it), then completes the handshake with a throwaway certificate (made
by the `openssl` CLI, see `make_ca`). If ALPN picks h2 it reads the client's HTTP/2 frames itself
(hyperframe, HPACK by hpack) to record the Akamai fingerprint, each HEADERS frame's priority and
the header names in order, while the `h2` library answers; over HTTP/1.1 it reads the request head.
Every connection is one `Visit`. By default each answer closes the connection (`Connection: close`,
or GOAWAY), so every request starts a new handshake; with `keep_alive` a connection serves requests
until the client closes it. GET / answers `page` as HTML (for real browsers), anything else JSON.
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

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import hpack
from hyperframe.frame import Frame, HeadersFrame, PriorityFrame, SettingsFrame, WindowUpdateFrame

from tests.fingerprints import Hello, Http2Opening, akamai, ja3, ja3n, ja4

ClientHello = Hello
_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


@dataclass
class Request:
    method: str
    path: str
    version: str  # "1.1" or "2"
    header_names: list[str]  # in order, pseudo-headers and Host left out
    headers: dict[str, str]  # lower-cased names
    pseudo_headers: tuple[str, ...] = ()
    weight: int = 0  # HTTP/2 HEADERS priority weight (1-256), 0 without the priority flag
    exclusive: bool = False


@dataclass
class Visit:
    """One connection: its ClientHello, what ALPN chose, the HTTP/2 opening, the requests on it."""

    hello: Hello
    alpn: str | None = None
    resumed: bool = False
    opening: Http2Opening | None = None
    requests: list[Request] = field(default_factory=list)

    @property
    def ja3(self) -> str:
        return ja3(self.hello)

    @property
    def ja3n(self) -> str:
        return ja3n(self.hello)

    @property
    def ja4(self) -> str:
        return ja4(self.hello)

    @property
    def akamai(self) -> str | None:
        return akamai(self.opening) if self.opening is not None else None

    # The first request, as the HTTP/1.1-only endpoint of before recorded it.
    @property
    def request_line(self) -> str:
        first = self.requests[0] if self.requests else None
        return f"{first.method} {first.path} HTTP/{first.version}" if first else ""

    @property
    def header_names(self) -> list[str]:
        return self.requests[0].header_names if self.requests else []

    @property
    def headers(self) -> dict[str, str]:
        return self.requests[0].headers if self.requests else {}


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


def parse_client_hello(record: bytes) -> Hello:
    """Every field a fingerprint uses, from one TLS record holding a ClientHello."""
    body = record[5:]
    assert record[0] == 22 and body[0] == 1, "not a ClientHello"
    (legacy_version,) = struct.unpack_from("!H", body, 4)
    pos = 4 + 2 + 32  # handshake header, legacy version, random
    pos += 1 + body[pos]  # session id
    (length,) = struct.unpack_from("!H", body, pos)
    ciphers = struct.unpack_from(f"!{length // 2}H", body, pos + 2)
    pos += 2 + length
    pos += 1 + body[pos]  # compression methods
    (end,) = struct.unpack_from("!H", body, pos)
    pos, end = pos + 2, pos + 2 + end
    order: list[int] = []
    found: dict[int, bytes] = {}
    while pos < end:
        kind, size = struct.unpack_from("!HH", body, pos)
        order.append(kind)
        found[kind] = body[pos + 4 : pos + 4 + size]
        pos += 4 + size
    formats = found.get(11, b"\0")
    return Hello(
        legacy_version=legacy_version,
        ciphers=tuple(ciphers),
        extensions=tuple(order),
        groups=_u16_list(found.get(10, b"\0\0"), 2),
        point_formats=tuple(formats[1 : 1 + formats[0]]),
        signature_algorithms=_u16_list(found.get(13, b"\0\0"), 2),
        versions=_u16_list(found.get(43, b"\0"), 1),
        alpn=_alpn(found[16]) if 16 in found else None,
        server_name=_server_name(found[0]) if 0 in found else None,
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


def _server_name(data: bytes) -> str:
    (size,) = struct.unpack_from("!H", data, 3)
    return data[5 : 5 + size].decode()


class TlsEndpoint:
    """Serves on 127.0.0.1 in a thread; `visits` lists what each connection sent."""

    def __init__(
        self, cert: Path, key: Path, http2: bool = False, keep_alive: bool = False, page: str = ""
    ) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert, key)
        self.context.set_alpn_protocols(["h2", "http/1.1"] if http2 else ["http/1.1"])
        self.keep_alive = keep_alive
        self.page = page
        self.visits: list[Visit] = []
        self._closing = False
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self.url = f"https://127.0.0.1:{self.port}"
        self.named_url = f"https://localhost:{self.port}"  # with SNI, as a browser sends to a host name
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._closing = True
        socket.create_connection(("127.0.0.1", self.port), timeout=5).close()  # wakes accept()
        self._thread.join(5)
        self._listener.close()

    @property
    def requests(self) -> list[Request]:
        return [request for visit in list(self.visits) for request in visit.requests]

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self._listener.accept()
            except OSError:
                return
            if self._closing:
                connection.close()
                return
            threading.Thread(target=self._serve_one, args=(connection,), daemon=True).start()

    def _serve_one(self, connection: socket.socket) -> None:
        with connection:
            connection.settimeout(10)
            try:
                self._handle(connection)
            except (OSError, ssl.SSLError, AssertionError, h2.exceptions.ProtocolError):
                pass  # a client that gave up (e.g. an untrusted certificate) ends its visit

    def _handle(self, connection: socket.socket) -> None:
        record = _peek_record(connection)
        visit = Visit(parse_client_hello(record))
        self.visits.append(visit)
        with self.context.wrap_socket(connection, server_side=True) as tls:
            visit.alpn = tls.selected_alpn_protocol()
            visit.resumed = bool(tls.session_reused)
            if visit.alpn == "h2":
                _Http2Server(self, visit, tls).run()
            else:
                self._serve_http1(visit, tls)

    def _serve_http1(self, visit: Visit, tls: ssl.SSLSocket) -> None:
        data = b""
        while True:
            while b"\r\n\r\n" not in data:
                chunk = tls.recv(65536)
                if not chunk:
                    return
                data += chunk
            head, data = data.split(b"\r\n\r\n", 1)
            lines = head.decode("latin-1").split("\r\n")
            method, path, version = lines[0].split(" ", 2)
            request = Request(method, path, version.removeprefix("HTTP/"), [], {})
            for line in lines[1:]:
                name, _, value = line.partition(":")
                request.header_names.append(name)
                request.headers[name.lower()] = value.strip()
            length = int(request.headers.get("content-length", "0"))
            while len(data) < length:
                data += tls.recv(65536)
            data = data[length:]
            visit.requests.append(request)
            content_type, body = self._answer(request)
            connection = b"keep-alive" if self.keep_alive else b"close"
            tls.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: %s\r\nConnection: %s\r\nContent-Length: %d\r\n\r\n%s"
                % (content_type.encode(), connection, len(body), body)
            )
            if not self.keep_alive:
                return

    def _answer(self, request: Request) -> tuple[str, bytes]:
        if request.method == "GET" and request.path == "/" and self.page:
            return "text/html; charset=utf-8", self.page.encode()
        return "application/json", b'{"object":"list","data":[]}'


class _Http2Server:
    """One HTTP/2 connection: our own frame reader records, the h2 library answers."""

    def __init__(self, endpoint: TlsEndpoint, visit: Visit, tls: ssl.SSLSocket) -> None:
        self.endpoint, self.visit, self.tls = endpoint, visit, tls
        self.connection = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        self.decoder = hpack.Decoder()
        self.buffer = b""
        self.settings: list[tuple[int, int]] = []
        self.window = 0
        self.priorities: list[tuple[int, int, int, int]] = []
        self.pending: dict[int, Request] = {}

    def run(self) -> None:
        self.connection.initiate_connection()
        self.tls.sendall(self.connection.data_to_send())
        while True:
            data = self.tls.recv(65536)
            if not data:
                return
            self._record(data)
            for event in self.connection.receive_data(data):
                if isinstance(event, h2.events.StreamEnded):
                    self._respond(event.stream_id)
            self.tls.sendall(self.connection.data_to_send())
            if self.visit.requests and not self.endpoint.keep_alive and not self.pending:
                self.connection.close_connection()
                self.tls.sendall(self.connection.data_to_send())
                return

    def _record(self, data: bytes) -> None:
        """Read the client's frames as sent (SETTINGS order and values included)."""
        self.buffer += data
        if self.buffer.startswith(_PREFACE):
            self.buffer = self.buffer[len(_PREFACE) :]
        while len(self.buffer) >= 9:
            frame, length = Frame.parse_frame_header(memoryview(self.buffer[:9]))
            if len(self.buffer) < 9 + length:
                return
            frame.parse_body(memoryview(self.buffer[9 : 9 + length]))
            self.buffer = self.buffer[9 + length :]
            self._frame(frame)

    def _frame(self, frame: Frame) -> None:
        if isinstance(frame, SettingsFrame) and "ACK" not in frame.flags and self.visit.opening is None:
            self.settings += list(frame.settings.items())
        elif isinstance(frame, WindowUpdateFrame) and frame.stream_id == 0 and self.visit.opening is None:
            self.window += frame.window_increment
        elif isinstance(frame, PriorityFrame) and self.visit.opening is None:
            self.priorities.append(
                (frame.stream_id, int(frame.exclusive), frame.depends_on, frame.stream_weight + 1)
            )
        elif isinstance(frame, HeadersFrame):
            self._headers(frame)

    def _headers(self, frame: HeadersFrame) -> None:
        # Requests here fit one HEADERS frame (no CONTINUATION): a few hundred bytes of headers.
        headers = [
            (name.decode(), value.decode()) for name, value in self.decoder.decode(frame.data, raw=True)
        ]
        pseudo = tuple(name for name, _ in headers if name.startswith(":"))
        values = dict(headers)
        prioritised = "PRIORITY" in frame.flags
        request = Request(
            method=values.get(":method", ""),
            path=values.get(":path", ""),
            version="2",
            header_names=[name for name, _ in headers if not name.startswith(":")],
            headers={name: value for name, value in headers if not name.startswith(":")},
            pseudo_headers=pseudo,
            weight=frame.stream_weight + 1 if prioritised else 0,
            exclusive=bool(frame.exclusive) if prioritised else False,
        )
        if self.visit.opening is None:
            self.visit.opening = Http2Opening(
                tuple(self.settings), self.window, tuple(self.priorities), pseudo
            )
        self.pending[frame.stream_id] = request

    def _respond(self, stream_id: int) -> None:
        request = self.pending.pop(stream_id, None)
        if request is None:
            return
        self.visit.requests.append(request)
        content_type, body = self.endpoint._answer(request)
        self.connection.send_headers(
            stream_id,
            [(":status", "200"), ("content-type", content_type), ("content-length", str(len(body)))],
        )
        self.connection.send_data(stream_id, body, end_stream=True)


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
