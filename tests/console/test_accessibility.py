"""Every console page, for every role that sees it, checked by axe-core in Chromium against
WCAG 2.2 AA, and the agreement form and audit search walked with the Tab key.

axe-core comes from the npm registry, locked in ``tests/a11y/package-lock.json`` and
installed by ``npm ci --prefix tests/a11y`` (``.ci/run`` and ``make test`` run it); its
``axe.min.js`` is read from there and run in each page. Each walk below visits pages the
way a person would and checks each one as it stands, errors shown and all, and checks its
headings itself (axe lets a page begin with an h2): the h1 first, one h1, no level skipped.
Most walks are on the console site of ``tests/console/conftest.py``; the releases page of a
department with a catalog signing key is walked on the signed site of
``test_signed_browser.py``, and single sign-on's pages on the site and OpenID provider of
``test_oidc.py``. ``test_every_console_route_is_walked`` and
``test_every_console_template_is_walked`` compare the routes and the templates the walks
cover with the app's console routes and the console's templates, so a page added later
without a walk fails them.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import FastAPI
from fastapi.routing import iter_route_contexts
from playwright.async_api import Page, expect

from service.audit.checkpoint import NoteSigner
from service.audit.config import AuditSettings
from service.policy.signing import OwnerSigner
from tests.conftest import REPO_ROOT
from tests.console.conftest import ConsoleSite, sign_in
from tests.console.test_oidc import (  # noqa: F401 - fixtures used by name
    OidcSite,
    oidc_context,
    oidc_page,
    oidc_site,
    provider_login,
)
from tests.console.test_signed_browser import signed_page, signed_site  # noqa: F401 - fixtures used by name

pytestmark = pytest.mark.e2e

AXE_DIR = REPO_ROOT / "tests" / "a11y"
AXE_SCRIPT = AXE_DIR / "node_modules" / "axe-core" / "axe.min.js"
# WCAG 2.0, 2.1 and 2.2 at levels A and AA (a UK public service must meet 2.2 AA), and
# axe's best practices, which hold the landmark and heading-order rules.
AXE_TAGS = ("wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa", "best-practice")
RUN_AXE = r"""async (tags) => {
  const results = await axe.run(document, {
    runOnly: {type: "tag", values: tags},
    resultTypes: ["violations"],
  });
  return results.violations.map(v => ({
    id: v.id,
    impact: v.impact,
    help: v.help,
    targets: v.nodes.map(n => n.target.join(" ") + ": " + (n.failureSummary || "").replace(/\s+/g, " ")),
  }));
}"""

# What axe does not check of the GOV.UK error pattern: each field's error message is part of
# its field's description, each link in the error summary leads to an element, and no id
# is on two elements (a field with several problems has one message element holding them).
ERROR_PATTERN = r"""() => {
  const described = new Set([...document.querySelectorAll("[aria-describedby]")]
    .flatMap(e => e.getAttribute("aria-describedby").split(/\s+/)));
  const problems = [];
  const ids = [...document.querySelectorAll("[id]")].map(e => e.id);
  for (const id of new Set(ids.filter((id, i) => ids.indexOf(id) !== i))) {
    problems.push(`id ${id} is on more than one element`);
  }
  for (const message of document.querySelectorAll(".error-message")) {
    if (!message.id || !described.has(message.id)) {
      problems.push(`error message #${message.id} describes no field: ${message.textContent.trim()}`);
    }
  }
  for (const link of document.querySelectorAll(".error-summary a")) {
    const target = (link.getAttribute("href") || "").replace(/^#/, "");
    if (!target || !document.getElementById(target)) {
      problems.push(`error summary link to no element: ${link.getAttribute("href")}`);
    }
  }
  return problems;
}"""

# What axe does not check of the headings: its heading-order rule lets a page begin at any
# level (an h2 panel above the h1 passed), and page-has-heading-one asks for at least one
# h1. Here: the page's first heading is its h1, it has exactly one, and no level is skipped
# on the way down (heading-order's own check, kept so the three stand together).
HEADING_ORDER = r"""() => {
  const headings = [...document.querySelectorAll("h1, h2, h3, h4, h5, h6, [role=heading]")]
    .filter(h => !h.closest("[hidden], [aria-hidden=true]"))
    .map(h => ({
      level: Number(h.getAttribute("aria-level") || h.tagName.slice(1)),
      text: h.textContent.trim().replace(/\s+/g, " ").slice(0, 60),
    }));
  const problems = [];
  const ones = headings.filter(h => h.level === 1);
  if (ones.length !== 1) problems.push(`${ones.length} h1 headings, not one`);
  if (headings.length && headings[0].level !== 1) {
    problems.push(`the first heading is h${headings[0].level} "${headings[0].text}", not the h1`);
  }
  headings.forEach((h, i) => {
    if (i > 0 && h.level > headings[i - 1].level + 1) {
      problems.push(`h${h.level} "${h.text}" follows h${headings[i - 1].level}: a level is skipped`);
    }
  });
  return problems;
}"""

# Console routes that never answer with a page of their own, and why.
NOT_PAGES = {
    ("GET", "/console/static/{name}"): "the stylesheet and script",
    ("GET", "/console/audit/export.csv"): "a CSV download",
}


def axe_source() -> str:
    if not AXE_SCRIPT.is_file():
        raise RuntimeError(
            "tests/a11y/node_modules is missing: run `npm ci --prefix tests/a11y` (.ci/run and make test do)"
        )
    return AXE_SCRIPT.read_text()


@dataclass
class Audit:
    """axe's findings, page by page, for one walk."""

    page: Page
    source: str
    findings: list[str] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)

    async def check(self, name: str) -> None:
        await self.page.wait_for_load_state("load")
        if not await self.page.evaluate("() => typeof window.axe === 'object'"):
            await self.page.evaluate(self.source)
        violations: list[dict[str, Any]] = await self.page.evaluate(RUN_AXE, list(AXE_TAGS))
        self.checked.append(name)
        for problem in await self.page.evaluate(ERROR_PATTERN) + await self.page.evaluate(HEADING_ORDER):
            self.findings.append(f"{name} ({self.page.url}): {problem}")
        for violation in violations:
            targets = "\n      ".join(violation["targets"])
            self.findings.append(
                f"{name} ({self.page.url}): {violation['id']} [{violation['impact']}] "
                f"{violation['help']}\n      {targets}"
            )


