"""The audit store as the past requests simulate replays (``AuditedRequests``)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from service.audit.replay import AuditedRequests
from service.audit.writer import append_many_in_transaction
from service.db import create_engine
from service.policy.engine import Agreement, CompiledPolicy, compile_policy
from service.policy.simulate import Window, simulate
from tests.fixtures.audit import make_entry
from tests.fixtures.databases import create_scratch_database, drop_scratch_database

OWNERS = {"licence_status": "dvla"}
PURPOSES = ["benefit-eligibility"]


def _policy(**changes: object) -> CompiledPolicy:
    values: dict[str, object] = {
        "id": "licence-for-welfare",
        "owner": "dvla",
        "consumer": "welfare",
        "fields": ("licence_status",),
        "actions": ("read",),
        "purposes": ("benefit-eligibility",),
        "legal_basis": "Social Security Administration Act 1992, s.122",
    }
    values.update(changes)
    return compile_policy([Agreement(**values)], OWNERS, PURPOSES, epoch=1)  # type: ignore[arg-type]


@pytest.fixture
async def audited_engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    """A fresh committed database with reads of an active citizen, a deceased one, one
    recorded before the status was (no ``citizen_status``), and one of an erased citizen,
    refused with 410."""
    url = await create_scratch_database(database_url)
    engine = create_engine(url)
    read = {"purpose": "benefit-eligibility", "fields_requested": ["licence_status"], "owners": ["dvla"]}
    async with engine.begin() as conn:
        await append_many_in_transaction(
            conn,
            [
                make_entry(citizen_status="active", **read),
                make_entry(citizen_status="active", **read),
                make_entry(citizen_status="deceased", **read),
                make_entry(**read),
                make_entry(
                    citizen_status="erased",
                    status=410,
                    decision="deny",
                    fields_released=[],
                    reasons=[
                        {"field": "licence_status", "effect": "permit", "agreement": "a1", "version": 1}
                    ],
                    **read,
                ),
            ],
        )
    yield engine
    await engine.dispose()
    await drop_scratch_database(url)


class TestAuditedRequests:
    async def test_replays_the_recorded_citizen_status(self, audited_engine: AsyncEngine) -> None:
        """A request for an erased citizen is not replayed: no agreement could change its
        answer (410, or 404), so it would count as a change that changes nothing."""
        replayed = [r async for r in AuditedRequests(audited_engine).recorded_requests(Window())]
        assert [r.citizen_status for r in replayed] == ["active", "active", "deceased", None]

    async def test_simulate_decides_status_conditions_as_they_were_decided(
        self, audited_engine: AsyncEngine
    ) -> None:
        live = _policy(when='citizen.status == "active"')
        # The same recorded citizens pass both conditions, so nothing they asked changes.
        # The entry without a recorded status is replayed with a null status: it fails
        # the live ``==`` and passes the draft's ``!=``, the one change.
        draft = _policy(when='citizen.status != "deceased"')
        result = await simulate(live, draft, AuditedRequests(audited_engine))
        assert result.evaluated == 4
        assert result.changed == 1
        assert result.changes == {
            ("welfare", "licence_status", "read", "benefit-eligibility", "deny", "permit"): 1
        }
