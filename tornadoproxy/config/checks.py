"""Value checks of configuration options: each returns why a value is wrong, or None.

The messages never quote the value (it may be a proxy URL with a password); `options.build` adds the
key path and, for options not marked secret, a short description of the value.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote, urlsplit

from tornadoproxy.config.options import Check

PROXY_SCHEMES = ("http", "https", "socks5", "socks5h")


def between(low: float, high: float) -> Check:
    def check(value: float) -> str | None:
        return None if low <= value <= high else f"must be between {low:g} and {high:g}"

    return check


def positive(value: float) -> str | None:
    return None if value > 0 else "must be greater than 0"


def non_negative(value: float) -> str | None:
    return None if value >= 0 else "must not be negative"


def http_url(value: str) -> str | None:
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


def ip_networks(value: tuple[str, ...]) -> str | None:
    for item in value:
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            return f"{item!r} is not an IP address or network"
    return None


_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


def key_digests(value: tuple[str, ...]) -> str | None:
    for item in value:
        if not _DIGEST.fullmatch(item):
            return "each entry must be 'sha256:' and 64 lowercase hex digits (tornadoproxy --hash-key)"
    return None


def header_name(value: str) -> str | None:
    return None if re.fullmatch(r"[A-Za-z0-9-]+", value) else "must be an HTTP header name"


def readable_file(value: str) -> str | None:
    if value and not (os.path.isfile(value) and os.access(value, os.R_OK)):
        return "must be a readable file"
    return None


def existing_directory(value: str) -> str | None:
    return None if not value or os.path.isdir(value) else "must be an existing directory"


def log_level(value: str) -> str | None:
    levels = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
    return None if value.upper() in levels else "must be one of " + ", ".join(levels)


_PROFILE_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,39}$")
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


def profile_name(value: str) -> str | None:
    if value and not _PROFILE_NAME.match(value):
        return "must be a profile name (lower-case letters, digits, '_', '-', '.')"
    return None


def profile_names(value: Mapping[str, Any]) -> str | None:
    for name in value:
        problem = profile_name(name)
        if problem:
            return f"{name!r} {problem}"
    return None


def header_lines(value: tuple[str, ...]) -> str | None:
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


def redis_url(value: str) -> str | None:
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


_ACCOUNT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,39}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MODEL_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/-]*\*?$|^\*$")


def account_name(value: str) -> str | None:
    """An account's name labels metrics and logs: short, plain and never an e-mail address."""
    if not _ACCOUNT_NAME.match(value):
        return "must be 1-40 letters, digits, '_', '-' or '.', starting with a letter or digit"
    return None


def env_name(value: str) -> str | None:
    if value and not _ENV_NAME.match(value):
        return "must be an environment variable name (letters, digits and '_')"
    return None


def model_patterns(value: tuple[str, ...]) -> str | None:
    for index, pattern in enumerate(value):
        if not _MODEL_PATTERN.match(pattern):
            return f"entry {index} must be a model slug, optionally ending in '*' (a prefix)"
    return None
