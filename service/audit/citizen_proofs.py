"""Inclusion proofs against the witnessed checkpoint, many at once (the citizen's access log).

Each proof has the shape of ``GET /v1/audit/entries/{index}/proof``. All of a page's
proofs are built from one fetch of the tree nodes they need, so a citizen with a
thousand accesses costs a few queries, not a thousand.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from service.audit import merkle
from service.audit import repository as audit_repository
from service.audit.checkpoint import Checkpoint, NoteVerifier
from service.audit.errors import NoCheckpoint
from service.audit.repository import Executor
from service.audit.witnessing import WitnessConfig, witnessed_checkpoint_note
from service.witness.cosignature import CosignatureError, split_note


@dataclass(frozen=True)
class WitnessedProofs:
    note: str | None  # the witnessed checkpoint every proof is against; None if there is none yet
    tree_size: int
    proofs: list[dict[str, Any] | None]  # one per requested leaf; None when not yet covered


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


async def proofs_for(
    db: Executor, config: WitnessConfig, leaves: Sequence[tuple[int | None, str]]
) -> WitnessedProofs:
    """Proofs for ``(leaf index or None, canonical JSON)`` pairs against the newest
    witnessed checkpoint. Leaves not yet sequenced, or sequenced after that checkpoint,
    get None: they will be covered by a later one."""
    try:
        note = await witnessed_checkpoint_note(db, config)
    except NoCheckpoint:
        return WitnessedProofs(None, 0, [None] * len(leaves))
    size = Checkpoint.parse_body(split_note(note)[0]).size
    covered = sorted({leaf for leaf, _c in leaves if leaf is not None and leaf < size})
    keys: set[merkle.NodeKey] = {(0, leaf) for leaf in covered}
    for leaf in covered:
        keys |= merkle.nodes_needed(partial(merkle.inclusion_proof, index=leaf, size=size))
    nodes = await audit_repository.read_nodes(db, keys)

    def read(level: int, index: int) -> bytes:
        return nodes[(level, index)]

    proofs: list[dict[str, Any] | None] = []
    for position, canonical in leaves:
        if position is None or position >= size:
            proofs.append(None)
            continue
        proofs.append(
            {
                "leaf_index": position,
                "tree_size": size,
                "leaf_hash": _b64(nodes[(0, position)]),
                "hashes": [_b64(h) for h in merkle.inclusion_proof(read, position, size)],
                "entry": json.loads(canonical),
            }
        )
    return WitnessedProofs(note, size, proofs)


@dataclass(frozen=True)
class ProofCheck:
    """What an outside verifier concludes about one page of proofs."""

    verified: int
    pending: int
    witnesses: tuple[str, ...]


def check_proofs(
    log_key: NoteVerifier, config: WitnessConfig, note: str | None, proofs: Sequence[dict[str, Any] | None]
) -> ProofCheck:
    """Verify a page of proofs as a citizen's own verifier would: the log's signature and
    each witness's cosignature on ``note``, then every entry's leaf hash and inclusion
    proof. Raises ``CheckpointError`` on any failure: a note the log key did not sign as
    ``CheckpointError`` itself; a quorum not reached, a cosignature that does not verify or
    a proof that does not as its subclass ``CosignatureError``."""
    if note is None:
        return ProofCheck(0, len(proofs), ())
    checkpoint = log_key.open_checkpoint(note)
    body, lines = split_note(note)
    witnesses = tuple(w.name for w in config.witnesses if w.verifier.find(body, lines) is not None)
    if len(witnesses) < config.quorum:
        raise CosignatureError("the checkpoint is not cosigned by the witness quorum")
    verified = 0
    for proof in proofs:
        if proof is None:
            continue
        index = proof.get("leaf_index") if isinstance(proof, dict) else None
        if not _proves(proof, checkpoint):
            raise CosignatureError(f"the proof of leaf {index!r} does not verify")
        verified += 1
    return ProofCheck(verified, len(proofs) - verified, witnesses)


def _digest(value: Any) -> bytes:
    """A base64 hash of 32 bytes, or ``ValueError``."""
    if not isinstance(value, str):
        raise ValueError("not base64 text")
    digest = binascii.a2b_base64(value, strict_mode=True)
    if len(digest) != len(merkle.EMPTY_ROOT):
        raise ValueError("not a 32-byte hash")
    return digest


def _proves(proof: Any, checkpoint: Checkpoint) -> bool:
    """Whether ``proof`` (as ``proofs_for`` builds one, read as outside input) shows its
    entry in the tree ``checkpoint`` signs: of that tree's size (RFC 9162 binds the leaf
    index to the tree size the path is walked for), its entry hashing to its leaf hash,
    and its path leading to the signed root."""
    try:
        entry, index, size = proof["entry"], proof["leaf_index"], proof["tree_size"]
        if not isinstance(entry, dict) or type(index) is not int or type(size) is not int:
            return False
        recorded, path = _digest(proof["leaf_hash"]), [_digest(h) for h in proof["hashes"]]
        canonical = json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    except (KeyError, TypeError, ValueError, binascii.Error, RecursionError):
        return False
    if size != checkpoint.size:
        return False
    leaf = merkle.leaf_hash(canonical.encode())
    return recorded == leaf and merkle.verify_inclusion(leaf, index, size, path, checkpoint.root_hash)
