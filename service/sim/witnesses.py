"""The demo's two witnesses: the National Audit Office and the Information Commissioner.

Each is a real witness process (``python -m service.witness serve``, the same command as
``tellonce witness serve``, importing only the witness) on a free loopback port, following
the demo log's verifier key. Its key, its own SQLite state and its log (all 0600) live in
``$TELLONCE_DATA_DIR/witnesses/`` (made 0700): a second run starts the same witnesses again, which
still remember the size they last cosigned, and ``--reset`` wipes them with the rest of
the store.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from service.config import Settings
from service.private_files import SharedSecretFile, append_owner_only, make_private_dir
from service.witness.cli import read_private_key, write_private_key
from service.witness.cosignature import CosignatureError, CosignatureSigner

# Generous: the demo starts them while the machine may be busy.
WITNESS_START_SECONDS = 60.0
WITNESS_STOP_SECONDS = 10.0
WITNESSES_DIR = "witnesses"


@dataclass(frozen=True)
class WitnessSpec:
    slug: str  # file names in the data dir
    name: str  # the witness's key name, in its vkey and cosignature lines
    title: str  # who runs it, as the demo says it


DEMO_WITNESSES = (
    WitnessSpec("nao", "audit-office.demo.gov.example/witness", "the National Audit Office"),
    WitnessSpec("ico", "ico.demo.gov.example/witness", "the Information Commissioner"),
)


@dataclass
class DemoWitness:
    spec: WitnessSpec
    vkey: str
    url: str
    log_path: Path
    process: subprocess.Popen[bytes]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=WITNESS_STOP_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _signer(folder: Path, spec: WitnessSpec) -> CosignatureSigner:
    """The witness's key, made (mode 0600) on the first run and kept after."""
    path = folder / f"{spec.slug}.key"
    if not path.exists():
        write_private_key(CosignatureSigner.generate(spec.name), path)
    try:
        return read_private_key(path)
    except (OSError, CosignatureError, SharedSecretFile) as exc:
        raise RuntimeError(
            f"the key of {spec.title}'s witness ({path}) cannot be read: {exc}; "
            "`make run-reset` (tellonce demo --reset) starts again"
        ) from None


def _start(folder: Path, spec: WitnessSpec, log_vkey: str) -> DemoWitness:
    signer = _signer(folder, spec)
    port = _free_port()
    log_path = folder / f"{spec.slug}.log"
    # The witness's log names the checkpoints it was sent: for the owner only, as its state.
    log_file = append_owner_only(log_path)
    try:
        # This interpreter and fixed arguments; nothing comes from input.
        process = subprocess.Popen(  # noqa: S603
            [
                sys.executable,
                "-m",
                "service.witness",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--key",
                str(folder / f"{spec.slug}.key"),
                "--state",
                str(folder / f"{spec.slug}.db"),
                "--log",
                log_vkey,
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    finally:
        os.close(log_file)
    return DemoWitness(spec, signer.verifier_key(), f"http://127.0.0.1:{port}", log_path, process)


def _wait_answering(witness: DemoWitness, deadline: float) -> None:
    while time.monotonic() < deadline:
        if witness.process.poll() is not None:
            raise RuntimeError(
                f"the witness of {witness.spec.title} exited with {witness.process.returncode}; "
                f"see {witness.log_path}"
            )
        try:
            # Any answer will do (404 for an origin it does not follow): it is listening.
            httpx.get(f"{witness.url}/checkpoint", params={"origin": "-"}, timeout=1.0)
            return
        except httpx.TransportError:
            time.sleep(0.05)
    raise RuntimeError(
        f"the witness of {witness.spec.title} did not start within {WITNESS_START_SECONDS:.0f} s; "
        f"see {witness.log_path}"
    )


def start_witnesses(settings: Settings, log_vkey: str) -> list[DemoWitness]:
    """Start both witnesses at once and wait until each answers; on any failure stop
    those started and raise ``RuntimeError``."""
    folder = settings.data_dir / WITNESSES_DIR
    make_private_dir(folder)
    started: list[DemoWitness] = []
    try:
        for spec in DEMO_WITNESSES:
            started.append(_start(folder, spec, log_vkey))
        deadline = time.monotonic() + WITNESS_START_SECONDS
        for witness in started:
            _wait_answering(witness, deadline)
    except BaseException:
        stop_witnesses(started)
        raise
    return started


def stop_witnesses(witnesses: list[DemoWitness]) -> None:
    for witness in witnesses:
        witness.stop()


def witnesses_setting(witnesses: list[DemoWitness]) -> str:
    """The value of ``TELLONCE_AUDIT_WITNESSES`` for these witnesses (quorum: all)."""
    return " ".join(f"{w.url}={w.vkey}" for w in witnesses)