# A walk is given the page and the site it walks: a ConsoleSite, or an OidcSite for the
# single sign-on walk.
Walk = Callable[[Page, Any, Audit], Awaitable[None]]
TEMPLATES = Path(REPO_ROOT / "service" / "console" / "templates")
# Templates that are never a page by themselves: the layout every page extends, and macros.
NOT_PAGE_TEMPLATES = {"base.html": "the layout of every page", "macros.html": "macros"}


@dataclass(frozen=True)
class Walked:
    role: str | None  # signed in as this client of the site's clients
    routes: tuple[tuple[str, str], ...]  # (method, route) whose pages the walk checks
    templates: tuple[str, ...]  # the templates of the pages it checks
    site: str  # the site it walks: "console" (console_site), "signed" or "oidc"
    walk: Walk


WALKS: dict[str, Walked] = {}


def walk(
    role: str | None, *routes: str, templates: tuple[str, ...], site: str = "console"
) -> Callable[[Walk], Walk]:
    def register(function: Walk) -> Walk:
        parsed = tuple((route.split(" ", 1)[0], route.split(" ", 1)[1]) for route in routes)
        WALKS[function.__name__.removeprefix("walk_")] = Walked(role, parsed, templates, site, function)
        return function

    return register


def walks_on(site: str) -> list[str]:
    return [name for name, walked in WALKS.items() if walked.site == site]


async def submit(page: Page, button: str) -> None:
    """Press a form's button and wait for the page it answers with."""
    async with page.expect_navigation():
        await page.get_by_role("button", name=button).click()


@walk(None, "GET /console/sign-in", "POST /console/sign-in", templates=("sign_in.html",))
async def walk_sign_in(page: Page, site: ConsoleSite, audit: Audit) -> None:
    await page.goto("/console/sign-in")
    await audit.check("sign-in")
    await page.get_by_label("Client ID").fill(site.clients["owner"].client_id)
    await page.get_by_label("Client secret").fill("not-the-secret")
    await submit(page, "Sign in")
    await expect(page.locator(".error-summary")).to_be_visible()
    await audit.check("sign-in with a wrong secret")
    await page.get_by_label("Client ID").fill(site.clients["welfare"].client_id)
    await page.get_by_label("Client secret").fill(site.clients["welfare"].client_secret)
    await submit(page, "Sign in")
    await expect(page.locator("#client_id-error")).to_be_visible()
    await audit.check("sign-in refused to a consumer")


