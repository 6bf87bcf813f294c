"""Configuration: YAML validated once at start-up into frozen dataclasses (docs/gateway.md).

Every option is declared once below, with its type, default, help text and value check (declared
with `options.option`, checked by `option_checks`); `load_config` checks the file against these
declarations and fails with a `ConfigError` naming the key path. This module is the only YAML reader
and reads the environment only through the mapping it is given.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import yaml

from tornadoproxy.config.accounts import (
    AccountConfig,
    PoolConfig,
    distinct_account_names,
    resolve_account_secrets,
)
from tornadoproxy.config.checks import (
    between,
    existing_directory,
    header_lines,
    header_name,
    http_url,
    ip_networks,
    key_digests,
    log_level,
    non_negative,
    positive,
    profile_name,
    profile_names,
    proxy_list_problem,
    readable_file,
    redis_url,
)
from tornadoproxy.config.imitate import ImitateConfig
from tornadoproxy.config.options import ConfigError, build, option, section

MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = option("0.0.0.0", "address to listen on", reload=False)
    port: int = option(
        8080, "port to listen on (env GO_CHATGPT_API_PORT or PORT wins)", between(1, 65535), reload=False
    )
    max_body_size: int = option(100 * MIB, "largest request body in bytes; larger requests get 413", positive)
    max_header_size: int = option(
        64 * 1024, "largest request header block in bytes", between(1024, 1024 * 1024)
    )
    idle_connection_timeout: float = option(
        120.0, "seconds a client connection may sit idle between requests", positive
    )
    body_timeout: float = option(60.0, "seconds a client may take to send a request body", positive)
    cors_origins: tuple[str, ...] = option(("*",), "origins allowed by CORS; '*' allows any")
    client_stall_timeout: float = option(
        60.0,
        "seconds a client may take to accept already-sent response data before it is dropped and its "
        "upstream request aborted",
        positive,
    )
    ops_port: int = option(
        0,
        "a second listener serving only /healthz, /readyz and /metrics, without access checks (for "
        "Prometheus and orchestrators on a private interface); 0 for none",
        between(0, 65535),
        reload=False,
    )
    ops_host: str = option("127.0.0.1", "address of the ops listener", reload=False)
    drain_timeout: float = option(
        30.0,
        "on SIGTERM, seconds open requests and streams may take to finish before they are ended",
        non_negative,
    )
    trusted_proxies: tuple[str, ...] = option(
        (),
        "networks of load balancers whose X-Forwarded-For is trusted for the client "
        "address (logs, rate limits)",
        ip_networks,
    )
    workers: int = option(
        1,
        "worker processes on the same port, a listening socket each; a parent process restarts a worker "
        "that dies and passes SIGTERM and SIGHUP on to every worker; more than 1 needs tokens.store memory "
        "or redis (redis when accounts are configured: the workers share the pool through it)",
        between(1, 64),
        reload=False,
    )
    metrics_dir: str = option(
        "",
        "with workers > 1: the directory in which the parent creates the fresh, private directory of "
        "the metric files every worker writes (removed at exit); empty: the system temp directory",
        existing_directory,
        reload=False,
    )


@dataclass(frozen=True, slots=True)
class AccessConfig:
    client_keys: tuple[str, ...] = option(
        (),
        "SHA-256 digests ('sha256:<hex>') of the client keys allowed to use the gateway; empty lets "
        "anyone in (strongly discouraged on a public address)",
        key_digests,
    )
    key_header: str = option("X-Gateway-Key", "request header that carries the client key", header_name)
    allowed_networks: tuple[str, ...] = option(
        (), "client networks (CIDR) allowed to use the gateway; empty allows any", ip_networks
    )


@dataclass(frozen=True, slots=True)
class UpstreamsConfig:
    chatgpt: str = option("https://chatgpt.com", "ChatGPT web backend base URL", http_url)
    auth: str = option("https://auth0.openai.com", "Auth0 tenant used by the logins", http_url)
    platform: str = option("https://api.openai.com", "Platform API base URL", http_url)
    platform_web: str = option("https://platform.openai.com", "platform web app (login callback)", http_url)

    def by_name(self) -> dict[str, str]:
        """Every upstream's base URL keyed by its name (the label used in metrics and /readyz)."""
        return {spec.name: getattr(self, spec.name) for spec in dataclasses.fields(self)}


