"""The composition root: load the config, build every component once, serve, reload, drain.

Nothing else constructs long-lived objects. Listening sockets are bound before the event loop starts;
the HTTP client, caches and metrics are created inside it. SIGHUP reloads the configuration, SIGTERM
and SIGINT drain and stop (runtime.py).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import sys
from collections.abc import Mapping

from prometheus_client import CollectorRegistry
from tornado.netutil import bind_sockets
from tornado.web import Application

from tornadoproxy.app import make_app, make_ops_app
from tornadoproxy.config import Config, ConfigError
from tornadoproxy.egress_pool import EgressPools
from tornadoproxy.fetcher import Fetcher
from tornadoproxy.listener import GatewayHTTPServer
from tornadoproxy.logins import Logins
from tornadoproxy.logs import AccessLog, configure_logging
from tornadoproxy.metrics import Metrics
from tornadoproxy.readiness import Readiness
from tornadoproxy.runtime import Loader, Runtime, access_policy, connection_body_limit
from tornadoproxy.services import Services
from tornadoproxy.tokens import TokenCache
from tornadoproxy.upstream import UpstreamRoute
from tornadoproxy.wiring import build_store, load

log = logging.getLogger(__name__)


def main(config_path: str | None, environ: Mapping[str, str]) -> int:
    """Run the gateway until SIGTERM or SIGINT; return the process exit status."""
    try:
        config, routes, secrets = load(config_path, environ)
    except ConfigError as error:
        print(f"tornadoproxy: configuration error: {error}", file=sys.stderr)
        return 2
    configure_logging(config.logging, secrets)
    try:
        sockets = bind_sockets(config.server.port, config.server.host, backlog=4096)
        ops_sockets = (
            bind_sockets(config.server.ops_port, config.server.ops_host) if config.server.ops_port else []
        )
    except OSError as error:
        log.error("cannot listen on the configured address: %s", error.strerror)
        return 1
    asyncio.run(serve(config, routes, secrets, sockets, ops_sockets, lambda: load(config_path, environ)))
    return 0


async def serve(
    config: Config,
    routes: dict[str, UpstreamRoute],
    secrets: frozenset[str],
    sockets: list[socket.socket],
    ops_sockets: list[socket.socket],
    reload: Loader,
) -> None:
    metrics = Metrics(CollectorRegistry(), tuple(routes))
    proxies = {name: route.proxies for name, route in routes.items()}
    pools = EgressPools(proxies, config.egress.cooldown, metrics)
    fetcher = Fetcher(config.fetch, routes, metrics, pools)
    readiness = Readiness(config.readiness, config.upstreams.by_name(), fetcher, metrics)
    logins = Logins(config.logins, config.upstreams, fetcher, metrics)
    tokens = TokenCache(config.tokens, config.logins, build_store(config, metrics), metrics)
    access_log = AccessLog()
    access_log.configure(config.logging, secrets)
    services = Services(
        config, access_policy(config), fetcher, metrics, readiness, logins, tokens, access_log
    )
    servers = [_listen(make_app(services), sockets, config)]
    if ops_sockets:
        servers.append(_listen(make_ops_app(services), ops_sockets, config))
    runtime = Runtime(services, servers, reload)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGHUP, runtime.reload)
    log.info("listening on %s:%d", config.server.host, config.server.port)
    if ops_sockets:
        log.info("ops endpoints on %s:%d", config.server.ops_host, config.server.ops_port)
    readiness.start()
    await stop.wait()
    readiness.stop()
    await runtime.drain()
    await tokens.close()  # the persistence file gets its last write here
    fetcher.close()
    log.info("stopped")


def _listen(app: Application, sockets: list[socket.socket], config: Config) -> GatewayHTTPServer:
    limits = config.server
    server = GatewayHTTPServer(
        app,
        decompress_request=False,
        idle_connection_timeout=limits.idle_connection_timeout,
        body_timeout=limits.body_timeout,
        max_header_size=limits.max_header_size,
        max_body_size=connection_body_limit(config),
    )
    server.add_sockets(sockets)
    return server
