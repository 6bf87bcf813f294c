"""A running gateway's lifecycle: reload on SIGHUP, graceful drain on SIGTERM.

Reload re-reads and validates the whole configuration; on any error the gateway keeps running with
the configuration it has and logs why. Listening addresses and the size of the HTTP client are fixed
at start-up: a change to them is reported and takes effect at the next restart.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

from tornado.httpserver import HTTPServer

from tornadoproxy.config.options import restart_only
from tornadoproxy.config.schema import Config, ConfigError
from tornadoproxy.observability.logs import configure_logging
from tornadoproxy.upstream.fetcher import Fetcher
from tornadoproxy.upstream.request import UpstreamRoute
from tornadoproxy.web.access import AccessPolicy
from tornadoproxy.web.services import Services

log = logging.getLogger(__name__)

# Options whose components are built once at start-up (declared `reload=False` beside each option):
# a change is logged and waits for the next restart. An account is invalid until the configuration
# changes and the gateway restarts.
RESTART_ONLY = tuple(restart_only(Config))

Loader = Callable[[], tuple[Config, dict[str, UpstreamRoute], frozenset[str]]]


def access_policy(config: Config) -> AccessPolicy:
    return AccessPolicy.build(
        config.access.client_keys, config.access.allowed_networks, config.access.key_header
    )


class Runtime:
    def __init__(
        self, services: Services, fetcher: Fetcher, servers: Sequence[HTTPServer], load: Loader
    ) -> None:
        self.services = services
        self.fetcher = fetcher
        self.servers = servers
        self._load = load

    def reload(self) -> bool:
        """Apply a freshly loaded configuration; False (and the old one kept) if it is invalid."""
        try:
            config, routes, secrets = self._load()
        except ConfigError as error:
            log.error("configuration reload failed, keeping the running configuration: %s", error)
            self.services.metrics.count_reload(ok=False)
            return False
        old = self.services.config
        for key in RESTART_ONLY:
            if _value(old, key) != _value(config, key):
                log.warning("%s changed: this takes effect at the next restart", key)
        self._reconfigure(config, routes, secrets)
        self.services.metrics.count_reload(ok=True)
        log.info("configuration reloaded")
        return True

    def _reconfigure(self, config: Config, routes: dict[str, UpstreamRoute], secrets: frozenset[str]) -> None:
        """Hand each component its slice of the new configuration (its one `reconfigure()`); the
        options declared `reload=False` are not among what they apply."""
        services, worker = self.services, self.services.lifecycle.worker
        configure_logging(config.logging, secrets, worker)
        services.access_log.configure(config.logging, secrets, worker)
        services.config = config
        services.access = access_policy(config)
        services.body_deadlines.reconfigure(config.server.body_timeout)
        self.fetcher.reconfigure(config.fetch, routes)
        services.relay.reconfigure(config.fetch, config.streams)
        services.readiness.reconfigure(config.readiness, config.upstreams.by_name())
        services.logins.reconfigure(config.logins, config.upstreams)
        if services.imitate is not None:
            services.imitate.reconfigure(config, routes)
        for server in self.servers:
            _update_connection_limits(server, config)

    async def drain(self) -> None:
        """Stop accepting, let requests finish until server.drain_timeout, then end what remains."""
        services = self.services
        services.lifecycle.draining = True
        if services.imitate is not None:
            services.imitate.stop_waiting()
        for server in self.servers:
            server.stop()
        deadline = time.monotonic() + services.config.server.drain_timeout
        fetcher = self.fetcher
        log.info("draining %d upstream requests", fetcher.in_flight)
        await _wait_until(lambda: fetcher.in_flight == 0, deadline)
        if fetcher.in_flight:
            log.info("ending %d requests still open at the drain deadline", fetcher.in_flight)
            fetcher.abort_all("shutdown")
        # Ended streams write their final error event; the connections close once those are out.
        imitate = services.imitate
        await _wait_until(
            lambda: services.relay.active == 0 and (imitate is None or imitate.active == 0),
            time.monotonic() + 3,
        )
        for server in self.servers:
            await server.close_all_connections()


def connection_body_limit(config: Config) -> int:
    """Tornado's own body limit: twice ours, so the handler answers 413 before tornado cuts the
    connection without an answer."""
    return 2 * config.server.max_body_size


def _update_connection_limits(server: HTTPServer, config: Config) -> None:
    """New connections take the new limits (tornado reads conn_params per connection)."""
    params = server.conn_params
    params.header_timeout = config.server.idle_connection_timeout
    params.max_header_size = config.server.max_header_size
    params.max_body_size = connection_body_limit(config)


def _value(config: Config, key: str) -> object:
    value: object = config
    for name in key.split("."):
        value = getattr(value, name)
    return value


async def _wait_until(condition: Callable[[], bool], deadline: float) -> None:
    while not condition() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
