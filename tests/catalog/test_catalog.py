from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncSession

from service.catalog import service as catalog_service
from service.catalog.loader import load_catalog
from service.sourcefile import SourceFileError, parse_yaml
from tests.conftest import DEMO_POLICIES, TEST_POLICIES
from tests.fixtures.auth import act_as

BROKEN = """\
departments:
  - id: register
    name: Register
  - id: register
    name: Register again
purposes:
  - id: benefits
    name: Benefits
fields:
  - name: national_id
    owner: register
    type: string
  - name: licence_status
    owner: dvla
    type: enum
  - name: Bad-Name
    owner: register
    type: colour
"""


def write_catalog(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "catalog.yaml").write_text(text)
    return folder


class TestCatalogLoader:
    def test_demo_and_test_catalogs_are_valid(self) -> None:
        demo = load_catalog(DEMO_POLICIES)
        assert demo.field("national_id") is not None
        assert demo.death_field is not None
        assert demo.death_field.name == "date_of_death"
        assert load_catalog(TEST_POLICIES).field_owners["licence_status"] == "dvla"

    def test_reports_every_error_with_its_line(self, tmp_path: Path) -> None:
        folder = write_catalog(tmp_path, BROKEN)
        with pytest.raises(SourceFileError) as caught:
            load_catalog(folder)
        lines = [str(e) for e in caught.value.errors]
        path = str(folder / "catalog.yaml")
        # Schema errors come first, on the lines of the offending keys.
        assert f"{path}:16: fields.2.name: String should match pattern '^[a-z][a-z0-9_]{{0,62}}$'" in lines
        assert any(line.startswith(f"{path}:18: fields.2.type:") for line in lines)

    def test_reports_cross_reference_errors_together(self, tmp_path: Path) -> None:
        text = BROKEN.replace("Bad-Name", "bad_name").replace("colour", "string")
        folder = write_catalog(tmp_path, text)
        with pytest.raises(SourceFileError) as caught:
            load_catalog(folder)
        path = str(folder / "catalog.yaml")
        assert [str(e) for e in caught.value.errors] == [
            f"{path}:4: duplicate department 'register'",
            # Not searchable: nothing could find a citizen by it or refuse a second registration.
            f"{path}:10: field 'national_id': the national id must be a searchable string",
            f"{path}:13: field 'licence_status': an enum needs values",
            f"{path}:14: field 'licence_status': unknown owner 'dvla'",
        ]

    def test_yaml_syntax_error_names_the_line(self) -> None:
        with pytest.raises(SourceFileError) as caught:
            parse_yaml("departments:\n  - id: a\n    name: [unclosed\n", "c.yaml")
        assert caught.value.errors[0].file == "c.yaml"
        assert caught.value.errors[0].line in (3, 4)
        assert "invalid YAML" in caught.value.errors[0].message

    def test_a_value_yaml_cannot_build_fails_the_catalog(self) -> None:
        # The policy loader judges such a value as its entry's problem; the catalog, read by
        # the same loader, is refused with it (its parts are not judged one by one).
        with pytest.raises(SourceFileError) as caught:
            parse_yaml("departments:\n  - id: a\n    name: 2027-13-01\n", "c.yaml")
        assert [str(e) for e in caught.value.errors] == ["c.yaml:3: invalid value: month must be in 1..12"]

    def test_duplicate_keys_are_refused(self) -> None:
        with pytest.raises(SourceFileError) as caught:
            parse_yaml("a: 1\nb: 2\na: 3\n", "d.yaml")
        assert str(caught.value.errors[0]) == "d.yaml:3: duplicate key 'a'"


class TestCatalogVersions:
    async def test_store_is_idempotent_and_versioned(self, session: AsyncSession) -> None:
        catalog = load_catalog(TEST_POLICIES)
        first = await catalog_service.store(session, catalog, author="t")
        assert first is not None
        assert await catalog_service.store(session, catalog, author="t") is None
        changed = catalog.model_copy(update={"purposes": catalog.purposes[:-1]})
        assert await catalog_service.store(session, changed, author="t") == first + 1
        version, current = await catalog_service.current(session)
        assert version == first + 1
        assert len(current.purposes) == len(catalog.purposes) - 1


class TestCatalogEndpoint:
    @pytest.mark.usefixtures("catalog_loaded")
    async def test_serves_departments_purposes_and_fields(
        self, app: FastAPI, client: httpx.AsyncClient
    ) -> None:
        act_as(app, "welfare", "consumer")
        response = await client.get("/v1/catalog")
        assert response.status_code == 200
        body = response.json()
        assert {d["id"] for d in body["departments"]} >= {"register", "dvla", "welfare"}
        fields = {f["name"]: f for f in body["fields"]}
        assert fields["national_id"]["owner"] == "register"
        assert fields["national_id"]["searchable"] is True
        assert fields["licence_status"]["values"] == ["valid", "revoked", "cancelled"]

    async def test_no_catalog_is_503_problem(self, app: FastAPI, client: httpx.AsyncClient) -> None:
        act_as(app, "audit-office", "auditor")
        response = await client.get("/v1/catalog")
        assert response.status_code == 503
        assert response.headers["content-type"] == "application/problem+json"
        assert "tellonce policies apply" in response.json()["detail"]

    @pytest.mark.usefixtures("catalog_loaded")
    async def test_anonymous_caller_is_401_problem(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/v1/catalog")
        assert response.status_code == 401
        assert response.headers["content-type"] == "application/problem+json"
        # RFC 6750, section 3.1: no credentials sent, so the challenge carries no error code.
        assert response.headers["www-authenticate"] == "Bearer"
        assert response.json()["title"] == "Authentication required"
        # RFC 6750, section 3.1: a malformed request (the scheme and no token) is
        # invalid_request with 400; a token that does not verify, invalid_token with 401.
        for authorization, status, challenge in (
            ("Basic dXNlcjpwYXNz", 401, "Bearer"),
            ("Bearer ", 400, 'Bearer error="invalid_request"'),
            ("Bearer not-a-token", 401, 'Bearer error="invalid_token"'),
        ):
            refused = await client.get("/v1/catalog", headers={"Authorization": authorization})
            assert refused.status_code == status
            assert refused.headers["content-type"] == "application/problem+json"
            assert refused.headers["www-authenticate"] == challenge


class TestPoliciesApplyCli:
    def test_invalid_folder_exits_1_with_file_line_messages(
        self, tmp_path: Path, scratch_database: str
    ) -> None:
        text = BROKEN.replace("Bad-Name", "bad_name").replace("colour", "string")
        folder = write_catalog(tmp_path / "bad", text)
        result = subprocess.run(
            [sys.executable, "-m", "service.cli", "policies", "apply", str(folder)],
            env={"TELLONCE_DATABASE_URL": scratch_database, "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 1
        assert f"{folder / 'catalog.yaml'}:4: duplicate department 'register'" in result.stderr

    def test_valid_folder_is_stored_once(self, scratch_database: str) -> None:
        command = [sys.executable, "-m", "service.cli", "policies", "apply", str(TEST_POLICIES)]
        env = {"TELLONCE_DATABASE_URL": scratch_database, "PATH": "/usr/bin:/bin"}
        first = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
        second = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
        assert "catalog stored as version 1" in first.stdout
        assert "catalog unchanged" in second.stdout
