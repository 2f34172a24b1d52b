"""Per-field decision cost: the compiled index against cedarpy and pycasbin.

The same generated agreements (1,000 of them over 50 departments) are decided by three
engines: ``service.policy.engine`` (the code the service runs), Cedar (each agreement
exported as a Cedar policy, evaluated by cedarpy with a pre-parsed policy set) and
casbin (each agreement expanded into policy rows under an ABAC matcher).
``tests/policy/test_engines_agree.py`` checks that the three give the same answers, so
the figures compare like with like. Then owner signing on against off: the same
agreements compiled from stored rows with and without every owner's signature, and the
per-field decision cost under each index.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import casbin
import cedarpy

from bench import goals
from service.policy.engine import ACTIONS, Agreement, CompiledPolicy, RequestContext, compile_policy
from service.policy.schemas import AgreementSpec
from service.policy.service import agreements_from_rows
from service.policy.signing import OwnerSigner

PURPOSE_COUNT = 10
FIELDS_PER_DEPARTMENT = 4
NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)
Row = tuple[str, str, int, str, dict[str, Any]]


@dataclass(frozen=True)
class Scenario:
    agreements: list[Agreement]
    field_owners: dict[str, str]
    purposes: list[str]
    departments: list[str]


@dataclass(frozen=True)
class Ask:
    consumer: str
    action: str
    fields: tuple[str, ...]
    context: RequestContext


def generate(agreements: int, departments: int, seed: int = 7) -> Scenario:
    rng = random.Random(seed)
    names = [f"dept{i:02d}" for i in range(departments)]
    owners = {f"{d}_field{j}": d for d in names for j in range(FIELDS_PER_DEPARTMENT)}
    owned = {d: [f for f, o in owners.items() if o == d] for d in names}
    purposes = [f"purpose{i}" for i in range(PURPOSE_COUNT)]
    result = []
    for index in range(agreements):
        owner = rng.choice(names)
        consumer = rng.choice([d for d in names if d != owner])
        effect = "forbid" if rng.random() < 0.05 else "permit"
        roll = rng.random()
        result.append(
            Agreement(
                id=f"agreement-{index}",
                owner=owner,
                consumer=consumer,
                fields=tuple(rng.sample(owned[owner], rng.randint(1, 3))),
                actions=tuple(rng.sample(ACTIONS, rng.randint(1, 2))),
                purposes=tuple(rng.sample(purposes, rng.randint(1, 2))),
                legal_basis="generated",
                valid_from=date(2027, 1, 1) if 0.05 <= roll < 0.10 else None,
                valid_until=date(2020, 1, 1) if roll < 0.05 else None,
                when='citizen.status == "active"' if 0.10 <= roll < 0.20 else None,
                require_case_ref=effect == "permit" and 0.20 <= roll < 0.25,
                effect=effect,  # type: ignore[arg-type]
            )
        )
    return Scenario(result, owners, purposes, names)


def asks(scenario: Scenario, count: int, fields_per_ask: int = 5, seed: int = 11) -> list[Ask]:
    """Requests that hit agreements often (a random request would be denied almost always)."""
    rng = random.Random(seed)
    all_fields = sorted(scenario.field_owners)
    result = []
    for _ in range(count):
        agreement = rng.choice(scenario.agreements)
        fields = list(agreement.fields) + rng.sample(all_fields, fields_per_ask - len(agreement.fields))
        action = rng.choice(agreement.actions) if rng.random() < 0.8 else rng.choice(ACTIONS)
        purpose = rng.choice(agreement.purposes) if rng.random() < 0.8 else rng.choice(scenario.purposes)
        consumer = agreement.consumer if rng.random() < 0.9 else rng.choice(scenario.departments)
        context = RequestContext(
            purpose=purpose,
            case_ref=rng.choice([None, "CASE-1"]),
            time=NOW,
            citizen_status=rng.choice(["active", "deceased"]),
        )
        result.append(Ask(consumer, action, tuple(fields), context))
    return result


def compile_index(scenario: Scenario) -> CompiledPolicy:
    return compile_policy(scenario.agreements, scenario.field_owners, scenario.purposes)


def _seconds(day: date) -> int:
    return int(datetime.combine(day, datetime.min.time(), tzinfo=UTC).timestamp())


# --- Cedar --------------------------------------------------------------------------------


def to_cedar(scenario: Scenario) -> str:
    """Each agreement as one Cedar policy; each owner as one policy over its own fields."""
    policies = []
    for a in scenario.agreements:
        actions = ", ".join(f'Action::"{x}"' for x in a.actions)
        fields = ", ".join(f'Field::"{f}"' for f in a.fields)
        purposes = ", ".join(f'"{p}"' for p in a.purposes)
        conditions = [f"resource in [{fields}]", f"[{purposes}].contains(context.purpose)"]
        if a.valid_from:
            conditions.append(f"context.now >= {_seconds(a.valid_from)}")
        if a.valid_until:
            conditions.append(f"context.now < {_seconds(a.valid_until + timedelta(days=1))}")
        if a.require_case_ref:
            conditions.append("context.has_case_ref")
        if a.when:
            conditions.append('context.citizen_status == "active"')
        effect = "permit" if a.effect == "permit" else "forbid"
        policies.append(
            f'@id("{a.id}")\n'
            f'{effect}(principal == Department::"{a.consumer}", action in [{actions}], resource)\n'
            f"when {{ {' && '.join(conditions)} }};"
        )
    by_owner: dict[str, list[str]] = {}
    for name, owner in scenario.field_owners.items():
        by_owner.setdefault(owner, []).append(f'Field::"{name}"')
    for owner, owned in sorted(by_owner.items()):
        policies.append(
            f'@id("owner-{owner}")\npermit(principal == Department::"{owner}", action, resource)\n'
            f"when {{ resource in [{', '.join(owned)}] }};"
        )
    return "\n\n".join(policies)


class CedarEngine:
    def __init__(self, scenario: Scenario) -> None:
        self.policies = cedarpy.PolicySet.from_str(to_cedar(scenario))
        self.entities = cedarpy.Entities.from_json_str("[]")

    def decide(self, ask: Ask) -> dict[str, str]:
        context = {
            "purpose": ask.context.purpose,
            "now": int(ask.context.time.timestamp()),
            "has_case_ref": bool(ask.context.case_ref),
            "citizen_status": ask.context.citizen_status or "",
        }
        requests = [
            {
                "principal": f'Department::"{ask.consumer}"',
                "action": f'Action::"{ask.action}"',
                "resource": f'Field::"{name}"',
                "context": context,
            }
            for name in ask.fields
        ]
        results = cedarpy.is_authorized_batch(requests, self.policies, self.entities)
        return {
            name: "permit" if r.decision == cedarpy.Decision.Allow else "deny"
            for name, r in zip(ask.fields, results, strict=True)
        }


# --- casbin -------------------------------------------------------------------------------

CASBIN_MODEL = """
[request_definition]
r = sub, obj, act, purpose, now, hascase, status

