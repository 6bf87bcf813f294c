"""The sentinel's proof of work: find a counter whose answer hashes below the difficulty.

An answer is the standard base64 of the telemetry array as compact JSON; it is accepted when the
lowercase hex of SHA3-512(seed + answer) starts with a string <= the difficulty (a smaller
difficulty is harder). The requirements token is "gAAAAAC" + an answer for a random seed at the easy
difficulty 0fffff; the proof token is "gAAAAAB" + an answer for the seed the sentinel gave.

`solve` is a plain function of picklable values, made to run in a ProcessPoolExecutor: SHA3 over
inputs this small keeps the GIL (hashlib releases it only for larger data), so in a thread it would
stall the event loop. `prove` is its asynchronous face and takes the executor. A solve that has
started cannot be cancelled; `max_attempts` bounds it.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass

from tornadoproxy.errors import Code, UpstreamError
from tornadoproxy.imitate.browser import COUNTER_INDEX, BrowserTelemetry

REQUIREMENTS_PREFIX = "gAAAAAC"
PROOF_PREFIX = "gAAAAAB"
REQUIREMENTS_DIFFICULTY = "0fffff"
_DIFFICULTY = re.compile(r"[0-9a-f]{1,16}")
_MARKER = "\u0000counter\u0000"


@dataclass(frozen=True, slots=True)
class ProofOfWorkLimits:
    """`max_attempts` hashes before giving up; a difficulty needing more expected work than
    `hardest_difficulty` is refused before any hashing (the caller asks for a fresh seed)."""

    max_attempts: int = 2_000_000
    hardest_difficulty: str = "00001f"


@dataclass(frozen=True, slots=True)
class Solution:
    answer: str | None  # base64, or None when max_attempts ran out
    attempts: int


class ProofOfWorkFailed(UpstreamError):
    """No proof token: the difficulty is over the configured limit, or the attempts ran out."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message, code=Code.UPSTREAM_PROOF_OF_WORK_FAILED)
        self.reason = reason  # "too_hard" | "exhausted" | "malformed": a bounded label


def expected_attempts(difficulty: str) -> float:
    """The mean number of hashes a difficulty takes: 16^len / (value + 1)."""
    return 16 ** len(difficulty) / (int(difficulty, 16) + 1)


def check_difficulty(difficulty: str, limits: ProofOfWorkLimits) -> None:
    """Refuse a malformed difficulty, or one harder than the configured limit, before solving."""
    if not _DIFFICULTY.fullmatch(difficulty):
        raise ProofOfWorkFailed("the sentinel sent a malformed proof-of-work difficulty", "malformed")
    if expected_attempts(difficulty) > expected_attempts(limits.hardest_difficulty):
        raise ProofOfWorkFailed(
            f"the sentinel asked for a proof of work at difficulty {difficulty}, harder than the "
            f"configured limit {limits.hardest_difficulty}",
            "too_hard",
        )


def answer_for(values: Sequence[object], counter: int) -> str:
    """The answer (base64 of the compact JSON array) with `counter` as the attempt counter."""
    array = list(values)
    array[COUNTER_INDEX] = counter
    return base64.b64encode(_compact(array).encode()).decode()


def is_accepted(seed: str, answer: str, difficulty: str) -> bool:
    """The upstream's check, literally: hex digest prefix <= difficulty as strings."""
    digest = hashlib.sha3_512((seed + answer).encode()).hexdigest()
    return digest[: len(difficulty)] <= difficulty


def solve(seed: str, difficulty: str, values: Sequence[object], max_attempts: int) -> Solution:
    """Vary the counter from 0 until the answer is accepted or `max_attempts` hashes are spent.

    Only the counter changes, so the JSON splits into a fixed head and tail around it: the hash
    state after the seed and the head's whole base64 groups is computed once and copied, and the
    tail's base64 is computed once for each of the three ways it can align with base64's 3-byte
    groups. Each attempt then encodes a few dozen bytes and hashes the rest from a copy.
    """
    marked = list(values)
    marked[COUNTER_INDEX] = _MARKER
    head, tail = _compact(marked).encode().split(json.dumps(_MARKER).encode())
    aligned = len(head) - len(head) % 3
    start = hashlib.sha3_512(seed.encode() + base64.b64encode(head[:aligned]))
    head_rest = head[aligned:]
    target = bytes.fromhex(difficulty + ("f" if len(difficulty) % 2 else ""))
    width = len(target)
    attempts = 0
    digits = 1
    while attempts < max_attempts:
        # Counters with the same number of digits share the tail's alignment.
        band_end = min(10**digits, max_attempts)
        moving = (3 - (len(head_rest) + digits) % 3) % 3
        tail_head, tail_b64 = tail[:moving], base64.b64encode(tail[moving:])
        for counter in range(attempts, band_end):
            hasher = start.copy()
            hasher.update(base64.b64encode(b"%s%d%s" % (head_rest, counter, tail_head)))
            hasher.update(tail_b64)
            if hasher.digest()[:width] <= target:
                return Solution(answer_for(values, counter), counter + 1)
        attempts = band_end
        digits += 1
    return Solution(None, attempts)


def requirements_token(telemetry: BrowserTelemetry, seed: str) -> str:
    """The `p` of chat-requirements: cheap (about 16 hashes), so it may run on the event loop."""
    solution = solve(seed, REQUIREMENTS_DIFFICULTY, telemetry.values(), 10_000)
    if solution.answer is None:  # one in 16 per hash: practically never
        raise ProofOfWorkFailed("no requirements token within 10000 attempts", "exhausted")
    return REQUIREMENTS_PREFIX + solution.answer


async def prove(
    executor: Executor,
    seed: str,
    difficulty: str,
    telemetry: BrowserTelemetry,
    limits: ProofOfWorkLimits,
) -> tuple[str, int]:
    """The proof token for the sentinel's seed and difficulty, solved in `executor`, and the
    attempts it took; ProofOfWorkFailed when the difficulty is refused or the attempts run out."""
    check_difficulty(difficulty, limits)
    loop = asyncio.get_running_loop()
    solution = await loop.run_in_executor(
        executor, solve, seed, difficulty, telemetry.values(), limits.max_attempts
    )
    if solution.answer is None:
        raise ProofOfWorkFailed(
            f"no proof of work at difficulty {difficulty} within {limits.max_attempts} attempts",
            "exhausted",
        )
    return PROOF_PREFIX + solution.answer, solution.attempts


def _compact(values: Sequence[object]) -> str:
    return json.dumps(list(values), separators=(",", ":"), ensure_ascii=False)
