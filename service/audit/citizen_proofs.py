"""Inclusion proofs against the witnessed checkpoint, many at once (the citizen's access log).

Each proof has the shape of ``GET /v1/audit/entries/{index}/proof``. All of a page's
proofs are built from one fetch of the tree nodes they need, so a citizen with a
thousand accesses costs a few queries, not a thousand.
"""

from __future__ import annotations

import base64
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
        leaf = merkle.leaf_hash(
            json.dumps(proof["entry"], sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        )
        if base64.b64decode(proof["leaf_hash"]) != leaf or not merkle.verify_inclusion(
            leaf,
            proof["leaf_index"],
            proof["tree_size"],
            [base64.b64decode(h) for h in proof["hashes"]],
            checkpoint.root_hash,
        ):
            raise CosignatureError(f"the proof of leaf {proof['leaf_index']} does not verify")
        verified += 1
    return ProofCheck(verified, len(proofs) - verified, witnesses)
