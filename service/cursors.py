"""Opaque cursors: text that only this service reads back, sent as unpadded base64url.

The one rule for the lists that page by more than a number (the events feed and deliveries,
subscriptions, agreements, the audit's usage report): what a cursor holds is each list's
own, how it travels is this."""

from __future__ import annotations

import base64
import binascii

from service.errors import bad_cursor

# What the OpenAPI document says of the cursor of a list that refuses an empty one (every
# cursor given is non-empty). The refusal is ``invalid-cursor`` (``bad_cursor``), as for any
# cursor the list did not give, so a parameter carries this as documentation only.
NON_EMPTY_CURSOR_SCHEMA = {"minLength": 1}


def encode_text(text: str) -> str:
    """``text`` (printable ASCII) as a cursor."""
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_text(cursor: str, loc: list[str | int] | None = None) -> str:
    """The text a cursor holds, or the 400 of a cursor this service did not give (naming
    ``loc``, ``["query", "cursor"]`` unless told, never the value). Only the base64url
    alphabet is read (``urlsafe_b64decode`` would drop other characters, so that "!!" read
    as no cursor at all), and only printable ASCII comes back: every cursor given holds
    it, and a forged one might hold a NUL, which PostgreSQL cannot even take as text."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        decoded = base64.b64decode(padded, altchars=b"-_", validate=True).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise bad_cursor(loc) from None
    if not decoded.isascii() or not decoded.isprintable():
        raise bad_cursor(loc)
    return decoded
