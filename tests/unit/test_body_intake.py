"""The buffer of a request body in reception (body_intake.BodyBuffer)."""

from __future__ import annotations

from tornadoproxy.web.body_intake import BodyBuffer


def test_a_body_in_one_piece_is_kept_as_given() -> None:
    buffer = BodyBuffer(limit=10)
    piece = b"0123456789"
    assert buffer.add(piece)
    assert buffer.value() is piece  # no copy for the common case


def test_pieces_are_joined_and_the_limit_counts_all_of_them() -> None:
    buffer = BodyBuffer(limit=10)
    assert buffer.add(b"0123") and buffer.add(b"4567") and len(buffer) == 8
    assert buffer.value() == b"01234567" and isinstance(buffer.value(), bytes)
    assert not buffer.add(b"89a")  # 11 bytes: refused, and what was held is dropped
    assert len(buffer) == 0 and buffer.value() == b""


def test_clear_drops_the_body() -> None:
    buffer = BodyBuffer(limit=100)
    buffer.add(b"a" * 50)
    buffer.add(b"b" * 50)
    buffer.clear()
    assert buffer.value() == b""
