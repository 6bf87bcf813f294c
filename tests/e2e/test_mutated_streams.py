"""Ten thousand mutated upstream SSE streams: every one terminates, none crashes or hangs the gateway."""

from __future__ import annotations

import http.client
import json
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.harness import Gateway, Simulator, metric_value, wait_for
from tests.secrets_used import API_KEY

TOTAL = 10_000


def one_stream(port: int, seed: int) -> str:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    body = json.dumps({"model": f"mutate-{seed}", "stream": True, "messages": []})
    try:
        connection.request(
            "POST",
            "/platform/v1/chat/completions",
            body=body,
            headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"},
        )
        answer = connection.getresponse()
        data = answer.read()  # raises if the stream does not end properly
        if answer.status != 200:
            return f"status {answer.status}"
        if b"event: error\ndata: " in data:
            code = json.loads(data.rsplit(b"event: error\ndata: ", 1)[1].split(b"\n", 1)[0])["error"]["code"]
            return f"error event {code}"
        return "complete"
    finally:
        connection.close()


@pytest.mark.timeout(600)
def test_ten_thousand_mutated_streams_all_terminate(
    make_gateway: Callable[..., Gateway], sim: Simulator
) -> None:
    gw = make_gateway(
        {"fetch": {"idle_timeout": 1}, "streams": {"max_event_size": 65536, "keepalive_interval": 0}}
    )
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=48) as pool:
        outcomes = Counter(pool.map(lambda seed: one_stream(gw.port, seed), range(TOTAL)))
    elapsed = time.monotonic() - started
    print(f"\n{TOTAL} mutated streams in {elapsed:.1f} s: {dict(outcomes)}")
    assert sum(outcomes.values()) == TOTAL
    assert set(outcomes) <= {
        "complete",
        "error event upstream_unreachable",
        "error event upstream_timeout",
        "error event upstream_bad_stream",
    }, outcomes
    assert outcomes["complete"] > TOTAL // 2
    wait_for(
        lambda: metric_value(gw.metrics(), "tornadoproxy_streams_active") == 0, what="no stream left open"
    )
    assert gw.process.poll() is None
    log = gw.log_text()
    assert "Traceback" not in log and '"level":"error"' not in log
