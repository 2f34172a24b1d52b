"""``make fuzz`` (scripts/fuzz.sh): what its server is told, read from the script itself.

The run fetches one token per client and sends it with every case: at the default lifetime
(five minutes) the token expired mid-run, and every case after was a 401 that tested
nothing. The script itself is run by ``make fuzz``, not by the test suite (it takes minutes).
"""

from __future__ import annotations

import re

import pytest

from service.config import Settings
from tests.conftest import REPO_ROOT

SCRIPT = REPO_ROOT / "scripts" / "fuzz.sh"


def exported(name: str) -> str:
    """The value the script exports for ``name`` before it starts the server."""
    text = SCRIPT.read_text(encoding="utf-8")
    server_starts = text.index("serve --port")
    found: list[str] = re.findall(rf"^export {name}=(\S+)$", text[:server_starts], flags=re.MULTILINE)
    assert len(found) == 1, f"{name} is not exported once before the server starts"
    return found[0]


class TestFuzzServer:
    def test_its_tokens_live_an_hour(self, monkeypatch: pytest.MonkeyPatch) -> None:
        value = exported("TELLONCE_ACCESS_TOKEN_TTL_SECONDS")
        monkeypatch.setenv("TELLONCE_ACCESS_TOKEN_TTL_SECONDS", value)
        assert Settings().access_token_ttl_seconds == 3600
