from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from joserfc.jwk import ECKey

from tests.conftest import TEST_POLICIES
from tests.fixtures.server import LiveServer


def tellonce(database_url: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {"TELLONCE_DATABASE_URL": database_url, "TELLONCE_ENV": "test", "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args], env=env, capture_output=True, text=True, check=check
    )


def create_json(database_url: str, *args: str) -> dict[str, str]:
    result = tellonce(database_url, "clients", "create", *args, "--json")
    created: dict[str, str] = json.loads(result.stdout)
    return created


class TestClientsCli:
    def test_create_list_disable(self, scratch_database: str, tmp_path: Path) -> None:
        tellonce(scratch_database, "policies", "apply", str(TEST_POLICIES))
        secret_client = create_json(scratch_database, "--department", "dvla", "--roles", "consumer,writer")
        assert set(secret_client) == {"client_id", "client_secret"}
        assert len(secret_client["client_secret"]) >= 43  # 32 random bytes, base64url
        jwk_file = tmp_path / "client.jwk"
        jwk_file.write_text(json.dumps(ECKey.generate_key("P-256", private=True).as_dict(private=False)))
        key_client = create_json(
            scratch_database, "--department", "welfare", "--roles", "consumer", "--jwk", str(jwk_file)
        )
        assert set(key_client) == {"client_id"}

        listed = [
            json.loads(line)
            for line in tellonce(scratch_database, "clients", "list", "--json").stdout.splitlines()
        ]
        by_id = {c["client_id"]: c for c in listed}
        assert by_id[secret_client["client_id"]]["roles"] == ["consumer", "writer"]
        assert by_id[secret_client["client_id"]]["auth_method"] == "client_secret"
        assert by_id[key_client["client_id"]]["auth_method"] == "private_key_jwt"
        assert all(c["disabled_at"] is None for c in listed)
        table = tellonce(scratch_database, "clients", "list").stdout
        assert secret_client["client_id"] in table
        assert secret_client["client_secret"] not in table

        result = tellonce(scratch_database, "clients", "disable", secret_client["client_id"])
        assert f"client {secret_client['client_id']} disabled" in result.stdout
        listed = [
            json.loads(line)
            for line in tellonce(scratch_database, "clients", "list", "--json").stdout.splitlines()
        ]
        disabled = {c["client_id"]: c["disabled_at"] for c in listed}
        assert disabled[secret_client["client_id"]] is not None
        assert disabled[key_client["client_id"]] is None

    def test_invalid_registration_exits_1(self, scratch_database: str) -> None:
        tellonce(scratch_database, "policies", "apply", str(TEST_POLICIES))
        cases = [
            (["--department", "dvla", "--roles", "consumer,wizard"], "error: Unknown role(s): wizard."),
            (["--department", "atlantis", "--roles", "consumer"], "error: Unknown department 'atlantis'"),
        ]
        for args, message in cases:
            result = tellonce(scratch_database, "clients", "create", *args, "--json", check=False)
            assert result.returncode == 1
            assert result.stderr.startswith(message)
            assert result.stdout == ""
        listed = tellonce(scratch_database, "clients", "list", "--json").stdout
        assert listed == ""

    def test_private_jwk_is_refused(self, scratch_database: str, tmp_path: Path) -> None:
        jwk_file = tmp_path / "private.jwk"
        jwk_file.write_text(json.dumps(ECKey.generate_key("P-256", private=True).as_dict(private=True)))
        result = tellonce(
            scratch_database,
            *("clients", "create", "--department", "dvla", "--roles", "consumer", "--jwk", str(jwk_file)),
            check=False,
        )
        assert result.returncode == 1
        assert "private key material" in result.stderr

    def test_disable_unknown_client_exits_1(self, scratch_database: str) -> None:
        result = tellonce(scratch_database, "clients", "disable", "tc_nobody", check=False)
        assert result.returncode == 1
        assert result.stderr == "error: No client 'tc_nobody'.\n"


@pytest.mark.e2e
class TestAcrossProcesses:
    def test_disable_by_cli_refuses_the_running_servers_cached_token(
        self, live_server: LiveServer, scratch_database: str
    ) -> None:
        tellonce(scratch_database, "policies", "apply", str(TEST_POLICIES))
        created = create_json(scratch_database, "--department", "welfare", "--roles", "consumer")
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
            tellonce(scratch_database, "clients", "disable", created["client_id"])
            refused = http.get("/v1/catalog", headers=headers)
            assert refused.status_code == 401
            assert refused.headers["content-type"] == "application/problem+json"
            assert refused.json()["detail"] == "The client is disabled or no longer registered."