@walk("owner", "POST /console/sign-out", templates=("sign_in.html",))
async def walk_sign_out(page: Page, _site: ConsoleSite, audit: Audit) -> None:
    await submit(page, "Sign out")
    await expect(page.locator(".notification")).to_be_visible()
    await audit.check("signed out")


@walk(
    None,
    "GET /console/{rest:path}",
    "GET /console/oidc/start",
    "GET /console/oidc/callback",
    templates=("error.html",),
)
async def walk_errors_signed_out(page: Page, _site: ConsoleSite, audit: Audit) -> None:
    for address in ("/console/no-such-page", "/console/oidc/start", "/console/oidc/callback"):
        response = await page.goto(address)
        assert response is not None
        assert response.status == 404
        await audit.check(f"404 at {address}")


@walk("owner", "GET /console/{rest:path}", templates=("error.html",))
async def walk_errors_signed_in(page: Page, _site: ConsoleSite, audit: Audit) -> None:
    for address, status in (
        ("/console/no-such-page", 404),
        ("/console/agreements/no-such-agreement", 404),
        ("/console/agreements/Not%20An%20Id", 400),
        ("/console/citizen", 403),
        ("/console/audit/integrity", 403),
    ):
        response = await page.goto(address)
        assert response is not None
        assert response.status == status
        await audit.check(f"{status} at {address}")
    # A form posted without its token.
    await page.goto("/console/agreements/new")
    await page.evaluate("document.querySelectorAll('main input[name=csrf_token]').forEach(e => e.remove())")
    await submit(page, "Continue")
    await expect(page.get_by_role("heading", level=1)).to_have_text("This form could not be accepted")
    await audit.check("403 for a form without its token")


@walk("owner", "GET /console", templates=("home.html",))
async def walk_home_owner(page: Page, _site: ConsoleSite, audit: Audit) -> None:
    await audit.check("home")


@walk("auditor", "GET /console", templates=("home.html",))
async def walk_home_auditor(page: Page, _site: ConsoleSite, audit: Audit) -> None:
    await audit.check("home")


@walk("portal", "GET /console", templates=("home.html",))
async def walk_home_portal(page: Page, _site: ConsoleSite, audit: Audit) -> None:
    await audit.check("home")


