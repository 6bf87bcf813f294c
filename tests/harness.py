"""Test-side helpers: start the simulator and gateways as processes, talk HTTP to them, wait well.

Processes are started by the tests and stopped by PID. Waiting is always polling with a deadline,
never a bare sleep.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.secrets_used import API_KEY

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(
    condition: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02, what: str = ""
) -> Any:
    """Poll `condition` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or condition}")
        time.sleep(interval)


def stop_process(process: subprocess.Popen[bytes], timeout: float = 10.0) -> int:
    """SIGTERM, then SIGKILL after `timeout`; returns the exit status."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
    return process.returncode


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    def json(self) -> Any:
        return json.loads(self.body)


def request(
    method: str,
    url: str,
    *,
    headers: dict[str, str] | None = None,
    body: bytes | str | dict[str, Any] | None = None,
    timeout: float = 30.0,
) -> Response:
    """One HTTP/1.1 request on a fresh connection."""
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=timeout)
    headers = dict(headers or {})
    if isinstance(body, dict):
        body = json.dumps(body)
        headers.setdefault("Content-Type", "application/json")
    target = parts.path + ("?" + parts.query if parts.query else "")
    try:
        connection.request(method, target, body=body, headers=headers)
        answer = connection.getresponse()
        return Response(answer.status, answer.getheaders(), answer.read())
    finally:
        connection.close()


def raw_exchange(port: int, data: bytes, timeout: float = 10.0, host: str = "127.0.0.1") -> bytes:
    """Send raw bytes, read until the server closes or the timeout passes."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        with contextlib.suppress(TimeoutError, ConnectionResetError):
            while chunk := sock.recv(65536):
                chunks.append(chunk)
                if b"\r\n\r\n" in b"".join(chunks) and _complete(b"".join(chunks)):
                    break
        return b"".join(chunks)


def _complete(data: bytes) -> bool:
    head, _, body = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":")[1])
    return False


class Simulator:
    """The upstream simulator process and its control API."""

    def __init__(self, log_dir: Path, hosts: dict[str, str] | None = None) -> None:
        args = [sys.executable, "-m", "tests.simulator"]
        for family, address in (hosts or {}).items():
            args += ["--host", f"{family}={address}"]
        self.log = open(log_dir / "simulator.log", "wb")
        self.process = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=self.log)
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError("the simulator did not start; see simulator.log")
        self.urls: dict[str, str] = json.loads(line)
        self.control = self.urls["control"]

    def stop(self) -> None:
        stop_process(self.process)
        if self.process.stdout is not None:
            self.process.stdout.close()
        self.log.close()

    def _control(self, method: str, path: str, body: Any = None) -> Any:
        answer = request(method, self.control + path, body=body)
        return answer.json() if answer.body else None

    def reset(self) -> None:
        self._control("POST", "/__sim__/reset", {})

    def script(
        self, family: str, path: str, response: dict[str, Any], method: str = "*", times: int = 1
    ) -> None:
        self._control(
            "POST",
            "/__sim__/scripts",
            {
                "family": family,
                "method": method,
                "path": path,
                "response": response,
                "times": times,
            },
        )

    def release(self, gate: str) -> None:
        self._control("POST", f"/__sim__/gates/{gate}/release", {})

    def wait_reached(self, gate: str, timeout: float = 10.0) -> None:
        answer = request(
            "GET", f"{self.control}/__sim__/gates/{gate}/reached?timeout={timeout}", timeout=timeout + 5
        )
        assert answer.status == 200, f"gate {gate} was never reached"

    def clear_journal(self) -> None:
        self._control("DELETE", "/__sim__/journal")

    def add_account(self, email: str, password: str, **flags: Any) -> None:
        """A login account (flags: mfa, deactivated, rate_limited, token_ttl)."""
        self._control("POST", "/__sim__/accounts", {"email": email, "password": password, **flags})

    def account_counters(self, email: str) -> dict[str, int]:
        """{"logins": completed logins, "password_attempts": password forms received} of an account."""
        return dict(self._control("GET", "/__sim__/accounts")[email])

    def issued_tokens(self) -> list[str]:
        """Every accessToken the simulated login hosts issued since the last reset."""
        return list(self._control("GET", "/__sim__/tokens"))

    def challenge(self, step: str, kind: str = "challenge", times: int = -1) -> None:
        """Answer a login step with a Cloudflare challenge (or "block") page, `times` times (-1: always)."""
        self._control("POST", "/__sim__/challenges", {"step": step, "kind": kind, "times": times})

    def hold(self, step: str, gate: str) -> None:
        """Make a login step wait until `gate` is released."""
        self._control("POST", "/__sim__/holds", {"step": step, "gate": gate})

    def sentinel(self, **settings: Any) -> dict[str, Any]:
        """Change the web backend's sentinel (enforce "when_sent"/"always"/"never", proof_required,
        difficulty, seed, turnstile, arkose, token_ttl, refuse "unauthorized"/"challenge"/"block"/
        "rate_limited" with refuse_times); with no settings, read its state (issued, refusals)."""
        if settings:
            return dict(self._control("POST", "/__sim__/chatgpt/sentinel", settings))
        return dict(self._control("GET", "/__sim__/chatgpt/sentinel"))

    def script_answer(self, pieces: list[str], **options: Any) -> None:
        """Queue the web answer of the next conversation (finish, framing, error_at, gates
        {piece: gate}, cut_at, times)."""
        self._control("POST", "/__sim__/chatgpt/answers", {"pieces": pieces, **options})

    def web_limits(self, **limits: Any) -> dict[str, Any]:
        """Change (one_at_a_time, cap, clears_in) or read the accounts' limits and answer counts."""
        if limits:
            return dict(self._control("POST", "/__sim__/chatgpt/limits", limits))
        return dict(self._control("GET", "/__sim__/chatgpt/limits"))

    def web_conversations(self) -> list[dict[str, Any]]:
        return list(self._control("GET", "/__sim__/chatgpt/conversations"))

    def journal(self, family: str | None = None, path: str | None = None) -> list[dict[str, Any]]:
        query = urllib.parse.urlencode({k: v for k, v in (("family", family), ("path", path)) if v})
        return list(self._control("GET", "/__sim__/journal" + ("?" + query if query else "")))