ProxySetting = str | tuple[str, ...]


def _override(upstream: str) -> Any:
    return option(
        "",
        f"proxy (or list of proxies, tried in order) for the {upstream}; empty: egress.proxy; "
        "'direct': no proxy",
        proxy_list_problem,
        secret=True,
        reload=False,
    )


@dataclass(frozen=True, slots=True)
class EgressConfig:
    proxy: ProxySetting = option(
        "",
        "proxy for every outbound request: http://, https://, socks5:// (names resolved here) or "
        "socks5h:// (names resolved by the proxy) with optional user:pass@ (percent-encoded), or a "
        "list of them tried in order; empty or 'direct' for none (env GO_CHATGPT_API_PROXY or PROXY wins)",
        proxy_list_problem,
        secret=True,
        reload=False,
    )
    chatgpt: ProxySetting = _override("ChatGPT backend (upstreams.chatgpt)")
    auth: ProxySetting = _override("login hosts (upstreams.auth and upstreams.platform_web)")
    platform: ProxySetting = _override("Platform API (upstreams.platform)")
    cooldown: float = option(
        30.0,
        "seconds a proxy that failed (refused, timed out, rejected the credentials, could not reach the "
        "upstream, or was marked for a challenge page) is skipped while another proxy of its list is up",
        between(0.1, 86400),
        reload=False,
    )


@dataclass(frozen=True, slots=True)
class CustomProfileConfig:
    """One operator-defined client profile; an unset field is taken from `base`."""

    base: str = option("", "profile this one starts from (built-in or custom); empty: none", profile_name)
    headers: tuple[str, ...] | None = option(
        None,
        "header lines in the order sent, 'Name: value', or 'Name:' for a slot that a request header "
        "(Authorization, Content-Type...) fills; replaces the base profile's list",
        header_lines,
    )
    http_version: Literal["1.1", "2"] | None = option(None, "HTTP version: '1.1' or '2' (over TLS)")
    ciphers: str | None = option(None, "OpenSSL cipher list for TLS 1.2 (order kept); empty: OpenSSL's")
    tls13_ciphers: str | None = option(None, "TLS 1.3 cipher suites in order; empty: OpenSSL's")
    curves: str | None = option(None, "supported groups (key exchange) in order; empty: OpenSSL's")
    signature_algorithms: str | None = option(None, "signature algorithms in order; empty: OpenSSL's")
    alpn: bool | None = option(None, "send ALPN (h2 and/or http/1.1 by http_version)")
    min_tls: Literal["1.2", "1.3"] | None = option(None, "lowest TLS version offered: '1.2' or '1.3'")
    target: str | None = option(
        None,
        "a curl-impersonate target (e.g. chrome152, firefox153, safari270): that browser's TLS and "
        "HTTP/2, on the curl_cffi engine; the TLS keys above then do not apply",
    )
    ja3: str | None = option(
        None, "instead of a target: the TLS ClientHello as a JA3 string (curl_cffi engine)"
    )
    akamai: str | None = option(None, "with ja3: the HTTP/2 opening as an Akamai fingerprint string")


@dataclass(frozen=True, slots=True)
class ProfilesConfig:
    chatgpt: str = option(
        "chrome", "client profile for the ChatGPT backend (chrome, firefox, safari, okhttp, plain)"
    )
    auth: str = option("chrome", "client profile for the login flows (auth and platform web hosts)")
    platform: str = option("plain", "client profile for the Platform API")
    custom: Mapping[str, CustomProfileConfig] = option(
        types.MappingProxyType({}),
        "your own profiles by name: base, headers, target or ja3 + akamai (browser profiles), or "
        "http_version, ciphers, tls13_ciphers, curves, signature_algorithms, alpn, min_tls (pycurl "
        "profiles; see the README); a name of a built-in profile replaces it",
        profile_names,
    )


