"""Key providers: where the root key lives and how KEKs are wrapped under it.

Callers only see the ``KeyProvider`` protocol, so a PKCS#11 HSM or a Vault Transit
provider can replace ``LocalKeyProvider`` without touching them: wrapping is async (a
remote KMS is a network call) and takes a context that the provider must authenticate.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import secrets
from pathlib import Path
from typing import Protocol, runtime_checkable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from service.config import Settings
from service.crypto.errors import KeyUnwrapError, RootKeyUnavailable
from service.crypto.material import KeyMaterial

logger = logging.getLogger("tellonce.crypto")

ROOT_KEY_BYTES = 32
_WRAP_FORMAT_V1 = 0x01
_WRAP_INFO = b"tellonce/root/kek-wrapping/v1"
_BLIND_INDEX_INFO = b"tellonce/root/blind-index/v1"


@runtime_checkable
class KeyProvider(Protocol):
    """Wraps and unwraps department KEKs under the root key, which it never hands out."""

    @property
    def name(self) -> str:
        """Stored with each KEK, so a mixed estate knows which provider to ask."""
        ...

    async def wrap(self, key: KeyMaterial, *, context: bytes) -> bytes: ...

    async def unwrap(self, wrapped: bytes, *, context: bytes) -> KeyMaterial: ...

    def blind_index_root(self) -> KeyMaterial:
        """The root of the blind-index keys: separate from every wrapping key.

        An HSM provider would keep it as its own extractable HMAC key (blind indexes are
        computed on every lookup, too often for a round trip)."""
        ...


class LocalKeyProvider:
    """The root key in process memory, from ``TELLONCE_ROOT_KEY`` or ``root.key``.

    Two keys are derived from the root with HKDF under distinct labels: one wraps KEKs
    (AES-256-GCM, the context as associated data), the other is the blind-index root.
    """

    name = "local"

    def __init__(self, root_key: KeyMaterial) -> None:
        if len(root_key) != ROOT_KEY_BYTES:
            raise ValueError("the root key is 32 bytes")
        wrapping = _hkdf(root_key, _WRAP_INFO)
        self._wrapping = AESGCM(wrapping.reveal())
        self._blind_index_root = _hkdf(root_key, _BLIND_INDEX_INFO)

    @classmethod
    def from_settings(cls, settings: Settings) -> LocalKeyProvider:
        return cls(load_root_key(settings))

    async def wrap(self, key: KeyMaterial, *, context: bytes) -> bytes:
        nonce = os.urandom(12)
        return bytes((_WRAP_FORMAT_V1,)) + nonce + self._wrapping.encrypt(nonce, key.reveal(), context)

    async def unwrap(self, wrapped: bytes, *, context: bytes) -> KeyMaterial:
        if len(wrapped) < 1 + 12 + 16 or wrapped[0] != _WRAP_FORMAT_V1:
            raise KeyUnwrapError("a wrapped key is malformed")
        try:
            return KeyMaterial(self._wrapping.decrypt(wrapped[1:13], wrapped[13:], context))
        except InvalidTag:
            raise KeyUnwrapError("a wrapped key did not unwrap under the root key") from None

    def blind_index_root(self) -> KeyMaterial:
        return self._blind_index_root

    def __repr__(self) -> str:
        return "LocalKeyProvider(<root key hidden>)"


def _hkdf(root: KeyMaterial, info: bytes) -> KeyMaterial:
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(root.reveal())
    return KeyMaterial(derived)


def _decode_root_key(text: str, where: str) -> KeyMaterial:
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise RootKeyUnavailable(f"the root key in {where} is not base64") from None
    if len(raw) != ROOT_KEY_BYTES:
        raise RootKeyUnavailable(f"the root key in {where} is not 32 bytes")
    return KeyMaterial(raw)


def load_root_key(settings: Settings) -> KeyMaterial:
    """The root key: the setting first, then the key file; development and test create the
    file (mode 0600) when it is missing, production refuses."""
    if settings.root_key is not None:
        return _decode_root_key(settings.root_key.get_secret_value(), "TELLONCE_ROOT_KEY")
    path = settings.root_key_file
    if path.exists():
        return _decode_root_key(path.read_text(), str(path))
    if not settings.allows_generated_keys:
        raise RootKeyUnavailable(
            f"production refuses to generate a root key: set TELLONCE_ROOT_KEY or provide {path}"
        )
    return _create_root_key_file(path)


def _create_root_key_file(path: Path) -> KeyMaterial:
    path.parent.mkdir(parents=True, exist_ok=True)
    encoded = base64.b64encode(secrets.token_bytes(ROOT_KEY_BYTES))
    # O_EXCL: two processes starting together must not both write a different key.
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _decode_root_key(path.read_text(), str(path))
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(encoded + b"\n")
    logger.warning("generated a new root key file", extra={"path": str(path)})
    return KeyMaterial(base64.b64decode(encoded))
