"""The demo's two witnesses: real processes on loopback, keys and state kept in the data dir."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.config import Settings
from service.sim import witnesses as demo_witnesses
from service.sim.audit_check import cosigners
from service.sim.witnesses import DemoWitness, start_witnesses, stop_witnesses, witnesses_setting
from service.witness.cli import write_private_key
from service.witness.cosignature import CosignatureSigner, CosignatureVerifier, split_note
from tests.fixtures.tlog import MemoryLog


@pytest.fixture
def log() -> MemoryLog:
    return MemoryLog.new(size=12)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(env="test", data_dir=tmp_path / ".tellonce")


@pytest.fixture
def running(settings: Settings, log: MemoryLog) -> Iterator[list[DemoWitness]]:
    started = start_witnesses(settings, log.signer.verifier_key())
    try:
        yield started
    finally:
        stop_witnesses(started)


def _cosign(witness: DemoWitness, log: MemoryLog, old: int) -> httpx.Response:
    return httpx.post(f"{witness.url}/add-checkpoint", content=log.submission(old), timeout=30)


class TestDemoWitnesses:
    def test_the_audit_office_and_the_commissioner_cosign_the_demo_log(
        self, running: list[DemoWitness], log: MemoryLog
    ) -> None:
        assert [w.spec.title for w in running] == [
            "the National Audit Office",
            "the Information Commissioner",
        ]
        note = log.note()
        for witness in running:
            assert witness.url.startswith("http://127.0.0.1:")
            answered = _cosign(witness, log, 0)
            assert answered.status_code == 200, answered.text
            note += answered.text
        body, lines = split_note(note)
        for witness in running:
            assert CosignatureVerifier.parse(witness.vkey).find(body, lines) is not None
        # What the demo's auditor counts for the report line.
        assert cosigners(note, [w.vkey for w in running]) == 2
        assert cosigners(log.note(), [w.vkey for w in running]) == 0

    def test_the_served_app_is_configured_with_both(self, running: list[DemoWitness]) -> None:
        pairs = witnesses_setting(running).split()
        assert pairs == [f"{w.url}={w.vkey}" for w in running]

    def test_keys_are_private_files_in_the_data_dir(
        self, running: list[DemoWitness], settings: Settings
    ) -> None:
        folder = settings.data_dir / demo_witnesses.WITNESSES_DIR
        for witness in running:
            key = folder / f"{witness.spec.slug}.key"
            assert stat.S_IMODE(key.stat().st_mode) == 0o600
            assert witness.vkey == CosignatureSigner.from_private_key_text(key.read_text()).verifier_key()

    def test_the_folder_and_every_file_in_it_are_the_owners_only_whatever_the_umask(
        self, settings: Settings, log: MemoryLog
    ) -> None:
        # Nothing taken away by the umask: every mode is the one the file was made with.
        umask = os.umask(0)
        try:
            started = start_witnesses(settings, log.signer.verifier_key())
        finally:
            os.umask(umask)
        stop_witnesses(started)
        folder = settings.data_dir / demo_witnesses.WITNESSES_DIR
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in folder.iterdir()}
        assert {"nao.key", "nao.db", "nao.log", "ico.key", "ico.db", "ico.log"} <= set(modes)
        assert modes == dict.fromkeys(modes, 0o600)

    def test_a_log_kept_from_an_earlier_run_is_made_the_owners_only_and_appended_to(
        self, settings: Settings, log: MemoryLog
    ) -> None:
        folder = settings.data_dir / demo_witnesses.WITNESSES_DIR
        folder.mkdir(parents=True)
        kept = folder / "nao.log"
        kept.write_bytes(b"an earlier run\n")
        kept.chmod(0o644)
        stop_witnesses(start_witnesses(settings, log.signer.verifier_key()))
        assert stat.S_IMODE(kept.stat().st_mode) == 0o600
        assert kept.read_bytes().startswith(b"an earlier run\n")

    def test_a_second_run_reuses_their_keys_and_what_they_cosigned(
        self, settings: Settings, log: MemoryLog
    ) -> None:
        first = start_witnesses(settings, log.signer.verifier_key())
        try:
            for witness in first:
                assert _cosign(witness, log, 0).status_code == 200
        finally:
            stop_witnesses(first)
        assert all(w.process.poll() is not None for w in first)

        log.grow(5)
        second = start_witnesses(settings, log.signer.verifier_key())
        try:
            assert [w.vkey for w in second] == [w.vkey for w in first]
            for witness in second:
                # They remember size 12: a submission from 0 is stale (409 with their size),
                # one from 12 with its consistency proof is cosigned.
                stale = _cosign(witness, log, 0)
                assert (stale.status_code, stale.text) == (409, "12\n")
                assert _cosign(witness, log, 12).status_code == 200
        finally:
            stop_witnesses(second)
        assert all(w.process.poll() is not None for w in second)

    def test_an_unreadable_witness_key_stops_the_witness_already_started(
        self, settings: Settings, log: MemoryLog, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # The Commissioner's key file is not a key: the demo says which, and the Audit
        # Office's witness, already running, is stopped.
        folder = settings.data_dir / demo_witnesses.WITNESSES_DIR
        folder.mkdir(parents=True)
        (folder / "ico.key").write_text("not a key\n")
        (folder / "ico.key").chmod(0o600)
        started: list[DemoWitness] = []
        real_start = demo_witnesses._start

        def recording_start(*args: object) -> DemoWitness:
            witness = real_start(*args)  # type: ignore[arg-type]
            started.append(witness)
            return witness

        monkeypatch.setattr(demo_witnesses, "_start", recording_start)
        with pytest.raises(
            RuntimeError, match=r"the Information Commissioner's witness .*ico\.key.* cannot be read"
        ):
            start_witnesses(settings, log.signer.verifier_key())
        assert [w.spec.slug for w in started] == ["nao"]
        assert started[0].process.poll() is not None

    @pytest.mark.parametrize("mode", [0o644, 0o640], ids=oct)
    def test_a_kept_key_open_to_other_accounts_starts_no_witness(
        self, settings: Settings, log: MemoryLog, monkeypatch: pytest.MonkeyPatch, mode: int
    ) -> None:
        folder = settings.data_dir / demo_witnesses.WITNESSES_DIR
        folder.mkdir(parents=True)
        key = folder / "nao.key"
        write_private_key(CosignatureSigner.generate("audit-office.demo.gov.example/witness"), key)
        key.chmod(mode)
        started: list[DemoWitness] = []
        real_start = demo_witnesses._start

        def recording_start(*args: object) -> DemoWitness:
            witness = real_start(*args)  # type: ignore[arg-type]
            started.append(witness)
            return witness

        monkeypatch.setattr(demo_witnesses, "_start", recording_start)
        try:
            with pytest.raises(RuntimeError) as caught:
                start_witnesses(settings, log.signer.verifier_key())
        finally:
            stop_witnesses(started)
        assert f"the witness key in {key} is open to other accounts (mode {mode:o})" in str(caught.value)
        assert started == []
        assert stat.S_IMODE(key.stat().st_mode) == mode
