"""Key providers: where the root key lives, where department KEKs live, and how data keys
are wrapped under them.

Callers only see the ``KeyProvider`` protocol. ``LocalKeyProvider`` keeps a root key in
memory and stores each KEK wrapped under it; ``hsm.Pkcs11KeyProvider`` keeps KEKs inside a
PKCS#11 token (``TELLONCE_KEY_PROVIDER=pkcs11``). Making and opening a KEK is async (a
remote KMS is a network call); a KEK's ``wrap``/``unwrap`` of data keys is a local call.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import secrets
import struct
from pathlib import Path
from typing import Protocol, runtime_checkable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from service.config import Settings
from service.crypto.aead import DATA_KEY_BYTES
from service.crypto.blind_index import BlindIndexer
from service.crypto.errors import KeyUnwrapError, RootKeyUnavailable
from service.crypto.material import KeyMaterial
from service.private_files import SharedSecretFile, check_owner_only, make_private_dir

logger = logging.getLogger("tellonce.crypto")

ROOT_KEY_BYTES = 32
_WRAP_FORMAT_V1 = 0x01
_WRAP_INFO = b"tellonce/root/kek-wrapping/v1"
_BLIND_INDEX_INFO = b"tellonce/root/blind-index/v1"


_LENGTH = struct.Struct(">I")
_VERSION = struct.Struct(">Q")
_DATA_KEY_WRAP_V1 = 0x01
_WRAPPED_DATA_KEY_BYTES = 1 + 12 + DATA_KEY_BYTES + 16


def _framed(*parts: bytes) -> bytes:
    return b"".join(_LENGTH.pack(len(part)) + part for part in parts)


def kek_context(department: str, version: int) -> bytes:
    """What the provider authenticates with a wrapped KEK: the row it belongs to."""
    return b"tellonce/kek/v1" + _framed(department.encode()) + _VERSION.pack(version)


def data_key_context(citizen_id: str, department: str, kek_version: int) -> bytes:
    return (
        b"tellonce/data-key/v1"
        + _framed(citizen_id.encode(), department.encode())
        + _VERSION.pack(kek_version)
    )


class DepartmentKek:
    """An unwrapped KEK version. Wraps and unwraps data keys locally (no provider call)."""

    __slots__ = ("_aead", "department", "version")

    def __init__(self, department: str, version: int, material: KeyMaterial) -> None:
        self.department = department
        self.version = version
        self._aead = AESGCM(material.reveal())

    def wrap(self, key: KeyMaterial, citizen_id: str) -> bytes:
        nonce = os.urandom(12)
        context = data_key_context(citizen_id, self.department, self.version)
        return bytes((_DATA_KEY_WRAP_V1,)) + nonce + self._aead.encrypt(nonce, key.reveal(), context)

    def unwrap(self, wrapped: bytes, citizen_id: str) -> KeyMaterial:
        if len(wrapped) != _WRAPPED_DATA_KEY_BYTES or wrapped[0] != _DATA_KEY_WRAP_V1:
            raise KeyUnwrapError("a wrapped data key is malformed")
        context = data_key_context(citizen_id, self.department, self.version)
        try:
            return KeyMaterial(self._aead.decrypt(wrapped[1:13], wrapped[13:], context))
        except InvalidTag:
            raise KeyUnwrapError("a data key did not unwrap under its KEK") from None

    def __repr__(self) -> str:
        return f"DepartmentKek(department={self.department!r}, version={self.version})"


class Kek(Protocol):
    """A department KEK version that wraps and unwraps the data keys of its department."""

    department: str
    version: int

    def wrap(self, key: KeyMaterial, citizen_id: str) -> bytes: ...

    def unwrap(self, wrapped: bytes, citizen_id: str) -> KeyMaterial: ...


@runtime_checkable
class KeyProvider(Protocol):
    """Makes and opens department KEKs; never hands out the keys that protect them."""

    @property
    def name(self) -> str:
        """Stored with each KEK, so a mixed estate knows which provider to ask."""
        ...

    async def create_kek(self, department: str, version: int) -> tuple[bytes, Kek]:
        """A new KEK version: the bytes to store in its row (never a plain key) and the KEK."""
        ...

    async def open_kek(self, department: str, version: int, stored: bytes) -> Kek:
        """The KEK whose row holds ``stored``; ``KeyUnwrapError`` if this provider cannot."""
        ...

    async def destroy_kek(self, stored: bytes) -> None:
        """Destroy a retired KEK wherever the provider keeps it (its row is cleared anyway)."""
        ...

    def blind_indexer(self) -> BlindIndexer:
        """Blind indexes under a root separate from every wrapping key."""
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

    async def create_kek(self, department: str, version: int) -> tuple[bytes, DepartmentKek]:
        material = KeyMaterial(AESGCM.generate_key(bit_length=256))
        wrapped = await self.wrap(material, context=kek_context(department, version))
        return wrapped, DepartmentKek(department, version, material)

    async def open_kek(self, department: str, version: int, stored: bytes) -> DepartmentKek:
        material = await self.unwrap(stored, context=kek_context(department, version))
        return DepartmentKek(department, version, material)

    async def destroy_kek(self, stored: bytes) -> None:
        """Nothing to do: the wrapped bytes lived only in the row, which is cleared."""

    def blind_indexer(self) -> BlindIndexer:
        return BlindIndexer(self._blind_index_root)

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
        return _read_root_key_file(path)
    if not settings.allows_generated_keys:
        raise RootKeyUnavailable(
            f"production refuses to generate a root key: set TELLONCE_ROOT_KEY or provide {path}"
        )
    return _create_root_key_file(path)


def _read_root_key_file(path: Path) -> KeyMaterial:
    """The root key in ``path``; ``RootKeyUnavailable`` naming the file if other accounts
    may read it, it cannot be read (a folder, a symlink loop) or it holds no root key."""
    try:
        refuse_shared_secret_file(path, "root key")
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RootKeyUnavailable(
            f"the root key in {path} cannot be read: {exc.strerror or type(exc).__name__}"
        ) from None
    except UnicodeDecodeError:
        raise RootKeyUnavailable(f"the root key in {path} is not base64") from None
    return _decode_root_key(text, str(path))


def refuse_shared_secret_file(path: Path, secret: str) -> None:
    """Fail closed on a file holding ``secret`` (the root key, a token PIN) that another
    account may read or replace, by the rule every secret file is held to
    (``check_owner_only``), as ``RootKeyUnavailable``."""
    try:
        check_owner_only(path, secret)
    except SharedSecretFile as exc:
        raise RootKeyUnavailable(str(exc)) from None


def _create_root_key_file(path: Path) -> KeyMaterial:
    make_private_dir(path.parent)  # the data dir: 0700 if this makes it
    encoded = base64.b64encode(secrets.token_bytes(ROOT_KEY_BYTES))
    # O_EXCL: two processes starting together must not both write a different key.
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read_root_key_file(path)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(encoded + b"\n")
    logger.warning("generated a new root key file", extra={"path": str(path)})
    return KeyMaterial(base64.b64decode(encoded))


def provider_from_settings(settings: Settings) -> KeyProvider:
    """The provider ``TELLONCE_KEY_PROVIDER`` names: ``local`` (default) or ``pkcs11``."""
    if settings.key_provider == "pkcs11":
        from service.crypto.hsm import Pkcs11KeyProvider  # python-pkcs11 loads only when asked for

        return Pkcs11KeyProvider.from_settings(settings)
    return LocalKeyProvider.from_settings(settings)
