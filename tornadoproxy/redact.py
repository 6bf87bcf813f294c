"""Keeping secrets out of output: a `Secret` value with a masked repr and a log filter.

The filter is a last line of defence, installed on every log handler at start-up: code never logs
headers or bodies in the first place. It scrubs what looks like a credential (Bearer tokens, API and
session keys, JWTs, `password=...` pairs, passwords in URLs) and every literal registered with it.
"""

from __future__ import annotations

import logging
import re

MASK = "[redacted]"

_KEYS = (
    r"\b(?:password|passwd|pwd|secret|token|api[_-]?key|session[_-]?key|access[_-]?token|"
    r"refresh[_-]?token|id[_-]?token|csrf[_-]?token|authorization|cookie|set-cookie)"
)

_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"(?i)\b(bearer|basic)\s+[^\s\"',;]+"), r"\1 " + MASK),
    (re.compile(r"\b(sk|sess|rk)-[A-Za-z0-9_\-]{6,}"), MASK),
    (re.compile(r"\beyJ[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+\.?[A-Za-z0-9_\-]*"), MASK),
    (re.compile(r"(?i)(" + _KEYS + r"[\"']?\s*[:=]\s*)\"(?:[^\"\\]|\\.)*\""), r'\1"' + MASK + '"'),
    (re.compile(r"(?i)(" + _KEYS + r"[\"']?\s*[:=]\s*'?)[^\"'&\s,;}]+"), r"\1" + MASK),
    (re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)[^/\s@]+@"), r"\1" + MASK + "@"),
)

# Most lines hold nothing secret: a few substring tests (of the lowered text) decide whether the
# patterns need to run at all. A regex union of the patterns took 100 µs on an access line.
_TRIGGERS = (
    "bearer",
    "basic",
    "sk-",
    "sess-",
    "rk-",
    "eyj",
    "pass",
    "pwd",
    "secret",
    "token",
    "key",
    "authorization",
    "cookie",
    "@",
)


# Tornado's own messages quote what a client sent, whatever its shape: header names and values, the
# Host header, a Content-Length ("Invalid header value 'KEY\\x01'"). Records of tornado's loggers keep
# their wording with every quoted value masked; the reason in "Malformed HTTP message from %s: %s"
# (the text of tornado's HTTPInputError) is cut before its first value.
_QUOTED = re.compile(r"b?'(?:[^'\\]|\\.)*'" + r'|b?"(?:[^"\\]|\\.)*"')
_MALFORMED = "Malformed HTTP message from %s: %s"
_REASON = re.compile(r"[^:'\"]*")


def mask_client_text(message: str) -> str:
    """`message` (from one of tornado's loggers) with every quoted value masked."""
    return _QUOTED.sub("'" + MASK + "'", message)


def _tornado_message(record: logging.LogRecord) -> str:
    if record.msg == _MALFORMED and isinstance(record.args, tuple) and len(record.args) == 2:
        reason = _REASON.match(str(record.args[1]))
        cut = reason.group(0).strip() if reason else ""
        return f"Malformed HTTP message from {record.args[0]}: {cut or 'malformed'}"
    return mask_client_text(record.getMessage())


class Secret:
    """A string that must not be shown: `repr` and `str` are masked, `reveal()` gives the value."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __repr__(self) -> str:
        return "Secret(%s)" % (MASK if self._value else "''")

    __str__ = __repr__


def scrub(text: str, literals: frozenset[str] = frozenset()) -> str:
    """Return `text` with every credential-looking substring and every literal masked."""
    for literal in literals:
        if literal and literal in text:
            text = text.replace(literal, MASK)
    lowered = text.lower()
    for trigger in _TRIGGERS:
        if trigger in lowered:
            break
    else:
        return text
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class RedactingFilter(logging.Filter):
    """Formats each record's message and traceback once, scrubbed, before any formatter sees it."""

    def __init__(self, literals: frozenset[str] = frozenset()) -> None:
        super().__init__()
        self._literals = frozenset(s for s in literals if len(s) >= 4)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = _tornado_message(record) if record.name.startswith("tornado.") else record.getMessage()
        except Exception:  # a malformed call must not hide the record, nor leak its arguments
            message = str(record.msg)
        record.msg = scrub(message, self._literals)
        record.args = None
        if record.exc_info:
            text = logging.Formatter().formatException(record.exc_info)
            record.exc_text = scrub(text, self._literals)
            record.exc_info = None
        if record.stack_info:
            record.stack_info = scrub(record.stack_info, self._literals)
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            record.fields = {
                key: scrub(value, self._literals) if isinstance(value, str) else value
                for key, value in fields.items()
            }
        return True
