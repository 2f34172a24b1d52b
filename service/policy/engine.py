"""The policy engine: agreements compiled into an index, decided field by field.

Pure: no FastAPI, no SQLAlchemy. ``compile_policy`` turns agreements (plus the catalog's
field owners) into ``(consumer, action) -> field -> grants``; ``CompiledPolicy.decide``
then costs one dictionary lookup per (consumer, action), one per field, and a CEL
condition only where a grant has one. Default deny; forbid wins; every decision says why.

CEL engine: ``common-expression-language`` (module ``cel``, a binding of the Rust
``cel`` crate), not ``cel-python`` (``celpy``). Measured on this machine for
``citizen.status == "active" && request.purpose == "benefit-eligibility"`` with a
compiled program: about 24 us per evaluation against about 490 us for celpy (celpy also
needs its activation converted on each call). Both are maintained; the 20x matters
because a condition runs on the hot path of every access it covers.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Literal, NamedTuple

import cel

Action = Literal["read", "lookup", "verify", "history", "subscribe", "write", "erase"]
ACTIONS: tuple[Action, ...] = ("read", "lookup", "verify", "history", "subscribe", "write", "erase")
Effect = Literal["permit", "forbid"]
DecisionEffect = Literal["permit", "deny"]
# An agreement's legal basis: ``statutory`` releases on the agreement alone; ``consent``
# only while the citizen holds an active consent to it; ``objectable`` unless the citizen
# has objected to it.
Basis = Literal["statutory", "consent", "objectable"]
# The actions a citizen's consent or objection can govern: those that release the
# citizen's data to the consumer, decided with the citizen known.
CHOICE_ACTIONS = frozenset({"read", "verify", "history"})
# A field withheld because the citizen has not consented, or has objected: the reason
# a consumer sees (and the problem type when nothing is released).
CONSENT_REQUIRED = "consent-required"
OBJECTED = "objected"


class Consented(NamedTuple):
    """One field and action a citizen's active consent covers, as its signed terms name
    them: the agreement consented to, its consumer and purpose, the field and the action.
    A consent-based grant applies only where the request's consumer, purpose, field and
    action are among them, so an agreement widened (another field or action) or
    redirected after the citizen consented releases nothing new under that consent."""

    agreement: str
    consumer: str
    purpose: str
    field: str
    action: str


def consented(
    agreement: str, consumer: str, purpose: str, fields: Iterable[str], actions: Iterable[str]
) -> frozenset[Consented]:
    """Every field and action of one consent's terms; none when the terms name no action
    (a consent stored before its terms recorded actions, and none could be given it)."""
    named = tuple(actions)
    return frozenset(
        Consented(agreement, consumer, purpose, name, action) for name in fields for action in named
    )


UNEVALUATED = "condition could not be evaluated"
NEEDS_CASE_REF = "needs a case reference"

# Why a grant did not apply, as the engine acts on it. The reason's words are for people:
# an agreement's condition is quoted in them, so nothing is decided by reading them.
MissKind = Literal[
    "purpose",
    "not-yet-valid",
    "expired",
    "needs-case-ref",
    "unevaluated",
    "condition-not-met",
    "consent",
    "objected",
]


class Miss(NamedTuple):
    """A grant that does not apply: why, as a ``MissKind``, and as the reason people read.
    ``unevaluated`` (its condition errored, or gave neither true nor false) fails closed:
    a permit so missed does not apply, while a forbid does."""

    kind: MissKind
    reason: str


# The claims a ``verify`` agreement allows on one field: operator -> the allowed operands
# (values as written, relative dates such as ``today-18y`` kept as text).
AllowedClaims = Mapping[str, tuple[Any, ...]]

# The variables a condition may name; anything else is refused when it is compiled.
CONDITION_VARIABLES = frozenset({"citizen", "request"})
# What each variable holds (``_bindings``); a condition naming anything else of one of them
# is refused when an agreement is checked (``check_condition_names``).
CONDITION_ATTRIBUTES = {
    "citizen": frozenset({"status"}),
    "request": frozenset({"purpose", "case_ref", "time"}),
}
# CEL's comprehension macros (``list.all(x, ...)``), refused in conditions.
COMPREHENSIONS = frozenset({"all", "exists", "exists_one", "map", "filter"})
# A condition's tokens, enough to find what it selects from a variable and the macros it
# calls: string literals (raw, triple-quoted or not, so nothing inside one is read as a
# name), CEL's line comments (``//`` to the end of the line, dropped, so that none can
# stand between a name and what follows it), names, and any other single character.
_CONDITION_TOKEN = re.compile(
    r"""(?P<string>(?:[bB]?[rR][bB]?)(?:'[^'\n]*'|"[^"\n]*")"""
    r"""|[bB]?(?:'{3}[\s\S]*?'{3}|"{3}[\s\S]*?"{3}|'(?:\\.|[^'\\\n])*'|"(?:\\.|[^"\\\n])*"))"""
    r"|(?P<comment>//[^\n]*)|(?P<name>[A-Za-z_][A-Za-z0-9_]*)|(?P<other>\S)"
)
# Functions whose cost has no bound a condition's length sets: a regular expression is
# built again on every call, and a small one (``(?i)\w{200}``) takes tens of milliseconds.
UNBOUNDED_FUNCTIONS = frozenset({"matches"})


