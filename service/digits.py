"""Decimal numbers in text from outside (cursors, forms, tile paths, witnesses' answers).

``str.isdigit`` is true for more than the ASCII digits: for superscripts such as "²",
which ``int`` then refuses (a 500 where the caller was due a 4xx), and for other
scripts' decimal digits such as "٣", which ``int`` reads as numbers, so that one number
would have several spellings. The service's numbers are ASCII digits only.
"""

from __future__ import annotations


def ascii_digits(text: str) -> bool:
    """Whether ``text`` is one or more of the ASCII digits 0 to 9."""
    return text.isascii() and text.isdigit()


def bounded_decimal(text: str, maximum: int) -> int | None:
    """``text`` as a number, if it is ASCII digits without a leading zero (``0`` aside) and
    at most ``maximum``; else None.

    The length is checked before ``int`` reads it: ``int`` refuses (``ValueError``, a 500
    where the caller was due a 4xx) a number of over 4,300 digits.
    """
    if not ascii_digits(text) or (len(text) > 1 and text[0] == "0") or len(text) > len(str(maximum)):
        return None
    value = int(text)
    return value if value <= maximum else None