def run_until_exit(config_path: Path) -> subprocess.CompletedProcess[str]:
    """Run a gateway that is expected to stop on its own (a refused start), its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "tornadoproxy", "--config", str(config_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


class Gateway:
    """A tornadoproxy process on a free port, with its log captured to a file."""

    def __init__(
        self,
        config: dict[str, Any],
        log_dir: Path,
        env: dict[str, str] | None = None,
        wrapper: list[str] | None = None,
    ) -> None:
        """`wrapper` prefixes the command (it must exec the gateway, keeping its PID)."""
        self.port = free_port()
        self.config = deep_merge(config, {"server": {"host": "127.0.0.1", "port": self.port}})
        handle, path = tempfile.mkstemp(prefix="gateway-", suffix=".yaml", dir=log_dir)
        with os.fdopen(handle, "w") as stream:
            yaml.safe_dump(self.config, stream)
        self.config_path = Path(path)
        self.log_path = log_dir / f"gateway-{self.port}.log"
        self._log = open(self.log_path, "wb")
        environment = {
            k: v for k, v in os.environ.items() if not k.startswith(("GO_CHATGPT_API", "PROXY", "PORT"))
        }
        environment.update(env or {})
        self.process = subprocess.Popen(
            [*(wrapper or []), sys.executable, "-m", "tornadoproxy", "--config", str(self.config_path)],
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=environment,
        )
        self.url = f"http://127.0.0.1:{self.port}"
        self.key_headers: dict[str, str] = {}  # the client key header, for a gateway that needs one
        try:
            wait_for(
                lambda: self._answers("/healthz"), timeout=15, what=f"gateway on port {self.port} to start"
            )
        except BaseException:
            self.stop()  # a gateway that did not come up is still ours to stop
            raise

    def wait_ready(self, timeout: float = 15, headers: dict[str, str] | None = None) -> None:
        """Wait for the first round of upstream probes, so they are over before a test begins."""
        wait_for(
            lambda: self._answers("/readyz", headers), timeout=timeout, what="the first readiness probes"
        )

    def _answers(self, path: str, headers: dict[str, str] | None = None) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"gateway exited with {self.process.returncode}:\n{self.log_text()}")
        try:
            return request("GET", self.url + path, headers=headers, timeout=2).status == 200
        except OSError:
            return False

    def log_text(self) -> str:
        if not self._log.closed:  # readable after stop() too
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def log_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log_text().splitlines() if line.startswith("{")]

    def metrics(self) -> str:
        return request("GET", self.url + "/metrics", headers=self.key_headers).body.decode()

    def access_lines(self, route: str | None = None) -> list[dict[str, Any]]:
        """The access log so far (one line per request that ended), optionally of one route."""
        return [
            line
            for line in self.log_lines()
            if line.get("logger") == "tornadoproxy.access" and route in (None, line.get("route"))
        ]

    def rss_mb(self) -> float:
        """The gateway process's resident memory, in MiB."""
        with open(f"/proc/{self.process.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS line")

    def stop(self, timeout: float = 15.0) -> int:
        status = stop_process(self.process, timeout)
        self._log.close()
        return status


