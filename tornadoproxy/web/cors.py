"""CORS: which origins may read the gateway's answers, and the answer to a browser's preflight.

A preflight (OPTIONS with Origin and Access-Control-Request-Method) never carries credentials, a
client key included: the browser sends them only with the real request, once the preflight allowed
it. So a preflight is answered without the client-key check (access.py), nothing goes upstream, and
the real request is checked as any other. Allowed request headers echo what the browser asked for
(SDKs in browsers send headers of their own, such as x-stainless-*, and a header left out makes the
browser drop the request), but only well-formed header names, at most `MAX_HEADERS` of them: the
gateway forwards only the headers it knows whatever the browser may send, so the echo grants nothing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

MAX_HEADERS = 50
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,64}")
# Without a list from the browser: what the gateway reads or forwards.
DEFAULT_HEADERS = "Authorization, X-Authorization, Content-Type, OpenAI-Organization"


def is_preflight(method: str | None, headers: Mapping[str, str]) -> bool:
    return method == "OPTIONS" and "Origin" in headers and "Access-Control-Request-Method" in headers


def origin_headers(origins: Sequence[str], origin: str | None) -> list[tuple[str, str]]:
    """Access-Control-Allow-Origin (and Vary) for a request from `origin`."""
    if "*" in origins:
        return [("Access-Control-Allow-Origin", "*")]
    if origin is not None and origin in origins:
        return [("Access-Control-Allow-Origin", origin), ("Vary", "Origin")]
    return []


def preflight_headers(
    methods: Sequence[str], requested: str | None, key_header: str
) -> list[tuple[str, str]]:
    """The preflight answer's headers: methods, allowed request headers, how long to keep them."""
    names = [name.strip() for name in (requested or "").split(",")]
    allowed = [name for name in names if _TOKEN.fullmatch(name)][:MAX_HEADERS]
    return [
        ("Access-Control-Allow-Methods", ", ".join(methods)),
        ("Access-Control-Allow-Headers", ", ".join(allowed) or f"{DEFAULT_HEADERS}, {key_header}"),
        ("Access-Control-Max-Age", "86400"),
        ("Vary", "Access-Control-Request-Headers"),
    ]
