"""Proof of work: answers the upstream's own check accepts, limits, telemetry, the process pool."""

from __future__ import annotations

import asyncio
import base64
import datetime
import json
import multiprocessing
import random
from concurrent.futures import ProcessPoolExecutor

import pytest

from tornadoproxy.imitate.browser import COUNTER_INDEX, browser_telemetry, js_date_string, platform_of
from tornadoproxy.imitate.proofofwork import (
    PROOF_PREFIX,
    REQUIREMENTS_DIFFICULTY,
    REQUIREMENTS_PREFIX,
    ProofOfWorkFailed,
    ProofOfWorkLimits,
    answer_for,
    check_difficulty,
    expected_attempts,
    is_accepted,
    prove,
    requirements_token,
    solve,
)

CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/150.0.0.0 Safari/537.36"
)
NOW = datetime.datetime(2026, 3, 4, 5, 6, 7, tzinfo=datetime.UTC)


def telemetry(user_agent: str = CHROME, seed: int = 7):
    return browser_telemetry(
        user_agent, session_id="5f1e2d3c-4b5a-4978-8190-a1b2c3d4e5f6", now=NOW, rng=random.Random(seed)
    )


def naive_solve(seed: str, difficulty: str, values: list[object], limit: int) -> int | None:
    """The check written the slow, obvious way: each counter's whole answer hashed from scratch."""
    for counter in range(limit):
        if is_accepted(seed, answer_for(values, counter), difficulty):
            return counter
    return None


@pytest.mark.parametrize("difficulty", ["0fffff", "0ff", "1", "07", "abc", "0a0"])
@pytest.mark.parametrize("seed", ["0.8141", "0.5", "x" * 70])
def test_the_fast_solver_finds_the_first_counter_the_plain_check_accepts(seed: str, difficulty: str) -> None:
    values = telemetry().values()
    expected = naive_solve(seed, difficulty, values, 5000)
    solution = solve(seed, difficulty, values, 5000)
    assert solution.answer is not None and expected is not None
    assert solution.answer == answer_for(values, expected) and solution.attempts == expected + 1
    assert is_accepted(seed, solution.answer, difficulty)


def test_counters_crossing_digit_counts_keep_their_answers_exact() -> None:
    values = telemetry().values()
    # A difficulty nothing meets: every counter up to 1234 is hashed, across 1-4 digit counters.
    assert solve("0.1", "000000000", values, 1234).attempts == 1234
    # Spot-check the alignment bookkeeping: the counter found at difficulty 03 is the plain first one.
    for seed in ("0.11", "0.222", "0.3333"):
        expected = naive_solve(seed, "03", values, 3000)
        assert solve(seed, "03", values, 3000).answer == (
            answer_for(values, expected) if expected is not None else None
        )


def test_the_answer_is_base64_of_the_compact_telemetry_with_the_counter() -> None:
    values = telemetry().values()
    decoded = json.loads(base64.b64decode(answer_for(values, 4242)))
    assert decoded[COUNTER_INDEX] == 4242 and decoded[4] == CHROME
    compact = json.dumps(
        [*values[:COUNTER_INDEX], 1, *values[COUNTER_INDEX + 1 :]], separators=(",", ":"), ensure_ascii=False
    )  # UTF-8, as the web client encodes it before base64
    assert base64.b64decode(answer_for(values, 1)) == compact.encode()


def test_giving_up_after_max_attempts() -> None:
    solution = solve("0.1", "0000000000", telemetry().values(), 300)
    assert solution.answer is None and solution.attempts == 300


def test_difficulties_harder_than_the_limit_or_malformed_are_refused_before_solving() -> None:
    limits = ProofOfWorkLimits(max_attempts=10, hardest_difficulty="0003ff")
    check_difficulty("0003ff", limits)
    check_difficulty("0fff", limits)  # 16 expected attempts: fine at any length
    for difficulty, reason in (
        ("0003fe", "too_hard"),
        ("00003a", "too_hard"),
        ("XYZ", "malformed"),
        ("", "malformed"),
    ):
        with pytest.raises(ProofOfWorkFailed) as caught:
            check_difficulty(difficulty, limits)
        assert caught.value.reason == reason and caught.value.status == 502
    assert expected_attempts("0fffff") == 16 and expected_attempts("00003a") == 16**6 / 59


def test_requirements_token_meets_the_easy_difficulty() -> None:
    token = requirements_token(telemetry(), "0.42")
    assert token.startswith(REQUIREMENTS_PREFIX)
    assert is_accepted("0.42", token[len(REQUIREMENTS_PREFIX) :], REQUIREMENTS_DIFFICULTY)


def test_prove_runs_in_a_process_pool_and_honours_its_limits() -> None:
    limits = ProofOfWorkLimits(max_attempts=50_000, hardest_difficulty="00ffff")
    context = multiprocessing.get_context("spawn")  # what the gateway uses: no fork of a live loop

    async def run(executor: ProcessPoolExecutor) -> tuple[str, int]:
        return await prove(executor, "0.77", "03ffff", telemetry(), limits)

    with ProcessPoolExecutor(max_workers=1, mp_context=context) as executor:
        token, attempts = asyncio.run(run(executor))
        assert token.startswith(PROOF_PREFIX) and attempts >= 1
        assert is_accepted("0.77", token[len(PROOF_PREFIX) :], "03ffff")
        with pytest.raises(ProofOfWorkFailed) as caught:
            asyncio.run(prove(executor, "0.77", "0000ff", telemetry(), limits))  # too hard
        assert caught.value.reason == "too_hard"
        exhausted = ProofOfWorkLimits(max_attempts=20, hardest_difficulty="000000")
        with pytest.raises(ProofOfWorkFailed) as caught:
            asyncio.run(prove(executor, "0.77", "00000f", telemetry(), exhausted))
        assert caught.value.reason == "exhausted"


@pytest.mark.parametrize(
    ("user_agent", "platform"),
    [
        (CHROME, "windows"),
        (CHROME.replace("Windows NT 10.0; Win64; x64", "Macintosh; Intel Mac OS X 10_15_7"), "mac"),
        (CHROME.replace("Windows NT 10.0; Win64; x64", "X11; Linux x86_64"), "linux"),
    ],
)
def test_telemetry_reads_like_the_browser_the_user_agent_names(user_agent: str, platform: str) -> None:
    assert platform_of(user_agent) == platform
    values = telemetry(user_agent).values()
    assert values[4] == user_agent and values[7] == "en-US" and values[8].startswith("en-US")
    assert values[1] == "Wed Mar 04 2026 05:06:07 GMT+0000 (Coordinated Universal Time)"
    assert values[2] == 4294705152  # Chrome's 64-bit desktop heap limit
    assert values[14] == "5f1e2d3c-4b5a-4978-8190-a1b2c3d4e5f6"
    assert values[17] < NOW.timestamp() * 1000  # the page opened before now
    mac_screens = (2336, 2612, 2792, 3024)
    assert (values[0] in mac_screens) == (platform == "mac")
    assert telemetry(user_agent, seed=1) == telemetry(user_agent, seed=1)


def test_js_date_string_is_utc_whatever_the_input_zone() -> None:
    east = datetime.timezone(datetime.timedelta(hours=3))
    assert js_date_string(datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=east)) == (
        "Fri Jan 02 2026 00:04:05 GMT+0000 (Coordinated Universal Time)"
    )
