"""The console in a real browser against a real server, on SQLite and on PostgreSQL.

Every page visited is saved as a screenshot under ``test-artifacts/console/<database>/``.
"""

from __future__ import annotations

import csv
import io
import re
import time
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, expect

from tests.console.conftest import PAGE_SIZE, ConsoleSite, sign_in

pytestmark = pytest.mark.e2e


async def shot(page: Page, site: ConsoleSite, name: str) -> None:
    await page.screenshot(path=site.screenshot_path(name), full_page=True)


class TestSignIn:
    async def test_data_owner_signs_in_and_out(self, page: Page, console_site: ConsoleSite) -> None:
        await page.goto("/console/agreements")
        # Not signed in: sent to the sign-in page, which brings the person back afterwards.
        await expect(page).to_have_url(re.compile(r"/console/sign-in\?next=/console/agreements$"))
        await shot(page, console_site, "sign-in")
        credentials = console_site.clients["owner"]
        await page.get_by_label("Client ID").fill(credentials.client_id)
        await page.get_by_label("Client secret").fill(credentials.client_secret)
        await page.get_by_role("button", name="Sign in").click()
        await expect(page).to_have_url(re.compile(r"/console/agreements$"))
        await expect(page.locator("header")).to_contain_text(credentials.client_id)

        cookies = {c["name"]: c for c in await page.context.cookies()}
        session = cookies["tellonce_console"]
        assert session["httpOnly"] is True
        assert session["sameSite"] == "Strict"
        assert session["path"] == "/console"
        # Served over plain http on loopback, so not Secure; https sets it (tests/console/test_sessions.py).
        assert session["secure"] is False
        assert "tellonce_console_pre" not in cookies

        await page.get_by_role("button", name="Sign out").click()
        await expect(page.get_by_role("status")).to_contain_text("You have signed out.")
        await shot(page, console_site, "signed-out")
        await page.goto("/console")
        await expect(page).to_have_url(re.compile(r"/console/sign-in"))

    async def test_consumer_credentials_are_refused(self, page: Page, console_site: ConsoleSite) -> None:
        credentials = console_site.clients["welfare"]
        await page.goto("/console/sign-in")
        await page.get_by_label("Client ID").fill(credentials.client_id)
        await page.get_by_label("Client secret").fill(credentials.client_secret)
        async with page.expect_response(lambda r: r.request.method == "POST") as answer:
            await page.get_by_role("button", name="Sign in").click()
        assert (await answer.value).status == 403
        summary = page.locator(".error-summary")
        await expect(summary).to_contain_text("There is a problem")
        await expect(summary).to_contain_text("cannot sign in to the console")
        await expect(page.locator("#client_id-error")).to_contain_text("role (consumer)")
        await shot(page, console_site, "sign-in-consumer-refused")
        assert "tellonce_console" not in {c["name"] for c in await page.context.cookies()}

    async def test_wrong_secret_is_refused(self, page: Page, console_site: ConsoleSite) -> None:
        await page.goto("/console/sign-in")
        await page.get_by_label("Client ID").fill(console_site.clients["owner"].client_id)
        await page.get_by_label("Client secret").fill("not-the-secret")
        async with page.expect_response(lambda r: r.request.method == "POST") as answer:
            await page.get_by_role("button", name="Sign in").click()
        assert (await answer.value).status == 401
        await expect(page.locator("#client_id-error")).to_contain_text(
            "The client ID or client secret is not right"
        )
        # The secret is never put back into the form.
        await expect(page.get_by_label("Client secret")).to_have_value("")