@dataclass(frozen=True, slots=True)
class FetchConfig:
    max_clients: int = option(
        10000,
        "upstream requests in flight at once (streams included); the gate in front answers 503",
        between(1, 1_000_000),
        reload=False,
    )
    queue_timeout: float = option(
        1.0, "seconds a request may wait for a free upstream slot before 503", non_negative
    )
    connect_timeout: float = option(
        10.0, "seconds to connect to the upstream (proxy handshake and TLS included)", positive
    )
    idle_timeout: int = option(
        300,
        "seconds without a byte from the upstream before the request fails (also bounds the "
        "wait for the first byte); there is never a total timeout",
        between(1, 86400),
    )
    buffer_size: int = option(
        1024 * 1024,
        "a non-streaming upstream body up to this many bytes is sent with Content-Length; "
        "larger ones are relayed as they arrive",
        between(1024, 1024 * MIB),
    )
    max_decoded_size: int = option(
        100 * MIB,
        "largest body a compressed (gzip, br) upstream answer may decode to; past it, or past 16 MiB "
        "decoded at more than 100 times the encoded size, the answer ends: 502 upstream_too_large "
        "before the status is sent, a final error event in a stream, a cut connection otherwise",
        positive,
    )
    ca_file: str = option(
        "",
        "PEM file of the CAs trusted for upstream (and https:// proxy) TLS instead of the system "
        "bundle, e.g. a corporate CA; empty: the system bundle (/etc/ssl/certs/ca-certificates.crt "
        "on Debian)",
        readable_file,
    )


@dataclass(frozen=True, slots=True)
class StreamsConfig:
    keepalive_interval: float = option(
        15.0,
        "seconds of upstream silence after which an SSE comment keeps the client connection "
        "alive; 0 turns keep-alives off",
        non_negative,
    )
    max_event_size: int = option(
        4 * MIB, "largest single SSE event relayed; a larger one ends the stream", positive
    )


@dataclass(frozen=True, slots=True)
class LoginsConfig:
    platform_client_id: str = option(
        "DRivsnm2Mu42T3KOpqdtwB3NYviHYzwD", "Auth0 client id of the platform web app (platform login)"
    )
    timeout: float = option(
        60.0, "seconds a whole login flow may take, all steps together, before 504", positive
    )
    max_redirects: int = option(10, "redirects followed within one step of a login flow", between(1, 50))
    max_failures_per_username: int = option(
        5,
        "failed logins per username within logins.username_window before 429 (0: no limit); "
        "cache hits and joins of a login in flight never count",
        non_negative,
        reload=False,
    )
    username_window: float = option(
        900.0, "seconds over which failures per username count", positive, reload=False
    )
    max_failures_per_address: int = option(
        30,
        "failed logins per client address within logins.address_window before 429 (0: no limit)",
        non_negative,
        reload=False,
    )
    address_window: float = option(
        60.0, "seconds over which failures per address count", positive, reload=False
    )
    failure_memory: float = option(
        60.0,
        "seconds a failed login (wrong password, MFA, blocked account) is answered again from memory "
        "for the same username and password, without reaching the upstream (0: off)",
        non_negative,
        reload=False,
    )


@dataclass(frozen=True, slots=True)
class TokensConfig:
    store: Literal["memory", "file", "redis"] = option(
        "memory",
        "where cached logins live: memory (this process), file (memory, persisted to tokens.file) "
        "or redis (shared by every gateway using tokens.redis_url)",
        reload=False,
    )
    file: str = option(
        "", "the persistence file for store: file (written atomically, mode 0600)", reload=False
    )
    redis_url: str = option(
        "",
        "redis://[:password@]host:port/db (or rediss://, unix://) for store: redis",
        redis_url,
        reload=False,
    )
    redis_prefix: str = option(
        "tornadoproxy:tokens:", "prefix of every Redis key the cache writes", reload=False
    )
    secret: str = option(
        "",
        "key of the HMAC that turns usernames into cache keys; empty: generated once and kept in the "
        "persistence file or in Redis (set it to keep usernames unguessable from the file or Redis)",
        reload=False,
    )
    expiry_margin: float = option(
        3600.0,
        "an accessToken is served from cache until its own expiry (JWT exp, session expires) minus "
        "this many seconds",
        non_negative,
        reload=False,
    )
    session_key_ttl: float = option(
        86400.0,
        "seconds a platform sessionKey (which carries no expiry) is served from cache",
        positive,
        reload=False,
    )
    max_entries: int = option(
        10000,
        "cached logins held in memory; the least recently used go first",
        between(1, 10_000_000),
        reload=False,
    )
    kdf_cost: int = option(
        15,
        "scrypt cost (log2 N, r=8, p=1) of the key that seals each cached token with its password; "
        "15 takes about 0.1 s and 32 MiB",
        between(10, 20),
        reload=False,
    )