class ConditionError(ValueError):
    """A ``when`` condition that does not compile, or names an unknown variable."""


@dataclass(frozen=True)
class Agreement:
    """One version of an owner's agreement, as the engine needs it."""

    id: str
    owner: str
    consumer: str
    fields: tuple[str, ...]
    actions: tuple[str, ...]
    purposes: tuple[str, ...] = ()
    legal_basis: str | None = None
    valid_from: date | None = None
    valid_until: date | None = None
    when: str | None = None
    require_case_ref: bool = False
    # ``disclosure: after-case-closed``: its ``max_delay``; such an agreement needs a case
    # reference on every access, and the citizen is shown its accesses only later.
    disclosure_delay: timedelta | None = None
    effect: Effect = "permit"
    basis: Basis = "statutory"
    version: int = 1
    # SHA-256 of the version's canonical JSON (``signing.version_digest``); audit entries cite it.
    digest: str = ""
    # ``verify`` only: per field, the claims that may be asked; a field left out may be
    # asked anything (and is then limited per consumer, citizen and day by records).
    verify: Mapping[str, AllowedClaims] | None = None


@dataclass(frozen=True, slots=True)
class RequestContext:
    """What a condition and a grant's limits are checked against.

    ``consents`` are the fields and actions the citizen's active consents cover, by their
    terms (``Consented``), and ``objections`` the ids of the agreements the citizen has objected
    to, among those the request needs (``CompiledPolicy.choices_needed``); left empty, a
    consent-based grant does not apply (fail closed) and an objectable one does."""

    purpose: str
    case_ref: str | None
    time: datetime
    citizen_status: str | None = None
    consents: frozenset[Consented] = frozenset()
    objections: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer for one field: permit or deny, the agreement that decided, and why."""

    field: str
    effect: DecisionEffect
    agreement: str | None
    version: int | None
    reason: str
    legal_basis: str | None = None
    # The deciding agreement version's digest, when an agreement decided.
    digest: str | None = None
    # For a permitted ``verify``: the claims the deciding agreement allows on this field,
    # or ``None`` when it leaves them open.
    allowed_claims: AllowedClaims | None = None
    # Permitted under delayed disclosure: the deciding agreement's ``max_delay``.
    disclosure_delay: timedelta | None = None
    # Refused under a case, citing no delayed-disclosure agreement (the refused field's
    # owner has none for the consumer) yet held from the citizen as an access under one
    # would be: the longest it is held (``CaseHold``; its audit reason's ``held_for``).
    held_for: timedelta | None = None

    @property
    def permitted(self) -> bool:
        return self.effect == "permit"

    def to_record(self) -> dict[str, Any]:
        """A JSON-compatible dict, as the audit stores it."""
        return {
            "field": self.field,
            "effect": self.effect,
            "agreement": self.agreement,
            "version": self.version,
            "reason": self.reason,
            "legal_basis": self.legal_basis,
            "allowed_claims": (
                {op: list(operands) for op, operands in self.allowed_claims.items()}
                if self.allowed_claims is not None
                else None
            ),
            "digest": self.digest,
        }


@dataclass(frozen=True)
class NearMiss:
    """A grant for this consumer, action and field that did not apply, and why not."""

    agreement: str
    version: int
    effect: Effect
    reason: str

    def to_record(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Explanation:
    decision: Decision
    near_misses: tuple[NearMiss, ...] = ()


def compile_condition(source: str) -> Any:
    """Compile a CEL condition once; raises ``ConditionError`` with CEL's message."""
    try:
        program = cel.compile(source)
    except (ValueError, RuntimeError) as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConditionError(f"invalid condition: {message}") from None
    tokens = _condition_tokens(source)
    macros = {
        text
        for index, (kind, text) in enumerate(tokens[1:-1], start=1)
        if kind == "name"
        and text in COMPREHENSIONS
        and tokens[index - 1][1] == "."
        and tokens[index + 1][1] == "("
    }
    if macros:
        # Nested over list literals, they cost the product of the lists' lengths on every
        # decision (a few hundred characters can hold the event loop for minutes), and the
        # variables hold no list a condition needs to range over.
        raise ConditionError(
            f"condition uses {', '.join(sorted(macros))}: comprehensions are not supported in conditions"
        )
    unbounded = {
        text
        for index, (kind, text) in enumerate(tokens[:-1])
        if kind == "name" and text in UNBOUNDED_FUNCTIONS and tokens[index + 1][1] == "("
    }
    if unbounded:
        # The CEL call holds the GIL throughout: one slow condition stalls every request.
        raise ConditionError(
            f"condition uses {', '.join(sorted(unbounded))}: regular expressions are not supported in "
            "conditions (each costs without bound on every decision); use startsWith, endsWith or contains"
        )
    unknown = set(program.variables()) - CONDITION_VARIABLES
    if unknown:
        raise ConditionError(
            f"condition names unknown variable(s) {', '.join(sorted(unknown))}; "
            "only citizen.status, request.purpose, request.case_ref and request.time exist"
        )
    return program


