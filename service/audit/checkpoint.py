"""C2SP signed notes carrying tlog-checkpoints, signed with Ed25519.

Pure: no I/O. A checkpoint body is three lines: origin, tree size, base64 root hash,
then any non-empty extension lines. The note is the body, a blank line, then signature
lines ``— <name> <base64(key hash || signature)>``; the key hash is the first four bytes
of SHA-256(name || "\\n" || 0x01 || public key), and the verifier key string is
``<name>+<hex key hash>+<base64(0x01 || public key)>``.

Notes are read as C2SP signed-note says: no ASCII control character but newline, every
signature line well formed, lines by unknown keys ignored, and every line by a known
key (its name and key id) verified: one that fails rejects the whole note.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from service.audit.merkle import EMPTY_ROOT
from service.digits import bounded_decimal

ED25519_ALGORITHM = b"\x01"
SIGNATURE_DASH = "\u2014"
# The largest tree size read: the reference implementations (Go's sumdb/tlog) read it as a
# signed 64-bit integer, and so do the witness's SQLite and the service's BIGINT columns.
MAX_TREE_SIZE = 2**63 - 1


class CheckpointError(ValueError):
    """A note or key that does not parse, or a signature that does not verify."""


# Signed-note keys, shared with the witness's cosignature keys (algorithm 0x04), which
# differ only in the algorithm byte.


def key_id(name: str, algorithm: bytes, public_key: bytes) -> bytes:
    """A signed-note key's id: the first four bytes of SHA-256(name || "\\n" || algorithm
    || public key). A checkpoint's verifier key calls it the key hash."""
    return hashlib.sha256(name.encode() + b"\n" + algorithm + public_key).digest()[:4]


def valid_key_name(name: str) -> bool:
    return bool(name) and "+" not in name and not any(ch.isspace() for ch in name)


def vkey_text(name: str, algorithm: bytes, public_key: bytes) -> str:
    """``<name>+<hex key id>+<base64(algorithm || public key)>``."""
    encoded = base64.b64encode(algorithm + public_key).decode()
    return f"{name}+{key_id(name, algorithm, public_key).hex()}+{encoded}"


_KEY_ID = re.compile(r"[0-9a-fA-F]{8}")


def parse_vkey(
    vkey: str, algorithm: bytes, kind: str, error: type[CheckpointError] = CheckpointError
) -> tuple[str, bytes, bytes]:
    """(name, key id, Ed25519 public key) of a verifier key for ``algorithm``; raises
    ``error`` saying what is wrong with the ``kind`` of key it was meant to be."""
    parts = vkey.strip().split("+", 2)
    if len(parts) != 3 or not valid_key_name(parts[0]):
        raise error(f"a {kind} is <name>+<hex key id>+<base64 key>")
    name, id_hex, encoded = parts
    # Eight hex digits exactly (either case, as Go's note.NewVerifier reads them):
    # ``bytes.fromhex`` alone also reads whitespace between the digits.
    if not _KEY_ID.fullmatch(id_hex):
        raise error(f"the {kind}'s key id is not eight hex digits: <name>+<8 hex digits>+<base64 key>")
    expected_id = bytes.fromhex(id_hex)
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise error(f"the {kind}'s key is not base64") from None
    if len(raw) != 33 or raw[:1] != algorithm:
        raise error(f"the {kind} is not an Ed25519 key of type 0x{algorithm.hex()}")
    public_key = raw[1:]
    if expected_id != key_id(name, algorithm, public_key):
        raise error(f"the {kind}'s id does not match its name and key")
    return name, expected_id, public_key


# Any ASCII control character but newline (signed-note: those below U+0020).
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f]")


@dataclass(frozen=True)
class NoteSignature:
    """One signature line of a signed note."""

    name: str
    key_id: bytes
    signature: bytes  # what follows the key id
    line: str  # the line as written, without its newline


def parse_signature_line(line: str, error: type[CheckpointError] = CheckpointError) -> NoteSignature:
    """``— <key name> <base64(key id || signature)>``, or raise ``error``."""
    name, space, encoded = line.removeprefix(f"{SIGNATURE_DASH} ").partition(" ")
    if not line.startswith(f"{SIGNATURE_DASH} ") or not space or not valid_key_name(name):
        raise error("a signature line is '\u2014 <key name> <base64 signature>'")
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise error(f"a signature by {name} is not base64") from None
    if len(raw) < 4:
        raise error(f"a signature by {name} is shorter than its key id")
    return NoteSignature(name=name, key_id=raw[:4], signature=raw[4:], line=line)


def parse_note(note: str, error: type[CheckpointError] = CheckpointError) -> tuple[str, list[NoteSignature]]:
    """(text with its final newline, signature lines) of a C2SP signed note, or raise ``error``.

    The text is what precedes the note's last blank line; one or more signature lines
    follow it. No ASCII control character but newline may appear anywhere in the note.
    """
    if _CONTROL.search(note):
        raise error("a signed note contains no control character but newline")
    separator = note.rfind("\n\n")
    if separator < 0 or not note.endswith("\n") or separator + 2 == len(note):
        raise error("a signed note is a text, a blank line and one or more signature lines")
    text, block = note[: separator + 1], note[separator + 2 : -1]
    return text, [parse_signature_line(line, error) for line in block.split("\n")]


