"""Keys held in a PKCS#11 token (an HSM; SoftHSM2 in development and tests).

With ``TELLONCE_KEY_PROVIDER=pkcs11`` no key that protects citizen data exists outside
the token:

- each department KEK version is a non-extractable, sensitive AES-256 key generated in
  the token; the database keeps only its label (``pkcs11:<label>``), never its bytes;
- data keys are wrapped and unwrapped by the token: AES-GCM encryption under the KEK with
  the citizen, department and KEK version as associated data (a ``C_Encrypt``, because a
  data key must also live in process memory to encrypt field values, so it is not a token
  object that ``C_WrapKey`` could take);
- the blind-index root is a non-extractable HMAC key: each field's index key is
  HMAC-SHA256(root, field label), computed in the token once per field per process;
- the audit checkpoint signing key is an Ed25519 key pair in the token (``CKM_EDDSA``);
- webhook signing secrets are sealed with AES-GCM under a token key.

Token calls are synchronous library calls, serialised per process on one session. The
keyring's caches keep them off the read path once warm (see ``bench/crypto.py``).
"""

from __future__ import annotations

import os
import secrets
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import pkcs11
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pkcs11 import Attribute, KeyType, Mechanism, MechanismFlag, ObjectClass
from pkcs11.exceptions import NoSuchKey, PKCS11Error
from pkcs11.mechanisms import GCMParams

from service.config import Settings
from service.crypto.blind_index import BlindIndexer
from service.crypto.errors import KeyUnwrapError, RootKeyUnavailable
from service.crypto.material import KeyMaterial
from service.crypto.providers import data_key_context, refuse_shared_secret_file

REFERENCE_PREFIX = b"pkcs11:"
KEK_LABEL_PREFIX = "tellonce/kek/"
BLIND_INDEX_LABEL = "tellonce/blind-index-root"
AUDIT_SIGNING_LABEL = "tellonce/audit-signing"
WEBHOOK_SECRETS_LABEL = "tellonce/webhook-secrets"
_FIELD_LABEL = b"tellonce/blind-index/field/v1/"
_WRAP_FORMAT_HSM = 0x02
_NONCE_BYTES = 12
_TAG_BYTES = 16
# DER of the object identifier 1.3.101.112 (id-Ed25519), the curve of an EdDSA key.
_ED25519_PARAMS = bytes.fromhex("06032b6570")
# Never readable outside the token, and never settable as such later.
_SECRET = {Attribute.TOKEN: True, Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False}


@dataclass(frozen=True)
class TokenConfig:
    module: str
    token_label: str
    pin: str

    def __repr__(self) -> str:
        return f"TokenConfig(module={self.module!r}, token_label={self.token_label!r}, pin=***)"


def token_config(settings: Settings) -> TokenConfig:
    if not settings.pkcs11_module or not settings.pkcs11_token_label:
        raise RootKeyUnavailable("TELLONCE_PKCS11_MODULE and TELLONCE_PKCS11_TOKEN_LABEL must be set")
    if settings.pkcs11_pin is not None:
        pin = settings.pkcs11_pin.get_secret_value()
    elif settings.pkcs11_pin_file is not None:
        pin = _read_pin_file(Path(settings.pkcs11_pin_file))
    else:
        raise RootKeyUnavailable("set TELLONCE_PKCS11_PIN or TELLONCE_PKCS11_PIN_FILE")
    return TokenConfig(settings.pkcs11_module, settings.pkcs11_token_label, pin)


