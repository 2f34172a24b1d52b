"""Loading a policy folder, and the ``tellonce policies`` commands."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from service.config import get_settings
from service.policy.cases import folder_policy, load_cases, run_cases
from service.policy.cli import app as policies_app
from service.policy.loader import load_policy_folder
from service.sourcefile import SourceFileError
from tests.conftest import DEMO_POLICIES, TEST_POLICIES

BROKEN_DVLA = """\
owner: dvla
agreements:
  - id: licence-for-welfare
    consumer: welfare
    fields: [licence_status, tax_code, shoe_size]
    actions: [read, delete]
    purposes: [benefit-eligibility]
    legal_basis: "law"
  - id: licence-for-welfare
    consumer: nobody
    fields: [points]
    actions: [read]
    purposes: [gossip]
    legal_basis: "law"
    valid_from: 2027-01-01
    valid_until: 2026-01-01
  - id: bad-condition
    consumer: revenue
    fields: [points]
    actions: [read]
    purposes: [tax-administration]
    when: 'citizen.status =='
  - id: forbid-with-case
    consumer: revenue
    fields: [points]
    actions: [read]
    effect: forbid
    require_case_ref: true
"""

BROKEN_REVENUE = """\
owner: revenue
agreements:
  - id: licence-for-welfare
    consumer: welfare
    fields: [tax_code]
    actions: [read]
    purposes: [benefit-eligibility]
    legal_basis: "law"
"""


def policy_folder(tmp_path: Path, **files: str) -> Path:
    folder = tmp_path / "policies"
    folder.mkdir()
    shutil.copy(TEST_POLICIES / "catalog.yaml", folder / "catalog.yaml")
    for name, text in files.items():
        (folder / f"{name}.yaml").write_text(text)
    return folder


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str


def run_cli(*args: str, database_url: str | None = None) -> CliResult:
    """The ``tellonce policies`` command, in this process (a subprocess costs seconds of imports)."""
    env = {"TELLONCE_DATABASE_URL": database_url} if database_url else {}
    old = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(policies_app, list(args))
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        get_settings.cache_clear()
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return CliResult(result.exit_code, result.stdout, result.stderr)


def run_cli_process(*args: str, database_url: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin"}
    if database_url:
        env["TELLONCE_DATABASE_URL"] = database_url
    return subprocess.run(
        [sys.executable, "-m", "service.cli", "policies", *args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


# An unquoted date in month 13, which YAML reads as a timestamp and cannot build, in a file
# with other problems.
UNREADABLE_DATE = """\
owner: dvla
agreements:
  - id: points-for-revenue
    consumer: revenue
    fields: [points]
    actions: [read]
    purposes: [gossip]
    legal_basis: "law"
    valid_from: 2027-13-01
    valid_until: 2027-12-31
  - id: status-for-welfare
    consumer: nobody
    fields: [licence_status]
    actions: [delete]
    purposes: [benefit-eligibility]
    legal_basis: "law"
