"""server.workers: worker processes on one port (a socket each), restarted when they die, drained on
SIGTERM, reloaded on SIGHUP, their metrics added up in one exposition that promtool accepts."""

from __future__ import annotations

import collections
import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from tests.conftest import base_config
from tests.e2e.test_monitoring import served_by, worker_pids
from tests.harness import (
    ROOT,
    Gateway,
    Simulator,
    metric_value,
    open_stream,
    read_all,
    request,
    run_until_exit,
    wait_for,
)
from tests.secrets_used import API_KEY

AUTH = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
SSE = [["Content-Type", "text/event-stream"]]


def shared_dirs(gw: Gateway) -> list[Path]:
    """The metric directories the gateway's processes have open files in."""
    found = set()
    for pid in [gw.process.pid, *worker_pids(gw.process.pid)]:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            target = os.readlink(fd) if fd.is_symlink() else ""
            if "tornadoproxy-metrics-" in target:
                found.add(Path(target).parent)
    return sorted(found)


def test_workers_share_the_port_and_their_metrics_add_up(
    make_gateway: Callable[..., Gateway], sim: Simulator, tmp_path: Path
) -> None:
    gw = make_gateway({"server": {"workers": 2, "metrics_dir": str(tmp_path)}})
    assert len(worker_pids(gw.process.pid)) == 2
    sent = 0
    while served_by(gw) != {0, 1}:
        assert sent < 400, "one worker never got a connection"
        assert request("GET", gw.url + "/platform/v1/models", headers=AUTH).status == 200
        sent += 1
    exposition = gw.metrics()
    assert (
        metric_value(
            exposition, "tornadoproxy_http_requests_total", route="/platform/v1/models", status="2xx"
        )
        == sent
    )
    assert metric_value(exposition, "tornadoproxy_workers") == 2
    assert metric_value(exposition, "tornadoproxy_gate_capacity") == 2 * 10000
    assert metric_value(exposition, "process_resident_memory_bytes") > 0
    checked = subprocess.run(
        ["promtool", "check", "metrics"], input=exposition, capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # Every log line of a worker names it; the parent's lines name none.
    lines = gw.log_lines()
    access = [line for line in lines if line.get("message") == "request"]
    assert {line["worker"] for line in access} == {0, 1}
    assert all(
        {"route", "method", "status", "duration_ms", "client", "stream"} <= set(line) for line in access
    )
    parent = [line for line in lines if line["logger"] == "tornadoproxy.process.workers"]
    assert parent and all("worker" not in line for line in parent)
    (directory,) = shared_dirs(gw)
    assert directory.parent == tmp_path and oct(directory.stat().st_mode & 0o777) == "0o700"
    assert gw.stop() == 0
    assert not directory.exists(), "the parent removes the metric files at exit"


def test_a_burst_of_connections_is_spread_over_the_workers(
    make_gateway: Callable[..., Gateway], sim: Simulator
) -> None:
    # On one shared socket, the worker that wakes first accepts every connection waiting in the
    # backlog: a client's pool of keep-alive connections opened together lands on one worker.
    gw = make_gateway({"server": {"workers": 2}})
    connections = [http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10) for _ in range(64)]
    for connection in connections:
        connection.connect()
    for connection in connections:
        connection.request("GET", "/platform/v1/models", headers=AUTH)
    for connection in connections:
        assert connection.getresponse().read() and connection.sock is not None
        connection.close()

    def served() -> collections.Counter[int]:
        lines = gw.log_lines()
        return collections.Counter(
            line["worker"] for line in lines if line.get("route") == "/platform/v1/models"
        )

    wait_for(lambda: served().total() == 64, what="64 access log lines")
    per_worker = served()
    # The kernel hashes each connection to a worker's socket: 64 connections split about evenly
    # (fewer than 14 on one side has a probability under 1e-5).
    assert min(per_worker[0], per_worker[1]) >= 14, per_worker