def _condition_tokens(source: str) -> list[tuple[str | None, str]]:
    """The condition's tokens in order, its comments left out."""
    return [(m.lastgroup, m.group()) for m in _CONDITION_TOKEN.finditer(source) if m.lastgroup != "comment"]


def check_condition_names(source: str) -> None:
    """Refuse (``ConditionError``) a condition that compiles but selects something its
    variables do not hold (``citizen.stauts``, ``request["time_"]``): it could never be
    evaluated, so a permit with it would never apply and a forbid always would."""
    tokens = _condition_tokens(source)
    tokens += [("other", "")] * 3  # so that every lookahead below finds a token
    unknown: set[str] = set()
    for index, (kind, text) in enumerate(tokens):
        if kind != "name" or text not in CONDITION_ATTRIBUTES:
            continue
        if index > 0 and tokens[index - 1][1] == ".":
            continue  # a member of something else, not the variable
        opener, (selected_kind, selected), closer = (
            tokens[index + 1][1],
            tokens[index + 2],
            tokens[index + 3][1],
        )
        if opener == "." and selected_kind == "name":
            name = selected
        elif opener == "[" and selected_kind == "string" and closer == "]":
            try:
                name = str(ast.literal_eval(selected))
            except (ValueError, SyntaxError):
                name = selected
        else:
            continue
        if name not in CONDITION_ATTRIBUTES[text]:
            unknown.add(f"{text}.{name}")
    if unknown:
        raise ConditionError(
            f"condition names unknown variable(s) {', '.join(sorted(unknown))}; "
            "only citizen.status, request.purpose, request.case_ref and request.time exist"
        )


def _start_of(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=UTC)


def _end_of(last_day: date | None) -> datetime | None:
    """The first instant after ``last_day`` (an inclusive end date); ``None`` for no end.

    ``date.max`` (9999-12-31) has no day after it: an agreement valid until then has no
    end, rather than an end that cannot be computed.
    """
    if last_day is None or last_day >= date.max:
        return None
    return _start_of(last_day + timedelta(days=1))