@walk(
    "owner",
    "GET /console/agreements",
    "GET /console/agreements/new",
    "POST /console/agreements/new",
    "GET /console/agreements/{agreement_id}/saved",
    "GET /console/agreements/{agreement_id}",
    "GET /console/agreements/{agreement_id}/edit",
    "POST /console/agreements/{agreement_id}/edit",
    "GET /console/agreements/{agreement_id}/diff",
    "GET /console/agreements/{agreement_id}/revoke",
    "POST /console/agreements/{agreement_id}/revoke",
    templates=(
        "agreements/list.html",
        "agreements/form.html",
        "agreements/simulate.html",
        "agreements/confirmation.html",
        "agreements/detail.html",
        "agreements/diff.html",
        "agreements/revoke.html",
    ),
)
async def walk_agreements_owner(page: Page, _site: ConsoleSite, audit: Audit) -> None:
    await page.goto("/console/agreements")
    await audit.check("agreements")
    await page.get_by_role("button", name="Create an agreement").click()
    await expect(page.get_by_role("heading", level=1)).to_have_text("Create an agreement")
    await audit.check("new agreement")
    await page.get_by_label("Agreement ID").fill("Not An Id")
    await submit(page, "Continue")
    await expect(page.locator(".error-summary")).to_be_visible()
    await audit.check("new agreement with errors")

    await page.get_by_label("Agreement ID").fill("address-for-a11y")
    await page.get_by_label("Consumer department").select_option("welfare")
    await page.locator("#fields").get_by_label("address").check()
    await page.locator("#purposes").get_by_label("Fraud investigation").check()
    await page.get_by_label("Legal basis").fill("Social Security Fraud Act 2001, s.1")
    await page.get_by_label("Reason for this change").fill("Checked for accessibility")
    await submit(page, "Continue")
    await expect(page.get_by_role("heading", level=1)).to_have_text("Check the effect before you save")
    await expect(page.locator("#simulation-changes")).to_be_visible()
    await audit.check("simulation with changes")
    await submit(page, "Save as a new version")
    await expect(page.locator(".panel--confirmation")).to_contain_text("Agreement saved")
    await audit.check("agreement saved")

    await page.goto("/console/agreements/address-for-a11y/edit")
    await audit.check("change agreement")
    await page.locator("#fields").get_by_label("address").uncheck()
    await page.locator("#valid_until").fill("31")
    await page.locator("#valid_until-month").fill("13")
    await page.get_by_label("Once the consumer closes the case", exact=False).check()
    await page.get_by_label("Longest delay (with a case only)").fill("P9999D")
    await page.get_by_label("Forbid (overrides any permit)").check()
    await page.get_by_label("The citizen's consent", exact=False).check()
    await submit(page, "Continue")
    await expect(page.locator(".error-summary")).to_be_visible()
    await audit.check("change agreement with errors")
    await page.locator("#fields").get_by_label("address").check()
    await page.get_by_label("At once, in their access log and notices").check()
    await page.get_by_label("Longest delay (with a case only)").fill("")
    await page.get_by_label("Permit", exact=True).check()
    await page.get_by_label("A law requires it", exact=False).check()
    await page.locator("#valid_until-month").fill("12")
    await page.locator("#valid_until-year").fill("2030")
    await submit(page, "Continue")
    await expect(page.locator("#sim-none")).to_be_visible()
    await audit.check("simulation without changes")
    await submit(page, "Save as a new version")
    await page.get_by_role("link", name="See the agreement and its history").click()
    await expect(page.locator("#versions tbody tr")).to_have_count(2)
    await audit.check("agreement with its history")
    await page.get_by_role("link", name="Compare with version 1").click()
    await expect(page.locator("#diff")).to_be_visible()
    await audit.check("diff")
    await page.goto("/console/agreements/address-for-a11y/diff?from=1&to=1")
    await expect(page.locator("#diff-none")).to_be_visible()
    await audit.check("diff of a version with itself")

    await page.goto("/console/agreements/address-for-a11y")
    await page.get_by_role("button", name="Revoke").click()
    await audit.check("revoke confirmation")
    await submit(page, "Yes, revoke it")
    await expect(page.locator(".panel--confirmation")).to_contain_text("Agreement revoked")
    await audit.check("agreement revoked")


@walk(
    "auditor",
    "GET /console/agreements",
    "GET /console/agreements/{agreement_id}",
    "GET /console/agreements/{agreement_id}/diff",
    templates=("agreements/list.html", "agreements/detail.html", "agreements/diff.html"),
)
async def walk_agreements_auditor(page: Page, _site: ConsoleSite, audit: Audit) -> None:
    await page.goto("/console/agreements")
    await audit.check("agreements")
    await page.goto("/console/agreements/licence-status-for-welfare")
    await audit.check("another owner's agreement")
    await page.goto("/console/agreements/licence-status-for-welfare/diff?from=1&to=1")
    await audit.check("diff")


@walk(
    "auditor",
    "GET /console/audit",
    "GET /console/audit/integrity",
    "POST /console/audit/integrity/verify",
    "GET /console/audit/usage",
    templates=("audit/search.html", "audit/integrity.html", "audit/usage.html"),
)
async def walk_audit_auditor(page: Page, site: ConsoleSite, audit: Audit) -> None:
    await page.goto("/console/audit")
    await expect(page.locator("#audit-results")).to_be_visible()
    await audit.check("audit search")
    await page.get_by_role("link", name="Next page").click()
    await expect(page.locator("#audit-results")).to_be_visible()
    await audit.check("audit search, second page")
    await page.goto(f"/console/audit?citizen_id={site.citizens[0]}&consumer=welfare&decision=deny")
    await audit.check("audit search, filtered")
    await page.goto("/console/audit?citizen_id=nobody&consumer=nobody&decision=maybe&since=2026-02-30")
    await expect(page.locator(".error-summary")).to_be_visible()
    await audit.check("audit search with errors")
    await page.goto("/console/audit?field=tax_code")
    await expect(page.locator("#results-summary")).to_have_text("No entries match.")
    await audit.check("audit search, nothing found")

    deadline = time.monotonic() + 15
    await page.goto("/console/audit/integrity")
    while await page.locator("#checkpoint-size").count() == 0 and time.monotonic() < deadline:
        await page.reload()
    await audit.check("integrity")
    await submit(page, "Verify the whole log now")
    await expect(page.locator("#verify-result")).to_contain_text("The log verified")
    await expect(page.locator("#verify-keys")).to_be_visible()
    await audit.check("integrity, verified")
    # The verifier keys of replaced checkpoint keys: a line that is not one is the field's error,
    await page.get_by_label("Verifier keys of replaced checkpoint keys").fill("not a key")
    await submit(page, "Verify the whole log now")
    await expect(page.locator("#replaced_keys-error")).to_be_visible()
    await audit.check("integrity with a line that is not a key")
    # and a key that signed none of the site's checkpoints fails the check.
    stranger = NoteSigner(AuditSettings().origin, Ed25519PrivateKey.generate()).verifier_key()
    await page.get_by_label("Verifier keys of replaced checkpoint keys").fill(stranger)
    await submit(page, "Verify the whole log now")
    await expect(page.locator("#verify-result")).to_contain_text("verified no checkpoint")
    await audit.check("integrity, a key given signed nothing")

    await page.goto("/console/audit/usage")
    await audit.check("usage")


