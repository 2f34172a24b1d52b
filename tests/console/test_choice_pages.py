"""The citizen view's choices page over the records API on the test's transaction: the
consents it gives and changes wake the events notifier as the API's do, and an agreement
that is no agreement id is refused on the page, never a server error."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from service.audit.models import AuditEntryRow
from service.auth import service as auth_service
from service.catalog.loader import load_catalog
from service.consent import service as consent_service
from service.consent.schemas import ConsentOut
from service.console.choice_pages import uncovered_note
from service.events.notifier import EventNotifier
from service.policy.engine import Agreement
from tests.consent.conftest import CONSENTED, PORTAL, ConsentWorld, as_, records_env, world
from tests.records.conftest import RECORDS_POLICIES

__all__ = ["records_env", "world"]

CSRF = re.compile(r'name="csrf_token" value="([0-9a-f]{64})"')


async def _csrf(client: httpx.AsyncClient, path: str) -> str:
    found = CSRF.search((await client.get(path)).text)
    assert found is not None
    return found.group(1)


@pytest.fixture
async def portal(world: ConsentWorld, session: AsyncSession) -> httpx.AsyncClient:
    """The world's client, signed in to the console as the citizen portal."""
    created = await auth_service.create_client(session, department="portal", roles=["citizen-portal"])
    assert created.client_secret is not None
    client = world.client
    data = {
        "csrf_token": await _csrf(client, "/console/sign-in"),
        "client_id": created.client_id,
        "client_secret": created.client_secret,
    }
    assert (await client.post("/console/sign-in", data=data)).status_code == 303
    return client


@pytest.fixture
def notifier(world: ConsentWorld) -> EventNotifier:
    """The app's own notifier, so a wake-up by another test cannot be counted here."""
    mine = EventNotifier()
    world.env.app.state.events_notifier = mine
    return mine


