"""Configuration: YAML validated once at start-up into frozen dataclasses (shared/spec/gateway.md).

Every option is declared once below, with its type, default and help text; `load_config` checks the
file against these declarations and fails with a `ConfigError` naming the key path. This module is
the only YAML reader and reads the environment only through the mapping it is given.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import ipaddress
import os
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

import yaml

MIB = 1024 * 1024
PROXY_SCHEMES = ("http", "https", "socks5", "socks5h")


class ConfigError(Exception):
    """A configuration problem; the message starts with the key path."""


Check = Callable[[Any], "str | None"]


def option(default: Any, help: str, check: Check | None = None, secret: bool = False) -> Any:
    """Declare one option: its default, its help text (the docs) and an optional value check.
    A `secret` option's value is never echoed in a ConfigError (proxy URLs carry passwords)."""
    if isinstance(default, (list, dict)):
        raise TypeError("use tuples or default factories for mutable defaults")
    metadata = {"help": help, "check": check, "secret": secret}
    if isinstance(default, types.MappingProxyType):  # read-only, but unhashable: dataclasses want a factory
        return field(default_factory=lambda: default, metadata=metadata)
    return field(default=default, metadata=metadata)


def section(cls: type, help: str) -> Any:
    return field(default_factory=cls, metadata={"help": help, "check": None})


def _between(low: float, high: float) -> Check:
    def check(value: float) -> str | None:
        return None if low <= value <= high else f"must be between {low:g} and {high:g}"

    return check


def _positive(value: float) -> str | None:
    return None if value > 0 else "must be greater than 0"


def _non_negative(value: float) -> str | None:
    return None if value >= 0 else "must not be negative"


def _http_url(value: str) -> str | None:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "must be an http:// or https:// URL"
    if parts.query or parts.fragment or parts.username or parts.password:
        return "must be a plain http(s) URL without query, fragment or credentials"
    return None


_ENCODE_HINT = "percent-encode @ : % / ? # in the user name and password"
_BAD_ESCAPE = re.compile(r"%(?![0-9a-fA-F]{2})")


def proxy_url_problem(value: str) -> str | None:
    """Why `value` is not an egress proxy URL (or "direct" / empty), or None when it is one.

    The messages never quote the URL: it may carry a password."""
    if value in ("", "direct"):
        return None
    if any(ord(char) < 33 or ord(char) == 127 for char in value):
        return "must not contain spaces or control characters"
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        return f"is not a valid proxy URL (a port outside 1-65535 or a malformed address; {_ENCODE_HINT})"
    if parts.scheme not in PROXY_SCHEMES:
        return "must use one of the schemes " + ", ".join(PROXY_SCHEMES) + ' (or be "direct")'
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        return f"must be scheme://[user:password@]host:port and nothing more ({_ENCODE_HINT})"
    if not parts.hostname or port is None:
        return "must name a host and a port, e.g. socks5h://127.0.0.1:1080"
    if "@" in parts.netloc:
        return _credentials_problem(parts.netloc.rpartition("@")[0], parts.scheme)
    return None


def _credentials_problem(userinfo: str, scheme: str) -> str | None:
    if _BAD_ESCAPE.search(userinfo):
        return f"has a malformed %-escape in its credentials (write % as %25; {_ENCODE_HINT})"
    username, _, password = userinfo.partition(":")
    username, password = unquote(username), unquote(password)
    if not username:
        return "names a password but no user name"
    if any(ord(char) < 32 or ord(char) == 127 for char in username + password):
        return "has control characters in its credentials"
    if scheme in ("http", "https") and ":" in username:
        return "has a ':' in its user name, which HTTP Basic proxy authentication cannot carry"
    if scheme.startswith("socks5") and max(len(username.encode()), len(password.encode())) > 255:
        return "has a user name or password over 255 bytes, the SOCKS5 limit"
    return None


def proxy_list_problem(value: str | tuple[str, ...]) -> str | None:
    """Check an egress setting: one proxy URL, "direct", "" (the default) or a list of URLs."""
    if isinstance(value, str):
        return proxy_url_problem(value)
    if not value:
        return 'must not be an empty list (use "" for the default route or "direct" for none)'
    seen = set()
    for index, url in enumerate(value):
        if url in ("", "direct"):
            return f'entry {index}: a list holds proxy URLs only ("" and "direct" stand alone)'
        problem = proxy_url_problem(url)
        if problem is not None:
            return f"entry {index} {problem}"
        parts = urlsplit(url)
        where = (parts.scheme, parts.hostname, parts.port)
        if where in seen:
            return f"entry {index} repeats a proxy already listed (same scheme, host and port)"
        seen.add(where)
    return None