"""


class TestLoader:
    def test_demo_and_test_folders_are_valid(self) -> None:
        demo = load_policy_folder(DEMO_POLICIES)
        assert {a.owner for a in demo.agreements} >= {"register", "dvla", "hmrc", "dwp", "hmpo"}
        assert {a.spec.effect for a in demo.agreements} == {"permit", "forbid"}
        assert len(load_policy_folder(TEST_POLICIES).agreements) == 8

    def test_every_error_is_reported_with_file_and_line(self, tmp_path: Path) -> None:
        folder = policy_folder(tmp_path, dvla=BROKEN_DVLA)
        with pytest.raises(SourceFileError) as caught:
            load_policy_folder(folder)
        path = str(folder / "dvla.yaml")
        lines = [str(e) for e in caught.value.errors]
        # The first agreement's unknown action does not hide its fields' problems.
        assert lines == [
            f"{path}:5: agreement licence-for-welfare: dvla does not own field 'tax_code' (owner: revenue)",
            f"{path}:5: agreement licence-for-welfare: unknown field 'shoe_size'",
            f"{path}:6: agreements.0.actions.1: Input should be 'read', 'lookup', 'verify', 'history', "
            "'subscribe', 'write' or 'erase'",
            f"{path}:9: duplicate agreement id 'licence-for-welfare' (first in {path}:3)",
            f"{path}:10: agreement licence-for-welfare: unknown department 'nobody'",
            f"{path}:13: agreement licence-for-welfare: unknown purpose 'gossip'",
            f"{path}:16: agreement licence-for-welfare: "
            "the end date (2026-01-01) is before the start date (2027-01-01)",
            f"{path}:17: agreement bad-condition: a permit needs a legal basis",
            f"{path}:22: agreement bad-condition: invalid condition: Failed to parse expression "
            "'citizen.status ==': ERROR: <input>:1:18: Syntax error: mismatched input '<EOF>' expecting "
            "{'[', '{', '(', '.', '-', '!', 'true', 'false', 'null', NUM_FLOAT, NUM_INT, NUM_UINT, STRING, "
            "BYTES, IDENTIFIER}",
            f"{path}:28: agreement forbid-with-case: only a permit can require a case reference",
        ]

    def test_field_ownership_and_unknown_fields(self, tmp_path: Path) -> None:
        text = BROKEN_DVLA.replace("[read, delete]", "[read]")
        folder = policy_folder(tmp_path, dvla=text)
        with pytest.raises(SourceFileError) as caught:
            load_policy_folder(folder)
        path = str(folder / "dvla.yaml")
        lines = [str(e) for e in caught.value.errors]
        assert (
            f"{path}:5: agreement licence-for-welfare: dvla does not own field 'tax_code' (owner: revenue)"
            in lines
        )
        assert f"{path}:5: agreement licence-for-welfare: unknown field 'shoe_size'" in lines

    def test_ids_are_unique_across_files_and_owners_known(self, tmp_path: Path) -> None:
        good_dvla = (TEST_POLICIES / "dvla.yaml").read_text()
        folder = policy_folder(
            tmp_path,
            dvla=good_dvla.replace("licence-status-for-welfare", "licence-for-welfare"),
            revenue=BROKEN_REVENUE,
            other="owner: ministry-of-magic\nagreements: []\n",
        )
        with pytest.raises(SourceFileError) as caught:
            load_policy_folder(folder)
        lines = [str(e) for e in caught.value.errors]
        assert lines == [
            f"{folder / 'other.yaml'}:1: unknown department 'ministry-of-magic'",
            f"{folder / 'revenue.yaml'}:3: duplicate agreement id 'licence-for-welfare' "
            f"(first in {folder / 'dvla.yaml'}:3)",
        ]

    def test_a_condition_on_a_name_no_variable_holds_is_an_error_at_its_line(self, tmp_path: Path) -> None:
        text = (TEST_POLICIES / "dvla.yaml").read_text().replace("citizen.status ==", "citizen.stauts ==")
        folder = policy_folder(tmp_path, dvla=text)
        with pytest.raises(SourceFileError) as caught:
            load_policy_folder(folder)
        assert [str(e) for e in caught.value.errors] == [
            f"{folder / 'dvla.yaml'}:9: agreement licence-status-for-welfare: condition names unknown "
            "variable(s) citizen.stauts; only citizen.status, request.purpose, request.case_ref and "
            "request.time exist"
        ]

    def test_a_value_yaml_cannot_build_is_an_error_at_its_line(self, tmp_path: Path) -> None:
        # A date that does not exist, or a tag the safe loader refuses, ends YAML's own
        # construction with an exception; each is reported at its line with the rest.
        text = (
            (TEST_POLICIES / "dvla.yaml")
            .read_text()
            .replace("valid_until: 2020-01-01", "valid_until: 2027-02-30")
            .replace('"Road Traffic Offenders Act 1988"', "!!python/name:os.system")
        )
        folder = policy_folder(tmp_path, dvla=text)
        with pytest.raises(SourceFileError) as caught:
            load_policy_folder(folder)
        path = folder / "dvla.yaml"
        assert [str(e) for e in caught.value.errors] == [
            f"{path}:16: agreement licence-for-revenue: valid_until: invalid value: "
            "day is out of range for month",
            f"{path}:21: agreement no-points-for-welfare: legal_basis: invalid value: could not determine a "
            "constructor for the tag 'tag:yaml.org,2002:python/name:os.system'",
        ]

    def test_a_value_yaml_cannot_build_does_not_hide_the_files_other_problems(self, tmp_path: Path) -> None:
        folder = policy_folder(tmp_path, dvla=UNREADABLE_DATE)
        with pytest.raises(SourceFileError) as caught:
            load_policy_folder(folder)
        path = folder / "dvla.yaml"
        assert [str(e) for e in caught.value.errors] == [
            # The entry's other parts are judged all the same.
            f"{path}:7: agreement points-for-revenue: unknown purpose 'gossip'",
            f"{path}:9: agreement points-for-revenue: valid_from: invalid value: month must be in 1..12",
            f"{path}:12: agreement status-for-welfare: unknown department 'nobody'",
            f"{path}:14: agreements.1.actions.0: Input should be 'read', 'lookup', 'verify', 'history', "
            "'subscribe', 'write' or 'erase'",
        ]

    def test_a_value_yaml_cannot_build_outside_an_agreement_is_reported_as_it_is(
        self, tmp_path: Path
    ) -> None:
        text = UNREADABLE_DATE.replace("owner: dvla", "owner: !!int dvla")
        folder = policy_folder(tmp_path, dvla=text)
        with pytest.raises(SourceFileError) as caught:
            load_policy_folder(folder)
        path = folder / "dvla.yaml"
        # The file fails as a whole (no owner to judge its entries under), with every value
        # YAML could not build, and nothing of the schema's refusal of them.
        assert [str(e) for e in caught.value.errors] == [
            f"{path}:1: invalid value: invalid literal for int() with base 10: 'dvla'",
            f"{path}:9: invalid value: month must be in 1..12",
        ]

    def test_an_entry_that_fails_the_schema_is_still_judged_by_the_rules(self, tmp_path: Path) -> None:
        """``tellonce policies apply`` reads an entry as the API reads a body: no
        fields and a basis a forbid cannot have come back together."""
        text = (
            "owner: dvla\nagreements:\n  - id: forbid-by-consent\n    consumer: revenue\n"
            "    fields: []\n    actions: [read]\n    purposes: [gossip]\n    effect: forbid\n"
            "    basis: consent\n"
        )
        folder = policy_folder(tmp_path, dvla=text)
        with pytest.raises(SourceFileError) as caught:
            load_policy_folder(folder)
        path = folder / "dvla.yaml"
        assert [str(e) for e in caught.value.errors] == [
            f"{path}:5: agreements.0.fields: List should have at least 1 item after validation, not 0",
            f"{path}:7: agreement forbid-by-consent: unknown purpose 'gossip'",
            f"{path}:9: agreement forbid-by-consent: only a permit can have basis consent",
        ]

    def test_a_malformed_field_does_not_hide_the_others_problems(self, tmp_path: Path) -> None:
        text = BROKEN_REVENUE.replace("owner: revenue", "owner: dvla").replace(
            "fields: [tax_code]", "fields: [Bad, tax_code, shoe_size, points]"
        )
        folder = policy_folder(tmp_path, dvla=text)
        with pytest.raises(SourceFileError) as caught:
            load_policy_folder(folder)
        path = folder / "dvla.yaml"
        assert [str(e) for e in caught.value.errors] == [
            f"{path}:5: agreement licence-for-welfare: dvla does not own field 'tax_code' (owner: revenue)",
            f"{path}:5: agreement licence-for-welfare: unknown field 'shoe_size'",
            f"{path}:5: agreements.0.fields.0: String should match pattern '^[a-z][a-z0-9_]{{0,62}}$'",
        ]

    def test_catalog_and_agreement_errors_together(self, tmp_path: Path) -> None:
        folder = policy_folder(tmp_path, dvla="owner: dvla\nagreements:\n  - id: x\n")
        (folder / "catalog.yaml").write_text("departments: []\npurposes: []\n")
        with pytest.raises(SourceFileError) as caught:
            load_policy_folder(folder)
        files = {Path(e.file).name for e in caught.value.errors}
        assert files == {"catalog.yaml", "dvla.yaml"}


DELAYED = """\
owner: dvla
agreements:
  - id: points-for-fraud
    consumer: revenue
    fields: [points]
    actions: [read]
    purposes: [tax-administration]
    legal_basis: "law"
    disclosure: after-case-closed
    max_delay: {max_delay}
