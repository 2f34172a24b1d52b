"""One rule on every read path: over generated agreements (forbids, time windows, case
references, objections, conditions that do not hold and conditions that cannot be
evaluated), the hot read, the declared read, batch-get and explain decide each field alike.

Each example revokes the agreements of the one before, makes its own for the ``portal``
department (which no other agreement in ``tests/security/policies`` lets read), records the
citizen's objections, then asks the same question four ways:

- the hot read (``service.hotpath``) and the declared FastAPI route give the same answer;
- the fields that read releases are exactly those explain permits, and each it withholds
  has explain's reason;
- batch-get releases and withholds the same fields with the same reasons, or, where read
  answers 404, lists the citizen as it lists a made-up id;
- what explain permits is what the rule, worked out here from the generated agreements
  alone, permits (``expected``);
- read answers 403 where the caller is party to an agreement over a field it asked for
  (one that permits it, or a near miss; ``portal`` may not look citizens up), else 404;
- for an erased citizen, the hot and the declared read answer 410 to such a party and 404
  to anyone else, and batch-get lists the citizen as erased, or as a made-up id.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from itertools import count
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.records.conftest import RecordsEnv, as_
from tests.records.test_hot_read import _both

CONSUMER = as_("portal", "consumer")
EXPLAINER = as_("portal", "data-owner")
CITIZEN_PORTAL = as_("portal", "citizen-portal")
OWNED = {"register": ("given_name", "address"), "dvla": ("licence_status",)}
FIELDS = [name for names in OWNED.values() for name in names]
PURPOSES = ("tax-administration", "fraud-investigation")
CASE_REF = "C-1"
NOT_KNOWN_REASON = "no such citizen is available to you"
ERASED_REASON = "the citizen's record was erased"
# Conditions, each with what it gives for (citizen status, case reference): True, False,
# or None when it cannot be evaluated (null has no startsWith). One that does not hold has
# in its text and comment the words of an unevaluated condition's reason.
CONDITIONS: dict[str | None, Callable[[str, str | None], bool | None]] = {
    None: lambda _status, _case_ref: True,
    'citizen.status == "active"': lambda status, _case_ref: status == "active",
    'citizen.status == "deceased" // condition could not be evaluated': lambda status, _case_ref: (
        status == "deceased"
    ),
    'request.case_ref.startsWith("C")': lambda _status, case_ref: (
        None if case_ref is None else case_ref[0] == "C"
    ),
    'request.case_ref.startsWith("X")': lambda _status, case_ref: (
        None if case_ref is None else case_ref[0] == "X"
    ),
}
# Valid dates: none, in force, expired a month ago, in force from next month.
WINDOWS = ("open", "current", "expired", "future")
IN_FORCE = ("open", "current")
# Examples per pass: enough to mix every kind of agreement, few enough for a fast file.
EXAMPLES = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@dataclass(frozen=True)
class Generated:
    owner: str
    fields: tuple[str, ...]
    effect: str
    purposes: tuple[str, ...]
    window: str
    require_case_ref: bool
    when: str | None
    objectable: bool
    objected: bool


@st.composite
def agreements(draw: st.DrawFn) -> Generated:
    owner = draw(st.sampled_from(sorted(OWNED)))
    fields = draw(st.lists(st.sampled_from(OWNED[owner]), min_size=1, unique=True))
    effect = draw(st.sampled_from(("permit", "forbid")))
    # A permit names its purposes; a forbid may leave them out (every purpose).
    purposes = draw(st.lists(st.sampled_from(PURPOSES), min_size=effect == "permit", unique=True))
    objectable = effect == "permit" and draw(st.booleans())
    return Generated(
        owner=owner,
        fields=tuple(fields),
        effect=effect,
        purposes=tuple(purposes),
        window=draw(st.sampled_from(WINDOWS)),
        # Only a permit may require a case reference (a forbid applies with or without one).
        require_case_ref=effect == "permit" and draw(st.booleans()),
        when=draw(st.sampled_from(list(CONDITIONS))),
        objectable=objectable,
        objected=objectable and draw(st.booleans()),
    )


def expected(
    made: list[Generated], asked: list[str], purpose: str, case_ref: str | None, status: str
) -> tuple[list[str], bool]:
    """What the rule says, from the agreements as generated: the fields of ``asked`` it
    permits, and whether the caller is party to an agreement over one of them (a permit
    over a field no forbid takes; forbids win, and one whose condition cannot be evaluated
    applies). The citizen's objections count only for a citizen who is not erased."""
    permitted: list[str] = []
    party = False
    for name in asked:
        grants = [g for g in made if name in g.fields]
        in_scope = [g for g in grants if (not g.purposes or purpose in g.purposes) and g.window in IN_FORCE]
        if any(g.effect == "forbid" and CONDITIONS[g.when](status, case_ref) is not False for g in in_scope):
            continue
        party = party or any(g.effect == "permit" for g in grants)
        if any(
            g.effect == "permit"
            and (case_ref is not None or not g.require_case_ref)
            and CONDITIONS[g.when](status, case_ref) is True
            and not (g.objected and status != "erased")
            for g in in_scope
        ):
            permitted.append(name)
    return permitted, party