@walk(
    "owner",
    "GET /console/audit",
    "GET /console/audit/usage",
    "GET /console/value",
    "GET /console/releases",
    templates=("audit/search.html", "audit/usage.html", "value.html", "audit/releases.html"),
)
async def walk_audit_owner(page: Page, _site: ConsoleSite, audit: Audit) -> None:
    await page.goto("/console/audit")
    await expect(page.locator("#audit-results")).to_be_visible()
    await audit.check("audit search")
    await page.goto("/console/audit/usage")
    await audit.check("usage")
    await page.goto("/console/value")
    await expect(page.locator("table").first).to_be_visible()
    await audit.check("value")
    await page.goto("/console/releases")
    await audit.check("releases")


@walk("owner", "POST /console/releases/check", templates=("audit/releases.html",))
async def walk_releases_check(page: Page, _site: ConsoleSite, audit: Audit) -> None:
    # The site's register has no signing key, so the page offers no form; a check posted
    # anyway, with a key that is not one, is refused on the page.
    await page.goto("/console/releases")
    token = await page.locator("input[name=csrf_token]").first.input_value()
    await page.evaluate(
        """(token) => {
          const form = document.createElement("form");
          form.method = "post";
          form.action = "/console/releases/check";
          const input = document.createElement("input");
          input.type = "hidden"; input.name = "csrf_token"; input.value = token;
          const key = document.createElement("input");
          key.type = "hidden"; key.name = "owner_key"; key.value = "not-a-key";
          form.append(input, key);
          document.body.append(form);
          form.submit();
        }""",
        token,
    )
    await page.wait_for_url(re.compile(r"/console/releases/check$"))
    await expect(page.locator(".error-summary")).to_be_visible()
    await audit.check("releases check with a bad key")


@walk(
    "portal",
    "GET /console/citizen",
    "POST /console/citizen",
    "GET /console/citizen/choices",
    "POST /console/citizen/choices",
    templates=("citizen.html", "citizen_choices.html"),
)
async def walk_citizen(page: Page, site: ConsoleSite, audit: Audit) -> None:
    await page.goto("/console/citizen")
    await audit.check("citizen access log")
    await page.get_by_label("Citizen ID").fill("not-a-citizen-id")
    await submit(page, "Show the access log")
    await expect(page.locator(".error-summary")).to_be_visible()
    await audit.check("citizen access log with an error")
    await page.get_by_label("Citizen ID").fill(site.citizens[0])
    await submit(page, "Show the access log")
    await expect(page.locator("#access-log")).to_be_visible()
    await audit.check("citizen access log with entries")

    await page.goto("/console/citizen/choices")
    await audit.check("citizen choices")
    await page.goto(f"/console/citizen/choices?citizen_id={site.citizens[1]}")
    await expect(page.locator("#by-law")).to_be_visible()
    await audit.check("citizen choices of a citizen")
    consent = page.locator("#consents li").first
    async with page.expect_navigation():
        await consent.get_by_role("button", name="Give consent").click()
    await expect(page.locator("#consents li").first.locator(".consent-status")).to_have_text(
        "You have given your consent."
    )
    await audit.check("citizen choices after a change")


