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