def _ip_networks(value: tuple[str, ...]) -> str | None:
    for item in value:
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            return f"{item!r} is not an IP address or network"
    return None


_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


def _key_digests(value: tuple[str, ...]) -> str | None:
    for item in value:
        if not _DIGEST.fullmatch(item):
            return "each entry must be 'sha256:' and 64 lowercase hex digits (tornadoproxy --hash-key)"
    return None


def _header_name(value: str) -> str | None:
    return None if re.fullmatch(r"[A-Za-z0-9-]+", value) else "must be an HTTP header name"


def _readable_file(value: str) -> str | None:
    if value and not (os.path.isfile(value) and os.access(value, os.R_OK)):
        return "must be a readable file"
    return None


def _log_level(value: str) -> str | None:
    levels = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
    return None if value.upper() in levels else "must be one of " + ", ".join(levels)


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = option("0.0.0.0", "address to listen on")
    port: int = option(8080, "port to listen on (env GO_CHATGPT_API_PORT or PORT wins)", _between(1, 65535))
    max_body_size: int = option(
        100 * MIB, "largest request body in bytes; larger requests get 413", _positive
    )
    max_header_size: int = option(
        64 * 1024, "largest request header block in bytes", _between(1024, 1024 * 1024)
    )
    idle_connection_timeout: float = option(
        120.0, "seconds a client connection may sit idle between requests", _positive
    )
    body_timeout: float = option(60.0, "seconds a client may take to send a request body", _positive)
    cors_origins: tuple[str, ...] = option(("*",), "origins allowed by CORS; '*' allows any")
    client_stall_timeout: float = option(
        60.0,
        "seconds a client may take to accept already-sent response data before it is dropped and its "
        "upstream request aborted",
        _positive,
    )
    ops_port: int = option(
        0,
        "a second listener serving only /healthz, /readyz and /metrics, without access checks (for "
        "Prometheus and orchestrators on a private interface); 0 for none",
        _between(0, 65535),
    )
    ops_host: str = option("127.0.0.1", "address of the ops listener")
    drain_timeout: float = option(
        30.0,
        "on SIGTERM, seconds open requests and streams may take to finish before they are ended",
        _non_negative,
    )
    trusted_proxies: tuple[str, ...] = option(
        (),
        "networks of load balancers whose X-Forwarded-For is trusted for the client "
        "address (logs, rate limits)",
        _ip_networks,
    )
    workers: int = option(
        1,
        "worker processes sharing the listening sockets; a parent process restarts a worker that dies "
        "and passes SIGTERM and SIGHUP on to every worker; more than 1 needs tokens.store memory or redis",
        _between(1, 64),
    )
    metrics_dir: str = option(
        "",
        "with workers > 1: the directory in which the parent creates the fresh, private directory of "
        "the metric files every worker writes (removed at exit); empty: the system temp directory",
        lambda value: None if not value or os.path.isdir(value) else "must be an existing directory",
    )


@dataclass(frozen=True, slots=True)
class AccessConfig:
    client_keys: tuple[str, ...] = option(
        (),
        "SHA-256 digests ('sha256:<hex>') of the client keys allowed to use the gateway; empty lets "
        "anyone in (strongly discouraged on a public address)",
        _key_digests,
    )
    key_header: str = option("X-Gateway-Key", "request header that carries the client key", _header_name)
    allowed_networks: tuple[str, ...] = option(
        (), "client networks (CIDR) allowed to use the gateway; empty allows any", _ip_networks
    )


@dataclass(frozen=True, slots=True)
class UpstreamsConfig:
    chatgpt: str = option("https://chatgpt.com", "ChatGPT web backend base URL", _http_url)
    auth: str = option("https://auth0.openai.com", "Auth0 tenant used by the logins", _http_url)
    platform: str = option("https://api.openai.com", "Platform API base URL", _http_url)
    platform_web: str = option("https://platform.openai.com", "platform web app (login callback)", _http_url)

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
    )
    chatgpt: ProxySetting = _override("ChatGPT backend (upstreams.chatgpt)")
    auth: ProxySetting = _override("login hosts (upstreams.auth and upstreams.platform_web)")
    platform: ProxySetting = _override("Platform API (upstreams.platform)")
    cooldown: float = option(
        30.0,
        "seconds a proxy that failed (refused, timed out, rejected the credentials, could not reach the "
        "upstream, or was marked for a challenge page) is skipped while another proxy of its list is up",
        _between(0.1, 86400),
    )