def _body(agreement_id: str, generated: Generated) -> dict[str, Any]:
    today = datetime.now(UTC).date()
    body: dict[str, Any] = {
        "id": agreement_id,
        "consumer": "portal",
        "fields": list(generated.fields),
        "actions": ["read"],
        "purposes": list(generated.purposes),
        "legal_basis": "Generated for a property test",
        "effect": generated.effect,
        "require_case_ref": generated.require_case_ref,
    }
    if generated.window in ("current", "expired"):
        body["valid_from"] = str(today - timedelta(days=60))
    if generated.window == "current":
        body["valid_until"] = str(today + timedelta(days=30))
    elif generated.window == "expired":
        body["valid_until"] = str(today - timedelta(days=30))
    elif generated.window == "future":
        body["valid_from"] = str(today + timedelta(days=30))
    if generated.when is not None:
        body["when"] = generated.when
    if generated.objectable:
        body["basis"] = "objectable"
    return body


@dataclass
class Examples:
    """What lasts from one example to the next: the citizens (one erased), and the
    agreements in force."""

    citizen_id: str
    erased_id: str
    live: list[tuple[str, str]] = field(default_factory=list)
    ids: count[int] = field(default_factory=count)

    async def replace_agreements(self, env: RecordsEnv, made: list[Generated]) -> None:
        for owner, agreement_id in self.live:
            revoked = await env.client.delete(
                f"/v1/policies/{agreement_id}", headers=as_(owner, "data-owner")
            )
            assert revoked.status_code == 200, revoked.text
        self.live = []
        for generated in made:
            agreement_id = f"generated-{next(self.ids)}"
            created = await env.client.post(
                "/v1/policies",
                json=_body(agreement_id, generated),
                headers=as_(generated.owner, "data-owner"),
            )
            assert created.status_code == 201, created.text
            self.live.append((generated.owner, agreement_id))
            if generated.objected:
                objected = await env.client.post(
                    f"/v1/citizens/{self.citizen_id}/objections/{agreement_id}", headers=CITIZEN_PORTAL
                )
                assert objected.status_code == 201, objected.text


@pytest.fixture(scope="module")
async def examples(security_env: RecordsEnv) -> Examples:
    citizen_id, _ = await security_env.register(given_name="Prop", address="1 Rule Row")
    written = await security_env.client.patch(
        f"/v1/citizens/{citizen_id}/fields",
        json={"fields": {"licence_status": "valid", "points": 3}, "reason": "issued"},
        headers=as_("dvla", "writer"),
    )
    assert written.status_code == 200, written.text
    erased_id, _ = await security_env.register(given_name="Gone")
    await security_env.erase(erased_id)
    return Examples(citizen_id, erased_id)


def _statutory(owner: str, fields: tuple[str, ...], **changes: Any) -> Generated:
    made = Generated(owner, fields, "permit", ("tax-administration",), "open", False, None, False, False)
    return replace(made, **changes)


