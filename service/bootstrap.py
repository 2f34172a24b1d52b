"""Bringing an installation up: what ``tellonce init`` makes and what ``serve`` checks first.

Production never generates a key by itself (a key made silently on one replica is a key the
others do not have). ``tellonce init`` is the one step that creates them, on purpose, and says
what it made and what to back up. ``serve`` and ``worker`` call :func:`startup_refusal` first,
so a missing key or a refused setting stops the process with one line naming the fix instead
of a traceback from deep inside the first component that needed it, and then
:func:`check_secret_files`, so a key file other accounts may read stops it the same way.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from service.audit.config import SIGNING_KEY_NAME, signing_key_path
from service.auth.keys import check_key_files, manifest_path
from service.config import Settings
from service.private_files import (
    SharedSecretFile,
    check_owner_only,
    check_usable_dir,
    make_private_dir,
    os_refusal,
)

logger = logging.getLogger("tellonce.bootstrap")


def production_refusals(settings: Settings) -> list[str]:
    """Settings production refuses unless an explicit ``TELLONCE_ALLOW_*`` override says otherwise."""
    if settings.env != "production":
        return []
    refusals: list[str] = []
    if settings.is_sqlite and not settings.allow_sqlite_in_production:
        refusals.append(
            "production refuses SQLite: set TELLONCE_DATABASE_URL to PostgreSQL "
            "(or TELLONCE_ALLOW_SQLITE_IN_PRODUCTION=true to accept it)"
        )
    if urlsplit(settings.public_url).scheme != "https" and not settings.allow_insecure_public_url:
        refusals.append(
            f"production refuses a public URL that is not https ({settings.public_url}): set "
            "TELLONCE_PUBLIC_URL=https://... (or TELLONCE_ALLOW_INSECURE_PUBLIC_URL=true to accept it)"
        )
    # Itself the override of the webhook SSRF guard, for loopback receivers in development
    # and tests; production has no override for it.
    if settings.webhook_allow_private:
        refusals.append(
            "production refuses TELLONCE_WEBHOOK_ALLOW_PRIVATE (webhooks to loopback and private "
            "addresses are for development and tests only): unset it"
        )
    return refusals


def production_overrides(settings: Settings) -> list[str]:
    """The ``TELLONCE_ALLOW_*`` overrides actually in effect, for the start-up log."""
    if settings.env != "production":
        return []
    overrides: list[str] = []
    if settings.is_sqlite and settings.allow_sqlite_in_production:
        overrides.append("TELLONCE_ALLOW_SQLITE_IN_PRODUCTION: running production on SQLite")
    if urlsplit(settings.public_url).scheme != "https" and settings.allow_insecure_public_url:
        overrides.append(
            f"TELLONCE_ALLOW_INSECURE_PUBLIC_URL: running production with public URL {settings.public_url}"
        )
    return overrides


def keys_in_token(settings: Settings) -> bool:
    """With ``TELLONCE_KEY_PROVIDER=pkcs11`` there is no root key and the audit checkpoint
    key is a key pair in the token (made there by ``tellonce init``, or outside production
    by the first signer): neither is a file."""
    return settings.key_provider == "pkcs11"


def token_checkpoint_key(settings: Settings) -> str:
    """Where the audit checkpoint key pair is, with ``TELLONCE_KEY_PROVIDER=pkcs11``."""
    from service.crypto.hsm import AUDIT_SIGNING_LABEL

    return f"key pair {AUDIT_SIGNING_LABEL!r} in the PKCS#11 token {settings.pkcs11_token_label!r}"


def _checkpoint_key_in_token(settings: Settings) -> bool:
    """Whether the token holds the audit checkpoint key pair (looked for, never made);
    ``RootKeyUnavailable`` if the token cannot be opened."""
    from service.crypto.hsm import has_ed25519_pair, open_token

    return has_ed25519_pair(open_token(settings))


def missing_keys(settings: Settings) -> list[str]:
    """The keys a production process needs and cannot find (development makes its own):
    files, and with a PKCS#11 token the checkpoint key pair in it (``RootKeyUnavailable``
    if the token cannot be opened)."""
    if settings.allows_generated_keys:
        return []
    missing: list[str] = []
    in_token = keys_in_token(settings)
    if not in_token and settings.root_key is None and not settings.root_key_file.exists():
        missing.append(f"root key (TELLONCE_ROOT_KEY or {settings.root_key_file})")
    manifest = manifest_path(settings.data_dir)
    if not manifest.exists():
        missing.append(f"access-token signing key ({manifest.parent})")
    if in_token:
        if not _checkpoint_key_in_token(settings):
            missing.append(f"audit checkpoint key ({token_checkpoint_key(settings)})")
    elif not signing_key_path(settings).exists():
        missing.append(f"audit checkpoint key ({signing_key_path(settings)})")
    return missing


def check_secret_files(settings: Settings) -> None:
    """Refuse, with ``SharedSecretFile`` (one line naming the file and ``chmod 600``), if a
    file in which this installation keeps a secret it reads grants any access to its group
    or to other accounts, in every environment: the root key file (unless
    ``TELLONCE_ROOT_KEY`` is set), the audit checkpoint key and the access-token signing
    keys. Files not made yet are not looked for (``missing_keys`` says which are needed).
    Each is also checked where it is read; this is the check before anything starts."""
    if not keys_in_token(settings):
        if settings.root_key is None and settings.root_key_file.exists():
            check_owner_only(settings.root_key_file, "root key")
        checkpoint_key = signing_key_path(settings)
        if checkpoint_key.exists():
            check_owner_only(checkpoint_key, SIGNING_KEY_NAME)
    check_key_files(settings.data_dir)


def startup_refusal(settings: Settings) -> str | None:
    """One line saying why this process must not start and what fixes it, or None."""
    refusals = production_refusals(settings)
    if refusals:
        return "; ".join(refusals)
    missing = missing_keys(settings)
    if missing:
        fix = "run `tellonce init`"
        if any(item.startswith("root key") for item in missing):
            fix = "set TELLONCE_ROOT_KEY from your key store (or `tellonce init --new-root-key`), then " + fix
        return f"cannot start: missing {', '.join(missing)}; {fix}"
    return None


def lost_checkpoint_key(settings: Settings, held: int) -> str:
    """``tellonce init``'s refusal to replace a lost audit checkpoint key unasked: a file,
    or a key pair in the PKCS#11 token."""
    if keys_in_token(settings):
        missing = f"the audit checkpoint {token_checkpoint_key(settings)} is missing"
        restore = "restore the token's key pair from its backup (as your HSM provides)"
    else:
        missing = f"the audit checkpoint key {signing_key_path(settings)} is missing"
        restore = (
            "put the backed-up key file back (a restore brings back the data directory with the database)"
        )
    return (
        f"{missing} but the database holds {held} checkpoints signed with it: {restore} and "
        "run init again, or run `tellonce init --new-checkpoint-key` to make a new key, after "
        "which `tellonce audit verify` fails from the first of those checkpoints unless given "
        "the lost key's verifier key too"
    )


