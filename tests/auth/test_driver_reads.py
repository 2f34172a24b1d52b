"""Authentication's per-request reads on the raw driver agree with the same reads through
SQLAlchemy, on committed rows (SQLite and PostgreSQL), and see another connection's
commit at once: the revocation check depends on both."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from service.auth import service as auth_service
from service.catalog import service as catalog_service
from service.catalog.loader import load_catalog
from service.db import (
    CoreReads,
    DriverReads,
    create_engine,
    create_session_factory,
    numbered,
    open_driver_reads,
)
from service.policy import epoch as policy_epoch
from tests.conftest import TEST_POLICIES


@pytest.fixture
async def committed(scratch_database: str) -> AsyncIterator[tuple[AsyncEngine, DriverReads]]:
    engine = create_engine(scratch_database)
    reads = await open_driver_reads(scratch_database)
    try:
        yield engine, reads
    finally:
        await reads.close()
        await engine.dispose()


class TestDriverReads:
    async def test_standing_and_epoch_agree_with_core_and_follow_commits(
        self, committed: tuple[AsyncEngine, DriverReads]
    ) -> None:
        engine, driver = committed
        core = CoreReads(engine.connect)
        sessions = create_session_factory(engine)
        empty = await policy_epoch.driver_epoch_key(driver)
        assert empty == await policy_epoch.driver_epoch_key(core)
        assert empty[2] is None  # no catalog yet
        async with sessions.begin() as session:
            await catalog_service.store(session, load_catalog(TEST_POLICIES), author="tests")
            created = await auth_service.create_client(session, department="welfare", roles=["consumer"])
        assert await auth_service.client_standing(driver, "tc_nobody") is None
        standing = await auth_service.client_standing(driver, created.client_id)
        assert standing == await auth_service.client_standing(core, created.client_id)
        assert standing == auth_service.ClientStatus(disabled=False, rate_per_second=None, rate_burst=None)
        with_catalog = await policy_epoch.driver_epoch_key(driver)
        assert with_catalog == await policy_epoch.driver_epoch_key(core)
        assert with_catalog[2] == 1

        async with sessions.begin() as session:
            await auth_service.disable_client(session, "operator:test", created.client_id)
        # The very next read, on the long-lived driver connection, sees the commit.
        disabled = await auth_service.client_standing(driver, created.client_id)
        assert disabled is not None
        assert disabled.disabled
        moved = await policy_epoch.driver_epoch_key(driver)
        assert moved[0] == with_catalog[0] + 1
        assert moved != with_catalog
        assert moved == await policy_epoch.driver_epoch_key(core)


class TestNumbered:
    def test_question_marks_become_dollar_numbers(self) -> None:
        assert numbered("SELECT a FROM t WHERE b = ? AND c IN (?, ?)") == (
            "SELECT a FROM t WHERE b = $1 AND c IN ($2, $3)"
        )
        assert numbered("SELECT 1") == "SELECT 1"
