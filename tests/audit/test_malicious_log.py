"""The auditor's and citizen's checks against an operator that lies.

``tellonce audit verify --bundle`` is run on bundles written here by hand, honest or with
one lie each (an entry that does not hash to its leaf, a checkpoint whose root is not the
leaves', one claiming 2**63-1 leaves, a fork, a rollback against a checkpoint kept
outside the log, a signature by an unknown key, empty and one-leaf logs): every lie is
exit 1 with one line naming it and no traceback, quickly, and every honest log passes.
``citizen_proofs.check_proofs`` (the code the citizen view says an outside verifier uses)
is held to the signed checkpoint's tree size and refuses a malformed proof as a failed one.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import text
from typer.testing import CliRunner

from service.audit import merkle, verify_pages
from service.audit.checkpoint import Checkpoint, NoteSigner, NoteVerifier
from service.audit.citizen_proofs import check_proofs
from service.audit.cli import verify_database
from service.audit.schemas import canonical_json
from service.audit.verify import LogVerifier, VerificationFailed
from service.audit.verify_pages import Parallel
from service.audit.writer import AuditWriter
from service.cli import app as cli_app
from service.db import create_engine
from service.witness.cosignature import CosignatureError
from tests.audit.test_citizen_proofs import Page
from tests.fixtures.audit import make_entry, make_sequencer, sequence_all
from tests.fixtures.databases import settings_on

ORIGIN = "liar.example/audit"
SIGNER = NoteSigner(ORIGIN, Ed25519PrivateKey.generate())
STRANGER = NoteSigner(ORIGIN, Ed25519PrivateKey.generate())


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def entries(size: int) -> list[dict[str, Any]]:
    return [{"n": n, "action": "read", "citizen_id": f"c-{n % 3}"} for n in range(size)]


def leaf(entry: dict[str, Any]) -> bytes:
    return merkle.leaf_hash(canonical_json(entry).encode())


def root_of(leaves: list[bytes]) -> bytes:
    tree = merkle.CompactRange()
    tree.extend(leaves)
    return tree.root()


class Bundle:
    """A bundle as ``audit export`` writes one (without stored columns), its records kept
    apart so a test can change any of them before it is written."""

    def __init__(self, size: int, checkpoints: tuple[int, ...] | None = None) -> None:
        self.entries = entries(size)
        self.leaves = [leaf(e) for e in self.entries]
        self.header: dict[str, Any] = {"type": "bundle", "format": 2, "origin": ORIGIN, "tree_size": size}
        self.records: list[dict[str, Any]] = [
            {
                "type": "entry",
                "leaf_index": n,
                "entry_id": n + 1,
                "leaf_hash": b64(digest),
                "entry": entry,
            }
            for n, (entry, digest) in enumerate(zip(self.entries, self.leaves, strict=True))
        ]
        self.checkpoints = [self.checkpoint(at) for at in (checkpoints or (size,))]

    def note(self, size: int, root: bytes | None = None, signer: NoteSigner = SIGNER) -> str:
        root = root_of(self.leaves[:size]) if root is None else root
        return signer.sign(Checkpoint(ORIGIN, size, root).body())

    def checkpoint(self, size: int, root: bytes | None = None, signer: NoteSigner = SIGNER) -> dict[str, Any]:
        root = root_of(self.leaves[:size]) if root is None else root
        return {
            "type": "checkpoint",
            "tree_size": size,
            "root_hash": b64(root),
            "note": self.note(size, root, signer),
        }

    def write(self, folder: Path) -> Path:
        path = folder / "bundle.jsonl"
        lines = [self.header, *self.records, *self.checkpoints]
        path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
        return path


def verify(bundle: Path, *args: str) -> tuple[int, str, str]:
    started = time.monotonic()
    result = CliRunner().invoke(
        cli_app, ["audit", "verify", "--bundle", str(bundle), "--key", SIGNER.verifier_key(), *args]
    )
    assert time.monotonic() - started < 10, "the verdict took too long"
    return result.exit_code, result.stdout, result.stderr


def refused(bundle: Path, why: str, *args: str) -> None:
    code, out, err = verify(bundle, *args)
    assert code == 1, (code, out, err)
    assert "Traceback" not in out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("audit log does NOT verify: ")
    assert why in lines[0], lines[0]


def kept(folder: Path, note: str) -> str:
    """A checkpoint note an auditor kept outside the log, as ``--trusted-checkpoint``."""
    path = folder / f"kept-{len(list(folder.iterdir()))}.note"
    path.write_text(note, encoding="utf-8")
    return str(path)


class TestHonestLogs:
    @pytest.mark.parametrize(
        ("size", "checkpoints"), [(1, (1,)), (2, (1, 2)), (13, (1, 4, 5, 8, 13)), (64, (33, 64))]
    )
    def test_an_honest_bundle_verifies(self, tmp_path: Path, size: int, checkpoints: tuple[int, ...]) -> None:
        bundle = Bundle(size, checkpoints)
        path = bundle.write(tmp_path)
        trusted = kept(tmp_path, bundle.note(checkpoints[0]))
        code, out, err = verify(path, "--trusted-checkpoint", trusted, "--min-size", str(size))
        assert (code, err) == (0, ""), err
        assert f"audit log verified: {size} entries" in out

    def test_an_empty_log_passes_only_when_allowed(self, tmp_path: Path) -> None:
        path = Bundle(0).write(tmp_path)
        refused(path, "the log is empty")
        code, out, _err = verify(path, "--allow-empty")
        assert code == 0
        assert "audit log verified: 0 entries" in out


class TestLies:
    def test_an_entry_that_does_not_hash_to_its_leaf(self, tmp_path: Path) -> None:
        bundle = Bundle(5)
        bundle.records[2]["entry"]["action"] = "write"
        refused(bundle.write(tmp_path), "entry 3 at leaf 2 no longer matches its leaf hash")

    def test_an_entry_rewritten_with_its_leaf_hash(self, tmp_path: Path) -> None:
        bundle = Bundle(5, (2, 5))
        bundle.records[3]["entry"]["action"] = "write"
        bundle.records[3]["leaf_hash"] = b64(leaf(bundle.records[3]["entry"]))
        refused(bundle.write(tmp_path), "the root of leaves 2..4 does not match")

    @pytest.mark.parametrize("length", [0, 31, 33, 64])
    def test_a_leaf_hash_of_the_wrong_length(self, tmp_path: Path, length: int) -> None:
        bundle = Bundle(3)
        bundle.records[1]["leaf_hash"] = b64(bundle.leaves[1][:length] + bytes(max(0, length - 32)))
        refused(bundle.write(tmp_path), "at leaf 1 no longer matches its leaf hash")

    def test_a_missing_leaf(self, tmp_path: Path) -> None:
        bundle = Bundle(4)
        del bundle.records[1]
        refused(bundle.write(tmp_path), "leaf 1 is missing")

    def test_a_checkpoint_whose_root_is_not_the_leaves(self, tmp_path: Path) -> None:
        bundle = Bundle(6)
        bundle.checkpoints = [bundle.checkpoint(6, root_of(bundle.leaves[:5]))]
        refused(bundle.write(tmp_path), "checkpoint of size 6: the root of leaves 0..5 does not match")

    @pytest.mark.parametrize("size", [2**63 - 1, 2**62])
    def test_a_checkpoint_claiming_an_absurd_size(self, tmp_path: Path, size: int) -> None:
        bundle = Bundle(3)
        bundle.checkpoints.append(bundle.checkpoint(size, root_of(bundle.leaves)))
        refused(bundle.write(tmp_path), f"signs size {size} but the log holds only 3 leaves")

    @pytest.mark.parametrize(
        ("stored", "why"),
        [
            (2**63 - 1, "the stored size or root differs from the signed note"),
            (2**64, "tree_size is not a whole number"),
            (10**30, "tree_size is not a whole number"),
            (-1, "tree_size is not a whole number"),
            ("3", "tree_size is not a whole number"),
        ],
    )
    def test_a_stored_size_that_is_not_the_signed_one(self, tmp_path: Path, stored: Any, why: str) -> None:
        bundle = Bundle(3)
        bundle.checkpoints[0]["tree_size"] = stored
        refused(bundle.write(tmp_path), why)

    def test_a_checkpoint_note_beyond_63_bits(self, tmp_path: Path) -> None:
        bundle = Bundle(3)
        for size in (str(2**63), "9" * 5000):
            root = b64(root_of(bundle.leaves))
            note = SIGNER.sign(f"{ORIGIN}\n{size}\n{root}\n")
            bundle.checkpoints = [{"type": "checkpoint", "tree_size": 3, "root_hash": root, "note": note}]
            refused(bundle.write(tmp_path), "the tree size is not a decimal number from 0 to")

    def test_a_size_0_checkpoint_with_another_root(self, tmp_path: Path) -> None:
        bundle = Bundle(2)
        bundle.checkpoints.insert(0, bundle.checkpoint(0, bundle.leaves[0]))
        refused(bundle.write(tmp_path), "a checkpoint of size 0 has the empty tree's root")

    def test_a_checkpoint_signed_by_an_unknown_key(self, tmp_path: Path) -> None:
        bundle = Bundle(4, (2, 4))
        bundle.checkpoints[1] = bundle.checkpoint(4, signer=STRANGER)
        refused(
            bundle.write(tmp_path), "checkpoint of size 4: the note carries no signature by a trusted key"
        )

    def test_a_fork_of_two_checkpoints_of_one_size(self, tmp_path: Path) -> None:
        bundle = Bundle(4)
        forked = [*bundle.leaves[:3], leaf({"rewritten": True})]
        bundle.checkpoints.append(bundle.checkpoint(4, root_of(forked)))
        refused(
            bundle.write(tmp_path),
            "checkpoint of size 4 and checkpoint of size 4 are both signed for size 4 with different "
            "roots: the log forked",
        )

    def test_a_fork_against_a_checkpoint_kept_outside(self, tmp_path: Path) -> None:
        bundle = Bundle(4)
        forked = [*bundle.leaves[:3], leaf({"rewritten": True})]
        trusted = kept(tmp_path, bundle.note(4, root_of(forked)))
        refused(
            bundle.write(tmp_path),
            f"trusted checkpoint {trusted} (size 4) and checkpoint of size 4 are both signed for size 4 "
            "with different roots: the log forked",
            "--trusted-checkpoint",
            trusted,
        )

    def test_a_rollback_below_a_checkpoint_kept_outside(self, tmp_path: Path) -> None:
        """The operator cut the log back to 5 leaves and re-signed: consistent in itself,
        but shorter than a checkpoint an auditor kept."""
        longer = Bundle(9)
        trusted = kept(tmp_path, longer.note(9))
        bundle = Bundle(5)
        refused(
            bundle.write(tmp_path),
            "signs size 9 but the log holds only 5 leaves: entries were removed",
            "--trusted-checkpoint",
            trusted,
        )
        refused(bundle.write(tmp_path), "fewer than the 9 required", "--min-size", "9")

    def test_a_kept_checkpoint_by_an_unknown_key(self, tmp_path: Path) -> None:
        bundle = Bundle(4)
        trusted = kept(tmp_path, bundle.note(4, signer=STRANGER))
        refused(bundle.write(tmp_path), "no signature by a trusted key", "--trusted-checkpoint", trusted)

    def test_an_emptied_log(self, tmp_path: Path) -> None:
        bundle = Bundle(0)
        bundle.checkpoints = []
        refused(bundle.write(tmp_path), "the log is empty")


def page_check(page: Page, proofs: list[dict[str, Any] | None]) -> None:
    check_proofs(page.log_key, page.config(), page.cosigned, proofs)


class TestCitizenProofs:
    """``check_proofs`` as an outside verifier: the proofs are the log's answers."""

    def test_a_proof_for_another_tree_size_is_refused(self) -> None:
        """The path of leaf 1 of 6 leads to the same root walked as if the tree held 5
        (RFC 9162's check takes the size on trust): a proof must be of the signed size."""
        page = Page()
        proof = page.proof(1)
        proof["tree_size"] = 5
        with pytest.raises(CosignatureError, match="the proof of leaf 1 does not verify"):
            page_check(page, [proof])

    @pytest.mark.parametrize(
        "change",
        [
            lambda p: p.pop("hashes"),
            lambda p: p.pop("entry"),
            lambda p: p.update(hashes="not a list"),
            lambda p: p.update(hashes=["not base64!"]),
            lambda p: p.update(hashes=[None]),
            lambda p: p.update(leaf_hash=b64(bytes(31))),
            lambda p: p.update(leaf_index="1"),
            lambda p: p.update(tree_size=2**63 - 1),
            lambda p: p.update(entry=[1, 2]),
            lambda p: p["hashes"].append(b64(bytes(32))),
            lambda p: p["hashes"].pop(),
            lambda p: p["hashes"].__setitem__(0, b64(bytes(33))),
        ],
    )
    def test_a_malformed_or_altered_proof_is_refused(self, change: Callable[[dict[str, Any]], Any]) -> None:
        page = Page()
        proof = page.proof(1)
        change(proof)
        with pytest.raises(CosignatureError, match="does not verify"):
            page_check(page, [proof])

    def test_a_proof_that_is_not_an_object_is_refused(self) -> None:
        page = Page()
        with pytest.raises(CosignatureError, match="the proof of leaf None does not verify"):
            page_check(page, ["a string"])  # type: ignore[list-item]