def _read_pin_file(path: Path) -> str:
    """The PIN in ``path``, held to the root key file's rule: private to this account."""
    try:
        refuse_shared_secret_file(path, "PKCS#11 PIN")
        return path.read_text().strip()
    except OSError as exc:
        raise RootKeyUnavailable(f"the PKCS#11 PIN in {path} cannot be read ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise RootKeyUnavailable(f"the PKCS#11 PIN in {path} cannot be read (not UTF-8 text)") from None


class Token:
    """One logged-in read-write session on the token, shared by the process.

    A PKCS#11 session runs one operation at a time, so every call takes the lock."""

    def __init__(self, config: TokenConfig) -> None:
        self.config = config
        try:
            library = pkcs11.lib(config.module)
            self._token = library.get_token(token_label=config.token_label)
            self._session = self._token.open(user_pin=config.pin, rw=True)
        except (PKCS11Error, RuntimeError) as exc:
            raise RootKeyUnavailable(
                f"the PKCS#11 token {config.token_label!r} could not be opened ({type(exc).__name__})"
            ) from None
        self.lock = threading.RLock()
        self.mechanisms = frozenset(self._token.slot.get_mechanisms())

    def __repr__(self) -> str:
        return f"Token(label={self.config.token_label!r})"

    def supports(self, *mechanisms: Mechanism) -> bool:
        return all(mechanism in self.mechanisms for mechanism in mechanisms)

    def find(self, object_class: ObjectClass, label: str) -> Any:
        """The one object of that class and label; ``NoSuchKey`` if there is none."""
        with self.lock:
            return self._session.get_key(object_class=object_class, label=label)

    def aes_key(self, label: str, *, create: bool) -> Any:
        with self.lock:
            try:
                return self._session.get_key(object_class=ObjectClass.SECRET_KEY, label=label)
            except NoSuchKey:
                if not create:
                    raise
            return self._session.generate_key(
                KeyType.AES,
                256,
                label=label,
                store=True,
                capabilities=MechanismFlag.ENCRYPT | MechanismFlag.DECRYPT,
                template=dict(_SECRET),
            )

    def hmac_key(self, label: str) -> Any:
        with self.lock:
            try:
                return self._session.get_key(object_class=ObjectClass.SECRET_KEY, label=label)
            except NoSuchKey:
                return self._session.generate_key(
                    KeyType.GENERIC_SECRET,
                    256,
                    label=label,
                    store=True,
                    mechanism=Mechanism.GENERIC_SECRET_KEY_GEN,
                    capabilities=MechanismFlag.SIGN | MechanismFlag.VERIFY,
                    template=dict(_SECRET),
                )

    def ed25519_pair(self, label: str, *, create: bool) -> tuple[Any, Any]:
        """The (public, private) pair of that label; ``NoSuchKey`` if either is missing,
        unless ``create``, which generates the pair then."""
        with self.lock:
            try:
                private = self._session.get_key(object_class=ObjectClass.PRIVATE_KEY, label=label)
                public = self._session.get_key(object_class=ObjectClass.PUBLIC_KEY, label=label)
            except NoSuchKey:
                if not create:
                    raise
                public, private = self._session.generate_keypair(
                    KeyType.EC_EDWARDS,
                    mechanism=Mechanism.EC_EDWARDS_KEY_PAIR_GEN,
                    label=label,
                    store=True,
                    public_template={Attribute.EC_PARAMS: _ED25519_PARAMS},
                    private_template=dict(_SECRET),
                )
            return public, private


@lru_cache(maxsize=4)
def _open(config: TokenConfig) -> Token:
    return Token(config)


def open_token(settings: Settings) -> Token:
    """The process's session on the configured token (opened once)."""
    return _open(token_config(settings))


def gcm_seal(token: Token, key: Any, plaintext: bytes, associated: bytes) -> bytes:
    nonce = os.urandom(_NONCE_BYTES)
    with token.lock:
        sealed = key.encrypt(
            plaintext, mechanism=Mechanism.AES_GCM, mechanism_param=GCMParams(nonce, associated)
        )
    return nonce + bytes(sealed)


def gcm_open(token: Token, key: Any, sealed: bytes, associated: bytes) -> bytes:
    if len(sealed) < _NONCE_BYTES + _TAG_BYTES:
        raise KeyUnwrapError("a sealed value is malformed")
    nonce, body = sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:]
    try:
        with token.lock:
            return bytes(
                key.decrypt(body, mechanism=Mechanism.AES_GCM, mechanism_param=GCMParams(nonce, associated))
            )
    except PKCS11Error:
        raise KeyUnwrapError("a value did not unseal under its token key") from None


class TokenKek:
    """A department KEK version inside the token: it wraps and unwraps data keys there."""

    __slots__ = ("_key", "_token", "department", "label", "version")

    def __init__(self, token: Token, key: Any, department: str, version: int, label: str) -> None:
        self._token = token
        self._key = key
        self.department = department
        self.version = version
        self.label = label

    def wrap(self, key: KeyMaterial, citizen_id: str) -> bytes:
        context = data_key_context(citizen_id, self.department, self.version)
        return bytes((_WRAP_FORMAT_HSM,)) + gcm_seal(self._token, self._key, key.reveal(), context)

    def unwrap(self, wrapped: bytes, citizen_id: str) -> KeyMaterial:
        if len(wrapped) != 1 + _NONCE_BYTES + 32 + _TAG_BYTES or wrapped[0] != _WRAP_FORMAT_HSM:
            raise KeyUnwrapError("a wrapped data key is malformed")
        context = data_key_context(citizen_id, self.department, self.version)
        return KeyMaterial(gcm_open(self._token, self._key, wrapped[1:], context))

    def __repr__(self) -> str:
        return f"TokenKek(department={self.department!r}, version={self.version}, label={self.label!r})"


