"""The ChatGPT family end to end: every seed route, body fidelity, both stream framings."""

from __future__ import annotations

import base64
import json
import socket
import uuid

import pytest

from tests.harness import Gateway, Simulator, metric_value, request, streaming, wait_for
from tests.secrets_used import ACCESS_TOKEN, EXPIRED_TOKEN
from tornadoproxy.formats.sse import SSEParser

AUTH = {"Authorization": f"Bearer {ACCESS_TOKEN}"}
JSON = {**AUTH, "Content-Type": "application/json"}
SSE = [["Content-Type", "text/event-stream; charset=utf-8"]]


def conversation_body(
    text: str = "Hello World", model: str = "text-davinci-002-render-sha", **extra: object
) -> dict:
    return {
        "action": "next",
        "messages": [
            {
                "id": str(uuid.uuid4()),
                "author": {"role": "user"},
                "content": {"content_type": "text", "parts": [text]},
            }
        ],
        "parent_message_id": str(uuid.uuid4()),
        "model": model,
        "timezone_offset_min": -60,
        "history_and_training_disabled": False,
        **extra,
    }


def create(gateway: Gateway, body: dict | bytes) -> tuple[str, list]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    answer = request("POST", gateway.url + "/chatgpt/conversation", headers=JSON, body=raw)
    assert answer.status == 200, answer.body
    assert answer.header("Content-Type") == "text/event-stream; charset=utf-8"
    return answer.body.decode(), SSEParser().feed(answer.body)


def upstream_body(sim: Simulator, path: str) -> bytes:
    return base64.b64decode(sim.journal("chatgpt", path)[-1]["body_b64"])


def test_conversation_full_message_framing(gateway: Gateway, sim: Simulator) -> None:
    text, events = create(gateway, conversation_body("Hello World"))
    assert events[0].event == "ping"
    messages = [e.json() for e in events if e.event == "message" and not e.is_done]
    assert messages[-1]["message"]["content"]["parts"] == ["You said: Hello World "]
    assert messages[-1]["message"]["status"] == "finished_successfully"
    assert events[-1].is_done and text.endswith("data: [DONE]\n\n")


def test_conversation_delta_framing(gateway: Gateway, sim: Simulator) -> None:
    _, events = create(gateway, conversation_body("Hi there", model="gpt-4o"))
    assert (events[0].event, events[0].data) == ("delta_encoding", '"v1"')
    deltas = [e.json() for e in events if e.event == "delta"]
    appended = "".join(d["v"] for d in deltas if isinstance(d.get("v"), str))
    assert appended == "You said: Hi there "
    assert any(e.event == "title_generation" for e in events)
    assert events[-1].is_done


@pytest.mark.parametrize("model", ["text-davinci-002-render-sha", "gpt-4o"])
def test_in_stream_error_is_passed_through(gateway: Gateway, sim: Simulator, model: str) -> None:
    _, events = create(gateway, conversation_body("please trigger-error now", model=model))
    assert events[-1].json()["error"].startswith("Something went wrong")


def test_conversation_routes(gateway: Gateway, sim: Simulator) -> None:
    create(gateway, conversation_body("first"))
    listed = request("GET", gateway.url + "/chatgpt/conversations", headers=AUTH).json()
    assert listed["total"] == 1 and listed["offset"] == 0 and listed["limit"] == 20
    ident = listed["items"][0]["id"]
    one = request("GET", gateway.url + f"/chatgpt/conversation/{ident}", headers=AUTH).json()
    assert one["conversation_id"] == ident
    answer_id = one["current_node"]
    title = request(
        "POST",
        gateway.url + f"/chatgpt/conversation/gen_title/{ident}",
        headers=JSON,
        body={"message_id": answer_id},
    )
    assert title.json() == {"title": "A short greeting"}
    feedback = request(
        "POST",
        gateway.url + "/chatgpt/conversation/message_feedback",
        headers=JSON,
        body={"message_id": answer_id, "conversation_id": ident, "rating": "thumbsUp"},
    )
    assert feedback.json()["rating"] == "thumbsUp" and feedback.json()["content"] == "{}"
    for method in ("PATCH", "POST"):  # POST is the alias for clients that cannot PATCH
        renamed = request(
            method,
            gateway.url + f"/chatgpt/conversation/{ident}",
            headers=JSON,
            body={"title": f"via {method}"},
        )
        assert renamed.json() == {"success": True}
        assert (
            request("GET", gateway.url + f"/chatgpt/conversation/{ident}", headers=AUTH).json()["title"]
            == f"via {method}"
        )
    assert [e["method"] for e in sim.journal("chatgpt", f"/backend-api/conversation/{ident}")].count(
        "PATCH"
    ) == 2
    hidden = request(
        "PATCH", gateway.url + f"/chatgpt/conversation/{ident}", headers=JSON, body={"is_visible": False}
    )
    assert hidden.json() == {"success": True}
    assert request("GET", gateway.url + "/chatgpt/conversations", headers=AUTH).json()["total"] == 0


