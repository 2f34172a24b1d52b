"""Re-decide, from the audit log alone, every release of one owner's fields.

Pure: no I/O. ``ReleaseChecker`` is fed the log's entries in leaf order (from an exported
bundle by ``tellonce audit check-releases``, or from the database by the console's owner
view) and, for every entry that released a field of the owner to another department:

1. finds the agreement version the entry cites for that field among the log's permitted
   policy-change entries (each carries the version's canonical JSON; a refused change,
   decision ``deny``, stored no version);
2. checks that the cited digest is the SHA-256 of that JSON (an agreement swapped in the
   database after signing shows here), that the version is the owner's, active, and
   signed by the owner's key (given by the owner, never taken from the log);
3. re-decides the access with the same engine the service uses, from what the entry
   records (consumer, action, purpose, case reference, time, citizen status, field),
   against the owner's signed agreements in force at that point of the log, the cited
   version standing for its agreement.

Which fields are the owner's comes from the newest catalog-change entry before the
release (catalog changes are logged in full); before any, from the fields the owner's
signed agreements name.

A release under a consent-based or objectable agreement is re-decided with the citizen's
consents and objections as the log's ``consent-change`` and ``objection-change`` entries
before it leave them (a consent's expiry, and the consumer, purpose, fields and actions
it covers, are in its first entry's signed terms).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from service.audit.schemas import DECIDED_AS
from service.policy.engine import (
    Agreement,
    CompiledPolicy,
    ConditionError,
    Consented,
    RequestContext,
    compile_policy,
    consented,
)
from service.policy.schemas import AgreementSpec
from service.policy.signing import OWNER, OwnerVerifier, text_digest

# Every action that decided per field is checked, as the policy action it was decided as.
RELEASE_ACTIONS: Mapping[str, str] = DECIDED_AS


_DECIDED_LIMIT = 200_000
# What of a request's time a decision reads: its UTC day, or the instant itself.
_DAY, _INSTANT = "day", "instant"
# In the verdict cache, a shape whose answer depends on the entry's time (never a problem's words).
_AT_ITS_TIME = "\x00at its time"


def _items(value: Any) -> list[Any]:
    """``value`` if it is a list, else no items: an entry read from a bundle is outside
    input, and a member the service writes as a list may hold anything there."""
    return value if isinstance(value, list) else []


def _instant(text: str) -> datetime:
    """An ISO 8601 time as an instant, one without an offset read as UTC (as the bundle's
    columns are), so that any two compare; ``ValueError`` if it is none."""
    time = datetime.fromisoformat(text)
    return time if time.tzinfo is not None else time.replace(tzinfo=UTC)


@dataclass(frozen=True)
class _Compiled:
    policy: CompiledPolicy
    # (consumer, field) -> _DAY or _INSTANT, for decisions that read the time at all.
    reads_time: Mapping[tuple[str, str], str]


@dataclass(frozen=True)
class LoggedVersion:
    """One agreement version as a policy-change entry holds it."""

    agreement_id: str
    version: int
    owner: str
    status: str
    digest: str
    agreement: Agreement | None
    # Why the owner's key does not vouch for it (``None``: validly signed by the owner).
    unsigned: str | None


@dataclass(frozen=True)
class Unjustified:
    leaf_index: int
    label: str
    field: str
    problem: str

    def __str__(self) -> str:
        return f"{self.label} (leaf {self.leaf_index}), field {self.field}: {self.problem}"


@dataclass(frozen=True)
class _Release:
    leaf_index: int
    label: str
    consumer: str
    action: str
    field: str
    context: RequestContext
    reason: Mapping[str, Any] | None
    generation: int


@dataclass
class ReleaseReport:
    owner: str
    entries: int = 0
    releases: int = 0
    fields: int = 0
    unjustified: list[Unjustified] = field(default_factory=list)

    @property
    def justified(self) -> bool:
        return not self.unjustified

    def summary(self) -> str:
        if self.justified:
            return (
                f"{self.releases} releases of {self.owner}'s fields checked, "
                f"all justified by agreements signed by {self.owner}"
            )
        entries = len({u.leaf_index for u in self.unjustified})
        return (
            f"{self.releases} releases of {self.owner}'s fields checked: "
            f"{entries} NOT justified by an agreement signed by {self.owner}"
        )


class ReleaseChecker:
    """Feed ``add`` every entry in leaf order, then call ``finish``."""

    def __init__(self, owner: str, owner_key: OwnerVerifier) -> None:
        self.owner = owner
        self.owner_key = owner_key
        self.report = ReleaseReport(owner)
        self._versions: dict[tuple[str, int], LoggedVersion] = {}
        # The owner's signed versions in force, replaced whole on each change (snapshots
        # are kept by generation, so a release can be re-decided against its own).
        self._in_force: dict[str, LoggedVersion] = {}
        self._generations: list[dict[str, LoggedVersion]] = [{}]
        self._owned: set[str] | None = None
        self._compiled: dict[tuple[int, str, int], _Compiled] = {}
        # Request shape (and, where it matters, its day or instant) -> "" when permitted,
        # else the denial's reason.
        self._decided: dict[tuple[Any, ...], str] = {}
        # What an entry records for one field, as given -> its problem ("" when justified),
        # or _AT_ITS_TIME when the answer depends on the entry's time. Emptied by every
        # policy change, after which a cited version may read differently.
        self._verdicts: dict[tuple[Any, ...], str] = {}
        self._pending: list[_Release] = []
        # Citizen -> agreement -> (consent status, expiry, the fields and actions its signed
        # terms cover), and citizen -> objected agreements, as the log's consent-change and
        # objection-change entries so far leave them.
        self._consents: dict[str, dict[str, tuple[str, datetime | None, frozenset[Consented]]]] = {}
        self._objections: dict[str, set[str]] = {}

    # --- feeding ------------------------------------------------------------------------

    def add(self, leaf_index: int, label: str, entry: Mapping[str, Any]) -> None:
        self.report.entries += 1
        action = entry.get("action")
        if action == "policy-change":
            # Only a permitted change stored a version; a refused one (decision deny)
            # stored nothing, and however it reads it names no version a release may cite.
            if entry.get("decision") == "permit":
                self._policy_change(entry)
            return
        if action == "catalog-change":
            self._catalog_change(entry)
            return
        if action in ("consent-change", "objection-change"):
            self._choice_change(str(action), entry)
            return
        policy_action = RELEASE_ACTIONS.get(str(action))
        released = _items(entry.get("fields_released"))
        consumer = str(entry.get("department") or "")
        if policy_action is None or not released or consumer == self.owner:
            # Not a decided access (a registration stores values, an erasure removes
            # them), nothing released, or the owner's own access to its own fields.
            return
        owned = self._owned_fields()
        mine = [name for name in released if isinstance(name, str) and name in owned]
        if not mine:
            return
        self.report.releases += 1
        self.report.fields += len(mine)
        try:
            time = _instant(str(entry["time"]))
        except (KeyError, ValueError):
            for name in mine:
                self._unjustified(leaf_index, label, name, "the entry's time is not an ISO 8601 timestamp")
            return
        purpose, case_ref = str(entry.get("purpose") or ""), entry.get("case_ref")
        citizen_status = entry.get("citizen_status")
        consents, objections = self._choices_of(str(entry.get("citizen_id") or ""), time)
        reasons = {
            r.get("field"): r
            for r in _items(entry.get("reasons"))
            if isinstance(r, Mapping) and isinstance(r.get("field"), str)
        }
        generation = len(self._generations) - 1
        for name in mine:
            cited = reasons.get(name)
            # Releases recording the same inputs share one verdict: a million releases cost
            # a dictionary lookup each once their shapes repeat.
            as_cited: tuple[Any, ...] = ()
            if cited is not None:
                as_cited = (
                    cited.get("agreement"),
                    cited.get("version"),
                    cited.get("digest"),
                    cited.get("effect"),
                )
            shape = (
                generation,
                consumer,
                policy_action,
                name,
                purpose,
                case_ref,
                citizen_status,
                consents,
                objections,
                *as_cited,
            )
            cacheable = True
            try:
                verdict = self._verdicts.get(shape)
            except TypeError:  # a value that is no JSON scalar: judged on its own
                cacheable, verdict = False, None
            if verdict is not None and verdict != _AT_ITS_TIME:
                if verdict:
                    self._unjustified(leaf_index, label, name, verdict)
                continue
            context = RequestContext(
                purpose, case_ref, time, citizen_status, consents=consents, objections=objections
            )
            release = _Release(leaf_index, label, consumer, policy_action, name, context, cited, generation)
            key = (str(cited.get("agreement")), cited.get("version")) if cited else None
            if key is not None and key not in self._versions:
                # Its policy-change entry may be sequenced after the release; settle at the end.
                self._pending.append(release)
                continue
            problem, timeless = self._problem(release)
            if problem is not None:
                self._unjustified(leaf_index, label, name, problem)
            if cacheable and verdict is None:
                if len(self._verdicts) >= _DECIDED_LIMIT:
                    self._verdicts.clear()
                self._verdicts[shape] = (problem or "") if timeless else _AT_ITS_TIME

    def finish(self) -> ReleaseReport:
        for release in self._pending:
            self._check(release)
        self._pending.clear()
        self.report.unjustified.sort(key=lambda u: (u.leaf_index, u.field))
        return self.report

    # --- the log's own record of agreements and catalogs ----------------------------------

    def _policy_change(self, entry: Mapping[str, Any]) -> None:
        self._verdicts.clear()
        reasons = _items(entry.get("reasons"))
        document = entry.get("document")
        if not reasons or not isinstance(document, str) or not isinstance(reasons[0], Mapping):
            return
        reason = reasons[0]
        agreement_id, version, status = reason.get("agreement"), reason.get("version"), reason.get("effect")
        if not isinstance(agreement_id, str) or not isinstance(version, int):
            return
        logged = self._logged_version(agreement_id, version, str(status), document)
        self._versions[(agreement_id, version)] = logged
        if logged.owner != self.owner:
            return
        in_force = dict(self._in_force)
        if logged.status == "active" and logged.unsigned is None and logged.agreement is not None:
            in_force[agreement_id] = logged
        else:
            in_force.pop(agreement_id, None)
        self._in_force = in_force
        self._generations.append(in_force)

    def _logged_version(self, agreement_id: str, version: int, status: str, document: str) -> LoggedVersion:
        digest = text_digest(document)
        try:
            content = json.loads(document)
        except (ValueError, RecursionError):
            return LoggedVersion(
                agreement_id, version, "", status, digest, None, "the logged text is not JSON"
            )
        if not isinstance(content, dict):
            return LoggedVersion(
                agreement_id, version, "", status, digest, None, "the logged text is not an object"
            )
        owner = str(content.get(OWNER, ""))
        unsigned = self.owner_key.problem(content, owner) if owner == self.owner else "not this owner's"
        agreement: Agreement | None = None
        spec_content = {key: value for key, value in content.items() if key != OWNER}
        try:
            spec = AgreementSpec.model_validate(spec_content)
            agreement = spec.to_engine(owner, version, digest)
        except ValidationError:
            unsigned = unsigned or "the logged agreement does not parse"
        return LoggedVersion(agreement_id, version, owner, status, digest, agreement, unsigned)

    def _choice_change(self, action: str, entry: Mapping[str, Any]) -> None:
        citizen = str(entry.get("citizen_id") or "")
        reasons = [r for r in _items(entry.get("reasons")) if isinstance(r, Mapping)]
        if not citizen or not reasons or not reasons[0].get("agreement"):
            return
        agreement, change = str(reasons[0]["agreement"]), str(reasons[0].get("effect") or "")
        if action == "objection-change":
            objected = self._objections.setdefault(citizen, set())
            if change == "objected":
                objected.add(agreement)
            else:
                objected.discard(agreement)
            return
        held = self._consents.setdefault(citizen, {})
        expires_at, covered = held[agreement][1:] if agreement in held else (None, frozenset[Consented]())
        document = entry.get("document")
        if isinstance(document, str):
            # A new consent: its signed terms carry its expiry and what it covers.
            expires_at, covered = None, frozenset()
            try:
                terms = json.loads(document)
            except (ValueError, RecursionError):
                terms = None
            if isinstance(terms, dict):
                expiry = terms.get("expires_at")
                try:
                    expires_at = _instant(expiry) if isinstance(expiry, str) else None
                except ValueError:
                    expires_at = None
                fields = terms.get("fields")
                if isinstance(fields, list):
                    covered = consented(
                        agreement,
                        str(terms.get("consumer") or ""),
                        str(terms.get("purpose") or ""),
                        (str(name) for name in fields),
                        self._consented_actions(terms, reasons[0]),
                    )
        held[agreement] = (change, expires_at, covered)

    def _consented_actions(self, terms: Mapping[str, Any], reason: Mapping[str, Any]) -> tuple[str, ...]:
        """The actions a new consent's logged terms cover: those they name (none when they
        name none). Terms logged before consents named actions cover, as migration 0020
        made the stored consent cover, the actions of the agreement version the entry
        cites as in force when it was given, if the log holds that version and it was
        active; else none."""
        if "actions" in terms:
            actions = terms["actions"]
            return tuple(str(action) for action in actions) if isinstance(actions, list) else ()
        version = reason.get("version")
        logged = (
            self._versions.get((str(reason.get("agreement")), version)) if isinstance(version, int) else None
        )
        if logged is None or logged.status != "active" or logged.agreement is None:
            return ()
        return logged.agreement.actions

    def _choices_of(self, citizen: str, time: datetime) -> tuple[frozenset[Consented], frozenset[str]]:
        """What the citizen's active, unexpired consents at ``time`` covered (by their
        signed terms), and the agreements it had objected to, as the log so far says."""
        held = self._consents.get(citizen)
        consents = (
            frozenset(
                covered
                for status, expires_at, terms in held.values()
                if status == "active" and (expires_at is None or expires_at > time)
                for covered in terms
            )
            if held
            else frozenset()
        )
        return consents, frozenset(self._objections.get(citizen, ()))

    def _catalog_change(self, entry: Mapping[str, Any]) -> None:
        document = entry.get("document")
        if not isinstance(document, str):
            return
        try:
            catalog = json.loads(document)
            self._owned = {
                str(spec["name"]) for spec in catalog.get("fields", []) if spec.get("owner") == self.owner
            }
        except (ValueError, AttributeError, KeyError, TypeError, RecursionError):
            return

    def _owned_fields(self) -> set[str]:
        if self._owned is not None:
            return self._owned
        return {
            name for logged in self._in_force.values() if logged.agreement for name in logged.agreement.fields
        }

    # --- one release ----------------------------------------------------------------------

    def _unjustified(self, leaf_index: int, label: str, name: str, problem: str) -> None:
        self.report.unjustified.append(Unjustified(leaf_index, label, name, problem))

    def _check(self, release: _Release) -> None:
        problem, _timeless = self._problem(release)
        if problem is not None:
            self._unjustified(release.leaf_index, release.label, release.field, problem)

    def _problem(self, release: _Release) -> tuple[str | None, bool]:
        """Why the release is not justified (``None``: it is), and whether that answer holds
        whatever the entry's time (False where a cited agreement's dates or condition read it)."""
        cited = release.reason
        if cited is None or cited.get("effect") != "permit":
            return "released without a permitting decision recorded for the field", True
        agreement_id, version, digest = cited.get("agreement"), cited.get("version"), cited.get("digest")
        if not agreement_id or not isinstance(version, int):
            return "released without citing an agreement version", True
        logged = self._versions.get((str(agreement_id), version))
        if logged is None:
            return (
                f"cites {agreement_id} version {version}, which no policy-change entry in the log holds",
                True,
            )
        if digest != logged.digest:
            return (
                f"cites {agreement_id} version {version} with digest {digest}, but the log holds that "
                f"version with digest {logged.digest} (the agreement was changed after it was recorded)"
            ), True
        if logged.owner != self.owner:
            return (
                f"cites {agreement_id}, an agreement of {logged.owner or 'no owner'}, not of {self.owner}",
                True,
            )
        if logged.status != "active":
            return f"cites {agreement_id} version {version}, which is {logged.status}", True
        if logged.unsigned is not None or logged.agreement is None:
            return f"{agreement_id} version {version} is not signed by {self.owner}: {logged.unsigned}", True
        compiled = self._policy(release.generation, logged)
        if compiled is None:
            return f"{agreement_id} version {version} does not compile", True
        context = release.context
        # Decisions are pure: one per distinct request shape, with the entry's day where only
        # agreements' dates read the time, or its instant where a condition reads it.
        reads_time = compiled.reads_time.get((release.consumer, release.field))
        when: Any = None
        if reads_time == _INSTANT:
            when = context.time
        elif reads_time == _DAY:
            when = context.time.astimezone(UTC).date()
        key = (
            release.generation,
            logged.agreement_id,
            logged.version,
            release.consumer,
            release.action,
            release.field,
            context.purpose,
            context.case_ref,
            context.citizen_status,
            context.consents,
            context.objections,
            when,
        )
        denial = self._decided.get(key)
        if denial is None:
            decisions = compiled.policy.decide(release.consumer, release.action, [release.field], context)
            decision = decisions[release.field]
            denial = "" if decision.permitted else decision.reason
            if len(self._decided) >= _DECIDED_LIMIT:
                self._decided.clear()
            self._decided[key] = denial
        if denial:
            return f"re-decided from the entry, the access is denied: {denial}", reads_time is None
        return None, reads_time is None

    def _policy(self, generation: int, cited: LoggedVersion) -> _Compiled | None:
        """The owner's agreements in force at ``generation``, ``cited`` standing for its
        agreement, compiled; with what of the time each (consumer, field) decision reads."""
        key = (generation, cited.agreement_id, cited.version)
        compiled = self._compiled.get(key)
        if compiled is None:
            in_force = dict(self._generations[generation])
            in_force[cited.agreement_id] = cited
            agreements = [logged.agreement for logged in in_force.values() if logged.agreement is not None]
            owners = {name: self.owner for agreement in agreements for name in agreement.fields}
            purposes = {purpose for agreement in agreements for purpose in agreement.purposes}
            try:
                policy = compile_policy(agreements, owners, purposes)
            except ConditionError:
                return None
            reads_time: dict[tuple[str, str], str] = {}
            for agreement in agreements:
                # Validity is by whole UTC days (the engine's rule); a condition may read
                # request.time itself, to the instant.
                if agreement.when and "time" in agreement.when:
                    reads = _INSTANT
                elif agreement.valid_from or agreement.valid_until:
                    reads = _DAY
                else:
                    continue
                for name in agreement.fields:
                    pair = (agreement.consumer, name)
                    if reads_time.get(pair) != _INSTANT:
                        reads_time[pair] = reads
            compiled = self._compiled[key] = _Compiled(policy, reads_time)
        return compiled
