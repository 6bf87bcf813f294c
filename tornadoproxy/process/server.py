"""The composition root: load the config, build every component once, serve, reload, drain.

Nothing else constructs long-lived objects. Listening sockets are bound before the event loop starts
(and before worker processes are forked: workers.py); the event loop, HTTP client, caches and metrics
are created inside each process that serves. SIGHUP reloads the configuration, SIGTERM and SIGINT
drain and stop (runtime.py).
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass

from prometheus_client import CollectorRegistry
from tornado.ioloop import PeriodicCallback
from tornado.netutil import bind_sockets
from tornado.web import Application

from tornadoproxy.auth.logins import Logins
from tornadoproxy.auth.tokens import TokenCache
from tornadoproxy.config.schema import Config, ConfigError
from tornadoproxy.imitate.proofworkers import ProofWorkers
from tornadoproxy.imitate.service.completions import ImitateService
from tornadoproxy.observability.imitatemetrics import ImitateMetrics
from tornadoproxy.observability.logs import AccessLog, configure_logging
from tornadoproxy.observability.metrics import Metrics
from tornadoproxy.observability.sharedmetrics import SAMPLE_INTERVAL, SupervisorMetrics, prepare_process
from tornadoproxy.pool.account import Account
from tornadoproxy.pool.metrics import PoolMetrics
from tornadoproxy.pool.pool import AccountPool
from tornadoproxy.process.runtime import Loader, Runtime, access_policy, connection_body_limit
from tornadoproxy.process.wiring import account_profiles, build_store, load
from tornadoproxy.process.workers import Loaded, Supervisor
from tornadoproxy.relay.readiness import Readiness
from tornadoproxy.relay.service import ForgetToken, Relay
from tornadoproxy.upstream.curl_client import libcurl_version
from tornadoproxy.upstream.egress import EgressProxy
from tornadoproxy.upstream.egress_pool import EgressPools
from tornadoproxy.upstream.fetcher import Fetcher, transports_for
from tornadoproxy.upstream.request import UpstreamRoute
from tornadoproxy.web.app import make_app, make_ops_app
from tornadoproxy.web.body_intake import BodyDeadlines
from tornadoproxy.web.listener import GatewayHTTPServer
from tornadoproxy.web.pooled_relay import PooledRelay
from tornadoproxy.web.services import Lifecycle, Services

log = logging.getLogger(__name__)

# CPython's default (700, 10, 10) runs a full collection each time the heap has grown by a quarter, and
# that pause grows with every open stream (about 116 tracked objects each, 0.7 µs per object): 0.3 s
# at 4,000 streams, 1 s at 9,500, stalling every stream while new ones open. With 200 the old generation
# is examined after 2 million net new objects instead of 70,000. The cyclic garbage of requests dies young
# and is still collected by the first two generations, which stay as small as before.
GC_THRESHOLDS = (1000, 10, 200)


def tune_garbage_collector() -> None:
    """Freeze what start-up built (modules, config, app: no collection walks it again) and examine the
    old generation rarely."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


# glibc's mallopt parameters (malloc.h) and the values set.
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
# From this size an allocation gets a mapping of its own when the heap has no free chunk for it. It
# sits just above the 16 KiB pieces libcurl hands the write callback (kept on the heap: no mapping
# per piece of a download) and just under libcurl's send buffer (upstream/fetcher.py), so the send
# buffer a held stream keeps is mapped: paged in as written (the request's first page), where on the
# heap calloc clears all of it. Measured on 1,000 held streams: 43.9 -> 32.3 KB per stream; no
# difference in syscalls or page faults per relayed request or per 10 MB download, callgrind
# instructions within 0.5 %.
MMAP_THRESHOLD = 20 * 1024
# glibc grows the heap 128 KiB beyond each need by default, and a send buffer that fits in that
# slack is carved from the heap whatever the threshold: with no slack it is mapped.
TOP_PAD = 0


