"""Sticky egress through real proxies (microsocks out via 127.0.0.2 and 127.0.0.4, tinyproxy out via
127.0.0.3; the simulator's journal shows each request's peer address): an account always leaves
through its own proxy, or the one of the chatgpt egress list it was bound to, logins included; a
request pinned to a dead proxy fails rather than fail over."""

from __future__ import annotations

import asyncio
import base64
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import pytest

from tests.egress_fixtures import Proxies
from tests.harness import Simulator, metric_value
from tests.pool_fixtures import Running, jwt, running_pool, until
from tests.proxies import closed_port
from tests.secrets_used import LOGIN_PASSWORD
from tornadoproxy.errors import UpstreamError
from tornadoproxy.pool.lease import Lease
from tornadoproxy.pool.outcome import Outcome
from tornadoproxy.upstream.request import UpstreamRequest


def body_of(entry: dict[str, Any]) -> str:
    return base64.b64decode(entry["body_b64"]).decode(errors="replace")


async def send_as(running: Running, lease: Lease) -> dict[str, Any]:
    """A request of the account's own, as a consumer sends it: the lease's token, proxy and profile."""
    url = running.config.upstreams.chatgpt + "/backend-api/models"
    headers = [("Authorization", lease.authorization), ("Oai-Device-Id", lease.device_id)]
    request = UpstreamRequest("chatgpt", "GET", url, headers, proxy=lease.proxy, profile=lease.profile)
    answer = await running.relay.fetch(request)
    assert answer.status == 200
    return {"proxy": answer.proxy}


def test_accounts_keep_their_egress_for_logins_and_answers(
    sim: Simulator, proxies: Proxies, tmp_path: Path
) -> None:
    emails = {}
    accounts: list[dict[str, Any]] = []
    for name in ("alice", "bob", "carol"):
        emails[name] = f"{name}+{uuid.uuid4().hex[:8]}@example.com"
        sim.add_account(emails[name], LOGIN_PASSWORD)
        accounts.append({"name": name, "username": emails[name], "password": LOGIN_PASSWORD})
    accounts[2]["proxy"] = proxies.socks_auth.url()  # carol's own proxy
    accounts.append({"name": "dave", "access_token": jwt(), "profile": "firefox"})
    config = {
        "accounts": accounts,
        # Logins of others would go direct: the accounts' logins must not.
        "egress": {"chatgpt": [proxies.socks.url(), proxies.tiny.url()], "auth": "direct"},
        "tokens": {"kdf_cost": 10},
    }
    expected = {"alice": "127.0.0.2", "bob": "127.0.0.3", "carol": "127.0.0.4", "dave": "127.0.0.2"}

    async def scenario() -> None:
        async with running_pool(sim, tmp_path, config) as running:
            pool = running.pool
            await until(lambda: all(a.token is not None for a in pool.accounts.values()), what="the logins")
            logins = await asyncio.to_thread(sim.journal)
            assert logins and all(entry["remote_ip"] != "127.0.0.1" for entry in logins), (
                "a login went direct"
            )
            for name in ("alice", "bob", "carol"):
                steps = [e for e in logins if quote_plus(emails[name]) in body_of(e)]
                assert steps and {e["remote_ip"] for e in steps} == {expected[name]}, name
            await asyncio.to_thread(sim.clear_journal)
            for name, address in expected.items():
                lease = await pool.acquire(exclude=[other for other in expected if other != name])
                await send_as(running, lease)
                lease.release()
                (entry,) = await asyncio.to_thread(sim.journal, "chatgpt", "/backend-api/models")
                assert entry["remote_ip"] == address, name
                headers = {key.lower(): value for key, value in entry["headers"]}
                assert headers["oai-device-id"] == pool.accounts[name].device_id
                if name == "dave":
                    assert "Firefox" in headers["user-agent"]  # the account's own client profile
                await asyncio.to_thread(sim.clear_journal)
            report = {a.name: a.proxy.label for a in pool.accounts.values() if a.proxy is not None}
            assert report["carol"] == proxies.socks_auth.label() and report["bob"] == proxies.tiny.label()
            exposition = running.metrics()
            own = proxies.socks_auth.label()
            assert (
                metric_value(exposition, "tornadoproxy_egress_proxy_up", upstream="chatgpt", proxy=own) == 1
            )

    asyncio.run(scenario())


def test_a_pinned_proxy_that_fails_is_not_replaced_by_another(
    sim: Simulator, proxies: Proxies, tmp_path: Path
) -> None:
    dead = f"socks5h://127.0.0.1:{closed_port()}"
    config = {
        "accounts": [{"name": "erin", "access_token": jwt(), "proxy": dead}],
        "egress": {"chatgpt": [proxies.socks.url(), proxies.tiny.url()]},
    }

    async def scenario() -> None:
        async with running_pool(sim, tmp_path, config) as running:
            lease = await running.pool.acquire()
            with pytest.raises(UpstreamError) as failed:
                await send_as(running, lease)
            assert failed.value.code == "egress_proxy_error"
            lease.release(Outcome.transport())
            assert running.state("erin") == "cooling"  # it rests instead of changing its address
            assert await asyncio.to_thread(sim.journal) == []  # nothing left through another proxy

    asyncio.run(scenario())
