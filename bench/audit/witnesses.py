"""Witnessing: checkpoint-to-quorum latency, and the secured read with witnesses on and off.

Two real witness processes (``tellonce witness serve``) run on loopback. With them on,
the service runs with ``TELLONCE_AUDIT_WITNESSES`` (quorum 2) and a grace period, so the
fail-closed gate is checked on every request; with them off, neither is configured.
Both runs drive ``GET /v1/citizens/{id}`` with ``wrk`` exactly as ``bench/read`` does.

- Checkpoint-to-quorum latency: for each checkpoint the sequencer signs during the
  witnessed run, the time from its signing to the moment both cosignatures were stored
  (goal: p50 under 50 ms).
- Secured read throughput with witnesses on against off (goal: within 5%; reads never
  wait for a witness, the gate only compares a timestamp).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
from sqlalchemy import select

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


def _start(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "service.cli", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _witnesses(folder: Path, env: dict[str, str], processes: list[subprocess.Popen[bytes]]) -> str:
    """Start both witnesses; return the TELLONCE_AUDIT_WITNESSES value."""
    settings = Settings(
        env="test", data_dir=Path(env["TELLONCE_DATA_DIR"]), root_key=env["TELLONCE_ROOT_KEY"]
    )  # type: ignore[arg-type]
    log_vkey = load_signer(settings, AuditSettings().origin).verifier_key()
    pairs = []
    for number, name in enumerate(WITNESSES):
        key = folder / f"witness-{number}.key"
        signer = CosignatureSigner.generate(name)
        write_private_key(signer, key)
        port = _free_port()
        state = str(folder / f"witness-{number}.db")
        args = [
            "witness",
            "serve",
            "--port",
            str(port),
            "--key",
            str(key),
            "--state",
            state,
            "--log",
            log_vkey,
        ]
        processes.append(_start(args, env))
        deadline_url = f"http://127.0.0.1:{port}"
        for _ in range(600):
            try:
                httpx.get(f"{deadline_url}/checkpoint", params={"origin": "-"}, timeout=1)
                break
            except httpx.TransportError:
                import time

                time.sleep(0.05)
        pairs.append(f"{deadline_url}={signer.verifier_key()}")
    return " ".join(pairs)


async def _quorum_latencies(url: str) -> list[float]:
    engine = create_engine(url)
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                select(AuditCheckpoint.created_at, AuditWitnessedCheckpoint.witnessed_at).join(
                    AuditWitnessedCheckpoint, AuditWitnessedCheckpoint.checkpoint_id == AuditCheckpoint.id
                )
            )
        ).all()
    await engine.dispose()
    return [(witnessed - created).total_seconds() * 1000 for created, witnessed in rows]


def run_one(witnessed: bool) -> tuple[dict[str, float], list[float]]:
    folder = Path(tempfile.mkdtemp(prefix="tellonce-bench-witness-"))
    url = f"sqlite+aiosqlite:///{folder / 'bench.db'}"
    processes: list[subprocess.Popen[bytes]] = []
    try:
        upgrade(url)
        env = {
            **os.environ,
            "TELLONCE_ENV": "test",
            "TELLONCE_DATABASE_URL": url,
            "TELLONCE_DATA_DIR": str(folder / "data"),
            "TELLONCE_ROOT_KEY": base64.b64encode(secrets.token_bytes(32)).decode(),
            "TELLONCE_LOG_LEVEL": "WARNING",
            "TELLONCE_CLIENT_RATE_PER_SECOND": "1000000",
            "TELLONCE_CLIENT_RATE_BURST": "1000000",
            # A checkpoint every 100 ms, so one run gives many to time.
            "TELLONCE_AUDIT_CHECKPOINT_INTERVAL_MS": "100",
        }
        if witnessed:
            env["TELLONCE_AUDIT_WITNESSES"] = _witnesses(folder, env, processes)
            env["TELLONCE_AUDIT_WITNESS_GRACE_SECONDS"] = "30"
        _cli(env, "policies", "apply", str(ROOT / "policies"))
        registrar = json.loads(
            _cli(env, "clients", "create", "--department", "register", "--roles", "registrar", "--json")
        )
        consumer = json.loads(
            _cli(env, "clients", "create", "--department", "dwp", "--roles", "consumer", "--json")
        )
        port = _free_port()
        base = f"http://127.0.0.1:{port}"
        processes.append(_start(["serve", "--port", str(port), "--no-worker"], env))
        processes.append(_start(["worker"], env))
        _wait_healthy(f"{base}/healthz", processes[-2])
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
        citizen = registered.json()["id"]
        token = _token(base, consumer)
        secured = f"{base}/v1/citizens/{citizen}?fields={FIELDS}&purpose=benefit-eligibility"
        check = httpx.get(secured, headers={"Authorization": f"Bearer {token}"}, timeout=30)
        if check.status_code != 200:
            raise RuntimeError(f"secured read does not work: {check.status_code} {check.text}")
        figures = _wrk(secured, {"Authorization": f"Bearer {token}"})
        latencies = asyncio.run(_quorum_latencies(url)) if witnessed else []
        return figures, latencies
    finally:
        for process in processes:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    if shutil.which("wrk") is None:
        print("bench/audit witnesses needs wrk: apt-get install wrk")
        return
    off, _none = run_one(witnessed=False)
    on, latencies = run_one(witnessed=True)
    if latencies:
        latencies.sort()
        p95 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.95))]
        p50 = statistics.median(latencies)
        print(
            f"checkpoint to quorum (2 of 2 local witnesses, SQLite): p50 {p50:.1f} ms, "
            f"p95 {p95:.1f} ms over {len(latencies)} checkpoints (goal p50 < 50 ms)"
        )
    print(
        f"secured read, SQLite: witnesses off {off['rps']:,.0f} req/s (p50 {off['p50']:.2f} ms) | "
        f"on {on['rps']:,.0f} req/s (p50 {on['p50']:.2f} ms) | ratio on/off {on['rps'] / off['rps']:.2f} "
        "(goal >= 0.95)"
    )