@dataclass(frozen=True, slots=True)
class Grant:
    """An agreement, as it applies to one (consumer, action, field)."""

    agreement: str
    version: int
    effect: Effect
    # Empty means every purpose (only a forbid may leave purposes out).
    purposes: frozenset[str]
    starts: datetime | None
    # The first instant after the agreement's last valid day (valid_until is inclusive).
    ends: datetime | None
    valid_from: date | None
    valid_until: date | None
    require_case_ref: bool
    when: str | None
    condition: Any
    legal_basis: str | None
    digest: str = ""
    verify: Mapping[str, AllowedClaims] | None = None
    disclosure_delay: timedelta | None = None
    basis: Basis = "statutory"
    # A stand-in forbid for an agreement the compiler refused (``withhold``), in place of
    # every other grant of its owner's fields.
    refused: bool = False

    def miss(
        self, context: RequestContext, bindings: dict[str, Any], name: str, consumer: str, action: str
    ) -> Miss | None:
        """Why this grant does not apply to ``consumer`` doing ``action`` on field ``name``
        in ``context``; ``None`` when it does."""
        if self.purposes and context.purpose not in self.purposes:
            covered = ", ".join(sorted(self.purposes))
            return Miss("purpose", f"agreement {self.agreement} covers {covered}, not {context.purpose}")
        if self.starts is not None and context.time < self.starts:
            return Miss("not-yet-valid", f"agreement {self.agreement} starts {self.valid_from}")
        if self.ends is not None and context.time >= self.ends:
            return Miss("expired", f"agreement {self.agreement} expired {self.valid_until}")
        needs_case_ref = self.require_case_ref or self.disclosure_delay is not None
        if needs_case_ref and not context.case_ref and self.effect == "permit":
            return Miss("needs-case-ref", f"agreement {self.agreement} {NEEDS_CASE_REF}")
        if self.condition is not None:
            if not bindings:
                bindings.update(_bindings(context))
            try:
                met = self.condition.execute(bindings)
            except Exception:
                met = None
            if not isinstance(met, bool):
                # A condition that errors, or gives anything but true or false, cannot be
                # decided and fails closed: a permit does not apply, while a forbid does
                # (see ``_decide_field``).
                return Miss("unevaluated", f"agreement {self.agreement} {UNEVALUATED}: {self.when}")
            if not met:
                return Miss("condition-not-met", f"agreement {self.agreement} condition not met: {self.when}")
        # The citizen's choice last: a miss here means everything else applied.
        if self.basis == "consent" and (
            Consented(self.agreement, consumer, context.purpose, name, action) not in context.consents
        ):
            return Miss(
                "consent",
                _consent_miss(self.agreement, context.consents, name, consumer, context.purpose, action),
            )
        if self.basis == "objectable" and self.agreement in context.objections:
            return Miss("objected", f"{OBJECTED}: the citizen objected to agreement {self.agreement}")
        return None


def _consent_miss(
    agreement: str, consents: frozenset[Consented], name: str, consumer: str, purpose: str, action: str
) -> str:
    """Why no consent the citizen holds covers the request: none to ``agreement``, or one
    given to terms that name other actions, or another consumer, purpose or field."""
    held = [terms for terms in consents if terms.agreement == agreement]
    if not held:
        return f"{CONSENT_REQUIRED}: agreement {agreement} needs the citizen's active consent"
    if any((terms.consumer, terms.purpose, terms.field) == (consumer, purpose, name) for terms in held):
        missing = f"cover {action}"
    else:
        missing = f"cover {consumer} using {name} for {purpose}"
    return (
        f"{CONSENT_REQUIRED}: the citizen's consent to agreement {agreement} was given to terms "
        f"that do not {missing}"
    )


# The owner of a field is permitted every action on it without any agreement.
OWNER_GRANT = Grant(
    agreement="",
    version=0,
    effect="permit",
    purposes=frozenset(),
    starts=None,
    ends=None,
    valid_from=None,
    valid_until=None,
    require_case_ref=False,
    when=None,
    condition=None,
    legal_basis=None,
)


def _bindings(context: RequestContext) -> dict[str, Any]:
    return {
        "citizen": {"status": context.citizen_status},
        "request": {"purpose": context.purpose, "case_ref": context.case_ref, "time": context.time},
    }


# A refused agreement: (owner, agreement id, version).
Refused = tuple[str, str, int]


@dataclass(frozen=True, slots=True)
class CaseHold:
    """How a refusal under a case is held from the citizen when the refused field's own
    grants hold no delayed-disclosure permit (``CompiledPolicy.case_hold``)."""

    # A delayed-disclosure permit the refused field's owner gave the consumer, which the
    # refusal cites; None when that owner gave it none.
    cited: Grant | None
    # Without one, how long the refusal is held (the ``max_delay`` of the consumer's
    # nearest delayed-disclosure permit, of another owner, which the refusal does not name).
    delay: timedelta


