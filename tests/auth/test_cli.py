from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from joserfc.jwk import ECKey
from typer.testing import CliRunner

from service.auth.cli import _shown
from service.cli import app as cli_app
from service.config import get_settings
from tests.conftest import TEST_POLICIES
from tests.fixtures.server import LiveServer

Invoke = Callable[..., tuple[int, str, str]]


def tellonce(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The real command in its own process (slow to start: used where processes matter)."""
    env = {"TELLONCE_DATABASE_URL": database_url, "TELLONCE_ENV": "test", "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args], env=env, capture_output=True, text=True, check=True
    )


@pytest.fixture
def invoke(scratch_database: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Invoke]:
    """The same command in this process, against the scratch database."""
    monkeypatch.setenv("TELLONCE_DATABASE_URL", scratch_database)
    monkeypatch.setenv("TELLONCE_ENV", "test")
    get_settings.cache_clear()
    runner = CliRunner()

    def run(*args: str) -> tuple[int, str, str]:
        result = runner.invoke(cli_app, list(args))
        return result.exit_code, result.stdout, result.stderr

    yield run
    get_settings.cache_clear()  # forget the scratch database's settings


class TestClientsCli:
    def test_invalid_registration_exits_1(self, invoke: Invoke) -> None:
        assert invoke("policies", "apply", str(TEST_POLICIES))[0] == 0
        cases = [
            (["--department", "dvla", "--roles", "consumer,wizard"], "error: Unknown role(s): wizard."),
            (["--department", "atlantis", "--roles", "consumer"], "error: Unknown department 'atlantis'"),
        ]
        for args, message in cases:
            code, out, err = invoke("clients", "create", *args, "--json")
            assert code == 1
            assert err.startswith(message)
            assert out == ""
        assert invoke("clients", "list", "--json")[1] == ""

    @pytest.mark.parametrize(("option", "value"), [("--burst", "3000000000"), ("--rate", "inf")])
    def test_rate_or_burst_out_of_range_exits_1(self, invoke: Invoke, option: str, value: str) -> None:
        # As /v1/clients refuses them (422): a burst PostgreSQL's integer column cannot hold
        # was a traceback there, and was stored on SQLite; an infinite rate lifts the limit.
        code, out, err = invoke(
            "clients", "create", "--department", "dvla", "--roles", "consumer", option, value
        )
        assert code == 1
        assert err.startswith("error: ")
        assert out == ""

    def test_private_jwk_is_refused(self, invoke: Invoke, tmp_path: Path) -> None:
        jwk_file = tmp_path / "private.jwk"
        jwk_file.write_text(json.dumps(ECKey.generate_key("P-256", private=True).as_dict(private=True)))
        code, _, err = invoke(
            "clients", "create", "--department", "dvla", "--roles", "consumer", "--jwk", str(jwk_file)
        )
        assert code == 1
        assert err == "error: The JWK contains private key material; register the public key.\n"

    @pytest.mark.parametrize("content", [b"\xff\xfe\x00", b"[" * 100_000])
    def test_a_jwk_file_that_is_not_json_text_is_one_line(
        self, invoke: Invoke, tmp_path: Path, content: bytes
    ) -> None:
        jwk_file = tmp_path / "odd.jwk"
        jwk_file.write_bytes(content)
        code, _, err = invoke(
            "clients", "create", "--department", "dvla", "--roles", "consumer", "--jwk", str(jwk_file)
        )
        assert code == 1
        assert err == "error: The JWK is not valid JSON.\n"

    def test_disable_unknown_client_exits_1(self, invoke: Invoke) -> None:
        code, _, err = invoke("clients", "disable", "tc_nobody")
        assert code == 1
        assert err == "error: No client 'tc_nobody'.\n"

    def test_table_shows_clients_but_never_secrets(self, invoke: Invoke) -> None:
        code, out, _ = invoke("clients", "create", "--department", "dvla", "--roles", "writer", "--json")
        assert code == 0
        created = json.loads(out)
        code, table, _ = invoke("clients", "list")
        assert code == 0
        assert created["client_id"] in table
        assert "writer" in table
        assert created["client_secret"] not in table

    @pytest.mark.parametrize("name", ["x" * 201, "Payments\x1b[2J", "Pay\nments", "Pay\u202ements"])
    def test_a_name_too_long_or_with_control_characters_is_refused(self, invoke: Invoke, name: str) -> None:
        """Stored names are shown on operators' terminals; the column holds 200 characters
        (on PostgreSQL a longer name was a DataError traceback)."""
        code, out, err = invoke(
            "clients", "create", "--department", "dvla", "--roles", "writer", "--name", name
        )
        assert code == 1
        assert err == "error: A client's name is at most 200 characters, without control characters.\n"
        assert out == ""
        assert invoke("clients", "list", "--json")[1] == ""

    @pytest.mark.parametrize("name", ["Benefits [/bold]", "[red]Payments"])
    def test_table_shows_a_name_with_brackets_as_given(self, invoke: Invoke, name: str) -> None:
        """A name is text, not rich markup: one client's name cannot break the list."""
        code, _, _ = invoke("clients", "create", "--department", "dvla", "--roles", "writer", "--name", name)
        assert code == 0
        code, table, _ = invoke("clients", "list")
        assert code == 0
        assert name in table

    def test_a_stored_name_with_terminal_codes_is_shown_without_them(self) -> None:
        # A name stored before control characters were refused may still hold escape
        # sequences (window title, colours, links): they must not reach the terminal.
        shown = _shown("Benefits \x1b]0;pwned\x07\x1b[2J").plain
        assert shown.startswith("Benefits ")
        assert "\x1b" not in shown
        assert "\x07" not in shown


@pytest.mark.e2e
class TestAcrossProcesses:
    def test_create_list_disable_by_cli_while_a_server_runs(
        self, live_server: LiveServer, scratch_database: str, invoke: Invoke, tmp_path: Path
    ) -> None:
        # create, list and disable run as real processes; the set-up runs in this one.
        assert invoke("policies", "apply", str(TEST_POLICIES))[0] == 0
        created = json.loads(
            tellonce(
                scratch_database,
                "clients",
                "create",
                "--department",
                "welfare",
                "--roles",
                "consumer",
                "--json",
            ).stdout
        )
        assert set(created) == {"client_id", "client_secret"}
        assert len(created["client_secret"]) >= 43  # 32 random bytes, base64url
        jwk_file = tmp_path / "client.jwk"
        jwk_file.write_text(json.dumps(ECKey.generate_key("P-256", private=True).as_dict(private=False)))
        code, out, _ = invoke(
            *("clients", "create", "--department", "dvla", "--roles", "consumer,writer"),
            *("--jwk", str(jwk_file), "--json"),
        )
        assert code == 0
        key_client = json.loads(out)
        assert set(key_client) == {"client_id"}
        listed = {
            c["client_id"]: c
            for c in map(
                json.loads, tellonce(scratch_database, "clients", "list", "--json").stdout.splitlines()
            )
        }
        assert listed[created["client_id"]]["auth_method"] == "client_secret"
        assert listed[key_client["client_id"]]["auth_method"] == "private_key_jwt"
        assert listed[key_client["client_id"]]["roles"] == ["consumer", "writer"]
        assert listed[created["client_id"]]["disabled_at"] is None

        with httpx.Client(base_url=live_server.base_url, timeout=10) as http:
            response = http.post(
                "/oauth/token",
                data={"grant_type": "client_credentials"},
                auth=(created["client_id"], created["client_secret"]),
            )
            assert response.status_code == 200
            headers = {"Authorization": f"Bearer {response.json()['access_token']}"}
            # Twice: the second request is served from the verified-token cache.
            assert http.get("/v1/catalog", headers=headers).status_code == 200
            assert http.get("/v1/catalog", headers=headers).status_code == 200
            result = tellonce(scratch_database, "clients", "disable", created["client_id"])
            assert result.stdout == f"client {created['client_id']} disabled\n"
            refused = http.get("/v1/catalog", headers=headers)
            assert refused.status_code == 401
            assert refused.headers["content-type"] == "application/problem+json"
            assert refused.json()["detail"] == "The client is disabled or no longer registered."