def tune_memory_allocator() -> bool:
    """Have glibc give every allocation of MMAP_THRESHOLD or more (request bodies, libcurl's send
    buffers) a mapping of its own, returned to the system as soon as it is freed. By default glibc
    raises that threshold after each large free, up to 32 MiB, so the bodies that follow a large one
    are carved out of the heap, which shrinks only from its top: measured, three 20 MiB uploads left
    RSS 40 MB higher for good, and a mix of sizes ratcheted it up. Setting the threshold turns that
    adjustment off. False without glibc."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TOP_PAD, TOP_PAD))


def main(config_path: str | None, environ: Mapping[str, str]) -> int:
    """Run the gateway until SIGTERM or SIGINT; return the process exit status."""
    try:
        loaded = load(config_path, environ)
    except ConfigError as error:
        print(f"tornadoproxy: configuration error: {error}", file=sys.stderr)
        return 2
    config, routes, secrets = loaded
    configure_logging(config.logging, secrets)
    try:
        listeners = _bind_listeners(config)
        ops_sockets = (
            bind_sockets(config.server.ops_port, config.server.ops_host) if config.server.ops_port else []
        )
    except OSError as error:
        log.error("cannot listen on the configured address: %s", error.strerror)
        return 1

    def reload() -> Loaded:
        return load(config_path, environ)

    if config.server.workers == 1:
        prepare_process(None)
        asyncio.run(serve(config, routes, secrets, listeners[0], ops_sockets, reload))
        return 0
    return _supervise(loaded, listeners, ops_sockets, reload)


def _bind_listeners(config: Config) -> list[list[socket.socket]]:
    """The main listening sockets, one set per worker.

    Workers sharing one socket take new connections in turns decided by who wakes first: with two
    workers the bench saw 3 of 4 keep-alive connections, and their requests, land on one of them.
    With SO_REUSEPORT each worker has a socket of its own and the kernel spreads connections evenly.
    """
    host, port, workers = config.server.host, config.server.port, config.server.workers
    if workers == 1:
        return [bind_sockets(port, host, backlog=4096)]
    # SO_REUSEPORT would also let this gateway join a port that another process of the same user
    # listens on, and take a share of its connections; a plain bind first refuses that, as with one
    # worker.
    for sock in bind_sockets(port, host):
        sock.close()
    return [bind_sockets(port, host, backlog=4096, reuse_port=True) for _ in range(workers)]


def _supervise(
    loaded: Loaded, listeners: list[list[socket.socket]], ops_sockets: list[socket.socket], reload: Loader
) -> int:
    """Fork the workers and keep them running (workers.py); the metric files live in a fresh,
    private directory that exists as long as the parent does. Worker `n` serves `listeners[n]`; the
    parent keeps them all, so a restarted worker finds the connections that queued meanwhile."""
    try:
        shared_dir = tempfile.mkdtemp(
            prefix="tornadoproxy-metrics-", dir=loaded[0].server.metrics_dir or None
        )
    except OSError as error:
        log.error("cannot create the directory of the shared metric files: %s", error.strerror)
        return 1

    def start_worker(number: int, current: Loaded) -> int:
        config, routes, secrets = current
        configure_logging(config.logging, secrets, worker=number)
        own = listeners[number]
        for sock in (sock for group in listeners if group is not own for sock in group):
            # Another worker's socket: only its worker and the parent may keep it open, so that it
            # leaves the kernel's group as soon as that worker has drained.
            sock.close()
        asyncio.run(
            serve(config, routes, secrets, own, ops_sockets, reload, worker=number, shared_dir=shared_dir)
        )
        return 0

    try:
        prepare_process(shared_dir)
        metrics = SupervisorMetrics(CollectorRegistry())
        every_socket = [sock for group in listeners for sock in group] + ops_sockets
        supervisor = Supervisor(loaded, reload, start_worker, shared_dir, metrics, every_socket)
        return supervisor.run()
    finally:
        shutil.rmtree(shared_dir, ignore_errors=True)


async def serve(
    config: Config,
    routes: dict[str, UpstreamRoute],
    secrets: frozenset[str],
    sockets: list[socket.socket],
    ops_sockets: list[socket.socket],
    reload: Loader,
    worker: int | None = None,
    shared_dir: str | None = None,
) -> None:
    """Serve in this process until SIGTERM or SIGINT (the only process, or worker `worker` of several,
    whose metrics then go to `shared_dir`)."""
    metrics = Metrics(CollectorRegistry(), tuple(routes), shared_dir, libcurl_version())
    tokens = TokenCache(config.tokens, config.logins, build_store(config, metrics), metrics)
    upstream = build_upstream_side(config, routes, metrics, tokens.forget_token)
    readiness = Readiness(config.readiness, config.upstreams.by_name(), upstream.relay, metrics)
    logins = Logins(config.logins, config.upstreams, upstream.relay, metrics)
    pool = build_pool(config, metrics, upstream.egress, logins, tokens)
    proofs = ProofWorkers(config.imitate.proof_workers)
    imitate = ImitateService(
        config,
        routes,
        upstream.relay,
        upstream.fetcher,
        pool,
        proofs,
        metrics,
        ImitateMetrics(metrics.registry),
    )
    lifecycle = Lifecycle(worker=worker)
    access_log = AccessLog()
    access_log.configure(config.logging, secrets, worker)
    services = Services(
        config,
        access_policy(config),
        upstream.relay,
        metrics,
        readiness,
        logins,
        tokens,
        access_log,
        BodyDeadlines(config.server.body_timeout),
        lifecycle,
    )
    services.pool = pool
    services.imitate = imitate
    if pool is not None:
        services.pooled = PooledRelay(pool, upstream.relay, lambda: lifecycle.draining)
    servers = [_listen(make_app(services), sockets, config, metrics)]
    if ops_sockets:
        servers.append(_listen(make_ops_app(services), ops_sockets, config, metrics))
    runtime = Runtime(services, upstream.fetcher, servers, reload)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGHUP, runtime.reload)
    # A forked worker starts with these blocked (workers.py); now they have handlers.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT, signal.SIGHUP})
    log.info("listening on %s:%d", config.server.host, config.server.port)
    if ops_sockets:
        log.info("ops endpoints on %s:%d", config.server.ops_host, config.server.ops_port)
    readiness.start()
    if pool is not None:
        proofs.start()  # the pool answers /imitate: its workers spawn beside the start-up, unwaited
        pool.start()  # background logins: start-up does not wait for them
    tune_memory_allocator()
    tune_garbage_collector()
    sampler = PeriodicCallback(metrics.sample, SAMPLE_INTERVAL * 1000)
    if shared_dir is not None:
        metrics.sample()
        sampler.start()
    await stop.wait()
    sampler.stop()
    readiness.stop()
    await runtime.drain()
    await imitate.close()
    proofs.close()
    if pool is not None:
        await pool.close()
    services.body_deadlines.stop()
    await tokens.close()  # the persistence file gets its last write here
    upstream.fetcher.close()
    log.info("stopped")


@dataclass(frozen=True, slots=True)
class UpstreamSide:
    """What reaches the upstreams: the egress proxies' health, the fetcher (with its transports)
    and the relay in front of it."""

    egress: EgressPools
    fetcher: Fetcher
    relay: Relay


def build_upstream_side(
    config: Config,
    routes: dict[str, UpstreamRoute],
    metrics: Metrics,
    forget_token: ForgetToken | None = None,
) -> UpstreamSide:
    """The egress pools, the fetcher on its transports (one per client profile) and the relay;
    `forget_token` is the token cache's (a 401 evicts what it issued)."""
    proxies = {name: route.proxies for name, route in routes.items()}
    egress = EgressPools(proxies, config.egress.cooldown, metrics)
    fetcher = Fetcher(config.fetch, routes, metrics, egress, transports_for(config.fetch))
    relay = Relay(fetcher, metrics, config.fetch, config.streams, forget_token)
    return UpstreamSide(egress, fetcher, relay)


