"""The Platform relay as a user meets it: the official openai SDK pointed at the gateway."""

from __future__ import annotations

import hashlib
import io

import openai
import pytest

from tests.harness import Gateway, Simulator
from tests.secrets_used import API_KEY, INVALID_API_KEY


@pytest.fixture
def client(gateway: Gateway, sim: Simulator) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/platform/v1", api_key=API_KEY, max_retries=0, timeout=30)


def test_chat_completion(client: openai.OpenAI, sim: Simulator) -> None:
    answer = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hello there"}], temperature=0.25
    )
    assert answer.object == "chat.completion"
    assert answer.choices[0].message.content == "echo: hello there"
    assert answer.usage is not None and answer.usage.total_tokens > 0
    (entry,) = sim.journal("platform", "/v1/chat/completions")
    assert ("Authorization", f"Bearer {API_KEY}") in [tuple(h) for h in entry["headers"]]


def test_chat_completion_stream(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "one two three"}], stream=True
    )
    chunks = list(stream)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks)
    assert text == "echo: one two three"
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_completion_plain_and_streamed(client: openai.OpenAI) -> None:
    answer = client.completions.create(model="gpt-3.5-turbo-instruct", prompt="say this", max_tokens=5)
    assert answer.choices[0].text == "echo: say this"
    streamed = client.completions.create(model="gpt-3.5-turbo-instruct", prompt="a b", stream=True)
    assert "".join(chunk.choices[0].text for chunk in streamed) == "echo: a b"


def test_embeddings_string_and_list(client: openai.OpenAI) -> None:
    single = client.embeddings.create(model="text-embedding-3-small", input="hello")
    assert len(single.data) == 1 and len(single.data[0].embedding) == 8
    several = client.embeddings.create(model="text-embedding-3-small", input=["a", "b", "c"])
    assert [item.index for item in several.data] == [0, 1, 2]


def test_models_list_and_retrieve(client: openai.OpenAI) -> None:
    ids = [model.id for model in client.models.list()]
    assert "gpt-4o-mini" in ids
    assert client.models.retrieve("gpt-4o").id == "gpt-4o"
    with pytest.raises(openai.NotFoundError) as raised:
        client.models.retrieve("no-such-model")
    assert raised.value.code == "model_not_found"


def test_images_large_body(client: openai.OpenAI) -> None:
    # Five 256 KiB images in base64: a body well over fetch.buffer_size, relayed as it arrives.
    answer = client.images.generate(prompt="a cat", n=5, response_format="b64_json")
    images = answer.data or []
    assert len(images) == 5
    assert all(len(item.b64_json or "") > 300_000 for item in images)


def test_moderations(client: openai.OpenAI) -> None:
    answer = client.moderations.create(input="I will kill the process")
    assert answer.results[0].flagged is True


def test_files_upload_and_list(client: openai.OpenAI, sim: Simulator) -> None:
    content = bytes(range(256)) * 40 + b"\r\n--not-a-boundary\r\n"
    uploaded = client.files.create(file=("data.jsonl", io.BytesIO(content)), purpose="fine-tune")
    assert uploaded.bytes == len(content)
    assert uploaded.model_dump()["sha256"] == hashlib.sha256(content).hexdigest()
    assert uploaded.id in [item.id for item in client.files.list()]
    (entry,) = sim.journal("platform", "/v1/files")[:1]
    content_type = dict((k.lower(), v) for k, v in entry["headers"])["content-type"]
    assert content_type.startswith("multipart/form-data; boundary=")


def test_invalid_key_is_the_upstreams_error(gateway: Gateway) -> None:
    client = openai.OpenAI(base_url=gateway.url + "/platform/v1", api_key=INVALID_API_KEY, max_retries=0)
    with pytest.raises(openai.AuthenticationError) as raised:
        client.models.list()
    assert raised.value.status_code == 401
    assert raised.value.code == "invalid_api_key"