class TestCsrf:
    async def test_form_without_its_token_is_refused(self, page: Page, console_site: ConsoleSite) -> None:
        await sign_in(page, console_site, "owner")
        await page.goto("/console/agreements/new")
        await page.evaluate(
            "document.querySelectorAll('main input[name=csrf_token]').forEach(e => e.remove())"
        )
        await page.get_by_label("Agreement ID").fill("forged-agreement")
        async with page.expect_response(lambda r: r.request.method == "POST") as answer:
            await page.get_by_role("button", name="Continue").click()
        response = await answer.value
        assert response.status == 403
        assert response.headers["content-type"].startswith("text/html")
        await expect(page.get_by_role("heading", level=1)).to_have_text("This form could not be accepted")
        await shot(page, console_site, "csrf-refused")
        # A token from another session is refused the same way.
        forged = await page.request.post(
            "/console/agreements/new",
            form={"csrf_token": "0" * 64, "id": "forged-agreement"},
            max_redirects=0,
        )
        assert forged.status == 403
        assert "This form could not be accepted" in await forged.text()
        await page.goto("/console/agreements")
        await expect(page.locator("#agreements")).not_to_contain_text("forged-agreement")


class TestAgreements:
    async def test_create_simulate_save_change_revoke(self, page: Page, console_site: ConsoleSite) -> None:
        await sign_in(page, console_site, "owner")
        await page.goto("/console/agreements")
        table = page.locator("#agreements")
        await expect(table).to_contain_text("identity-for-welfare")
        # Another owner's agreement is not shown to this data owner.
        await expect(table).not_to_contain_text("licence-status-for-welfare")
        await shot(page, console_site, "agreements-list")

        await page.get_by_role("button", name="Create an agreement").click()
        await page.get_by_label("Agreement ID").fill("address-for-fraud-checks")
        await page.get_by_label("Consumer department").select_option("welfare")
        await page.locator("#fields").get_by_label("address").check()
        await page.locator("#purposes").get_by_label("Fraud investigation").check()
        await page.get_by_label("Reason for this change").fill("Fraud cases need the current address")
        # No legal basis: the policy domain refuses a permit without one.
        async with page.expect_response(lambda r: r.request.method == "POST") as answer:
            await page.get_by_role("button", name="Continue").click()
        assert (await answer.value).status == 422
        summary = page.locator(".error-summary")
        await expect(summary).to_be_focused()
        await expect(summary).to_contain_text("A permit needs a legal basis")
        await expect(page.locator("#legal_basis-error")).to_contain_text("A permit needs a legal basis")
        await shot(page, console_site, "agreement-form-error")
        # The summary links to the field; what was typed is kept.
        await summary.get_by_role("link", name="A permit needs a legal basis").click()
        await expect(page.get_by_label("Legal basis")).to_be_focused()
        await expect(page.get_by_label("Agreement ID")).to_have_value("address-for-fraud-checks")

        await page.get_by_label("Legal basis").fill("Social Security Fraud Act 2001, s.1")
        await page.get_by_role("button", name="Continue").click()
        await expect(page.get_by_role("heading", level=1)).to_have_text("Check the effect before you save")
        await shot(page, console_site, "agreement-simulate")
        await expect(page.locator("#sim-changed")).to_have_text("2")
        changes = page.locator("#simulation-changes")
        await expect(changes).to_contain_text("Welfare")
        await expect(changes).to_contain_text("address")
        await expect(changes).to_contain_text("Fraud investigation")
        await expect(changes.locator("tbody tr")).to_have_count(1)
        await expect(changes.locator("tbody td.numeric")).to_have_text("2")

        await page.get_by_role("button", name="Save as a new version").click()
        await expect(page.locator(".panel--confirmation")).to_contain_text("Agreement saved")
        await expect(page.locator(".panel--confirmation")).to_contain_text("version 1")
        await shot(page, console_site, "agreement-saved")
        await page.goto("/console/agreements")
        row = page.locator("#agreements tr", has_text="address-for-fraud-checks")
        await expect(row).to_contain_text("Welfare")
        await expect(row.locator(".tag")).to_have_text("Active")

        # The saved agreement is live: welfare now reads the address for fraud cases.
        citizen = console_site.citizens[0]
        read = console_site.api(
            "welfare",
            "GET",
            f"/v1/citizens/{citizen}",
            params={"fields": "address", "purpose": "fraud-investigation"},
        )
        assert read.status_code == 200, read.text

        # Change it: a second version, with an end date.
        await row.get_by_role("link", name="address-for-fraud-checks").click()
        await page.get_by_role("button", name="Change").click()
        # GOV.UK date input: day, month and year boxes.
        await page.locator("#valid_until").fill("31")
        await page.locator("#valid_until-month").fill("12")
        await page.locator("#valid_until-year").fill("2030")
        await page.get_by_label("Reason for this change").fill("Pilot ends in 2030")
        await page.get_by_role("button", name="Continue").click()
        await page.get_by_role("button", name="Save as a new version").click()
        await expect(page.locator(".panel--confirmation")).to_contain_text("version 2")
        await page.get_by_role("link", name="See the agreement and its history").click()
        await expect(page.locator("#versions tbody tr")).to_have_count(2)
        await shot(page, console_site, "agreement-detail")
        await page.get_by_role("link", name="Compare with version 1").click()
        diff = page.locator("#diff")
        await expect(diff.locator(".diff__add")).to_contain_text("valid_until: 2030-12-31")
        await shot(page, console_site, "agreement-diff")

        # Revoke, through the confirmation page.
        await page.goto("/console/agreements/address-for-fraud-checks")
        await page.get_by_role("button", name="Revoke").click()
        await expect(page.get_by_role("heading", level=1)).to_contain_text("Are you sure")
        await shot(page, console_site, "agreement-revoke-confirm")
        await page.get_by_label("Reason").fill("No longer needed")
        await page.get_by_role("button", name="Yes, revoke it").click()
        await expect(page.locator(".panel--confirmation")).to_contain_text("Agreement revoked")
        await shot(page, console_site, "agreement-revoked")
        await page.goto("/console/agreements")
        row = page.locator("#agreements tr", has_text="address-for-fraud-checks")
        await expect(row.locator(".tag")).to_have_text("Revoked")
        refused = console_site.api(
            "welfare",
            "GET",
            f"/v1/citizens/{citizen}",
            params={"fields": "address", "purpose": "fraud-investigation"},
        )
        assert refused.status_code == 403

        # The changes are in the policy history with the signed-in client as author.
        versions = console_site.api(
            "auditor", "GET", "/v1/policies/address-for-fraud-checks/versions"
        ).json()["items"]
        owner_id = console_site.clients["owner"].client_id
        assert [(v["version"], v["status"], v["author"]) for v in versions] == [
            (1, "active", owner_id),
            (2, "active", owner_id),
            (3, "revoked", owner_id),
        ]


