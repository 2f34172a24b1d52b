"""Proofs over the stored tree: RFC 9162 inclusion and consistency, and the latest
signed checkpoint note. Read-only; the sequencer builds what they read."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

from service.audit import cosignatures, merkle
from service.audit import repository as audit_repository
from service.audit.errors import AuditQueryInvalid, LeafNotFound, NoCheckpoint
from service.audit.repository import Executor
from service.witness.cosignature import CosignatureVerifier


async def _read_for(db: Executor, build: Any) -> Any:
    """Run a proof or root computation with exactly the nodes it needs, fetched in one go."""
    keys = merkle.nodes_needed(build)
    nodes = await audit_repository.read_nodes(db, keys)
    return build(lambda level, index: nodes[(level, index)])


async def inclusion(
    db: Executor,
    leaf_index: int,
    tree_size: int | None,
    *,
    witnesses: Sequence[CosignatureVerifier] = (),
    quorum: int = 0,
) -> dict[str, Any]:
    """The proof of ``leaf_index`` in the tree of ``tree_size``; by default in the tree of
    the checkpoint ``GET /v1/audit/checkpoint`` serves, so the two verify together: with
    ``witnesses`` configured, the newest at ``quorum`` of them, otherwise the newest signed
    (or, before the first, the tree as it stands)."""
    # The checkpoint before the size: the sequencer may sign a larger one between the two
    # reads, and a checkpoint read first is never larger than the tree read after it.
    signed_size: int | None = None
    if tree_size is None and witnesses:
        found = await cosignatures.newest_witnessed(db, witnesses, quorum)
        if found is None:
            raise NoCheckpoint("No checkpoint has reached the witness quorum yet; name a tree_size.")
        signed_size = found[0].tree_size
    elif tree_size is None:
        latest = await audit_repository.latest_checkpoint(db)
        signed_size = latest.tree_size if latest is not None else None
    size = await audit_repository.tree_size(db)
    if tree_size is None:
        tree_size = signed_size if signed_size is not None else size
    if tree_size < 1 or tree_size > size:
        raise AuditQueryInvalid(f"tree_size must be between 1 and the current size {size}.")
    if leaf_index < 0 or leaf_index >= tree_size:
        raise LeafNotFound(f"No leaf {leaf_index} in a tree of size {tree_size}.")
    entry = await audit_repository.entry_at_leaf(db, leaf_index)
    if entry is None:
        raise LeafNotFound(f"No leaf {leaf_index}.")
    leaf = await audit_repository.read_nodes(db, [(0, leaf_index)])
    hashes = await _read_for(db, lambda read: merkle.inclusion_proof(read, leaf_index, tree_size))
    return {
        "leaf_index": leaf_index,
        "tree_size": tree_size,
        "leaf_hash": _b64(leaf[(0, leaf_index)]),
        "hashes": [_b64(h) for h in hashes],
        "entry": entry,
    }


async def consistency(db: Executor, first: int, second: int) -> dict[str, Any]:
    size = await audit_repository.tree_size(db)
    if first < 0 or first > second or second > size:
        raise AuditQueryInvalid(f"Need 0 <= first <= second <= the current size {size}.")
    hashes = await _read_for(db, lambda read: merkle.consistency_proof(read, first, second))
    return {"first": first, "second": second, "hashes": [_b64(h) for h in hashes]}


async def checkpoint_note(db: Executor) -> str:
    checkpoint = await audit_repository.latest_checkpoint(db)
    if checkpoint is None:
        raise NoCheckpoint("The log has no signed checkpoint yet.")
    return checkpoint.note


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()
