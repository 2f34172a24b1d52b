"""``tellonce audit``: verify the log (from the database or an exported bundle), export it.

The bundle is one JSON-lines file of typed records:

- ``{"type": "bundle", "format": 1, "origin", "verifier_key", "tree_size"}`` first;
- ``{"type": "entry", "leaf_index", "entry_id", "leaf_hash", "entry"}`` per leaf, in order,
  where ``leaf_hash`` (base64) is the hash recorded when the entry was sequenced;
- ``{"type": "checkpoint", "tree_size", "root_hash", "note"}`` per signed checkpoint.

Offline verification trusts only the verifier key given on the command line.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import Progress

from service.audit import repository as audit_repository
from service.audit import service as audit_service
from service.audit.checkpoint import CheckpointError, NoteSigner, NoteVerifier
from service.audit.config import AuditSettings, load_signer
from service.audit.schemas import canonical_json
from service.audit.verify import LogVerifier, StoredCheckpoint, VerificationFailed
from service.config import get_settings
from service.db import create_engine

app = typer.Typer(no_args_is_help=True, help="The tamper-evident audit log.")
console = Console(stderr=True)
PAGE = 2000


def _verifier_from(key: str | None) -> NoteVerifier:
    if key is None:
        settings = get_settings()
        return NoteVerifier.parse(load_signer(settings, AuditSettings().origin).verifier_key())
    path = Path(key)
    text = path.read_text() if path.is_file() else key
    return NoteVerifier.parse(text)


async def verify_database(database_url: str, verifier: NoteVerifier) -> int:
    """Check the log in the database up to the size it has when the check starts (a
    running server keeps appending); return that size or raise ``VerificationFailed``."""
    engine = create_engine(database_url)
    try:
        with Progress(console=console, transient=True) as bar:
            task = bar.add_task("verifying audit log", total=None)

            def report(done: int, total: int) -> None:
                bar.update(task, completed=done, total=total)

            size, _checked = await audit_service.verify_stored_log(engine.connect, verifier, report)
            return size
    finally:
        await engine.dispose()


def _bundle_records(path: Path) -> Iterator[dict[str, Any]]:
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            try:
                record = json.loads(line)
            except ValueError:
                raise VerificationFailed(f"{path}:{number}: not a JSON line") from None
            if not isinstance(record, dict):
                raise VerificationFailed(f"{path}:{number}: not a typed record")
            yield record


def _b64(value: Any) -> bytes:
    try:
        return base64.b64decode(str(value), validate=True)
    except (binascii.Error, ValueError):
        raise VerificationFailed("a hash in the bundle is not base64") from None


def verify_bundle(path: Path, verifier: NoteVerifier) -> int:
    checkpoints = [
        StoredCheckpoint(
            int(r["tree_size"]), _b64(r["root_hash"]), str(r["note"]), f"checkpoint of size {r['tree_size']}"
        )
        for r in _bundle_records(path)
        if r.get("type") == "checkpoint"
    ]
    log = LogVerifier(verifier, checkpoints)
    for record in _bundle_records(path):
        if record.get("type") != "entry":
            continue
        entry = record.get("entry")
        canonical = canonical_json(entry) if isinstance(entry, dict) else None
        log.add(
            int(record["leaf_index"]), f"entry {record.get('entry_id')}", canonical, _b64(record["leaf_hash"])
        )
    return log.finish()


async def export_bundle(database_url: str, signer: NoteSigner, out: Path) -> int:
    """Write the bundle described in this module's docstring; return the tree size."""
    engine = create_engine(database_url)
    try:
        async with engine.connect() as conn:
            size = await audit_repository.tree_size(conn)
            checkpoints = await audit_repository.all_checkpoints(conn)
        with out.open("w", encoding="utf-8") as handle:
            header = {
                "type": "bundle",
                "format": 1,
                "origin": signer.name,
                "verifier_key": signer.verifier_key(),
                "tree_size": size,
            }
            handle.write(json.dumps(header) + "\n")
            after = -1
            while True:
                async with engine.connect() as conn:
                    rows = await audit_repository.page_sequenced(conn, after, PAGE)
                    recorded = await audit_repository.read_nodes(conn, [(0, leaf) for leaf, _e, _c in rows])
                for leaf, entry_id, canonical in rows:
                    record = {
                        "type": "entry",
                        "leaf_index": leaf,
                        "entry_id": entry_id,
                        "leaf_hash": base64.b64encode(recorded.get((0, leaf), b"")).decode(),
                        "entry": json.loads(canonical) if canonical else None,
                    }
                    handle.write(json.dumps(record, ensure_ascii=False) + "\n")
                if len(rows) < PAGE:
                    break
                after = rows[-1][0]
            for _cid, tree_size, root, note in checkpoints:
                record = {
                    "type": "checkpoint",
                    "tree_size": tree_size,
                    "root_hash": base64.b64encode(root).decode(),
                    "note": note,
                }
                handle.write(json.dumps(record) + "\n")
        return size
    finally:
        await engine.dispose()


@app.command("verify")
def verify(
    bundle: Path | None = typer.Option(None, "--bundle", help="Verify an exported bundle, offline."),
    key: str | None = typer.Option(
        None, "--key", help="The verifier key (vkey string or a file holding it); required with --bundle."
    ),
) -> None:
    """Recompute every leaf and the tree, and check every checkpoint. Exit 1 naming the first bad entry."""
    try:
        if bundle is not None:
            if key is None:
                typer.echo(
                    "--bundle needs --key: offline verification trusts only the key you give", err=True
                )
                raise typer.Exit(2)
            size = verify_bundle(bundle, _verifier_from(key))
        else:
            size = asyncio.run(verify_database(get_settings().database_url, _verifier_from(key)))
    except (VerificationFailed, CheckpointError) as exc:
        typer.echo(f"audit log does NOT verify: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"audit log verified: {size} entries, every checkpoint valid")


@app.command("export")
def export(out: Path = typer.Option(..., "--out", help="The bundle file to write (JSON lines).")) -> None:
    """Write the log, its checkpoints and the verifier key as one bundle for offline checks."""
    settings = get_settings()
    signer = load_signer(settings, AuditSettings().origin)
    size = asyncio.run(export_bundle(settings.database_url, signer, out))
    typer.echo(f"exported {size} entries to {out}")
