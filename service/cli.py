"""The ``tellonce`` command. Each domain contributes a sub-command group.

The groups are imported only when one of them runs: importing every domain (FastAPI,
SQLAlchemy, the models) costs over a second, and ``tellonce --help`` or a typo should not
pay it. To add a group, name its module and Typer object in ``LAZY_GROUPS`` with a one-line
help; heavy imports inside this file's own commands go inside the function.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any, NoReturn

import typer

# Typer carries its own copy of Click; commands and contexts must be that copy's classes.
from typer import _click as click
from typer.core import TyperCommand, TyperGroup

# name -> (module, attribute, short help). The attribute is a Typer app or a command function.
LAZY_GROUPS: dict[str, tuple[str, str, str]] = {
    "policies": ("service.policy.cli", "app", "Agreements and the catalog, from policy files."),
    "owners": ("service.policy.cli", "owners_app", "Owning departments' signing keys."),
    "clients": ("service.auth.cli", "clients_app", "OAuth2 clients of department systems."),
    "auth": ("service.auth.cli", "auth_app", "Access-token signing keys."),
    "audit": ("service.audit.cli", "app", "The tamper-evident audit log."),
    "keys": ("service.crypto.cli", "app", "Key-encryption keys and data keys."),
    "records": ("service.records.cli", "app", "Citizen records maintenance."),
    "import": (
        "service.records.cli",
        "import_file",
        "Import a department's existing records from a CSV or JSON Lines file.",
    ),
    "witness": (
        "service.witness.cli",
        "app",
        "A standalone witness that cosigns the audit log's checkpoints.",
    ),
    "demo": ("service.sim.cli", "demo", "Build a simulated government, serve it, run life events, report."),
}


class _Placeholder(TyperCommand):
    """What ``--help`` lists for a group that has not been imported."""

    def __init__(self, name: str, short_help: str) -> None:
        super().__init__(name, help=short_help, short_help=short_help)


def _load(name: str) -> click.Command:
    module_name, attribute, _help = LAZY_GROUPS[name]
    target: Any = getattr(importlib.import_module(module_name), attribute)
    if module_name == "service.policy.cli":
        # Policy changes made from the command line are audited like those made through the API.
        from service.audit.policy_changes import connect_policy_changes

        connect_policy_changes()
    if isinstance(target, typer.Typer):
        # A group even when it has one command (``auth``), as ``add_typer`` would make it.
        # Help is plain text like the top level's: rich mode keeps a docstring's line
        # breaks, so a wrapped paragraph would print with ragged lines.
        target.rich_markup_mode = app.rich_markup_mode
        command: click.Command = typer.main.get_group(target)
    else:
        single = typer.Typer(rich_markup_mode=app.rich_markup_mode)
        single.command(name)(target)
        command = typer.main.get_command(single)
    command.name = name
    return command


class LazyGroup(TyperGroup):
    """Lists the lazy groups cheaply; imports one only when it is the command being run."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(LAZY_GROUPS))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in LAZY_GROUPS:
            return _Placeholder(cmd_name, LAZY_GROUPS[cmd_name][2])
        return super().get_command(ctx, cmd_name)

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        name, command, rest = super().resolve_command(ctx, args)
        if name is not None and isinstance(command, _Placeholder):
            command = _load(name)
        return name, command, rest


app = typer.Typer(
    cls=LazyGroup,
    no_args_is_help=True,
    rich_markup_mode=None,
    help="tellonce: tell-us-once data sharing for government.",
)
db_app = typer.Typer(no_args_is_help=True, help="Database schema.")


@app.callback()
def main(
    actor: str | None = typer.Option(
        None,
        "--actor",
        envvar="TELLONCE_ACTOR",
        help="Who is running this command, as the audit log records it (default: the OS user).",
    ),
) -> None:
    """tellonce: tell-us-once data sharing for government."""
    from service import operator

    refused = operator.refusal(actor.strip()) if actor else None
    if refused is not None:
        typer.echo(f"tellonce: --actor (or TELLONCE_ACTOR): {refused}", err=True)
        raise typer.Exit(2)
    operator.choose(actor)


app.add_typer(db_app, name="db")


def _settings_or_exit() -> Any:
    """The settings, or one line naming the bad variable (never a validation traceback)."""
    from pydantic import ValidationError

    from service.config import get_settings

    try:
        return get_settings()
    except ValidationError as exc:
        _refuse_settings(exc)