@pytest.mark.parametrize("method", ["PATCH", "POST"])
def test_hide_all(gateway: Gateway, sim: Simulator, method: str) -> None:
    create(gateway, conversation_body("a"))
    create(gateway, conversation_body("b"))
    answer = request(method, gateway.url + "/chatgpt/conversations", headers=JSON, body={"is_visible": False})
    assert answer.json() == {"success": True}
    assert sim.journal("chatgpt", "/backend-api/conversations")[-1]["method"] == "PATCH"
    assert request("GET", gateway.url + "/chatgpt/conversations", headers=AUTH).json()["items"] == []


def test_list_paging_is_validated_and_forwarded(gateway: Gateway, sim: Simulator) -> None:
    request("GET", gateway.url + "/chatgpt/conversations?offset=40&limit=100&order=updated", headers=AUTH)
    assert (
        sim.journal("chatgpt", "/backend-api/conversations")[-1]["query"]
        == "offset=40&limit=100&order=updated"
    )
    request("GET", gateway.url + "/chatgpt/conversations", headers=AUTH)
    assert sim.journal("chatgpt", "/backend-api/conversations")[-1]["query"] == "offset=0&limit=20"
    sim.reset()
    for bad in (
        "limit=0",
        "limit=101",
        "limit=-1",
        "limit=ten",
        "offset=-3",
        "offset=1.5",
        "limit=99999999999",
    ):
        answer = request("GET", gateway.url + f"/chatgpt/conversations?{bad}", headers=AUTH)
        assert answer.status == 400, bad
        assert answer.json()["error"]["code"] == "bad_request"
    assert sim.journal() == []


def test_models_accounts_and_passthrough(gateway: Gateway, sim: Simulator) -> None:
    models = request("GET", gateway.url + "/chatgpt/models", headers=AUTH).json()
    assert models["models"][0]["slug"] == "text-davinci-002-render-sha"
    assert "accounts" in request("GET", gateway.url + "/chatgpt/accounts/check", headers=AUTH).json()
    sim.script(
        "chatgpt", "/backend-api/memories/m-1", {"status": 200, "json": {"deleted": True}}, method="DELETE"
    )
    deleted = request("DELETE", gateway.url + "/chatgpt/backend-api/memories/m-1?scope=all", headers=AUTH)
    assert deleted.json() == {"deleted": True}
    assert sim.journal("chatgpt", "/backend-api/memories/m-1")[0]["query"] == "scope=all"
    missing = request("GET", gateway.url + "/chatgpt/backend-api/not/there", headers=AUTH)
    assert (missing.status, missing.json()) == (404, {"detail": "Not Found"})
    unknown = request("GET", gateway.url + "/chatgpt/conversation/does-not-exist", headers=AUTH)
    assert unknown.status == 404 and unknown.json() == {"detail": "Can't load conversation does-not-exist"}


def test_body_forwarded_as_sent_when_complete(gateway: Gateway, sim: Simulator) -> None:
    raw = json.dumps(
        conversation_body("héllo ✓", unknown_field={"nested": [1, 2.50, None]}), ensure_ascii=False
    )
    raw = raw.replace('"timezone_offset_min": -60', '"timezone_offset_min": -60.0, "ratio": 1.50e0')
    create(gateway, raw.encode())
    assert upstream_body(sim, "/backend-api/conversation") == raw.encode()


def test_missing_author_role_is_filled_and_nothing_else_changes(gateway: Gateway, sim: Simulator) -> None:
    body = conversation_body("no role")
    del body["messages"][0]["author"]["role"]
    raw = json.dumps(body).replace(
        '"timezone_offset_min": -60', '"timezone_offset_min": -60.50, "f": [1.0, 2e3]'
    )
    _, events = create(gateway, raw.encode())
    assert events[-1].is_done
    sent = upstream_body(sim, "/backend-api/conversation").decode()
    assert '"author":{"role":"user"}' in sent
    assert '"timezone_offset_min":-60.50' in sent and '"f":[1.0,2e3]' in sent
    assert json.loads(sent)["messages"][0]["content"]["parts"] == ["no role"]


def test_malformed_conversation_body_is_400_without_upstream_call(gateway: Gateway, sim: Simulator) -> None:
    for raw in (
        b"{not json",
        b'{"messages": NaN}',
        b'{"a": 1, "a": 2}',
        b"[" * 200 + b"]" * 200,
        b"\xff\xfe",
    ):
        answer = request("POST", gateway.url + "/chatgpt/conversation", headers=JSON, body=raw)
        assert answer.status == 400, raw
        assert answer.json()["error"]["code"] == "bad_request"
    assert request("POST", gateway.url + "/chatgpt/conversation", body=b"{}").status == 401
    assert sim.journal() == []


