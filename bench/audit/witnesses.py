"""Witnessing: checkpoint-to-quorum latency, and the secured read with witnesses on and off.

Two stacks run side by side on SQLite, each ``tellonce serve --no-worker`` plus
``tellonce worker`` (which runs the sequencer and the witness submitter), as deployed:

- *off*: no witnesses configured;
- *on*: two real witness processes (``python -m service.witness serve``, as a department
  runs one) on loopback, ``TELLONCE_AUDIT_WITNESSES`` with both (quorum 2) and a grace
  period, so the fail-closed gate is checked on every request.

Both run the default checkpoint interval (a checkpoint a second while entries arrive), as a
deployment does: witnessing costs one round per checkpoint, so a shorter interval would
charge the witnessed stack for rounds no deployment makes.

Figures:

- Checkpoint-to-quorum latency: for each checkpoint the sequencer signs, the time from its
  signing to the moment both cosignatures were checked and stored, as the database
  records them (goal: p50 under 50 ms). Measured on a quiet service (four audited reads a
  second) and under the full secured-read load; the refresh period is longer than the run,
  so no idle re-witnessing moves a checkpoint's time. Checkpoints superseded before a
  round reached them are counted, not timed.
- Secured read throughput, ``GET /v1/citizens/{id}`` driven by ``wrk`` as in
  ``bench/read``, with witnesses on against off (goal: within 5%; reads never wait for a
  witness). The rounds alternate off, on, on, off, off, on so that drift in the
  machine's load falls on both alike; the mean of each side's three rounds is compared.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
from pydantic import SecretStr
from sqlalchemy import select

from bench import goals
from bench._load import server_env
from bench.read import ROOT, _cli, _free_port, _token, _wait_healthy, _wrk
from service.audit.config import AuditSettings, load_signer
from service.audit.models import AuditCheckpoint, AuditWitnessedCheckpoint
from service.config import Settings
from service.db import create_engine
from service.schema import upgrade
from service.witness.cli import write_private_key
from service.witness.cosignature import CosignatureSigner

FIELDS = "given_name,family_name,date_of_birth,address,postcode"
WITNESSES = ("nao.example/witness", "ico.example/witness")
WITNESS_START_SECONDS = 60.0
# The quiet phase: this many audited reads, one every QUIET_GAP seconds.
QUIET_READS = 100
QUIET_GAP = 0.25


@dataclass
class Stack:
    witnessed: bool
    folder: Path
    url: str
    env: dict[str, str]
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    secured: str = ""
    token: str = ""

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
        shutil.rmtree(self.folder, ignore_errors=True)


def _spawn(module: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", module, *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def _wait_answering(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + WITNESS_START_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the witness at {url} exited with {process.returncode}")
        try:
            httpx.get(f"{url}/checkpoint", params={"origin": "-"}, timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.05)
    raise RuntimeError(f"the witness at {url} did not start")


def _start_witnesses(stack: Stack) -> str:
    """Start both witnesses; the TELLONCE_AUDIT_WITNESSES value."""
    settings = Settings(
        env="test",
        data_dir=Path(stack.env["TELLONCE_DATA_DIR"]),
        root_key=SecretStr(stack.env["TELLONCE_ROOT_KEY"]),
    )
    log_vkey = load_signer(settings, AuditSettings().origin).verifier_key()
    pairs = []
    for number, name in enumerate(WITNESSES):
        key = stack.folder / f"witness-{number}.key"
        signer = CosignatureSigner.generate(name)
        write_private_key(signer, key)
        port = _free_port()
        args = [
            "serve",
            "--port",
            str(port),
            "--key",
            str(key),
            "--state",
            str(stack.folder / f"witness-{number}.db"),
        ]
        process = _spawn("service.witness", [*args, "--log", log_vkey], stack.env)
        stack.processes.append(process)
        _wait_answering(f"http://127.0.0.1:{port}", process)
        pairs.append(f"http://127.0.0.1:{port}={signer.verifier_key()}")
    return " ".join(pairs)


def start_stack(witnessed: bool) -> Stack:
    folder = Path(tempfile.mkdtemp(prefix="tellonce-bench-witness-"))
    url = f"sqlite+aiosqlite:///{folder / 'bench.db'}"
    env = server_env(url, folder)
    stack = Stack(witnessed, folder, url, env)
    try:
        upgrade(url)
        if witnessed:
            env["TELLONCE_AUDIT_WITNESSES"] = _start_witnesses(stack)
            # Checked on every request; long enough that no idle re-witnessing (which
            # moves a checkpoint's witnessed time) happens during the run.
            env["TELLONCE_AUDIT_WITNESS_GRACE_SECONDS"] = "1800"
            env["TELLONCE_AUDIT_WITNESS_REFRESH_SECONDS"] = "600"
        _cli(env, "policies", "apply", str(ROOT / "policies"))
        registrar = json.loads(
            _cli(env, "clients", "create", "--department", "register", "--roles", "registrar", "--json")
        )
        consumer = json.loads(
            _cli(env, "clients", "create", "--department", "dwp", "--roles", "consumer", "--json")
        )
        port = _free_port()
        base = f"http://127.0.0.1:{port}"
        server = _spawn("service.cli", ["serve", "--port", str(port), "--no-worker"], env)
        stack.processes += [server, _spawn("service.cli", ["worker"], env)]
        _wait_healthy(f"{base}/healthz", server)
        registered = httpx.post(
            f"{base}/v1/citizens",
            json={
                "national_id": "ZZ990002A",
                "fields": {
                    "given_name": "Bench",
                    "family_name": "Witness",
                    "date_of_birth": "1980-05-17",
                    "address": "2 Loopback Lane, Localhost",
                    "postcode": "LO1 1OP",
                },
            },
            headers={"Authorization": f"Bearer {_token(base, registrar)}"},
            timeout=30,
        )
        registered.raise_for_status()
        stack.token = _token(base, consumer)
        citizen = registered.json()["id"]
        stack.secured = f"{base}/v1/citizens/{citizen}?fields={FIELDS}&purpose=benefit-eligibility"
        check = httpx.get(stack.secured, headers={"Authorization": f"Bearer {stack.token}"}, timeout=30)
        if check.status_code != 200:
            raise RuntimeError(f"secured read does not work: {check.status_code} {check.text}")
    except BaseException:
        stack.stop()
        raise
    return stack


def _naive_utc(value: datetime) -> datetime:
    return value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo else value


@dataclass(frozen=True)
class QuorumTimes:
    latencies_ms: list[float]
    signed: int  # checkpoints signed in the window


async def _quorum_times(url: str, since: datetime, until: datetime) -> QuorumTimes:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(
                        AuditCheckpoint.id, AuditCheckpoint.created_at, AuditWitnessedCheckpoint.witnessed_at
                    )
                    .outerjoin(
                        AuditWitnessedCheckpoint, AuditWitnessedCheckpoint.checkpoint_id == AuditCheckpoint.id
                    )
                    .order_by(AuditCheckpoint.id)
                )
            ).all()
    finally:
        await engine.dispose()
    start, end = _naive_utc(since), _naive_utc(until)
    window = [(c, w) for _id, c, w in rows if start <= _naive_utc(c) <= end]
    latencies = [(_naive_utc(w) - _naive_utc(c)).total_seconds() * 1000 for c, w in window if w is not None]
    return QuorumTimes(sorted(latencies), len(window))


def _quiet_reads(stack: Stack) -> None:
    headers = {"Authorization": f"Bearer {stack.token}"}
    with httpx.Client(timeout=30) as http:
        for _ in range(QUIET_READS):
            http.get(stack.secured, headers=headers).raise_for_status()
            time.sleep(QUIET_GAP)


def _check_quorum(label: str, times: QuorumTimes) -> None:
    if times.latencies_ms:
        goals.check(
            f"checkpoint to quorum p50, {label}",
            statistics.median(times.latencies_ms),
            50,
            at_most=True,
            unit=" ms",
        )
    else:
        goals.check(
            f"checkpoint to quorum p50, {label} (none reached it)", float("inf"), 50, at_most=True, unit=" ms"
        )


def _describe(label: str, times: QuorumTimes) -> str:
    if not times.latencies_ms:
        return f"checkpoint to quorum, {label}: no checkpoint reached the quorum ({times.signed} signed)"
    values = times.latencies_ms
    p95 = values[min(len(values) - 1, int(len(values) * 0.95))]
    return (
        f"checkpoint to quorum (2 of 2 local witnesses, SQLite), {label}: "
        f"p50 {statistics.median(values):.1f} ms, p95 {p95:.1f} ms (goal p50 < 50 ms); "
        f"{len(values)} of {times.signed} checkpoints signed reached it, the rest were superseded "
        "before a round reached them"
    )


def main() -> None:
    if shutil.which("wrk") is None:
        print("bench/audit witnesses needs wrk: apt-get install wrk")
        return
    off = start_stack(witnessed=False)
    try:
        on = start_stack(witnessed=True)
        try:
            quiet_start = datetime.now(UTC)
            _quiet_reads(on)
            quiet = asyncio.run(_quorum_times(on.url, quiet_start, datetime.now(UTC)))
            print(_describe("quiet (4 audited reads a second)", quiet))
            _check_quorum("quiet", quiet)
            figures: dict[bool, list[dict[str, float]]] = {False: [], True: []}
            load_start = datetime.now(UTC)
            for stack in (off, on, on, off, off, on):
                figures[stack.witnessed].append(
                    _wrk(stack.secured, {"Authorization": f"Bearer {stack.token}"})
                )
            loaded = asyncio.run(_quorum_times(on.url, load_start, datetime.now(UTC)))
            print(_describe("under the secured-read load", loaded))
            _check_quorum("under load", loaded)
        finally:
            on.stop()
    finally:
        off.stop()
    rps = {witnessed: statistics.mean(f["rps"] for f in runs) for witnessed, runs in figures.items()}
    p50 = {witnessed: statistics.mean(f["p50"] for f in runs) for witnessed, runs in figures.items()}
    errors = sum(f["non2xx"] for runs in figures.values() for f in runs)
    print(
        f"secured read, SQLite (3 rounds each, off/on/on/off/off/on): witnesses off {rps[False]:,.0f} req/s "
        f"(p50 {p50[False]:.2f} ms) | on {rps[True]:,.0f} req/s (p50 {p50[True]:.2f} ms) | "
        f"non-2xx answers: {errors:.0f}"
    )
    goals.check("secured read, witnesses on / off", rps[True] / rps[False], 0.95)


if __name__ == "__main__":
    main()
