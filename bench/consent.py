"""bench/consent: the secured read with and without a consent check, over real HTTP.

One ``tellonce serve`` (one worker) with ``tellonce worker`` beside it, driven with
``wrk``, on SQLite and then PostgreSQL. The same read of five register fields by DWP is
measured under two forms of the agreement that grants them:

- ``statutory``: the demo's ``identity-for-dwp`` as written (no citizen's choice, so no
  query for one);
- ``consent``: the same agreement with ``basis: consent``, and the citizen holding an
  active consent given through ``POST /v1/citizens/{id}/consents``: each read asks the
  database for the citizen's consents and objections to it, then decides.

The two alternate (statutory, consent, three times each) on the running server, each
applied with ``tellonce policies apply``, so drift over the run shows beside the
difference; the medians are compared. Issue 18's goal: the consent read within 10% of the
statutory one, judged twice: by throughput (req/s, which a loaded shared machine makes
noisy) and by the server's CPU time per request (which the load disturbs less).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx

from bench import goals
from bench._load import ROOT, _cli, _free_port, _token, _wait_healthy, _wrk, server_env
from bench._postgres import drop as drop_postgres
from bench._postgres import scratch_url as scratch_postgres
from bench.read import FIELDS, _register, _secured_url
from service.schema import upgrade

WITHIN = 0.9
ROUNDS = 3
AGREEMENT = "  - id: identity-for-dwp\n"


def _consent_policies(folder: Path) -> Path:
    """A copy of the demo policies whose identity-for-dwp needs the citizen's consent (a
    consent names one purpose, and grants read, verify or history only)."""
    target = folder / "consent-policies"
    shutil.copytree(ROOT / "policies", target)
    register = target / "register.yaml"
    text = register.read_text()
    start = text.index(AGREEMENT)
    end = text.index("  - id:", start + len(AGREEMENT))
    entry = text[start:end]
    changed = entry.replace(
        "purposes: [benefit-eligibility, benefit-payment, fraud-investigation]",
        "purposes: [benefit-eligibility]",
    ).replace("actions: [read, verify]", "actions: [read]")
    register.write_text(text[:start] + changed + "    basis: consent\n" + text[end:])
    return target


def _start(env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "service.cli", *args]
    return subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def run_one(kind: str) -> dict[str, list[dict[str, float]]]:
    folder = Path(tempfile.mkdtemp(prefix="tellonce-bench-consent-"))
    url = (
        f"sqlite+aiosqlite:///{folder / 'bench.db'}" if kind == "sqlite" else asyncio.run(scratch_postgres())
    )
    if url is None:
        raise RuntimeError("bench/consent needs PostgreSQL on 127.0.0.1:5432")
    processes: list[subprocess.Popen[bytes]] = []
    try:
        upgrade(url)
        env = server_env(url, folder)
        statutory, consent = ROOT / "policies", _consent_policies(folder)
        _cli(env, "policies", "apply", str(statutory))
        made = {
            name: json.loads(_cli(env, "clients", "create", "--department", d, "--roles", r, "--json"))
            for name, d, r in (
                ("registrar", "register", "registrar"),
                ("consumer", "dwp", "consumer"),
                ("portal", "citizen-portal", "citizen-portal"),
            )
        }
        processes.append(_start(env, "worker"))
        port = _free_port()
        server = _start(env, "serve", "--port", str(port), "--no-worker")
        processes.append(server)
        base = f"http://127.0.0.1:{port}"
        _wait_healthy(f"{base}/healthz", server)
        citizen_id = _register(base, made["registrar"])
        # A consent is given to a consent-based agreement: apply that form first.
        _cli(env, "policies", "apply", str(consent))
        given = httpx.post(
            f"{base}/v1/citizens/{citizen_id}/consents",
            json={"agreement": "identity-for-dwp"},
            headers={"Authorization": f"Bearer {_token(base, made['portal'])}"},
            timeout=10,
        )
        given.raise_for_status()
        bearer = {"Authorization": f"Bearer {_token(base, made['consumer'])}"}
        url_read = _secured_url(base, citizen_id)
        results: dict[str, list[dict[str, float]]] = {"statutory": [], "consent": []}
        for label, policies in (("statutory", statutory), ("consent", consent)) * ROUNDS:
            _cli(env, "policies", "apply", str(policies))
            check = httpx.get(url_read, headers=bearer, timeout=10)
            if check.status_code != 200 or len(check.json()["fields"]) != len(FIELDS.split(",")):
                raise RuntimeError(f"the {label} read does not work: {check.status_code} {check.text}")
            results[label].append(_wrk(url_read, bearer, server_pid=server.pid))
        return results
    finally:
        for process in processes:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
        if kind == "postgres":
            asyncio.run(drop_postgres(url))
        shutil.rmtree(folder, ignore_errors=True)


def _median(results: dict[str, list[dict[str, float]]], label: str, figure: str) -> float:
    return statistics.median(run[figure] for run in results[label])


def main() -> None:
    if shutil.which("wrk") is None:
        print("bench/consent needs wrk: apt-get install wrk")
        return
    print(f"at the start: {goals.load_average()}")
    for kind in ("sqlite", "postgres"):
        results = run_one(kind)
        print(f"\n{kind}: secured read, alternating (req/s; server CPU ms per request)")
        for label, runs in results.items():
            shown = ", ".join(f"{run['rps']:,.0f}; {run['cpu_ms']:.2f}" for run in runs)
            print(f"  {label:10} {shown}")

        goals.check(
            f"issue 18 secured read req/s, consent/statutory ({kind})",
            _median(results, "consent", "rps") / _median(results, "statutory", "rps"),
            WITHIN,
        )
        goals.check(
            f"issue 18 secured read CPU per request, statutory/consent ({kind})",
            _median(results, "statutory", "cpu_ms") / _median(results, "consent", "cpu_ms"),
            WITHIN,
        )
    print(f"\nat the end: {goals.load_average()}")


if __name__ == "__main__":
    main()