def test_upstream_errors_pass_through(gateway: Gateway, sim: Simulator) -> None:
    expired = request("GET", gateway.url + "/chatgpt/conversations", headers={"Authorization": EXPIRED_TOKEN})
    assert expired.status == 401 and expired.json()["detail"]["code"] == "token_expired"
    busy = {
        "detail": "Only one message at a time. Please allow any other responses to complete before sending "
        "another message, or wait one minute."
    }
    sim.script(
        "chatgpt",
        "/backend-api/conversation",
        {"status": 429, "headers": [["Content-Type", "application/json"]], "json": busy},
    )
    answer = request("POST", gateway.url + "/chatgpt/conversation", headers=JSON, body=conversation_body())
    assert (answer.status, answer.json()) == (429, busy)
    body = conversation_body()
    body["messages"][0]["author"] = "not an object"
    invalid = request("POST", gateway.url + "/chatgpt/conversation", headers=JSON, body=body)
    assert invalid.status == 422 and invalid.json()["detail"][0]["loc"][-1] == "role"


def test_upstream_cookies_never_reach_client_or_next_request(gateway: Gateway, sim: Simulator) -> None:
    first = request("GET", gateway.url + "/chatgpt/models", headers=AUTH)
    assert first.header("Set-Cookie") is None
    request("GET", gateway.url + "/chatgpt/models", headers=AUTH)
    for entry in sim.journal("chatgpt"):
        assert "cookie" not in {name.lower() for name, _ in entry["headers"]}


def test_browser_profile_headers_on_chatgpt_calls(gateway: Gateway, sim: Simulator) -> None:
    request("GET", gateway.url + "/chatgpt/models", headers={**AUTH, "User-Agent": "curl/8", "Accept": "*/*"})
    names = [name.lower() for name, _ in sim.journal("chatgpt")[0]["headers"]]
    values = {name.lower(): value for name, value in sim.journal("chatgpt")[0]["headers"]}
    assert values["user-agent"].startswith("Mozilla/5.0") and "Chrome/" in values["user-agent"]
    # Chromium's fetch() order: platform hint, credentials, User-Agent, then the brands.
    assert names.index("sec-ch-ua-platform") < names.index("authorization") < names.index("user-agent")
    assert names.index("user-agent") < names.index("sec-ch-ua") < names.index("accept")
    assert values["origin"] == sim.urls["chatgpt"]


def test_awkward_splits_byte_exact_on_conversation_stream(gateway: Gateway, sim: Simulator) -> None:
    stream = (
        'event: ping\r\ndata: 2024-01-01 00:00:00\r\n\r\ndata: {"message": {"content": {"parts": '
        '["H\u00e9"]}}, "error": null}\r\n\r\n: comment\n\nevent: delta\ndata: {"v":\n'
        'data: "x"}\n\ndata: [DONE]\r\n\r\n'
    )
    encoded = stream.encode()
    cuts = [3, 14, 15, 40, 41, 52, 53, len(encoded) - 8, len(encoded) - 1]
    pieces = [encoded[a:b] for a, b in zip([0, *cuts], [*cuts, len(encoded)], strict=True)]
    steps: list[dict] = []
    for index, piece in enumerate(pieces):
        steps += [{"b64": base64.b64encode(piece).decode()}, {"gate": f"c{index}"}]
    sim.script("chatgpt", "/backend-api/conversation", {"status": 200, "headers": SSE, "chunks": steps[:-1]})
    with streaming(
        gateway.url + "/chatgpt/conversation", headers=JSON, body=json.dumps(conversation_body())
    ) as answer:
        for index in range(len(pieces) - 1):
            sim.wait_reached(f"c{index}")
            sim.release(f"c{index}")
        assert answer.read() == encoded


def test_lockstep_and_disconnect_on_conversation(gateway: Gateway, sim: Simulator) -> None:
    sim.script(
        "chatgpt",
        "/backend-api/conversation",
        {
            "status": 200,
            "headers": SSE,
            "chunks": [
                {"data": 'data: {"n": 1}\n\n'},
                {"gate": "next"},
                {"data": 'data: {"n": 2}\n\n'},
                {"stall": True},
            ],
        },
    )
    before = metric_value(gateway.metrics(), "tornadoproxy_streams_ended_total", reason="client_gone")
    body = json.dumps(conversation_body())
    sock = socket.create_connection(("127.0.0.1", gateway.port))
    sock.sendall(
        (
            f"POST /chatgpt/conversation HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ACCESS_TOKEN}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n{body}"
        ).encode()
    )
    received = b""
    while b'{"n": 1}' not in received:
        received += sock.recv(65536)
    sim.wait_reached("next")
    assert b'{"n": 2}' not in received  # event 1 arrived while the simulator holds event 2
    sim.release("next")
    while b'{"n": 2}' not in received:
        received += sock.recv(65536)
    sock.close()
    wait_for(
        lambda: any(e["peer_closed_at"] for e in sim.journal("chatgpt")),
        timeout=5,
        what="the upstream connection to close after the client left",
    )
    wait_for(
        lambda: (
            metric_value(gateway.metrics(), "tornadoproxy_streams_ended_total", reason="client_gone")
            == before + 1
        ),
        what="the stream to be counted as client_gone",
    )
