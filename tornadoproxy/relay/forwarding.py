"""What crosses the gateway: checked request paths, upstream URLs, and headers in both directions.

The gateway is never an open proxy (docs/gateway.md, "Routes"): the raw request target is
checked before anything is decoded, because tornado neither normalises `..` nor refuses `%2F`, and
libcurl would remove dot segments on the way out (docs/pitfalls.md). Headers pass by allowlist in
both directions, so a client's Host, Cookie or X-Forwarded-For never reaches the upstream and the
upstream's Set-Cookie or hop-by-hop headers never reach the client.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Iterable
from urllib.parse import unquote_to_bytes

from tornadoproxy.errors import BadRequest

# An escape that decodes to "." "/" "\" "%" or a control character, or a malformed escape: never in
# a sane API path, and a way to smuggle a path or a header line past a naive decoder.
_BAD_ESCAPE = re.compile(r"%(?:2[eEfF5]|5[cC]|[01][0-9a-fA-F]|7[fF]|(?![0-9a-fA-F]{2}))")
_BAD_CHARACTER = re.compile(r"[^\x21-\x7e]|\\")
_BAD_QUERY_CHARACTER = re.compile(r"[^\x21-\x7e]")
# Header values go to libcurl as raw lines: only visible ASCII, spaces and tabs may cross.
_BAD_HEADER_VALUE = re.compile(r"[^\x20-\x7e\t]")

FORWARDED_REQUEST_HEADERS = frozenset(
    {"authorization", "content-type", "accept", "accept-language", "idempotency-key"}
)
FORWARDED_REQUEST_PREFIXES = ("openai-", "oai-", "chatgpt-", "x-openai-")

RELAYED_RESPONSE_HEADERS = frozenset(
    {
        "content-type",
        "content-disposition",
        "content-language",
        "cache-control",
        "etag",
        "last-modified",
        "location",
        "retry-after",
        "retry-after-ms",
        "x-request-id",
        "cf-ray",
    }
)
RELAYED_RESPONSE_PREFIXES = ("openai-", "x-ratelimit-", "x-openai-")


def check_raw_path(path: str) -> None:
    """Refuse a request target that could leave its route's prefix or smuggle a host (400).

    A path that passed is remembered (up to _PASSED_PATHS of them, none longer than
    _REMEMBERED_PATH): the checks cost ~2 us, most of it the decoded path's NFKC forms, and a
    gateway sees the same few paths again and again. A refusal is never remembered (the error is
    raised again each time)."""
    if len(path) <= _REMEMBERED_PATH:
        _check_raw_path_remembered(path)
    else:
        _check_raw_path(path)


def _check_raw_path(path: str) -> None:
    if not path.startswith("/"):
        raise BadRequest("absolute-form and authority-form request targets are not accepted")
    if _BAD_CHARACTER.search(path):
        raise BadRequest("the request path contains a backslash, a control or a non-ASCII character")
    if _BAD_ESCAPE.search(path):
        raise BadRequest(
            "the request path contains an encoded '.', '/', '\\', '%' or control character, or a bad escape"
        )
    if "//" in path:
        raise BadRequest("the request path contains an empty segment")
    for segment in path.split("/"):
        if segment in (".", ".."):
            raise BadRequest("the request path contains a '.' or '..' segment")
    _check_decoded_path(path)


_REMEMBERED_PATH = 256
_PASSED_PATHS = 1024
_check_raw_path_remembered = functools.lru_cache(maxsize=_PASSED_PATHS)(_check_raw_path)


def _check_decoded_path(path: str) -> None:
    """Refuse what a decoder behind the upstream could read as a dot segment or a separator: the path
    must be UTF-8 once percent-decoded (an overlong `%c0%ae` is not), and no segment may be only dots
    (`...`) or mean one once its `;parameters` are cut (`..;x`, as Java servers read it) and Unicode
    compatibility forms folded (NFKC: fullwidth `．．` is `..`, fullwidth `／` is `/`)."""
    try:
        decoded = unquote_to_bytes(path).decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("the request path is not UTF-8 once decoded (an overlong or bad escape)") from None
    for segment in decoded.split("/")[1:]:
        meaning = unicodedata.normalize("NFKC", segment.split(";", 1)[0])
        if meaning and not meaning.strip("."):
            raise BadRequest("the request path has a segment of dots only, or that reads as '.' or '..'")
        if "/" in meaning or "\\" in meaning:
            raise BadRequest("the request path has a character that reads as '/' or '\\'")


def check_raw_query(query: str) -> None:
    """Refuse a query string with raw control or non-ASCII bytes, or an encoded NUL (400); other
    escapes pass unchanged (an encoded newline in a search text is the upstream's to read, a NUL
    only ever truncates a C string)."""
    if _BAD_QUERY_CHARACTER.search(query):
        raise BadRequest("the query string contains a control or non-ASCII character")
    if "%00" in query:
        raise BadRequest("the query string contains an encoded NUL (%00)")


def upstream_url(base: str, path: str, query: str) -> str:
    """`base` (from the config, no trailing slash) + an already checked raw `path` + raw `query`."""
    url = base + path
    return url + "?" + query if query else url


def forwarded_request_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The client's headers that the upstream needs, in the client's order (400 for a value with
    control or non-ASCII characters, which would otherwise reach the upstream as raw bytes)."""
    kept = []
    for name, value in headers:
        lowered = name.lower()
        if lowered in FORWARDED_REQUEST_HEADERS or lowered.startswith(FORWARDED_REQUEST_PREFIXES):
            if _BAD_HEADER_VALUE.search(value):
                raise BadRequest(f"the {name} header contains a control or non-ASCII character")
            kept.append((name, value))
    return kept


def relayed_response_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The upstream's headers a client may see; lengths and codings are the gateway's own."""
    kept = []
    for name, value in headers:
        lowered = name.lower()
        if lowered in RELAYED_RESPONSE_HEADERS or lowered.startswith(RELAYED_RESPONSE_PREFIXES):
            kept.append((name, value))
    return kept


def is_event_stream(headers: Iterable[tuple[str, str]]) -> bool:
    """Streams are recognised by the upstream's Content-Type, never by what the client asked for."""
    for name, value in headers:
        if name.lower() == "content-type":
            return value.lower().startswith("text/event-stream")
    return False
