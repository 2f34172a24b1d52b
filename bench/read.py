"""bench/read: the secured read against a bare read of the same rows, over real HTTP.

Three servers are driven with ``wrk`` on loopback, one after another, in one run:

- the framework ceiling: ``GET /healthz`` on the real ``tellonce serve``;
- a bare read: the same citizen and value rows fetched with the raw driver, no security
  (``bench/bare_server.py``, also on uvicorn);
- the secured read: ``GET /v1/citizens/{id}`` with a real OAuth2 token: authentication,
  policy, decryption and a durable audit entry.

It prints requests per second with p50 and p99 latency for each, and the ratio
secured/bare (the goal is at least 0.5), on SQLite and on PostgreSQL. The secured read is
then measured again with owner signing on (the register and DVLA sign their agreements,
as in the demo) and off once more: signatures are checked when agreements compile, so the
ratio signed/unsigned should stay near 1. Needs ``wrk``
(``apt-get install wrk``).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg
import httpx

from service.schema import upgrade
from service.sim.policies import signed_policies

ROOT = Path(__file__).resolve().parent.parent
DURATION = int(os.environ.get("BENCH_SECONDS", "8"))
CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS", "32"))
FIELDS = "given_name,family_name,date_of_birth,address,postcode"
# BENCH_IN_PROCESS_WORKERS=1 runs the sequencer and dispatcher inside `serve` instead.
SERVE_ARGS: tuple[str, ...] = () if os.environ.get("BENCH_IN_PROCESS_WORKERS") == "1" else ("--no-worker",)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_healthy(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited early ({process.returncode})")
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def _cli(env: dict[str, str], *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", *args], env=env, capture_output=True, text=True, check=True
    )
    return result.stdout


def _token(base: str, client: dict[str, str]) -> str:
    response = httpx.post(
        f"{base}/oauth/token",
        data={"grant_type": "client_credentials"},
        auth=(client["client_id"], client["client_secret"]),
        timeout=10,
    )
    response.raise_for_status()
    return str(response.json()["access_token"])


def _wrk(url: str, headers: dict[str, str] | None = None) -> dict[str, float]:
    args = ["wrk", "-t2", f"-c{CONNECTIONS}", f"-d{DURATION}s", "--latency"]
    for name, value in (headers or {}).items():
        args += ["-H", f"{name}: {value}"]
    # A short warm-up fills caches and pools; it is not measured.
    subprocess.run([*args[:3], "-d2s", *args[4:], url], capture_output=True, check=True)
    out = subprocess.run([*args, url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "rps": rps,
        "p50": _latency_ms(out, "50%"),
        "p99": _latency_ms(out, "99%"),
        "non2xx": float(errors.group(1)) if errors else 0.0,
    }


def _latency_ms(out: str, label: str) -> float:
    match = re.search(rf"{re.escape(label)}\s+([\d.]+)(us|ms|s)", out)
    if not match:
        return float("nan")
    value, unit = float(match.group(1)), match.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


async def _scratch_postgres() -> str:
    name = f"tellonce_bench_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(host="127.0.0.1", user="postgres", database="postgres")
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()
    return f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"


async def _drop_postgres(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    conn = await asyncpg.connect(host="127.0.0.1", user="postgres", database="postgres")
    await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await conn.close()


def run_one(kind: str) -> dict[str, dict[str, float]]:
    folder = Path(tempfile.mkdtemp(prefix="tellonce-bench-read-"))
    url = (
        f"sqlite+aiosqlite:///{folder / 'bench.db'}" if kind == "sqlite" else asyncio.run(_scratch_postgres())
    )
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
            # The benchmark is one client hammering the service: lift its rate limit.
            "TELLONCE_CLIENT_RATE_PER_SECOND": "1000000",
            "TELLONCE_CLIENT_RATE_BURST": "1000000",
        }
        _cli(env, "policies", "apply", str(ROOT / "policies"))
        registrar = json.loads(
            _cli(env, "clients", "create", "--department", "register", "--roles", "registrar", "--json")
        )
        consumer = json.loads(
            _cli(env, "clients", "create", "--department", "dwp", "--roles", "consumer", "--json")
        )

        port = _free_port()
        base = f"http://127.0.0.1:{port}"
        # The deployment split: the API process serves requests; `tellonce worker` runs
        # the audit sequencer and the event dispatcher off its event loop.
        processes.append(
            subprocess.Popen(
                [sys.executable, "-m", "service.cli", "serve", "--port", str(port), *SERVE_ARGS],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        if "--no-worker" in SERVE_ARGS:
            processes.append(
                subprocess.Popen(
                    [sys.executable, "-m", "service.cli", "worker"],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        _wait_healthy(f"{base}/healthz", processes[0])
        registered = httpx.post(
            f"{base}/v1/citizens",
            json={
                "national_id": "ZZ990001A",
                "fields": {
                    "given_name": "Bench",
                    "family_name": "Marker",
                    "date_of_birth": "1980-05-17",
                    "address": "1 Loopback Lane, Localhost",
                    "postcode": "LO1 1OP",
                },
            },
            headers={"Authorization": f"Bearer {_token(base, registrar)}"},
            timeout=10,
        )
        registered.raise_for_status()
        citizen_id = registered.json()["id"]

        bare_port = _free_port()
        processes.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "uvicorn",
                    "bench.bare_server:create_app",
                    "--factory",
                    "--port",
                    str(bare_port),
                    "--log-level",
                    "warning",
                    "--no-access-log",
                ],
                env={**env, "BENCH_DATABASE_URL": url},
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        bare_url = f"http://127.0.0.1:{bare_port}/bare/{citizen_id}"
        _wait_healthy(bare_url, processes[-1])

        token = _token(base, consumer)
        secured_url = f"{base}/v1/citizens/{citizen_id}?fields={FIELDS}&purpose=benefit-eligibility"
        check = httpx.get(secured_url, headers={"Authorization": f"Bearer {token}"}, timeout=10)
        if check.status_code != 200 or check.json()["fields"]["given_name"]["value"] != "Bench":
            raise RuntimeError(f"secured read does not work: {check.status_code} {check.text}")
        bearer = {"Authorization": f"Bearer {token}"}
        results = {
            "trivial endpoint": _wrk(f"{base}/healthz"),
            "bare read": _wrk(bare_url),
            "secured read": _wrk(secured_url, bearer),
        }
        # Signing on: the register and DVLA sign their agreements (as in the demo), applied
        # to the running server, which verifies every signature once when it recompiles;
        # then unsigned again, so drift over the run shows beside the difference.
        signed, _keys = signed_policies(ROOT / "policies", folder / "owners")
        for label, policies in (("secured, signed", signed), ("secured, unsigned", ROOT / "policies")):
            _cli(env, "policies", "apply", str(policies))
            check = httpx.get(secured_url, headers=bearer, timeout=10)
            if check.status_code != 200:
                raise RuntimeError(f"{label} read does not work: {check.status_code} {check.text}")
            results[label] = _wrk(secured_url, bearer)
        return results
    finally:
        for process in processes:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
        if kind == "postgres":
            asyncio.run(_drop_postgres(url))
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    if shutil.which("wrk") is None:
        print("bench/read needs wrk: apt-get install wrk")
        return
    topology = "workers in-process" if not SERVE_ARGS else "serve --no-worker + tellonce worker"
    print(f"wrk -t2 -c{CONNECTIONS} -d{DURATION}s per figure; one uvicorn worker per server; {topology}")
    for kind in ("sqlite", "postgres"):
        results = run_one(kind)
        print(f"\n{kind}:")
        print(f"  {'':18} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8}")
        for label, figures in results.items():
            print(
                f"  {label:18} {figures['rps']:9.0f} {figures['p50']:8.2f} {figures['p99']:8.2f} "
                f"{figures['non2xx']:8.0f}"
            )
        bare, secured = results["bare read"]["rps"], results["secured read"]["rps"]
        trivial = results["trivial endpoint"]["rps"]
        print(f"  ratio secured/bare    {secured / bare:.2f}  (goal >= 0.5)")
        print(f"  ratio secured/trivial {secured / trivial:.2f}")
        unsigned = (secured + results["secured, unsigned"]["rps"]) / 2
        print(
            f"  ratio signed/unsigned {results['secured, signed']['rps'] / unsigned:.2f}  "
            "(signatures are checked when agreements compile, never per request: goal about 1)"
        )


if __name__ == "__main__":
    main()
