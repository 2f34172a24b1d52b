"""Field AEAD: one value, AES-256-GCM under its citizen's data key. Pure: no I/O.

Ciphertext format, version 1 (all integers big-endian)::

    0x01 | data-key id (8 bytes) | nonce (12 bytes) | ciphertext and 16-byte tag

The associated data binds the format byte, the data-key id, the citizen id, the field
name and the value version, each string length-prefixed so that no two different
contexts share an encoding. A value copied to another citizen, field, version or key
fails its tag check: the caller gets ``CiphertextIntegrityError``, never plaintext.
"""

from __future__ import annotations

import os
import struct
import threading
from typing import NoReturn

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from service.crypto.errors import CiphertextIntegrityError
from service.crypto.material import KeyMaterial

FORMAT_V1 = 0x01
KEY_ID_BYTES = 8
NONCE_BYTES = 12
TAG_BYTES = 16
HEADER_BYTES = 1 + KEY_ID_BYTES
OVERHEAD_BYTES = HEADER_BYTES + NONCE_BYTES + TAG_BYTES
_BODY_START = HEADER_BYTES + NONCE_BYTES
DATA_KEY_BYTES = 32
_MAX_KEY_ID = 2**63 - 1

_LENGTH = struct.Struct(">I")
_VERSION = struct.Struct(">Q")


class DataKey:
    """An unwrapped data key: one per (citizen, owning department).

    ``id`` is the ``data_keys`` row id. The 32 key bytes stay inside; repr and str show
    only the id, department and KEK version. The AESGCM object is built once and kept,
    so a field costs one AEAD call and a few bytes of framing.
    """

    __slots__ = ("_aead", "_header", "_material", "department", "id", "kek_version")

    def __init__(self, id: int, department: str, kek_version: int, material: KeyMaterial | bytes) -> None:
        if not 0 < id <= _MAX_KEY_ID:
            raise ValueError("a data-key id is a positive 63-bit integer")
        secret = material if isinstance(material, KeyMaterial) else KeyMaterial(material)
        if len(secret) != DATA_KEY_BYTES:
            raise ValueError("a data key is 32 bytes")
        self.id = id
        self.department = department
        self.kek_version = kek_version
        self._material = secret
        self._aead = AESGCM(secret.reveal())
        self._header = bytes((FORMAT_V1,)) + id.to_bytes(KEY_ID_BYTES, "big")

    @staticmethod
    def generate_material() -> bytes:
        return AESGCM.generate_key(bit_length=256)

    @property
    def material(self) -> KeyMaterial:
        return self._material

    def __repr__(self) -> str:
        return f"DataKey(id={self.id}, department={self.department!r}, kek_version={self.kek_version})"

    __str__ = __repr__

    def __reduce__(self) -> NoReturn:
        raise TypeError("data keys cannot be pickled")


def _associated_data(header: bytes, citizen_id: str, field: str, version: int) -> bytes:
    """Header (format byte and key id), then citizen, field and version, length-prefixed."""
    citizen = citizen_id.encode()
    name = field.encode()
    return b"".join(
        (header, _LENGTH.pack(len(citizen)), citizen, _LENGTH.pack(len(name)), name, _VERSION.pack(version))
    )


# Associated data already built, by (header, citizen, field, version): a read decrypts the
# same citizens' fields again and again, and building it costs as much as the AEAD call on
# a small field. A plain dict emptied when full (an LRU's bookkeeping on every hit costs
# more than the rare rebuild); citizen ids are pseudonyms and field names are not data.
_ASSOCIATED: dict[tuple[bytes, str, str, int], bytes] = {}
_ASSOCIATED_MAX = 65_536


def _associated(header: bytes, citizen_id: str, field: str, version: int) -> bytes:
    try:
        return _ASSOCIATED[header, citizen_id, field, version]
    except KeyError:
        if len(_ASSOCIATED) >= _ASSOCIATED_MAX:
            _ASSOCIATED.clear()
        built = _ASSOCIATED[header, citizen_id, field, version] = _associated_data(
            header, citizen_id, field, version
        )
        return built


class _NoncePool(threading.local):
    """Random nonces drawn from the OS in blocks: one getrandom call per 4096 nonces
    instead of one per value. Per thread, and emptied in a forked child, so two
    processes or threads never hand out the same bytes."""

    def __init__(self) -> None:
        self.block = b""
        self.offset = 0


_NONCES = _NoncePool()
_NONCE_BLOCK = NONCE_BYTES * 4096


def _forget_nonces() -> None:
    _NONCES.block, _NONCES.offset = b"", 0


os.register_at_fork(after_in_child=_forget_nonces)


def _nonce() -> bytes:
    pool = _NONCES
    start = pool.offset
    if start >= len(pool.block):
        pool.block, start = os.urandom(_NONCE_BLOCK), 0
    pool.offset = start + NONCE_BYTES
    return pool.block[start : start + NONCE_BYTES]


def encrypt_value(key: DataKey, *, citizen_id: str, field: str, version: int, plaintext: bytes) -> bytes:
    """Encrypt one serialised field value for (citizen, field, version) under ``key``."""
    if version < 0:
        raise ValueError("a value version is not negative")
    nonce = _nonce()
    header = key._header
    # Built afresh, not cached: a value is encrypted once, and a bulk import's values in the
    # cache would only evict what reads use.
    sealed = key._aead.encrypt(nonce, plaintext, _associated_data(header, citizen_id, field, version))
    return header + nonce + sealed


def decrypt_value(key: DataKey, *, citizen_id: str, field: str, version: int, ciphertext: bytes) -> bytes:
    """Decrypt and authenticate; any change or mismatch raises ``CiphertextIntegrityError``."""
    header = key._header
    # The header is checked here because the associated data is built from the key, not
    # from the ciphertext: a changed format byte or key id must not slip through. (A slice
    # compared, not ``startswith``: the method call costs a third of the AEAD call.)
    if ciphertext[:HEADER_BYTES] != header:
        raise CiphertextIntegrityError()
    try:
        try:
            associated = _ASSOCIATED[header, citizen_id, field, version]
        except KeyError:
            associated = _associated(header, citizen_id, field, version)
        return key._aead.decrypt(ciphertext[HEADER_BYTES:_BODY_START], ciphertext[_BODY_START:], associated)
    except (InvalidTag, ValueError, struct.error):
        # InvalidTag: altered or misplaced. ValueError: truncated into the nonce.
        # struct.error: a negative version, which no value is ever written under.
        raise CiphertextIntegrityError() from None


def key_id_of(ciphertext: bytes) -> int:
    """The data-key id a ciphertext names (unauthenticated until it decrypts)."""
    if len(ciphertext) < OVERHEAD_BYTES or ciphertext[0] != FORMAT_V1:
        raise CiphertextIntegrityError()
    return int.from_bytes(ciphertext[1:HEADER_BYTES], "big")
