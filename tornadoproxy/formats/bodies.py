"""Request bodies the gateway must read: strict JSON in, and the one rewrite it ever makes.

The gateway forwards bodies as sent. Where it has to look inside (conversation create, logins) it
parses strictly: NaN and Infinity, duplicate keys, nesting deeper than 64, numbers longer than 100
characters or overflowing a double, and invalid UTF-8 are refused with 400 before anything goes
upstream. Numbers keep their source text, so a rewritten body carries `1.50` as `1.50`.
"""

from __future__ import annotations

import json
import math
from typing import Any, TypeGuard

from tornadoproxy.errors import BadRequest

MAX_DEPTH = 64
MAX_NUMBER_LENGTH = 100


class _Number(str):
    """A JSON number kept as its source text, so re-encoding never changes it."""


def _number(text: str) -> _Number:
    if len(text) > MAX_NUMBER_LENGTH or not math.isfinite(float(text)):
        raise ValueError("number out of range")
    return _Number(text)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("duplicate key")
    return result


def parse_json(raw: bytes, what: str = "the request body") -> Any:
    """Parse `raw` strictly; BadRequest (400) says what was wrong, never what was sent."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest(f"{what} is not valid UTF-8") from None
    try:
        value = json.loads(
            text,
            parse_float=_number,
            parse_int=_number,
            parse_constant=_reject_constant,
            object_pairs_hook=_no_duplicates,
        )
    except RecursionError:
        raise BadRequest(f"{what} is nested too deeply") from None
    except ValueError as error:
        reason = str(error).split(":")[0]
        raise BadRequest(f"{what} is not valid JSON ({reason})") from None
    if _depth(value) > MAX_DEPTH:
        raise BadRequest(f"{what} is nested deeper than {MAX_DEPTH} levels")
    return value


def is_json_string(value: Any) -> TypeGuard[str]:
    """Whether a value from parse_json is a JSON string (its numbers are kept as str too)."""
    return isinstance(value, str) and not isinstance(value, _Number)


def dump_json(value: Any) -> str:
    """Encode a value from parse_json, numbers in their original text."""
    if isinstance(value, _Number):
        return str.__str__(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, dict):
        return "{" + ",".join(f"{dump_json(k)}:{dump_json(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(dump_json(item) for item in value) + "]"
    return json.dumps(value)  # true, false, null


def fill_author_roles(raw: bytes) -> bytes:
    """The conversation body with every `messages[].author.role` present (missing ones become
    "user", docs/upstream-chatgpt.md); `raw` itself when nothing was missing."""
    body = parse_json(raw)
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    changed = False
    messages = body.get("messages")
    for message in messages if isinstance(messages, list) else ():
        if not isinstance(message, dict):
            continue
        author = message.get("author")
        if author is None:
            message["author"] = {"role": "user"}
            changed = True
        elif isinstance(author, dict) and "role" not in author:
            author["role"] = "user"
            changed = True
    return dump_json(body).encode() if changed else raw


def _depth(value: Any) -> int:
    depth = 0
    level = [value]
    while level:
        containers = [item for item in level if isinstance(item, (dict, list))]
        if not containers:
            break
        depth += 1
        level = [
            child for item in containers for child in (item.values() if isinstance(item, dict) else item)
        ]
    return depth
