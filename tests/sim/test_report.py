from __future__ import annotations

import io
from collections import Counter
from pathlib import Path
from typing import Any

from rich.console import Console

from service.audit.value import value_by_owner
from service.config import Settings
from service.sim.client import Credentials
from service.sim.government import Prepared, sign_in_lines
from service.sim.report import AuditSummary, DemoReport, render
from service.sim.setup import DemoClients
from service.sim.tally import Denial, Tally


def _tally() -> Tally:
    tally = Tally()
    for status in (200, 200, 201, 403, 404, 500):
        tally.record_call("dwp", status)
    tally.record_call("dvla", 200)
    tally.life_events["moved house"] += 2
    tally.actions["dwp updated an address"] += 1
    tally.denials.append(Denial("dwp", "tax code for benefit eligibility (wrong purpose)", 403))
    return tally


def _rendered(report: DemoReport) -> str:
    out = io.StringIO()
    render(Console(file=out, width=120, color_system=None), report)
    return out.getvalue()


class TestTally:
    def test_counts_allowed_denied_and_errors_by_department(self) -> None:
        tally = _tally()
        dwp = tally.departments["dwp"]
        assert (dwp.requests, dwp.allowed, dwp.denied, dwp.errors) == (6, 3, 2, 1)
        assert (tally.total_requests, tally.total_allowed, tally.total_denied) == (7, 4, 2)

    def test_a_redelivered_event_is_counted_once_per_department(self) -> None:
        tally = Tally()
        assert tally.record_notification("dwp", "evt-1", "webhook")
        assert not tally.record_notification("dwp", "evt-1", "webhook")
        assert tally.record_notification("hmrc", "evt-1", "feed")
        assert tally.total_notifications == 2
        assert tally.channels == Counter({"webhook": 1, "feed": 1})


class TestValueByOwner:
    def test_folds_usage_rows_and_leaves_out_an_owners_own_use(self) -> None:
        usage: list[dict[str, Any]] = [
            {"consumer": "dvla", "owner": "register", "field": "address", "purpose": "p", "count": 5},
            {"consumer": "dwp", "owner": "register", "field": "address", "purpose": "p", "count": 2},
            {"consumer": "dvla", "owner": "register", "field": "postcode", "purpose": "p", "count": 3},
            {"consumer": "dvla", "owner": "dvla", "field": "licence_status", "purpose": "p", "count": 9},
            {"consumer": "dwp", "owner": "dvla", "field": "licence_status", "purpose": "p", "count": 4},
            # A registration by the register writes other owners' fields, with no purpose.
            {"consumer": "register", "owner": "dwp", "field": "ni_number", "purpose": None, "count": 7},
        ]
        assert value_by_owner(usage) == {
            "register": Counter({"dvla": 8, "dwp": 2}),
            "dvla": Counter({"dwp": 4}),
        }


class TestRender:
    def test_prints_the_fixed_summary_lines(self) -> None:
        report = DemoReport(
            citizens=50,
            seconds=5.0,
            tally=_tally(),
            value_by_owner={"register": Counter({"dvla": 8})},
            audit=AuditSummary(entries=120, root="q1w2e3=="),
        )
        report.tally.record_notification("hmrc", "evt-9", "webhook")
        report.tally.access_notices, report.tally.disclosed_on_close = 12, 3
        text = _rendered(report)
        assert "requests: 7, allowed: 4, denied: 2, errors: 1" in text
        assert "notifications delivered: 1 (1 by webhook)" in text
        assert "re-tellings avoided: 0" in text
        assert "access notices delivered to the citizen portal: 12" in text
        assert "disclosures made when a case closed: 3" in text
        assert "audit verified: 120 entries, checkpoint q1w2e3==" in text
        assert "tax code for benefit eligibility (wrong purpose)" in text
        assert "register" in text

    def test_names_the_witnesses_that_cosigned(self) -> None:
        report = DemoReport(
            citizens=1,
            seconds=1.0,
            tally=Tally(),
            audit=AuditSummary(entries=9, root="r00t==", cosigned=2, witnesses=2),
        )
        assert "audit verified: 9 entries, checkpoint r00t==, cosigned by 2 of 2 witnesses" in _rendered(
            report
        )

    def test_says_so_when_the_audit_did_not_verify(self) -> None:
        report = DemoReport(
            citizens=1, seconds=1.0, tally=Tally(), audit_problem="entry 7 at leaf 6 was changed"
        )
        text = _rendered(report)
        assert "audit NOT verified: entry 7 at leaf 6 was changed" in text
        assert "audit verified:" not in text


class TestSignInLines:
    def test_names_the_clients_file_in_the_configured_data_directory(self, tmp_path: Path) -> None:
        owner = Credentials("dvla", ("data-owner",), "dvla-owner", "owner-secret")
        auditor = Credentials("audit-office", ("auditor",), "auditor", "auditor-secret")
        prepared = Prepared(DemoClients({}, {"dvla": owner}, auditor), [], [], 7, tmp_path / "policies", {})
        data = tmp_path / "elsewhere"
        lines = sign_in_lines(
            Settings(data_dir=data), prepared, "http://127.0.0.1:8000", console_available=False
        )
        assert lines[-1] == f"every demo client's credentials: {data / 'clients.json'}"