def new_key_warning(held: int) -> str:
    """What ``--new-checkpoint-key`` costs, said when it made a key."""
    return (
        f"the {held} checkpoints already stored were signed by the lost key and verify only "
        "with its verifier key; the change of key is recorded in the audit log, and "
        "`tellonce audit verify --key OLD-VERIFIER-KEY --key NEW-VERIFIER-KEY` checks each "
        "checkpoint against the key in force at its size (without the old key it fails from "
        "the first of them); give auditors the new verifier key below"
    )


class InitFailed(RuntimeError):
    """``tellonce init`` stopped; the message says why and what to do."""


@contextlib.contextmanager
def _data_dir_errors(settings: Settings) -> Iterator[None]:
    """A file or folder of the data directory that cannot be used (not a folder, not
    readable or writable): ``InitFailed`` naming it and the OS reason, not a traceback. An
    ``OSError`` naming no file (not the data directory's) goes on as it was."""
    try:
        yield
    except OSError as exc:
        if not exc.filename:
            raise
        raise InitFailed(f"cannot use the data directory {settings.data_dir}: {os_refusal(exc)}") from None


@dataclass
class InitReport:
    """What ``tellonce init`` found and did, and what the operator must back up."""

    steps: list[str] = field(default_factory=list)
    backup: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    checkpoint_verifier_key: str = ""


def _write_root_key(path: Path) -> None:
    make_private_dir(path.parent)
    # O_EXCL and 0600 from the start: never readable by others, never overwritten.
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(base64.b64encode(secrets.token_bytes(32)).decode() + "\n")


