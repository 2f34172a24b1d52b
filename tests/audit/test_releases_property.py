"""The offline re-decision equals the live decision, for generated agreements and requests.

Live: signed agreement rows compiled as the service compiles them, then decided. Offline:
a log holding the catalog, each agreement version's policy-change entry and one release
entry per request, written as the access path writes them, fed to ``ReleaseChecker``. A
live permit must be found justified; a release the live engine denied (forged, citing an
agreement over the field) must be found unjustified.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.audit.releases import ReleaseChecker
from service.audit.schemas import AuditEntry, Reason, canonical_json
from service.policy.engine import RequestContext, compile_policy
from service.policy.schemas import AgreementSpec
from service.policy.service import agreements_from_rows
from service.policy.signing import OwnerSigner, OwnerVerifier, version_text

OWNER = "dvla"
FIELDS = ("licence_status", "licence_number", "points")
PURPOSES = ("benefit-eligibility", "tax-administration", "fraud-investigation", "civil-registration")
CONSUMERS = ("welfare", "revenue")
CONDITIONS = (
    None,
    'citizen.status == "active"',
    'request.purpose == "benefit-eligibility"',
    'request.case_ref.startsWith("FR-")',
    'request.time < timestamp("2026-06-01T00:00:00Z")',
    'citizen.status != "deceased" && request.purpose != "tax-administration"',
)
SIGNER = OwnerSigner.generate(OWNER)
CATALOG = {
    "departments": [{"id": d} for d in (OWNER, *CONSUMERS)],
    "purposes": [{"id": p} for p in PURPOSES],
    "fields": [{"name": f, "owner": OWNER} for f in FIELDS],
}
START = datetime(2025, 6, 1, tzinfo=UTC)


@st.composite
def agreement_specs(draw: st.DrawFn, index: int) -> dict[str, Any]:
    effect = draw(st.sampled_from(["permit", "permit", "forbid"]))
    spec: dict[str, Any] = {
        "id": f"agreement-{index}",
        "consumer": draw(st.sampled_from(CONSUMERS)),
        "fields": draw(st.lists(st.sampled_from(FIELDS), min_size=1, max_size=3, unique=True)),
        "actions": draw(st.lists(st.sampled_from(["read", "verify"]), min_size=1, max_size=2, unique=True)),
        "purposes": draw(
            st.lists(
                st.sampled_from(PURPOSES), min_size=0 if effect == "forbid" else 1, max_size=3, unique=True
            )
        ),
        "legal_basis": "Act 2026, s.1",
        "effect": effect,
    }
    when = draw(st.sampled_from(CONDITIONS))
    if when is not None:
        spec["when"] = when
    if effect == "permit" and draw(st.booleans()):
        spec["require_case_ref"] = True
    if draw(st.booleans()):
        first = date(2025, 6, 1) + timedelta(days=draw(st.integers(0, 500)))
        spec["valid_from"] = first
        if draw(st.booleans()):
            spec["valid_until"] = first + timedelta(days=draw(st.integers(0, 400)))
    return AgreementSpec.model_validate(spec).content()


requests = st.tuples(
    st.sampled_from(CONSUMERS),
    st.sampled_from(["read", "verify"]),
    st.sampled_from(FIELDS),
    st.sampled_from(PURPOSES),
    st.sampled_from([None, "FR-17", "CASE-9"]),
    st.integers(0, 900).map(lambda days: START + timedelta(days=days, hours=days % 24)),
    st.sampled_from([None, "active", "deceased"]),
)

AUDIT_ACTION = {"read": "read", "verify": "verify"}


def _entry(n: int, **values: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "time": START.isoformat(),
        "request_id": f"r{n}",
        "client_id": "operator",
        "department": "",
        "action": "policy-change",
        "decision": "permit",
        "status": 200,
    }
    base.update(values)
    # As the audit stores it: validated, then its canonical record.
    return AuditEntry.model_validate(base).to_record()


Asked = tuple[str, str, str, str, str | None, datetime, str | None]


def _at_times(shape: tuple[Any, ...], times: list[datetime]) -> list[Asked]:
    consumer, action, field, purpose, case_ref, status = shape
    return [(consumer, action, field, purpose, case_ref, time, status) for time in times]


# The same request shape asked at several times, interleaved: the checker decides a shape
# once and reuses it, so these check it reuses an answer only where the time cannot change it.
repeated_requests = st.lists(
    st.tuples(
        st.tuples(
            st.sampled_from(CONSUMERS),
            st.sampled_from(["read", "verify"]),
            st.sampled_from(FIELDS),
            st.sampled_from(PURPOSES),
            st.sampled_from([None, "FR-17"]),
            st.sampled_from(["active", "deceased"]),
        ),
        st.lists(
            st.integers(0, 900).map(lambda days: START + timedelta(days=days, hours=days % 24)),
            min_size=2,
            max_size=4,
        ),
    ),
    min_size=1,
    max_size=3,
).flatmap(lambda groups: st.permutations([asked for group in groups for asked in _at_times(*group)]))
agreement_sets = st.integers(1, 4).flatmap(lambda n: st.tuples(*(agreement_specs(i) for i in range(n))))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(contents=agreement_sets, asked=st.lists(requests, min_size=1, max_size=8))
def test_offline_decision_equals_the_live_one(
    contents: tuple[dict[str, Any], ...], asked: list[Asked]
) -> None:
    _offline_equals_live(contents, asked)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(contents=agreement_sets, asked=repeated_requests)
def test_a_shape_asked_at_other_times_is_decided_at_each(
    contents: tuple[dict[str, Any], ...], asked: list[Asked]
) -> None:
    _offline_equals_live(contents, asked)


def _offline_equals_live(contents: tuple[dict[str, Any], ...], asked: list[Asked]) -> None:
    signed = [SIGNER.signed(content) for content in contents]
    rows = [(c["id"], OWNER, 1, "active", c) for c in signed]
    live_agreements = agreements_from_rows(rows, {OWNER: SIGNER.verifier_key()})
    assert len(live_agreements) == len(signed)
    live = compile_policy(live_agreements, dict.fromkeys(FIELDS, OWNER), PURPOSES)
    checker = ReleaseChecker(OWNER, OwnerVerifier.parse(SIGNER.verifier_key(), OWNER))
    leaf = 0
    checker.add(leaf, "catalog", _entry(leaf, action="catalog-change", document=canonical_json(CATALOG)))
    for content in signed:
        leaf += 1
        document = version_text(content, OWNER)
        digest = next(a.digest for a in live_agreements if a.id == content["id"])
        reason = Reason(field="", effect="active", agreement=content["id"], version=1, digest=digest)
        checker.add(leaf, f"change {leaf}", _entry(leaf, reasons=[reason.model_dump()], document=document))
    expected: dict[int, bool] = {}
    for consumer, action, field, purpose, case_ref, time, status in asked:
        context = RequestContext(purpose, case_ref, time, status)
        decision = live.decide(consumer, action, [field], context)[field]
        cited = decision
        if not decision.permitted:
            # A forged release: the field handed out anyway, citing an agreement over it.
            covering = next((a for a in live_agreements if field in a.fields), live_agreements[0])
            cited = decision.__class__(
                field, "permit", covering.id, covering.version, "", None, covering.digest
            )
        leaf += 1
        expected[leaf] = decision.permitted
        entry = _entry(
            leaf,
            time=time.isoformat(),
            department=consumer,
            client_id=f"{consumer}-client",
            action=AUDIT_ACTION[action],
            owners=[OWNER],
            fields_requested=[field],
            fields_released=[field],
            reasons=[
                {
                    "field": field,
                    "effect": cited.effect,
                    "agreement": cited.agreement,
                    "version": cited.version,
                    "digest": cited.digest,
                    "reason": cited.reason,
                }
            ],
            purpose=purpose,
            case_ref=case_ref,
            citizen_status=status,
        )
        checker.add(leaf, f"release {leaf}", entry)
    report = checker.finish()
    unjustified = {u.leaf_index for u in report.unjustified}
    assert report.releases == len(asked)
    assert {leaf: leaf not in unjustified for leaf in expected} == expected
