"""The web answer reader: v1 reducer on handcrafted sequences of the spec, both framings, errors,
finish reasons, and (hypothesis) any chunking and either framing giving the same text."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.simulator.webanswers import full_message_events, sse, v1_events
from tornadoproxy.imitate.delta import DeltaDocuments
from tornadoproxy.imitate.reader import WebAnswerReader, WebStreamFailure

USER = {"id": "u1", "author": {"role": "user"}, "content": {"content_type": "text", "parts": ["hi"]}}


def read(stream: str | bytes, cuts: list[int] | None = None) -> tuple[WebAnswerReader, list[str]]:
    data = stream.encode() if isinstance(stream, str) else stream
    reader = WebAnswerReader()
    pieces: list[str] = []
    start = 0
    for cut in sorted(set(cuts or [])) + [len(data)]:
        pieces += reader.feed(data[start:cut])
        start = cut
    return reader, pieces


def test_v1_operations_as_the_spec_states_them() -> None:
    docs = DeltaDocuments()
    assert docs.apply({"p": "", "o": "add", "v": {"a": "x", "l": [1], "m": {"k": 1}}, "c": 3}) == 3
    docs.apply({"p": "/a", "o": "append", "v": "y"})  # string concatenation, current c
    docs.apply({"v": "z"})  # sticky p and o
    docs.apply({"p": "/l", "o": "append", "v": [2, 3]})  # list extended by a list
    docs.apply({"v": 4})  # ... and pushed any other value
    docs.apply({"v": [5]})
    docs.apply({"p": "/m", "o": "append", "v": {"j": 2}})  # object merge
    docs.apply({"p": "/l/-", "o": "add", "v": 6})
    docs.apply({"p": "/l/0", "o": "replace", "v": 0})
    docs.apply({"p": "/l", "o": "truncate", "v": 4})
    docs.apply({"p": "/m/k", "o": "remove"})
    assert docs.documents[3] == {"a": "xyz", "l": [0, 2, 3, 4], "m": {"j": 2}}
    assert docs.skipped == 0


def test_v1_patch_with_and_without_p_and_bare_leaves_the_sticky_op_alone_inside() -> None:
    docs = DeltaDocuments()
    docs.apply({"p": "", "o": "add", "v": {"t": "", "s": "in_progress"}, "c": 0})
    docs.apply({"p": "/t", "o": "append", "v": "a"})
    docs.apply(
        {
            "p": "",
            "o": "patch",
            "v": [{"p": "/t", "o": "append", "v": "b"}, {"p": "/s", "o": "replace", "v": "x"}],
        }
    )
    docs.apply({"v": [{"p": "/t", "o": "append", "v": "c"}]})  # bare: the sticky o is now patch
    docs.apply({"o": "patch", "v": [{"p": "/t", "o": "append", "v": "d"}]})  # patch without p
    assert docs.documents[0] == {"t": "abcd", "s": "x"}
    docs.apply({"p": "/t", "o": "append", "v": "e"})
    docs.apply({"v": "f"})
    assert docs.documents[0]["t"] == "abcdef" and docs.skipped == 0


def test_v1_documents_by_c_short_install_and_no_reset_on_install() -> None:
    docs = DeltaDocuments()
    docs.apply({"p": "", "o": "add", "v": {"t": "sys"}, "c": 0})
    docs.apply({"p": "/t", "o": "append", "v": "!"})
    assert docs.apply({"v": {"t": "new"}, "c": 1}) == 1  # the short form installs document 1
    docs.apply({"v": "?"})  # sticky p/o survive the install, and apply to the current document (1)
    docs.apply({"v": "#", "c": 0})
    assert docs.documents == {0: {"t": "sys!#"}, 1: {"t": "new?"}}


def test_v1_operations_that_cannot_apply_are_skipped_and_counted() -> None:
    docs = DeltaDocuments()
    assert docs.apply({"v": "text before any document"}) is None
    docs.apply({"p": "", "o": "add", "v": {"t": "a", "n": 1}, "c": 0})
    for bad in (
        {"p": "/missing/deeper", "o": "replace", "v": 1},
        {"p": "/n", "o": "append", "v": "x"},  # a number cannot be appended to
        {"p": "/t", "o": "truncate", "v": "2"},
        {"p": "t", "o": "add", "v": 1},  # not a JSON pointer
        {"p": "/t", "o": "frobnicate", "v": 1},
        {"c": "0", "v": "x"},
    ):
        assert docs.apply(bad) is None, bad
    assert docs.documents[0] == {"t": "a", "n": 1} and docs.skipped == 7


def test_only_assistant_documents_are_the_answer() -> None:
    reader, pieces = read("".join(v1_events("conv", "a1", USER, ["Hel", "lo", " there"])))
    assert pieces == ["Hel", "lo", " there"]
    end = reader.end()
    assert (end.finish_reason, end.upstream_finish, end.expected) == ("stop", "stop", True)
    assert reader.conversation_id == "conv" and reader.message_id == "a1" and reader.framing == "v1"


def test_full_message_framing_and_repeated_events_do_not_repeat_text() -> None:
    events = full_message_events("conv", "a1", ["Hel", "lo", "!"])
    reader, pieces = read("".join(events[:2] + events[1:]))  # the first text event twice
    assert "".join(pieces) == "Hello!" and reader.framing == "full" and reader.end().finish_reason == "stop"


@pytest.mark.parametrize("events", [full_message_events, v1_events])
def test_max_tokens_is_length_and_an_unknown_finish_is_stop_but_flagged(events: Any) -> None:
    args = ("conv", "a1") if events is full_message_events else ("conv", "a1", USER)
    reader, _ = read("".join(events(*args, ["x"], finish="max_tokens")))
    assert reader.end().finish_reason == "length" and reader.end().expected
    reader, _ = read("".join(events(*args, ["x"], finish="interrupted")))
    end = reader.end()
    assert end.finish_reason == "stop" and not end.expected and end.upstream_finish == "interrupted"


@pytest.mark.parametrize("framing", ["full", "v1"])
def test_in_stream_error_is_a_typed_failure(framing: str) -> None:
    stream = (
        full_message_events("c", "a", ["a", "b", "c"], error_at=1)
        if framing == "full"
        else v1_events("c", "a", USER, ["a", "b", "c"], error_at=1)
    )
    reader = WebAnswerReader()
    pieces: list[str] = []
    with pytest.raises(WebStreamFailure) as caught:
        for event in stream:
            pieces += reader.feed(event.encode())
    assert pieces == ["a"]
    error = caught.value
    assert error.status == 502 and error.code == "upstream_error" and error.kind == "in_stream_error"
    assert "Something went wrong" in error.message


def test_error_in_a_typed_event_or_document_fails_too() -> None:
    with pytest.raises(WebStreamFailure):
        read(sse("v1", "delta_encoding") + sse({"type": "title_generation", "error": {"message": "boom"}}))
    with pytest.raises(WebStreamFailure):
        read(sse({"p": "", "o": "add", "v": {"message": None, "error": "nope"}, "c": 0}, "delta"))
    with pytest.raises(WebStreamFailure) as caught:
        read(sse("{not json", "delta"))
    assert caught.value.kind == "protocol"


def test_no_assistant_text_and_a_cut_stream_are_502() -> None:
    reader, _ = read(
        sse(
            {
                "message": {
                    "id": "u",
                    "author": {"role": "user"},
                    "content": {"content_type": "text", "parts": ["q"]},
                }
            }
        )
        + sse("[DONE]")
    )
    with pytest.raises(WebStreamFailure) as caught:
        reader.end()
    assert caught.value.kind == "empty_answer"
    cut = v1_events("c", "a", USER, ["one ", "two ", "three"])[:-6]  # before the final patch
    reader, pieces = read("".join(cut))
    assert pieces == ["one ", "two "]
    with pytest.raises(WebStreamFailure) as caught:
        reader.end()
    assert caught.value.kind == "cut"


def test_tool_calls_hidden_content_and_events_after_done_are_not_text() -> None:
    tool = {
        "id": "t",
        "author": {"role": "assistant"},
        "recipient": "python",
        "content": {"content_type": "code", "text": "1+1"},
    }
    thoughts = {
        "id": "h",
        "author": {"role": "assistant"},
        "content": {"content_type": "thoughts", "thoughts": []},
    }
    stream = (
        sse({"message": tool}) + sse({"message": thoughts}) + "".join(full_message_events("c", "a", ["ok"]))
    )
    reader, pieces = read(
        stream
        + sse(
            {
                "message": {
                    "id": "late",
                    "author": {"role": "assistant"},
                    "content": {"content_type": "text", "parts": ["late"]},
                }
            }
        )
    )
    assert pieces == ["ok"] and reader.complete


def test_named_events_pings_comments_and_multiline_data_are_read_per_sse() -> None:
    doc = json.dumps(
        {
            "message": {
                "id": "a",
                "author": {"role": "assistant"},
                "content": {"content_type": "text", "parts": ["héllo"]},
                "status": "finished_successfully",
                "end_turn": True,
                "metadata": {"finish_details": {"type": "stop"}},
            }
        }
    )
    cut = doc.index(", ", len(doc) // 2) + 1  # between two members: one JSON value over two lines
    head, tail = doc[:cut], doc[cut:]
    stream = (
        ": comment\r\nevent: ping\r\ndata: 2024-01-01 00:00:00\r\n\r\n"
        f"data: {head}\ndata: {tail}\n\n"
        'event: title_generation\ndata: {"title": "x"}\n\ndata: [DONE]\n\n'
    )
    reader, pieces = read(stream)
    assert pieces == ["héllo"] and reader.complete and reader.end().expected


# --- properties -------------------------------------------------------------------------------

texts = st.lists(
    st.text(
        alphabet=st.sampled_from(["a", " ", "é", "€", "𝄞", "你", "\n", "\r", '"', "\\", "ß", "😀"]),
        min_size=1,
        max_size=6,
    ),
    min_size=1,
    max_size=8,
)


def crlf(stream: str, mask: list[bool]) -> str:
    """Some line ends as CRLF: the reader must not care."""
    lines = stream.split("\n")
    return (
        "".join(line + ("\r\n" if mask[i % len(mask)] else "\n") for i, line in enumerate(lines[:-1]))
        + lines[-1]
    )


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    texts,
    st.lists(st.integers(min_value=0, max_value=5000), max_size=30),
    st.lists(st.booleans(), min_size=1, max_size=5),
    st.booleans(),
)
def test_any_chunking_gives_the_same_text_and_deltas_in_both_framings(
    pieces: list[str], cuts: list[int], mask: list[bool], v1: bool
) -> None:
    events = v1_events("c", "a", USER, pieces) if v1 else full_message_events("c", "a", pieces)
    data = crlf("".join(events), mask).encode()
    whole_reader, whole = read(data)
    reader, split = read(data, [cut % (len(data) + 1) for cut in cuts])
    assert "".join(split) == "".join(whole) == "".join(pieces)
    assert all(split) and reader.end() == whole_reader.end()


@settings(max_examples=100, deadline=None)
@given(texts, st.sampled_from(["stop", "max_tokens"]))
def test_the_reducer_and_the_full_message_path_agree(pieces: list[str], finish: str) -> None:
    full_reader, full = read("".join(full_message_events("c", "a", pieces, finish=finish)))
    v1_reader, v1 = read("".join(v1_events("c", "a", USER, pieces, finish=finish)))
    assert "".join(full) == "".join(v1) == "".join(pieces)
    assert full_reader.end() == v1_reader.end()
    assert (full_reader.conversation_id, full_reader.message_id) == (
        v1_reader.conversation_id,
        v1_reader.message_id,
    )


def v1_sticky_stream(pieces: list[str], forms: list[int]) -> str:
    """The same answer with the text delivered in every form the spec allows for the sticky state:
    explicit append, bare append, patch with p "", patch without p, bare patch; with metadata ops
    in between that move the sticky p/o away from the text."""
    events = [
        sse("v1", "delta_encoding"),
        sse(
            {
                "p": "",
                "o": "add",
                "v": {
                    "message": {
                        "id": "a",
                        "author": {"role": "assistant"},
                        "content": {"content_type": "text", "parts": [""]},
                        "status": "in_progress",
                        "metadata": {},
                    },
                    "conversation_id": "c",
                    "error": None,
                },
                "c": 0,
            },
            "delta",
        ),
    ]
    sticky: tuple[str, str] = ("", "add")
    text_path = "/message/content/parts/0"
    for index, piece in enumerate(pieces):
        form = forms[index % len(forms)] % 6
        append = {"p": text_path, "o": "append", "v": piece}
        if form == 1 and sticky == (text_path, "append"):
            delta: dict[str, Any] = {"v": piece}
        elif form == 2:
            delta, sticky = {"p": "", "o": "patch", "v": [append]}, ("", "patch")
        elif form == 3:
            delta, sticky = {"o": "patch", "v": [append]}, (sticky[0], "patch")
        elif form == 4 and sticky[1] == "patch":
            delta = {"v": [append]}
        elif form == 5:
            events.append(sse({"p": "/message/metadata", "o": "append", "v": {"n": index}}, "delta"))
            delta, sticky = append, (text_path, "append")
        else:
            delta, sticky = append, (text_path, "append")
        events.append(sse(delta, "delta"))
    finish = [
        {"p": "/message/status", "o": "replace", "v": "finished_successfully"},
        {"p": "/message/end_turn", "o": "replace", "v": True},
        {"p": "/message/metadata", "o": "append", "v": {"finish_details": {"type": "stop"}}},
    ]
    events += [
        sse({"p": "", "o": "patch", "v": finish}, "delta"),
        sse({"type": "message_stream_complete", "conversation_id": "c"}),
        sse("[DONE]"),
    ]
    return "".join(events)


@settings(max_examples=150, deadline=None)
@given(texts, st.lists(st.integers(min_value=0, max_value=5), min_size=1, max_size=8))
def test_every_sticky_form_of_v1_text_gives_the_same_answer(pieces: list[str], forms: list[int]) -> None:
    reader, out = read(v1_sticky_stream(pieces, forms))
    assert "".join(out) == "".join(pieces) and reader.skipped_operations == 0
    assert reader.end().expected