@pytest.fixture
async def stored_log(scratch_database: str) -> str:
    """12 entries in the database, sequenced with a checkpoint every 4, signed by SIGNER."""
    engine = create_engine(scratch_database)
    writer = AuditWriter(engine)
    await writer.start()
    await writer.append_many([make_entry(request_id=f"m-{n}") for n in range(12)])
    await writer.stop()
    await sequence_all(make_sequencer(engine, SIGNER, every=4))
    await engine.dispose()
    return scratch_database


class TestAStoredLogClaimingAnAbsurdSize:
    @pytest.mark.parametrize("claimed", [2**63 - 1, 10**12])
    async def test_is_refused_in_time_bounded_by_the_rows_stored(
        self, stored_log: str, claimed: int, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The sequencer's row says the tree holds ``claimed`` leaves: the verification,
        in one process or in pages, refuses it after reading the 12 stored, and never
        plans pages for leaves that are not there (it planned 2**61 of them, and hung)."""
        engine = create_engine(stored_log)
        async with engine.begin() as conn:
            await conn.execute(text("UPDATE audit_sequencer SET tree_size = :size"), {"size": claimed})
        await engine.dispose()
        planned: list[int] = []
        bounds = verify_pages.page_bounds

        def counted(log: LogVerifier, size: int, page: int) -> list[tuple[int, int, list[int]]]:
            planned.append(size)
            assert size <= 12, f"pages planned for {size} leaves"
            return bounds(log, size, page)

        monkeypatch.setattr(verify_pages, "page_bounds", counted)
        verifier = NoteVerifier.parse(SIGNER.verifier_key())
        why = f"the log records {claimed} leaves but only 12 are stored"
        for parallel in (None, Parallel(stored_log, workers=2, page=4, from_size=0)):
            started = time.monotonic()
            with pytest.raises(VerificationFailed, match=why):
                await verify_database(settings_on(stored_log), verifier, parallel=parallel)
            assert time.monotonic() - started < 20
        assert planned == [12]