_PROFILE_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,39}$")
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


def _profile_name(value: str) -> str | None:
    if value and not _PROFILE_NAME.match(value):
        return "must be a profile name (lower-case letters, digits, '_', '-', '.')"
    return None


def _header_lines(value: tuple[str, ...]) -> str | None:
    seen = set()
    for index, line in enumerate(value):
        name, colon, rest = line.partition(":")
        if not colon or not _TOKEN.match(name):
            return f"entry {index} must be 'Name: value', or 'Name:' for a slot a request header fills"
        if any(ord(char) < 32 and char != "\t" or ord(char) == 127 for char in rest):
            return f"entry {index} has a control character in its value"
        try:
            rest.encode("latin-1")
        except UnicodeEncodeError:
            return f"entry {index} has a character outside Latin-1 in its value"
        if name.lower() in seen:
            return f"entry {index} names {name} a second time"
        seen.add(name.lower())
    return None


@dataclass(frozen=True, slots=True)
class CustomProfileConfig:
    """One operator-defined client profile; an unset field is taken from `base`."""

    base: str = option("", "profile this one starts from (built-in or custom); empty: none", _profile_name)
    headers: tuple[str, ...] | None = option(
        None,
        "header lines in the order sent, 'Name: value', or 'Name:' for a slot that a request header "
        "(Authorization, Content-Type...) fills; replaces the base profile's list",
        _header_lines,
    )
    http_version: Literal["1.1", "2"] | None = option(None, "HTTP version: '1.1' or '2' (over TLS)")
    ciphers: str | None = option(None, "OpenSSL cipher list for TLS 1.2 (order kept); empty: OpenSSL's")
    tls13_ciphers: str | None = option(None, "TLS 1.3 cipher suites in order; empty: OpenSSL's")
    curves: str | None = option(None, "supported groups (key exchange) in order; empty: OpenSSL's")
    signature_algorithms: str | None = option(None, "signature algorithms in order; empty: OpenSSL's")
    alpn: bool | None = option(None, "send ALPN (h2 and/or http/1.1 by http_version)")
    min_tls: Literal["1.2", "1.3"] | None = option(None, "lowest TLS version offered: '1.2' or '1.3'")


def _custom_profile_names(value: Mapping[str, CustomProfileConfig]) -> str | None:
    for name in value:
        problem = _profile_name(name)
        if problem:
            return f"{name!r} {problem}"
    return None


@dataclass(frozen=True, slots=True)
class ProfilesConfig:
    chatgpt: str = option("chrome", "client profile for the ChatGPT backend (chrome, firefox, okhttp, plain)")
    auth: str = option("chrome", "client profile for the login flows (auth and platform web hosts)")
    platform: str = option("plain", "client profile for the Platform API")
    custom: Mapping[str, CustomProfileConfig] = option(
        types.MappingProxyType({}),
        "your own profiles by name: base, headers, http_version, ciphers, tls13_ciphers, curves, "
        "signature_algorithms, alpn, min_tls (see the README); a name of a built-in profile replaces it",
        _custom_profile_names,
    )


@dataclass(frozen=True, slots=True)
class FetchConfig:
    max_clients: int = option(
        10000,
        "upstream requests in flight at once (streams included); the gate in front answers 503",
        _between(1, 1_000_000),
    )
    queue_timeout: float = option(
        1.0, "seconds a request may wait for a free upstream slot before 503", _non_negative
    )
    connect_timeout: float = option(
        10.0, "seconds to connect to the upstream (proxy handshake and TLS included)", _positive
    )
    idle_timeout: int = option(
        300,
        "seconds without a byte from the upstream before the request fails (also bounds the "
        "wait for the first byte); there is never a total timeout",
        _between(1, 86400),
    )
    buffer_size: int = option(
        1024 * 1024,
        "a non-streaming upstream body up to this many bytes is sent with Content-Length; "
        "larger ones are relayed as they arrive",
        _between(1024, 1024 * MIB),
    )
    ca_file: str = option(
        "",
        "PEM file of the CAs trusted for upstream (and https:// proxy) TLS instead of the system "
        "bundle, e.g. a corporate CA; empty: the system bundle (/etc/ssl/certs/ca-certificates.crt "
        "on Debian)",
        _readable_file,
    )