class TestAudit:
    async def test_search_page_export_and_verify(
        self, page: Page, console_site: ConsoleSite, tmp_path: Path
    ) -> None:
        await sign_in(page, console_site, "auditor")
        await page.goto("/console/audit")
        results = page.locator("#audit-results tbody tr")
        await expect(results).to_have_count(PAGE_SIZE)
        await shot(page, console_site, "audit-search")
        first_ids = await page.locator("#audit-results tbody tr td:first-child").all_inner_texts()
        await page.get_by_role("link", name="Next page").click()
        await expect(page.locator("#results-summary")).to_contain_text(f"Showing entries {PAGE_SIZE + 1} to")
        second_ids = await page.locator("#audit-results tbody tr td:first-child").all_inner_texts()
        assert not set(first_ids) & set(second_ids)
        await shot(page, console_site, "audit-search-page-2")

        # Filter: welfare's reads of the first citizen's given name (3 allowed reads).
        await page.goto("/console/audit")
        await page.get_by_label("Citizen ID").fill(console_site.citizens[0])
        await page.get_by_label("Consumer", exact=True).select_option("welfare")
        await page.get_by_label("Field", exact=True).select_option("given_name")
        await page.get_by_role("button", name="Search").click()
        await expect(results).to_have_count(3)
        for text in await results.all_inner_texts():
            assert "Welfare" in text
            assert "Permit" in text
        await shot(page, console_site, "audit-search-filtered")

        async with page.expect_download() as download_info:
            await page.get_by_role("link", name="Download these entries as CSV").click()
        download = await download_info.value
        saved = tmp_path / "audit.csv"
        await download.save_as(saved)
        rows = list(csv.DictReader(io.StringIO(saved.read_text())))
        assert len(rows) == 3
        assert {r["department"] for r in rows} == {"welfare"}
        assert {r["citizen_id"] for r in rows} == {console_site.citizens[0]}

        # A bad date is shown next to its field, with the summary.
        await page.goto("/console/audit?since=2026-02-30")
        await expect(page.locator("#since-error")).to_contain_text("must be a real date")
        await expect(page.locator(".error-summary")).to_contain_text("must be a real date")

        # Integrity: wait for the sequencer's first checkpoint, then verify the whole log.
        deadline = time.monotonic() + 15
        await page.goto("/console/audit/integrity")
        while await page.locator("#checkpoint-size").count() == 0 and time.monotonic() < deadline:
            await page.reload()
        await expect(page.locator("#checkpoint-size")).to_contain_text("entries")
        await expect(page.locator("#checkpoint-root")).to_have_text(re.compile(r"^[A-Za-z0-9+/]{43}=$"))
        await shot(page, console_site, "audit-integrity")
        await page.get_by_role("button", name="Verify the whole log now").click()
        result = page.locator("#verify-result")
        await expect(result).to_contain_text("The log verified")
        await expect(result).to_contain_text("every column auditors filter on was checked against its entry")
        await expect(result).to_contain_text("the tree matches all")
        await shot(page, console_site, "audit-verified")
        # Verified again, the check is anchored on what the auditor verified the first time.
        await page.get_by_role("button", name="Verify the whole log now").click()
        await expect(result).to_contain_text(
            re.compile(r"It still holds the \d+ entries an auditor verified")
        )

        # The auditor's own console queries are in the log, under its client id.
        auditor_id = console_site.clients["auditor"].client_id
        entries = console_site.api("auditor", "GET", "/v1/audit/entries", params={"limit": 1000}).json()[
            "items"
        ]
        mine = [e["entry"] for e in entries if e["entry"]["client_id"] == auditor_id]
        assert sum(1 for e in mine if e["action"] == "audit-query") >= 4

    async def test_usage_chart(self, page: Page, console_site: ConsoleSite) -> None:
        await sign_in(page, console_site, "auditor")
        await page.goto("/console/audit/usage")
        chart = page.locator("#usage-chart svg")
        await expect(chart).to_have_attribute("role", "img")
        title = "Fields released to other departments per day"
        await expect(chart.locator("title").first).to_have_text(title)
        # Today's welfare bar carries the audit usage report's count for welfare today.
        today = time.strftime("%Y-%m-%d", time.gmtime())
        report = console_site.api(
            "auditor", "GET", "/v1/audit/reports/usage", params={"period": "day", "consumer": "welfare"}
        ).json()["items"]
        expected = sum(item["count"] for item in report if item["period"] == today)
        assert expected >= 11  # 5 reads of 2 fields and 1 of a DVLA field, at least
        await expect(chart.locator("rect title", has_text="Welfare")).to_have_text(
            re.compile(rf"Welfare, .*: {expected}$")
        )
        await expect(page.locator("#usage-table")).to_contain_text("Welfare")
        await shot(page, console_site, "audit-usage")

    async def test_data_owner_sees_entries_of_its_fields_only(
        self, page: Page, console_site: ConsoleSite
    ) -> None:
        # Welfare's read of a DVLA field is in the log: the auditor sees it ...
        await sign_in(page, console_site, "auditor")
        await page.goto("/console/audit?field=licence_status")
        await expect(page.locator("#audit-results tbody tr")).to_have_count(1)
        # ... the register's data owner does not: it touched none of the register's fields.
        await page.context.clear_cookies()
        await sign_in(page, console_site, "owner")
        await page.goto("/console/audit?field=licence_status")
        await expect(page.locator("#results-summary")).to_have_text("No entries match.")
        await page.goto("/console/audit")
        await expect(page.locator("#audit-results tbody tr")).to_have_count(PAGE_SIZE)
        for text in await page.locator("#audit-results tbody tr").all_inner_texts():
            assert "licence_status" not in text
        # Export is the auditor's.
        await expect(page.get_by_role("link", name="Download these entries as CSV")).to_have_count(0)


