"""Recognising answers an API client must never see as they are: challenges, blocks, HTML pages.

docs/upstream-chatgpt.md ("Errors"): Cloudflare challenges (`cf-mitigated: challenge`, a page titled
`Just a moment...`, `/cdn-cgi/challenge-platform/`), Cloudflare blocks (`Access denied`, error 1020,
`Attention Required!`) and region blocks (`unsupported_country` on ChatGPT,
`unsupported_country_region_territory` on the Platform API) become `upstream_challenge` /
`upstream_blocked` (403) with a message saying what the operator can try. Any other HTML error page
becomes `upstream_error_page`. The check reads only headers and the first bytes of the body, and
skips ordinary JSON answers after a header scan.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

from tornadoproxy.errors import Code, UpstreamError

# Enough of a page to find its title and Cloudflare's markers.
HEAD_BYTES = 64 * 1024

_TITLE = re.compile(rb"<title[^>]*>(.*?)</title>", re.I | re.S)
_CHALLENGE_MARKERS = (
    b"/cdn-cgi/challenge-platform/",
    b"cf-chl-",
    b"_cf_chl_opt",
    b"challenges.cloudflare.com",
)
_BLOCK_MARKERS = (
    b"error code 1020",
    b"error code: 1020",
    b"error 1020",
    b"access denied",
    b"attention required!",
    b"you have been blocked",
)
_REGION_MARKERS = (b"not available in your country", b"unsupported_country", b"not supported in your region")
_REGION_CODES = ("unsupported_country", "unsupported_country_region_territory")

_CHALLENGE_ADVICE = (
    "route this upstream through an egress proxy whose IP is not challenged (egress.proxy), or try "
    "another client profile (profiles.*); the gateway does not solve challenges"
)
_BLOCK_ADVICE = "route this upstream through another egress proxy (egress.proxy)"


def diagnose(
    upstream: str, status: int, headers: Sequence[tuple[str, str]], body: bytes
) -> UpstreamError | None:
    """The gateway error to answer instead of this upstream answer, or None to relay it as it is."""
    content_type = ""
    mitigated = ""
    for name, value in headers:
        lowered = name.lower()
        if lowered == "content-type":
            content_type = value.lower()
        elif lowered == "cf-mitigated":
            mitigated = value.lower()
    if mitigated == "challenge":
        return challenge(upstream, status)
    if "html" in content_type or _looks_like_html(body):
        return _diagnose_page(upstream, status, body[:HEAD_BYTES])
    if status in (401, 403) and "json" in content_type:
        return _diagnose_json_refusal(upstream, body[:HEAD_BYTES])
    return None


def challenge(upstream: str, status: int) -> UpstreamError:
    return UpstreamError(
        f"the {upstream} upstream answered {status} with a Cloudflare challenge page: {_CHALLENGE_ADVICE}",
        code=Code.UPSTREAM_CHALLENGE,
    )


def blocked(upstream: str, status: int, what: str) -> UpstreamError:
    return UpstreamError(
        f"the {upstream} upstream answered {status}: {what}; {_BLOCK_ADVICE}",
        code=Code.UPSTREAM_BLOCKED,
    )


def _looks_like_html(body: bytes) -> bool:
    start = body[:256].lstrip().lower()
    return start.startswith((b"<!doctype html", b"<html", b"<head", b"<!--"))


def page_kind(headers: Sequence[tuple[str, str]], page: bytes) -> str | None:
    """ "challenge", "region" or "blocked" for such a page (or a `cf-mitigated` header), else None.

    Shared by the relays (below) and the login steps, whose ordinary answers are HTML pages too."""
    if any(name.lower() == "cf-mitigated" and value.lower() == "challenge" for name, value in headers):
        return "challenge"
    lowered = page[:HEAD_BYTES].lower()
    title_match = _TITLE.search(lowered)
    title = title_match.group(1).strip() if title_match else b""
    if title.startswith(b"just a moment") or any(marker in lowered for marker in _CHALLENGE_MARKERS):
        return "challenge"
    if any(marker in lowered for marker in _REGION_MARKERS):
        return "region"
    if any(marker in lowered for marker in _BLOCK_MARKERS):
        return "blocked"
    return None


def _diagnose_page(upstream: str, status: int, page: bytes) -> UpstreamError | None:
    kind = page_kind((), page)
    if kind == "challenge":
        return challenge(upstream, status)
    if kind == "region":
        return blocked(upstream, status, "it does not serve the egress IP's country or region")
    if kind == "blocked":
        return blocked(
            upstream, status, 'Cloudflare denied access to the egress IP (an "Access denied" page)'
        )
    if 200 <= status < 300:
        return None  # an HTML document the client asked for (e.g. a file's content)
    return UpstreamError(
        f"the {upstream} upstream answered {status} with an HTML page instead of an API response "
        "(an outage or maintenance page)",
        status=status if status >= 500 else 502,
        code=Code.UPSTREAM_ERROR_PAGE,
    )


def _diagnose_json_refusal(upstream: str, body: bytes) -> UpstreamError | None:
    """A region block arrives as JSON: ChatGPT's `detail.code`, the Platform's `error.code`."""
    try:
        payload = json.loads(body)
    except ValueError:
        return None
    if not isinstance(payload, dict):
        return None
    for key in ("detail", "error"):
        inner = payload.get(key)
        if isinstance(inner, dict) and inner.get("code") in _REGION_CODES:
            return blocked(upstream, 403, f"it does not serve the egress IP's region ({inner['code']})")
    return None