async def _stored_kek(settings: Settings) -> tuple[str, int] | None:
    """One department KEK version from the database, to prove the root key opens it (None
    before the first migration too)."""
    from sqlalchemy import inspect, select

    from service.crypto.models import KeyEncryptionKey
    from service.db import engine_for

    engine = engine_for(settings)
    try:
        async with engine.connect() as conn:
            if not await conn.run_sync(lambda sync: inspect(sync).has_table(KeyEncryptionKey.__tablename__)):
                return None
            row = (
                await conn.execute(
                    select(KeyEncryptionKey.department, KeyEncryptionKey.version)
                    .where(KeyEncryptionKey.wrapped_key.is_not(None))
                    .limit(1)
                )
            ).first()
    finally:
        await engine.dispose()
    return None if row is None else (str(row[0]), int(row[1]))


async def _root_key_opens(settings: Settings, department: str, version: int) -> bool:
    from service.crypto.errors import KeyUnwrapError
    from service.crypto.keyring import Keyring
    from service.db import engine_for

    keyring = Keyring.from_settings(settings)
    engine = engine_for(settings)
    try:
        async with engine.connect() as conn:
            await keyring.kek(conn, department, version)
    except KeyUnwrapError:
        return False
    finally:
        await engine.dispose()
    return True


async def _signed_checkpoints(settings: Settings) -> int:
    """How many signed audit checkpoints the database holds (0 before its first migration)."""
    from sqlalchemy import func, inspect, select

    from service.audit.models import AuditCheckpoint
    from service.db import engine_for

    engine = engine_for(settings)
    try:
        async with engine.connect() as conn:
            if not await conn.run_sync(lambda sync: inspect(sync).has_table(AuditCheckpoint.__tablename__)):
                return 0
            return int((await conn.execute(select(func.count()).select_from(AuditCheckpoint))).scalar_one())
    finally:
        await engine.dispose()


async def _lost_key_checkpoint(settings: Settings, origin: str) -> tuple[int, str]:
    """(size, ``<name>+<hex key id>`` of the key that signed it) of the largest stored
    checkpoint: the last the lost key signed. A note's signature line names its key so."""
    from sqlalchemy import select

    from service.audit.checkpoint import CheckpointError, parse_note
    from service.audit.models import AuditCheckpoint
    from service.db import engine_for

    engine = engine_for(settings)
    try:
        async with engine.connect() as conn:
            size, note = (
                await conn.execute(
                    select(AuditCheckpoint.tree_size, AuditCheckpoint.note)
                    .order_by(AuditCheckpoint.tree_size.desc())
                    .limit(1)
                )
            ).one()
    finally:
        await engine.dispose()
    try:
        _text, signatures = parse_note(str(note))
    except CheckpointError as exc:
        raise InitFailed(f"the stored checkpoint of size {size} cannot be read: {exc}") from None
    for signature in signatures:
        if signature.name == origin:
            return int(size), f"{signature.name}+{signature.key_id.hex()}"
    raise InitFailed(f"the stored checkpoint of size {size} carries no signature by {origin}")


async def _revisions(settings: Settings) -> set[str]:
    from service.db import engine_for
    from service.schema import current_revisions

    engine = engine_for(settings)
    try:
        return await current_revisions(engine)
    finally:
        await engine.dispose()


async def _audit_created(
    settings: Settings, created: list[str], checkpoint_key_change: tuple[str, str, int] | None = None
) -> None:
    """Key creation is a key operation: recorded under the operator who ran init. A new
    checkpoint key that replaces a lost one (``checkpoint_key_change``: the old key's
    ``<name>+<hex key id>``, the new verifier key, the size of the old key's last
    checkpoint) is recorded as a checkpoint-key change, which ``audit verify`` reads."""
    from service import operator
    from service.audit import entries
    from service.audit import writer as audit_writer
    from service.audit.checkpoint_keys import key_change_entry
    from service.db import engine_for

    engine = engine_for(settings)
    actor = operator.audit_client_id()
    try:
        async with engine.begin() as conn:
            for line in created:
                if checkpoint_key_change is not None and line.startswith("audit checkpoint key: created"):
                    entry = key_change_entry(actor, f"init: {line}", *checkpoint_key_change)
                else:
                    entry = entries.operator_entry(actor, "key-operation", "", f"init: {line}")
                await audit_writer.append_in_transaction(conn, entry)
    finally:
        await engine.dispose()


