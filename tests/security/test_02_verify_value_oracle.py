"""Finding 2: ``verify`` was a value oracle.

With a verify-only agreement on ``date_of_birth``, binary search with ``lte`` recovered
the exact date in 16 calls, and ``in`` tried 100 candidates per call. An agreement may now
fix the claims that may be asked (``verify: {date_of_birth: {lte: [today-18y]}}``); where it
leaves them open, comparisons are limited per (consumer, citizen, field) and UTC day (429),
and asking one citizen's field again is flagged in the audit entry and a metric.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.policy.loader import load_policy_folder
from service.records.values import relative_date
from service.sourcefile import SourceFileError
from tests.records.conftest import RecordsEnv, as_
from tests.security.conftest import SECURITY_POLICIES, audit_entries, problem

PORTAL = as_("portal", "consumer")  # verify on date_of_birth, claims left open
WELFARE = as_("welfare", "consumer")  # verify on date_of_birth, only lte today-18y / today-66y
SECRET_BIRTH_DATE = dt.date(1987, 6, 15)


async def _verify(
    env: RecordsEnv, citizen_id: str, claims: dict[str, Any], caller: dict[str, str], purpose: str
) -> httpx.Response:
    return await env.client.post(
        f"/v1/citizens/{citizen_id}/verify", json={"purpose": purpose, "claims": claims}, headers=caller
    )


async def _binary_search(env: RecordsEnv, citizen_id: str) -> tuple[list[int], dt.date, dt.date]:
    """The attack: narrow [low, high] with 'lte' until one day is left (16 calls)."""
    low, high = dt.date(1900, 1, 1), dt.date(2026, 12, 31)
    statuses: list[int] = []
    while low < high and len(statuses) < 20:
        middle = low + (high - low) // 2
        response = await _verify(
            env, citizen_id, {"date_of_birth": {"lte": middle.isoformat()}}, PORTAL, "benefit-eligibility"
        )
        statuses.append(response.status_code)
        if response.status_code != 200:
            break
        if response.json()["results"]["date_of_birth"]:
            high = middle
        else:
            low = middle + dt.timedelta(days=1)
    return statuses, low, high


class TestOpenClaimsAreLimited:
    async def test_the_16_call_binary_search_fails(self, security_env: RecordsEnv) -> None:
        citizen_id, _ = await security_env.register(date_of_birth=SECRET_BIRTH_DATE.isoformat())

        statuses, low, high = await _binary_search(security_env, citizen_id)

        limit = security_env.settings.verify_unconstrained_per_day
        assert statuses == [200] * limit + [429]
        # The answers it did get leave thousands of candidate days.
        assert low <= SECRET_BIRTH_DATE <= high
        assert (high - low).days > 5000

    async def test_the_429_is_problem_json_with_retry_after_until_the_next_utc_day(
        self, security_env: RecordsEnv
    ) -> None:
        citizen_id, _ = await security_env.register(date_of_birth=SECRET_BIRTH_DATE.isoformat())
        limit = security_env.settings.verify_unconstrained_per_day
        claim = {"date_of_birth": {"gte": "1950-01-01"}}
        for _ in range(limit):
            ok = await _verify(security_env, citizen_id, claim, PORTAL, "benefit-eligibility")
            assert ok.status_code == 200, ok.text

        refused = await _verify(security_env, citizen_id, claim, PORTAL, "benefit-eligibility")

        body = problem(refused, 429)
        assert "date_of_birth" in body["detail"]
        assert 1 <= int(refused.headers["retry-after"]) <= 86_400
        assert "results" not in body

    async def test_in_counts_each_candidate(self, security_env: RecordsEnv) -> None:
        citizen_id, _ = await security_env.register(date_of_birth=SECRET_BIRTH_DATE.isoformat())
        candidates = [(dt.date(1987, 1, 1) + dt.timedelta(days=n)).isoformat() for n in range(100)]
        response = await _verify(
            security_env, citizen_id, {"date_of_birth": {"in": candidates}}, PORTAL, "benefit-eligibility"
        )
        problem(response, 429)

    async def test_other_citizens_and_fields_have_their_own_count(self, security_env: RecordsEnv) -> None:
        probed, _ = await security_env.register(date_of_birth=SECRET_BIRTH_DATE.isoformat())
        await _binary_search(security_env, probed)
        other, _ = await security_env.register(date_of_birth=SECRET_BIRTH_DATE.isoformat())
        response = await _verify(
            security_env, other, {"date_of_birth": {"lte": "2000-01-01"}}, PORTAL, "benefit-eligibility"
        )
        assert response.json()["results"] == {"date_of_birth": True}

    async def test_repeated_probing_is_flagged_in_the_audit_and_the_metric(
        self, security_env: RecordsEnv
    ) -> None:
        citizen_id, _ = await security_env.register(date_of_birth=SECRET_BIRTH_DATE.isoformat())
        await _binary_search(security_env, citizen_id)

        entries = await audit_entries(security_env, citizen_id=citizen_id, action="verify")
        flags = [
            [r for r in e["reasons"] if r["effect"] == "probing"]
            for e in sorted(entries, key=lambda e: e["time"])
        ]
        limit = security_env.settings.verify_unconstrained_per_day
        assert [len(f) for f in flags] == [0] + [1] * limit
        assert [e["status"] for e in sorted(entries, key=lambda e: e["time"])][-1] == 429
        assert "repeated open claims" in flags[-1][0]["reason"]

        metrics = (await security_env.client.get("/metrics")).text
        assert (
            'tellonce_verify_probing_total{consumer="portal",field="date_of_birth",limited="true"}' in metrics
        )
        assert (
            'tellonce_verify_probing_total{consumer="portal",field="date_of_birth",limited="false"}'
            in metrics
        )


class TestAgreementsFixTheClaims:
    async def test_a_fixed_claim_is_answered(self, security_env: RecordsEnv) -> None:
        citizen_id, _ = await security_env.register(date_of_birth=SECRET_BIRTH_DATE.isoformat())
        for _ in range(security_env.settings.verify_unconstrained_per_day + 2):
            adult = await _verify(
                security_env,
                citizen_id,
                {"date_of_birth": {"lte": "today-18y"}},
                WELFARE,
                "fraud-investigation",
            )
            assert adult.json()["results"] == {"date_of_birth": True}
        # The same threshold written as the date it stands for today is the same claim.
        today = dt.datetime.now(dt.UTC).date()
        pensioner = (relative_date("today-66y", today) or today).isoformat()
        response = await _verify(
            security_env, citizen_id, {"date_of_birth": {"lte": pensioner}}, WELFARE, "fraud-investigation"
        )
        assert response.json()["results"] == {"date_of_birth": False}

    @pytest.mark.parametrize(
        "claim",
        [
            {"lte": "1987-06-15"},
            {"gte": "today-18y"},
            {"eq": "1987-06-15"},
            {"in": ["1987-06-15", "1987-06-16"]},
        ],
    )
    async def test_any_other_claim_is_refused(self, security_env: RecordsEnv, claim: dict[str, Any]) -> None:
        citizen_id, _ = await security_env.register(date_of_birth=SECRET_BIRTH_DATE.isoformat())
        body = problem(
            await _verify(security_env, citizen_id, {"date_of_birth": claim}, WELFARE, "fraud-investigation"),
            403,
        )
        assert "allows only these claims on date_of_birth: lte today-18y, lte today-66y" in body["detail"]

    async def test_explain_shows_the_allowed_claims(self, security_env: RecordsEnv) -> None:
        response = await security_env.client.post(
            "/v1/decisions/explain",
            json={
                "consumer": "welfare",
                "action": "verify",
                "fields": ["date_of_birth"],
                "purpose": "fraud-investigation",
            },
            headers=as_("audit-office", "auditor"),
        )
        assert response.status_code == 200, response.text
        decision = response.json()["decisions"]["date_of_birth"]
        assert decision["allowed_claims"] == {"lte": ["today-18y", "today-66y"]}

    async def test_the_api_stores_and_checks_the_verify_key(self, security_env: RecordsEnv) -> None:
        owner = as_("register", "data-owner")
        agreement = {
            "id": "dvla-verifies-age-api",
            "consumer": "dvla",
            "fields": ["date_of_birth"],
            "actions": ["verify"],
            "purposes": ["licence-administration"],
            "legal_basis": "Road Traffic Act 1988, s.97",
            "verify": {"date_of_birth": {"lte": ["today-17y"]}},
        }
        created = await security_env.client.post("/v1/policies", json=agreement, headers=owner)
        assert created.status_code == 201, created.text
        assert created.json()["verify"] == {"date_of_birth": {"lte": ["today-17y"]}}

        bad = {**agreement, "id": "dvla-verifies-badly", "verify": {"given_name": {"lte": ["today-17y"]}}}
        body = problem(await security_env.client.post("/v1/policies", json=bad, headers=owner), 422)
        assert any("'given_name', which is not one of its fields" in e["msg"] for e in body["errors"])


BROKEN_VERIFY = """\
owner: register
agreements:
  - id: verify-with-bad-claims
    consumer: welfare
    fields: [date_of_birth, given_name]
    actions: [verify]
    purposes: [benefit-eligibility]
    legal_basis: "law"
    verify:
      date_of_birth:
        lte: [today-18x]
      given_name:
        gte: [A]
      address:
        eq: [x]
  - id: verify-key-without-verify
    consumer: dvla
    fields: [date_of_birth]
    actions: [read]
    purposes: [licence-administration]
    legal_basis: "law"
    verify:
      date_of_birth:
        lte: [today-18y]
"""


def test_the_loader_names_file_and_line_for_bad_claims(tmp_path: Path) -> None:
    folder = tmp_path / "policies"
    folder.mkdir()
    (folder / "catalog.yaml").write_text((SECURITY_POLICIES / "catalog.yaml").read_text())
    (folder / "register.yaml").write_text(BROKEN_VERIFY)

    with pytest.raises(SourceFileError) as caught:
        load_policy_folder(folder)

    path = folder / "register.yaml"
    assert [str(e) for e in caught.value.errors] == [
        f"{path}:11: agreement verify-with-bad-claims: the threshold 'today-18x' for date_of_birth "
        "must be an ISO 8601 date (YYYY-MM-DD)",
        f"{path}:13: agreement verify-with-bad-claims: the claim 'gte' applies only to dates and integers",
        f"{path}:14: agreement verify-with-bad-claims: allowed claims name 'address', "
        "which is not one of its fields",
        f"{path}:22: agreement verify-key-without-verify: "
        "allowed claims apply only to an agreement that grants verify",
    ]
