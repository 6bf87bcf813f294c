"""Reading upstream pages: Cloudflare challenge and block pages, hidden form inputs, alert texts.

Pure functions on status, headers and body bytes, used by the login flows (and meant to be shared
with the relays' page diagnosis). `upstream_text` makes an upstream message fit to relay: no markup,
short, and nothing the user sent.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from html import unescape
from html.parser import HTMLParser

_BLOCK_MARKERS = ("you have been blocked", "access denied", "error code: 1020", "error 1020")
_VOID_ELEMENTS = frozenset(
    {"area", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "wbr"}
)
_CHALLENGE_MARKERS = ("<title>just a moment", "_cf_chl_opt", "/cdn-cgi/challenge-platform")


def diagnose_page(
    status: int, headers: Sequence[tuple[str, str]], body: bytes, blocked_if_html_403: bool = False
) -> str | None:
    """ "challenge" for a Cloudflare challenge page, "blocked" for a block page, else None."""
    lowered = {k.lower(): v.lower() for k, v in headers}
    if lowered.get("cf-mitigated") == "challenge":
        return "challenge"
    if "html" not in lowered.get("content-type", ""):
        return None
    text = body[:65536].decode("utf-8", "replace").lower()
    if any(marker in text for marker in _CHALLENGE_MARKERS):
        return "challenge"
    if status in (403, 451) and (blocked_if_html_403 or any(m in text for m in _BLOCK_MARKERS)):
        return "blocked"
    return None


def upstream_text(text: str, user_inputs: Sequence[str]) -> str:
    """An upstream message fit to relay: tags and spacing removed, short, what the user sent masked."""
    text = " ".join(re.sub(r"<[^>]*>", " ", unescape(text)).split())
    for secret in user_inputs:
        if not secret:
            continue
        # A short input is masked only as a whole word: "p" must not mangle "password".
        pattern = re.escape(secret) if len(secret) >= 4 else rf"(?<!\w){re.escape(secret)}(?!\w)"
        text = re.sub(pattern, "[redacted]", text, flags=re.IGNORECASE)
    return text[:200]  # cut after masking: a cut must not leave part of a secret behind


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
