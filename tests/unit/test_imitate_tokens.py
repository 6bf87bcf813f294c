"""Token counts: the shipped o200k_base loads with no network and counts as OpenAI does; the
estimate's distance from it, measured on real text."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.harness import ROOT
from tornadoproxy.imitate.request import ChatMessage
from tornadoproxy.imitate.tokens import EstimateCounter, estimate_tokens, load_counter, prompt_tokens

SAMPLES = {
    "ru": "Шлюз работает на небольшом сервере месяцами, и операторы следят за ним в Grafana. Каждая ошибка "
    "должна быть понятной, а ответы не должны повторяться или теряться.",
    "de": "Das Gateway läuft monatelang auf einem kleinen Server, und die Betreiber beobachten es in "
    "Grafana. Jeder Fehler muss verständlich sein, und Antworten dürfen sich weder wiederholen noch "
    "verloren gehen.",
    "zh": "这个网关在一台小型服务器上运行数月，运维人员在 Grafana 中观察它。"
    "每个错误都必须清楚易懂，回答既不能重复也不能丢失。",
    "ja": "このゲートウェイは小さなサーバーで何か月も動き、運用者は Grafana で監視します。"
    "どのエラーも分かりやすく、回答が繰り返されたり失われたりしてはいけません。",
    "es": "La pasarela funciona durante meses en un servidor pequeño y los operadores la vigilan en Grafana. "
    "Cada error debe ser claro y las respuestas no deben repetirse ni perderse.",
}


@pytest.fixture(scope="module")
def counter():
    # Any attempt to open a socket while loading fails the test: the encoding must come from our data.
    original = socket.socket

    def refuse(*args, **kwargs):
        raise AssertionError("the tokenizer tried to use the network")

    socket.socket = refuse  # type: ignore[misc,assignment]
    try:
        return load_counter()
    finally:
        socket.socket = original  # type: ignore[misc]


def test_counts_are_o200k_bases(counter) -> None:
    # o200k_base's ids, as tiktoken gives them: [13225, 11, 2375, 0, 14917, 131903, 37934, 220, 177519].
    assert counter.count("Hello, world! Привет мир 你好") == 9
    assert counter.count("") == 0
    assert counter.count("<|endoftext|>") > 1  # special-token text is ordinary text from a client


def test_prompt_tokens_follow_openais_chat_rule(counter) -> None:
    messages = (ChatMessage("system", ("Be brief.",)), ChatMessage("user", ("Hello", " there")))
    text_tokens = counter.count("Be brief.") + counter.count("Hello") + counter.count(" there")
    assert prompt_tokens(counter, messages) == text_tokens + 2 * (3 + 1) + 3


def corpus() -> dict[str, str]:
    texts = dict(SAMPLES)
    texts["README"] = (ROOT / "README.md").read_text()
    texts["code"] = "".join(path.read_text() for path in sorted((ROOT / "tornadoproxy").glob("*.py"))[:10])
    texts["simulator"] = Path(ROOT / "tests" / "simulator" / "chatgpt.py").read_text()
    return texts


def test_the_estimate_stays_within_its_documented_distance(counter) -> None:
    report = []
    for name, text in corpus().items():
        exact, estimate = counter.count(text), estimate_tokens(text)
        error = (estimate - exact) / exact
        report.append(f"{name}: exact {exact}, estimate {estimate} ({error:+.0%})")
        assert abs(error) <= 0.35, report[-1]
    assert EstimateCounter().count("abcd") == 1