class Pkcs11KeyProvider:
    """KEKs, the blind-index root and (see ``audit.config``) the checkpoint key in a token."""

    name = "pkcs11"

    def __init__(self, token: Token) -> None:
        self.token = token

    @classmethod
    def from_settings(cls, settings: Settings) -> Pkcs11KeyProvider:
        return cls(open_token(settings))

    def __repr__(self) -> str:
        return f"Pkcs11KeyProvider({self.token!r})"

    async def create_kek(self, department: str, version: int) -> tuple[bytes, TokenKek]:
        # A random suffix: two processes racing to make the same version each get their
        # own key; the one whose row the database keeps is used, the other is destroyed.
        label = f"{KEK_LABEL_PREFIX}{department}/v{version}/{secrets.token_hex(8)}"
        key = self.token.aes_key(label, create=True)
        return REFERENCE_PREFIX + label.encode(), TokenKek(self.token, key, department, version, label)

    async def open_kek(self, department: str, version: int, stored: bytes) -> TokenKek:
        label = _label(stored)
        if not label.startswith(f"{KEK_LABEL_PREFIX}{department}/v{version}/"):
            raise KeyUnwrapError("a KEK reference names another department or version")
        try:
            key = self.token.aes_key(label, create=False)
        except (NoSuchKey, PKCS11Error):
            raise KeyUnwrapError("the KEK is not in this token") from None
        return TokenKek(self.token, key, department, version, label)

    async def destroy_kek(self, stored: bytes) -> None:
        try:
            key = self.token.aes_key(_label(stored), create=False)
        except NoSuchKey:
            return
        with self.token.lock:
            key.destroy()

    def blind_indexer(self) -> BlindIndexer:
        root = self.token.hmac_key(BLIND_INDEX_LABEL)

        def field_key(field: str) -> bytes:
            with self.token.lock:
                return bytes(root.sign(_FIELD_LABEL + field.encode(), mechanism=Mechanism.SHA256_HMAC))

        return BlindIndexer.from_field_keys(field_key)


def _label(stored: bytes) -> str:
    if not stored.startswith(REFERENCE_PREFIX):
        raise KeyUnwrapError("this KEK is not held in a PKCS#11 token")
    return stored[len(REFERENCE_PREFIX) :].decode()


def _require_eddsa(token: Token) -> None:
    if not token.supports(Mechanism.EC_EDWARDS_KEY_PAIR_GEN, Mechanism.EDDSA):
        raise RootKeyUnavailable("this PKCS#11 module has no Ed25519 (CKM_EDDSA)")


def has_ed25519_pair(token: Token, label: str = AUDIT_SIGNING_LABEL) -> bool:
    """Whether the token holds the Ed25519 key pair of that label (looked for, never made);
    ``RootKeyUnavailable`` if the token cannot make or use one."""
    _require_eddsa(token)
    try:
        token.ed25519_pair(label, create=False)
    except NoSuchKey:
        return False
    return True


class TokenEd25519Key:
    """An Ed25519 private key in the token, shaped like ``cryptography``'s for ``NoteSigner``.

    A missing pair is generated only with ``create``; otherwise it is ``NoSuchKey``."""

    def __init__(self, token: Token, label: str = AUDIT_SIGNING_LABEL, *, create: bool) -> None:
        _require_eddsa(token)
        self._token = token
        public, self._private = token.ed25519_pair(label, create=create)
        with token.lock:
            point = bytes(public[Attribute.EC_POINT])
        # CKA_EC_POINT is a DER OCTET STRING holding the 32-byte key.
        raw = point[2:] if len(point) == 34 and point[:2] == b"\x04\x20" else point
        self._public = Ed25519PublicKey.from_public_bytes(raw)

    def sign(self, data: bytes) -> bytes:
        with self._token.lock:
            return bytes(self._private.sign(data, mechanism=Mechanism.EDDSA))

    def public_key(self) -> Ed25519PublicKey:
        return self._public

    def __repr__(self) -> str:
        return "TokenEd25519Key(<in the token>)"


class TokenSecretBox:
    """Seals webhook secrets with AES-GCM under a token key (the subscription id as AD)."""

    VERSION = b"\x02"

    def __init__(self, token: Token) -> None:
        self._token = token
        self._key = token.aes_key(WEBHOOK_SECRETS_LABEL, create=True)

    def seal(self, secret: str, subscription_id: str) -> bytes:
        return self.VERSION + gcm_seal(self._token, self._key, secret.encode(), subscription_id.encode())

    def open(self, sealed: bytes, subscription_id: str) -> str:
        if not sealed.startswith(self.VERSION):
            raise KeyUnwrapError("unknown webhook secret format")
        return gcm_open(self._token, self._key, sealed[1:], subscription_id.encode()).decode()

    def __repr__(self) -> str:
        return "TokenSecretBox(<key in the token>)"
