"""The composition root: load the config, build every component once, serve, drain on SIGTERM.

Nothing else constructs long-lived objects. The listening socket is bound before the event loop
starts; the HTTP client, caches and metrics are created inside it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Mapping
from urllib.parse import unquote, urlsplit

from prometheus_client import CollectorRegistry
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from tornadoproxy.app import make_app
from tornadoproxy.config import Config, ConfigError, load_config
from tornadoproxy.egress import EgressProxy
from tornadoproxy.fetcher import Fetcher, UpstreamRoute
from tornadoproxy.logins import Logins
from tornadoproxy.logs import configure_logging
from tornadoproxy.metrics import Metrics
from tornadoproxy.profiles import profile_registry
from tornadoproxy.services import Services
from tornadoproxy.tokens import TokenCache
from tornadoproxy.tokenstore import MemoryStore, RedisStore, TokenStore, secret_from_config

log = logging.getLogger(__name__)

UPSTREAMS = ("chatgpt", "auth", "platform", "platform_web")


def main(config_path: str | None, environ: Mapping[str, str]) -> int:
    """Run the gateway until SIGTERM or SIGINT; return the process exit status."""
    try:
        config = load_config(config_path, environ)
        routes = build_routes(config)
        check_tokens(config)
    except ConfigError as error:
        print(f"tornadoproxy: configuration error: {error}", file=sys.stderr)
        return 2
    configure_logging(config.logging, config_secrets(config))
    try:
        sockets = bind_sockets(config.server.port, config.server.host, backlog=4096)
    except OSError as error:
        log.error("cannot listen on %s:%d: %s", config.server.host, config.server.port, error.strerror)
        return 1
    asyncio.run(serve(config, routes, sockets))
    return 0


def build_routes(config: Config) -> dict[str, UpstreamRoute]:
    """How each upstream is reached: origin, egress proxy and client profile."""
    profiles = profile_registry()
    proxy = EgressProxy.parse(config.egress.proxy)
    urls = {
        "chatgpt": config.upstreams.chatgpt,
        "auth": config.upstreams.auth,
        "platform": config.upstreams.platform,
        "platform_web": config.upstreams.platform_web,
    }
    chosen = {
        "chatgpt": config.profiles.chatgpt,
        "auth": config.profiles.auth,
        "platform": config.profiles.platform,
        "platform_web": config.profiles.auth,
    }
    for key in ("chatgpt", "auth", "platform"):
        if chosen[key] not in profiles:
            known = ", ".join(sorted(profiles))
            raise ConfigError(f"profiles.{key}: unknown profile {chosen[key]!r} (known: {known})")
    return {
        name: UpstreamRoute(name, _origin(urls[name]), proxy, profiles[chosen[name]]) for name in UPSTREAMS
    }


def check_tokens(config: Config) -> None:
    """The token store's settings fit together (each key alone is checked by load_config)."""
    tokens = config.tokens
    if tokens.store == "file" and not tokens.file:
        raise ConfigError("tokens.file: must name the persistence file when tokens.store is file")
    if tokens.store == "file" and not os.path.isdir(os.path.dirname(os.path.abspath(tokens.file))):
        raise ConfigError("tokens.file: its directory does not exist")
    if tokens.store == "redis" and not tokens.redis_url:
        raise ConfigError("tokens.redis_url: must be set when tokens.store is redis")


def build_store(config: Config, metrics: Metrics) -> TokenStore:
    tokens = config.tokens
    secret = secret_from_config(tokens.secret)
    if tokens.store == "redis":
        return RedisStore(tokens.redis_url, tokens.redis_prefix, secret)
    path = tokens.file if tokens.store == "file" else ""
    return MemoryStore(tokens.max_entries, metrics, secret, path)


def config_secrets(config: Config) -> frozenset[str]:
    """Configured secrets the log filter must mask wherever they appear."""
    proxy = EgressProxy.parse(config.egress.proxy)
    found = {s.reveal() for s in (proxy.username, proxy.password) if s is not None}
    found.add(config.tokens.secret)
    redis_password = urlsplit(config.tokens.redis_url).password if config.tokens.redis_url else None
    found.add(unquote(redis_password or ""))
    return frozenset(s for s in found if s)


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


async def serve(config: Config, routes: dict[str, UpstreamRoute], sockets: list[socket.socket]) -> None:
    metrics = Metrics(CollectorRegistry(), tuple(routes))
    fetcher = Fetcher(config.fetch, routes, metrics)
    logins = Logins(config.logins, config.upstreams, fetcher, metrics)
    tokens = TokenCache(config.tokens, config.logins, build_store(config, metrics), metrics)
    services = Services(config, fetcher, metrics, logins, tokens)
    server = HTTPServer(
        make_app(services),
        idle_connection_timeout=config.server.idle_connection_timeout,
        body_timeout=config.server.body_timeout,
        max_header_size=config.server.max_header_size,
        # Twice our own limit: the handler answers 413 itself before tornado would cut the connection.
        max_body_size=2 * config.server.max_body_size,
        decompress_request=False,
    )
    server.add_sockets(sockets)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    log.info("listening on %s:%d", config.server.host, config.server.port)
    await stop.wait()
    await drain(server, services)
    await tokens.close()  # the persistence file gets its last write here
    fetcher.close()
    log.info("stopped")


async def drain(server: HTTPServer, services: Services) -> None:
    """Stop accepting, let requests finish until server.drain_timeout, then end what remains."""
    services.lifecycle.draining = True
    server.stop()
    deadline = time.monotonic() + services.config.server.drain_timeout
    log.info("draining %d upstream requests", services.fetcher.in_flight)
    await _wait_until(lambda: services.fetcher.in_flight == 0, deadline)
    if services.fetcher.in_flight:
        log.info("ending %d requests still open at the drain deadline", services.fetcher.in_flight)
        services.fetcher.abort_all("shutdown")
        # Aborted streams write their final error event at once; libcurl lets go within a second.
        await _wait_until(lambda: services.fetcher.in_flight == 0, time.monotonic() + 3)
    await server.close_all_connections()


async def _wait_until(condition: Callable[[], bool], deadline: float) -> None:
    while not condition() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