def _settings_classes() -> dict[str, type[Any]]:
    """Every settings class imported so far, by name (a ``ValidationError``'s title)."""
    from pydantic_settings import BaseSettings

    found: dict[str, type[Any]] = {}
    pending: list[type[Any]] = [BaseSettings]
    while pending:
        cls = pending.pop()
        for sub in cls.__subclasses__():
            found.setdefault(sub.__name__, sub)
            pending.append(sub)
    return found


def _settings_env_prefix(exc: Any) -> str | None:
    """The environment prefix of the settings class that refused (``TELLONCE_AUDIT_`` for
    ``AuditSettings``), or None when the error is not a settings class's."""
    cls = _settings_classes().get(exc.title)
    if cls is None:
        return None
    return str(cls.model_config.get("env_prefix", ""))


def _settings_refusal(exc: Any) -> str:
    """One line naming each bad setting by its environment variable, and its rule; the value
    itself is left out. A rule across several settings names them in its message."""
    prefix = _settings_env_prefix(exc) or "TELLONCE_"

    def named(loc: tuple[Any, ...]) -> str:
        if not loc:
            return "settings"
        return (prefix + str(loc[0])).upper() + "".join(f".{part}" for part in loc[1:])

    problems = "; ".join(f"{named(e['loc'])}: {e['msg']}" for e in exc.errors(include_input=False))
    return f"tellonce: invalid settings: {problems}"


def _refuse_settings(exc: Any) -> NoReturn:
    """Exit 2, nothing done: the settings cannot be used."""
    typer.echo(_settings_refusal(exc), err=True)
    raise typer.Exit(2) from None


def run() -> None:
    """The ``tellonce`` command. Settings are read, and the database opened, by whichever
    command needs them, so a bad setting, a database that cannot be used, one that was
    never migrated or one a newer release migrated, a root key that cannot be used, or a
    file holding a secret (the audit checkpoint key, an access-token signing key) that
    other accounts may read, an access-token signing-key file that cannot be parsed, or
    (in production) an audit checkpoint key that is missing or is no Ed25519 seed, may
    surface from any of them: each is one line and exit 2, never a traceback. An audit
    entry that cannot be written is one line and exit 1."""
    from pydantic import ValidationError

    try:
        app()
    except ValidationError as exc:
        # Any settings class (Settings, AuditSettings, ConsoleSettings...); a validation
        # error of anything else is a bug and keeps its traceback.
        if _settings_env_prefix(exc) is None:
            raise
        typer.echo(_settings_refusal(exc), err=True)
        sys.exit(2)
    except Exception as exc:  # re-raised below unless it is a key or the database refusing
        from service.audit.errors import AuditUnavailable
        from service.audit.errors import SigningKeyMissing as CheckpointKeyMissing
        from service.audit.witnessing import WitnessConfigInvalid
        from service.auth.keys import KEY_NAME, SigningKeyCorrupt
        from service.crypto.errors import RootKeyUnavailable
        from service.db import missing_schema, unusable_database
        from service.private_files import SharedSecretFile
        from service.schema import NewerSchema

        if isinstance(exc, WitnessConfigInvalid):
            # A setting, as a settings class's refusal is: named, its value not repeated.
            typer.echo(f"tellonce: invalid settings: {exc.variable}: {exc}", err=True)
            sys.exit(2)
        if isinstance(exc, AuditUnavailable):
            # The change that needed the entry was rolled back with it; earlier commits
            # (finished batches) stay, and running the command again carries on.
            typer.echo(f"tellonce: {exc.detail}", err=True)
            sys.exit(1)
        if isinstance(exc, NewerSchema):
            typer.echo(f"tellonce: {exc}", err=True)
            sys.exit(2)
        if isinstance(exc, RootKeyUnavailable):
            # Its message names the setting or file and what is wrong, never the key. With a
            # PKCS#11 token there is no root key: the token (or its PIN) is what failed.
            from service.config import get_settings

            what = "PKCS#11 token" if get_settings().key_provider == "pkcs11" else "root key"
            typer.echo(f"tellonce: cannot use the {what}: {exc}", err=True)
            sys.exit(2)
        if isinstance(exc, SharedSecretFile):
            # As the root key's: the file is named and left as it is, the key never read.
            typer.echo(f"tellonce: cannot use the {exc.secret}: {exc}", err=True)
            sys.exit(2)
        if isinstance(exc, CheckpointKeyMissing):
            # Production makes no checkpoint key: the message names the file or the token's
            # key pair and says to run ``tellonce init``.
            typer.echo(f"tellonce: cannot use the audit checkpoint key: {exc}", err=True)
            sys.exit(2)
        if isinstance(exc, SigningKeyCorrupt):
            # The file is named, never what it holds.
            typer.echo(f"tellonce: cannot use the {KEY_NAME}s: {exc}", err=True)
            sys.exit(2)
        reason = unusable_database(exc)
        if reason is not None:
            typer.echo(f"tellonce: cannot use the database {_database_named()}: {reason}", err=True)
            sys.exit(2)
        missing = missing_schema(exc)
        if missing is None:
            raise
        typer.echo(
            f"tellonce: the database {_database_named()} has no schema, or an older one ({missing}): "
            "run `tellonce db upgrade` first",
            err=True,
        )
        sys.exit(2)


