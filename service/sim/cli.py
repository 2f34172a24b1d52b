"""``tellonce demo``: build the demo government, serve it, live through life events, report.

1. Migrate the embedded store in ``./.tellonce/`` (``--reset`` wipes it first).
2. Apply ``policies/``, make each department's clients (``./.tellonce/clients.json``,
   mode 0600) and keys, and seed the population through the records encryption path.
3. Start two witnesses on loopback (the National Audit Office and the Information
   Commissioner, ``service/sim/witnesses.py``), then serve on 127.0.0.1 (``tellonce serve``
   in a child process, so the API has a core of its own while the department systems run
   here) with its checkpoints cosigned by both.
4. Run the life events for ``--duration`` seconds as real HTTP clients.
5. Print the report, with the audit log verified and its checkpoint's cosignatures checked.
6. Keep serving until Ctrl-C or SIGTERM (or exit, with ``--exit-after-report``); the
   witnesses stop with the server.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import typer
from rich.console import Console

from service.config import Settings, get_settings
from service.sim import government
from service.sim import witnesses as demo_witnesses
from service.sim.population import DEFAULT_SEED
from service.sim.report import render
from service.sim.setup import reset_store
from service.sourcefile import SourceFileError

SERVER_START_SECONDS = 60.0


def _start_server(
    settings: Settings, port: int, log_path: Path, witnesses: list[demo_witnesses.DemoWitness]
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "TELLONCE_DATABASE_URL": settings.database_url,
        "TELLONCE_DATA_DIR": str(settings.data_dir),
        # The demo's webhook receivers listen on loopback.
        "TELLONCE_WEBHOOK_ALLOW_PRIVATE": "true",
        "TELLONCE_PUBLIC_URL": f"http://127.0.0.1:{port}",
        # INFO: one JSON line per request, as the README shows; never a body or a query.
        "TELLONCE_LOG_LEVEL": os.environ.get("TELLONCE_LOG_LEVEL", "INFO"),
        # Every checkpoint goes to the demo's witnesses; it is witnessed once all cosign.
        "TELLONCE_AUDIT_WITNESSES": demo_witnesses.witnesses_setting(witnesses),
        "TELLONCE_AUDIT_WITNESS_QUORUM": str(len(witnesses)),
    }
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log_file:
        # The command is this interpreter and fixed arguments; nothing comes from input.
        return subprocess.Popen(  # noqa: S603
            [sys.executable, "-m", "service.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )


def _wait_healthy(process: subprocess.Popen[bytes], base_url: str, log_path: Path) -> None:
    deadline = time.monotonic() + SERVER_START_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}; see {log_path}")
        try:
            if httpx.get(f"{base_url}/readyz", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"the server did not become ready within {SERVER_START_SECONDS:.0f} s; see {log_path}")


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=5.0).status_code == 200
    except httpx.TransportError:
        return False


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def stop_on_signals() -> None:
    """Handle Ctrl-C and SIGTERM (``kill``, a service manager, a container stop) alike, so
    the demo's clean-up runs and its server and witness processes stop with it.

    Python's default for SIGTERM ends the process at once; and a process started in the
    background of a non-interactive shell inherits SIGINT ignored, in which case Python
    installs no Ctrl-C handler at all. Either way the children would be left running."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def demo(
    citizens: int = typer.Option(5000, min=1, max=1_000_000, help="Citizens in the synthetic population."),
    port: int = typer.Option(8000, min=1, max=65535, help="Port to serve on (127.0.0.1)."),
    duration: float = typer.Option(30.0, min=1.0, max=3600.0, help="Seconds of department traffic."),
    reset: bool = typer.Option(False, "--reset", help="Wipe the embedded store and start again."),
    seed: int = typer.Option(DEFAULT_SEED, help="Seed of the population and of the traffic."),
    exit_after_report: bool = typer.Option(
        False, "--exit-after-report", help="Stop the server and exit once the report is printed."
    ),
) -> None:
    """Build a simulated tell-us-once government, serve it, live through life events, and
    report what was shared, what was refused, and what citizens did not have to tell twice."""
    stop_on_signals()
    console = Console()
    settings = get_settings()
    if reset:
        try:
            reset_store(settings)
        except ValueError as exc:
            console.print(f"[red]{exc}[/red]")
            raise typer.Exit(2) from None
        get_settings.cache_clear()
        settings = get_settings()
    base_url = f"http://127.0.0.1:{port}"
    try:
        prepared = asyncio.run(government.prepare(settings, citizens, seed, base_url, console))
    except SourceFileError as exc:
        for error in exc.errors:
            console.print(str(error), markup=False, highlight=False)
        raise typer.Exit(1) from None
    except RuntimeError as exc:
        console.print(str(exc), markup=False, highlight=False)
        raise typer.Exit(1) from None
    try:
        witnesses = demo_witnesses.start_witnesses(settings, government.log_verifier_key(settings))
    except RuntimeError as exc:
        console.print(str(exc), markup=False, highlight=False)
        raise typer.Exit(1) from None
    for witness in witnesses:
        console.print(
            f"witness: {witness.spec.title} on {witness.url} ({witness.vkey})",
            soft_wrap=True,
            highlight=False,
            markup=False,
        )
    log_path = settings.data_dir / "server.log"
    console.print(f"starting the API on {base_url} (log: {log_path})")
    try:
        process = _start_server(settings, port, log_path, witnesses)
    except BaseException:
        demo_witnesses.stop_witnesses(witnesses)
        raise
    try:
        _wait_healthy(process, base_url, log_path)
        witness_keys = [witness.vkey for witness in witnesses]
        report = asyncio.run(government.run(prepared, base_url, duration, seed, console, witness_keys))
        if report.audit is not None:
            # The signing owners' own check: every release of their fields re-decided.
            console.print(
                f"re-deciding every release of the signing owners' fields ({', '.join(prepared.owner_keys)})"
            )
            report.owner_checks = asyncio.run(government.owner_checks(settings, prepared.owner_keys))
        render(console, report)
        console.print()
        console_available = _answers(f"{base_url}/console/sign-in")
        for line in government.sign_in_lines(
            settings, prepared, base_url, console_available=console_available
        ):
            console.print(line, soft_wrap=True, highlight=False, markup=False)
        if exit_after_report:
            return
        console.print("serving; press Ctrl-C to stop", highlight=False)
        process.wait()
    except KeyboardInterrupt:
        console.print("stopping")
    finally:
        _stop(process)
        demo_witnesses.stop_witnesses(witnesses)