@dataclass
class CompiledPolicy:
    """The index of the live agreement versions; immutable once built, swapped whole."""

    index: dict[tuple[str, str], dict[str, tuple[Grant, ...]]]
    field_owners: Mapping[str, str]
    purposes: frozenset[str]
    epoch: int = 0
    agreements: tuple[Agreement, ...] = field(default=())
    # The agreements refused when compiling, as (owner, id, version): each owner's fields
    # are decided by a stand-in forbid instead of any agreement (see ``compile_policy``).
    refused: tuple[Refused, ...] = field(default=())
    # (consumer, action) -> field -> ids of the consent-based and objectable agreements
    # that grant it: what a decision needs to know of the citizen's choices.
    choice_grants: dict[tuple[str, str], dict[str, frozenset[str]]] = field(default_factory=dict)
    # consumer -> its delayed-disclosure permits as (action, owner of the field, grant,
    # its max_delay): what a refusal under a case is held by when the field's own grants
    # hold none (``case_hold``); filled on first use.
    delayed: dict[str, tuple[tuple[str, str | None, Grant, timedelta], ...]] = field(
        default_factory=dict, repr=False, compare=False
    )

    def case_hold(self, consumer: str, action: str, purpose: str, owner: str | None) -> CaseHold | None:
        """How a refusal under a case of a field ``owner`` owns (None: a field the catalog
        does not know) is held when the field's own grants hold no delayed-disclosure
        permit, so that no refusal shows an investigation early. It cites one of the
        consumer's delayed-disclosure permits that ``owner`` gave, for this action and
        purpose if there is one, else the nearest. Never another owner's: ``owner`` would
        see that agreement in its own audit view and explanations. Without one of
        ``owner``'s, the refusal cites none and is held as long as the consumer's nearest
        permit would hold it. None if the consumer has no delayed-disclosure agreement
        (nothing to keep hidden)."""
        known = self.delayed.get(consumer)
        if known is None:
            known = self.delayed[consumer] = tuple(
                (each_action, self.field_owners.get(name), grant, grant.disclosure_delay)
                for (each_consumer, each_action), by_field in self.index.items()
                if each_consumer == consumer
                for name, grants in by_field.items()
                for grant in grants
                if grant.effect == "permit" and grant.disclosure_delay is not None
            )
        if not known:
            return None
        own = [each for each in known if each[1] == owner]
        # Same action and purpose first; then by agreement id, so decisions are reproducible.
        _action, _owner, grant, delay = min(
            own or known,
            key=lambda each: (each[0] != action, purpose not in each[2].purposes, each[2].agreement),
        )
        return CaseHold(grant if own else None, delay)

    def choices_needed(self, consumer: str, action: str, fields: Sequence[str]) -> frozenset[str]:
        """The agreements whose citizen's consent or objection decides one of ``fields``;
        empty (one dictionary lookup) when no such agreement covers this consumer and action."""
        by_field = self.choice_grants.get((consumer, action))
        if by_field is None:
            return frozenset()
        needed: set[str] = set()
        for name in fields:
            ids = by_field.get(name)
            if ids:
                needed.update(ids)
        return frozenset(needed)

    def party_to(self, consumer: str, action: str, fields: Sequence[str]) -> bool:
        """Whether a permit grants ``consumer`` ``action`` on one of ``fields`` for any
        purpose, at any time, under any condition: whether it is a party to such sharing."""
        by_field = self.index.get((consumer, action))
        if by_field is None:
            return False
        return any(grant.effect == "permit" for name in fields for grant in by_field.get(name, ()))

    def decide(
        self, consumer: str, action: str, fields: Sequence[str], context: RequestContext
    ) -> dict[str, Decision]:
        """One decision per field, in the order asked."""
        evaluated = self._evaluate(consumer, action, fields, context, False)
        return {name: pair[0] for name, pair in evaluated.items()}

    def missing_case_ref(
        self,
        consumer: str,
        action: str,
        decisions: Mapping[str, Decision],
        context: RequestContext,
    ) -> dict[str, Decision]:
        """The fields denied in ``decisions`` that a delayed-disclosure agreement would
        permit if the request carried a case reference (it carries none), each with that
        decision."""
        if context.case_ref:
            return {}
        denied = [name for name, decision in decisions.items() if decision.effect != "permit"]
        if not denied:
            return {}
        by_field = self.index.get((consumer, action)) or {}
        if not any(g.disclosure_delay for name in denied for g in by_field.get(name, ())):
            return {}
        # Decided again with a stand-in reference: a forbid or an unmet condition still wins.
        again = self.decide(consumer, action, denied, replace(context, case_ref="case-ref"))
        return {
            name: again[name] for name in denied if again[name].permitted and again[name].disclosure_delay
        }

    def explain(
        self, consumer: str, action: str, fields: Sequence[str], context: RequestContext
    ) -> dict[str, Explanation]:
        """``decide`` plus every grant that did not apply (the near misses)."""
        return {
            name: Explanation(decision, misses)
            for name, (decision, misses) in self._evaluate(consumer, action, fields, context, True).items()
        }

    def _evaluate(
        self, consumer: str, action: str, fields: Sequence[str], context: RequestContext, explain: bool
    ) -> dict[str, tuple[Decision, tuple[NearMiss, ...]]]:
        results: dict[str, tuple[Decision, tuple[NearMiss, ...]]] = {}
        refusal: str | None = None
        if action not in ACTIONS:
            refusal = f"unknown action {action!r}"
        elif context.purpose not in self.purposes:
            refusal = f"unknown purpose {context.purpose!r}"
        if refusal is not None:
            for name in fields:
                results[name] = (Decision(name, "deny", None, None, refusal), ())
            return results
        by_field = self.index.get((consumer, action))
        # Built on the first condition that needs it, then shared by every field.
        bindings: dict[str, Any] = {}
        # Under a case, how a refusal of each owner's fields is held when the field's own
        # grants hold no delayed-disclosure permit (``case_hold``), found once per owner.
        holds: dict[str | None, CaseHold | None] = {}
        for name in fields:
            hold: CaseHold | None = None
            if context.case_ref:
                owner = self.field_owners.get(name)
                if owner in holds:
                    hold = holds[owner]
                else:
                    hold = holds[owner] = self.case_hold(consumer, action, context.purpose, owner)
            grants = by_field.get(name) if by_field is not None else None
            if not grants:
                if name not in self.field_owners:
                    reason = f"unknown field {name!r}"
                else:
                    reason = f"no agreement lets {consumer} {action} {name} for {context.purpose}"
                held = _held_refusal(name, reason, (), hold, None) if context.case_ref else None
                results[name] = (held or _refusal(name, reason, None), ())
                continue
            results[name] = _decide_field(name, consumer, action, grants, context, bindings, explain, hold)
        return results


