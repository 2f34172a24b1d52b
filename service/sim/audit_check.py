"""The demo auditor's check of the audit log, over the API as any auditor's client would.

It fetches the log's verifier key, exports every entry (``/v1/audit/export``), waits until
a signed checkpoint covers them all (with witnesses, ``/v1/audit/checkpoint`` serves only
checkpoints the witness quorum cosigned), exports again (now with every leaf index), checks
the checkpoint's signature and each witness's cosignature with that witness's own key, and
recomputes its Merkle root from the exported entries (RFC 9162 leaf hashes over each
entry's canonical JSON). It reads nothing from the database.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Sequence
from typing import Any

import httpx

from service.audit.checkpoint import Checkpoint, CheckpointError, NoteVerifier
from service.audit.merkle import CompactRange, leaf_hash
from service.sim.client import Credentials, DepartmentClient
from service.sim.report import AuditSummary
from service.sim.tally import Tally
from service.witness.cosignature import CosignatureVerifier, split_note


def canonical(entry: dict[str, Any]) -> bytes:
    """The bytes a leaf hashes: the entry as canonical JSON (DESIGN.md, audit proofs)."""
    return json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


async def _exported(auditor: DepartmentClient) -> list[dict[str, Any]]:
    return [json.loads(line) for line in await auditor.export()]


async def _checkpoint(auditor: DepartmentClient, verifier: NoteVerifier) -> tuple[Checkpoint, str] | None:
    note = await auditor.checkpoint()
    return (verifier.open_checkpoint(note), note) if note else None


def cosigners(note: str, witness_keys: Sequence[str]) -> int:
    """How many of the witnesses (their vkeys) validly cosigned the checkpoint ``note``."""
    body, lines = split_note(note)
    return sum(CosignatureVerifier.parse(key).find(body, lines) is not None for key in witness_keys)


async def verify_log(
    base_url: str, credentials: Credentials, wait_seconds: float, witness_keys: Sequence[str] = ()
) -> AuditSummary:
    """Verify the log as the auditor sees it, and count the checkpoint's valid cosignatures
    by the witnesses ``witness_keys``; raise ``CheckpointError`` if the log does not hold."""
    async with httpx.AsyncClient(base_url=base_url, timeout=120.0) as http:
        auditor = DepartmentClient(http, credentials, Tally())
        verifier = NoteVerifier.parse(await auditor.verifier_key())
        items = await _exported(auditor)
        # Every exported entry (the export's own included) is covered once the sequencer
        # has signed (and the witnesses cosigned) a checkpoint at least this large.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_seconds
        found = await _checkpoint(auditor, verifier)
        while (found is None or found[0].size < len(items)) and loop.time() < deadline:
            await asyncio.sleep(0.2)
            found = await _checkpoint(auditor, verifier)
        if found is None:
            if witness_keys:
                raise CheckpointError("no checkpoint of the log has been cosigned by the witnesses yet")
            raise CheckpointError("the log has no signed checkpoint yet")
        checkpoint, note = found
        # Exported again: entries the first export saw unsequenced now have their leaves.
        items = await _exported(auditor)
    leaves = {item["leaf_index"]: item["entry"] for item in items if item["leaf_index"] is not None}
    tree = CompactRange()
    for index in range(checkpoint.size):
        if index not in leaves:
            raise CheckpointError(f"the export lacks leaf {index} of the checkpoint")
        tree.append(leaf_hash(canonical(leaves[index])))
    if tree.root() != checkpoint.root_hash:
        raise CheckpointError("the exported entries do not hash to the checkpoint's root")
    return AuditSummary(
        entries=checkpoint.size,
        root=base64.b64encode(checkpoint.root_hash).decode(),
        cosigned=cosigners(note, witness_keys),
        witnesses=len(witness_keys),
    )
