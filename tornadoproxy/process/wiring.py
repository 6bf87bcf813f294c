"""From a validated configuration to what the components are built from.

Routes (origin, egress proxies and client profile per upstream; every profile in use checked by
its engine), the token store, and the configured secrets for the log filter. server.py builds the
components from these at start-up; runtime.py loads them again on SIGHUP.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from urllib.parse import unquote, urlsplit

from tornadoproxy.auth.tokenstore import MemoryStore, TokenStore, secret_from_config
from tornadoproxy.config.schema import Config, ConfigError, CustomProfileConfig, ProxySetting, load_config
from tornadoproxy.observability.metrics import Metrics
from tornadoproxy.upstream.egress import parse_proxies, proxy_secrets
from tornadoproxy.upstream.engines import engine_problem
from tornadoproxy.upstream.profiles import PYCURL_TLS_FIELDS, ClientProfile, derive_profile, profile_problem
from tornadoproxy.upstream.request import UpstreamRoute
from tornadoproxy.upstream.shipped_profiles import profile_registry

UPSTREAMS = ("chatgpt", "auth", "platform", "platform_web")


def load(
    config_path: str | None, environ: Mapping[str, str]
) -> tuple[Config, dict[str, UpstreamRoute], frozenset[str]]:
    """The validated configuration, the routes it implies and the secrets it holds."""
    config = load_config(config_path, environ)
    routes = build_routes(config)
    check_tokens(config)
    check_accounts(config)
    return config, routes, config_secrets(config)


def build_routes(config: Config) -> dict[str, UpstreamRoute]:
    """How each upstream is reached: origin, egress proxies and client profile."""
    profiles = build_profiles(config.profiles.custom)
    proxies = egress_settings(config)
    urls = config.upstreams.by_name()
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
        problem = profile_problem(profiles[chosen[key]]) or engine_problem(profiles[chosen[key]])
        if problem:
            raise ConfigError(f"profiles.{key}: the profile {chosen[key]!r} cannot be used: {problem}")
    chatgpt, auth = profiles[chosen["chatgpt"]], profiles[chosen["auth"]]
    if chatgpt.engine != auth.engine:
        # The ChatGPT login carries its cookies from the chatgpt host to the auth host and back,
        # and a cookie jar lives inside one libcurl.
        raise ConfigError(
            f"profiles.auth: {auth.name!r} runs on {auth.engine} and profiles.chatgpt {chatgpt.name!r} on "
            f"{chatgpt.engine}; the ChatGPT login needs both on one engine (both browser profiles, "
            "or both pycurl ones such as plain and okhttp)"
        )
    return {
        name: UpstreamRoute(name, _origin(urls[name]), parse_proxies(proxies[name]), profiles[chosen[name]])
        for name in UPSTREAMS
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
    if tokens.store == "file" and config.server.workers > 1:
        # Each worker would hold its own copy and overwrite the others' logins at every save.
        raise ConfigError(
            "tokens.store: file cannot be shared by several worker processes (server.workers > 1); "
            "use redis to share logins between workers, or memory (one cache per worker)"
        )


def check_accounts(config: Config) -> None:
    """The pool's settings fit together and with the rest (each key alone is checked by load_config)."""
    pool = config.pool
    if pool.cooldown_cap < pool.cooldown_base:
        raise ConfigError("pool.cooldown_cap: must not be below pool.cooldown_base")
    if pool.login_backoff_cap < pool.login_backoff:
        raise ConfigError("pool.login_backoff_cap: must not be below pool.login_backoff")
    if pool.serve_chatgpt and not config.accounts:
        raise ConfigError("pool.serve_chatgpt: there are no accounts to serve from (accounts)")
    if pool.serve_chatgpt and not config.access.client_keys:
        # Without client keys nobody could be told apart from a client sending its own accessToken.
        raise ConfigError(
            "pool.serve_chatgpt: needs access.client_keys: the pool serves requests that carry a client key"
        )
    if not config.accounts:
        return
    if config.server.workers > 1 and config.tokens.store != "redis":
        # Each worker would give every account one answer of its own at a time.
        raise ConfigError(
            "accounts: with server.workers > 1 the workers share the account pool through Redis: "
            "set tokens.store to redis (and tokens.redis_url)"
        )
    profiles = set(profile_registry()) | set(config.profiles.custom)
    for index, account in enumerate(config.accounts):
        if account.profile and account.profile not in profiles:
            known = ", ".join(sorted(profiles))
            raise ConfigError(
                f"accounts[{index}].profile: unknown profile {account.profile!r} (known: {known})"
            )


def account_profiles(config: Config) -> dict[str, ClientProfile]:
    """The profiles the accounts name, by name (checked by check_accounts)."""
    wanted = {account.profile for account in config.accounts if account.profile}
    if not wanted:
        return {}
    profiles = build_profiles(config.profiles.custom)
    return {name: profiles[name] for name in wanted}


def build_store(config: Config, metrics: Metrics) -> TokenStore:
    tokens = config.tokens
    secret = secret_from_config(tokens.secret)
    if tokens.store == "redis":
        from tornadoproxy.auth.redisstore import RedisStore  # here: redis-py costs 6 MB per process

        return RedisStore(tokens.redis_url, tokens.redis_prefix, secret)
    path = tokens.file if tokens.store == "file" else ""
    return MemoryStore(tokens.max_entries, metrics, secret, path)


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
    """The built-in profiles and the operator's own, each custom one checked by its engine."""
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
        if changes.get("target") or changes.get("ja3"):  # a new fingerprint replaces the base's
            changes = {"target": "", "ja3": "", "akamai": "", "stream_weight": 0, **changes}
        profile = derive_profile(name, base, changes)
        ignored = [key for key in PYCURL_TLS_FIELDS if key in changes]
        if profile.engine == "curl_cffi" and ignored:
            raise ConfigError(
                f"{path}.{ignored[0]}: applies to pycurl profiles only; this profile takes its TLS and "
                "HTTP/2 from its target or ja3/akamai strings"
            )
        problem = profile_problem(profile) or engine_problem(profile)
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
    "target",
    "ja3",
    "akamai",
)


def config_secrets(config: Config) -> frozenset[str]:
    """Configured secrets the log filter must mask wherever they appear: proxy credentials, the token
    cache's secret, the Redis password, and the accounts' e-mail addresses, passwords and tokens."""
    found: set[str] = set()
    for setting in egress_settings(config).values():
        found |= proxy_secrets(parse_proxies(setting))
    found.add(config.tokens.secret)
    redis_password = urlsplit(config.tokens.redis_url).password if config.tokens.redis_url else None
    found.add(unquote(redis_password or ""))
    for account in config.accounts:
        # The e-mail address too: the pool names accounts by their name only.
        found |= {account.username.reveal(), account.password.reveal(), account.access_token.reveal()}
        if account.proxy:
            found |= proxy_secrets(parse_proxies(account.proxy))
    return frozenset(s for s in found if s)


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"
