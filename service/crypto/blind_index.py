"""Blind index: a keyed hash of a normalised value, to find a citizen without decrypting.

The per-field key is derived with HKDF-SHA256 from a blind-index root that is separate
from every encryption key, so an index says nothing about ciphertexts and one field's
index cannot be matched against another's. Pure: no I/O.
"""

from __future__ import annotations

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
# "AB123456C". Rows carry the version their index was computed with; `tellonce records
# reindex` rebuilds the indexes of older versions.
NORMALISATION_VERSION = 3

# Unicode's White_Space property (PropList.txt): the ASCII spaces and line ends, NEL, the
# no-break, ogham, en to hair, narrow no-break, medium mathematical and ideographic spaces,
# and the line and paragraph separators. Never part of an identifier, wherever it stands.
WHITESPACE = frozenset(
    "\t\n\v\f\r \x85\xa0\u1680"
    "\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000"
)


def without_whitespace(text: str) -> str:
    """``text`` with every whitespace character removed: the one whitespace rule, which
    the blind index and the stored spelling of an identifier (records.values) share."""
    return "".join(ch for ch in text if ch not in WHITESPACE)


def normalise(value: str) -> str:
    """NFKC, without whitespace, format or control characters, case-folded. NFKC runs again
    after folding: folding can denormalise, and so can dropping a character between a
    letter and its combining mark."""
    if value.isascii() and value.isprintable():
        # Printable ASCII (most identifiers): NFKC leaves it as it is, it holds no format
        # or control character, its only whitespace is the space, and folding is lower().
        # The same result, several times faster.
        return value.lower().replace(" ", "")
    return normalise_unicode(value)


def normalise_unicode(value: str) -> str:
    """``normalise`` for any text, step by step."""
    composed = unicodedata.normalize("NFKC", value)
    visible = "".join(
        ch for ch in without_whitespace(composed) if unicodedata.category(ch) not in ("Cf", "Cc")
    )
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
