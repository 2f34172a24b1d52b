"""Open verify claims sent at once, as a server runs them: each request in its own
committed transactions, on PostgreSQL on connections of its own. The daily count of a
(consumer, citizen, field) is a row each request locks until it commits."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import httpx

from service.records.repository import probes
from tests.records.conftest import RecordsEnv, as_

REVENUE = as_("revenue", "consumer")
DAILY_LIMIT = 3  # Settings.verify_unconstrained_per_day, unchanged in committed_records_env
CLAIMS = {
    "given_name": {"eq": "Vera"},
    "address": {"eq": "1 High Street"},
    "date_of_birth": {"eq": "1990-01-01"},
}


async def _open_verify_agreement(env: RecordsEnv) -> None:
    """Revenue may verify three register fields, claims left open (so each is counted)."""
    made = await env.client.post(
        "/v1/policies",
        json={
            "id": "revenue-verifies-open",
            "consumer": "revenue",
            "fields": sorted(CLAIMS),
            "actions": ["verify"],
            "purposes": ["tax-administration"],
            "legal_basis": "Taxes Management Act 1970, s.20",
            "reason": "verify races",
        },
        headers=as_("register", "data-owner"),
    )
    assert made.status_code == 201, made.text


async def _verify(env: RecordsEnv, citizen_id: str, fields: list[str]) -> httpx.Response:
    claims: dict[str, Any] = {name: CLAIMS[name] for name in fields}
    return await env.client.post(
        f"/v1/citizens/{citizen_id}/verify",
        json={"purpose": "tax-administration", "claims": claims},
        headers=REVENUE,
    )


def _statuses(answers: list[httpx.Response]) -> list[int]:
    for answer in answers:
        assert answer.status_code in (200, 429), answer.text
        if answer.status_code == 429:
            assert answer.headers["content-type"] == "application/problem+json"
    return sorted(answer.status_code for answer in answers)


class TestOpenClaimsSentAtOnce:
    async def test_claims_named_in_any_order_are_counted_exactly(
        self, committed_records_env: RecordsEnv
    ) -> None:
        """Requests naming the same fields in opposite orders took the count rows in
        opposite orders: on PostgreSQL they deadlocked, and the loser was a 500. Now
        exactly the daily limit's worth are answered and the others are 429."""
        env = committed_records_env
        await _open_verify_agreement(env)
        forwards = sorted(CLAIMS)
        for _round in range(3):
            citizen_id, _ = await env.register(
                given_name="Vera", address="1 High Street", date_of_birth="1990-01-01"
            )
            answers = await asyncio.gather(
                *(_verify(env, citizen_id, forwards[:: 1 if n % 2 else -1]) for n in range(12))
            )
            assert _statuses(answers) == [200] * DAILY_LIMIT + [429] * (12 - DAILY_LIMIT)

    async def test_a_first_count_of_the_day_clears_earlier_days_without_deadlock(
        self, committed_records_env: RecordsEnv
    ) -> None:
        """A first count of the day deletes earlier days' counts. Deleted where the counts
        were taken, a request holding those rows could wait for a count row held by another
        that waited for them; now they are deleted afterwards, on their own."""
        env = committed_records_env
        await _open_verify_agreement(env)
        engine = env.app.state.database.engine
        yesterday = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)
        # Two requests asking of overlapping fields: neither holds every row the other takes.
        overlapping = [["date_of_birth", "given_name"], ["address", "given_name"]]
        for _round in range(3):
            async with engine.begin() as conn:
                await conn.execute(
                    probes.insert(),
                    [
                        {
                            "consumer": "revenue",
                            "citizen_id": f"old-{n}",
                            "field": "address",
                            "day": yesterday,
                            "comparisons": 1,
                        }
                        for n in range(20)
                    ],
                )
            citizen_id, _ = await env.register(
                given_name="Vera", address="1 High Street", date_of_birth="1990-01-01"
            )
            answers = await asyncio.gather(*(_verify(env, citizen_id, overlapping[n % 2]) for n in range(8)))
            assert 200 in _statuses(answers)
            async with engine.connect() as conn:
                earlier = (await conn.execute(probes.select().where(probes.c.day <= yesterday))).all()
            assert earlier == []