# Permit decisions by what they hold. A ``Decision`` is frozen, and a permit is wholly made
# of its grant, the field, the consumer, the action and the purpose, so the same one serves
# every request that gets it: most reads are the same few. Keyed by the grant's identity
# (the compiled policy's own object, kept in the value so the id is not reused), so a
# recompiled policy makes its own; bounded by clearing it.
_PERMITS_KEPT = 4096
_permits: dict[tuple[int, str, str, str, str], tuple[Grant, Decision]] = {}


def _permit(grant: Grant, name: str, consumer: str, action: str, purpose: str) -> Decision:
    key = (id(grant), name, consumer, action, purpose)
    known = _permits.get(key)
    if known is not None and known[0] is grant:
        return known[1]
    if len(_permits) >= _PERMITS_KEPT:
        _permits.clear()
    claims = grant.verify.get(name) if grant.verify is not None and action == "verify" else None
    decision = Decision(
        name,
        "permit",
        grant.agreement,
        grant.version,
        f"agreement {grant.agreement} permits {consumer} to {action} {name} for {purpose}",
        grant.legal_basis,
        digest=grant.digest or None,
        allowed_claims=claims,
        disclosure_delay=grant.disclosure_delay,
    )
    _permits[key] = (grant, decision)
    return decision


def _decide_field(
    name: str,
    consumer: str,
    action: str,
    grants: tuple[Grant, ...],
    context: RequestContext,
    bindings: dict[str, Any],
    explain: bool,
    hold: CaseHold | None = None,
) -> tuple[Decision, tuple[NearMiss, ...]]:
    """The field's decision (and, with ``explain``, its near misses). A refusal under a
    case is held by the field's own delayed-disclosure permit if it has one, else by
    ``hold`` (``_held_refusal``)."""
    if grants[0] is OWNER_GRANT:
        return (Decision(name, "permit", None, None, "owner"), ())
    misses: list[NearMiss] = []
    # Why each permit missed, as the engine acts on it (``misses`` keeps the reasons).
    permit_kinds: list[MissKind] = []
    permit: Grant | None = None
    # Forbids are sorted first, so the first applicable forbid ends the search.
    for grant in grants:
        missed = grant.miss(context, bindings, name, consumer, action)
        if grant.effect == "forbid":
            # A forbid whose condition could not be evaluated applies (fails closed).
            if missed is None or missed.kind == "unevaluated":
                reason = (
                    f"agreement {grant.agreement} of this field's owner was refused when the policy "
                    f"compiled, so no agreement of that owner releases its fields until it is fixed"
                    if grant.refused
                    else f"agreement {grant.agreement} forbids {consumer} to {action} {name}"
                )
                # Under a case, a forbid's refusal is held as any other refusal is (below):
                # it cites the delayed-disclosure permit, the reason still naming the forbid,
                # or, with none of its owner's, the forbid itself, held all the same.
                held = _held_refusal(name, reason, grants, hold, grant) if context.case_ref else None
                return (held or _refusal(name, reason, grant), tuple(misses))
            if explain:
                misses.append(NearMiss(grant.agreement, grant.version, grant.effect, missed.reason))
            continue
        if missed is None:
            if permit is None:
                permit = grant
                if not explain:
                    break
            continue
        misses.append(NearMiss(grant.agreement, grant.version, grant.effect, missed.reason))
        permit_kinds.append(missed.kind)
    if permit is not None:
        return (_permit(permit, name, consumer, action, context.purpose), tuple(misses) if explain else ())
    permit_misses = [m.reason for m in misses if m.effect == "permit"]
    if "consent" in permit_kinds:
        # Only the citizen's consent is missing: the reason the consumer can act on.
        reason = CONSENT_REQUIRED
    elif "objected" in permit_kinds:
        reason = OBJECTED
    elif permit_misses:
        reason = "; ".join(permit_misses)
    else:
        reason = f"no agreement lets {consumer} {action} {name} for {context.purpose}"
    # Refused under a case: the refusal is held, so the citizen is shown the attempt no
    # sooner than an access under it (``service.cases.rules``); the reason still says why.
    held = _held_refusal(name, reason, grants, hold, None) if context.case_ref else None
    return (held or _refusal(name, reason, None), tuple(misses) if explain else ())


