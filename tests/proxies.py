"""Real egress proxies for the tests: Debian microsocks, tinyproxy and squid, plus a black hole.

Each proxy listens on a free loopback port, writes its config and log into its own temporary
directory, binds its outgoing side to its own loopback address (so the simulator's journal shows
which proxy a request came through: `remote_ip`), and is stopped by PID.

microsocks and tinyproxy run in their own mount namespace (`unshare -m`) whose /etc/hosts knows
`localhost`, `upstream.test` and `proxy-only.test`, and whose resolver is 127.0.0.1 where nothing
listens: their name lookups never leave the machine, and `proxy-only.test` resolves at the proxy
only. `gateway_dns_wrapper()` gives the gateway a namespace that knows `upstream.test` but not
`proxy-only.test`, which is how the tests show who resolved a name (socks5:// vs socks5h://).
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from tests.harness import free_port, stop_process

PROXY_HOSTS = "127.0.0.1 localhost\n127.0.0.1 upstream.test\n127.0.0.1 proxy-only.test\n"
GATEWAY_HOSTS = "127.0.0.1 localhost\n127.0.0.1 upstream.test\n"
_NAMESPACE_SCRIPT = (
    'mount --bind "$1" /etc/hosts && mount --bind "$2" /etc/resolv.conf && shift 2 && exec "$@"'
)


def isolated_dns(directory: Path, hosts: str) -> list[str]:
    """A command prefix running the rest in a mount namespace with `hosts` as /etc/hosts and a
    resolver on 127.0.0.1 (nothing listens: unknown names fail at once, on loopback only)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "hosts").write_text(hosts)
    (directory / "resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
    return [
        "unshare",
        "-m",
        "sh",
        "-c",
        _NAMESPACE_SCRIPT,
        "sh",
        str(directory / "hosts"),
        str(directory / "resolv.conf"),
    ]


def gateway_dns_wrapper(directory: Path) -> list[str]:
    return isolated_dns(directory, GATEWAY_HOSTS)


def wait_listening(
    port: int, process: subprocess.Popen[bytes] | None, log: Path, timeout: float = 10
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"proxy exited with {process.returncode}:\n{log.read_text(errors='replace')}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"proxy on port {port} did not start; see {log}")
        time.sleep(0.02)


def _spawn(command: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


@dataclass
class RunningProxy:
    """One started proxy; `url()` gives its URL with percent-encoded credentials."""

    kind: str
    scheme: str
    port: int
    bind: str
    directory: Path
    log_path: Path
    process: subprocess.Popen[bytes]
    username: str | None = None
    password: str | None = None
    owned_dir: bool = False

    def url(self, scheme: str | None = None, password: str | None = None) -> str:
        auth = ""
        if self.username is not None:
            secret = self.password if password is None else password
            auth = f"{quote(self.username, safe='')}:{quote(secret or '', safe='')}@"
        return f"{scheme or self.scheme}://{auth}127.0.0.1:{self.port}"

    def label(self, scheme: str | None = None) -> str:
        auth = "***@" if self.username is not None else ""
        return f"{scheme or self.scheme}://{auth}127.0.0.1:{self.port}"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        stop_process(self.process, timeout=5)
        if self.owned_dir:
            shutil.rmtree(self.directory, ignore_errors=True)


def start_microsocks(
    directory: Path, bind: str, username: str | None = None, password: str | None = None, port: int = 0
) -> RunningProxy:
    """microsocks (SOCKS5), with -u/-P when given; it logs each target as it was asked for it:
    a host name (socks5h) or an address (socks5)."""
    directory.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    args = ["microsocks", "-i", "127.0.0.1", "-p", str(port), "-b", bind]
    if username is not None:
        args += ["-u", username, "-P", password or ""]
    log = directory / "microsocks.log"
    command = isolated_dns(directory / "ns", PROXY_HOSTS) + args
    process = _spawn(command, log)
    wait_listening(port, process, log)
    return RunningProxy("microsocks", "socks5h", port, bind, directory, log, process, username, password)


def start_tinyproxy(
    directory: Path,
    bind: str,
    connect_ports: list[int],
    username: str | None = None,
    password: str | None = None,
) -> RunningProxy:
    """tinyproxy as an HTTP CONNECT proxy (BasicAuth takes only [-a-z0-9._] credentials)."""
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = directory / "tinyproxy.log"
    lines = [
        f"Port {port}",
        "Listen 127.0.0.1",
        f"Bind {bind}",
        "Timeout 30",
        f'LogFile "{log}"',
        "LogLevel Info",
        f'PidFile "{directory / "tinyproxy.pid"}"',
        "MaxClients 50",
        "Allow 127.0.0.1",
        "DisableViaHeader Yes",
        *(f"ConnectPort {p}" for p in connect_ports),
    ]
    if username is not None:
        lines.append(f"BasicAuth {username} {password}")
    config = directory / "tinyproxy.conf"
    config.write_text("\n".join(lines) + "\n")
    command = isolated_dns(directory / "ns", PROXY_HOSTS) + ["tinyproxy", "-d", "-c", str(config)]
    process = _spawn(command, directory / "stdout.log")
    wait_listening(port, process, directory / "stdout.log")
    return RunningProxy("tinyproxy", "http", port, bind, directory, log, process, username, password)


def start_squid(bind: str, username: str, password: str) -> RunningProxy:
    """squid with Basic authentication (any characters in the password). It drops root to the
    `proxy` user, so its files live in a directory of their own that this user owns."""
    directory = Path(tempfile.mkdtemp(prefix="tp-squid-"))
    user = pwd.getpwnam("proxy")
    os.chown(directory, user.pw_uid, user.pw_gid)
    port = free_port()
    salted = subprocess.run(
        ["openssl", "passwd", "-apr1", "-stdin"], input=password, capture_output=True, text=True, check=True
    ).stdout.strip()
    (directory / "passwd").write_text(f"{username}:{salted}\n")
    (directory / "hosts").write_text(PROXY_HOSTS)
    log = directory / "access.log"
    (directory / "squid.conf").write_text(
        "\n".join(
            [
                f"http_port 127.0.0.1:{port}",
                f"pid_filename {directory / 'squid.pid'}",
                f"cache_log {directory / 'cache.log'}",
                f"access_log stdio:{log}",
                "cache_store_log none",
                "cache deny all",
                f"coredump_dir {directory}",
                "netdb_filename none",
                "pinger_enable off",
                "shutdown_lifetime 0 seconds",
                f"tcp_outgoing_address {bind}",
                "dns_nameservers 127.0.0.1",
                f"hosts_file {directory / 'hosts'}",
                f"auth_param basic program /usr/lib/squid/basic_ncsa_auth {directory / 'passwd'}",
                "auth_param basic children 1 startup=1 idle=1",
                "auth_param basic realm tornadoproxy-test",
                "acl authed proxy_auth REQUIRED",
                "http_access allow authed",
                "http_access deny all",
                "",
            ]
        )
    )
    for path in directory.iterdir():
        os.chown(path, user.pw_uid, user.pw_gid)
    process = _spawn(["squid", "-N", "-f", str(directory / "squid.conf")], directory / "stdout.log")
    wait_listening(port, process, directory / "cache.log", timeout=20)
    return RunningProxy("squid", "http", port, bind, directory, log, process, username, password, True)


class BlackHole:
    """A port that accepts TCP connections (the kernel does, into the backlog) and never answers."""

    def __init__(self) -> None:
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.socket.listen(64)
        self.port = int(self.socket.getsockname()[1])

    def url(self, scheme: str = "socks5h") -> str:
        return f"{scheme}://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.socket.close()


def closed_port() -> int:
    """A loopback port where nothing listens (connections are refused)."""
    return free_port()
