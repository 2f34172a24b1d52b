from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from service.audit.checkpoint import NoteVerifier
from service.witness.cosignature import CosignatureSigner
from service.witness.server import create_witness_app
from service.witness.state import WitnessState
from tests.fixtures.tlog import MemoryLog


@pytest.fixture
def log() -> MemoryLog:
    return MemoryLog.new(size=10)


@pytest.fixture
def witness_signer() -> CosignatureSigner:
    return CosignatureSigner.generate("audit-office.example/witness")


@pytest.fixture
def state(tmp_path: Path, witness_signer: CosignatureSigner, log: MemoryLog) -> Iterator[WitnessState]:
    state = WitnessState(
        tmp_path / "witness.db", witness_signer, [NoteVerifier.parse(log.signer.verifier_key())]
    )
    yield state
    state.close()


@pytest.fixture
async def witness(state: WitnessState) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_witness_app(state))
    async with httpx.AsyncClient(transport=transport, base_url="http://witness.test") as client:
        yield client
