"""Counting tokens for `usage`: OpenAI's o200k_base encoding, loaded from data shipped with us.

The counts are those of OpenAI's own tokenizer (tiktoken) with the o200k_base encoding of gpt-4o and
later models, whatever web model answered. tiktoken would download the encoding at run time; the
ranks ship instead in `data/o200k_base.tiktoken.gz` (see data/NOTICE), and are checked against the
SHA-256 tiktoken itself expects before use. Nothing here touches the network.
Loading takes about 0.3 s and 80 MB, so `load_counter` runs once, off the event loop, when the
first completion arrives (`TokenCounting`); a gateway that never answers one never pays for it.
Chat overhead follows OpenAI's documented rule: 3 tokens per message, plus its role, plus 3 priming
the reply. `estimate_tokens` is the fallback rule of thumb (see its docstring for how far off it is).
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import logging
import math
from importlib import resources
from typing import Literal, Protocol

from tornadoproxy.imitate.output import Usage
from tornadoproxy.imitate.request import ChatMessage

log = logging.getLogger(__name__)

_DATA = "o200k_base.tiktoken.gz"
_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"
# o200k_base's pre-tokenisation pattern and special tokens: facts of the encoding, as published.
_PATTERN = "|".join(
    [
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]
)
_SPECIAL = {"<|endoftext|>": 199999, "<|endofprompt|>": 200018}
TOKENS_PER_MESSAGE = 3
REPLY_PRIMING = 3
# Texts longer than this are counted in a thread: a few milliseconds per 100 KB would stall the loop.
_COUNT_ON_LOOP = 32 * 1024

Method = Literal["o200k_base", "estimate"]


class TokenCounter(Protocol):
    def count(self, text: str) -> int: ...


class EncodingCounter:
    """Exact counts with a tiktoken encoding; special-token text counts as ordinary text."""

    def __init__(self, encoding: object) -> None:
        self._encoding = encoding

    def count(self, text: str) -> int:
        return len(self._encoding.encode_ordinary(text))  # type: ignore[attr-defined]


class EstimateCounter:
    """The rule of thumb, for when the encoding is not loaded."""

    def count(self, text: str) -> int:
        return estimate_tokens(text)


def estimate_tokens(text: str) -> int:
    """About one token per 4 characters, and 4 per 5 characters of East Asian scripts.

    Measured against o200k_base (tests/unit/test_imitate_tokens.py): the README -6 %, Python code
    +3 %, simulator code +16 %; sample prose in Russian 0 %, Chinese +2 %, Japanese 0 %, Spanish
    +19 %, German +32 % (o200k_base packs European languages into longer tokens than English).
    """
    wide = sum(1 for char in text if _is_wide(char))
    return math.ceil((len(text) - wide) / 4 + wide * 0.8)


def _is_wide(char: str) -> bool:
    # CJK radicals to ideographs (kana included), Hangul syllables, compatibility and fullwidth forms.
    point = ord(char)
    return 0x2E80 <= point <= 0x9FFF or 0xAC00 <= point <= 0xD7AF or 0xF900 <= point <= 0xFFEF


def read_ranks() -> dict[bytes, int]:
    """The o200k_base merge ranks from the shipped file; ValueError if it is not the genuine one."""
    raw = gzip.decompress(resources.files("tornadoproxy.imitate").joinpath("data", _DATA).read_bytes())
    if hashlib.sha256(raw).hexdigest() != _SHA256:
        raise ValueError(f"{_DATA} is not the o200k_base encoding tiktoken publishes")
    ranks: dict[bytes, int] = {}
    for line in raw.splitlines():
        token, rank = line.split()
        ranks[base64.b64decode(token)] = int(rank)
    return ranks


def load_counter() -> EncodingCounter:
    """The exact counter (blocking: about 0.3 s; run it once, in a thread or at start-up)."""
    import tiktoken  # here, so that importing this module costs nothing until counts are needed

    encoding = tiktoken.Encoding(
        name="o200k_base", pat_str=_PATTERN, mergeable_ranks=read_ranks(), special_tokens=_SPECIAL
    )
    return EncodingCounter(encoding)


def prompt_tokens(counter: TokenCounter, messages: tuple[ChatMessage, ...]) -> int:
    """The prompt's tokens as OpenAI counts a chat: per message overhead, role and text."""
    total = REPLY_PRIMING
    for message in messages:
        total += TOKENS_PER_MESSAGE + counter.count(message.role)
        total += sum(counter.count(part) for part in message.parts)
    return total


class TokenCounting:
    """The usage of answers, by the configured method. The exact counter is loaded in a thread when
    the first completion arrives, and the answers that need a count wait for it; building tiktoken's
    tables holds the GIL for about 0.13 s of that, once per process. If the shipped data cannot be
    loaded, the estimate is used (and logged)."""

    def __init__(self, method: Method = "o200k_base") -> None:
        self.method: Method = method
        self._exact: TokenCounter | None = None
        self._loading: asyncio.Future[EncodingCounter] | None = None

    def prepare(self) -> None:
        """Start loading the exact counter if it is the method and not loaded yet (on the loop)."""
        if self.method == "o200k_base" and self._exact is None and self._loading is None:
            self._loading = asyncio.get_running_loop().run_in_executor(None, load_counter)

    async def counter(self) -> TokenCounter:
        if self.method == "estimate":
            return EstimateCounter()
        self.prepare()
        if self._exact is None:
            assert self._loading is not None
            try:
                self._exact = await asyncio.shield(self._loading)
            except (OSError, ValueError) as error:
                log.error("cannot load the o200k_base token counts, estimating instead: %s", error)
                self._exact = EstimateCounter()
        return self._exact

    async def usage(self, messages: tuple[ChatMessage, ...], text: str) -> Usage:
        """The answer's usage: the prompt counted as OpenAI counts a chat, and the answer's text."""
        counter = await self.counter()
        size = len(text) + sum(len(part) for message in messages for part in message.parts)

        def count() -> Usage:
            return Usage(prompt_tokens(counter, messages), counter.count(text))

        return count() if size <= _COUNT_ON_LOOP else await asyncio.to_thread(count)