def _database_named() -> str:
    """The configured database URL with any password masked."""
    from sqlalchemy.engine import make_url

    from service.config import get_settings

    return make_url(get_settings().database_url).render_as_string(hide_password=True)


def _refuse_if_not_ready(settings: Any) -> None:
    """Stop ``serve`` or ``worker`` before it starts: a refused setting or a missing key (a
    file, or with a PKCS#11 token the checkpoint key pair in it) is one line and exit 1; a
    key file other accounts may read raises ``SharedSecretFile``, and a token that cannot be
    opened ``RootKeyUnavailable`` (each one line and exit 2 from ``run``)."""
    from service.bootstrap import check_secret_files, startup_refusal

    refusal = startup_refusal(settings)
    if refusal is not None:
        typer.echo(f"tellonce: {refusal}", err=True)
        raise typer.Exit(1)
    check_secret_files(settings)


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Migrate the database to the newest schema."""
    from service.schema import upgrade

    upgrade(_settings_or_exit().database_url)
    typer.echo("database migrated to head")


@app.command()
def init(
    new_root_key: bool = typer.Option(
        False, "--new-root-key", help="Create root.key in the data directory if no root key is set."
    ),
    new_checkpoint_key: bool = typer.Option(
        False,
        "--new-checkpoint-key",
        help="Make a new audit checkpoint key (a file, or a key pair in the PKCS#11 token) although "
        "the database holds checkpoints signed by the missing one (tellonce audit verify then fails "
        "from the first of them).",
    ),
) -> None:
    """Prepare an installation: check the root key (or the PKCS#11 token), create the signing
    keys, migrate.

    Safe to run again: it creates only what is missing and never replaces a key. Every check
    that can refuse runs first, so a refused init makes nothing."""
    from service.bootstrap import InitFailed, initialise

    settings = _settings_or_exit()
    try:
        report = initialise(
            settings, new_root_key=new_root_key, new_checkpoint_key=new_checkpoint_key, say=typer.echo
        )
    except InitFailed as exc:
        typer.echo(f"tellonce init: {exc}", err=True)
        raise typer.Exit(1) from None
    for warning in report.warnings:
        typer.echo(f"tellonce init: warning: {warning}", err=True)
    typer.echo(f"audit checkpoint verifier key (give it to auditors): {report.checkpoint_verifier_key}")
    typer.echo("back up:")
    for item in report.backup:
        typer.echo(f"  - {item}")


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", help="Address to bind."),
    port: int = typer.Option(8000, min=1, max=65535, help="Port to bind."),
    workers: int = typer.Option(1, min=1, help="Worker processes."),
    no_worker: bool = typer.Option(
        False, "--no-worker", help="Do not run the audit sequencer and event dispatcher in-process."
    ),
) -> None:
    """Run the API."""
    import asyncio
    import os

    import uvicorn

    from service.config import get_settings
    from service.db import reach
    from service.observability import uvicorn_log_config
    from service.read_deadline import SERVE_HTTP_PROTOCOL

    # A serving process keeps its startup heap for life (``Settings.freeze_startup_heap``).
    os.environ.setdefault("TELLONCE_FREEZE_STARTUP_HEAP", "true")
    if no_worker:
        os.environ["TELLONCE_RUN_WORKERS"] = "false"
    get_settings.cache_clear()
    settings = _settings_or_exit()
    # The app's other settings, read now so a bad one is `run`'s one line rather than a
    # worker's failed start (audit) or a 500 on the first console request (console).
    from service.audit.config import AuditSettings
    from service.audit.witnessing import witness_config
    from service.console.config import ConsoleSettings

    witness_config(AuditSettings())
    ConsoleSettings()
    _refuse_if_not_ready(settings)
    # The keys read as each worker reads them at startup, so a file missing or that cannot
    # be parsed is one line rather than each worker's failed start-up traceback. With no
    # manifest (development and test only: production was refused above) the app makes one.
    from service.auth.keys import SigningKeys, manifest_path

    if manifest_path(settings.data_dir).exists():
        try:
            SigningKeys(settings.data_dir, settings.access_token_ttl_seconds)
        except OSError as exc:
            typer.echo(
                f"tellonce: cannot read the access-token signing key in {exc.filename}: {exc.strerror}",
                err=True,
            )
            raise typer.Exit(2) from None
    # One line (from ``run``) for a database that is not there, rather than each worker's
    # failed start-up traceback from uvicorn. The worker command waits for it instead.
    asyncio.run(reach(settings.database_url))
    uvicorn.run(
        "service.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        http=SERVE_HTTP_PROTOCOL,
        access_log=False,
        log_level=settings.log_level.lower(),
        log_config=uvicorn_log_config(settings.log_json),
        server_header=False,
    )


@app.command()
def worker() -> None:
    """Run the background workers (the audit sequencer, the witness submitter when witnesses are
    configured, and the event dispatcher) until SIGINT or SIGTERM, or, exiting 1, until the
    SQLite database file or its -wal is replaced or deleted under them."""
    import asyncio
    import os

    from service.config import get_settings

    # A worker keeps its startup heap for life, as a serving process does.
    os.environ.setdefault("TELLONCE_FREEZE_STARTUP_HEAP", "true")
    get_settings.cache_clear()
    settings = _settings_or_exit()
    # Before any thread starts: on Linux a nice value is a thread's own, and the threads
    # made later (the database drivers', the sequencer's) inherit it.
    if os.getpriority(os.PRIO_PROCESS, 0) < settings.worker_nice:
        os.setpriority(os.PRIO_PROCESS, 0, settings.worker_nice)
    # The witness list is read now, so a bad one is ``run``'s one line, not a traceback.
    from service.audit.config import AuditSettings
    from service.audit.witnessing import witness_config

    witness_config(AuditSettings())
    _refuse_if_not_ready(settings)
    if asyncio.run(_run_workers(settings)):
        # Its file was replaced: the supervisor starts it again on the one there now.
        raise typer.Exit(1)


async def _run_workers(settings: Any) -> bool:
    """Every loop shares one stop event, set by SIGINT or SIGTERM, or when the SQLite file
    is replaced under the worker (``health.watch_sqlite_file``, then True is returned); the
    loops start once the schema is current."""
    import asyncio
    import signal

    from service.audit.config import AuditSettings
    from service.audit.service import make_sequencer
    from service.audit.witnessing import WitnessSubmitter, witness_config
    from service.db import SqliteReads, engine_for, sqlite_file
    from service.events.dispatcher import run_dispatcher
    from service.health import watch_sqlite_file
    from service.heap import freeze_startup_heap
    from service.observability import configure_logging
    from service.schema import SchemaGate

    configure_logging(settings.log_level, settings.log_json)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    engine = engine_for(settings)
    gate = SchemaGate(engine)
    witnesses = witness_config(AuditSettings())
    submitter = WitnessSubmitter(engine, witnesses) if witnesses.enabled else None
    # On a SQLite file, a connection kept open to tell whether the file or its log is
    # replaced under the worker (opened after the engine made the file, if it was not there).
    path = sqlite_file(engine)
    reads = SqliteReads.open(path) if path is not None else None
    watching = asyncio.create_task(watch_sqlite_file(reads, stop)) if reads is not None else None
    try:
        if await gate.wait(stop):
            sequencer = make_sequencer(settings, engine)
            if settings.freeze_startup_heap:
                freeze_startup_heap()
            loops = [sequencer.run(stop), run_dispatcher(settings, stop)]
            if submitter is not None:
                loops.append(submitter.run(stop, sequencer.checkpoint_signed))
            await asyncio.gather(*loops)
    finally:
        stop.set()
        replaced = watching is not None and await watching
        if reads is not None:
            await reads.close()
        if submitter is not None:
            await submitter.close()
        await engine.dispose()
    return replaced


if __name__ == "__main__":
    run()
