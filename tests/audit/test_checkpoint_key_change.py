"""`tellonce audit verify` across a change of checkpoint key: the key lost, a new one made
with `tellonce init --new-checkpoint-key`, the log going on under it. Each checkpoint is
held to the key the log records in force at its size, live and in an exported bundle."""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import func, select, update
from typer.testing import CliRunner

from service.audit.checkpoint import NoteSigner, NoteVerifier
from service.audit.checkpoint_keys import (
    KeyChange,
    KeyRange,
    ReplacedKey,
    assign_keys,
    key_change_entry,
    replaced_keys_missing,
)
from service.audit.cli import export_bundle, verify_database
from service.audit.config import AuditSettings, read_signing_key, signing_key_path
from service.audit.models import AuditCheckpoint, AuditEntryRow, AuditLeaf
from service.audit.schemas import AuditEntry
from service.audit.verify import VerificationFailed
from service.audit.verify_pages import Parallel
from service.audit.writer import append_many_in_transaction as append_many
from service.cli import app as cli_app
from service.config import get_settings
from service.db import create_engine
from service.policy.signing import OwnerSigner
from tests.audit.test_tamper import _drop_triggers
from tests.fixtures.audit import make_entry, make_sequencer, sequence_all
from tests.fixtures.databases import settings_on


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli_app, list(args))
    return result.exit_code, result.stdout, result.stderr


async def _grow(signer: NoteSigner, entries: int) -> list[int]:
    """Append ``entries`` entries and sequence them with ``signer``, a checkpoint every 3
    leaves (and one at the end); the sizes of the checkpoints stored, all of them."""
    engine = create_engine(get_settings().database_url)
    try:
        async with engine.begin() as conn:
            await append_many(conn, [make_entry(request_id=f"k-{n}") for n in range(entries)])
        await sequence_all(make_sequencer(engine, signer, every=3))
        async with engine.connect() as conn:
            return list((await conn.scalars(select(AuditCheckpoint.tree_size).order_by("tree_size"))).all())
    finally:
        await engine.dispose()


def _installed_signer() -> NoteSigner:
    return NoteSigner(AuditSettings().origin, read_signing_key(signing_key_path(get_settings())))


def _label(signer: NoteSigner) -> str:
    return f"{signer.name}+{signer.key_hash.hex()}"


@dataclass
class ChangedLog:
    old: NoteSigner
    new: NoteSigner
    old_sizes: list[int]  # the checkpoints the old key signed
    new_sizes: list[int]  # and the new one, after the change
    bundle: Path


