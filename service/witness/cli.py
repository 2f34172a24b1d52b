"""``tellonce witness``: make a witness key and run a standalone witness."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import typer
import uvicorn

from service.audit.checkpoint import CheckpointError
from service.audit.key_arguments import parse_key_argument
from service.private_files import SharedSecretFile, check_owner_only
from service.read_deadline import HTTP_PROTOCOL
from service.witness.cosignature import CosignatureError, CosignatureSigner
from service.witness.server import create_witness_app
from service.witness.state import TrustedLog, WitnessState

# Plain help and usage errors, as `tellonce witness` prints them (see service/cli.py), when
# run as `python -m service.witness`.
app = typer.Typer(
    no_args_is_help=True,
    rich_markup_mode=None,
    help="A standalone witness that cosigns the audit log's checkpoints.",
)


def write_private_key(signer: CosignatureSigner, out: Path) -> None:
    """Write the key file with mode 0600; never overwrite an existing key. Its folder must
    exist (none is made, with whatever mode the umask would give it)."""
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(signer.private_key_text())


def read_private_key(path: Path) -> CosignatureSigner:
    """The witness key in ``path``. Raises ``SharedSecretFile``, reading nothing, if the
    file is open to other accounts (``check_owner_only``)."""
    check_owner_only(path, "witness key")
    try:
        return CosignatureSigner.from_private_key_text(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise CosignatureError(f"{path}: not UTF-8 text") from None
    except CosignatureError as exc:
        # The problem and the file, never the key's text.
        raise CosignatureError(f"{path}: {exc}") from None


def _trusted_log(value: str) -> TrustedLog:
    return parse_key_argument(value, TrustedLog.parse)


@app.command("keygen")
def keygen(
    name: str = typer.Option(..., "--name", help="The witness's name, e.g. audit-office.example/witness."),
    out: Path = typer.Option(..., "--out", help="The private key file to create (mode 0600)."),
) -> None:
    """Write a new witness key and print its verifier key (vkey) for the log's operator."""
    try:
        signer = CosignatureSigner.generate(name)
    except CosignatureError as exc:
        typer.echo(f"invalid witness name: {exc}", err=True)
        raise typer.Exit(2) from None
    try:
        write_private_key(signer, out)
    except FileExistsError:
        typer.echo(f"{out} exists; a witness key is never overwritten", err=True)
        raise typer.Exit(1) from None
    except OSError as exc:
        # No such folder, or a file where a folder should be: said as it is.
        typer.echo(f"cannot write {out}: {exc.strerror or type(exc).__name__}", err=True)
        raise typer.Exit(1) from None
    typer.echo(signer.verifier_key())


@app.command("serve")
def serve(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind."),
    port: int = typer.Option(8100, "--port", min=1, max=65535, help="Port to bind."),
    key: Path = typer.Option(
        ...,
        "--key",
        help="The witness private key file (from keygen; refused if other accounts may read it).",
    ),
    state: Path = typer.Option(..., "--state", help="The witness's own SQLite state file."),
    log: list[str] = typer.Option(
        ...,
        "--log",
        help=(
            "A log to follow: its verifier key, or its origin line, a space and its verifier key "
            "(or a file holding either). Without an origin, the key's name is the origin. Repeatable."
        ),
    ),
) -> None:
    """Run the witness: POST /add-checkpoint and GET /checkpoint?origin=ORIGIN."""
    try:
        signer = read_private_key(key)
        logs = [_trusted_log(value) for value in log]
    except (OSError, CheckpointError, SharedSecretFile) as exc:
        typer.echo(f"cannot start the witness: {exc}", err=True)
        raise typer.Exit(2) from None
    try:
        witness_state = WitnessState(state, signer, logs)
    except (OSError, sqlite3.Error) as exc:
        # Said here: ``tellonce`` would take an SQLite error for its own database's.
        reason = (exc.strerror or type(exc).__name__) if isinstance(exc, OSError) else str(exc)
        typer.echo(f"cannot start the witness: cannot use the state file {state}: {reason}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"witness {signer.verifier_key()} on http://{host}:{port}", err=True)
    try:
        uvicorn.run(
            create_witness_app(witness_state),
            host=host,
            port=port,
            http=HTTP_PROTOCOL,
            access_log=False,
            log_level="warning",
            server_header=False,
        )
    finally:
        witness_state.close()