@dataclass(frozen=True, slots=True)
class ReadinessConfig:
    enabled: bool = option(
        True,
        "probe the upstreams for /readyz; false sends nothing upstream on its own (/readyz then "
        "reports every upstream as disabled)",
    )
    interval: float = option(
        60.0,
        "seconds between upstream probes reported by /readyz (the first runs at start-up); 0 probes "
        "only once",
        non_negative,
    )
    timeout: float = option(
        10.0, "seconds one probe may take before the upstream counts as unreachable", positive
    )


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    level: str = option("INFO", "log level of the gateway's own messages", log_level)
    format: Literal["json", "text"] = option("json", "one JSON object per line, or plain text")
    access_log: bool = option(True, "one line per request (route template, status, duration...)")


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerConfig = section(ServerConfig, "the listening side")
    access: AccessConfig = section(AccessConfig, "who may use the gateway (checked before anything else)")
    upstreams: UpstreamsConfig = section(UpstreamsConfig, "where requests go")
    egress: EgressConfig = section(EgressConfig, "how requests leave the host")
    profiles: ProfilesConfig = section(ProfilesConfig, "which client profile each upstream sees")
    fetch: FetchConfig = section(FetchConfig, "the upstream HTTP client")
    streams: StreamsConfig = section(StreamsConfig, "Server-Sent Events relays")
    readiness: ReadinessConfig = section(ReadinessConfig, "the upstream probes behind /readyz")
    logins: LoginsConfig = section(LoginsConfig, "the /chatgpt/login and /platform/login flows")
    tokens: TokensConfig = section(TokensConfig, "the cache of logins (accessTokens and sessionKeys)")
    logging: LoggingConfig = section(LoggingConfig, "logs")
    accounts: tuple[AccountConfig, ...] = option(
        (),
        "the account pool (README: Account pool): ChatGPT web accounts the gateway logs in and shares",
        distinct_account_names,
        reload=False,
    )
    pool: PoolConfig = section(
        PoolConfig, "how requests share the accounts: queue, cool-downs, token refresh"
    )
    imitate: ImitateConfig = section(
        ImitateConfig, "/imitate/v1/...: ChatGPT web accounts answering as the OpenAI API"
    )


def load_config(path: str | None, environ: Mapping[str, str]) -> Config:
    """Read `path` (YAML; None means all defaults), apply the environment, validate everything."""
    raw: Any = {}
    if path is not None:
        try:
            with open(path, encoding="utf-8") as stream:
                raw = yaml.safe_load(stream)
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read the config file ({exc.strerror})") from None
        except yaml.YAMLError as exc:
            where = getattr(exc, "problem_mark", None)
            line = f" at line {where.line + 1}" if where is not None else ""
            raise ConfigError(f"{path}: not valid YAML{line}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError("(top level): must be a mapping of sections")
    config: Config = build(Config, _apply_environment(raw, environ), "")
    accounts = resolve_account_secrets(config.accounts, environ)
    return dataclasses.replace(config, accounts=accounts) if accounts else config


def _apply_environment(raw: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """The original gateway's variables; the first one set wins, and the environment beats the file."""
    overrides = (
        (("GO_CHATGPT_API_PORT", "PORT"), "server", "port", _parse_env_port),
        (("GO_CHATGPT_API_PROXY", "PROXY"), "egress", "proxy", _parse_env_text),
    )
    merged = dict(raw)
    for names, section_name, key, parse in overrides:
        name = next((n for n in names if environ.get(n, "") != ""), None)
        if name is None:
            continue
        current = merged.get(section_name) or {}
        if not isinstance(current, dict):
            continue  # build() reports the bad section itself
        merged[section_name] = {**current, key: parse(environ[name], name)}
    return merged


def _parse_env_text(value: str, _name: str) -> str:
    return value


def _parse_env_port(value: str, name: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"{name} (server.port): must be an integer, got {value!r}") from None