@walk(
    "owner",
    "GET /console/releases",
    "POST /console/releases/check",
    templates=("audit/releases.html",),
    site="signed",
)
async def walk_releases_signed(page: Page, _site: ConsoleSite, audit: Audit) -> None:
    # DVLA has a signing key in this site's catalog: the page offers the check, the key
    # filled in, and answers it with a result panel.
    await page.goto("/console/releases")
    await expect(page.get_by_label("Your department's signing key")).not_to_have_value("")
    await audit.check("releases, signed")
    await submit(page, "Check every release now")
    await expect(page.locator("#releases-result")).to_contain_text("Every release was justified")
    await audit.check("releases checked, all justified")
    # Another key of DVLA's: no release is justified by an agreement it signed.
    await page.get_by_label("Your department's signing key").fill(OwnerSigner.generate("dvla").verifier_key())
    await submit(page, "Check every release now")
    await expect(page.locator("#unjustified")).to_be_visible()
    await audit.check("releases checked, some not justified")
    await page.get_by_label("Your department's signing key").fill("not-a-key")
    await submit(page, "Check every release now")
    await expect(page.locator(".error-summary")).to_be_visible()
    await audit.check("releases check with a bad key, signed")


async def cancel_navigations_to(page: Page, address: str) -> Callable[[str], bool]:
    """Cancel each navigation to ``address`` (its query aside), so the page that starts it
    stays to be checked: ``continue.html`` moves on at once by itself (a meta refresh).
    Returns the matcher, to ``unroute`` with."""

    def matches(url: str) -> bool:
        return url.split("?", 1)[0] == address

    await page.route(matches, lambda route: route.abort("aborted"))
    return matches


@walk(
    None,
    "GET /console/sign-in",
    "GET /console/oidc/start",
    "GET /console/oidc/callback",
    "POST /console/sign-out",
    templates=("sign_in.html", "continue.html"),
    site="oidc",
)
async def walk_single_sign_on(page: Page, site: OidcSite, audit: Audit) -> None:
    await page.goto("/console/sign-in?next=/console/agreements")
    await audit.check("sign-in with single sign-on")
    agreements = await cancel_navigations_to(page, f"{site.url}/console/agreements")
    await page.get_by_role("link", name="Sign in with your organisation account").click()
    await provider_login(page, "ada")
    await expect(page.get_by_role("heading", level=1)).to_have_text("Signed in as Ada Lovelace")
    await audit.check("continue after a single sign-on")
    # Still the page that was checked: its navigation onward was cancelled.
    await expect(page.get_by_role("heading", level=1)).to_have_text("Signed in as Ada Lovelace")

    await page.unroute(agreements)
    await page.goto("/console/agreements")
    await expect(page.get_by_role("heading", level=1)).to_have_text("Agreements of Register")
    end_session = await provider_end_session(site)
    await cancel_navigations_to(page, end_session)
    await submit(page, "Sign out")
    await expect(page.get_by_role("heading", level=1)).to_have_text("You have signed out of the console")
    await audit.check("continue to sign out at the provider")
    await expect(page.get_by_role("heading", level=1)).to_have_text("You have signed out of the console")


async def provider_end_session(site: OidcSite) -> str:
    """The provider's end-session endpoint, from its discovery document."""
    async with httpx.AsyncClient() as http:
        discovery = await http.get(f"{site.issuer}/.well-known/openid-configuration")
    endpoint: str = discovery.json()["end_session_endpoint"]
    return endpoint


async def run_walk(walked: Walked, page: Page, site: Any, sign_in_to: ConsoleSite | None) -> None:
    if walked.role is not None:
        assert sign_in_to is not None
        await sign_in(page, sign_in_to, walked.role)
    audit = Audit(page, axe_source())
    await walked.walk(page, site, audit)
    assert audit.checked
    assert not audit.findings, "axe found:\n" + "\n".join(audit.findings)


class TestAxe:
    @pytest.mark.parametrize("name", walks_on("console"))
    async def test_page_has_no_violations(self, name: str, page: Page, console_site: ConsoleSite) -> None:
        await run_walk(WALKS[name], page, console_site, console_site)

    @pytest.mark.parametrize("name", walks_on("signed"))
    async def test_page_of_a_signing_department_has_no_violations(
        self,
        name: str,
        signed_page: Page,  # noqa: F811 - the imported fixture
        signed_site: tuple[ConsoleSite, OwnerSigner],  # noqa: F811 - the imported fixture
    ) -> None:
        await run_walk(WALKS[name], signed_page, signed_site[0], signed_site[0])

    @pytest.mark.parametrize("name", walks_on("oidc"))
    async def test_single_sign_on_page_has_no_violations(
        self,
        name: str,
        oidc_page: Page,  # noqa: F811 - the imported fixture
        oidc_site: OidcSite,  # noqa: F811 - the imported fixture
    ) -> None:
        await run_walk(WALKS[name], oidc_page, oidc_site, None)


