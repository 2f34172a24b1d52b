"""Single sign-on without a provider: the ``state`` check (whatever a callback carries, a
sign-in this browser did not start is refused with an ``OidcError``, a 403 page, never a
server error), and the relying party's HTTP client closed when the app stops."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy.ext.asyncio import AsyncSession

from service.app import create_app
from service.config import Settings
from service.console.config import ConsoleSettings
from service.console.oidc import OidcError, OidcSignIn, check_state, make_state


class TestCheckState:
    def test_the_state_made_for_this_browser_returns_its_path(self) -> None:
        assert check_state("pre-token", make_state("pre-token", "/console/audit")) == "/console/audit"

    @pytest.mark.parametrize(
        "state",
        [
            "é.L2NvbnNvbGU",  # a non-ASCII MAC
            "forged.L2NvbnNvbGU",
            "no-dot",
            "",
        ],
    )
    def test_a_state_this_browser_did_not_make_is_refused(self, state: str) -> None:
        with pytest.raises(OidcError, match="not started in this browser"):
            check_state("pre-token", state)

    def test_the_state_of_another_browser_is_refused(self) -> None:
        with pytest.raises(OidcError, match="not started in this browser"):
            check_state("pre-token", make_state("another-token", "/console"))


class TestRelyingPartyLifetime:
    async def test_its_http_client_is_closed_when_the_app_stops(
        self,
        settings: Settings,
        session: AsyncSession,  # the migrated test database
        tmp_path: Path,
    ) -> None:
        role_map = tmp_path / "roles.yaml"
        role_map.write_text("claim: groups\nrules:\n  - {group: g, department: register, role: data-owner}\n")
        console = ConsoleSettings(
            oidc_issuer="https://id.example",
            oidc_client_id="tellonce-console",
            oidc_client_secret=SecretStr("console-secret-for-tests-only"),
            oidc_role_map=role_map,
        )
        http = httpx.AsyncClient()
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            # As ``oidc_sign_in`` caches it on the first sign-in.
            app.state.console_oidc = OidcSignIn(console, "https://tellonce.example", http=http)
            assert not http.is_closed
        assert http.is_closed