def metric_value(exposition: str, name: str, **labels: str) -> float:
    """The value of one sample in a text exposition (0 when absent)."""
    for line in exposition.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        sample, _, value = line.rpartition(" ")
        metric, _, label_text = sample.partition("{")
        if metric != name:
            continue
        found = dict(
            (pair.split("=", 1)[0], pair.split("=", 1)[1].strip('"'))
            for pair in label_text.rstrip("}").split(",")
            if pair
        )
        if all(found.get(k) == v for k, v in labels.items()):
            return float(value)
    return 0.0


STREAM_BODY = json.dumps({"model": "m", "stream": True, "messages": []})
_STREAM_REQUEST = (
    f"POST /platform/v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\n"
    f"Content-Type: application/json\r\nContent-Length: {len(STREAM_BODY)}\r\n\r\n{STREAM_BODY}"
).encode()


def open_stream(gw: Gateway, rcvbuf: int | None = None) -> socket.socket:
    """A raw connection to the gateway with a streaming chat completion sent on it; `rcvbuf` shrinks
    the client's receive buffer (a slow reader)."""
    sock = socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect(("127.0.0.1", gw.port))
    sock.sendall(_STREAM_REQUEST)
    return sock


def read_all(sock: socket.socket, timeout: float = 15) -> bytes:
    """Everything the peer sends until it closes (or resets) the connection."""
    sock.settimeout(timeout)
    chunks = []
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@contextlib.contextmanager
def streaming(
    url: str,
    method: str = "POST",
    headers: dict[str, str] | None = None,
    body: bytes | str | None = None,
    timeout: float = 30.0,
) -> Iterator[http.client.HTTPResponse]:
    """An open response whose body the test reads piece by piece (`read1`)."""
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=timeout)
    try:
        connection.request(
            method, parts.path + ("?" + parts.query if parts.query else ""), body=body, headers=headers or {}
        )
        yield connection.getresponse()
    finally:
        connection.close()


class RedisServer:
    """A throw-away redis-server (Debian package) on a free loopback port, no persistence."""

    def __init__(self, log_dir: Path, password: str | None = None, port: int | None = None) -> None:
        """`port`: start again where a stopped one listened (its clients reconnect)."""
        self.port = port or free_port()
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        args += ["--appendonly", "no", "--daemonize", "no", "--dir", str(log_dir)]
        if password:
            args += ["--requirepass", password]
        self.log = open(log_dir / f"redis-{self.port}.log", "wb")
        self.process = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT)
        auth = f":{urllib.parse.quote(password, safe='')}@" if password else ""
        self.url = f"redis://{auth}127.0.0.1:{self.port}/0"
        wait_for(self._ready, timeout=10, what=f"redis-server on port {self.port}")

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"redis-server exited with {self.process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith((b"+PONG", b"-NOAUTH"))
        except OSError:
            return False

    def stop(self) -> None:
        stop_process(self.process)
        self.log.close()