def test_every_console_route_is_walked(app: FastAPI) -> None:
    routes = {
        (method, context.path)
        for context in iter_route_contexts(app.routes)
        if (context.path or "").startswith("/console")
        for method in context.methods or ()
    }
    walked = {entry for each in WALKS.values() for entry in each.routes}
    assert routes == walked | set(NOT_PAGES)
    assert not walked & set(NOT_PAGES)


def test_every_console_template_is_walked() -> None:
    """A route walked for one of its pages says nothing of its others: the single sign-on
    callback was walked only as the 404 of a site without single sign-on, and its
    ``continue.html`` never. So every page template must be named by a walk too."""
    templates = {path.relative_to(TEMPLATES).as_posix() for path in TEMPLATES.rglob("*.html")}
    walked = {name for each in WALKS.values() for name in each.templates}
    assert templates == walked | set(NOT_PAGE_TEMPLATES)
    assert not walked & set(NOT_PAGE_TEMPLATES)


# The elements Tab should stop at, in document order (the console sets no positive
# tabindex): of a group of radios, only the checked one, or the first if none is.
TAB_STOPS = """() => {
  const selector = "a[href], button, input:not([type=hidden]), select, textarea, summary, [tabindex]";
  const stops = [];
  const radioGroups = new Set();
  for (const element of document.querySelectorAll(selector)) {
    if (element.disabled || element.tabIndex < 0 || element.closest("[hidden], [inert]")) continue;
    if (element.type === "radio") {
      if (radioGroups.has(element.name)) continue;
      radioGroups.add(element.name);
      const group = [...document.getElementsByName(element.name)];
      stops.push(group.find(radio => radio.checked) || element);
      continue;
    }
    stops.push(element);
  }
  stops.forEach((element, index) => { element.dataset.tabStop = String(index); });
  return stops.map(element => element.outerHTML.slice(0, 120));
}"""
# The look that tells a focused element from an unfocused one.
FOCUS_STYLE = """(element) => {
  const style = getComputedStyle(element);
  return [style.outlineStyle, style.outlineWidth, style.outlineColor, style.boxShadow,
          style.backgroundColor, style.color].join(" | ");
}"""
FOCUS_YELLOW = "rgb(255, 221, 0)"
ACTIVE_ELEMENT = (
    "() => [document.activeElement.dataset.tabStop, document.activeElement.outerHTML.slice(0, 120)]"
)


class TestKeyboardFocus:
    """Every control of the two busiest forms is reached by Tab, in order, and wears the
    yellow focus ring (or the yellow background of a focused link) while it has focus."""

    @pytest.mark.parametrize(
        ("role", "address"),
        [("owner", "/console/agreements/new"), ("auditor", "/console/audit")],
    )
    async def test_tab_reaches_every_control_with_a_visible_focus(
        self, role: str, address: str, page: Page, console_site: ConsoleSite
    ) -> None:
        await sign_in(page, console_site, role)
        await page.goto(address)
        stops: list[str] = await page.evaluate(TAB_STOPS)
        assert len(stops) > 10
        reached: list[str] = []
        focused_look: dict[str, str] = {}
        # A date box takes a Tab per part (day, month, year): a press that stays in the
        # element is not a stop of its own.
        for _ in range(3 * len(stops)):
            if len(reached) == len(stops):
                break
            await page.keyboard.press("Tab")
            stop, html = await page.evaluate(ACTIVE_ELEMENT)
            assert stop is not None, f"Tab went to {html} after {[stops[int(s)] for s in reached]}"
            if reached and reached[-1] == stop:
                continue
            reached.append(stop)
            focused_look[stop] = await page.evaluate(f"() => ({FOCUS_STYLE})(document.activeElement)")
        assert reached == [str(index) for index in range(len(stops))]

        await page.evaluate("document.activeElement.blur()")
        not_seen = []
        for stop, look in focused_look.items():
            resting = await page.locator(f"[data-tab-stop='{stop}']").evaluate(FOCUS_STYLE)
            if look == resting or FOCUS_YELLOW not in look:
                not_seen.append(f"{stops[int(stop)]}\n    focused: {look}\n    resting: {resting}")
        assert not not_seen, "no visible focus on:\n" + "\n".join(not_seen)
