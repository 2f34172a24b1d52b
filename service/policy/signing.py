"""Owner signatures on agreements, and the digest that names one agreement version.

Pure: no I/O beyond what a caller hands in. An owner's key is a C2SP signed-note key
pair for Ed25519, named after the department:

- the verifier key (``signing_key:`` in ``catalog.yaml``) is the vkey string
  ``<department>+<hex key hash>+<base64(0x01 || public key)>``, as the audit's checkpoint
  key;
- the private key file holds ``PRIVATE+KEY+<department>+<hex key hash>+<base64(0x01 || seed)>``
  (the form Go's ``golang.org/x/mod/sumdb/note`` uses, so existing note tools read it).

What is signed is the agreement's canonical JSON (the audit's canonical form: sorted keys,
no whitespace, UTF-8) with ``owner`` set and ``signature`` removed. The signature is the
base64 Ed25519 signature over those bytes. A version's digest is the SHA-256 of the same
canonical JSON with the signature kept: that is what an audit entry cites per field.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from service.audit.checkpoint import ED25519_ALGORITHM, CheckpointError, NoteSigner, NoteVerifier
from service.audit.schemas import canonical_json

SIGNATURE = "signature"
OWNER = "owner"
PRIVATE_KEY_PREFIX = "PRIVATE+KEY+"


# Signatures that verified, as (vkey, signing text, signature): a bounded memory, emptied
# when full (the next compilation then verifies again).
_VERIFIED: set[tuple[str, str, bytes]] = set()
_VERIFIED_LIMIT = 100_000


class SigningKeyError(ValueError):
    """A verifier key or private key that does not parse, or that names another department."""


def signed_document(content: Mapping[str, Any], owner: str) -> dict[str, Any]:
    """The object an owner signs: the agreement with ``owner`` set and no ``signature``."""
    document = {key: value for key, value in content.items() if key != SIGNATURE}
    document[OWNER] = owner
    return document


def signing_text(content: Mapping[str, Any], owner: str) -> str:
    """The canonical JSON an owner signs (UTF-8 encoded before signing)."""
    return canonical_json(signed_document(content, owner))


def version_document(content: Mapping[str, Any], owner: str) -> dict[str, Any]:
    """One agreement version as the log keeps it: the agreement, its owner and signature."""
    document = dict(content)
    document[OWNER] = owner
    return document


def version_text(content: Mapping[str, Any], owner: str) -> str:
    return canonical_json(version_document(content, owner))


def version_digest(content: Mapping[str, Any], owner: str) -> str:
    """Hex SHA-256 of the version's canonical JSON, signature included."""
    return text_digest(version_text(content, owner))


def text_digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class OwnerVerifier:
    """A department's verifier key, parsed once."""

    department: str
    vkey: str
    public_key: Ed25519PublicKey

    @classmethod
    def parse(cls, vkey: str, department: str | None = None) -> OwnerVerifier:
        """Parse a C2SP Ed25519 vkey; with ``department``, its name must be that department."""
        try:
            parsed = NoteVerifier.parse(vkey)
        except CheckpointError as exc:
            raise SigningKeyError(str(exc)) from None
        if department is not None and parsed.name != department:
            raise SigningKeyError(f"the key is named {parsed.name!r}, not the department {department!r}")
        return cls(parsed.name, vkey.strip(), Ed25519PublicKey.from_public_bytes(parsed.public_key))

    def problem(self, content: Mapping[str, Any], owner: str) -> str | None:
        """Why ``content`` is not validly signed by this key for ``owner``; ``None`` when it is."""
        signature = content.get(SIGNATURE)
        if not signature:
            return f"unsigned: {owner} has a signing key, so its agreements must carry its signature"
        try:
            raw = base64.b64decode(str(signature), validate=True)
        except (binascii.Error, ValueError):
            return "the signature is not base64"
        if len(raw) != 64:
            return "the signature is not a 64-byte Ed25519 signature"
        text = signing_text(content, owner)
        # A policy epoch recompiles every agreement: only versions not seen before cost a
        # verification (the key holds all the answer depends on: key, text and signature).
        seen = (self.vkey, text, raw)
        if seen in _VERIFIED:
            return None
        try:
            self.public_key.verify(raw, text.encode())
        except InvalidSignature:
            return (
                f"the signature does not verify under {owner}'s signing key "
                "(edited after signing, or signed by another key)"
            )
        if len(_VERIFIED) >= _VERIFIED_LIMIT:
            _VERIFIED.clear()
        _VERIFIED.add(seen)
        return None


class OwnerSigner:
    """A department's private signing key. Its repr never shows the key."""

    def __init__(self, department: str, private_key: Ed25519PrivateKey) -> None:
        try:
            self._note = NoteSigner(department, private_key)
        except CheckpointError as exc:
            raise SigningKeyError(str(exc)) from None
        self.department = department
        self._private_key = private_key

    def __repr__(self) -> str:
        return f"OwnerSigner(department={self.department!r})"

    @classmethod
    def generate(cls, department: str) -> OwnerSigner:
        return cls(department, Ed25519PrivateKey.generate())

    @classmethod
    def parse(cls, text: str) -> OwnerSigner:
        """Read ``PRIVATE+KEY+<name>+<hash>+<base64(0x01 || seed)>``."""
        parts = text.strip().split("+", 4)
        if len(parts) != 5 or f"{parts[0]}+{parts[1]}+" != PRIVATE_KEY_PREFIX:
            raise SigningKeyError("a private key is PRIVATE+KEY+<department>+<hex key hash>+<base64 key>")
        name, hash_hex, key_b64 = parts[2], parts[3], parts[4]
        try:
            raw = base64.b64decode(key_b64, validate=True)
        except (binascii.Error, ValueError):
            raise SigningKeyError("the private key is not base64") from None
        if len(raw) != 33 or raw[:1] != ED25519_ALGORITHM:
            raise SigningKeyError("the private key is not an Ed25519 key")
        signer = cls(name, Ed25519PrivateKey.from_private_bytes(raw[1:]))
        if signer._note.key_hash.hex() != hash_hex.lower():
            raise SigningKeyError("the private key's hash does not match its name and key")
        return signer

    def private_text(self) -> str:
        seed = self._private_key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        encoded = base64.b64encode(ED25519_ALGORITHM + seed).decode()
        return f"{PRIVATE_KEY_PREFIX}{self.department}+{self._note.key_hash.hex()}+{encoded}"

    def verifier_key(self) -> str:
        return self._note.verifier_key()

    def sign(self, content: Mapping[str, Any]) -> str:
        """The base64 signature of ``content`` as an agreement of this key's department."""
        return base64.b64encode(self.sign_text(signing_text(content, self.department))).decode()

    def sign_text(self, text: str) -> bytes:
        """The raw signature of ``text`` (UTF-8): for a signing text shown elsewhere."""
        return self._private_key.sign(text.encode())

    def signed(self, content: Mapping[str, Any]) -> dict[str, Any]:
        """``content`` with its ``signature`` set (replacing any earlier one)."""
        document = {key: value for key, value in content.items() if key != SIGNATURE}
        document[SIGNATURE] = self.sign(content)
        return document
