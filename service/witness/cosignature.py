"""tlog-cosignature/v1 with Ed25519: keys, signing and verification. Pure: no I/O.

A cosignature is a signed-note signature line ``— <name> base64(key id || timestamp ||
signature)``. The key id is the first four bytes of SHA-256(name || "\\n" || 0x04 ||
public key); the timestamp is a big-endian u64 of POSIX seconds; the Ed25519 signature
covers ``cosignature/v1\\ntime <timestamp>\\n`` followed by the whole checkpoint body.
A witness's verifier key (vkey) is ``<name>+<hex key id>+base64(0x04 || public key)``.
"""

from __future__ import annotations

import base64
import binascii
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from service.audit.checkpoint import (
    SIGNATURE_DASH,
    CheckpointError,
    key_id,
    parse_note,
    parse_signature_line,
    parse_vkey,
    signatures_by,
    valid_key_name,
    vkey_text,
)

COSIGNATURE_ALGORITHM = b"\x04"
# The private key file: ``PRIVATE+KEY+<name>+<hex key id>+base64(0x04 || seed)``, in the
# shape Go's signed-note package uses for its private keys.
PRIVATE_KEY_PREFIX = "PRIVATE+KEY+"
MAX_TIMESTAMP = 2**63 - 1


class CosignatureError(CheckpointError):
    """A witness key or a cosignature that does not parse or does not verify."""


def signed_message(body: str, timestamp: int) -> bytes:
    """What the witness signs: the header line, the time line, then the checkpoint body."""
    return f"cosignature/v1\ntime {timestamp}\n".encode() + body.encode()


def split_note(note: str) -> tuple[str, list[str]]:
    """(body including its final newline, signature lines without their newline); raises
    ``CosignatureError`` if ``note`` is not a C2SP signed note."""
    body, signatures = parse_note(note, CosignatureError)
    return body, [signature.line for signature in signatures]


def answer_lines(answer: str) -> list[str]:
    """The signature lines (without their newline) of a witness's add-checkpoint answer:
    one or more note signature lines, each ending in a newline (C2SP tlog-witness), and
    nothing else; else ``CosignatureError``.

    They are checked against the checkpoint's own body, not read by appending the answer
    to the note: an answer starting with a blank line would move the note's last blank
    line, and the text its cosignature is checked over would then be another one (the
    whole note, the log's signature line included).
    """
    if not answer.endswith("\n") or any(ch < " " and ch != "\n" for ch in answer):
        raise CosignatureError("a witness answers with signature lines, each ending in a newline")
    lines = answer[:-1].split("\n")
    for line in lines:
        parse_signature_line(line, CosignatureError)
    return lines


