"""Starts the simulator: one listener per upstream family plus a control listener, all on loopback.

`python -m tests.simulator` prints one JSON line with each listener's base URL, then serves until
SIGTERM. Families that later issues add (chatgpt, auth, platform_web) register in FAMILIES. With
`--gateway-config FILE` it also writes the gateway's `upstreams:` section pointing at itself (README
"Trying it on one machine first"), complete before the file appears.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from typing import Any

from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.web import Application

from tests.simulator import auth, chatgpt, control, platform, webcontrol
from tests.simulator.base import SimHandler
from tests.simulator.state import State

# Each family is one listener; login routes come first because the API families end in catch-alls.
FAMILIES: dict[str, list[Any]] = {
    "platform": auth.PLATFORM_ROUTES + platform.ROUTES,
    "chatgpt": auth.CHATGPT_ROUTES + chatgpt.ROUTES,
    "auth": auth.AUTH_ROUTES,
    "platform_web": auth.PLATFORM_WEB_ROUTES,
}


class UnknownPathHandler(SimHandler):
    """A path the family does not serve: journaled (and scripted answers apply) like any other,
    then 404, so tests can see every request that reached a listener."""

    def _not_found(self, *_args: str) -> None:
        self.send_json(404, {"error": {"message": "no such path on the simulator", "type": "not_found"}})

    get = post = put = patch = delete = head = options = _not_found


def family_app(state: State, family: str) -> Application:
    args = {"state": state, "family": family}
    routes = [(pattern, handler, args) for pattern, handler in FAMILIES[family]]
    return Application(routes, default_handler_class=UnknownPathHandler, default_handler_args=args)


def control_app(state: State) -> Application:
    routes = control.ROUTES + auth.CONTROL_ROUTES + webcontrol.ROUTES
    return Application([(pattern, handler, {"state": state}) for pattern, handler in routes])


def _listen(app: Application, host: str) -> str:
    sockets = bind_sockets(0, host)
    server = HTTPServer(app, xheaders=False)
    server.add_sockets(sockets)
    port = sockets[0].getsockname()[1]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def run(hosts: dict[str, str], gateway_config: str | None = None) -> None:
    state = State()
    urls = {"control": _listen(control_app(state), "127.0.0.1")}
    for family in FAMILIES:
        urls[family] = _listen(family_app(state, family), hosts.get(family, "127.0.0.1"))
    auth.configure(state, urls)
    if gateway_config:
        _write_gateway_config(gateway_config, urls)
    print(json.dumps(urls), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await stop.wait()


def _write_gateway_config(path: str, urls: dict[str, str]) -> None:
    lines = [
        "# Written by the simulator (tests/simulator): the upstreams it stands in for, on loopback.",
        "upstreams:",
    ]
    lines += [f'  {family}: "{urls[family]}"' for family in FAMILIES]
    partial = path + ".partial"
    with open(partial, "w", encoding="utf-8") as stream:
        stream.write("\n".join(lines) + "\n")
    os.replace(partial, path)  # whoever waits for the file sees it whole


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="simulator")
    parser.add_argument(
        "--host",
        action="append",
        default=[],
        metavar="FAMILY=ADDR",
        help="loopback address or localhost a family listens on (default 127.0.0.1)",
    )
    parser.add_argument(
        "--gateway-config",
        metavar="FILE",
        help="also write a gateway configuration whose upstreams are this simulator's listeners",
    )
    args = parser.parse_args(argv)
    hosts = dict(item.split("=", 1) for item in args.host)
    # Only 127.0.0.1, localhost and ::1 are secure contexts for libcurl's cookie engine (measured with
    # libcurl 8.23: a `Secure` cookie from 127.0.0.2 is dropped), so those three names give the login
    # hosts separate cookie jars as real https hosts have; other 127.x addresses still work otherwise.
    if any(not (addr.startswith("127.") or addr in ("localhost", "::1")) for addr in hosts.values()):
        print("simulator: only loopback addresses", file=sys.stderr)
        return 2
    asyncio.run(run(hosts, args.gateway_config))
    return 0
