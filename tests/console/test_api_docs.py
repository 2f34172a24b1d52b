"""/docs and /redoc render in a real browser with every request off loopback blocked."""

from __future__ import annotations

from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import pytest
from playwright.async_api import Browser, BrowserContext, Page, Route, expect

from tests.fixtures.server import LiveServer

pytestmark = pytest.mark.e2e


@pytest.fixture
async def offline(browser: Browser, live_server: LiveServer) -> AsyncIterator[tuple[Page, list[str]]]:
    """A page whose only reachable host is the server; every other request is aborted and kept."""
    blocked: list[str] = []
    context: BrowserContext = await browser.new_context(base_url=live_server.base_url)
    context.set_default_timeout(15_000)

    async def gate(route: Route) -> None:
        if urlsplit(route.request.url).hostname == "127.0.0.1":
            await route.continue_()
        else:
            blocked.append(route.request.url)
            await route.abort("internetdisconnected")

    await context.route("**/*", gate)
    try:
        yield await context.new_page(), blocked
    finally:
        await context.close()


class TestOfflineApiDocs:
    async def test_swagger_ui_renders_every_operation(self, offline: tuple[Page, list[str]]) -> None:
        page, blocked = offline
        await page.goto("/docs")
        await expect(page.locator(".swagger-ui .info .title")).to_contain_text("tellonce", timeout=30_000)
        operation = page.locator(".opblock-summary-path", has_text="/v1/citizens/{citizen_id}")
        await expect(operation.first).to_be_visible()
        # The OAuth2 client-credentials scheme gives the Authorize button.
        await expect(page.get_by_role("button", name="Authorize")).to_be_visible()
        assert blocked == []

    async def test_redoc_renders(self, offline: tuple[Page, list[str]]) -> None:
        page, blocked = offline
        await page.goto("/redoc")
        # ReDoc renders the whole document client-side: slow on a loaded machine.
        await expect(page.locator("h1", has_text="tellonce")).to_be_visible(timeout=60_000)
        await expect(page.get_by_text("/v1/citizens/lookup").first).to_be_attached(timeout=30_000)
        assert blocked == []

    async def test_the_block_is_real(self, offline: tuple[Page, list[str]]) -> None:
        # A page with no policy of its own reaching for a CDN: the gate refuses and records it.
        page, blocked = offline
        await page.goto("/healthz")
        outcome = await page.evaluate(
            "fetch('https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui.css')"
            ".then(() => 'fetched', () => 'refused')"
        )
        assert outcome == "refused"
        assert blocked == ["https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui.css"]

    async def test_docs_pages_allow_only_this_origin(self, offline: tuple[Page, list[str]]) -> None:
        page, _blocked = offline
        for path in ("/docs", "/redoc"):
            response = await page.goto(path)
            assert response is not None
            policy = await response.header_value("content-security-policy")
            assert policy is not None
            assert "default-src 'self'" in policy
            assert "img-src 'self' data:" in policy