def initialise(
    settings: Settings,
    *,
    new_root_key: bool = False,
    new_checkpoint_key: bool = False,
    say: Callable[[str], None],
) -> InitReport:
    """Check the root key (or the token), create the missing signing keys, migrate; safe to
    run again. A missing audit checkpoint key file is made anew only while the database
    holds no signed checkpoint, or with ``new_checkpoint_key``: the stored checkpoints were
    signed by the lost key, so the new key is recorded in the log as a checkpoint-key change
    (``audit.checkpoint_keys``), and ``tellonce audit verify`` then needs both verifier keys.

    With a PKCS#11 token the same holds for the checkpoint key pair in the token.

    Everything that can refuse is checked before anything is made: a refused init
    (``InitFailed``, or ``NewerSchema`` for a database a newer release migrated) leaves the
    data directory, the token and the database as they were. A data directory, or its
    signing-keys folder, that is not a folder or cannot be read (or written, where a key is
    to be made) is one of those refusals; a write the OS refuses after every check passed
    is ``InitFailed`` too, naming the file, but what was made before it stays."""
    from alembic.script import ScriptDirectory

    from service.audit.checkpoint import NoteSigner
    from service.audit.config import AuditSettings, create_signing_key, read_signing_key
    from service.audit.errors import SigningKeyMissing
    from service.auth.keys import SigningKeyCorrupt, SigningKeys, ensure_signing_key
    from service.crypto.errors import RootKeyUnavailable
    from service.crypto.providers import load_root_key
    from service.schema import alembic_config, head_revisions, refuse_newer_schema, upgrade

    refusals = production_refusals(settings)
    if refusals:
        raise InitFailed("; ".join(refusals))
    key_folder = manifest_path(settings.data_dir).parent
    # A data directory that cannot be read, and a key file others may read, are refused
    # before anything is made or changed.
    try:
        with _data_dir_errors(settings):
            for folder in (settings.data_dir, key_folder):
                check_usable_dir(folder, write=False)
            check_secret_files(settings)
    except SharedSecretFile as exc:
        raise InitFailed(str(exc)) from None
    report = InitReport()
    in_token = keys_in_token(settings)

    def step(line: str) -> None:
        report.steps.append(line)
        say(line)

    # The checks. Nothing is made until every one has passed.
    if in_token and new_root_key:
        raise InitFailed(
            "--new-root-key: with TELLONCE_KEY_PROVIDER=pkcs11 there is no root key (the token "
            "holds the department keys); run `tellonce init` without it"
        )
    # The root key: every stored value is lost without it, so init never replaces one.
    # With a PKCS#11 token there is none: the token holds the keys, and must open.
    make_root_key = False
    if in_token:
        try:
            checkpoint_key_present = _checkpoint_key_in_token(settings)
        except RootKeyUnavailable as exc:
            raise InitFailed(str(exc)) from None
    elif settings.root_key is not None:
        source = "TELLONCE_ROOT_KEY"
    elif settings.root_key_file.exists():
        source = str(settings.root_key_file)
    elif new_root_key or settings.allows_generated_keys:
        make_root_key = True
        source = str(settings.root_key_file)
    else:
        raise InitFailed(
            "no root key: set TELLONCE_ROOT_KEY (base64 of 32 bytes, from your key store) or run "
            "`tellonce init --new-root-key` to create "
            f"{settings.root_key_file}"
        )
    if not in_token and not make_root_key:
        try:
            load_root_key(settings)
        except RootKeyUnavailable as exc:
            raise InitFailed(str(exc)) from None

    checkpoint_key = signing_key_path(settings)
    if not in_token:
        checkpoint_key_present = checkpoint_key.exists()
        # An audit checkpoint key file that is there must be usable.
        if checkpoint_key_present:
            try:
                read_signing_key(checkpoint_key)
            except (SharedSecretFile, SigningKeyMissing) as exc:
                raise InitFailed(str(exc)) from None
    # Folders that keys are to be made in must be writable.
    manifest = manifest_path(settings.data_dir)
    with _data_dir_errors(settings):
        check_usable_dir(settings.data_dir, write=make_root_key or not (in_token or checkpoint_key_present))
        check_usable_dir(key_folder, write=not manifest.exists())

    # Then what the database holds (read only once the checks above passed; an SQLite file
    # is made by the first connection). One a newer release migrated is neither read nor
    # migrated here.
    before = asyncio.run(_revisions(settings))
    refuse_newer_schema(before, ScriptDirectory.from_config(alembic_config(settings.database_url)))

    # A root key (or token) that does not open the stored KEKs would fail on the first read.
    opener = f"the PKCS#11 token {settings.pkcs11_token_label!r}" if in_token else "the root key"
    stored = asyncio.run(_stored_kek(settings))
    if stored is None:
        department_keys = "department keys: none stored yet (made on first use)"
    elif make_root_key:
        raise InitFailed(
            f"no root key, and the database holds department keys ({stored[0]} v{stored[1]}) "
            "that a new one would not open: set TELLONCE_ROOT_KEY from your key store, or put "
            f"{settings.root_key_file} back"
        )
    elif asyncio.run(_root_key_opens(settings, *stored)):
        department_keys = f"department keys: {opener} opens them (checked {stored[0]} v{stored[1]})"
    else:
        raise InitFailed(
            f"{opener} does not open the stored key of {stored[0]} v{stored[1]}: "
            f"this is not {'the token' if in_token else 'the root key'} this database was written with"
        )

    # A lost checkpoint key is not replaced unasked: the stored checkpoints would no longer verify.
    signed_by_lost_key = 0
    lost_key: tuple[int, str] | None = None
    if not checkpoint_key_present:
        signed_by_lost_key = asyncio.run(_signed_checkpoints(settings))
        if signed_by_lost_key and not new_checkpoint_key:
            raise InitFailed(lost_checkpoint_key(settings, signed_by_lost_key))
        if signed_by_lost_key:
            # Named in the log with the new key, so auditors can hold each checkpoint to its key.
            lost_key = asyncio.run(_lost_key_checkpoint(settings, AuditSettings().origin))

    # Steps 1 to 3 write in the data directory: checked above, but it may still refuse.
    with _data_dir_errors(settings):
        # 1. The root key, or the token.
        if in_token:
            step(f"key provider: PKCS#11 token {settings.pkcs11_token_label!r} (no root key)")
            report.backup.append(
                f"the PKCS#11 token {settings.pkcs11_token_label!r}: it holds the department keys and "
                "the audit checkpoint key, which never leave it; back it up as your HSM provides"
            )
        else:
            if make_root_key:
                _write_root_key(settings.root_key_file)
                step(f"root key: created {source} (mode 0600)")
            else:
                step(f"root key: present ({source})")
            report.backup.append(
                f"the root key ({source}): without it every stored value is unreadable; keep it apart "
                "from database backups"
            )

        # 2. The access-token signing key.
        existed = manifest.exists()
        ensure_signing_key(settings.data_dir, may_generate=True)
        # Read as a server reads them: "present" means usable, not merely there.
        try:
            SigningKeys(settings.data_dir, settings.access_token_ttl_seconds)
        except SigningKeyCorrupt as exc:
            raise InitFailed(str(exc)) from None
        except OSError as exc:
            raise InitFailed(
                f"cannot read the access-token signing key in {exc.filename}: {exc.strerror}"
            ) from None
        step(f"access-token signing key: {'present' if existed else 'created'} ({manifest.parent})")
        report.backup.append(f"{manifest.parent}/ (every replica needs the same folder)")

        # 3. The audit checkpoint key: an Ed25519 seed file (base64, one line), or a key pair
        # in the token.
        if in_token:
            from service.crypto.hsm import TokenEd25519Key, open_token

            where = token_checkpoint_key(settings)
            # The token opened, and can make an Ed25519 pair, in the checks above.
            signer = NoteSigner(AuditSettings().origin, TokenEd25519Key(open_token(settings), create=True))
            created = not checkpoint_key_present
        else:
            where = str(checkpoint_key)
            created = create_signing_key(checkpoint_key)
            signer = NoteSigner(AuditSettings().origin, read_signing_key(checkpoint_key))
            report.backup.append(f"{checkpoint_key} (every replica needs the same key)")
        if created and signed_by_lost_key:
            step(
                f"audit checkpoint key: created ({where}) with --new-checkpoint-key; "
                f"{signed_by_lost_key} stored checkpoints were signed by the lost key"
            )
            report.warnings.append(new_key_warning(signed_by_lost_key))
        else:
            step(f"audit checkpoint key: {'created' if created else 'present'} ({where})")
        report.checkpoint_verifier_key = signer.verifier_key()

    # 4. The schema.
    upgrade(settings.database_url)
    heads = head_revisions()
    if before == heads:
        step(f"database: already at {', '.join(sorted(heads))}")
    else:
        step(f"database: migrated from {', '.join(sorted(before)) or 'empty'} to {', '.join(sorted(heads))}")
    report.backup.append("the database (pg_dump, or the SQLite file through its backup API)")
    created_keys = [line for line in report.steps if ": created" in line and not line.startswith("root key")]
    if created_keys:
        change = None
        if lost_key is not None and created:
            change = (lost_key[1], report.checkpoint_verifier_key, lost_key[0])
        asyncio.run(_audit_created(settings, created_keys, change))

    # 5. The department keys, checked above.
    step(department_keys)
    return report