@dataclass(frozen=True, slots=True)
class StreamsConfig:
    keepalive_interval: float = option(
        15.0,
        "seconds of upstream silence after which an SSE comment keeps the client connection "
        "alive; 0 turns keep-alives off",
        _non_negative,
    )
    max_event_size: int = option(
        4 * MIB, "largest single SSE event relayed; a larger one ends the stream", _positive
    )


def _redis_url(value: str) -> str | None:
    if value == "":
        return None
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        return "is not a valid redis:// URL"
    if parts.scheme not in ("redis", "rediss", "unix") or not (parts.hostname or parts.path):
        return "must be a redis://, rediss:// or unix:// URL"
    return None


@dataclass(frozen=True, slots=True)
class LoginsConfig:
    platform_client_id: str = option(
        "DRivsnm2Mu42T3KOpqdtwB3NYviHYzwD", "Auth0 client id of the platform web app (platform login)"
    )
    timeout: float = option(
        60.0, "seconds a whole login flow may take, all steps together, before 504", _positive
    )
    max_redirects: int = option(10, "redirects followed within one step of a login flow", _between(1, 50))
    max_failures_per_username: int = option(
        5,
        "failed logins per username within logins.username_window before 429 (0: no limit); "
        "cache hits and joins of a login in flight never count",
        _non_negative,
    )
    username_window: float = option(900.0, "seconds over which failures per username count", _positive)
    max_failures_per_address: int = option(
        30,
        "failed logins per client address within logins.address_window before 429 (0: no limit)",
        _non_negative,
    )
    address_window: float = option(60.0, "seconds over which failures per address count", _positive)
    failure_memory: float = option(
        60.0,
        "seconds a failed login (wrong password, MFA, blocked account) is answered again from memory "
        "for the same username and password, without reaching the upstream (0: off)",
        _non_negative,
    )


@dataclass(frozen=True, slots=True)
class TokensConfig:
    store: Literal["memory", "file", "redis"] = option(
        "memory",
        "where cached logins live: memory (this process), file (memory, persisted to tokens.file) "
        "or redis (shared by every gateway using tokens.redis_url)",
    )
    file: str = option("", "the persistence file for store: file (written atomically, mode 0600)")
    redis_url: str = option(
        "", "redis://[:password@]host:port/db (or rediss://, unix://) for store: redis", _redis_url
    )
    redis_prefix: str = option("tornadoproxy:tokens:", "prefix of every Redis key the cache writes")
    secret: str = option(
        "",
        "key of the HMAC that turns usernames into cache keys; empty: generated once and kept in the "
        "persistence file or in Redis (set it to keep usernames unguessable from the file or Redis)",
    )
    expiry_margin: float = option(
        3600.0,
        "an accessToken is served from cache until its own expiry (JWT exp, session expires) minus "
        "this many seconds",
        _non_negative,
    )
    session_key_ttl: float = option(
        86400.0, "seconds a platform sessionKey (which carries no expiry) is served from cache", _positive
    )
    max_entries: int = option(
        10000, "cached logins held in memory; the least recently used go first", _between(1, 10_000_000)
    )
    kdf_cost: int = option(
        15,
        "scrypt cost (log2 N, r=8, p=1) of the key that seals each cached token with its password; "
        "15 takes about 0.1 s and 32 MiB",
        _between(10, 20),
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
        _non_negative,
    )
    timeout: float = option(
        10.0, "seconds one probe may take before the upstream counts as unreachable", _positive
    )


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    level: str = option("INFO", "log level of the gateway's own messages", _log_level)
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
    return build(Config, _apply_environment(raw, environ), "")


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


