"""The demo's two witnesses: the National Audit Office and the Information Commissioner.

Each is a real witness process (``python -m service.witness serve``, the same command as
``tellonce witness serve``) on a loopback port, with its key and
its own state under ``$TELLONCE_DATA_DIR/witnesses/`` (kept across runs, wiped by
``--reset`` with the rest of the store), following the demo log's verifier key.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from service.config import Settings
from service.witness.cli import read_private_key, write_private_key
from service.witness.cosignature import CosignatureSigner

# Generous: the demo starts them while the machine is busy seeding and serving.
WITNESS_START_SECONDS = 60.0


@dataclass(frozen=True)
class WitnessSpec:
    slug: str
    name: str  # the witness's key name
    title: str  # who runs it, in the report


DEMO_WITNESSES = (
    WitnessSpec("nao", "audit-office.demo.gov.example/witness", "the National Audit Office"),
    WitnessSpec("ico", "ico.demo.gov.example/witness", "the Information Commissioner"),
)


@dataclass
class DemoWitness:
    spec: WitnessSpec
    vkey: str
    url: str
    process: subprocess.Popen[bytes]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _key(folder: Path, spec: WitnessSpec) -> CosignatureSigner:
    path = folder / f"{spec.slug}.key"
    if not path.exists():
        write_private_key(CosignatureSigner.generate(spec.name), path)
    return read_private_key(path)


def start_witnesses(settings: Settings, log_vkey: str) -> list[DemoWitness]:
    """Start both witnesses and wait until each answers; stop them all on failure."""
    folder = settings.data_dir / "witnesses"
    folder.mkdir(parents=True, exist_ok=True)
    started: list[DemoWitness] = []
    try:
        for spec in DEMO_WITNESSES:
            signer = _key(folder, spec)
            port = _free_port()
            with (folder / f"{spec.slug}.log").open("ab") as log_file:
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
            witness = DemoWitness(spec, signer.verifier_key(), f"http://127.0.0.1:{port}", process)
            started.append(witness)
            _wait_answering(witness, folder)
    except BaseException:
        stop_witnesses(started)
        raise
    return started


def _wait_answering(witness: DemoWitness, folder: Path) -> None:
    deadline = time.monotonic() + WITNESS_START_SECONDS
    while time.monotonic() < deadline:
        if witness.process.poll() is not None:
            raise RuntimeError(
                f"the witness of {witness.spec.title} exited; see {folder}/{witness.spec.slug}.log"
            )
        try:
            httpx.get(f"{witness.url}/checkpoint", params={"origin": "-"}, timeout=1.0)
            return
        except httpx.TransportError:
            time.sleep(0.05)
    raise RuntimeError(
        f"the witness of {witness.spec.title} did not start; see {folder}/{witness.spec.slug}.log"
    )


def stop_witnesses(witnesses: list[DemoWitness]) -> None:
    for witness in witnesses:
        witness.stop()


def witnesses_setting(witnesses: list[DemoWitness]) -> str:
    """The value of TELLONCE_AUDIT_WITNESSES for these witnesses."""
    return " ".join(f"{w.url}={w.vkey}" for w in witnesses)
