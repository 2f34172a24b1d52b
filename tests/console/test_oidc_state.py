"""The single sign-on ``state`` check alone, without a provider: whatever a callback
carries, a sign-in this browser did not start is refused with an ``OidcError`` (a 403
page), never a server error."""

from __future__ import annotations

import pytest

from service.console.oidc import OidcError, check_state, make_state


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
