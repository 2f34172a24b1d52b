"""The audit log page as auditors and owners read it: newest first, clients by name, every
column explained."""

from __future__ import annotations

import pytest
from playwright.async_api import Page, expect

from tests.console.conftest import ConsoleSite, sign_in

pytestmark = pytest.mark.e2e


class TestAuditLogPage:
    async def test_newest_first_with_client_names(self, page: Page, console_site: ConsoleSite) -> None:
        await sign_in(page, console_site, "auditor")
        await page.goto("/console/audit?consumer=welfare")
        rows = page.locator("#audit-results tbody tr")
        await expect(rows.first).to_be_visible()
        numbers = [int(text.split()[0]) for text in await rows.locator("td:first-child").all_inner_texts()]
        assert numbers == sorted(numbers, reverse=True)
        assert len(set(numbers)) == len(numbers)
        # The client's registered name, with its id beneath.
        client_id = console_site.clients["welfare"].client_id
        client_cell = rows.first.locator("td").nth(2)
        await expect(client_cell).to_contain_text("welfare (consumer)")
        await expect(client_cell).to_contain_text(client_id)
        # The next page carries on downwards.
        await page.locator("#next-page").click()
        later = [
            int(text.split()[0])
            for text in await page.locator("#audit-results tbody tr td:first-child").all_inner_texts()
        ]
        assert later
        assert max(later) < min(numbers)

    async def test_the_entry_column_is_explained(self, page: Page, console_site: ConsoleSite) -> None:
        await sign_in(page, console_site, "auditor")
        await page.goto("/console/audit")
        header = page.locator("#audit-results thead th").first
        await expect(header).to_have_text("Entry")
        help_text = page.locator("#entry-column-help")
        await expect(help_text).to_contain_text("number in the log")
        await expect(help_text).to_contain_text("position in the tamper-evident Merkle tree")
        described = await header.locator("span").get_attribute("aria-describedby")
        assert described == "entry-column-help"
