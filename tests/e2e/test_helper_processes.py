"""The helper processes of multiprocessing (the proof-of-work workers and the resource tracker) end
with the gateway process that owns them: when it stops, when it is killed, when it is restarted.
They are spawned at start-up when accounts are configured (the configurations here have one), else by
the first /imitate completion, and not at all by a gateway that never answers one.

Every process a test starts carries a marker of its own in its environment (children inherit it), so
that the test can find all of them, including orphans reparented elsewhere, by scanning /proc.
"""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.e2e.test_monitoring import worker_pids
from tests.harness import Gateway, RedisServer, Simulator, metric_value, request, wait_for
from tests.pool_fixtures import jwt
from tests.secrets_used import ACCESS_TOKEN, API_KEY

MARKER_VARIABLE = "TORNADOPROXY_TEST_MARKER"
LEAKED = "leaked semaphore"


def marked(marker: str) -> set[int]:
    """The live processes of this user whose environment carries `marker` (a zombie's is empty)."""
    entry = f"{MARKER_VARIABLE}={marker}".encode()
    found = set()
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                environ = Path(f"/proc/{name}/environ").read_bytes()
            except OSError:
                continue  # gone, or not ours
            if entry in environ.split(b"\0"):
                found.add(int(name))
    return found


def helpers(owner: int) -> dict[str, int]:
    """The multiprocessing helpers whose parent is `owner`, by kind ("proof" or "tracker")."""
    found = {}
    for pid in worker_pids(owner):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"multiprocessing.resource_tracker" in command:
            found["tracker"] = pid
        elif b"--multiprocessing-fork" in command:
            found["proof"] = pid
    return found


def alive(pids: set[int], marker: str) -> set[int]:
    return pids & marked(marker)


def with_account(redis: RedisServer | None = None) -> dict[str, Any]:
    """Configuration with one pool account (an accessToken: no login); the workers of a gateway of
    several share the pool through Redis."""
    config: dict[str, Any] = {"accounts": [{"name": "helper", "access_token": jwt(sub="helper")}]}
    if redis is not None:
        config["tokens"] = {"store": "redis", "redis_url": redis.url, "kdf_cost": 10}
    return config


@pytest.fixture
def redis(log_dir: Path) -> Iterator[RedisServer]:
    server = RedisServer(log_dir)
    yield server
    server.stop()


@pytest.fixture
def marker() -> Iterator[str]:
    """A fresh marker; whatever still carries it after the test (a failed one) is killed by PID."""
    value = uuid.uuid4().hex
    yield value
    for pid in marked(value):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_a_killed_worker_and_a_stopped_gateway_leave_no_helper_behind(
    marker: str, make_gateway: Callable[..., Gateway], sim: Simulator, redis: RedisServer
) -> None:
    gw = make_gateway({"server": {"workers": 2}, **with_account(redis)}, env={MARKER_VARIABLE: marker})
    workers = wait_for(lambda: len(worker_pids(gw.process.pid)) == 2 and worker_pids(gw.process.pid))
    # The proof workers spawn at start-up, each beside its own resource tracker.
    spawned = wait_for(
        lambda: all(len(helpers(pid)) == 2 for pid in workers) and {pid: helpers(pid) for pid in workers},
        what="each worker's proof worker and resource tracker",
    )
    victim = workers[0]
    orphans = set(spawned[victim].values())
    os.kill(victim, signal.SIGKILL)
    wait_for(
        lambda: metric_value(gw.metrics(), "tornadoproxy_worker_restarts_total") == 1,
        what="the killed worker's restart",
    )
    wait_for(lambda: not alive(orphans, marker), what=f"the killed worker's helpers {orphans} to exit")
    # Its resource tracker, the last to go, unlinked the semaphores the killed worker could not, and
    # said so; a clean stop must leave it nothing to say.
    assert gw.log_text().count(LEAKED) == 1
    restarted = wait_for(
        lambda: len(worker_pids(gw.process.pid)) == 2 and set(worker_pids(gw.process.pid)) - {victim}
    )
    (replacement,) = restarted - set(workers)
    wait_for(lambda: len(helpers(replacement)) == 2, what="the restarted worker's helpers")
    os.kill(gw.process.pid, signal.SIGTERM)
    assert gw.process.wait(20) == 0
    wait_for(lambda: not marked(marker), what="every process of the gateway to exit")
    assert gw.log_text().count(LEAKED) == 1
    assert gw.log_text().count("Warning") == 1  # no other complaint, from the tracker or anyone


def test_a_killed_single_process_gateway_takes_its_proof_worker_along(
    marker: str, make_gateway: Callable[..., Gateway], sim: Simulator
) -> None:
    gw = make_gateway(with_account(), env={MARKER_VARIABLE: marker})
    spawned = wait_for(lambda: len(helpers(gw.process.pid)) == 2 and helpers(gw.process.pid))
    os.kill(gw.process.pid, signal.SIGKILL)
    assert gw.process.wait(10) == -signal.SIGKILL
    wait_for(lambda: not marked(marker), what=f"the proof worker and tracker {spawned} to exit")


def test_a_stopped_single_process_gateway_ends_its_helpers_without_warnings(
    marker: str, make_gateway: Callable[..., Gateway], sim: Simulator
) -> None:
    gw = make_gateway(with_account(), env={MARKER_VARIABLE: marker})
    wait_for(lambda: len(helpers(gw.process.pid)) == 2, what="the proof worker and resource tracker")
    assert gw.stop() == 0
    wait_for(lambda: not marked(marker), what="every process of the gateway to exit")
    text = gw.log_text()
    assert LEAKED not in text and "resource_tracker" not in text, text


def test_a_stopped_gateway_of_workers_ends_their_helpers_without_warnings(
    marker: str, make_gateway: Callable[..., Gateway], sim: Simulator, redis: RedisServer
) -> None:
    # The workers leave with os._exit, which skips multiprocessing's exit hooks: the proof workers'
    # pool must be ended and released before it.
    gw = make_gateway({"server": {"workers": 2}, **with_account(redis)}, env={MARKER_VARIABLE: marker})
    workers = wait_for(lambda: len(worker_pids(gw.process.pid)) == 2 and worker_pids(gw.process.pid))
    wait_for(lambda: all(len(helpers(pid)) == 2 for pid in workers), what="the workers' helpers")
    assert gw.stop() == 0
    wait_for(lambda: not marked(marker), what="every process of the gateway to exit")
    text = gw.log_text()
    assert LEAKED not in text and "resource_tracker" not in text, text


def test_without_accounts_the_helpers_wait_for_the_first_imitate_completion(
    marker: str, make_gateway: Callable[..., Gateway], sim: Simulator
) -> None:
    gw = make_gateway({}, env={MARKER_VARIABLE: marker})
    # Relayed traffic spawns nothing (ready: the start-up and a readiness probe are over).
    models = request("GET", gw.url + "/platform/v1/models", headers={"Authorization": f"Bearer {API_KEY}"})
    assert models.status == 200
    assert helpers(gw.process.pid) == {}
    client = openai.OpenAI(base_url=gw.url + "/imitate/v1", api_key=ACCESS_TOKEN, max_retries=0, timeout=30)
    with client:
        answer = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert answer.choices[0].message.content == "You said: hi "
    assert sim.sentinel()["accepted"] == 1  # a proof was asked for and solved by the worker spawned for it
    assert set(helpers(gw.process.pid)) == {"proof", "tracker"}
    assert gw.stop() == 0
    wait_for(lambda: not marked(marker), what="every process of the gateway to exit")
