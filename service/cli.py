"""The ``tellonce`` command. Each domain contributes a sub-command group."""

from __future__ import annotations

import typer
import uvicorn

from service.audit.cli import app as audit_app
from service.audit.policy_changes import connect_policy_changes
from service.auth.cli import auth_app, clients_app
from service.config import Settings, get_settings
from service.crypto.cli import app as keys_app
from service.policy.cli import app as policies_app
from service.records.cli import app as records_app
from service.schema import upgrade
from service.sim.cli import demo as demo_command
from service.witness.cli import app as witness_app

app = typer.Typer(no_args_is_help=True, help="tellonce: tell-us-once data sharing for government.")
db_app = typer.Typer(no_args_is_help=True, help="Database schema.")
app.add_typer(db_app, name="db")
app.add_typer(policies_app, name="policies")
app.add_typer(clients_app, name="clients")
app.add_typer(auth_app, name="auth")
app.add_typer(audit_app, name="audit")
app.add_typer(keys_app, name="keys")
app.add_typer(records_app, name="records")
app.add_typer(witness_app, name="witness")
app.command("demo")(demo_command)


@app.callback()
def start() -> None:
    """Wire the process before any command runs (not at import, so importing this module
    changes nothing): policy changes made from the command line are audited like those
    made through the API."""
    connect_policy_changes()


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Migrate the database to the newest schema."""
    settings = get_settings()
    upgrade(settings.database_url)
    typer.echo("database migrated to head")


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", help="Address to bind."),
    port: int = typer.Option(8000, help="Port to bind."),
    workers: int = typer.Option(1, min=1, help="Worker processes."),
    no_worker: bool = typer.Option(
        False, "--no-worker", help="Do not run the audit sequencer and event dispatcher in-process."
    ),
) -> None:
    """Run the API."""
    import os

    if no_worker:
        os.environ["TELLONCE_RUN_WORKERS"] = "false"
        get_settings.cache_clear()
    settings = get_settings()
    uvicorn.run(
        "service.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        access_log=False,
        log_level=settings.log_level.lower(),
        server_header=False,
    )


@app.command()
def worker() -> None:
    """Run the background workers (the audit sequencer, the witness submitter when witnesses are
    configured, and the event dispatcher) until SIGINT or SIGTERM."""
    import asyncio

    asyncio.run(_run_workers(get_settings()))


async def _run_workers(settings: Settings) -> None:
    """Every loop shares one stop event, set by SIGINT or SIGTERM."""
    import asyncio
    import signal

    from service.audit.config import AuditSettings
    from service.audit.service import make_sequencer
    from service.audit.witnessing import WitnessSubmitter, witness_config
    from service.db import create_engine
    from service.events.dispatcher import run_dispatcher

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    engine = create_engine(settings.database_url)
    witnesses = witness_config(AuditSettings())
    submitter = WitnessSubmitter(engine, witnesses) if witnesses.enabled else None
    try:
        sequencer = make_sequencer(settings, engine)
        loops = [sequencer.run(stop), run_dispatcher(settings, stop)]
        if submitter is not None:
            loops.append(submitter.run(stop, sequencer.checkpoint_signed))
        await asyncio.gather(*loops)
    finally:
        if submitter is not None:
            await submitter.close()
        await engine.dispose()


if __name__ == "__main__":
    app()
