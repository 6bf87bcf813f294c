"""The options of the account pool: the `accounts:` list (one record per ChatGPT web account) and the
`pool:` section (queue, cool-downs, token refresh, shared slots).

Declarations and the checks that need several fields of a record at once; `config` adds them to the
configuration and resolves the secrets given by environment variable or file (`resolve_account_secrets`).
What the pool does with them is `tornadoproxy.pool`'s concern.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

from tornadoproxy.config.checks import (
    account_name,
    between,
    env_name,
    model_patterns,
    non_negative,
    profile_name,
    proxy_url_problem,
    readable_file,
)
from tornadoproxy.config.options import ConfigError, Problem, option
from tornadoproxy.redact import Secret

_PASSWORD_KEYS = ("password", "password_env", "password_file")
_TOKEN_KEYS = ("access_token", "access_token_env", "access_token_file")


@dataclass(frozen=True, slots=True)
class AccountConfig:
    """One ChatGPT web account of the pool: a name, and either a login or a fixed accessToken."""

    name: str = option(
        "", "the account's name in logs, metrics and /accounts (never its e-mail)", account_name
    )
    username: Secret = option(Secret(""), "e-mail address the gateway logs in with (with a password)")
    password: Secret = option(Secret(""), "the password, written here (or password_env / password_file)")
    password_env: str = option("", "environment variable that holds the password", env_name)
    password_file: str = option(
        "", "file that holds the password (one trailing newline is ignored)", readable_file
    )
    access_token: Secret = option(
        Secret(""),
        "a fixed accessToken instead of a login (the account is invalid once it expires or is refused)",
    )
    access_token_env: str = option("", "environment variable that holds the accessToken", env_name)
    access_token_file: str = option("", "file that holds the accessToken", readable_file)
    proxy: str = option(
        "",
        "the account's own egress proxy (URL as for egress.proxy, or 'direct'); empty: one proxy of "
        "egress.chatgpt (else egress.proxy) chosen when it first logs in or serves, then kept",
        proxy_url_problem,
        secret=True,
    )
    profile: str = option(
        "", "client profile of the account's requests; empty: profiles.chatgpt", profile_name
    )
    concurrency: int = option(
        1, "answers the account may stream at once (the upstream allows one)", between(1, 64)
    )
    models: tuple[str, ...] = option(
        (),
        "web model slugs the account may serve (a trailing '*' is a prefix); empty: every model",
        model_patterns,
    )

    @property
    def logs_in(self) -> bool:
        """True for a username + password account, False for a fixed accessToken."""
        return bool(self.username)

    def record_problem(self) -> tuple[str, str] | None:
        """Which key is wrong when the fields do not fit together (options.build reports it)."""
        if not self.name:
            return "name", "every account needs a name (it labels logs, metrics and /accounts)"
        passwords = [key for key in _PASSWORD_KEYS if getattr(self, key)]
        tokens = [key for key in _TOKEN_KEYS if getattr(self, key)]
        for given in (passwords, tokens):
            if len(given) > 1:
                return given[1], "give only one of " + ", ".join(given)
        if tokens and (self.username or passwords):
            return "", "give either username + password or access_token, not both"
        if not tokens and not self.username and not passwords:
            return "", "needs username + password (or password_env / password_file) or access_token"
        if self.username and not passwords:
            return "password", "is needed with username (or password_env / password_file)"
        if passwords and not self.username:
            return "username", "is needed with a password"
        return None


def distinct_account_names(accounts: tuple[AccountConfig, ...]) -> Problem:
    seen: dict[str, int] = {}
    for index, account in enumerate(accounts):
        if account.name in seen:
            return f"[{index}].name", f"repeats the name of accounts[{seen[account.name]}]"
        seen[account.name] = index
    return None


@dataclass(frozen=True, slots=True)
class PoolConfig:
    queue_size: int = option(
        100,
        "requests that may wait for a free account (in each gateway process); past it: 429 "
        "accounts_busy; 0: none waits",
        between(0, 1_000_000),
        reload=False,
    )
    queue_timeout: float = option(
        60.0,
        "seconds a request may wait for a free account before 429 accounts_busy",
        non_negative,
        reload=False,
    )
    attempts: int = option(
        3,
        "accounts tried for one request before its first byte (never the same one twice)",
        between(1, 64),
        reload=False,
    )
    slot_lease: float = option(
        30.0,
        "with tokens.store redis: seconds after which a slot taken by a gateway process that stopped "
        "renewing it (crashed) is free again",
        between(2, 3600),
        reload=False,
    )
    cooldown_base: float = option(
        30.0,
        "seconds an account cools down after an upstream 429 without clears_in, a challenge, block or "
        "'unusual activity', or a failed connection; doubled at each such failure in a row",
        between(0.1, 86400),
        reload=False,
    )
    cooldown_cap: float = option(
        1800.0, "the longest of those cool-downs, in seconds", between(0.1, 604800), reload=False
    )
    refresh_margin: float = option(
        3600.0,
        "password accounts log in again this many seconds before their accessToken expires (at the "
        "latest halfway through the token's life)",
        non_negative,
        reload=False,
    )
    login_backoff: float = option(
        10.0,
        "seconds before a failed background login of an account is tried again (it cools down "
        "meanwhile); doubled at each failure in a row",
        between(0.1, 86400),
        reload=False,
    )
    login_backoff_cap: float = option(
        1800.0,
        "the longest wait between two failed background logins, in seconds",
        between(0.1, 604800),
        reload=False,
    )
    redis_prefix: str = option(
        "tornadoproxy:pool:",
        "prefix of every Redis key of the shared pool (tokens.store redis)",
        reload=False,
    )
    serve_chatgpt: bool = option(
        False,
        "relayed /chatgpt/... requests that carry a client key and no accessToken of their own are "
        "served by pool accounts (README: Relayed routes served by the pool); needs access.client_keys",
    )
    conversation_map_size: int = option(
        20000,
        "conversations (and sentinel tokens) whose account the gateway remembers, so that reading or "
        "continuing one goes to the account that made it; in each process, and in Redis when shared",
        between(1, 10_000_000),
        reload=False,
    )
    conversation_ttl: float = option(
        2592000.0,
        "seconds a conversation stays bound to its account after its last answer (30 days)",
        between(60, 31_536_000),
        reload=False,
    )


def resolve_account_secrets(
    accounts: tuple[AccountConfig, ...], environ: Mapping[str, str]
) -> tuple[AccountConfig, ...]:
    """The accounts with `password` and `access_token` read from their environment variable or file
    when given that way; a variable that is unset or empty, or an unreadable or empty file, stops."""
    resolved = []
    for index, account in enumerate(accounts):
        path = f"accounts[{index}]"
        password = _secret(
            account.password, account.password_env, account.password_file, environ, path, "password"
        )
        token = _secret(
            account.access_token,
            account.access_token_env,
            account.access_token_file,
            environ,
            path,
            "access_token",
        )
        resolved.append(dataclasses.replace(account, password=password, access_token=token))
    return tuple(resolved)


def _secret(
    given: Secret, variable: str, file: str, environ: Mapping[str, str], path: str, key: str
) -> Secret:
    if variable:
        value = environ.get(variable, "")
        if not value:
            raise ConfigError(f"{path}.{key}_env: the environment variable {variable} is not set or empty")
        return Secret(value)
    if file:
        try:
            with open(file, encoding="utf-8") as stream:
                value = stream.read()
        except (OSError, UnicodeDecodeError) as error:
            reason = error.strerror if isinstance(error, OSError) else "not UTF-8 text"
            raise ConfigError(f"{path}.{key}_file: cannot read the file ({reason})") from None
        value = value.removesuffix("\n").removesuffix("\r")
        if not value:
            raise ConfigError(f"{path}.{key}_file: the file is empty")
        return Secret(value)
    return given
