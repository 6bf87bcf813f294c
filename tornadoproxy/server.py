"""The composition root: load the config, build every component once, serve, drain on SIGTERM.

Nothing else constructs long-lived objects. The listening socket is bound before the event loop
starts; the HTTP client, caches and metrics are created inside it.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import sys
import time
from collections.abc import Callable, Mapping
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from tornadoproxy.app import make_app
from tornadoproxy.config import Config, ConfigError, CustomProfileConfig, ProxySetting, load_config
from tornadoproxy.egress import parse_proxies, proxy_secrets
from tornadoproxy.egress_pool import EgressPools
from tornadoproxy.fetcher import Fetcher, UpstreamRoute, tls_settings_problem
from tornadoproxy.logs import configure_logging
from tornadoproxy.metrics import Metrics
from tornadoproxy.profiles import ClientProfile, derive_profile, profile_problem, profile_registry
from tornadoproxy.services import Services

log = logging.getLogger(__name__)

UPSTREAMS = ("chatgpt", "auth", "platform", "platform_web")


def main(config_path: str | None, environ: Mapping[str, str]) -> int:
    """Run the gateway until SIGTERM or SIGINT; return the process exit status."""
    try:
        config = load_config(config_path, environ)
        routes = build_routes(config)
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
    """How each upstream is reached: origin, egress proxies and client profile."""
    profiles = build_profiles(config.profiles.custom)
    proxies = egress_settings(config)
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
        name: UpstreamRoute(name, _origin(urls[name]), parse_proxies(proxies[name]), profiles[chosen[name]])
        for name in UPSTREAMS
    }


def egress_settings(config: Config) -> dict[str, ProxySetting]:
    """Each upstream's egress setting: its override, else egress.proxy (platform_web follows auth)."""
    egress = config.egress
    return {
        "chatgpt": egress.chatgpt or egress.proxy,
        "auth": egress.auth or egress.proxy,
        "platform": egress.platform or egress.proxy,
        "platform_web": egress.auth or egress.proxy,
    }


def build_profiles(custom: Mapping[str, CustomProfileConfig]) -> dict[str, ClientProfile]:
    """The built-in profiles and the operator's own, each checked (TLS knobs by libcurl itself)."""
    builtin = profile_registry()
    built: dict[str, ClientProfile] = {}

    def resolve(name: str, chain: tuple[str, ...]) -> ClientProfile:
        if name in built:
            return built[name]
        spec = custom[name]
        path = f"profiles.custom.{name}"
        base = None
        if spec.base:
            if spec.base in chain + (name,):
                raise ConfigError(f"{path}.base: profiles derive from each other in a loop")
            if spec.base in custom and spec.base != name:
                base = resolve(spec.base, chain + (name,))
            elif spec.base in builtin:
                base = builtin[spec.base]
            else:
                known = ", ".join(sorted(set(builtin) | set(custom)))
                raise ConfigError(f"{path}.base: unknown profile {spec.base!r} (known: {known})")
        changes = {key: getattr(spec, key) for key in _PROFILE_FIELDS if getattr(spec, key) is not None}
        profile = derive_profile(name, base, changes)
        problem = profile_problem(profile) or tls_settings_problem(profile.curl_options())
        if problem:
            raise ConfigError(f"{path}: {problem}")
        built[name] = profile
        return profile

    for name in custom:
        resolve(name, ())
    return profile_registry(built)


_PROFILE_FIELDS = (
    "headers",
    "http_version",
    "ciphers",
    "tls13_ciphers",
    "curves",
    "signature_algorithms",
    "alpn",
    "min_tls",
)


def config_secrets(config: Config) -> frozenset[str]:
    """Configured secrets the log filter must mask wherever they appear: proxy credentials."""
    found: set[str] = set()
    for setting in egress_settings(config).values():
        found |= proxy_secrets(parse_proxies(setting))
    return frozenset(found)


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


async def serve(config: Config, routes: dict[str, UpstreamRoute], sockets: list[socket.socket]) -> None:
    metrics = Metrics(CollectorRegistry(), tuple(routes))
    proxies = {name: route.proxies for name, route in routes.items()}
    pools = EgressPools(proxies, config.egress.cooldown, metrics)
    fetcher = Fetcher(config.fetch, routes, metrics, pools)
    services = Services(config, fetcher, metrics)
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
