"""Cursors the events API hands out: opaque text that only this service reads back
(``service.cursors``). A position in the outbox (``e1:N``) pages the feed and a subscription's
deliveries; a subscription listing pages by creation time and id."""

from __future__ import annotations

from service.cursors import decode_text, encode_text
from service.digits import bounded_decimal
from service.errors import bad_cursor

__all__ = ["decode_position", "decode_text", "encode_position", "encode_text"]

# The largest position the outbox's 64-bit column holds; a cursor past it was never given.
_MAX_POSITION = 2**63 - 1


def encode_position(position: int) -> str:
    return encode_text(f"e1:{position}")


def decode_position(cursor: str, loc: list[str | int]) -> int:
    text = decode_text(cursor, loc)
    prefix, _, number = text.partition(":")
    position = bounded_decimal(number, _MAX_POSITION) if prefix == "e1" else None
    if position is None:
        raise bad_cursor(loc)
    return position
