"""``tellonce demo`` end to end: a real server, real department clients, the real report.

One demo run (50 citizens, 5 seconds of traffic) is shared by the module's report tests;
re-running on the same store is tested on its own.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import DEMO_POLICIES
from tests.fixtures.databases import create_scratch_database, drop_scratch_database
from tests.fixtures.server import free_port

pytestmark = pytest.mark.e2e

DEMO_TIMEOUT_SECONDS = 150


@dataclass
class DemoRun:
    output: str
    workdir: Path
    database_url: str

    def number(self, pattern: str) -> int:
        match = re.search(pattern, self.output)
        assert match is not None, f"{pattern!r} not in the report:\n{self.output}"
        return int(match.group(1))


def run_demo(database_url: str, workdir: Path, *args: str) -> DemoRun:
    env = {
        **os.environ,
        "TELLONCE_ENV": "development",
        "TELLONCE_DATABASE_URL": database_url,
        "TELLONCE_DATA_DIR": str(workdir / ".tellonce"),
        "TELLONCE_POLICIES_DIR": str(DEMO_POLICIES),
        # A wide virtual terminal, so the report's tables are not wrapped.
        "COLUMNS": "160",
    }
    env.pop("TELLONCE_ROOT_KEY", None)
    command = [sys.executable, "-m", "service.cli", "demo", "--port", str(free_port()), "--exit-after-report"]
    completed = subprocess.run(
        [*command, *args],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=DEMO_TIMEOUT_SECONDS,
        check=False,
    )
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output
    return DemoRun(output, workdir, database_url)


@pytest.fixture(scope="module")
async def demo_run(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[DemoRun]:
    url = await create_scratch_database(database_url)
    try:
        yield run_demo(url, tmp_path_factory.mktemp("demo"), "--citizens", "50", "--duration", "5")
    finally:
        await drop_scratch_database(url)


def witness_lines(output: str) -> list[tuple[str, str]]:
    """(URL, vkey) of each witness the demo said it started."""
    found = re.findall(r"^witness: the .+ on (http://127\.0\.0\.1:\d+) \((\S+)\)$", output, re.MULTILINE)
    assert len(found) == 2, output
    return found


class TestDemoReport:
    def test_counts_requests_with_denials_and_no_errors(self, demo_run: DemoRun) -> None:
        totals = r"requests: (\d+), allowed: (\d+), denied: (\d+), errors: (\d+)"
        match = re.search(totals, demo_run.output)
        assert match is not None, demo_run.output
        requests, allowed, denied, errors = (int(g) for g in match.groups())
        assert requests == allowed + denied + errors
        assert allowed > 0
        assert denied > 0
        assert errors == 0, demo_run.output

    def test_over_reaching_requests_are_listed_as_refused(self, demo_run: DemoRun) -> None:
        assert "Over-reaching requests, refused and audited" in demo_run.output
        assert "over-reach refused" in demo_run.output

    def test_the_audit_log_verifies(self, demo_run: DemoRun) -> None:
        match = re.search(
            r"^audit verified: (\d+) entries, checkpoint ([A-Za-z0-9+/]{43}=), cosigned by 2 of 2 witnesses$",
            demo_run.output,
            re.MULTILINE,
        )
        assert match is not None, demo_run.output
        assert "witness: the National Audit Office on http://127.0.0.1:" in demo_run.output
        assert "witness: the Information Commissioner on http://127.0.0.1:" in demo_run.output
        requests = demo_run.number(r"requests: (\d+)")
        # 50 registrations, then an entry for every counted request at least.
        assert int(match.group(1)) >= 50 + requests

    def test_signing_owners_releases_were_re_decided_and_justified(self, demo_run: DemoRun) -> None:
        for owner in ("register", "dvla"):
            checked = demo_run.number(
                rf"releases re-decided: (\d+) releases of {owner}'s fields checked, "
                rf"all justified by agreements signed by {owner}"
            )
            assert checked > 0, demo_run.output
        assert "NOT justified" not in demo_run.output
        # The keys were made in the data dir, private; the repository's policies stay unsigned.
        for owner in ("register", "dvla"):
            key = demo_run.workdir / ".tellonce" / f"owner-{owner}.key"
            assert stat.S_IMODE(key.stat().st_mode) == 0o600

    def test_notifications_were_delivered_and_saved_re_tellings(self, demo_run: DemoRun) -> None:
        assert demo_run.number(r"notifications delivered: (\d+)") > 0
        assert demo_run.number(r"re-tellings avoided: (\d+)") > 0

    def test_the_portal_was_told_of_accesses_and_of_a_closed_case(self, demo_run: DemoRun) -> None:
        assert demo_run.number(r"access notices delivered to the citizen portal: (\d+)") > 0
        # DWP closed its first fraud case when the traffic stopped: its reads were disclosed.
        assert demo_run.number(r"DWP closed a fraud case\D+(\d+)") == 1
        assert demo_run.number(r"disclosures made when a case closed: (\d+)") > 0

    def test_releases_refused_for_lack_of_consent_are_counted(self, demo_run: DemoRun) -> None:
        assert demo_run.number(r"releases refused for lack of consent: (\d+)") > 0, demo_run.output
        assert "citizen consented to the support scheme" in demo_run.output
        assert "support application assessed" in demo_run.output
        # The council, the consumer, is told of each consent through its subscription.
        assert "council told a consent was active" in demo_run.output
        assert demo_run.number(r"withheld after an objection: (\d+)") >= 0

    def test_clients_file_is_private_and_names_every_department(self, demo_run: DemoRun) -> None:
        clients = demo_run.workdir / ".tellonce" / "clients.json"
        assert stat.S_IMODE(clients.stat().st_mode) == 0o600
        document = json.loads(clients.read_text())
        assert set(document["systems"]) >= {"register", "dvla", "hmrc", "dwp", "hmpo", "council"}
        assert "data-owner" in document["data_owners"]["dvla"]["roles"]
        assert "auditor" in document["auditor"]["roles"]
        assert document["auditor"]["client_id"] in demo_run.output

    def test_the_server_log_holds_no_national_id(self, demo_run: DemoRun) -> None:
        log = (demo_run.workdir / ".tellonce" / "server.log").read_text(errors="replace")
        # The synthetic population's national ids all have the reserved ZZ prefix.
        assert not re.search(r"ZZ\d{6}[A-D]", log)

    def test_the_server_log_is_info_json_lines(self, demo_run: DemoRun) -> None:
        lines = (demo_run.workdir / ".tellonce" / "server.log").read_text(errors="replace").splitlines()
        requests = [json.loads(line) for line in lines if line.startswith("{") and '"request"' in line]
        assert requests, "no request lines in the demo's server log"
        assert {r["level"] for r in requests} == {"info"}
        assert {"method", "route", "status", "duration_ms", "request_id"} <= set(requests[0])


async def register_through_the_api(run: DemoRun) -> None:
    """What a README reader does between two `make run`s: register a citizen over HTTP."""

    from service.app import create_app
    from service.config import Settings

    data_dir = run.workdir / ".tellonce"
    registrar = json.loads((data_dir / "clients.json").read_text())["systems"]["register"]
    app = create_app(
        Settings(env="development", database_url=run.database_url, data_dir=data_dir, log_level="WARNING")
    )
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000") as http:
            token = await http.post(
                "/oauth/token",
                data={"grant_type": "client_credentials"},
                auth=(registrar["client_id"], registrar["client_secret"]),
            )
            assert token.status_code == 200, token.text
            headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
            created = await http.post("/v1/citizens", json={"national_id": "AB123456C"}, headers=headers)
            assert created.status_code == 201, created.text


class TestDemoRerun:
    async def test_a_second_run_after_api_use_reuses_the_store(self, demo_run: DemoRun) -> None:
        clients_file = demo_run.workdir / ".tellonce" / "clients.json"
        clients_before = json.loads(clients_file.read_text())

        await register_through_the_api(demo_run)
        second = run_demo(demo_run.database_url, demo_run.workdir, "--citizens", "50", "--duration", "2")

        assert "reusing the store: 50 citizens already seeded" in second.output
        assert "keeping 1 citizen registered since the seeding" in second.output
        assert "seeding citizens" not in second.output
        # The same clients, and the file names where this run served (each run here picks
        # its own port, as `tellonce demo --port` does).
        clients_after = json.loads(clients_file.read_text())
        served = re.search(r"starting the API on (http://127\.0\.0\.1:\d+)", second.output)
        assert served is not None, second.output
        assert clients_after["base_url"] == served.group(1) != clients_before["base_url"]
        assert clients_after["token_url"] == f"{served.group(1)}/oauth/token"
        for part in ("systems", "data_owners", "auditor"):
            assert clients_after[part] == clients_before[part]
        assert stat.S_IMODE(clients_file.stat().st_mode) == 0o600
        # The agreement the first run revoked is active again, and the log still verifies.
        assert "1 updated" in second.output
        assert re.search(r"audit verified: \d+ entries, .* cosigned by 2 of 2 witnesses", second.output), (
            second.output
        )
        # The same two witnesses (their keys and state are in the data dir), both stopped
        # when the demo stopped.
        first, again = witness_lines(demo_run.output), witness_lines(second.output)
        assert [vkey for _url, vkey in again] == [vkey for _url, vkey in first]
        for slug in ("nao", "ico"):
            key = demo_run.workdir / ".tellonce" / "witnesses" / f"{slug}.key"
            assert stat.S_IMODE(key.stat().st_mode) == 0o600
        for url, _vkey in first + again:
            with pytest.raises(httpx.TransportError):
                httpx.get(f"{url}/checkpoint", params={"origin": "-"}, timeout=2)