def build_pool(
    config: Config, metrics: Metrics, egress: EgressPools, logins: Logins, tokens: TokenCache
) -> AccountPool | None:
    """The account pool of `config.accounts` (None without accounts), shared through Redis when the
    token store is."""
    if not config.accounts:
        return None
    profiles = account_profiles(config)
    accounts = [
        Account.from_config(
            spec, index, EgressProxy.parse(spec.proxy) if spec.proxy else None, profiles.get(spec.profile)
        )
        for index, spec in enumerate(config.accounts)
    ]
    shared = None
    if config.tokens.store == "redis":
        from tornadoproxy.pool.shared import SharedSlots  # here: it imports redis-py (6 MB)

        shared = SharedSlots(config.tokens.redis_url, config.pool.redis_prefix, config.pool.slot_lease)
    names = [account.name for account in accounts]
    pool_metrics = PoolMetrics(metrics.registry, metrics.watch, names, shared is not None)
    return AccountPool(config.pool, accounts, pool_metrics, egress, logins, tokens, shared)


def _listen(
    app: Application, sockets: list[socket.socket], config: Config, metrics: Metrics
) -> GatewayHTTPServer:
    limits = config.server
    server = GatewayHTTPServer(
        app,
        decompress_request=False,
        idle_connection_timeout=limits.idle_connection_timeout,
        body_timeout=None,  # server.body_timeout is the handlers' own (body_intake.py)
        max_header_size=limits.max_header_size,
        max_body_size=connection_body_limit(config),
    )
    server.refused = metrics.count_gateway_error
    server.add_sockets(sockets)
    return server
