"""``deploy/``: the Prometheus alert rules pass ``promtool check rules`` and their unit tests
(``promtool test rules``), and every tellonce metric the rules and the Grafana dashboard
query is one the service really exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.conftest import REPO_ROOT

DEPLOY = REPO_ROOT / "deploy"
RULES = DEPLOY / "prometheus" / "alerts.yml"
RULE_TESTS = DEPLOY / "prometheus" / "alerts.test.yml"
DASHBOARD = DEPLOY / "grafana" / "tellonce.json"
METRIC = re.compile(r"\b(tellonce_[a-z0-9_]+)")
# Named in the README in backquotes like a metric, but the console's cookies.
COOKIES = {"tellonce_console", "tellonce_console_oidc"}
# Registered only when witnesses are configured (service/audit/witnessing.py).
WITH_WITNESSES = {"tellonce_audit_witnessed_checkpoint_age_seconds"}


def _promtool() -> str:
    found = shutil.which("promtool")
    assert found, "promtool not found: install Debian's prometheus package (.ci/run does)"
    return found


def _run(*args: str, cwd: Path = DEPLOY) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


def _rule_expressions() -> list[str]:
    document: dict[str, Any] = yaml.safe_load(RULES.read_text())
    return [rule["expr"] for group in document["groups"] for rule in group["rules"]]


def _dashboard_expressions() -> list[str]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


class TestAlertRules:
    def test_promtool_accepts_the_rules(self) -> None:
        checked = _run(_promtool(), "check", "rules", str(RULES))
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert "SUCCESS: 5 rules found" in checked.stdout

    def test_the_rules_fire_as_their_unit_tests_expect(self) -> None:
        tested = _run(_promtool(), "test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)
        assert tested.returncode == 0, tested.stdout + tested.stderr

    def test_each_alert_named_in_the_readme_exists(self) -> None:
        document: dict[str, Any] = yaml.safe_load(RULES.read_text())
        names = {rule["alert"] for group in document["groups"] for rule in group["rules"]}
        readme = (REPO_ROOT / "README.md").read_text()
        assert names == {
            "TellonceAuditWriterFailing",
            "TellonceHigh5xxRate",
            "TellonceWebhookDeadLetters",
            "TellonceWitnessQuorumStale",
            "TellonceDown",
        }
        assert all(name in readme for name in names)


class TestMetricNames:
    async def test_rules_and_dashboard_query_only_exported_metrics(self, client: httpx.AsyncClient) -> None:
        await client.get("/healthz")  # labelled series appear once something was counted
        scraped = await client.get("/metrics")
        assert scraped.status_code == 200
        exported = set(METRIC.findall(scraped.text))
        used = {
            name for expr in _rule_expressions() + _dashboard_expressions() for name in METRIC.findall(expr)
        }
        assert used
        assert used - WITH_WITNESSES <= exported, sorted(used - WITH_WITNESSES - exported)
        witnessing = (REPO_ROOT / "service" / "audit" / "witnessing.py").read_text()
        assert all(f'"{name}"' in witnessing for name in WITH_WITNESSES)

    async def test_the_readme_and_runbooks_name_only_exported_metrics(
        self, client: httpx.AsyncClient
    ) -> None:
        await client.get("/healthz")
        exported = set(METRIC.findall((await client.get("/metrics")).text))
        for document in (REPO_ROOT / "README.md", REPO_ROOT / "docs" / "operations.md"):
            named = set(re.findall(r"`(tellonce_[a-z0-9_]+)", document.read_text())) - COOKIES
            assert named
            missing = sorted(named - WITH_WITNESSES - exported)
            assert not missing, (document.name, missing)

    def test_the_dashboard_is_grafana_json_with_targets(self) -> None:
        dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
        assert dashboard["uid"] == "tellonce-overview"
        assert {panel["id"] for panel in dashboard["panels"]} == set(range(1, len(dashboard["panels"]) + 1))
        assert all(panel["targets"] for panel in dashboard["panels"])
