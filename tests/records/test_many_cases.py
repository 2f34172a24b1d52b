"""An access-log page among about a thousand cases: the cases are queried a chunk at a
time (``cases.repository.CASES_PER_QUERY``), so SQLite's limit on a statement's expression
depth (1000) is never reached, however many cases one page's entries name."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from service.audit import writer as audit_writer
from service.audit.models import AuditEntryRow
from service.audit.schemas import AuditEntry
from service.cases.models import Case
from tests.records.conftest import RecordsEnv, as_
from tests.records.test_case_refs import DELAYED

PORTAL = as_("portal", "citizen-portal")
REVENUE = as_("revenue", "consumer")
CASES = 1000


class TestAccessLogAmongManyCases:
    async def test_a_page_of_reads_under_a_thousand_cases_shows_those_closed(
        self, records_env: RecordsEnv, session: AsyncSession
    ) -> None:
        """A thousand reads of one citizen, each under its own case, half of them closed:
        one page of the access log shows the reads of the closed cases and holds the rest."""
        created = await records_env.client.post(
            "/v1/policies", json=DELAYED, headers=as_("register", "data-owner")
        )
        assert created.status_code == 201, created.text
        citizen_id, _ = await records_env.register(given_name="Cased")
        read = await records_env.client.get(
            f"/v1/citizens/{citizen_id}",
            params={"purpose": "fraud-investigation", "fields": "given_name"},
            headers={**REVENUE, "X-Case-Ref": "CASE-0000"},
        )
        assert read.status_code == 200, read.text
        conn = await session.connection()
        canonical = (
            await conn.execute(
                select(AuditEntryRow.canonical).where(
                    AuditEntryRow.citizen_id == citizen_id, AuditEntryRow.action == "read"
                )
            )
        ).scalar_one()
        # The same read under each of the other cases, as the read path would audit it.
        first = AuditEntry.model_validate_json(canonical)
        others = [first.model_copy(update={"case_ref": f"CASE-{n:04d}"}) for n in range(1, CASES)]
        await audit_writer.append_many_in_transaction(conn, others)
        now = datetime.now(UTC)
        closed = [f"CASE-{n:04d}" for n in range(1, CASES, 2)]
        await conn.execute(
            insert(Case),
            [
                {
                    "department": "revenue",
                    "case_ref": ref,
                    "opened_at": now,
                    "closed_at": now,
                    "closed_by": "t",
                }
                for ref in closed
            ],
        )
        page = await records_env.client.get(
            f"/v1/citizens/{citizen_id}/access-log", params={"limit": 1000}, headers=PORTAL
        )
        assert page.status_code == 200, page.text
        reads = [item for item in page.json()["items"] if item["action"] == "read"]
        assert len(reads) == len(closed)
        assert {item["disclosed_by"] for item in reads} == {"case-closed"}