"""


class TestDelayedDisclosure:
    def test_a_max_delay_in_days_compiles_to_a_grant_that_needs_a_case_ref(self, tmp_path: Path) -> None:
        folder = load_policy_folder(policy_folder(tmp_path, dvla=DELAYED.format(max_delay="P365D")))
        [agreement] = [a for a in folder.agreements if a.spec.id == "points-for-fraud"]
        assert agreement.spec.disclosure_delay() == timedelta(days=365)

    @pytest.mark.parametrize(
        ("max_delay", "problem"),
        [
            (
                "P1Y",
                "'P1Y' is not an ISO 8601 duration in weeks, days, hours, minutes or seconds (e.g. P365D)",
            ),
            ("PT", "'PT' is not an ISO 8601 duration in weeks, days, hours, minutes or seconds (e.g. P365D)"),
            ("P2000D", "max_delay must be more than nothing and at most 1826 days"),
            ("P0D", "max_delay must be more than nothing and at most 1826 days"),
        ],
    )
    def test_a_bad_max_delay_is_named_with_its_line(
        self, tmp_path: Path, max_delay: str, problem: str
    ) -> None:
        folder = policy_folder(tmp_path, dvla=DELAYED.format(max_delay=max_delay))
        with pytest.raises(SourceFileError) as caught:
            load_policy_folder(folder)
        assert [str(e) for e in caught.value.errors] == [
            f"{folder / 'dvla.yaml'}:10: agreement points-for-fraud: {problem}"
        ]

    def test_delayed_disclosure_needs_a_max_delay_and_a_permit(self, tmp_path: Path) -> None:
        text = DELAYED.replace("    max_delay: {max_delay}\n", "") + (
            "  - id: forbid-delayed\n    consumer: revenue\n    fields: [points]\n    actions: [read]\n"
            "    effect: forbid\n    disclosure: after-case-closed\n    max_delay: P1D\n"
        )
        folder = policy_folder(tmp_path, dvla=text)
        with pytest.raises(SourceFileError) as caught:
            load_policy_folder(folder)
        messages = [str(e).split(": ", 1)[1] for e in caught.value.errors]
        assert messages == [
            "agreement points-for-fraud: disclosure: after-case-closed needs a max_delay, such as P365D",
            "agreement forbid-delayed: only a permit can delay disclosure",
        ]


class TestPolicyCases:
    def test_demo_cases_pass(self) -> None:
        policy = folder_policy(load_policy_folder(DEMO_POLICIES))
        cases = load_cases(DEMO_POLICIES)
        assert len(cases) >= 30
        assert run_cases(policy, cases) == []

    def test_cli_reports_a_readable_diff_and_exits_1(self, tmp_path: Path) -> None:
        folder = policy_folder(
            tmp_path, **{p.stem: p.read_text() for p in TEST_POLICIES.glob("*.yaml") if p.stem != "catalog"}
        )
        (folder / "tests").mkdir()
        (folder / "tests" / "cases.yaml").write_text(
            "- name: welfare reads licence status\n"
            "  consumer: welfare\n"
            "  action: read\n"
            "  fields: [licence_status, tax_code]\n"
            "  purpose: benefit-eligibility\n"
            "  citizen_status: active\n"
            "  expect: {licence_status: permit, tax_code: permit}\n"
        )
        result = run_cli_process("test", str(folder))
        assert result.returncode == 1
        assert result.stderr.splitlines()[:3] == [
            f"{folder / 'tests' / 'cases.yaml'}:1: welfare read tax_code for benefit-eligibility "
            "(welfare reads licence status)",
            "  - expected: permit",
            "  + got:      deny "
            "(agreement tax-code-for-fraud covers fraud-investigation, not benefit-eligibility)",
        ]
        assert "1 of 2 expectations failed in 1 cases" in result.stderr

    def test_cli_passes_the_demo_cases(self) -> None:
        result = run_cli("test", str(DEMO_POLICIES))
        assert result.returncode == 0, result.stderr
        assert "expectations passed" in result.stdout


class TestApplyCli:
    def test_invalid_folder_stores_nothing(self, tmp_path: Path, scratch_database: str) -> None:
        folder = policy_folder(tmp_path, dvla=BROKEN_DVLA)
        result = run_cli("apply", str(folder), database_url=scratch_database)
        assert result.returncode == 1
        assert f"{folder / 'dvla.yaml'}:10: agreement licence-for-welfare: unknown department 'nobody'" in (
            result.stderr
        )
        assert "nothing stored" in result.stderr
        explained = run_cli(
            "explain",
            "--consumer",
            "dvla",
            "--field",
            "points",
            "--purpose",
            "tax-administration",
            database_url=scratch_database,
        )
        # Not even the (valid) catalog was stored: explain has nothing to decide against.
        assert explained.returncode == 2
        assert "No catalog has been applied yet" in explained.stderr

    def test_a_file_with_a_value_yaml_cannot_build_stores_nothing(
        self, tmp_path: Path, scratch_database: str
    ) -> None:
        folder = policy_folder(tmp_path, dvla=UNREADABLE_DATE)
        result = run_cli("apply", str(folder), database_url=scratch_database)
        assert result.returncode == 1
        path = folder / "dvla.yaml"
        assert (
            f"{path}:9: agreement points-for-revenue: valid_from: invalid value: month must be in 1..12"
            in (result.stderr)
        )
        assert f"{path}:12: agreement status-for-welfare: unknown department 'nobody'" in result.stderr
        assert "nothing stored" in result.stderr
        # Not even the valid catalog: nothing was applied.
        explained = run_cli(
            "explain",
            "--consumer",
            "revenue",
            "--field",
            "points",
            "--purpose",
            "tax-administration",
            database_url=scratch_database,
        )
        assert explained.returncode == 2
        assert "No catalog has been applied yet" in explained.stderr

    def test_apply_versions_prune_and_export(self, tmp_path: Path, scratch_database: str) -> None:
        first = run_cli("apply", str(TEST_POLICIES), "--author", "alice", database_url=scratch_database)
        assert first.returncode == 0, first.stderr
        assert "agreements: 8 created, 0 updated, 0 revoked, 0 unchanged" in first.stdout
        again = run_cli("apply", str(TEST_POLICIES), database_url=scratch_database)
        assert "agreements: 0 created, 0 updated, 0 revoked, 8 unchanged" in again.stdout
        assert "policy epoch" not in again.stdout

        folder = policy_folder(
            tmp_path, dvla=(TEST_POLICIES / "dvla.yaml").read_text().replace("[read, subscribe]", "[read]")
        )
        kept = run_cli("apply", str(folder), database_url=scratch_database)
        assert "agreements: 0 created, 1 updated, 0 revoked, 2 unchanged" in kept.stdout
        assert "kept address-updates-from-dvla: not in" in kept.stdout
        pruned = run_cli(
            "apply", str(folder), "--prune", "--reason", "register moved on", database_url=scratch_database
        )
        assert "agreements: 0 created, 0 updated, 5 revoked, 3 unchanged" in pruned.stdout

        explained = run_cli(
            "explain",
            "--consumer",
            "welfare",
            "--field",
            "licence_status",
            "--field",
            "date_of_birth",
            "--purpose",
            "benefit-eligibility",
            "--citizen-status",
            "active",
            database_url=scratch_database,
        )
        decisions = json.loads(explained.stdout)["decisions"]
        assert decisions["licence_status"]["effect"] == "permit"
        assert decisions["licence_status"]["version"] == 2
        assert decisions["date_of_birth"]["effect"] == "deny"

        exported = tmp_path / "exported"
        result = run_cli("export", str(exported), database_url=scratch_database)
        assert result.returncode == 0, result.stderr
        assert sorted(p.name for p in exported.iterdir()) == ["catalog.yaml", "dvla.yaml"]
        reloaded = load_policy_folder(exported)
        assert sorted(a.spec.model_dump_json() for a in reloaded.agreements) == sorted(
            a.spec.model_dump_json() for a in load_policy_folder(folder).agreements
        )
