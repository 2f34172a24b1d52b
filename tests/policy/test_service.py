"""The live policy: epoch-checked compilation, change hooks, and the demo government."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from service.db import utcnow
from service.policy import repository
from service.policy import service as policy_service
from service.policy.engine import RequestContext
from service.policy.loader import load_policy_folder
from service.sourcefile import SourceFileError
from tests.conftest import DEMO_POLICIES, TEST_POLICIES


@pytest.fixture
def recorded_changes() -> Iterator[list[policy_service.PolicyChange]]:
    changes: list[policy_service.PolicyChange] = []

    async def hook(_session: AsyncSession, change: policy_service.PolicyChange) -> None:
        changes.append(change)

    policy_service.on_policy_change.append(hook)
    try:
        yield changes
    finally:
        policy_service.on_policy_change.remove(hook)


class TestLivePolicy:
    async def test_recompiles_only_when_the_epoch_moves(
        self, session: AsyncSession, policies_loaded: policy_service.ApplyReport
    ) -> None:
        holder = policy_service.PolicyHolder()
        conn = await session.connection()
        first = await holder.current(conn)
        assert first.epoch == policies_loaded.epoch
        assert await holder.current(conn) is first
        row = await repository.current_version(session, "licence-status-for-welfare")
        assert row is not None
        await policy_service.revoke(session, row, author="t", reason="r")
        second = await holder.current(await session.connection())
        assert second is not first
        assert second.epoch == first.epoch + 1
        context = RequestContext("benefit-eligibility", None, utcnow(), "active")
        assert (
            first.decide("welfare", "read", ["licence_status"], context)["licence_status"].effect == "permit"
        )
        assert (
            second.decide("welfare", "read", ["licence_status"], context)["licence_status"].effect == "deny"
        )

    async def test_no_catalog_means_deny_everything(self, session: AsyncSession) -> None:
        policy = await policy_service.current_policy(
            await session.connection(), policy_service.PolicyHolder()
        )
        context = RequestContext("benefit-eligibility", None, utcnow(), "active")
        decision = policy.decide("welfare", "read", ["given_name"], context)["given_name"]
        assert (decision.effect, decision.reason) == ("deny", "unknown purpose 'benefit-eligibility'")

    async def test_every_new_version_reaches_the_hooks(
        self, session: AsyncSession, recorded_changes: list[policy_service.PolicyChange]
    ) -> None:
        folder = load_policy_folder(DEMO_POLICIES)
        report = await policy_service.apply_folder(session, folder, author="alice", reason="demo")
        assert len(recorded_changes) == len(folder.agreements) == len(report.created)
        change = next(c for c in recorded_changes if c.agreement_id == "licence-status-for-benefits")
        assert (change.owner, change.version, change.status, change.author, change.reason) == (
            "dvla",
            1,
            "active",
            "alice",
            "demo",
        )
        assert len(change.content_hash) == 64

    async def test_demo_government_decides_through_the_live_path(self, session: AsyncSession) -> None:
        await policy_service.apply_folder(
            session, load_policy_folder(DEMO_POLICIES), author="t", reason="demo"
        )
        policy = await policy_service.current_policy(
            await session.connection(), policy_service.PolicyHolder()
        )
        context = RequestContext("address-update", None, utcnow(), "active")
        write = policy.decide("dvla", "write", ["address", "postcode", "given_name"], context)
        assert {name: d.effect for name, d in write.items()} == {
            "address": "permit",
            "postcode": "permit",
            "given_name": "deny",
        }
        assert write["address"].agreement == "address-updates-from-dvla"
        assert write["address"].legal_basis == "Digital Economy Act 2017, s.35 (public service delivery)"


class TestApplyFolder:
    async def test_an_id_another_owner_has_stored_is_refused_at_its_line(
        self, session: AsyncSession, policies_loaded: policy_service.ApplyReport, tmp_path: Path
    ) -> None:
        # dvla's file drops licence-for-revenue (kept, as no --prune) and revenue's file
        # takes the id for an agreement of its own: that would replace dvla's agreement.
        folder = tmp_path / "policies"
        shutil.copytree(TEST_POLICIES, folder)
        dvla = (folder / "dvla.yaml").read_text()
        start, end = dvla.index("  - id: licence-for-revenue"), dvla.index("  - id: no-points-for-welfare")
        (folder / "dvla.yaml").write_text(dvla[:start] + dvla[end:])
        taken = (
            (TEST_POLICIES / "revenue.yaml").read_text().replace("tax-code-for-fraud", "licence-for-revenue")
        )
        (folder / "revenue.yaml").write_text(taken)
        with pytest.raises(SourceFileError) as caught:
            await policy_service.apply_folder(
                session, load_policy_folder(folder), author="t", reason="r", prune=True
            )
        assert [str(e) for e in caught.value.errors] == [
            f"{folder / 'revenue.yaml'}:3: agreement licence-for-revenue: the id is taken by an "
            "agreement of dvla; agreement ids are unique across the catalog"
        ]
        row = await repository.current_version(session, "licence-for-revenue")
        assert row is not None
        assert (row.owner, row.version, row.status) == ("dvla", 1, "active")
        # A revoked agreement keeps its id too.
        await policy_service.revoke(session, row, author="t", reason="ended")
        with pytest.raises(SourceFileError):
            await policy_service.apply_folder(session, load_policy_folder(folder), author="t", reason="r")