def test_sigterm_drains_every_worker_and_sighup_reaches_each(
    make_gateway: Callable[..., Gateway], sim: Simulator
) -> None:
    # Started under nohup, which leaves SIGHUP ignored: the parent must take it back.
    gw = make_gateway({"server": {"workers": 2, "drain_timeout": 10}}, wrapper=["nohup"])
    gw.process.send_signal(signal.SIGHUP)
    wait_for(
        lambda: (
            {line.get("worker") for line in gw.log_lines() if line["message"] == "configuration reloaded"}
            == {0, 1}
        ),
        what="both workers to reload",
    )
    sim.script(
        "platform",
        "/v1/chat/completions",
        {
            "status": 200,
            "headers": SSE,
            "chunks": [{"data": "data: 1\n\n"}, {"gate": "finish"}, {"data": "data: [DONE]\n\n"}],
        },
        times=8,
    )
    sockets = [open_stream(gw) for _ in range(8)]
    wait_for(lambda: metric_value(gw.metrics(), "tornadoproxy_streams_active") == 8, what="8 open streams")
    gw.process.send_signal(signal.SIGTERM)
    wait_for(
        lambda: len([line for line in gw.log_lines() if line["message"].startswith("draining ")]) == 2,
        what="both workers to start draining",
    )
    # The port is closed in the parent and every worker: new connections are refused at once.
    wait_for(lambda: _refused(gw.port), what="the listening socket to close")
    sim.release("finish")
    for sock in sockets:
        data = read_all(sock)
        assert b"data: [DONE]\n\n" in data and data.endswith(b"\r\n0\r\n\r\n"), data  # finished normally
        sock.close()
    assert gw.process.wait(15) == 0
    assert "every worker has exited" in gw.log_text()


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


# Execs the gateway with SIGCHLD ignored, as some process managers leave it: the parent must still
# see its workers die (an ignored SIGCHLD would have the kernel reap them behind its back).
IGNORING_SIGCHLD = [
    sys.executable,
    "-c",
    "import os, signal, sys; signal.signal(signal.SIGCHLD, signal.SIG_IGN); "
    "os.execv(sys.argv[1], sys.argv[1:])",
]


def test_workers_that_keep_dying_stop_the_gateway(
    make_gateway: Callable[..., Gateway], sim: Simulator
) -> None:
    gw = make_gateway({"server": {"workers": 2}}, wrapper=IGNORING_SIGCHLD)
    for _ in range(6):  # MAX_RESTARTS deaths within the window are restarted; the sixth stops it all
        if gw.process.poll() is not None:
            break
        pids = wait_for(lambda: len(worker_pids(gw.process.pid)) == 2 and worker_pids(gw.process.pid))
        victim = pids[0]
        os.kill(victim, signal.SIGKILL)

        def gone(pid: int = victim) -> bool:
            return pid not in worker_pids(gw.process.pid)

        wait_for(gone, what="the worker to go")
    assert gw.process.wait(20) == 1
    text = gw.log_text()
    assert text.count("was killed by SIGKILL; starting it again") == 5
    assert "workers died 5 times within 60 s: stopping the gateway" in text


def test_a_killed_parent_takes_its_workers_along(
    make_gateway: Callable[..., Gateway], sim: Simulator, tmp_path: Path
) -> None:
    gw = make_gateway({"server": {"workers": 2, "metrics_dir": str(tmp_path)}})
    workers = wait_for(lambda: len(worker_pids(gw.process.pid)) == 2 and worker_pids(gw.process.pid))
    assert len(workers) == 2  # else the wait below would check nothing
    os.kill(gw.process.pid, signal.SIGKILL)
    gw.process.wait(10)
    wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in workers), what="the workers to exit")


def test_a_token_file_cannot_be_shared_by_workers(tmp_path: Path, sim: Simulator, log_dir: Path) -> None:
    config = base_config(sim) | {
        "server": {"workers": 2},
        "tokens": {"store": "file", "file": str(tmp_path / "tokens.json")},
    }
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump(config))
    started = run_until_exit(path)
    assert started.returncode == 2
    assert started.stderr.startswith("tornadoproxy: configuration error: tokens.store: file cannot be shared")


def test_a_port_already_in_use_is_refused_with_workers_too(
    make_gateway: Callable[..., Gateway], sim: Simulator, tmp_path: Path
) -> None:
    # The workers' SO_REUSEPORT sockets must not let a second gateway join a port in use.
    first = make_gateway({"server": {"workers": 2}})
    path = tmp_path / "second.yaml"
    path.write_text(yaml.safe_dump(base_config(sim) | {"server": {"port": first.port, "workers": 2}}))
    second = run_until_exit(path)
    assert second.returncode == 1
    assert "cannot listen on the configured address: Address already in use" in second.stderr
    assert request("GET", first.url + "/healthz").status == 200


