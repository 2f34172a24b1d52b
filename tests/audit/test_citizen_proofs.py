"""``citizen_proofs.check_proofs``: what an outside verifier (and the console's citizen view)
concludes about a page of proofs, including every way it refuses one."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from service.audit import merkle
from service.audit.checkpoint import CheckpointError, NoteVerifier
from service.audit.citizen_proofs import check_proofs
from service.audit.witnessing import WitnessConfig, WitnessEndpoint
from service.witness.cosignature import CosignatureError, CosignatureSigner, CosignatureVerifier
from tests.fixtures.tlog import MemoryLog

WITNESS_NAMES = ("audit-office.example/witness", "ico.example/witness")


def _canonical(entry: dict[str, Any]) -> bytes:
    return json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


class Page:
    """Six entries, the citizen's at leaves 1, 3 and 4, a checkpoint of size 6 cosigned by
    both witnesses, and the citizen's proofs in the API's shape."""

    def __init__(self) -> None:
        self.entries = [{"n": n, "citizen_id": "c-1" if n in (1, 3, 4) else "c-2"} for n in range(6)]
        self.log = MemoryLog.new()
        self.log.leaves = [merkle.leaf_hash(_canonical(e)) for e in self.entries]
        self.witnesses = [CosignatureSigner.generate(name) for name in WITNESS_NAMES]
        self.note = self.log.note()
        body = self.note.split("\n\n", 1)[0] + "\n"
        self.cosigned = self.note + "".join(w.cosign(body, 1_700_000_000) for w in self.witnesses)

    def read(self, level: int, index: int) -> bytes:
        return self.log.root(index << level, (index + 1) << level)

    def proof(self, leaf: int) -> dict[str, Any]:
        return {
            "leaf_index": leaf,
            "tree_size": 6,
            "leaf_hash": base64.b64encode(self.log.leaves[leaf]).decode(),
            "hashes": [base64.b64encode(h).decode() for h in merkle.inclusion_proof(self.read, leaf, 6)],
            "entry": dict(self.entries[leaf]),
        }

    def config(self, quorum: int = 2) -> WitnessConfig:
        return WitnessConfig(
            witnesses=tuple(
                WitnessEndpoint(f"http://127.0.0.1:{9000 + i}", CosignatureVerifier.parse(w.verifier_key()))
                for i, w in enumerate(self.witnesses)
            ),
            quorum=quorum,
            grace_seconds=None,
            refresh_seconds=60,
            timeout_seconds=5,
            poll_seconds=0.05,
        )

    @property
    def log_key(self) -> NoteVerifier:
        return NoteVerifier.parse(self.log.signer.verifier_key())


@pytest.fixture
def page() -> Page:
    return Page()


class TestCheckProofs:
    def test_every_line_proven_and_both_witnesses_named(self, page: Page) -> None:
        proofs = [page.proof(1), page.proof(3), page.proof(4), None]
        checked = check_proofs(page.log_key, page.config(), page.cosigned, proofs)
        assert (checked.verified, checked.pending, checked.witnesses) == (3, 1, WITNESS_NAMES)

    def test_no_checkpoint_yet_leaves_every_line_pending(self, page: Page) -> None:
        checked = check_proofs(page.log_key, page.config(), None, [None, None])
        assert (checked.verified, checked.pending, checked.witnesses) == (0, 2, ())

    def test_a_changed_entry_is_refused_naming_its_leaf(self, page: Page) -> None:
        changed = page.proof(3)
        changed["entry"]["citizen_id"] = "c-2"
        with pytest.raises(CosignatureError, match="the proof of leaf 3 does not verify"):
            check_proofs(page.log_key, page.config(), page.cosigned, [page.proof(1), changed])

    def test_a_wrong_path_is_refused(self, page: Page) -> None:
        moved = page.proof(4)
        moved["hashes"] = page.proof(3)["hashes"]
        with pytest.raises(CosignatureError, match="the proof of leaf 4 does not verify"):
            check_proofs(page.log_key, page.config(), page.cosigned, [moved])

    def test_a_checkpoint_short_of_the_quorum_is_refused(self, page: Page) -> None:
        one = page.note + page.cosigned[len(page.note) :].splitlines(keepends=True)[0]
        with pytest.raises(CosignatureError, match="not cosigned by the witness quorum"):
            check_proofs(page.log_key, page.config(), one, [page.proof(1)])
        # With a quorum of one, the same note is enough, and names who cosigned.
        checked = check_proofs(page.log_key, page.config(quorum=1), one, [page.proof(1)])
        assert checked.witnesses == WITNESS_NAMES[:1]

    def test_a_checkpoint_the_log_key_did_not_sign_is_refused(self, page: Page) -> None:
        stranger = NoteVerifier.parse(MemoryLog.new().signer.verifier_key())
        with pytest.raises(CheckpointError):
            check_proofs(stranger, page.config(), page.cosigned, [page.proof(1)])
