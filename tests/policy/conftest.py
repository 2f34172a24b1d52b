from __future__ import annotations

import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from service.policy import service as policy_service
from service.policy.loader import load_policy_folder
from tests.conftest import TEST_POLICIES


@pytest.fixture
async def policies_loaded(session: AsyncSession) -> policy_service.ApplyReport:
    """The test catalog and its agreements, applied in the per-test transaction."""
    folder = load_policy_folder(TEST_POLICIES)
    return await policy_service.apply_folder(session, folder, author="tests", reason="fixture")