class TestChoicesPage:
    async def _post(self, client: httpx.AsyncClient, world: ConsentWorld, **form: Any) -> httpx.Response:
        page = f"/console/citizen/choices?citizen_id={world.citizen_id}"
        data = {"csrf_token": await _csrf(client, page), "citizen_id": world.citizen_id, **form}
        return await client.post("/console/citizen/choices", data=data)

    async def test_giving_and_changing_a_consent_wakes_the_events_notifier(
        self, world: ConsentWorld, portal: httpx.AsyncClient, notifier: EventNotifier
    ) -> None:
        given = await self._post(portal, world, change="give", agreement=CONSENTED["id"])
        assert given.status_code == 303, given.text
        # As after POST /v1/citizens/{id}/consents: the consent.changed event is told at once.
        assert notifier.generation == 1
        listed = await portal.get(f"/v1/citizens/{world.citizen_id}/consents", headers=PORTAL)
        [consent] = listed.json()["items"]
        paused = await self._post(portal, world, change="paused", consent_id=consent["id"])
        assert paused.status_code == 303, paused.text
        assert notifier.generation == 2

    async def test_a_consent_given_twice_is_stored_once(
        self, world: ConsentWorld, portal: httpx.AsyncClient, notifier: EventNotifier
    ) -> None:
        """A second tab or a stale page gives the same consent again: refused on the page,
        and nothing of it kept, so revoking the one consent shown stops the release."""
        assert (await self._post(portal, world, change="give", agreement=CONSENTED["id"])).status_code == 303
        again = await self._post(portal, world, change="give", agreement=CONSENTED["id"])
        assert again.status_code == 409, again.text[-3000:]
        assert "is active: resume or revoke it instead" in again.text
        listed = await portal.get(f"/v1/citizens/{world.citizen_id}/consents", headers=PORTAL)
        [consent] = listed.json()["items"]
        revoked = await self._post(portal, world, change="revoked", consent_id=consent["id"])
        assert revoked.status_code == 303, revoked.text
        listed = await portal.get(f"/v1/citizens/{world.citizen_id}/consents", headers=PORTAL)
        assert [given["status"] for given in listed.json()["items"]] == ["revoked"]

    @pytest.mark.parametrize("agreement", ["", "Bad Id!"])
    async def test_an_agreement_that_is_no_agreement_id_is_refused_on_the_page(
        self, world: ConsentWorld, portal: httpx.AsyncClient, notifier: EventNotifier, agreement: str
    ) -> None:
        page = await self._post(portal, world, change="give", agreement=agreement)
        assert page.status_code == 409
        assert page.headers["content-type"].startswith("text/html")
        assert "That agreement is not one this page offers." in page.text
        assert notifier.generation == 0

    async def test_a_citizen_id_in_capitals_is_the_same_citizen(
        self, world: ConsentWorld, portal: httpx.AsyncClient, notifier: EventNotifier
    ) -> None:
        """A UUID reads the same in capitals: the page takes it as the API's lower-case id."""
        shouted = world.citizen_id.upper()
        page = await portal.get(f"/console/citizen/choices?citizen_id={shouted}")
        assert page.status_code == 200, page.text[-3000:]
        assert f'value="{world.citizen_id}"' in page.text
        data = {
            "csrf_token": await _csrf(portal, "/console/citizen/choices"),
            "citizen_id": f" {shouted} ",
            "change": "give",
            "agreement": CONSENTED["id"],
        }
        given = await portal.post("/console/citizen/choices", data=data)
        assert given.status_code == 303, given.text[-3000:]
        assert given.headers["location"] == f"/console/citizen/choices?citizen_id={world.citizen_id}"
        listed = await portal.get(f"/v1/citizens/{world.citizen_id}/consents", headers=PORTAL)
        assert [c["status"] for c in listed.json()["items"]] == ["active"]

    @pytest.mark.parametrize("citizen_id", ["0000-beef-1", "3f2c1d9e\x00", "g" * 36, "1" * 64])
    async def test_a_citizen_id_of_another_form_is_refused_on_the_page(
        self, world: ConsentWorld, portal: httpx.AsyncClient, notifier: EventNotifier, citizen_id: str
    ) -> None:
        """The API's one rule for a citizen id, on the page too: the change form took any
        text for an id and passed it on to the consent service."""
        shown = await portal.get("/console/citizen/choices", params={"citizen_id": citizen_id})
        assert shown.status_code == 400
        assert "A citizen ID is 36 characters" in shown.text
        data = {
            "csrf_token": await _csrf(portal, "/console/citizen/choices"),
            "citizen_id": citizen_id,
            "change": "give",
            "agreement": CONSENTED["id"],
        }
        changed = await portal.post("/console/citizen/choices", data=data)
        assert changed.status_code == 400, changed.text[-3000:]
        assert changed.headers["content-type"].startswith("text/html")
        assert "A citizen ID is 36 characters" in changed.text
        assert notifier.generation == 0

    async def test_the_newest_consent_holds_past_the_first_page_of_consents(
        self, world: ConsentWorld, portal: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """With more consents than one page, the page read the first only: it showed an old
        revoked consent and offered to give one, never to revoke the one in force."""
        monkeypatch.setattr(consent_service, "CHOICES_PAGE", 1)
        first = await world.consent()
        assert first.status_code == 201, first.text
        assert (await world.set_status(first.json()["id"], "revoked")).status_code == 200
        second = await world.consent()
        assert second.status_code == 201, second.text
        page = await portal.get(f"/console/citizen/choices?citizen_id={world.citizen_id}")
        assert page.status_code == 200
        found = re.search(rf'data-agreement="{CONSENTED["id"]}">(.*?)</li>', page.text, re.S)
        assert found is not None
        row = found.group(1)
        assert "You have given your consent." in row
        assert f'name="consent_id" value="{second.json()["id"]}"' in row
        assert 'value="revoked">Revoke consent' in row
        # The view read two pages of consents and the objections: audited once each.
        conn = world.env.audit.conn  # type: ignore[union-attr]
        rows = await conn.execute(
            select(AuditEntryRow.action, AuditEntryRow.citizen_id)
            .where(AuditEntryRow.action.in_(["consent-list", "objection-list"]))
            .order_by(AuditEntryRow.id)
        )
        assert rows.all() == [("consent-list", world.citizen_id), ("objection-list", world.citizen_id)]

    async def test_a_consent_to_earlier_terms_says_what_it_does_not_cover(
        self, world: ConsentWorld, portal: httpx.AsyncClient
    ) -> None:
        """The owner adds an action after the citizen consented: the page says the consent
        does not cover it, and how to agree to the new terms."""
        given = await world.consent()
        assert given.status_code == 201, given.text
        page = f"/console/citizen/choices?citizen_id={world.citizen_id}"
        assert "consent-uncovered" not in (await portal.get(page)).text
        widened = {**CONSENTED, "actions": [*CONSENTED["actions"], "history"], "reason": "more"}
        replaced = await world.client.put(
            f"/v1/policies/{CONSENTED['id']}",
            json=widened,
            headers={**as_("welfare", "data-owner"), "If-Match": '"1"'},
        )
        assert replaced.status_code == 200, replaced.text
        shown = await portal.get(page)
        assert shown.status_code == 200
        found = re.search(rf'data-agreement="{CONSENTED["id"]}">(.*?)</li>', shown.text, re.S)
        assert found is not None
        note = re.search(r'<p class="body consent-uncovered">(.*?)</p>', found.group(1), re.S)
        assert note is not None
        assert note.group(1) == (
            "Your consent was given to earlier terms. It does not let Revenue read earlier versions "
            "of your benefit status. To agree to what it says now, revoke your consent and give it again."
        )


def _consent(**terms: Any) -> ConsentOut:
    values: dict[str, Any] = {
        "id": "6b0e3f52-3c1d-4a0e-9a43-2f7d1c9e8b10",
        "citizen_id": "3f2c1d9e-0000-4000-8000-000000000001",
        "agreement": CONSENTED["id"],
        "consumer": "revenue",
        "purpose": "tax-administration",
        "fields": ["benefit_status"],
        "actions": ["read", "verify"],
        "status": "active",
        "created_at": datetime(2026, 12, 1, tzinfo=UTC),
        "expires_at": None,
        "signature": "a.b.c",
    }
    return ConsentOut(**{**values, **terms})


class TestWhatAnOldConsentDoesNotCover:
    """The note under a consent given to earlier terms of its agreement."""

    catalog = load_catalog(RECORDS_POLICIES)
    agreement = Agreement(
        id=CONSENTED["id"],
        owner="welfare",
        consumer="revenue",
        fields=("benefit_status", "points"),
        actions=("read", "verify", "history"),
        purposes=("tax-administration",),
        basis="consent",
    )

    def test_an_added_action_and_field_are_named(self) -> None:
        assert uncovered_note(self.catalog, self.agreement, _consent()) == (
            "Your consent was given to earlier terms. It does not let Revenue read earlier versions "
            "of your benefit status and points. It does not cover your points. To "
            "agree to what it says now, revoke your consent and give it again."
        )

    def test_a_consent_stored_without_actions_covers_no_action(self) -> None:
        note = uncovered_note(
            self.catalog, self.agreement, _consent(actions=[], fields=["benefit_status", "points"])
        )
        assert "It does not let Revenue read, check facts about and read earlier versions of" in note

    @pytest.mark.parametrize("terms", [{"consumer": "welfare"}, {"purpose": "fraud-investigation"}])
    def test_another_consumer_or_purpose_covers_nothing_now(self, terms: dict[str, str]) -> None:
        assert uncovered_note(self.catalog, self.agreement, _consent(**terms)) == (
            "Your consent was given to earlier terms and does not cover what this agreement says "
            "now. To agree to what it says now, revoke your consent and give it again."
        )

    def test_nothing_is_said_of_a_consent_that_covers_it_all_or_no_longer_holds(self) -> None:
        whole = {"actions": ["read", "verify", "history"], "fields": ["benefit_status", "points"]}
        assert uncovered_note(self.catalog, self.agreement, _consent(**whole)) == ""
        assert uncovered_note(self.catalog, self.agreement, _consent(status="paused")) != ""
        for status in ("revoked", "expired"):
            assert uncovered_note(self.catalog, self.agreement, _consent(status=status)) == ""
        assert uncovered_note(self.catalog, self.agreement, None) == ""