# Run as the systemd unit would, as far as this machine allows: without capabilities and with
# no_new_privs, the whole file system read-only except a private /tmp, as the user nobody where this
# checkout's interpreter is readable by nobody (else as uid 0, still without any capability).
CONFINED = (
    # The config is read before the tmpfs hides /tmp (the test's own files may live there).
    'config=$(cat "$4") && mount -t tmpfs -o mode=1777 tmpfs /tmp'
    ' && printf "%s\\n" "$config" > /tmp/gw.yaml && chmod 644 /tmp/gw.yaml'
    " && mount -o remount,bind,ro / && exec setpriv --reuid={user} --regid={user} --clear-groups"
    ' --no-new-privs --inh-caps=-all --bounding-set=-all "$0" "$1" "$2" "$3" /tmp/gw.yaml'
)


def test_workers_run_without_capabilities_on_a_read_only_system(
    make_gateway: Callable[..., Gateway], sim: Simulator
) -> None:
    if os.geteuid() != 0 or not shutil.which("setpriv") or not shutil.which("unshare"):
        pytest.skip("needs root, setpriv and unshare to confine the gateway")
    if Path(sys.executable).absolute().is_relative_to("/tmp"):
        pytest.skip("the interpreter lives under /tmp, which the confinement replaces with a tmpfs")
    same = (
        f"import sys, tornadoproxy.process.server; sys.exit(sys.version_info[:3] != {sys.version_info[:3]})"
    )
    probe = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c", same],
        cwd=ROOT,
        capture_output=True,
    )
    uid = 65534 if probe.returncode == 0 else 0
    wrapper = ["unshare", "--mount", "sh", "-c", CONFINED.format(user=uid)]
    gw = make_gateway({"server": {"workers": 2}}, wrapper=wrapper)
    assert request("GET", gw.url + "/platform/v1/models", headers=AUTH).status == 200
    exposition = gw.metrics()
    assert metric_value(exposition, "tornadoproxy_workers") == 2
    assert metric_value(exposition, "process_resident_memory_bytes") > 0
    for pid in [gw.process.pid, *worker_pids(gw.process.pid)]:
        status = Path(f"/proc/{pid}/status").read_text()
        assert f"\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\n" in status
        assert "\nCapEff:\t0000000000000000\n" in status and "\nCapBnd:\t0000000000000000\n" in status
        assert "\nNoNewPrivs:\t1\n" in status
        mounts = {
            line.split()[4]: line.split()[5]
            for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
        }
        assert mounts["/"].startswith("ro,") and mounts["/tmp"].startswith("rw,")
    assert gw.stop() == 0


def test_as_pid_1_of_its_own_namespace_it_restarts_and_drains(
    make_gateway: Callable[..., Gateway], sim: Simulator, tmp_path: Path
) -> None:
    """As in a container started without an init process: the parent is PID 1, which the kernel
    spares every signal it has no handler for (the parent has none: it waits for them blocked)."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare for a PID namespace")
    config = {"server": {"workers": 2, "metrics_dir": str(tmp_path)}}
    gw = make_gateway(config, wrapper=["unshare", "--pid", "--fork", "--kill-child"])
    (parent,) = worker_pids(gw.process.pid)  # unshare's child: PID 1 inside
    namespaced = Path(f"/proc/{parent}/status").read_text().split("\nNSpid:\t")[1].split("\n")[0]
    assert namespaced.split()[-1] == "1"
    victim = worker_pids(parent)[0]
    os.kill(victim, signal.SIGKILL)
    wait_for(
        lambda: victim not in worker_pids(parent) and len(worker_pids(parent)) == 2,
        what="the worker to be replaced",
    )
    assert request("GET", gw.url + "/platform/v1/models", headers=AUTH).status == 200
    os.kill(parent, signal.SIGTERM)
    assert gw.process.wait(20) == 0  # unshare exits with its child's status
    assert "every worker has exited" in gw.log_text()
