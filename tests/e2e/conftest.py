"""Fixtures of the end-to-end tests beyond the shared ones: the real egress proxies, and official
openai SDK clients of /imitate."""

from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest

from tests.egress_fixtures import proxies as proxies
from tests.harness import Gateway


@pytest.fixture
def imitate_sdk() -> Iterator[Callable[..., openai.OpenAI]]:
    """Make official openai SDK clients of a gateway's /imitate/v1 (`make(gateway, key, **options)`);
    each is closed, its connections too, after the test."""
    made: list[openai.OpenAI] = []

    def make(gw: Gateway, key: str, **options: Any) -> openai.OpenAI:
        client = openai.OpenAI(
            base_url=gw.url + "/imitate/v1", api_key=key, max_retries=0, timeout=30, **options
        )
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()