class TestValue:
    async def test_owner_sees_who_used_its_data(self, page: Page, console_site: ConsoleSite) -> None:
        await sign_in(page, console_site, "owner")
        await page.goto("/console/value")
        this_month = page.locator("#value-this-month")
        row = this_month.locator("tr", has_text="Welfare")
        # The same counts as the audit usage report gives the owner over the API.
        month = time.strftime("%Y-%m", time.gmtime())
        report = console_site.api(
            "owner", "GET", "/v1/audit/reports/usage", params={"period": "month"}
        ).json()
        mine = [i for i in report["items"] if i["consumer"] == "welfare" and i["period"] == month]
        total = sum(i["count"] for i in mine)
        for_benefits = sum(i["count"] for i in mine if i["purpose"] == "benefit-eligibility")
        addresses = sum(i["count"] for i in mine if i["field"] == "address")
        assert for_benefits == 10  # 5 reads of address and given name; the DVLA field is not the register's
        await expect(row.locator("td.numeric")).to_have_text(str(total))
        await expect(row).to_contain_text(f"Benefit eligibility ({for_benefits})")
        await expect(row).to_contain_text(f"address ({addresses})")
        await expect(page.locator("#value-last-month, h2", has_text="Last month").first).to_be_visible()
        await shot(page, console_site, "value")


