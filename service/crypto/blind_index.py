"""Blind index: a keyed hash of a normalised value, to find a citizen without decrypting.

The per-field key is derived with HKDF-SHA256 from a blind-index root that is separate
from every encryption key, so an index says nothing about ciphertexts and one field's
index cannot be matched against another's. Pure: no I/O.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import unicodedata
from collections.abc import Callable

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from service.crypto.material import KeyMaterial

BLIND_INDEX_BYTES = 16
_FIELD_INFO = b"tellonce/blind-index/field/v1/"


# Version 2 drops format (Cf) and control (Cc) characters; version 1 kept them, so an id
# with a zero-width space indexed apart from the same id without. Version 3 drops whitespace
# inside the value too; version 2 kept it, so "AB 12 34 56 C" indexed apart from
# "AB123456C". Version 4 drops every default-ignorable code point as well; version 3 kept
# those that are not format characters (the combining grapheme joiner, variation selectors,
# Mongolian free variation selectors, Khmer inherent vowels, Hangul fillers), so an id
# followed by U+034F indexed apart from the same id without. Version 4 also writes every
# decimal digit as its ASCII digit (``ascii_digits``); version 3 kept them, so "ZX9Q7731"
# written with Arabic-Indic digits (U+0660..U+0669) indexed apart from it. Rows carry the
# version their index was computed with; `tellonce records reindex` rebuilds the indexes
# of older versions.
NORMALISATION_VERSION = 4

# Unicode's White_Space property (PropList.txt): the ASCII spaces and line ends, NEL, the
# no-break, ogham, en to hair, narrow no-break, medium mathematical and ideographic spaces,
# and the line and paragraph separators. Never part of an identifier, wherever it stands.
WHITESPACE = frozenset(
    "\t\n\v\f\r \x85\xa0\u1680"
    "\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000"
)


# Unicode's Default_Ignorable_Code_Point property (DerivedCoreProperties.txt): code points
# that display as nothing at all unless a renderer supports them, so two ids differing only
# by them print the same. Most are format characters (U+00AD, U+200B..U+200F, U+2060..,
# U+FEFF, the tags); the rest are combining marks (U+034F, U+17B4..U+17B5, U+180B..U+180D,
# U+180F, the variation selectors), the Hangul fillers, and ranges reserved as ignorable
# (U+2065, U+FFF0..U+FFF8, U+E0000..U+E0FFF). The property is stable for assigned code
# points and its reserved ranges are fixed, so the index does not move with the Unicode
# version.
_DEFAULT_IGNORABLE_RANGES = (
    (0x00AD, 0x00AD),
    (0x034F, 0x034F),
    (0x061C, 0x061C),
    (0x115F, 0x1160),
    (0x17B4, 0x17B5),
    (0x180B, 0x180F),
    (0x200B, 0x200F),
    (0x202A, 0x202E),
    (0x2060, 0x206F),
    (0x3164, 0x3164),
    (0xFE00, 0xFE0F),
    (0xFEFF, 0xFEFF),
    (0xFFA0, 0xFFA0),
    (0xFFF0, 0xFFF8),
    (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A),
    (0xE0000, 0xE0FFF),
)
DEFAULT_IGNORABLE = frozenset(
    chr(code) for first, last in _DEFAULT_IGNORABLE_RANGES for code in range(first, last + 1)
)


def invisible(ch: str) -> bool:
    """Whether ``ch`` prints as nothing and is never part of an identifier: a format (Cf) or
    control (Cc) character, or any other default-ignorable code point. The one rule that
    the blind index drops and an identifier's validation (records.values) refuses."""
    return ch in DEFAULT_IGNORABLE or unicodedata.category(ch) in ("Cf", "Cc")


@functools.cache
def _digits() -> dict[int, str]:
    """Every decimal digit of another script (Unicode category Nd: Arabic-Indic, Devanagari,
    Thai...) to its ASCII digit. NFKC already folds the compatibility forms (fullwidth,
    mathematical and circled digits, superscripts); these are digits in their own right.
    Made on first use (a walk of every code point, about 0.1 s), not at import."""
    return {
        code: str(unicodedata.decimal(chr(code)))
        for code in range(0x80, 0x110000)
        if unicodedata.category(chr(code)) == "Nd"
    }


def ascii_digits(text: str) -> str:
    """``text`` with each decimal digit written as its ASCII digit: an identifier's number
    is the same number in any script, as its blind index and stored spelling say."""
    return text if text.isascii() else text.translate(_digits())


def without_whitespace(text: str) -> str:
    """``text`` with every whitespace character removed: the one whitespace rule, which
    the blind index and the stored spelling of an identifier (records.values) share."""
    return "".join(ch for ch in text if ch not in WHITESPACE)


def normalise(value: str) -> str:
    """NFKC, without whitespace or invisible characters (format, control or otherwise
    default-ignorable), decimal digits in ASCII, case-folded. NFKC runs again
    after folding: folding can denormalise, and so can dropping a character between a
    letter and its combining mark."""
    if value.isascii() and value.isprintable():
        # Printable ASCII (most identifiers): NFKC leaves it as it is, it holds no invisible
        # character, its only whitespace is the space, and folding is lower().
        # The same result, several times faster.
        return value.lower().replace(" ", "")
    return normalise_unicode(value)


def normalise_unicode(value: str) -> str:
    """``normalise`` for any text, step by step."""
    composed = unicodedata.normalize("NFKC", value)
    visible = "".join(ch for ch in without_whitespace(ascii_digits(composed)) if not invisible(ch))
    return unicodedata.normalize("NFKC", visible.casefold())


class BlindIndexer:
    """Computes blind indexes; holds one derived HMAC key per field, made on first use."""

    __slots__ = ("_field_key", "_field_macs")

    def __init__(self, root: KeyMaterial) -> None:
        if len(root) != 32:
            raise ValueError("the blind-index root is 32 bytes")

        def hkdf_field_key(field: str) -> bytes:
            return HKDF(
                algorithm=hashes.SHA256(), length=32, salt=None, info=_FIELD_INFO + field.encode()
            ).derive(root.reveal())

        self._field_key: Callable[[str], bytes] = hkdf_field_key
        self._field_macs: dict[str, hmac.HMAC] = {}

    @classmethod
    def from_field_keys(cls, field_key: Callable[[str], bytes]) -> BlindIndexer:
        """An indexer whose per-field keys come from elsewhere (an HSM holding the root)."""
        indexer = cls.__new__(cls)
        indexer._field_key = field_key
        indexer._field_macs = {}
        return indexer

    def _field_mac(self, field: str) -> hmac.HMAC:
        mac = self._field_macs.get(field)
        if mac is None:
            mac = hmac.new(self._field_key(field), digestmod=hashlib.sha256)
            self._field_macs[field] = mac
        return mac

    def index(self, field: str, value: str) -> bytes:
        mac = self._field_mac(field).copy()
        mac.update(normalise(value).encode())
        return mac.digest()[:BLIND_INDEX_BYTES]

    def __repr__(self) -> str:
        return f"BlindIndexer(fields={len(self._field_macs)})"