# A forbid whose condition does not hold, though its text holds the words of an unevaluated
# condition's reason: it took the field once.
FALSE_FORBID = _statutory(
    "register",
    ("given_name",),
    effect="forbid",
    purposes=(),
    when='citizen.status == "deceased" // condition could not be evaluated',
)


class TestOneRuleOnEveryReadPath:
    @EXAMPLES
    @example(
        made=[_statutory("register", ("given_name",)), FALSE_FORBID],
        purpose="tax-administration",
        case_ref=None,
        asked=["given_name"],
    )
    # A caller its agreement permits: told 410 of the erased citizen (it was told 404).
    @example(
        made=[_statutory("dvla", ("licence_status",))],
        purpose="tax-administration",
        case_ref=None,
        asked=["licence_status"],
    )
    @given(
        made=st.lists(agreements(), min_size=1, max_size=4),
        purpose=st.sampled_from(PURPOSES),
        case_ref=st.sampled_from((None, CASE_REF)),
        asked=st.lists(st.sampled_from(FIELDS), min_size=1, unique=True),
    )
    async def test_hot_read_declared_read_batch_get_and_explain_decide_alike(
        self,
        security_env: RecordsEnv,
        examples: Examples,
        made: list[Generated],
        purpose: str,
        case_ref: str | None,
        asked: list[str],
    ) -> None:
        env, citizen_id, erased_id = security_env, examples.citizen_id, examples.erased_id
        await examples.replace_agreements(env, made)
        headers = {**CONSUMER, **({"X-Case-Ref": case_ref} if case_ref else {})}
        params = {"fields": ",".join(asked), "purpose": purpose}

        hot, declared, _served = await _both(env, f"/v1/citizens/{citizen_id}", params, headers)
        assert hot == declared
        status, _headers, body = hot
        hot, declared, _served = await _both(env, f"/v1/citizens/{erased_id}", params, headers)
        assert hot == declared
        erased_status = hot[0]

        batch = await env.client.post(
            "/v1/citizens/batch-get",
            json={"ids": [citizen_id, erased_id], "fields": asked, "purpose": purpose},
            headers=headers,
        )
        assert batch.status_code == 200, batch.text
        item, erased_item = batch.json()["items"]

        ask = {"consumer": "portal", "action": "read", "fields": asked, "purpose": purpose}
        ask |= {"citizen_status": "active", "citizen_id": citizen_id}
        if case_ref:
            ask["case_ref"] = case_ref
        explained = await env.client.post("/v1/decisions/explain", json=ask, headers=EXPLAINER)
        assert explained.status_code == 200, explained.text
        decisions = explained.json()["decisions"]
        permitted = [name for name in asked if decisions[name]["effect"] == "permit"]
        refused = [(name, decisions[name]["reason"]) for name in asked if name not in permitted]
        near_party = any(m["effect"] == "permit" for name in asked for m in decisions[name]["near_misses"])

        rule_permits, party = expected(made, asked, purpose, case_ref, "active")
        assert permitted == rule_permits
        assert (bool(permitted) or near_party) == party
        if permitted:
            assert status == 200, body
            assert list(body["fields"]) == permitted
            assert [(w["field"], w["reason"]) for w in body["withheld"]] == refused
            assert item["fields"] == body["fields"]
            assert item["withheld"] == body["withheld"]
        elif party:
            assert status == 403, body
            assert item["fields"] == {}
            assert [(w["field"], w["reason"]) for w in item["withheld"]] == refused
        else:
            assert status == 404, body
            assert item == {
                "id": citizen_id,
                "fields": {},
                "withheld": [{"field": name, "reason": NOT_KNOWN_REASON} for name in asked],
            }

        _rule_permits, party_once_erased = expected(made, asked, purpose, case_ref, "erased")
        assert erased_status == (410 if party_once_erased else 404)
        reason = ERASED_REASON if party_once_erased else NOT_KNOWN_REASON
        assert erased_item == {
            "id": erased_id,
            "fields": {},
            "withheld": [{"field": name, "reason": reason} for name in asked],
        }