[policy_definition]
p = sub, obj, act, purpose, vfrom, vuntil, caseref, status, eft

[policy_effect]
e = some(where (p.eft == allow)) && !some(where (p.eft == deny))

[matchers]
m = r.sub == p.sub && r.obj == p.obj && r.act == p.act && (p.purpose == "*" || r.purpose == p.purpose) \
&& r.now >= p.vfrom && r.now < p.vuntil && (p.caseref == "0" || r.hascase == "1") \
&& (p.status == "*" || r.status == p.status)
"""

# Times as fixed-width strings: casbin compares policy values as strings.
_NEVER = "000000000000"
_FOREVER = "999999999999"


def _stamp(seconds: int) -> str:
    return f"{seconds:012d}"


def casbin_rows(scenario: Scenario) -> list[list[str]]:
    rows = []
    for a in scenario.agreements:
        vfrom = _stamp(_seconds(a.valid_from)) if a.valid_from else _NEVER
        vuntil = _stamp(_seconds(a.valid_until + timedelta(days=1))) if a.valid_until else _FOREVER
        caseref = "1" if a.require_case_ref else "0"
        status = "active" if a.when else "*"
        eft = "allow" if a.effect == "permit" else "deny"
        for name in a.fields:
            for action in a.actions:
                for purpose in a.purposes or ("*",):
                    rows.append([a.consumer, name, action, purpose, vfrom, vuntil, caseref, status, eft])
    for name, owner in scenario.field_owners.items():
        for action in ACTIONS:
            rows.append([owner, name, action, "*", _NEVER, _FOREVER, "0", "*", "allow"])
    return rows


class CasbinEngine:
    def __init__(self, scenario: Scenario) -> None:
        model = casbin.model.Model()
        model.load_model_from_text(CASBIN_MODEL)
        self.enforcer = casbin.Enforcer(model)
        self.enforcer.add_policies(casbin_rows(scenario))

    def decide(self, ask: Ask) -> dict[str, str]:
        now = _stamp(int(ask.context.time.timestamp()))
        hascase = "1" if ask.context.case_ref else "0"
        status = ask.context.citizen_status or ""
        return {
            name: "permit"
            if self.enforcer.enforce(
                ask.consumer, name, ask.action, ask.context.purpose, now, hascase, status
            )
            else "deny"
            for name in ask.fields
        }


def engine_decide(policy: CompiledPolicy, ask: Ask) -> dict[str, str]:
    decisions = policy.decide(ask.consumer, ask.action, ask.fields, ask.context)
    return {name: d.effect for name, d in decisions.items()}


# --- the benchmark ------------------------------------------------------------------------


def _per_field_us(run: Any, batch: list[Ask], budget_seconds: float) -> float:
    """Microseconds per field decision, repeating ``batch`` until the budget is spent."""
    fields = 0
    started = time.perf_counter()
    while True:
        for ask in batch:
            run(ask)
            fields += len(ask.fields)
        elapsed = time.perf_counter() - started
        if elapsed >= budget_seconds:
            return elapsed / fields * 1e6


def main() -> None:
    scenario = generate(1000, 50)
    batch = asks(scenario, 500)
    compiled = compile_index(scenario)
    cedar = CedarEngine(scenario)
    casbin_engine = CasbinEngine(scenario)
    print(
        f"{len(scenario.agreements)} agreements, {len(scenario.departments)} departments, "
        "5 fields per request"
    )
    ours = _per_field_us(
        lambda ask: compiled.decide(ask.consumer, ask.action, ask.fields, ask.context), batch, 3.0
    )
    cedar_us = _per_field_us(cedar.decide, batch, 5.0)
    casbin_us = _per_field_us(casbin_engine.decide, batch[:10], 2.0)
    print(f"compiled index: {ours:10.2f} us per field")
    print(f"cedarpy:        {cedar_us:10.2f} us per field  ({cedar_us / ours:8.1f}x slower than the index)")
    print(f"pycasbin:       {casbin_us:10.2f} us per field  ({casbin_us / ours:8.1f}x slower than the index)")
    goals.check("policy decision, cedarpy / compiled index", cedar_us / ours, 50)
    _signing(scenario, batch)


def _rows(scenario: Scenario, signers: dict[str, OwnerSigner] | None) -> list[Row]:
    """The agreements as stored rows, each signed by its owner when ``signers`` are given."""
    rows: list[Row] = []
    for a in scenario.agreements:
        content = AgreementSpec.model_validate(
            {
                "id": a.id,
                "consumer": a.consumer,
                "fields": list(a.fields),
                "actions": list(a.actions),
                "purposes": list(a.purposes),
                "legal_basis": a.legal_basis,
                "valid_from": a.valid_from,
                "valid_until": a.valid_until,
                "when": a.when,
                "require_case_ref": a.require_case_ref,
                "effect": a.effect,
            }
        ).content()
        if signers is not None:
            content = signers[a.owner].signed(content)
        rows.append((a.id, a.owner, 1, "active", content))
    return rows


def _compile_ms(rows: list[Row], keys: dict[str, str] | None, scenario: Scenario) -> tuple[float, float]:
    """The first compilation from stored rows, and the best of five more (as at each later
    policy epoch, when signatures already verified are remembered), in ms."""
    times = []
    for _ in range(6):
        started = time.perf_counter()
        compile_policy(agreements_from_rows(rows, keys), scenario.field_owners, scenario.purposes)
        times.append(time.perf_counter() - started)
    return times[0] * 1e3, min(times[1:]) * 1e3


def _signing(scenario: Scenario, batch: list[Ask]) -> None:
    """Owner signing on against off: every signature is verified when the index compiles,
    never per decision, so only the compile time may change."""
    signers = {d: OwnerSigner.generate(d) for d in scenario.departments}
    keys = {d: signer.verifier_key() for d, signer in signers.items()}
    unsigned_rows, signed_rows = _rows(scenario, None), _rows(scenario, signers)
    unsigned_first, unsigned_ms = _compile_ms(unsigned_rows, None, scenario)
    signed_first, signed_ms = _compile_ms(signed_rows, keys, scenario)
    unsigned = compile_policy(agreements_from_rows(unsigned_rows), scenario.field_owners, scenario.purposes)
    signed = compile_policy(agreements_from_rows(signed_rows, keys), scenario.field_owners, scenario.purposes)
    assert len(signed.agreements) == len(unsigned.agreements) == len(scenario.agreements)
    # Alternated, best of five each: the machine is shared, and both indices are the same code.
    off = on = float("inf")
    for _ in range(5):
        off = min(
            off,
            _per_field_us(lambda a: unsigned.decide(a.consumer, a.action, a.fields, a.context), batch, 0.6),
        )
        on = min(
            on, _per_field_us(lambda a: signed.decide(a.consumer, a.action, a.fields, a.context), batch, 0.6)
        )
    print(f"owner signing, {len(scenario.agreements)} agreements of {len(signers)} signing owners:")
    print(
        f"  first compile from stored rows: unsigned {unsigned_first:7.1f} ms, signed {signed_first:7.1f} ms "
        f"({signed_first / unsigned_first:.2f}x: every signature verified)"
    )
    print(
        f"  later compiles (each policy epoch): unsigned {unsigned_ms:7.1f} ms, signed {signed_ms:7.1f} ms "
        f"({signed_ms / unsigned_ms:.2f}x: verified signatures remembered)"
    )
    print(
        f"  decision: unsigned {off:6.2f} us per field, signed {on:6.2f} us per field "
        f"(ratio signed/unsigned {on / off:.2f}; no signature is checked per request)"
    )
