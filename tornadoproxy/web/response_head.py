"""The relayed response head: the upstream's status and headers put into tornado's response with
fewer checks per field, the same bytes on the wire.

tornado's `add_header` runs three patterns over every field (its own value characters, then
HTTPHeaders' field name and field value) and normalises the name each time. Relayed names repeat
from one answer to the next, so a name that passed tornado's token pattern is remembered with its
normalised form (up to MAX_NAMES of them; a refused name never); a value of printable ASCII that
neither starts nor ends with a space passes all three value checks, which two string methods tell
at a fraction of a pattern's cost. Any other field goes through `add_header` as before (and is
refused there as before). The standard reason phrase of a status is left to tornado, which supplies
that same phrase without its reason pattern. Relies on tornado 6.6's HTTPHeaders internals
(`_as_list`, `_combined_cache`), compared with `add_header` in tests/unit/test_response_head.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from tornado import httputil

MAX_NAMES = 1024
_names: dict[str, str] = {}  # a field name that is a token -> its normalised form


def relayed_reason(status: int, reason: str) -> str | None:
    """The reason to give `set_status`: None (tornado's own phrase) when the upstream's is that
    same phrase or empty."""
    if not reason or reason == httputil.responses.get(status):
        return None
    return reason


def add_relayed_headers(
    headers: httputil.HTTPHeaders,
    fields: Iterable[tuple[str, str]],
    add_header: Callable[[str, str], None],
) -> None:
    """Add `fields` to the response's `headers` as `add_header` would, in their order."""
    as_list = headers._as_list
    combined = headers._combined_cache
    for name, value in fields:
        normalised = _names.get(name) or _checked_name(name)
        if normalised is None or not (value.isascii() and value.isprintable()) or value.strip() != value:
            add_header(name, value)  # tornado's own checks, and its error for a bad field
        elif normalised in as_list:  # as HTTPHeaders.add and __setitem__, without their patterns
            combined.pop(normalised, None)
            as_list[normalised].append(value)
        else:
            combined[normalised] = value
            as_list[normalised] = [value]


def _checked_name(name: str) -> str | None:
    if httputil._ABNF.field_name.fullmatch(name) is None:
        return None
    normalised = httputil._normalize_header(name)
    if len(_names) < MAX_NAMES:
        _names[name] = normalised
    return normalised
