"""``audit check-releases`` over a bundle of 1,000,000 entries: goal under a minute.

The bundle is built here as ``tellonce audit export`` writes one: a catalog-change entry,
the owner's signed agreements as policy-change entries (one with a CEL condition, one
needing a case reference, one dated, one forbid), then a million access entries, most of
them releases of the owner's fields to other departments, each citing the agreement
version and digest the live engine chose, with the filter columns ``audit export`` writes
beside each, and checkpoints signed every 100,000 leaves.

Measured: the whole check (bundle verified leaf by leaf, every release re-decided) and,
as baselines in the same run, plain ``audit verify --bundle`` of the same file (the check
adds re-deciding to it) and ``json.loads`` of every line (the least any reader of the
bundle pays).
"""

from __future__ import annotations

import base64
import json
import os
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench import goals
from service.audit import merkle
from service.audit.checkpoint import Checkpoint, NoteSigner, NoteVerifier
from service.audit.cli import check_bundle_releases, verify_bundle
from service.audit.schemas import AuditEntry, canonical_json
from service.audit.writer import filter_columns
from service.policy.engine import Decision, RequestContext, compile_policy
from service.policy.schemas import AgreementSpec
from service.policy.service import agreements_from_rows
from service.policy.signing import OwnerSigner, OwnerVerifier, text_digest, version_text

ENTRIES = int(os.environ.get("BENCH_RELEASES_ENTRIES", "1000000"))
CHECKPOINT_EVERY = 100_000
OWNER = "dvla"
FIELDS = ["licence_status", "licence_number", "points"]
PURPOSES = ["benefit-eligibility", "tax-administration", "fraud-investigation"]
AGREEMENTS: list[dict[str, Any]] = [
    {
        "id": "licence-for-welfare",
        "consumer": "welfare",
        "fields": ["licence_status", "licence_number"],
        "actions": ["read"],
        "purposes": ["benefit-eligibility"],
        "legal_basis": "Social Security Administration Act 1992, s.122",
        "when": 'citizen.status == "active"',
    },
    {
        "id": "licence-for-fraud",
        "consumer": "welfare",
        "fields": ["licence_status", "points"],
        "actions": ["read"],
        "purposes": ["fraud-investigation"],
        "legal_basis": "Social Security Fraud Act 2001, s.1",
        "require_case_ref": True,
    },
    {
        "id": "licence-for-revenue",
        "consumer": "revenue",
        "fields": ["licence_status", "licence_number"],
        "actions": ["read"],
        "purposes": ["tax-administration"],
        "legal_basis": "Finance Act 2008, s.114",
        # Dated: its releases are re-decided per day, not once per request shape.
        "valid_until": "2030-12-31",
    },
    {
        "id": "no-numbers-for-revenue",
        "consumer": "revenue",
        "fields": ["licence_number"],
        "actions": ["read"],
        "legal_basis": "Data minimisation",
        "effect": "forbid",
    },
]
CATALOG = {
    "departments": [{"id": d, "name": d} for d in ("register", OWNER, "welfare", "revenue")],
    "purposes": [{"id": p, "name": p} for p in PURPOSES],
    "fields": [{"name": f, "owner": OWNER, "type": "string"} for f in FIELDS]
    + [{"name": "address", "owner": "register", "type": "string"}],
}
START = datetime(2026, 11, 1, tzinfo=UTC)
# The requests the bundle's access entries replay, cycled: consumer, fields, purpose, case
# reference, citizen status.
Shape = tuple[str, list[str], str, str | None, str]
SHAPES: list[Shape] = [
    ("welfare", ["licence_status", "licence_number"], "benefit-eligibility", None, "active"),
    ("welfare", ["licence_status", "points"], "fraud-investigation", "FR-2026-17", "active"),
    ("revenue", ["licence_status", "licence_number"], "tax-administration", None, "active"),
    ("welfare", ["licence_status"], "benefit-eligibility", None, "deceased"),
    ("dvla", ["licence_status"], "benefit-eligibility", None, "active"),
    ("welfare", ["address"], "benefit-eligibility", None, "active"),
]


