"""Check tellonce's audit proofs offline, trusting nothing but the log's verifier key.

- A checkpoint is a C2SP signed note (``tlog-checkpoint`` body: origin, tree size, base64
  root hash), signed with Ed25519; the verifier key is ``<name>+<hex key hash>+<base64 key>``.
- Leaves and nodes are hashed as RFC 9162 says: ``SHA-256(0x00 || entry)`` and
  ``SHA-256(0x01 || left || right)``; an entry's bytes are its canonical JSON.
- Inclusion and consistency proofs are checked with the algorithms of RFC 9162 sections
  2.1.3.2 and 2.1.4.2.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from tellonce_client.errors import TellonceError
from tellonce_client.models import ConsistencyProof, InclusionProof

ED25519 = b"\x01"
# RFC 9162 section 2.1.1: the hash of an empty list of leaves.
EMPTY_ROOT = hashlib.sha256(b"").digest()
SIGNATURE_DASH = "\u2014"
HASH_SIZE = 32
# The largest tree size read, as the service and Go's sumdb/tlog read it (a signed 64-bit
# integer): a checkpoint claiming more is a lie, refused before ``int`` reads the digits.
MAX_TREE_SIZE = 2**63 - 1
# A verifier key's key hash (C2SP signed-note's key id): eight hex digits, either case.
_KEY_HASH = re.compile(r"[0-9a-fA-F]{8}")


class ProofError(TellonceError):
    """A note, key or proof that does not parse or does not verify."""


def canonical_entry(entry: dict[str, Any]) -> bytes:
    """The bytes a leaf hashes: sorted keys, no spaces, UTF-8 (the audit-proof contract)."""
    return json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def leaf_hash(entry_bytes: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + entry_bytes).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _b64(value: str, what: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ProofError(f"{what} is not base64") from None


@dataclass(frozen=True)
class Checkpoint:
    origin: str
    size: int
    root_hash: bytes


@dataclass(frozen=True)
class VerifierKey:
    """A C2SP note verifier key for Ed25519."""

    name: str
    key_hash: bytes
    public_key: Ed25519PublicKey

    @classmethod
    def parse(cls, vkey: str) -> VerifierKey:
        parts = vkey.strip().split("+", 2)
        if len(parts) != 3:
            raise ProofError("a verifier key is <name>+<hex key hash>+<base64 key>")
        name, hash_hex, key_b64 = parts
        if not name or any(character.isspace() for character in name):
            raise ProofError("a verifier key's name is not empty and holds no space (C2SP signed-note)")
        # Eight hex digits exactly: ``bytes.fromhex`` alone also reads whitespace among them.
        if not _KEY_HASH.fullmatch(hash_hex):
            raise ProofError("the verifier key's hash is not eight hex digits")
        claimed_hash = bytes.fromhex(hash_hex)
        raw = _b64(key_b64, "the verifier key")
        if len(raw) != 33 or raw[:1] != ED25519:
            raise ProofError("the verifier key is not an Ed25519 key")
        computed = hashlib.sha256(name.encode() + b"\n" + raw).digest()[:4]
        if claimed_hash != computed:
            raise ProofError("the verifier key's hash does not match its name and key")
        return cls(name=name, key_hash=computed, public_key=Ed25519PublicKey.from_public_bytes(raw[1:]))


def open_checkpoint(note: str, vkey: str | VerifierKey) -> Checkpoint:
    """The checkpoint in ``note`` if the log's key signed it; raise otherwise.

    Read as C2SP signed-note and tlog-checkpoint require: no control character but newline,
    a body and at least one well-formed signature line, and every line by the log's key
    (its name and key hash) must verify, not just one of them. Lines by other keys (witness
    cosignatures) are skipped, not trusted. The body's origin must be the key's name, as
    tlog-checkpoint recommends and tellonce always signs: a key that signs for two logs
    cannot pass one log's checkpoint off as the other's.
    """
    key = vkey if isinstance(vkey, VerifierKey) else VerifierKey.parse(vkey)
    if any(character < " " and character != "\n" for character in note):
        raise ProofError("a signed note holds no control character but newline")
    separator = note.find("\n\n")
    if separator < 0 or not note.endswith("\n") or separator + 2 == len(note):
        raise ProofError("a signed note is a body, a blank line and signature lines")
    body, signatures = note[: separator + 1], note[separator + 2 :]
    signed = False
    for line in signatures[:-1].split("\n"):
        fields = line.split(" ")
        if len(fields) != 3 or fields[0] != SIGNATURE_DASH or not fields[1]:
            raise ProofError("a signature line is an em dash, a key name and a base64 signature")
        raw = _b64(fields[2], "a signature")
        if fields[1] != key.name or raw[:4] != key.key_hash:
            continue
        try:
            if len(raw) != 68:
                raise InvalidSignature
            key.public_key.verify(raw[4:], body.encode())
        except InvalidSignature:
            raise ProofError("the checkpoint signature does not verify") from None
        signed = True
    if not signed:
        raise ProofError(f"the note carries no signature by {key.name}")
    checkpoint = _parse_body(body)
    if checkpoint.origin != key.name:
        raise ProofError(f"the checkpoint's origin is not {key.name}, the key's name")
    return checkpoint


def _parse_body(body: str) -> Checkpoint:
    lines = body.split("\n")
    if len(lines) < 4 or lines[-1] != "" or not lines[0]:
        raise ProofError("a checkpoint body is origin, size and root hash lines")
    digits = lines[1]
    if not (digits.isascii() and digits.isdigit()) or (len(digits) > 1 and digits[0] == "0"):
        raise ProofError("the tree size is not a decimal number")
    # The length first: ``int`` refuses (a bare ValueError) over 4,300 digits.
    if len(digits) > len(str(MAX_TREE_SIZE)) or int(digits) > MAX_TREE_SIZE:
        raise ProofError(f"the tree size is larger than {MAX_TREE_SIZE}")
    root = _b64(lines[2], "the root hash")
    if len(root) != HASH_SIZE:
        raise ProofError("the root hash is not 32 bytes")
    if any(not extension for extension in lines[3:-1]):
        raise ProofError("a checkpoint's extension lines are not empty")
    size = int(digits)
    if size == 0 and root != EMPTY_ROOT:
        # RFC 9162 2.1.1: the empty tree's root is fixed; a log that signs another lies.
        raise ProofError("a checkpoint of size 0 has the empty tree's root, SHA-256 of nothing")
    return Checkpoint(origin=lines[0], size=size, root_hash=root)


def _hashes(values: Sequence[bytes], what: str) -> None:
    """Refuse a hash that is not 32 bytes: no honest proof holds one."""
    for value in values:
        if len(value) != HASH_SIZE:
            raise ProofError(f"{what} is {len(value)} bytes, not {HASH_SIZE}")


def verify_inclusion(leaf: bytes, index: int, size: int, path: Sequence[bytes], root: bytes) -> None:
    """RFC 9162 section 2.1.3.2: raise unless ``leaf`` is at ``index`` in the tree ``root``."""
    if index >= size or index < 0:
        raise ProofError("the leaf index is outside the tree")
    _hashes([leaf, root], "a leaf or root hash")
    _hashes(path, "a proof hash")
    fn, sn, hashed = index, size - 1, leaf
    for sibling in path:
        if sn == 0:
            raise ProofError("the inclusion proof is too long")
        if fn & 1 or fn == sn:
            hashed = node_hash(sibling, hashed)
            if not fn & 1:
                while fn & 1 == 0 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            hashed = node_hash(hashed, sibling)
        fn >>= 1
        sn >>= 1
    if sn != 0 or hashed != root:
        raise ProofError("the inclusion proof does not lead to the checkpoint's root")


def verify_consistency(
    first: int, second: int, first_root: bytes, second_root: bytes, path: Sequence[bytes]
) -> None:
    """RFC 9162 section 2.1.4.2: raise unless tree ``second`` extends tree ``first``."""
    if first > second or first < 0:
        raise ProofError("the first tree is larger than the second")
    _hashes([first_root, second_root], "a root hash")
    _hashes(path, "a proof hash")
    if first == 0 and first_root != EMPTY_ROOT:
        # Every tree extends the empty one, whose root is fixed: a log that signed another
        # root for size 0 is not believed.
        raise ProofError("the empty tree's root is the SHA-256 of nothing")
    if first == second:
        if path or first_root != second_root:
            raise ProofError("equal sizes need an empty proof and equal roots")
        return
    if first == 0:
        if path:
            raise ProofError("a proof from the empty tree is empty")
        return
    if not path:
        raise ProofError("the consistency proof is empty")
    proof = list(path)
    if first & (first - 1) == 0:
        proof.insert(0, first_root)
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    first_hash = second_hash = proof[0]
    for node in proof[1:]:
        if sn == 0:
            raise ProofError("the consistency proof is too long")
        if fn & 1 or fn == sn:
            first_hash = node_hash(node, first_hash)
            second_hash = node_hash(node, second_hash)
            if not fn & 1:
                while fn & 1 == 0 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            second_hash = node_hash(second_hash, node)
        fn >>= 1
        sn >>= 1
    if sn != 0 or first_hash != first_root or second_hash != second_root:
        raise ProofError("the consistency proof does not join the two roots")


def verify_entry(proof: InclusionProof, checkpoint_note: str, vkey: str | VerifierKey) -> Checkpoint:
    """Check that ``proof.entry`` is in the log as of the signed checkpoint.

    The checkpoint must be of the proof's tree size (fetch the proof with
    ``tree_size=checkpoint.size``). Returns the checkpoint; raises ``ProofError``.
    """
    checkpoint = open_checkpoint(checkpoint_note, vkey)
    if checkpoint.size != proof.tree_size:
        raise ProofError(f"the proof is for tree size {proof.tree_size}, the checkpoint {checkpoint.size}")
    try:
        leaf = leaf_hash(canonical_entry(proof.entry))
    except UnicodeEncodeError:  # a lone surrogate, which JSON can escape and UTF-8 cannot encode
        raise ProofError("the entry is not Unicode text") from None
    if _b64(proof.leaf_hash, "the leaf hash") != leaf:
        raise ProofError("the entry does not hash to the proof's leaf hash")
    path = [_b64(h, "a proof hash") for h in proof.hashes]
    verify_inclusion(leaf, proof.leaf_index, proof.tree_size, path, checkpoint.root_hash)
    return checkpoint


def verify_checkpoints(
    older_note: str, newer_note: str, proof: ConsistencyProof, vkey: str | VerifierKey
) -> tuple[Checkpoint, Checkpoint]:
    """Check that the newer signed checkpoint extends the older one (nothing was rewritten).

    Both are of one log: ``open_checkpoint`` holds each origin to the key's name.
    """
    older = open_checkpoint(older_note, vkey)
    newer = open_checkpoint(newer_note, vkey)
    if (proof.first, proof.second) != (older.size, newer.size):
        raise ProofError("the proof is not between these checkpoints' sizes")
    path = [_b64(h, "a proof hash") for h in proof.hashes]
    verify_consistency(older.size, newer.size, older.root_hash, newer.root_hash, path)
    return older, newer
