"""The demo auditor's check of the audit log, over the API as any auditor's client would.

It fetches the log's verifier key, exports every entry (``/v1/audit/export``), waits until
a signed checkpoint covers them all, exports again (now with every leaf index), checks the
checkpoint's signature, and recomputes its Merkle root from the exported entries (RFC 9162
leaf hashes over each entry's canonical JSON). It reads nothing from the database.
"""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import httpx

from service.audit.checkpoint import Checkpoint, CheckpointError, NoteVerifier
from service.audit.merkle import CompactRange, leaf_hash
from service.sim.client import Credentials, DepartmentClient
from service.sim.report import AuditSummary
from service.sim.tally import Tally


def canonical(entry: dict[str, Any]) -> bytes:
    """The bytes a leaf hashes: the entry as canonical JSON (DESIGN.md, audit proofs)."""
    return json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


async def _exported(auditor: DepartmentClient) -> list[dict[str, Any]]:
    return [json.loads(line) for line in await auditor.export()]


async def _checkpoint(auditor: DepartmentClient, verifier: NoteVerifier) -> Checkpoint | None:
    note = await auditor.checkpoint()
    return verifier.open_checkpoint(note) if note else None


async def verify_log(base_url: str, credentials: Credentials, wait_seconds: float) -> AuditSummary:
    """Verify the log as the auditor sees it; raise ``CheckpointError`` if it does not hold."""
    async with httpx.AsyncClient(base_url=base_url, timeout=120.0) as http:
        auditor = DepartmentClient(http, credentials, Tally())
        verifier = NoteVerifier.parse(await auditor.verifier_key())
        items = await _exported(auditor)
        # Every exported entry (the export's own included) is covered once the sequencer
        # has signed a checkpoint at least this large.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_seconds
        checkpoint = await _checkpoint(auditor, verifier)
        while (checkpoint is None or checkpoint.size < len(items)) and loop.time() < deadline:
            await asyncio.sleep(0.2)
            checkpoint = await _checkpoint(auditor, verifier)
        if checkpoint is None:
            raise CheckpointError("the log has no signed checkpoint yet")
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
    return AuditSummary(entries=checkpoint.size, root=base64.b64encode(checkpoint.root_hash).decode())
