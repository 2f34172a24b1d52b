"""Webhook signing secrets: made once, shown once, stored only encrypted.

The service must sign every delivery, so it cannot keep just a hash of the secret as it
does for client secrets. It keeps the secret under AES-256-GCM with a key derived (HKDF)
from the root key or, with ``TELLONCE_KEY_PROVIDER=pkcs11``, with a key kept in the
PKCS#11 token (``service.crypto.hsm.TokenSecretBox``); either way the subscription id is
the associated data, so a ciphertext copied to another subscription does not decrypt.

After a rotation the secret it replaced is kept, sealed the same way, while it still
signs; its associated data is ``previous_context(subscription_id)``, so neither sealed
secret opens in the other's place.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import secrets
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from service.config import Settings
from service.crypto.errors import KeyUnwrapError
from service.errors import ServiceUnavailable
from service.private_files import SharedSecretFile, check_owner_only

SECRET_PREFIX = "whsec_"  # noqa: S105  (the Standard Webhooks prefix, not a secret)
_VERSION = b"\x01"
_NONCE_BYTES = 12
_HKDF_INFO = b"tellonce/events/webhook-secrets/v1"

logger = logging.getLogger("tellonce.events")


class SigningKeyUnavailable(ServiceUnavailable):
    title, slug = "Webhook signing unavailable", "webhook-signing-unavailable"


class SecretUndecryptable(Exception):
    """A stored secret did not decrypt: a different root key, or a tampered row."""


def previous_context(subscription_id: str) -> str:
    """The associated data of a subscription's previous (rotated-out) secret."""
    return f"{subscription_id}/previous"


def new_signing_secret() -> str:
    """A Standard Webhooks secret: ``whsec_`` and 32 random bytes in base64."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def _root_key(settings: Settings) -> bytes:
    """The root key, held to the keyring's rules: a key file other accounts may read or
    write is refused (``check_owner_only``), as ``serve`` and ``worker`` refuse it at start.
    Read by a running server, a key file open to other accounts or that cannot be read is
    the operator's setup failing closed: ``SigningKeyUnavailable`` (503), its detail naming
    no path, and the reason logged with the path for the operator."""
    if settings.root_key is not None:
        text = settings.root_key.get_secret_value()
    elif settings.root_key_file.is_file():
        try:
            check_owner_only(settings.root_key_file, "root key")
            text = settings.root_key_file.read_text()
        except SharedSecretFile as exc:
            # The message names the file and the remedy (``chmod 600``), never the key.
            logger.error("refusing to keep webhook secrets: %s", exc)
            raise SigningKeyUnavailable(
                "The root key file is open to other accounts, so webhook secrets cannot be kept."
            ) from None
        except OSError as exc:
            logger.error(
                "refusing to keep webhook secrets: cannot read the root key in %s (%s)",
                settings.root_key_file,
                type(exc).__name__,
            )
            raise SigningKeyUnavailable(
                "The root key file cannot be read, so webhook secrets cannot be kept."
            ) from None
    else:
        raise SigningKeyUnavailable("No root key is configured, so webhook secrets cannot be kept.")
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise SigningKeyUnavailable("The root key is not base64.") from None
    if len(key) != 32:
        raise SigningKeyUnavailable("The root key is not 32 bytes.")
    return key


class SecretSealer(Protocol):
    def seal(self, secret: str, subscription_id: str) -> bytes: ...

    def open(self, sealed: bytes, subscription_id: str) -> str: ...


class _TokenSealed:
    """A token's sealer, raising this module's error when a secret does not open."""

    def __init__(self, sealer: SecretSealer) -> None:
        self._sealer = sealer

    def seal(self, secret: str, subscription_id: str) -> bytes:
        return self._sealer.seal(secret, subscription_id)

    def open(self, sealed: bytes, subscription_id: str) -> str:
        try:
            return self._sealer.open(sealed, subscription_id)
        except KeyUnwrapError:
            raise SecretUndecryptable("the webhook secret did not open in the token") from None


class SecretBox:
    """Encrypts and decrypts webhook secrets; its repr never shows the key."""

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    @classmethod
    def from_settings(cls, settings: Settings) -> SecretSealer:
        """Under the root key, or in the PKCS#11 token with ``TELLONCE_KEY_PROVIDER=pkcs11``."""
        if settings.key_provider == "pkcs11":
            from service.crypto.hsm import TokenSecretBox, open_token

            return _TokenSealed(TokenSecretBox(open_token(settings)))
        derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_HKDF_INFO).derive(
            _root_key(settings)
        )
        return cls(derived)

    def seal(self, secret: str, subscription_id: str) -> bytes:
        nonce = os.urandom(_NONCE_BYTES)
        return _VERSION + nonce + self._aead.encrypt(nonce, secret.encode(), subscription_id.encode())

    def open(self, sealed: bytes, subscription_id: str) -> str:
        if not sealed.startswith(_VERSION) or len(sealed) <= 1 + _NONCE_BYTES:
            raise SecretUndecryptable("unknown webhook secret format")
        nonce, body = sealed[1 : 1 + _NONCE_BYTES], sealed[1 + _NONCE_BYTES :]
        try:
            return self._aead.decrypt(nonce, body, subscription_id.encode()).decode()
        except InvalidTag:
            raise SecretUndecryptable("the webhook secret did not decrypt") from None

    def __repr__(self) -> str:
        return "SecretBox(<key hidden>)"
