"""The citizen view's sentence about how its lines were proven."""

from __future__ import annotations

from service.console.ports import AccessProof
from service.console.wording import proof_sentence


class TestProofSentence:
    def test_names_the_witnesses_and_the_checkpoint(self) -> None:
        sentence = proof_sentence(
            AccessProof(3, 1, 120, ("audit-office.example/witness", "ico.example/witness"))
        )
        assert sentence.startswith("Each of these 3 lines is proven to be in the audit log")
        assert (
            "checkpoint of 120 entries cosigned by audit-office.example/witness and ico.example/witness"
            in sentence
        )
        assert "same code an outside verifier uses" in sentence
        assert "1 newer line is proven once the next checkpoint is cosigned" in sentence

    def test_says_when_nothing_is_cosigned_yet(self) -> None:
        assert "cannot be proven yet" in proof_sentence(AccessProof(0, 2, None, ()))

    def test_says_when_a_proof_failed(self) -> None:
        sentence = proof_sentence(AccessProof(0, 2, 9, (), problem="the proof of leaf 4 does not verify"))
        assert sentence == (
            "These lines could NOT be proven to be in the audit log: the proof of leaf 4 does not verify."
        )