class CosignatureSigner:
    """A witness's Ed25519 cosigning key. Its repr never shows the private key."""

    def __init__(self, name: str, private_key: Ed25519PrivateKey) -> None:
        if not valid_key_name(name):
            raise CosignatureError("a witness name has no spaces or '+'")
        self.name = name
        self._private_key = private_key
        self.public_key = private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.key_id = key_id(name, COSIGNATURE_ALGORITHM, self.public_key)

    def __repr__(self) -> str:
        return f"CosignatureSigner(name={self.name!r}, key_id={self.key_id.hex()})"

    @classmethod
    def generate(cls, name: str) -> CosignatureSigner:
        return cls(name, Ed25519PrivateKey.generate())

    def cosign(self, body: str, timestamp: int) -> str:
        """One signature line (with its newline) over checkpoint ``body`` at ``timestamp``."""
        if not 0 <= timestamp <= MAX_TIMESTAMP:
            raise CosignatureError("the timestamp is out of range")
        signature = self._private_key.sign(signed_message(body, timestamp))
        raw = self.key_id + struct.pack(">Q", timestamp) + signature
        return f"{SIGNATURE_DASH} {self.name} {base64.b64encode(raw).decode()}\n"

    def verifier_key(self) -> str:
        return vkey_text(self.name, COSIGNATURE_ALGORITHM, self.public_key)

    def private_key_text(self) -> str:
        seed = self._private_key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        encoded = base64.b64encode(COSIGNATURE_ALGORITHM + seed).decode()
        return f"{PRIVATE_KEY_PREFIX}{self.name}+{self.key_id.hex()}+{encoded}\n"

    @classmethod
    def from_private_key_text(cls, text: str) -> CosignatureSigner:
        text = text.strip()
        if not text.startswith(PRIVATE_KEY_PREFIX):
            raise CosignatureError("not a witness private key (it starts PRIVATE+KEY+)")
        parts = text[len(PRIVATE_KEY_PREFIX) :].split("+", 2)
        if len(parts) != 3:
            raise CosignatureError("a witness private key is PRIVATE+KEY+<name>+<key id>+<key>")
        name, key_id_hex, encoded = parts
        try:
            raw = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise CosignatureError("the witness private key is not base64") from None
        if len(raw) != 33 or raw[:1] != COSIGNATURE_ALGORITHM:
            raise CosignatureError("the witness private key is not an Ed25519 cosigning key")
        signer = cls(name, Ed25519PrivateKey.from_private_bytes(raw[1:]))
        if signer.key_id.hex() != key_id_hex.lower():
            raise CosignatureError("the witness private key's id does not match its name and key")
        return signer


@dataclass(frozen=True)
class Cosignature:
    witness: str
    timestamp: int
    line: str  # the signature line, with its newline


@dataclass(frozen=True)
class CosignatureVerifier:
    name: str
    key_id: bytes
    public_key: bytes

    @classmethod
    def parse(cls, vkey: str) -> CosignatureVerifier:
        name, key, public_key = parse_vkey(vkey, COSIGNATURE_ALGORITHM, "witness key", CosignatureError)
        return cls(name=name, key_id=key, public_key=public_key)

    def find(self, body: str, lines: list[str]) -> Cosignature | None:
        """This witness's cosignature among ``lines`` over ``body``; None if it has none.

        Lines from other keys are ignored; every line with this witness's name and key id
        must verify, and one that does not (of the wrong length included) raises, since it
        can only be a forgery or a corruption. Of several that verify, the first is
        returned. A line that is no signature line raises too.
        """
        key = Ed25519PublicKey.from_public_bytes(self.public_key)
        signatures = [parse_signature_line(line.removesuffix("\n"), CosignatureError) for line in lines]
        found: Cosignature | None = None
        for signature in signatures_by(signatures, self.name, self.key_id):
            if len(signature.signature) != 8 + 64:
                raise CosignatureError(f"the cosignature by {self.name} is not {4 + 8 + 64} bytes")
            (timestamp,) = struct.unpack(">Q", signature.signature[:8])
            if timestamp > MAX_TIMESTAMP:
                raise CosignatureError(f"the cosignature by {self.name} has an impossible timestamp")
            try:
                key.verify(signature.signature[8:], signed_message(body, timestamp))
            except InvalidSignature:
                raise CosignatureError(f"the cosignature by {self.name} does not verify") from None
            if found is None:
                found = Cosignature(self.name, timestamp, signature.line + "\n")
        return found


def verified_cosignatures(
    body: str, lines: Mapping[str, str], witnesses: Iterable[CosignatureVerifier]
) -> dict[str, Cosignature]:
    """Witness name -> cosignature, for each of ``witnesses`` whose line in ``lines``
    (witness name -> signature line) verifies over ``body`` with its key. Lines of other
    witnesses, and a line its witness's key does not verify (one made with an older key
    under the same name, or a corrupted one), are left out."""
    found: dict[str, Cosignature] = {}
    for witness in witnesses:
        line = lines.get(witness.name)
        if line is None:
            continue
        try:
            cosignature = witness.find(body, [line])
        except CosignatureError:
            continue
        if cosignature is not None:
            found[witness.name] = cosignature
    return found
