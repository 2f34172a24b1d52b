"""The rules of the policy domain: the live compiled policy, and changes to agreements.

A ``PolicyHolder`` keeps one compiled policy. Before each access the records domain asks
the app's holder for its snapshot, which reads one small row (the policy epoch and its
token, plus the newest catalog version number) and recompiles only when that moved, so a
revocation made by any process applies to the very next request here. What data owners
and auditors do with agreements (visibility, ownership, version checks) is
``agreements.py``; this module stores the versions it decides on.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from service.catalog import service as catalog_service
from service.catalog.schemas import Catalog
from service.errors import ValidationFailed
from service.policy import epoch as policy_epoch
from service.policy import repository
from service.policy.engine import Agreement, CompiledPolicy, compile_policy
from service.policy.epoch import EpochKey
from service.policy.errors import AgreementExists, StaleAgreement
from service.policy.loader import PolicyFolder
from service.policy.models import AgreementVersion
from service.policy.rules import signature_problem
from service.policy.schemas import AgreementSpec
from service.policy.signing import OwnerVerifier, text_digest, version_digest, version_text
from service.sourcefile import SourceError, SourceFileError

logger = logging.getLogger("tellonce.policy")


# --- the live policy ---------------------------------------------------------------


@dataclass(frozen=True)
class Refusal:
    """A stored agreement version the compiler would not take, and why."""

    agreement_id: str
    owner: str
    version: int
    problem: str


def agreements_from_rows(
    rows: list[tuple[str, str, int, str, dict[str, Any]]],
    signing_keys: Mapping[str, str] | None = None,
    refusals: list[Refusal] | None = None,
) -> list[Agreement]:
    """Active versions as engine agreements, each carrying its version digest.

    A row that no longer parses or converts, or whose owner has a signing key and whose
    signature does not verify, is left out and added to ``refusals`` (its owner's fields then
    fail closed, see ``compile_policy``): the signature is checked here, at compile time, so
    a row edited or inserted directly in the database is never compiled, while the
    per-request path never checks a signature.
    """
    verifiers: dict[str, OwnerVerifier] = {}
    for owner, vkey in (signing_keys or {}).items():
        verifiers[owner] = OwnerVerifier.parse(vkey)
    agreements = []
    for agreement_id, owner, version, status, content in rows:
        if status != "active":
            continue
        problem: str | None = None
        try:
            spec = AgreementSpec.model_validate(content)
        except ValidationError:
            problem = "the stored agreement does not parse"
        else:
            if spec.id != agreement_id:
                problem = f"the stored agreement names id {spec.id!r}"
            elif owner in verifiers:
                problem = verifiers[owner].problem(content, owner)
        if problem is None:
            try:
                agreements.append(spec.to_engine(owner, version, version_digest(content, owner)))
            except Exception as error:
                problem = _compile_problem(error)
        if problem is not None and refusals is not None:
            refusals.append(Refusal(agreement_id, owner, version, problem))
    return agreements


def _compile_problem(error: Exception) -> str:
    # The error's class only: its message may quote the agreement's values.
    return f"the stored agreement does not compile ({type(error).__name__})"


@dataclass(frozen=True)
class PolicySnapshot:
    """The compiled policy and the catalog it was compiled against, at one epoch key."""

    key: EpochKey
    policy: CompiledPolicy
    catalog: Catalog | None
    # Stored versions left out of ``policy``, with the reason for each.
    refused: tuple[Refusal, ...] = ()


async def compile_snapshot(conn: AsyncConnection, epoch: int, key: EpochKey | None = None) -> PolicySnapshot:
    catalog_row = await repository.latest_catalog_content(conn)
    resolved_key = key or (epoch, "", None)
    if catalog_row is None:
        return PolicySnapshot(resolved_key, compile_policy((), {}, (), epoch=epoch), None)
    catalog = Catalog.model_validate(catalog_row[1])
    refused: list[Refusal] = []
    rows = list(await repository.current_rows_core(conn))
    agreements = agreements_from_rows(rows, catalog.signing_keys, refused)

    def refuse(agreement: Agreement, error: Exception) -> None:
        refused.append(Refusal(agreement.id, agreement.owner, agreement.version, _compile_problem(error)))

    # One stored agreement that does not compile is refused, never an error that would
    # leave every department without a policy; its owner's fields fail closed (see
    # ``compile_policy``), whether it was refused here or by ``agreements_from_rows``.
    before = [(r.owner, r.agreement_id, r.version) for r in refused]
    policy = compile_policy(
        agreements,
        catalog.field_owners,
        [p.id for p in catalog.purposes],
        epoch=epoch,
        refuse=refuse,
        refused=before,
    )
    return PolicySnapshot(resolved_key, policy, catalog, tuple(refused))


class PolicyHolder:
    """The compiled policy of one process, swapped whole when the epoch moves."""

    def __init__(self, on_refused: Callable[[], None] | None = None) -> None:
        self._snapshot: PolicySnapshot | None = None
        self._lock = asyncio.Lock()
        # Called once per refused version per compile (the app counts them in a metric).
        self._on_refused = on_refused

    async def snapshot(self, conn: AsyncConnection, key: EpochKey | None = None) -> PolicySnapshot:
        """The policy and catalog in force. ``key`` is the epoch key if the caller has
        just read it (authentication does, once per request); otherwise it is read here."""
        snapshot = self._snapshot
        if key is not None and snapshot is not None and snapshot.key == key:
            return snapshot
        # Compile from what this connection sees, under the key this connection reads:
        # a key read elsewhere (another transaction) must not label what is compiled here.
        key = await policy_epoch.epoch_key(conn)
        if snapshot is not None and snapshot.key == key:
            return snapshot
        async with self._lock:
            # Another request may have compiled the same epoch while this one waited.
            snapshot = self._snapshot
            if snapshot is not None and snapshot.key == key:
                return snapshot
            snapshot = await compile_snapshot(conn, key[0], key)
            self._report(snapshot.refused)
            # One assignment: readers see the old index or the new one, never a mix.
            self._snapshot = snapshot
            return snapshot

    def _report(self, refused: tuple[Refusal, ...]) -> None:
        for refusal in refused:
            logger.error(
                f"agreement {refusal.agreement_id} version {refusal.version} of {refusal.owner} "
                f"refused at compile time, so no agreement of {refusal.owner} releases its fields: "
                f"{refusal.problem}"
            )
            if self._on_refused is not None:
                self._on_refused()

    def cached(self, key: EpochKey) -> PolicySnapshot | None:
        """The snapshot for ``key`` if it is the one compiled, without touching storage."""
        snapshot = self._snapshot
        return snapshot if snapshot is not None and snapshot.key == key else None

    async def current(self, conn: AsyncConnection) -> CompiledPolicy:
        return (await self.snapshot(conn)).policy


async def current_policy(conn: AsyncConnection, holder: PolicyHolder | None = None) -> CompiledPolicy:
    """The compiled index for the live agreement versions, as of this connection's view.

    A server keeps one holder on ``app.state.policy`` (made by ``policy_lifecycle``) and
    passes it; without one, the policy is compiled for this call alone."""
    return await (holder or PolicyHolder()).current(conn)


# --- change notification (the audit domain connects here) -----------------------------


@dataclass(frozen=True)
class PolicyChange:
    """One new agreement version, as the audit records it (no personal data in it)."""

    agreement_id: str
    owner: str
    version: int
    status: str
    content_hash: str
    author: str
    reason: str
    # The version's canonical JSON (owner and signature included), and its SHA-256.
    document: str = ""
    digest: str = ""


PolicyChangeHook = Callable[[AsyncSession, PolicyChange], Awaitable[None]]
# Hooks run inside the changing transaction, so an audit append commits with the change.
on_policy_change: list[PolicyChangeHook] = []


async def _notify(session: AsyncSession, change: PolicyChange) -> None:
    if not on_policy_change:
        logger.info(
            "policy changed",
            extra={
                "agreement": change.agreement_id,
                "owner": change.owner,
                "version": change.version,
                "status": change.status,
                "author": change.author,
            },
        )
    for hook in on_policy_change:
        await hook(session, change)


# --- changes ----------------------------------------------------------------------------


def content_hash(content: dict[str, Any]) -> str:
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


async def write_version(
    session: AsyncSession,
    previous: AgreementVersion | None,
    *,
    agreement_id: str,
    owner: str,
    content: dict[str, Any],
    status: str,
    author: str,
    reason: str,
) -> AgreementVersion:
    """Store a new immutable version and tell the hooks; the caller bumps the epoch.

    409 (a new agreement) or 412 (a new version) when a concurrent change wrote first."""
    row = AgreementVersion(
        agreement_id=agreement_id,
        owner=owner,
        version=1 if previous is None else previous.version + 1,
        status=status,
        content=content,
        content_hash=content_hash(content),
        author=author,
        reason=reason,
        is_current=True,
    )
    if not await repository.add_version(session, previous, row):
        # Another change to this agreement committed since it was read.
        if previous is None:
            raise AgreementExists(
                f"An agreement {agreement_id!r} already exists; ids are unique across the catalog."
            )
        raise StaleAgreement(f"Agreement {agreement_id!r} changed since version {previous.version} was read.")
    document = version_text(content, owner)
    await _notify(
        session,
        PolicyChange(
            agreement_id,
            owner,
            row.version,
            status,
            row.content_hash,
            author,
            reason,
            document=document,
            digest=text_digest(document),
        ),
    )
    return row


def require_signed(content: dict[str, Any], owner: str, catalog: Catalog) -> None:
    """Refuse to store an agreement its owner (having a signing key) did not sign as is.

    The loader, the API and the console report the same problem earlier, with its place;
    this is the last gate before a version is written, whatever path it came by.
    """
    problem = signature_problem(content, owner, catalog)
    if problem is not None:
        raise ValidationFailed(
            f"Agreement {content.get('id')!r} is refused: {problem}.",
            errors=[{"loc": ["body", "signature"], "msg": problem}],
        )


async def spent_signature(
    session: AsyncSession,
    previous: AgreementVersion | None,
    content: dict[str, Any],
    owner: str,
    catalog: Catalog,
) -> str | None:
    """Why ``content``'s signature may not be stored again, or ``None``.

    A signature vouches for one grant of its text: once the version that carried it has
    been revoked or replaced, storing it again would let whoever holds the old signed text
    (a data-owner client without the signing key, say) bring back terms the owner ended.
    So an owner with a signing key reinstates an agreement by signing it anew, with a
    change (a later ``valid_from``, say: Ed25519 gives the same text the same signature).
    Keeping the current version as it is stays allowed."""
    signature = content.get("signature")
    if previous is None or not isinstance(signature, str) or owner not in catalog.signing_keys:
        return None
    if previous.status == "active" and previous.content.get("signature") == signature:
        return None
    first = (await repository.signatures_given(session, previous.agreement_id)).get(signature)
    if first is None:
        return None
    return (
        f"its signature was given to version {first}, since revoked or replaced; to bring "
        "the agreement back, sign it anew with a change (a later valid_from, say)"
    )


@dataclass
class ApplyReport:
    catalog_version: int | None = None
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    revoked: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    kept_missing: list[str] = field(default_factory=list)
    epoch: int | None = None

    @property
    def changed(self) -> bool:
        return bool(self.catalog_version is not None or self.created or self.updated or self.revoked)


async def apply_folder(
    session: AsyncSession, folder: PolicyFolder, *, author: str, reason: str, prune: bool = False
) -> ApplyReport:
    """Store the catalog and every changed agreement of a validated folder, in one transaction.

    Raises ``SourceFileError``, storing nothing (the caller's transaction rolls back), for
    an agreement whose id another owner's stored agreement has (active or revoked): ids are
    unique across the catalog, so one owner's file never replaces, nor takes over the
    history of, another owner's agreement; and for a signed agreement that would bring
    back a signature already spent (``spent_signature``).
    """
    report = ApplyReport()
    current = {row.agreement_id: row for row in await repository.current_versions(session)}
    taken = [
        SourceError(
            sourced.file,
            sourced.line,
            f"agreement {sourced.spec.id}: the id is taken by an agreement of {row.owner}; "
            "agreement ids are unique across the catalog",
        )
        for sourced in folder.agreements
        if (row := current.get(sourced.spec.id)) is not None and row.owner != sourced.owner
    ]
    if taken:
        raise SourceFileError(taken)
    report.catalog_version = await catalog_service.store(
        session, folder.catalog, author=author, reason=reason
    )
    in_folder = set()
    for sourced in folder.agreements:
        spec = sourced.spec
        in_folder.add(spec.id)
        content = spec.content()
        previous = current.get(spec.id)
        if (
            previous is not None
            and previous.status == "active"
            and previous.content_hash == content_hash(content)
        ):
            report.unchanged.append(spec.id)
            continue
        require_signed(content, sourced.owner, folder.catalog)
        spent = await spent_signature(session, previous, content, sourced.owner, folder.catalog)
        if spent is not None:
            raise SourceFileError([SourceError(sourced.file, sourced.line, f"agreement {spec.id}: {spent}")])
        await write_version(
            session,
            previous,
            agreement_id=spec.id,
            owner=sourced.owner,
            content=content,
            status="active",
            author=author,
            reason=reason,
        )
        (report.created if previous is None else report.updated).append(spec.id)
    for agreement_id, row in sorted(current.items()):
        if agreement_id in in_folder or row.status != "active":
            continue
        if not prune:
            report.kept_missing.append(agreement_id)
            continue
        await revoke(session, row, author=author, reason=reason, bump=False)
        report.revoked.append(agreement_id)
    if report.changed:
        report.epoch = await policy_epoch.bump_epoch(session)
    return report


async def revoke(
    session: AsyncSession, row: AgreementVersion, *, author: str, reason: str, bump: bool = True
) -> AgreementVersion:
    """A new version with status ``revoked``; the content is kept so history reads whole."""
    revoked = await write_version(
        session,
        row,
        agreement_id=row.agreement_id,
        owner=row.owner,
        content=dict(row.content),
        status="revoked",
        author=author,
        reason=reason,
    )
    if bump:
        await policy_epoch.bump_epoch(session)
    return revoked


async def put_agreement(
    session: AsyncSession,
    previous: AgreementVersion | None,
    spec: AgreementSpec,
    *,
    owner: str,
    author: str,
    reason: str,
) -> AgreementVersion:
    """Create or replace an agreement (``agreements.py`` checked ownership and If-Match)."""
    catalog = await live_catalog(session)
    require_signed(spec.content(), owner, catalog)
    spent = await spent_signature(session, previous, spec.content(), owner, catalog)
    if spent is not None:
        raise ValidationFailed(
            f"Agreement {spec.id!r} is refused: {spent}.",
            errors=[{"loc": ["body", "signature"], "msg": spent}],
        )
    row = await write_version(
        session,
        previous,
        agreement_id=spec.id,
        owner=owner,
        content=spec.content(),
        status="active",
        author=author,
        reason=reason,
    )
    await policy_epoch.bump_epoch(session)
    return row


async def live_catalog(session: AsyncSession) -> Catalog:
    return (await catalog_service.current(session))[1]
