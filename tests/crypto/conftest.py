from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from service.crypto.keyring import KeyEvent, Keyring
from service.db import create_engine
from tests.fixtures.crypto import make_keyring
from tests.fixtures.softhsm import SoftHsm, softhsm_session


@pytest.fixture(scope="session")
def softhsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SoftHsm]:
    """A SoftHSM2 token store of the run's own (see tests/fixtures/softhsm.py)."""
    yield from softhsm_session(tmp_path_factory.mktemp("softhsm"))


@pytest.fixture
def keyring() -> Keyring:
    return make_keyring()


@pytest.fixture
def key_events(keyring: Keyring) -> list[KeyEvent]:
    """Every key event the keyring reports, in order."""
    events: list[KeyEvent] = []

    async def record(_conn: AsyncConnection, event: KeyEvent) -> None:
        events.append(event)

    keyring.on_key_event = record
    return events


@pytest.fixture
async def conn(session: AsyncSession) -> AsyncConnection:
    """The per-test (rolled-back) transaction's connection, as records would pass it."""
    return await session.connection()


@pytest.fixture
async def scratch_engine(scratch_database: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(scratch_database)
    yield engine
    await engine.dispose()