def signatures_by(signatures: Iterable[NoteSignature], name: str, key: bytes) -> Iterator[NoteSignature]:
    """The signatures by the key of ``name`` and key id ``key``, each distinct line once;
    lines of other keys (even sharing the name or the id) are passed over. The caller
    verifies every one: a line of this key that does not verify is a forgery or a
    corruption, and rejects the note."""
    seen: set[str] = set()
    for signature in signatures:
        if signature.name == name and signature.key_id == key and signature.line not in seen:
            seen.add(signature.line)
            yield signature


@dataclass(frozen=True)
class Checkpoint:
    origin: str
    size: int
    root_hash: bytes

    def body(self) -> str:
        return f"{self.origin}\n{self.size}\n{base64.b64encode(self.root_hash).decode()}\n"

    @classmethod
    def parse_body(cls, body: str) -> Checkpoint:
        lines = body.split("\n")
        if len(lines) < 4 or lines[-1] != "" or not lines[0]:
            raise CheckpointError("a checkpoint body is origin, size and root hash lines")
        if "" in lines[3:-1]:
            raise CheckpointError("a checkpoint's extension lines are not empty")
        size = bounded_decimal(lines[1], MAX_TREE_SIZE)
        if size is None:
            raise CheckpointError(f"the tree size is not a decimal number from 0 to {MAX_TREE_SIZE}")
        try:
            root = base64.b64decode(lines[2], validate=True)
        except (binascii.Error, ValueError):
            raise CheckpointError("the root hash is not base64") from None
        if len(root) != 32:
            raise CheckpointError("the root hash is not 32 bytes")
        if size == 0 and root != EMPTY_ROOT:
            # The root of the empty tree is the hash of nothing (RFC 9162, 2.1.1): a
            # checkpoint of size 0 with any other root states a tree that cannot exist.
            raise CheckpointError("a checkpoint of size 0 has the empty tree's root, SHA-256 of nothing")
        return cls(origin=lines[0], size=size, root_hash=root)


class Ed25519Signing(Protocol):
    """What signs: ``cryptography``'s Ed25519 private key, or one held in a PKCS#11 token."""

    def sign(self, data: bytes) -> bytes: ...

    def public_key(self) -> Ed25519PublicKey: ...


class NoteSigner:
    """An Ed25519 note signer. Its repr never shows the private key."""

    def __init__(self, name: str, private_key: Ed25519PrivateKey | Ed25519Signing) -> None:
        if not valid_key_name(name):
            raise CheckpointError("a key name has no spaces or '+'")
        self.name = name
        self._private_key = private_key
        self.public_key = private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.key_hash = key_id(name, ED25519_ALGORITHM, self.public_key)

    def __repr__(self) -> str:
        return f"NoteSigner(name={self.name!r}, key_hash={self.key_hash.hex()})"

    def sign(self, body: str) -> str:
        signature = self._private_key.sign(body.encode())
        line = base64.b64encode(self.key_hash + signature).decode()
        return f"{body}\n{SIGNATURE_DASH} {self.name} {line}\n"

    def verifier_key(self) -> str:
        return vkey_text(self.name, ED25519_ALGORITHM, self.public_key)


@dataclass(frozen=True)
class NoteVerifier:
    name: str
    key_hash: bytes
    public_key: bytes

    @classmethod
    def parse(cls, vkey: str) -> NoteVerifier:
        name, expected_hash, public_key = parse_vkey(vkey, ED25519_ALGORITHM, "verifier key")
        return cls(name=name, key_hash=expected_hash, public_key=public_key)

    def label(self) -> str:
        """``<name>+<hex key id>``: the key as a note's signature line names it."""
        return f"{self.name}+{self.key_hash.hex()}"

    def verifies(self, text: str, signature: NoteSignature) -> bool:
        """Whether ``signature`` is this key's Ed25519 signature of ``text``."""
        if (signature.name, signature.key_id) != (self.name, self.key_hash) or len(signature.signature) != 64:
            return False
        try:
            Ed25519PublicKey.from_public_bytes(self.public_key).verify(signature.signature, text.encode())
        except InvalidSignature:
            return False
        return True

    def open(self, note: str) -> str:
        """The note's text, if it carries a signature by this key and every one verifies."""
        return open_note(note, [self])

    def open_checkpoint(self, note: str) -> Checkpoint:
        return Checkpoint.parse_body(self.open(note))


def signing_keys(note: str, verifiers: Iterable[NoteVerifier]) -> tuple[str, list[NoteVerifier]]:
    """(text of ``note``, those of ``verifiers`` that signed it). Every signature line by
    one of them must verify, else ``CheckpointError``: a forgery or a corruption rejects
    the note. Lines by other keys are ignored (C2SP signed-note), so the list may be empty."""
    text, signatures = parse_note(note)
    signed = []
    for verifier in verifiers:
        found = False
        for signature in signatures_by(signatures, verifier.name, verifier.key_hash):
            if not verifier.verifies(text, signature):
                raise CheckpointError(f"a signature by {verifier.name} does not verify")
            found = True
        if found:
            signed.append(verifier)
    return text, signed


def open_note(note: str, verifiers: Iterable[NoteVerifier]) -> str:
    """The text of ``note`` if it carries a signature by one of ``verifiers`` (the keys
    trusted for it) and every signature line by one of them verifies; else raise
    ``CheckpointError``. Lines by other keys are ignored (C2SP signed-note)."""
    known = list(verifiers)
    text, signed = signing_keys(note, known)
    if not signed:
        names = ", ".join(sorted({v.name for v in known}))
        raise CheckpointError(f"the note carries no signature by {names}")
    return text