def _held_refusal(
    name: str, reason: str, grants: tuple[Grant, ...], hold: CaseHold | None, otherwise: Grant | None
) -> Decision | None:
    """A refusal under a case, held from the citizen: it cites the field's own delayed-
    disclosure permit (one of ``grants``), else the one of its owner's that ``hold`` names;
    with neither, it cites ``otherwise`` (the forbid that refused, or no agreement) and is
    held for ``hold``'s delay (``Decision.held_for``). None when nothing holds it (the
    consumer has no delayed-disclosure agreement): the refusal is shown at once."""
    cited = _delayed_permit(grants) or (hold.cited if hold is not None else None)
    if cited is not None:
        return _refusal(name, reason, cited)
    if hold is None:
        return None
    return _refusal(name, reason, otherwise, held_for=hold.delay)


def _refusal(name: str, reason: str, cited: Grant | None, held_for: timedelta | None = None) -> Decision:
    """A deny for ``reason``, citing ``cited`` (the forbid, or the delayed-disclosure permit
    that holds a refusal under a case) or no agreement; ``held_for``: see ``Decision``."""
    if cited is None:
        return Decision(name, "deny", None, None, reason, held_for=held_for)
    return Decision(
        name,
        "deny",
        cited.agreement,
        cited.version,
        reason,
        cited.legal_basis,
        digest=cited.digest or None,
        held_for=held_for,
    )


def _delayed_permit(grants: tuple[Grant, ...]) -> Grant | None:
    """The first permit among ``grants`` with delayed disclosure, if any."""
    for grant in grants:
        if grant.effect == "permit" and grant.disclosure_delay is not None:
            return grant
    return None