class TestCitizenView:
    async def test_access_log_in_plain_language(self, page: Page, console_site: ConsoleSite) -> None:
        await sign_in(page, console_site, "portal")
        await page.goto("/console/citizen")
        await page.get_by_label("Citizen ID").fill(console_site.citizens[1])
        await page.get_by_role("button", name="Show the access log").click()
        log = page.locator("#access-log li")
        texts = await log.all_inner_texts()
        reads = [t for t in texts if "Welfare read your" in t]
        assert len(reads) == 2
        assert re.fullmatch(
            r"On \d{1,2} [A-Z][a-z]+ \d{4}, Welfare read your address and given name "
            r"for the purpose of benefit eligibility\.",
            reads[0],
        ), reads[0]
        assert any(t.startswith("On ") and "registered your record" in t for t in texts)
        # Every line proven server-side against the checkpoint both witnesses cosigned (the
        # witnesses cosign within a second of the traffic; reload until they have).
        proof = page.locator("#access-log-proof")
        deadline = time.monotonic() + 15
        while "Each of these" not in await proof.inner_text() and time.monotonic() < deadline:
            await page.get_by_role("button", name="Show the access log").click()
        await expect(proof).to_contain_text(
            f"Each of these {len(texts)} lines is proven to be in the audit log"
        )
        witnesses = " and ".join(w.name for w in console_site.witnesses)
        await expect(proof).to_contain_text(f"cosigned by the witnesses {witnesses}")
        await expect(proof).to_contain_text("with the same code an outside verifier uses")
        await shot(page, console_site, "citizen-view")

        await page.get_by_label("Citizen ID").fill("00000000-0000-4000-8000-000000000000")
        await page.get_by_role("button", name="Show the access log").click()
        await expect(page.locator("#citizen_id-error")).to_contain_text("No citizen has this ID")

    async def test_consent_given_paused_resumed_and_revoked(
        self, page: Page, console_site: ConsoleSite
    ) -> None:
        citizen = console_site.citizens[1]

        def welfare_reads(field: str) -> tuple[int, str]:
            read = console_site.api(
                "welfare",
                "GET",
                f"/v1/citizens/{citizen}",
                params={"fields": field, "purpose": "benefit-eligibility"},
            )
            return read.status_code, read.json().get("type", "").rsplit("/", 1)[-1]

        await sign_in(page, console_site, "portal")
        await page.goto("/console/citizen")
        await page.get_by_label("Citizen ID").fill(citizen)
        await page.get_by_role("button", name="Show the access log").click()
        await page.locator("#choices-link").click()
        await expect(page.get_by_role("heading", level=1)).to_have_text("What a citizen has agreed to")
        by_law = page.locator("#by-law li[data-agreement='identity-for-welfare']")
        await expect(by_law).to_contain_text(
            "Welfare may read and check facts about your national identity number, given name, date of "
            "birth and address for the purpose of benefit eligibility. This is required by law (Social "
            "Security Administration Act 1992, s.122), so consent and objection do not apply."
        )
        consent = page.locator("#consents li[data-agreement='points-for-welfare-with-consent']")
        await expect(consent).to_contain_text(
            "Welfare may read your points for the purpose of benefit eligibility"
        )
        await expect(consent.locator(".consent-status")).to_have_text("You have not given your consent.")
        assert welfare_reads("points") == (403, "consent-required")

        await consent.get_by_role("button", name="Give consent").click()
        await expect(consent.locator(".consent-status")).to_have_text("You have given your consent.")
        await shot(page, console_site, "citizen-consent-given")
        assert welfare_reads("points")[0] == 200
        await consent.get_by_role("button", name="Pause consent").click()
        await expect(consent.locator(".consent-status")).to_contain_text("You have paused your consent")
        assert welfare_reads("points") == (403, "consent-required")
        await consent.get_by_role("button", name="Resume consent").click()
        await expect(consent.locator(".consent-status")).to_have_text("You have given your consent.")
        assert welfare_reads("points")[0] == 200
        await consent.get_by_role("button", name="Revoke consent").click()
        await expect(consent.locator(".consent-status")).to_have_text("You have revoked your consent.")
        await expect(consent.get_by_role("button", name="Give consent")).to_be_visible()
        assert welfare_reads("points") == (403, "consent-required")

        objectable = page.locator(
            "#objections li[data-agreement='licence-number-for-welfare-unless-objected']"
        )
        await expect(objectable).to_contain_text("unless you object")
        assert welfare_reads("licence_number")[0] == 200
        await objectable.get_by_role("button", name="Object").click()
        await expect(objectable.locator(".objection-status")).to_contain_text("You have objected")
        assert welfare_reads("licence_number")[0] == 403
        await shot(page, console_site, "citizen-objected")
        await objectable.get_by_role("button", name="Withdraw objection").click()
        await expect(objectable.locator(".objection-status")).to_have_text("You have not objected.")
        assert welfare_reads("licence_number")[0] == 200

    async def test_other_roles_cannot_open_it(self, page: Page, console_site: ConsoleSite) -> None:
        await sign_in(page, console_site, "owner")
        response = await page.goto("/console/citizen")
        assert response is not None
        assert response.status == 403
        await expect(page.get_by_role("heading", level=1)).to_have_text("You cannot see this page")