def build(cls: type, data: Any, path: str) -> Any:
    """Turn a mapping into the frozen dataclass `cls`, checking keys, types and values."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path or '(top level)'}: must be a mapping")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"{_join(path, str(key))}: unknown key (known here: {known})")
    values = {}
    for name, spec in fields.items():
        if name not in data:
            continue
        key_path = _join(path, name)
        value = _convert(hints[name], data[name], key_path)
        check = spec.metadata.get("check")
        problem = check(value) if check is not None else None
        if problem:
            shown = "" if spec.metadata.get("secret") else f", got {_show(data[name])}"
            raise ConfigError(f"{key_path}: {problem}{shown}")
        values[name] = value
    return cls(**values)


def _convert(hint: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(hint)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return build(hint, value, path)
    if origin in (typing.Union, types.UnionType):
        return _convert_union(typing.get_args(hint), value, path)
    if origin is Literal:
        choices = typing.get_args(hint)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and str(value) in choices:
            return str(value)  # YAML reads an unquoted 1.1 or 2 as a number
        if value not in choices:
            raise ConfigError(f"{path}: must be one of {', '.join(map(str, choices))}, got {_show(value)}")
        return value
    if origin is tuple:
        return _convert_tuple(typing.get_args(hint)[0], value, path)
    if origin in (dict, Mapping, collections.abc.Mapping):
        return _convert_mapping(typing.get_args(hint)[1], value, path)
    return _convert_scalar(hint, value, path)


def _convert_union(choices: tuple[Any, ...], value: Any, path: str) -> Any:
    if value is None and type(None) in choices:
        return None
    errors = []
    for choice in choices:
        if choice is type(None):
            continue
        try:
            return _convert(choice, value, path)
        except ConfigError as exc:
            if _shape_of(choice) == _shape_of(type(value)):
                raise  # the value has this choice's shape: its own error says the most
            errors.append(str(exc))
    if len(errors) > 1:
        kinds = " or ".join(_describe_shape(choice) for choice in choices if choice is not type(None))
        raise ConfigError(f"{path}: must be {kinds}, got {_show(value)}")
    raise ConfigError(errors[-1] if errors else f"{path}: unexpected value")


def _shape_of(hint: Any) -> str:
    origin = typing.get_origin(hint) or hint
    if origin in (tuple, list):
        return "list"
    if origin in (dict, Mapping) or (isinstance(origin, type) and dataclasses.is_dataclass(origin)):
        return "mapping"
    return "scalar"


def _describe_shape(hint: Any) -> str:
    shape = _shape_of(hint)
    if shape == "scalar":
        return {str: "a string", bool: "true or false", int: "an integer", float: "a number"}.get(
            hint, "one value"
        )
    return "a list" if shape == "list" else "a mapping"


def _convert_tuple(item: Any, value: Any, path: str) -> tuple[Any, ...]:
    if not isinstance(value, list):
        raise ConfigError(f"{path}: must be a list, got {_show(value)}")
    return tuple(_convert(item, element, f"{path}[{index}]") for index, element in enumerate(value))


def _convert_mapping(item: Any, value: Any, path: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: must be a mapping, got {_show(value)}")
    converted = {}
    for key, element in value.items():
        if not isinstance(key, str) or not key:
            raise ConfigError(f"{path}: keys must be non-empty strings, got {_show(key)}")
        converted[key] = _convert(item, element, _join(path, key))
    return types.MappingProxyType(converted)


def _convert_scalar(hint: Any, value: Any, path: str) -> Any:
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: must be true or false, got {_show(value)}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: must be an integer, got {_show(value)}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{path}: must be a number, got {_show(value)}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{path}: must be a string, got {_show(value)}")
    raise TypeError(f"unsupported option type {hint!r} at {path}")


def _join(path: str, key: str) -> str:
    # A key that is not a plain name (empty, spaces, punctuation) is quoted so the path stays readable.
    shown = key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else repr(key)
    return f"{path}.{shown}" if path else shown


def _show(value: Any) -> str:
    """A short description of a bad value; strings are not echoed in full (they may be secrets)."""
    if isinstance(value, str):
        return "a string" if len(value) > 40 or "@" in value else repr(value)
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, (int, float)):
        return repr(value)
    return "a " + type(value).__name__


def describe(cls: type = Config, path: str = "") -> list[tuple[str, Any, str]]:
    """Every option as (key path, default, help): the source of the docs and of their tests."""
    rows: list[tuple[str, Any, str]] = []
    hints = typing.get_type_hints(cls)
    defaults = cls()
    for spec in dataclasses.fields(cls):
        key_path = _join(path, spec.name)
        if dataclasses.is_dataclass(hints[spec.name]):
            rows.extend(describe(hints[spec.name], key_path))
        else:
            rows.append((key_path, getattr(defaults, spec.name), spec.metadata["help"]))
    return rows
