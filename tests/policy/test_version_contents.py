"""Agreement versions read by (agreement, version), as an access-log page's entries cite
them: a thousand at once are read a chunk at a time (``VERSIONS_PER_QUERY``), so SQLite's
limit on a statement's expression depth (1000) is never reached."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from service.policy import repository
from service.policy import service as policy_service
from service.policy.terms import IMMEDIATE_STATUTORY, AgreementTerms

# Cited by no stored version: what a log imported without its policies cites.
UNSTORED = [(f"unstored-{n:04d}", 1) for n in range(1000)]


class TestVersionContents:
    async def test_a_thousand_versions_at_once(
        self, session: AsyncSession, policies_loaded: policy_service.ApplyReport
    ) -> None:
        del policies_loaded
        conn = await session.connection()
        stored = [(row[0], row[2]) for row in await repository.current_rows_core(conn)]
        assert stored
        contents = await repository.version_contents(conn, [*UNSTORED, *stored])
        assert sorted(contents) == sorted(stored)
        assert all(content["id"] == agreement for (agreement, _v), content in contents.items())

    async def test_the_terms_of_a_thousand_cited_versions(
        self, session: AsyncSession, policies_loaded: policy_service.ApplyReport
    ) -> None:
        del policies_loaded
        conn = await session.connection()
        terms = await AgreementTerms().of(
            conn, [(agreement, version, None) for agreement, version in UNSTORED]
        )
        assert set(terms.values()) == {IMMEDIATE_STATUTORY}
        assert len(terms) == len(UNSTORED)
