"""Load-generation helpers for the HTTP benchmarks: servers, tokens, wrk, CPU time."""

from __future__ import annotations

import base64
import os
import re
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
DURATION = int(os.environ.get("BENCH_SECONDS", "8"))
CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS", "32"))
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def server_env(url: str, folder: Path) -> dict[str, str]:
    """The environment a benchmark's ``tellonce`` processes run in: a throw-away store at
    ``url`` with its data directory in ``folder``, a fresh root key, quiet logs, and the
    client rate limit lifted (a benchmark is one client hammering the service)."""
    return {
        **os.environ,
        "TELLONCE_ENV": "test",
        "TELLONCE_DATABASE_URL": url,
        "TELLONCE_DATA_DIR": str(folder / "data"),
        "TELLONCE_ROOT_KEY": base64.b64encode(secrets.token_bytes(32)).decode(),
        "TELLONCE_LOG_LEVEL": "WARNING",
        "TELLONCE_CLIENT_RATE_PER_SECOND": "1000000",
        "TELLONCE_CLIENT_RATE_BURST": "1000000",
    }


def _free_port() -> int:
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


def _wrk(
    url: str,
    headers: dict[str, str] | None = None,
    *,
    connections: int = CONNECTIONS,
    cpus: str | None = None,
    server_pid: int | None = None,
) -> dict[str, float]:
    """wrk on ``url`` after a short unmeasured warm-up: req/s, p50 and p99 in ms, non-2xx,
    and with ``server_pid`` the server's CPU milliseconds per request (its process tree).
    ``cpus`` pins wrk with taskset."""
    threads = min(2, connections)
    args = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{DURATION}s", "--latency"]
    for name, value in (headers or {}).items():
        args += ["-H", f"{name}: {value}"]
    pin = ["taskset", "-c", cpus] if cpus else []
    subprocess.run([*pin, *args[:3], "-d2s", *args[4:], url], capture_output=True, check=True)
    before = _cpu_ticks(server_pid) if server_pid else 0
    out = subprocess.run([*pin, *args, url], capture_output=True, text=True, check=True).stdout
    after = _cpu_ticks(server_pid) if server_pid else 0
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    figures = {
        "rps": rps,
        "p50": _latency_ms(out, "50%"),
        "p99": _latency_ms(out, "99%"),
        "non2xx": float(errors.group(1)) if errors else 0.0,
    }
    if server_pid:
        figures["cpu_ms"] = (after - before) / CLOCK_TICKS * 1000 / max(requests, 1)
    return figures


def _latency_ms(out: str, label: str) -> float:
    match = re.search(rf"{re.escape(label)}\s+([\d.]+)(us|ms|s)", out)
    if not match:
        return float("nan")
    value, unit = float(match.group(1)), match.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


def _tree(pid: int) -> list[int]:
    found, queue = [], [pid]
    while queue:
        current = queue.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            queue += [int(child) for child in task.read_text().split()]
    return found


def _cpu_ticks(pid: int) -> int:
    """User plus system CPU ticks of ``pid`` and every live descendant."""
    total = 0
    for member in _tree(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total


def cpu_split() -> tuple[str | None, str | None, str]:
    """(server cpus, wrk cpus, a sentence): half the cores each where there are at least
    four; otherwise nothing is pinned, and the sentence says what that means."""
    count = len(os.sched_getaffinity(0))
    if count >= 4:
        half = count // 2
        return (
            f"0-{half - 1}",
            f"{half}-{count - 1}",
            f"server on cpus 0-{half - 1}, wrk on {half}-{count - 1}",
        )
    return (
        None,
        None,
        (
            f"{count} cores: wrk cannot be pinned away from two server workers, so they share "
            "the cores with wrk; read the CPU per request, not the throughput ratio"
        ),
    )
