"""tellonce as it is deployed: three ``tellonce serve`` replicas, one ``tellonce worker`` and
HAProxy on one PostgreSQL, started and stopped by ``scripts/replicas.sh``, the script
operators run, on loopback ports chosen here. Driven over HTTP with the client library
(``tellonce_client``) and real tokens.

What each replica keeps to itself must not weaken the deployment: the rate limit is one
bucket per client, an assertion is used once, and a revocation or a disabled client is
seen by every replica on its next request. A replica killed under load loses no write it
acknowledged and leaves a log that verifies. The tests run in the order written: the last
kills a replica.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from authlib.oauth2.rfc7523 import private_key_jwt_sign
from joserfc.jwk import ECKey
from sqlalchemy import func, select
from tellonce_client import ClientSecret, RetryPolicy, TellonceClient
from tellonce_client.errors import RateLimited, TellonceError

from service.audit.models import AuditEntryRow, AuditLeaf
from service.auth import service as auth_service
from service.config import Settings
from service.db import Database
from tests.conftest import REPO_ROOT, server_env
from tests.fixtures.databases import create_scratch_database, drop_scratch_database
from tests.fixtures.server import free_port

pytestmark = [pytest.mark.postgres, pytest.mark.e2e]

SCRIPT = REPO_ROOT / "scripts" / "replicas.sh"
REPLICAS = 3
PURPOSE = "benefit-eligibility"
NO_RETRY = RetryPolicy(attempts=1)
# The rate-limited client: 10 requests a second, 10 at once; sent 30 a second for 3 s.
RATE, BURST, SEND_RATE, SEND_SECONDS = 10.0, 10, 30.0, 3.0
WRITERS = 4
WRK_CONNECTIONS = 8
# HAProxy keeps idle connections to each replica, and may send a request on one to the
# killed replica until it has read that connection's close, a few milliseconds after the
# process is gone (in one CI run under load, a write sent 8 ms after the test saw the
# replica gone failed so). Such a write was in flight on the killed replica: nothing
# acknowledged it, and HAProxy cannot resend a write.
IDLE_CONNECTION_GRACE = 0.25
NATIONAL_IDS = itertools.count()

# name -> (department, roles, rate per second, burst); None: the defaults.
CLIENTS: dict[str, tuple[str, list[str], float | None, int | None]] = {
    "registrar": ("register", ["registrar"], None, None),
    "writer": ("dvla", ["writer"], None, None),
    "owner": ("dvla", ["data-owner"], None, None),
    "welfare": ("welfare", ["consumer"], None, None),
    "limited": ("welfare", ["consumer"], RATE, BURST),
    "disposable": ("welfare", ["consumer"], None, None),
    "welfare-admin": ("welfare", ["admin"], None, None),
    # wrk's client: as high a rate as a client may have, far above what the topology
    # serves, so every refusal it sees is the topology's doing.
    "load": ("welfare", ["consumer"], auth_service.MAX_RATE_PER_SECOND, auth_service.MAX_RATE_BURST),
}


@dataclass
class Site:
    front: str
    replicas: list[str]
    state: Path
    env: dict[str, str]
    database_url: str
    secrets: dict[str, tuple[str, str]]
    key_client: tuple[str, ECKey]
    open_clients: list[TellonceClient] = field(default_factory=list)
    # Which replica answered each of REPLICAS readiness checks through HAProxy sent the
    # moment `up` returned.
    first_answers: list[str] = field(default_factory=list)

    def client(self, name: str, base_url: str | None = None) -> TellonceClient:
        made = TellonceClient(base_url or self.front, ClientSecret(*self.secrets[name]), retry=NO_RETRY)
        self.open_clients.append(made)
        return made

    def pid(self, name: str) -> int:
        return int((self.state / f"{name}.pid").read_text())

    def script(self, command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(SCRIPT), command],
            cwd=REPO_ROOT,
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )


async def _make_clients(
    url: str, data: Path, root_key: str, jwk: dict[str, Any]
) -> dict[str, tuple[str, str]]:
    """Clients made in-process (the CLI takes seconds each), once the script has migrated."""
    settings = Settings(env="test", database_url=url, data_dir=data, root_key=root_key)  # type: ignore[arg-type]
    database = Database(settings)
    secrets: dict[str, tuple[str, str]] = {}
    try:
        async with database.sessions.begin() as session:
            for name, (department, roles, rate, burst) in CLIENTS.items():
                created = await auth_service.create_client(
                    session, department=department, roles=roles, rate_per_second=rate, rate_burst=burst
                )
                assert created.client_secret is not None
                secrets[name] = (created.client_id, created.client_secret)
            by_key = await auth_service.create_client(
                session, department="welfare", roles=["consumer"], public_jwk=jwk
            )
            secrets["key"] = (by_key.client_id, "")
    finally:
        await database.dispose()
    return secrets


@pytest.fixture(scope="module")
async def site(
    on_postgres: bool, database_url: str, root_key: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Site]:
    if not on_postgres:
        pytest.skip("needs PostgreSQL: replicas share one PostgreSQL; SQLite is for one process")
    url = await create_scratch_database(database_url, migrate=False)
    folder = tmp_path_factory.mktemp("replicas")
    data = folder / "data"
    front, *ports = (free_port() for _ in range(REPLICAS + 1))
    env = server_env(url, data, root_key) | {
        "TELLONCE_REPLICAS": str(REPLICAS),
        "TELLONCE_REPLICAS_PORT": str(front),
        "TELLONCE_REPLICA_PORTS": " ".join(map(str, ports)),
        "TELLONCE_REPLICAS_DIR": str(folder / "state"),
        "TELLONCE_AUDIT_CHECKPOINT_INTERVAL_MS": "100",
        "PYTHON": sys.executable,
    }
    key = ECKey.generate_key("P-256", private=True)
    site = Site(
        f"http://127.0.0.1:{front}",
        [f"http://127.0.0.1:{port}" for port in ports],
        folder / "state",
        env,
        url,
        {},
        ("", key),
    )
    try:
        started = await asyncio.to_thread(site.script, "up")
        assert started.returncode == 0, started.stdout + started.stderr
        assert f"behind HAProxy at {site.front}" in started.stdout
        async with httpx.AsyncClient() as http:
            for _ in range(REPLICAS):
                ready = await http.get(f"{site.front}/readyz")
                site.first_answers.append(ready.headers.get("x-tellonce-replica", str(ready.status_code)))
        site.secrets = await _make_clients(url, data, root_key, key.as_dict(private=False))
        site.key_client = (site.secrets["key"][0], key)
        yield site
    finally:
        for made in site.open_clients:
            await made.aclose()
        pids = [int(path.read_text()) for path in (folder / "state").glob("*.pid")]
        stopped = await asyncio.to_thread(site.script, "down")
        assert stopped.returncode == 0, stopped.stderr
        assert not [pid for pid in pids if _alive(pid)]
        assert not list((folder / "state").glob("*.pid"))
        await drop_scratch_database(url)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def _register(site: Site, count: int) -> list[str]:
    registrar, writer = site.client("registrar"), site.client("writer")
    ids = []
    for _ in range(count):
        created = await registrar.register_citizen(
            f"RP{next(NATIONAL_IDS):06d}A",
            {"given_name": "Rep", "date_of_birth": "1980-02-03", "address": "1 Loop Lane"},
        )
        await writer.write_fields(created.id, {"licence_status": "valid", "licence_number": "L0"}, "issued")
        ids.append(created.id)
    return ids


class TestReplicas:
    def test_up_returns_with_every_replica_in_the_rotation(self, site: Site) -> None:
        # The README's check after `scripts/replicas.sh up`: api1, api2, api3 in turn, at once.
        assert sorted(site.first_answers) == ["api1", "api2", "api3"]

    async def test_the_rate_limit_holds_across_replicas(self, site: Site) -> None:
        answered: list[httpx.Response] = []
        api = TellonceClient(
            site.front, ClientSecret(*site.secrets["limited"]), retry=NO_RETRY, on_response=answered.append
        )
        site.open_clients.append(api)

        async def call() -> None:
            try:
                await api.catalog()
            except RateLimited:
                pass

        loop = asyncio.get_running_loop()
        started = loop.time()
        await call()  # fetches the token (and spends a token of the bucket)
        began = loop.time()
        calls = []
        for n in range(int(SEND_RATE * SEND_SECONDS)):
            await asyncio.sleep(max(0.0, began + n / SEND_RATE - loop.time()))
            calls.append(asyncio.create_task(call()))
        sent = loop.time() - began
        await asyncio.gather(*calls)
        answered_by = loop.time() - started

        statuses = Counter(response.status_code for response in answered)
        assert set(statuses) == {200, 429}
        assert {response.headers["x-tellonce-replica"] for response in answered} == {"api1", "api2", "api3"}
        assert statuses[200] + statuses[429] == 1 + len(calls)
        # One bucket for the deployment: the burst, then the rate, whichever replica answers.
        # The bucket refilled for as long as requests were claiming from it: at least from
        # the first claim to the last request sent, at most from the first request to the
        # last answer; give or take half a burst for the clocks. A bucket per replica would
        # have let every request through.
        assert BURST + RATE * sent - BURST / 2 <= statuses[200], (statuses, sent, answered_by)
        assert statuses[200] <= BURST + RATE * answered_by + BURST / 2, (statuses, sent, answered_by)

    async def test_an_assertion_replayed_on_another_replica_is_refused(self, site: Site) -> None:
        client_id, key = site.key_client
        # The audience is the token endpoint at the public URL, HAProxy's, as on every replica.
        signed = private_key_jwt_sign(key, client_id, f"{site.front}/oauth/token", alg="ES256", expires_in=60)
        form = {
            "grant_type": "client_credentials",
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": signed if isinstance(signed, str) else signed.decode(),
        }
        async with httpx.AsyncClient(timeout=10) as http:
            first = await http.post(f"{site.replicas[0]}/oauth/token", data=form)
            assert first.status_code == 200, first.text
            for replica in site.replicas[1:]:
                replayed = await http.post(f"{replica}/oauth/token", data=form)
                assert replayed.status_code == 401
                assert replayed.json()["error"] == "invalid_client"

    async def test_a_revocation_and_a_disabled_client_reach_every_replica(self, site: Site) -> None:
        (citizen_id,) = await _register(site, 1)
        readers = [site.client("welfare", replica) for replica in site.replicas]
        disposable = await _token(site, "disposable")
        async with httpx.AsyncClient(timeout=10, headers={"Authorization": f"Bearer {disposable}"}) as http:
            # Every replica serves both once: each compiles the policy and caches the
            # clients' standing.
            for reader, replica in zip(readers, site.replicas, strict=True):
                read = await reader.read_citizen(citizen_id, PURPOSE, ["licence_status", "given_name"])
                assert read.fields["licence_status"].value == "valid"
                assert (await http.get(f"{replica}/v1/catalog")).status_code == 200

            owner = site.client("owner", site.replicas[0])
            revoked = await owner.revoke_agreement("licence-status-for-welfare", reason="replica test")
            assert revoked.status == "revoked"
            # The very next request on each of the others, with no wait.
            for reader in readers[1:]:
                read = await reader.read_citizen(citizen_id, PURPOSE, ["licence_status", "given_name"])
                assert "licence_status" not in read.fields
                assert [item.field for item in read.withheld] == ["licence_status"]

            # The welfare admin disables it through the first replica; every replica
            # refuses the client's unexpired token on its very next request.
            admin = await _token(site, "welfare-admin")
            disabled = await http.post(
                f"{site.replicas[0]}/v1/clients/{site.secrets['disposable'][0]}/disable",
                headers={"Authorization": f"Bearer {admin}"},
            )
            assert disabled.status_code == 200, disabled.text
            for replica in site.replicas:
                refused = await http.get(f"{replica}/v1/catalog")
                assert refused.status_code == 401
                assert refused.json()["detail"] == "The client is disabled or no longer registered."

    async def test_a_replica_killed_under_load_loses_no_acknowledged_write(self, site: Site) -> None:
        citizens = await _register(site, WRITERS + 1)
        reader = citizens.pop()
        load_token = await _token(site, "load")
        acknowledged: list[list[tuple[int, str]]] = [[] for _ in citizens]
        # Each failed write: when it was sent (on the event loop's clock) and what went wrong.
        failed: list[list[tuple[float, str]]] = [[] for _ in citizens]
        loop = asyncio.get_running_loop()
        killed_at = float("inf")
        after_kill = [0] * WRITERS
        stop = asyncio.Event()

        async def write(n: int, citizen_id: str) -> None:
            writer = site.client("writer")
            for attempt in itertools.count(1):
                if stop.is_set():
                    return
                value, sent = f"W{n}-{attempt}", loop.time()
                try:
                    written = await writer.write_fields(citizen_id, {"licence_number": value}, "replica test")
                except (TellonceError, httpx.HTTPError) as exc:
                    failed[n].append((sent, repr(exc)))
                    continue
                acknowledged[n].append((written.version, value))
                after_kill[n] += sent > killed_at

        log = site.state / "haproxy.log"
        logged_before = log.stat().st_size
        wrk = await asyncio.create_subprocess_exec(
            "wrk",
            "-t2",
            f"-c{WRK_CONNECTIONS}",
            "-d5s",
            "-H",
            f"Authorization: Bearer {load_token}",
            f"{site.front}/v1/citizens/{reader}?fields=given_name,address&purpose={PURPOSE}",
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        writers = [asyncio.create_task(write(n, citizen_id)) for n, citizen_id in enumerate(citizens)]
        try:
            await _until(lambda: all(len(done) >= 5 for done in acknowledged), "writes before the kill")
            killed = site.pid("api-2")
            os.kill(killed, signal.SIGKILL)
            # From the moment it is gone (its sockets closed), a request can no longer reach
            # it; one sent in the instant before, while the signal was being delivered, was
            # in flight on it.
            await _until(lambda: _gone(killed), "the killed replica to exit")
            killed_at = loop.time()
            await _until(lambda: all(count >= 5 for count in after_kill), "writes after the kill")
        finally:
            out, err = await asyncio.wait_for(wrk.communicate(), timeout=60)
            stop.set()
            await asyncio.gather(*writers)
        assert wrk.returncode == 0, err.decode()

        # Only what was in flight on the killed replica may fail: a write sent before the
        # kill, or on an idle connection to it that HAProxy had not yet seen closed (HAProxy
        # does not resend a write), and a read only if HAProxy could not resend it (it
        # resends safe requests), one per wrk connection at most. Whatever HAProxy logged as
        # failed was the killed replica's. One writer may lose both: its write in flight
        # there, then, sent at once, its next on such an idle connection (a CI run saw a
        # writer's RemoteProtocolError and 502 16 ms apart), so the bound is two a writer
        # on average, and every failure was sent around the kill (below).
        assert sum(len(errors) for errors in failed) <= 2 * WRITERS, failed
        late = killed_at + IDLE_CONNECTION_GRACE
        assert all(sent < late for errors in failed for sent, _ in errors), (killed_at, failed)
        report = out.decode()
        assert _wrk_errors(report) <= WRK_CONNECTIONS, report
        with log.open("rb") as handle:
            handle.seek(logged_before)
            logged = handle.read().decode().splitlines()
        failures = [line for line in logged if _failed(line)]
        assert all("replicas/api2 " in line for line in failures), failures

        # Every acknowledged write is there: each made its own version of the record, and the
        # record's version counts them (plus any that failed in flight but committed).
        welfare = site.client("welfare")
        for n, citizen_id in enumerate(citizens):
            versions = [version for version, _ in acknowledged[n]]
            assert len(set(versions)) == len(versions)
            record = await welfare.read_citizen(citizen_id, PURPOSE, ["given_name"])
            first = versions[0] - 1
            assert len(versions) <= record.version - first <= len(versions) + len(failed[n])
            assert max(versions) == record.version  # the last write, after the kill, was acknowledged

        await _until_sequenced(site.database_url)
        verified = subprocess.run(
            [sys.executable, "-m", "service.cli", "audit", "verify"],
            cwd=REPO_ROOT,
            env={**os.environ, **site.env},
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        assert verified.returncode == 0, verified.stdout + verified.stderr
        assert "audit log verified" in verified.stdout


async def _token(site: Site, name: str) -> str:
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.post(
            f"{site.front}/oauth/token", data={"grant_type": "client_credentials"}, auth=site.secrets[name]
        )
    response.raise_for_status()
    return str(response.json()["access_token"])


async def _until(done: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"no {what} within {timeout}s"
        await asyncio.sleep(0.05)


async def _until_sequenced(url: str, timeout: float = 30.0) -> None:
    """Until the worker's sequencer has given every audit entry its leaf."""
    settings = Settings(env="test", database_url=url)
    database = Database(settings)
    try:
        deadline = time.monotonic() + timeout
        while True:
            async with database.engine.connect() as conn:
                entries = (await conn.execute(select(func.count()).select_from(AuditEntryRow))).scalar_one()
                leaves = (await conn.execute(select(func.count()).select_from(AuditLeaf))).scalar_one()
            if entries == leaves:
                return
            assert time.monotonic() < deadline, f"{entries - leaves} entries unsequenced after {timeout}s"
            await asyncio.sleep(0.1)
    finally:
        await database.dispose()


def _wrk_errors(report: str) -> int:
    """wrk's non-2xx answers and socket errors."""
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", report)
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", report)
    return (int(non_2xx.group(1)) if non_2xx else 0) + (sum(map(int, sockets.groups())) if sockets else 0)


def _gone(pid: int) -> bool:
    """True once process ``pid`` has exited (a zombie has closed its sockets too)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in {"Z", "X"}


def _failed(line: str) -> bool:
    """An HAProxy request log line (option httplog) whose request failed: a 5xx or none."""
    match = re.search(r" replicas/\S+ \S+ (-?\d+) ", line)
    return match is not None and (match.group(1).startswith("5") or match.group(1) == "-1")