def _grant(agreement: Agreement) -> Grant:
    condition = compile_condition(agreement.when) if agreement.when else None
    return Grant(
        agreement=agreement.id,
        version=agreement.version,
        effect=agreement.effect,
        purposes=frozenset(agreement.purposes),
        starts=_start_of(agreement.valid_from) if agreement.valid_from else None,
        ends=_end_of(agreement.valid_until),
        valid_from=agreement.valid_from,
        valid_until=agreement.valid_until,
        require_case_ref=agreement.require_case_ref,
        when=agreement.when,
        condition=condition,
        legal_basis=agreement.legal_basis,
        digest=agreement.digest,
        verify=agreement.verify,
        disclosure_delay=agreement.disclosure_delay,
        basis=agreement.basis,
    )


def _refused_grant(agreement_id: str, version: int) -> Grant:
    """The forbid that stands in for a refused agreement: always applies, cites it."""
    return replace(OWNER_GRANT, agreement=agreement_id, version=version, effect="forbid", refused=True)


def compile_policy(
    agreements: Iterable[Agreement],
    field_owners: Mapping[str, str],
    purposes: Iterable[str],
    *,
    epoch: int = 0,
    refuse: Callable[[Agreement, Exception], None] | None = None,
    refused: Iterable[Refused] = (),
) -> CompiledPolicy:
    """Build the index; raises ``ConditionError`` for a condition that does not compile.

    Agreements are validated against the catalog by the loader and the API; here a
    field the agreement's owner does not own (any more) is left out, and a purpose the
    catalog no longer has simply never matches. With ``refuse``, an agreement that does
    not compile (whatever the error) is handed to it and left out instead of raising, so
    one stored agreement cannot stop the policy of every department from compiling.

    A refused agreement fails closed for its owner: it may have been a forbid, or a
    narrower version of a permit, so while any agreement of an owner is refused (here, or
    before compiling: ``refused`` lists such agreements as (owner, id, version)) no
    agreement releases that owner's fields to anyone; a stand-in forbid citing the owner's
    first refused agreement takes the place of their grants. The owner's own access is
    unchanged, and every other owner's fields are decided as before. The policy keeps every
    refusal (``CompiledPolicy.refused``), so a draft compiled from it keeps them too.
    """
    collected: dict[tuple[str, str], dict[str, list[Grant]]] = {}
    choices: dict[tuple[str, str], dict[str, set[str]]] = {}
    kept: list[Agreement] = []
    refusals: list[Refused] = list(refused)
    for agreement in agreements:
        try:
            grant = _grant(agreement)
        except Exception as error:
            if refuse is None:
                raise
            refuse(agreement, error)
            refusals.append((agreement.owner, agreement.id, agreement.version))
            continue
        kept.append(agreement)
        # Only fields the agreement's owner owns in this catalog: an agreement kept from an
        # older catalog never grants a field that has since moved to another owner.
        granted = [name for name in agreement.fields if field_owners.get(name) == agreement.owner]
        for action in agreement.actions:
            by_field = collected.setdefault((agreement.consumer, action), {})
            for name in granted:
                by_field.setdefault(name, []).append(grant)
            if agreement.basis != "statutory" and agreement.effect == "permit":
                chosen = choices.setdefault((agreement.consumer, action), {})
                for name in granted:
                    chosen.setdefault(name, set()).add(agreement.id)
    index: dict[tuple[str, str], dict[str, tuple[Grant, ...]]] = {}
    for key, by_field in collected.items():
        index[key] = {
            # Forbids first; then by agreement id so decisions are reproducible.
            name: tuple(sorted(grants, key=lambda g: (g.effect != "forbid", g.agreement)))
            for name, grants in by_field.items()
        }
    if refusals:
        stand_ins: dict[str, Grant] = {}
        for owner, agreement_id, version in refusals:
            stand_ins.setdefault(owner, _refused_grant(agreement_id, version))
        for decided in index.values():
            for name in decided:
                stand_in = stand_ins.get(field_owners.get(name, ""))
                if stand_in is not None:
                    decided[name] = (stand_in,)
    # Owners last: the owner's own access replaces anything an agreement says about it.
    for name, owner in field_owners.items():
        for action in ACTIONS:
            index.setdefault((owner, action), {})[name] = (OWNER_GRANT,)
    return CompiledPolicy(
        index=index,
        field_owners=dict(field_owners),
        purposes=frozenset(purposes),
        epoch=epoch,
        agreements=tuple(kept),
        refused=tuple(refusals),
        choice_grants={
            key: {name: frozenset(ids) for name, ids in by_field.items()} for key, by_field in choices.items()
        },
    )