def _write_bundle(path: Path, signer: NoteSigner, owner: OwnerSigner) -> None:
    signed = [owner.signed(AgreementSpec.model_validate(a).content()) for a in AGREEMENTS]
    rows = [(c["id"], OWNER, 1, "active", c) for c in signed]
    live = compile_policy(
        agreements_from_rows(rows, {OWNER: owner.verifier_key()}), dict.fromkeys(FIELDS, OWNER), PURPOSES
    )
    compact = merkle.CompactRange()
    checkpoints: list[dict[str, Any]] = []
    with path.open("w", encoding="utf-8") as handle:
        header = {"type": "bundle", "format": 2, "origin": signer.name, "verifier_key": signer.verifier_key()}
        handle.write(json.dumps(header) + "\n")

        def write(entry: dict[str, Any]) -> None:
            leaf = compact.size
            digest = merkle.leaf_hash(canonical_json(entry).encode())
            compact.append(digest)
            # The columns as ``audit export`` writes them: checked against the entry too.
            columns = filter_columns(entry)
            columns["time"] = columns["time"].isoformat()
            record = {
                "type": "entry",
                "leaf_index": leaf,
                "entry_id": leaf + 1,
                "leaf_hash": base64.b64encode(digest).decode(),
                "entry": entry,
                "columns": columns,
            }
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            if compact.size % CHECKPOINT_EVERY == 0:
                checkpoints.append(_checkpoint(signer, compact))

        base = {
            "request_id": "-",
            "client_id": "operator",
            "department": "",
            "decision": "permit",
            "status": 200,
        }
        write(
            AuditEntry.model_validate(
                {
                    **base,
                    "time": START.isoformat(),
                    "action": "catalog-change",
                    "document": canonical_json(CATALOG),
                }
            ).to_record()
        )
        for content in signed:
            document = version_text(content, OWNER)
            reason = {"field": "", "effect": "active", "agreement": content["id"], "version": 1}
            write(
                AuditEntry.model_validate(
                    {
                        **base,
                        "time": START.isoformat(),
                        "action": "policy-change",
                        "owners": [OWNER],
                        "reasons": [{**reason, "digest": text_digest(document)}],
                        "document": document,
                    }
                ).to_record()
            )
        # One validated entry per request shape and day, then per entry only what varies
        # (time, request, citizen): building a million entries through pydantic would take
        # longer than checking them.
        templates: dict[tuple[int, Any], dict[str, Any]] = {}
        while compact.size < ENTRIES:
            n = compact.size
            shape = n % len(SHAPES)
            consumer, fields, purpose, case_ref, status = SHAPES[shape]
            when = START + timedelta(seconds=n)
            template = templates.get((shape, when.date()))
            if template is None:
                context = RequestContext(purpose, case_ref, when, status)
                template = _access_entry(live.decide(consumer, "read", fields, context), SHAPES[shape], when)
                templates[(shape, when.date())] = template
            write(
                {
                    **template,
                    "time": when.isoformat(),
                    "request_id": f"req-{n}",
                    "citizen_id": f"c-{n % 50_000}",
                }
            )
        if not checkpoints or checkpoints[-1]["tree_size"] != compact.size:
            checkpoints.append(_checkpoint(signer, compact))
        for checkpoint in checkpoints:
            handle.write(json.dumps(checkpoint) + "\n")


def _access_entry(decisions: dict[str, Decision], shape: Shape, when: datetime) -> dict[str, Any]:
    """The audit entry the live service records for one read of ``shape`` at ``when``."""
    consumer, fields, purpose, case_ref, status = shape
    released = [f for f in fields if decisions[f].permitted]
    return AuditEntry.model_validate(
        {
            "time": when.isoformat(),
            "request_id": "-",
            "client_id": f"{consumer}-client",
            "department": consumer,
            "action": "read",
            "citizen_id": "-",
            "owners": ["register" if f == "address" else OWNER for f in fields][:1],
            "fields_requested": fields,
            "fields_released": released,
            "decision": "permit" if len(released) == len(fields) else ("partial" if released else "deny"),
            "reasons": [
                {
                    "field": d.field,
                    "effect": d.effect,
                    "agreement": d.agreement,
                    "version": d.version,
                    "digest": d.digest,
                    "reason": d.reason,
                }
                for d in decisions.values()
            ],
            "purpose": purpose,
            "case_ref": case_ref,
            "citizen_status": status,
            "legal_basis": sorted({d.legal_basis for d in decisions.values() if d.legal_basis}),
            "status": 200,
            "source": "127.0.0.1",
        }
    ).to_record()


def _checkpoint(signer: NoteSigner, compact: merkle.CompactRange) -> dict[str, Any]:
    root = compact.root()
    note = signer.sign(Checkpoint(signer.name, compact.size, root).body())
    return {
        "type": "checkpoint",
        "tree_size": compact.size,
        "root_hash": base64.b64encode(root).decode(),
        "note": note,
    }


def main() -> None:
    signer = NoteSigner("bench.tellonce/audit", Ed25519PrivateKey.generate())
    owner = OwnerSigner.generate(OWNER)
    log_key = NoteVerifier.parse(signer.verifier_key())
    with tempfile.TemporaryDirectory() as folder:
        bundle = Path(folder) / "bundle.jsonl"
        started = time.perf_counter()
        _write_bundle(bundle, signer, owner)
        size_mb = bundle.stat().st_size / 1e6
        print(
            f"bundle: {ENTRIES:,} entries, {size_mb:,.0f} MB, built in {time.perf_counter() - started:.1f}s"
        )

        started = time.perf_counter()
        with bundle.open(encoding="utf-8") as handle:
            for line in handle:
                json.loads(line)
        parsed = time.perf_counter() - started
        print(f"baseline, json.loads of every line:          {parsed:6.1f}s")

        started, cpu = time.perf_counter(), time.process_time()
        verify_bundle(bundle, log_key)
        verified = time.perf_counter() - started
        print(
            f"baseline, audit verify --bundle:             {verified:6.1f}s "
            f"({time.process_time() - cpu:.1f}s of CPU)"
        )

        started, cpu = time.perf_counter(), time.process_time()
        report, _unrecorded = check_bundle_releases(
            bundle, log_key, OWNER, OwnerVerifier.parse(owner.verifier_key())
        )
        checked = time.perf_counter() - started
        # On a shared machine the wall time includes waiting for a core: the CPU time shows it.
        print(
            f"check-releases (verify + re-decide):         {checked:6.1f}s "
            f"({time.process_time() - cpu:.1f}s of CPU, load average {os.getloadavg()[0]:.1f})"
        )
        print(f"  {report.summary()}")
        print(f"  {report.fields:,} field releases re-decided, {len(report.unjustified)} unjustified")
        print(
            f"ratio check-releases / audit verify --bundle: {checked / verified:.2f}x; "
            f"/ json.loads: {checked / parsed:.2f}x; {ENTRIES / checked:,.0f} entries/s"
        )
        goals.check(f"check-releases over {ENTRIES:,} entries", checked, 60, at_most=True, unit=" s")