class TestWithoutJavaScript:
    async def test_forms_work_without_scripts(self, browser: Browser, console_site: ConsoleSite) -> None:
        context = await browser.new_context(
            base_url=console_site.url, java_script_enabled=False, locale="en-GB"
        )
        try:
            page = await context.new_page()
            await sign_in(page, console_site, "owner")
            await page.goto("/console/agreements/new")
            await page.get_by_label("Agreement ID").fill("Not An Id")
            await page.get_by_role("button", name="Continue").click()
            await expect(page.locator("#id-error")).to_contain_text("lower-case letters, digits and hyphens")
            await expect(page.locator(".error-summary a[href='#id']")).to_have_count(1)
            await expect(page.locator("#fields-error")).to_contain_text("needs at least one field")
            await shot(page, console_site, "agreement-form-error-no-js")
        finally:
            await context.close()


class TestKeyboard:
    async def test_skip_link_and_focus_are_visible(self, page: Page, console_site: ConsoleSite) -> None:
        await sign_in(page, console_site, "auditor")
        await shot(page, console_site, "home")
        await page.keyboard.press("Tab")
        skip = page.get_by_role("link", name="Skip to main content")
        await expect(skip).to_be_focused()
        await expect(skip).to_be_visible()
        # The focus style is the yellow background, not the browser's default outline alone.
        background = await skip.evaluate("e => getComputedStyle(e).backgroundColor")
        assert background == "rgb(255, 221, 0)"
        await page.keyboard.press("Enter")
        await expect(page.locator("#main-content")).to_be_focused()
        await page.keyboard.press("Tab")
        # The next stop is the first link of the page itself, not the header again.
        await expect(page.locator("main").get_by_role("link", name="Audit log")).to_be_focused()
