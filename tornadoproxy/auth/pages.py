"""Reading upstream login pages: hidden form inputs and alert texts.

Pure functions on body bytes, used by the login flows; challenge and block pages are recognised by
diagnosis.page_kind, shared with the relays. `upstream_text` makes an upstream message fit to relay:
no markup, short, and nothing the user sent.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from html import unescape
from html.parser import HTMLParser
from urllib.parse import quote, quote_plus

_VOID_ELEMENTS = frozenset(
    {"area", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "wbr"}
)


def upstream_text(text: str, user_inputs: Sequence[str]) -> str:
    """An upstream message fit to relay: tags and spacing removed, short, what the user sent masked
    in every form the gateway sent it in (literal, URL-encoded in forms, JSON-escaped)."""
    text = " ".join(re.sub(r"<[^>]*>", " ", unescape(text)).split())
    # Longest first: a literal inside its own encoding ("a%" in "a%25") must not leave the rest behind.
    for secret in sorted({form for value in user_inputs if value for form in _encodings(value)}, key=len)[
        ::-1
    ]:
        # A short input is masked only as a whole word: "p" must not mangle "password".
        pattern = re.escape(secret) if len(secret) >= 4 else rf"(?<!\w){re.escape(secret)}(?!\w)"
        text = re.sub(pattern, "[redacted]", text, flags=re.IGNORECASE)
    return text[:200]  # cut after masking: a cut must not leave part of a secret behind


def _encodings(value: str) -> set[str]:
    """`value` as written, as a form field (both escapings) and inside a JSON string."""
    return {
        value,
        quote_plus(value),
        quote(value, safe=""),
        json.dumps(value)[1:-1],
        json.dumps(value, ensure_ascii=False)[1:-1],
    }


def hidden_inputs(body: bytes) -> dict[str, str]:
    """name -> value of every <input type="hidden"> of a page (the first one of each name)."""
    return _HiddenInputs.read(body)


def element_text(body: bytes, element_id: str) -> str:
    """The text inside the element with this id, spacing collapsed ("" when absent)."""
    return _ElementText.read(body, element_id)


class _HiddenInputs(HTMLParser):
    """name -> value of every <input type="hidden"> in a page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.values: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "input" and (found.get("type") or "").lower() == "hidden" and found.get("name"):
            self.values.setdefault(str(found["name"]), found.get("value") or "")

    @classmethod
    def read(cls, body: bytes) -> dict[str, str]:
        parser = cls()
        parser.feed(body.decode("utf-8", "replace"))
        return parser.values


class _ElementText(HTMLParser):
    """The text inside the element with a given id (Auth0 puts its error in #prompt-alert)."""

    def __init__(self, element_id: str) -> None:
        super().__init__(convert_charrefs=True)
        self._id = element_id
        self._depth = 0
        self.parts: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _VOID_ELEMENTS:
            return  # no end tag follows
        if self._depth or dict(attrs).get("id") == self._id:
            self._depth += 1

    def handle_endtag(self, tag: str) -> None:
        if self._depth:
            self._depth -= 1

    def handle_data(self, data: str) -> None:
        if self._depth:
            self.parts.append(data)

    @classmethod
    def read(cls, body: bytes, element_id: str) -> str:
        parser = cls(element_id)
        parser.feed(body.decode("utf-8", "replace"))
        return " ".join(" ".join(parser.parts).split())
