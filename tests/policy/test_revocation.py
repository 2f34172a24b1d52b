"""Revocation reaches every process on its very next decision (SQLite and PostgreSQL).

Two long-lived deciding processes each keep their own compiled policy, as server
processes do, and decide through the same ``PolicyHolder.current`` path.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO_ROOT, TEST_POLICIES
from tests.policy.test_loader import run_cli

ASK = {
    "consumer": "welfare",
    "action": "read",
    "fields": ["licence_status"],
    "purpose": "benefit-eligibility",
    "citizen_status": "active",
}


class Decider:
    """One long-lived deciding process with its own compiled-policy cache."""

    def __init__(self, database_url: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.policy.decider", database_url],
            cwd=REPO_ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def send(self, command: dict[str, Any]) -> dict[str, Any]:
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        answer: dict[str, Any] = json.loads(self.process.stdout.readline())
        return answer

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait(timeout=15)
        if self.process.stdout is not None:
            self.process.stdout.close()


@pytest.fixture
def deciders(scratch_database: str) -> Iterator[tuple[Decider, Decider]]:
    applied = run_cli("apply", str(TEST_POLICIES), database_url=scratch_database)
    assert "8 created" in applied.stdout
    first, second = Decider(scratch_database), Decider(scratch_database)
    try:
        yield first, second
    finally:
        first.close()
        second.close()


@pytest.mark.postgres
class TestRevocationAcrossProcesses:
    def test_a_change_in_one_process_applies_to_the_next_decision_in_another(
        self, deciders: tuple[Decider, Decider], tmp_path: Path, scratch_database: str
    ) -> None:
        process_a, process_b = deciders
        # Both processes compile and cache the policy in force.
        before_a = process_a.send({"decide": ASK})
        before_b = process_b.send({"decide": ASK})
        assert before_a["decisions"]["licence_status"]["effect"] == "permit"
        assert before_b == before_a
        # A second decision in B is served from its cache (same epoch).
        assert process_b.send({"decide": ASK})["epoch"] == before_b["epoch"]

        assert process_a.send({"revoke": "licence-status-for-welfare"}) == {"revoked": 2}

        # The very next decision in B, with no wait, sees the revocation.
        after_b = process_b.send({"decide": ASK})
        assert after_b["epoch"] == before_b["epoch"] + 1
        assert after_b["decisions"]["licence_status"] == {
            "field": "licence_status",
            "effect": "deny",
            "agreement": None,
            "version": None,
            "reason": "no agreement lets welfare read licence_status for benefit-eligibility",
            "legal_basis": None,
            "allowed_claims": None,
            "digest": None,
        }

        # `policies apply` from yet another connection reinstates it with a new limit.
        folder = tmp_path / "policies"
        folder.mkdir()
        for path in TEST_POLICIES.glob("*.yaml"):
            (folder / path.name).write_text(path.read_text())
        changed = (TEST_POLICIES / "dvla.yaml").read_text()
        (folder / "dvla.yaml").write_text(
            changed.replace("when: 'citizen.status == \"active\"'", "require_case_ref: true")
        )
        assert "1 updated" in run_cli("apply", str(folder), database_url=scratch_database).stdout
        decision = process_b.send({"decide": ASK})["decisions"]["licence_status"]
        assert decision["reason"] == "agreement licence-status-for-welfare needs a case reference"
        with_ref = process_a.send({"decide": {**ASK, "case_ref": "C-1"}})["decisions"]["licence_status"]
        assert (with_ref["effect"], with_ref["version"]) == ("permit", 3)