@pytest.fixture
def changed_log(
    scratch_database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[ChangedLog]:
    """An installation whose checkpoint key was lost after it signed some checkpoints, and
    replaced the supported way; the new key then signed more. Exported as a bundle too."""
    for name in list(os.environ):
        if name.startswith("TELLONCE_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("TELLONCE_ENV", "test")
    monkeypatch.setenv("TELLONCE_DATABASE_URL", scratch_database)
    monkeypatch.setenv("TELLONCE_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    code, _out, err = invoke("init")
    assert code == 0, err
    old = _installed_signer()
    old_sizes = asyncio.run(_grow(old, 16))
    signing_key_path(get_settings()).unlink()  # lost for good
    code, _out, err = invoke("init", "--new-checkpoint-key")
    assert code == 0, err
    assert "--key OLD-VERIFIER-KEY --key NEW-VERIFIER-KEY" in err
    new = _installed_signer()
    new_sizes = asyncio.run(_grow(new, 12))[len(old_sizes) :]
    assert len(old_sizes) > 1
    assert len(new_sizes) > 1
    bundle = tmp_path / "log.jsonl"
    code, _out, err = invoke("audit", "export", "--out", str(bundle))
    assert code == 0, err
    yield ChangedLog(old, new, old_sizes, new_sizes, bundle)
    get_settings.cache_clear()


class TestVerifyAcrossAKeyChange:
    @pytest.mark.parametrize("offline", [False, True])
    def test_both_keys_verify_the_whole_log_and_say_which_signed_what(
        self, changed_log: ChangedLog, offline: bool
    ) -> None:
        log = changed_log
        where = ("--bundle", str(log.bundle)) if offline else ()
        code, out, err = invoke(
            "audit", "verify", *where, "--key", log.old.verifier_key(), "--key", log.new.verifier_key()
        )
        assert code == 0, err
        assert err.strip() == ""  # no warning: the log records the change
        lines = out.strip().splitlines()
        assert lines[0].startswith("audit log verified: ")
        assert lines[1:] == [
            f"checkpoints of size {log.old_sizes[0]} to {log.old_sizes[-1]} ({len(log.old_sizes)}): "
            f"verified with {_label(log.old)}",
            f"checkpoints of size {log.new_sizes[0]} to {log.new_sizes[-1]} ({len(log.new_sizes)}): "
            f"verified with {_label(log.new)}",
        ]

    @pytest.mark.parametrize("offline", [False, True])
    def test_the_new_key_alone_fails_naming_the_first_checkpoint(
        self, changed_log: ChangedLog, offline: bool
    ) -> None:
        where = ("--bundle", str(changed_log.bundle)) if offline else ()
        code, _out, err = invoke("audit", "verify", *where, "--key", changed_log.new.verifier_key())
        assert code == 1
        first = changed_log.old_sizes[0]
        assert re.search(
            rf"size {first}\)?: the note carries no signature by a trusted key "
            rf"\({re.escape(_label(changed_log.new))}\)",
            err,
        )

    @pytest.mark.parametrize("offline", [False, True])
    def test_the_old_key_alone_fails_naming_the_first_checkpoint_after_the_change(
        self, changed_log: ChangedLog, offline: bool
    ) -> None:
        where = ("--bundle", str(changed_log.bundle)) if offline else ()
        code, _out, err = invoke("audit", "verify", *where, "--key", changed_log.old.verifier_key())
        assert code == 1
        first_new = changed_log.new_sizes[0]
        assert re.search(rf"size {first_new}\)?: the note carries no signature by a trusted key", err)

    @pytest.mark.parametrize("offline", [False, True])
    def test_a_checkpoint_signed_by_an_untrusted_key_fails(
        self, changed_log: ChangedLog, offline: bool, tmp_path: Path
    ) -> None:
        attacker = NoteSigner(AuditSettings().origin, Ed25519PrivateKey.generate())
        forged = asyncio.run(_grow(attacker, 4))[-1]
        bundle = tmp_path / "forged.jsonl"
        assert invoke("audit", "export", "--out", str(bundle))[0] == 0
        where = ("--bundle", str(bundle)) if offline else ()
        keys = ("--key", changed_log.old.verifier_key(), "--key", changed_log.new.verifier_key())
        code, _out, err = invoke("audit", "verify", *where, *keys)
        assert code == 1
        assert re.search(rf"size {forged}\)?: the note carries no signature by a trusted key", err)
        # Even an auditor who was handed the attacker's key: the log never put it in force.
        code, _out, err = invoke("audit", "verify", *where, *keys, "--key", attacker.verifier_key())
        assert code == 1
        assert f"size {forged}" in err
        assert f"is signed by {_label(attacker)}, not by {_label(changed_log.new)}" in err

    @pytest.mark.parametrize("offline", [False, True])
    def test_the_old_key_signing_after_the_change_fails(
        self, changed_log: ChangedLog, offline: bool, tmp_path: Path
    ) -> None:
        late = asyncio.run(_grow(changed_log.old, 4))[-1]  # a leaked old key, still signing
        bundle = tmp_path / "late.jsonl"
        assert invoke("audit", "export", "--out", str(bundle))[0] == 0
        where = ("--bundle", str(bundle)) if offline else ()
        code, _out, err = invoke(
            "audit",
            "verify",
            *where,
            "--key",
            changed_log.old.verifier_key(),
            "--key",
            changed_log.new.verifier_key(),
        )
        assert code == 1
        assert re.search(
            rf"size {late}\)? is signed by {re.escape(_label(changed_log.old))}, "
            rf"not by {re.escape(_label(changed_log.new))}, "
            "which the checkpoint-key change at leaf",
            err,
        )
        assert f"put in force after size {changed_log.old_sizes[-1]}" in err


class TestKeyChangeElsewhere:
    async def test_worker_processes_hold_checkpoints_to_their_keys_too(self, changed_log: ChangedLog) -> None:
        url = get_settings().database_url
        in_pages = Parallel(url, workers=2, page=4, from_size=0)
        keys = [NoteVerifier.parse(signer.verifier_key()) for signer in (changed_log.old, changed_log.new)]
        assert await verify_database(settings_on(url), keys, parallel=in_pages) == await verify_database(
            settings_on(url), keys
        )
        with pytest.raises(
            VerificationFailed, match=rf"size {changed_log.new_sizes[0]}\): the note carries no"
        ):
            await verify_database(settings_on(url), keys[:1], parallel=in_pages)

    def test_check_releases_takes_both_keys(self, changed_log: ChangedLog) -> None:
        owner = ("--owner", "register", "--owner-key", OwnerSigner.generate("register").verifier_key())
        bundle = ("--bundle", str(changed_log.bundle))
        code, _out, err = invoke(
            "audit",
            "check-releases",
            *bundle,
            *owner,
            "--key",
            changed_log.old.verifier_key(),
            "--key",
            changed_log.new.verifier_key(),
        )
        assert code == 0, err
        code, _out, err = invoke(
            "audit", "check-releases", *bundle, *owner, "--key", changed_log.new.verifier_key()
        )
        assert code == 1
        assert "audit log does NOT verify" in err

    async def test_a_recorded_change_edited_in_the_database_is_named(self, changed_log: ChangedLog) -> None:
        url = get_settings().database_url
        engine = create_engine(url)
        try:
            await _drop_triggers(engine)
            async with engine.begin() as conn:
                row = (
                    await conn.execute(
                        select(AuditEntryRow.id, AuditEntryRow.canonical).where(
                            AuditEntryRow.canonical.contains("checkpoint_key_change")
                        )
                    )
                ).one()
                attacker = NoteSigner(AuditSettings().origin, Ed25519PrivateKey.generate())
                edited = row.canonical.replace(changed_log.new.verifier_key(), attacker.verifier_key())
                await conn.execute(
                    update(AuditEntryRow).where(AuditEntryRow.id == row.id).values(canonical=edited)
                )
        finally:
            await engine.dispose()
        keys = [NoteVerifier.parse(signer.verifier_key()) for signer in (changed_log.old, changed_log.new)]
        with pytest.raises(
            VerificationFailed, match=r"the key operation at leaf \d+ no longer matches its leaf hash"
        ):
            await verify_database(settings_on(url), keys)


async def _append_and_sign(signer: NoteSigner, first: Callable[[int], AuditEntry], entries: int) -> int:
    """Append ``first(size)`` at leaf ``size`` (the tree size now) and ``entries`` more, as
    someone with the database does, sign them with ``signer``, and return ``size``."""
    engine = create_engine(get_settings().database_url)
    try:
        async with engine.connect() as conn:
            size = int(await conn.scalar(select(func.count()).select_from(AuditLeaf)) or 0)
        async with engine.begin() as conn:
            more = [make_entry(request_id=f"t-{n}") for n in range(entries)]
            await append_many(conn, [first(size), *more])
        await sequence_all(make_sequencer(engine, signer, every=3))
        return size
    finally:
        await engine.dispose()


class TestAForgedChange:
    @pytest.mark.parametrize("offline", [False, True])
    def test_a_change_back_to_the_replaced_key_fails(
        self, changed_log: ChangedLog, offline: bool, tmp_path: Path
    ) -> None:
        # The old key leaked; with the database too, one writes a change back to it and
        # signs on with it. The change put the new key in force for good.
        log = changed_log
        size = asyncio.run(
            _append_and_sign(
                log.old,
                lambda size: key_change_entry(
                    "operator", "init: back", _label(log.new), log.old.verifier_key(), size
                ),
                4,
            )
        )
        assert size == log.new_sizes[-1]
        bundle = tmp_path / "back.jsonl"
        assert invoke("audit", "export", "--out", str(bundle))[0] == 0
        where = ("--bundle", str(bundle)) if offline else ()
        keys = ("--key", log.old.verifier_key(), "--key", log.new.verifier_key())
        code, _out, err = invoke("audit", "verify", *where, *keys)
        assert code == 1
        assert (
            f"the checkpoint-key change at leaf {size} puts {_label(log.old)} back in force, which the "
            "checkpoint-key change at leaf"
        ) in err

    @pytest.mark.parametrize("offline", [False, True])
    def test_a_change_made_by_a_department_fails_alike_live_and_offline(
        self, changed_log: ChangedLog, offline: bool, tmp_path: Path
    ) -> None:
        log = changed_log
        attacker = NoteSigner(AuditSettings().origin, Ed25519PrivateKey.generate())
        forged = key_change_entry("register-writer", "rotate", _label(log.new), attacker.verifier_key(), 1)
        forged = forged.model_copy(update={"department": "register", "owners": ["register"]})
        at = asyncio.run(_append_and_sign(log.new, lambda _size: forged, 4))
        bundle = tmp_path / "department.jsonl"
        assert invoke("audit", "export", "--out", str(bundle))[0] == 0
        where = ("--bundle", str(bundle)) if offline else ()
        keys = ("--key", log.old.verifier_key(), "--key", log.new.verifier_key())
        code, _out, err = invoke("audit", "verify", *where, *keys)
        assert code == 1
        assert (
            f"the checkpoint-key change at leaf {at} was made by department 'register': only an "
            "operator's command changes the checkpoint key"
        ) in err


class TestALogThatRecordsNoChange:
    def test_both_keys_verify_it_and_the_switch_is_reported(
        self, scratch_database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # A log whose key changed before init recorded changes: nothing in it says so.
        monkeypatch.setenv("TELLONCE_DATABASE_URL", scratch_database)
        get_settings.cache_clear()
        first = NoteSigner(AuditSettings().origin, Ed25519PrivateKey.generate())
        second = NoteSigner(AuditSettings().origin, Ed25519PrivateKey.generate())
        sizes = asyncio.run(_grow(first, 6))
        switched = asyncio.run(_grow(second, 6))[len(sizes)]
        bundle = tmp_path / "log.jsonl"
        asyncio.run(export_bundle(settings_on(scratch_database), second, bundle))
        code, out, err = invoke(
            "audit",
            "verify",
            "--bundle",
            str(bundle),
            "--key",
            first.verifier_key(),
            "--key",
            second.verifier_key(),
        )
        assert code == 0, err
        assert f"verified with {_label(first)}" in out
        assert f"verified with {_label(second)}" in out
        warning = (
            f"warning: checkpoint of size {switched} is signed by {_label(second)}, the checkpoints "
            f"before it by {_label(first)}: the log records no change of checkpoint key"
        )
        assert err.strip() == warning
        # check-releases verifies the same bundle with the same keys, and says so too.
        owner = ("--owner", "register", "--owner-key", OwnerSigner.generate("register").verifier_key())
        code, _out, err = invoke(
            "audit",
            "check-releases",
            "--bundle",
            str(bundle),
            *owner,
            "--key",
            first.verifier_key(),
            "--key",
            second.verifier_key(),
        )
        assert code == 0, err
        assert err.strip() == warning
        get_settings.cache_clear()

    def test_a_key_signing_again_after_another_fails(
        self, scratch_database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # The first key leaked, and signs on after the second took over: the pattern a
        # recorded change refuses, so the log that records none must not pass with a warning.
        monkeypatch.setenv("TELLONCE_DATABASE_URL", scratch_database)
        get_settings.cache_clear()
        first = NoteSigner(AuditSettings().origin, Ed25519PrivateKey.generate())
        second = NoteSigner(AuditSettings().origin, Ed25519PrivateKey.generate())
        before = asyncio.run(_grow(first, 6))
        sizes = asyncio.run(_grow(second, 6))
        by_second = sizes[len(before) :]
        again = asyncio.run(_grow(first, 6))[len(sizes)]
        bundle = tmp_path / "log.jsonl"
        asyncio.run(export_bundle(settings_on(scratch_database), first, bundle))
        keys = ("--key", first.verifier_key(), "--key", second.verifier_key())
        for where in ((), ("--bundle", str(bundle))):
            code, _out, err = invoke("audit", "verify", *where, *keys)
            assert code == 1
            assert re.search(
                rf"size {again}\)? is signed by {re.escape(_label(first))} again, after "
                rf"{re.escape(_label(second))} signed the checkpoints of size {by_second[0]} to "
                rf"{by_second[-1]}: the log records no change of checkpoint key, and a key that "
                "another followed signs no more",
                err,
            ), err
        get_settings.cache_clear()

    @pytest.mark.parametrize("offline", [False, True])
    def test_a_key_given_that_signed_nothing_fails(
        self, scratch_database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, offline: bool
    ) -> None:
        # A leaked old key alone signs a whole forged log, with no change in it: given both
        # keys, the auditor says the new one signed part of the log, and here it signed none.
        monkeypatch.setenv("TELLONCE_DATABASE_URL", scratch_database)
        get_settings.cache_clear()
        leaked = NoteSigner(AuditSettings().origin, Ed25519PrivateKey.generate())
        current = NoteSigner(AuditSettings().origin, Ed25519PrivateKey.generate())
        asyncio.run(_grow(leaked, 9))
        bundle = tmp_path / "forged.jsonl"
        asyncio.run(export_bundle(settings_on(scratch_database), leaked, bundle))
        where = ("--bundle", str(bundle)) if offline else ()
        code, _out, err = invoke(
            "audit", "verify", *where, "--key", leaked.verifier_key(), "--key", current.verifier_key()
        )
        get_settings.cache_clear()
        assert code == 1
        assert err.strip() == (
            f"audit log does NOT verify: {_label(current)} verified no checkpoint: each key given "
            "must have signed some of the log's checkpoints (give only the keys that signed it)"
        )


def _verifier() -> tuple[NoteSigner, NoteVerifier]:
    signer = NoteSigner("tellonce.test/audit", Ed25519PrivateKey.generate())
    return signer, NoteVerifier.parse(signer.verifier_key())


class TestAssignKeys:
    def test_the_new_key_before_the_change_fails(self) -> None:
        old_signer, old = _verifier()
        new_signer, new = _verifier()
        change = KeyChange(10, _label(old_signer), new_signer.verifier_key(), signed_up_to=6)
        with pytest.raises(VerificationFailed) as failed:
            assign_keys([(3, "checkpoint of size 3"), (6, "checkpoint of size 6")], [[old], [new]], [change])
        assert str(failed.value) == (
            f"checkpoint of size 6 is signed by {new.label()}, not by {old.label()}, which signed every "
            "checkpoint up to size 6 (the checkpoint-key change at leaf 10)"
        )

    def test_a_checkpoint_signed_by_both_keys_counts_for_the_one_in_force(self) -> None:
        old_signer, old = _verifier()
        new_signer, new = _verifier()
        change = KeyChange(4, _label(old_signer), new_signer.verifier_key(), signed_up_to=4)
        ranges, unrecorded = assign_keys(
            [(4, "a"), (8, "b"), (9, "c")], [[old, new], [old, new], [new]], [change]
        )
        assert ranges == [KeyRange(old.label(), 4, 4, 1), KeyRange(new.label(), 8, 9, 2)]
        assert unrecorded == []

    def test_a_change_the_log_does_not_record_is_reported_not_refused(self) -> None:
        _old_signer, old = _verifier()
        _new_signer, new = _verifier()
        ranges, unrecorded = assign_keys([(2, "a"), (5, "b"), (7, "c")], [[old], [new], [new]], [])
        assert ranges == [KeyRange(old.label(), 2, 2, 1), KeyRange(new.label(), 5, 7, 2)]
        assert unrecorded == [
            f"b is signed by {new.label()}, the checkpoints before it by {old.label()}: the log "
            "records no change of checkpoint key"
        ]

    def test_a_second_change_must_replace_the_key_the_first_put_in_force(self) -> None:
        first_signer, _first = _verifier()
        second_signer, second = _verifier()
        third_signer, _third = _verifier()
        changes = [
            KeyChange(3, _label(first_signer), second_signer.verifier_key(), signed_up_to=3),
            KeyChange(9, _label(first_signer), third_signer.verifier_key(), signed_up_to=9),
        ]
        with pytest.raises(VerificationFailed) as failed:
            assign_keys([(5, "a")], [[second]], changes)
        assert str(failed.value) == (
            f"the checkpoint-key change at leaf 9 replaces {_label(first_signer)}, but the change at "
            f"leaf 3 put {second.label()} in force"
        )

    def test_a_change_may_not_keep_the_key_it_replaces(self) -> None:
        signer, key = _verifier()
        change = KeyChange(5, _label(signer), signer.verifier_key(), signed_up_to=5)
        with pytest.raises(VerificationFailed) as failed:
            assign_keys([(5, "a"), (8, "b")], [[key], [key]], [change])
        assert str(failed.value) == (
            f"the checkpoint-key change at leaf 5 puts {key.label()} back in force, which the "
            "checkpoint-key change at leaf 5 replaced"
        )


class TestReplacedKeysMissing:
    """Why a checkpoint carried no trusted signature, from the log's record of changes."""

    def _chain(self) -> tuple[list[NoteVerifier], list[KeyChange]]:
        signers = [_verifier() for _ in range(3)]
        changes = [
            KeyChange(6, _label(signers[0][0]), signers[1][0].verifier_key(), signed_up_to=5),
            KeyChange(12, _label(signers[1][0]), signers[2][0].verifier_key(), signed_up_to=10),
        ]
        return [key for _signer, key in signers], changes

    def test_every_replaced_key_not_given_is_named_with_its_checkpoints(self) -> None:
        keys, changes = self._chain()
        assert replaced_keys_missing(changes, keys[2:], 3) == [
            ReplacedKey(keys[0].label(), 0, 5, 6),
            ReplacedKey(keys[1].label(), 5, 10, 12),
        ]
        # The first key given: the second is still missing, and the failure is in its checkpoints.
        assert replaced_keys_missing(changes, [keys[0], keys[2]], 8) == [
            ReplacedKey(keys[1].label(), 5, 10, 12)
        ]

    def test_nothing_where_the_key_in_force_was_given_or_the_size_is_unknown(self) -> None:
        keys, changes = self._chain()
        # A checkpoint after the last change: the key in force is the installation's own.
        assert replaced_keys_missing(changes, keys[2:], 11) == []
        # A checkpoint in the first key's run, and that key was given: some other key signed it.
        assert replaced_keys_missing(changes, [keys[0], keys[2]], 4) == []
        assert replaced_keys_missing(changes, keys[2:], None) == []
        assert replaced_keys_missing([], keys[2:], 3) == []
