"""The citizen view's sentence about how its lines were proven."""

from __future__ import annotations

from service.console.views import AccessProof
from service.console.wording import proof_sentence

WITNESSES = ("audit-office.example/witness", "ico.example/witness")


class TestProofSentence:
    def test_names_the_witnesses_and_the_checkpoint(self) -> None:
        sentence = proof_sentence(AccessProof(3, 0, 120, WITNESSES))
        assert sentence.startswith("Each of these 3 lines is proven to be in the audit log")
        assert (
            "checkpoint of 120 entries cosigned by the witnesses audit-office.example/witness and "
            "ico.example/witness" in sentence
        )
        assert "with the same code an outside verifier uses" in sentence
        assert "the log's and the witnesses' public keys" in sentence

    def test_says_which_lines_wait_for_a_later_checkpoint(self) -> None:
        sentence = proof_sentence(AccessProof(3, 1, 120, WITNESSES))
        assert sentence.startswith("3 of these 4 lines are proven to be in the audit log")
        assert sentence.endswith("The newest line is proven once a later checkpoint covers it.")
        assert proof_sentence(AccessProof(1, 2, 120, WITNESSES)).endswith(
            "The 2 newest lines are proven once a later checkpoint covers them."
        )

    def test_without_witnesses_says_only_the_service_signed(self) -> None:
        sentence = proof_sentence(AccessProof(1, 0, 7, ()))
        assert sentence.startswith("This line is proven to be in the audit log: its inclusion proof")
        assert "signed by this service (no independent witnesses are configured)" in sentence
        assert "anyone with the log's public key" in sentence

    def test_says_when_nothing_covers_the_lines_yet(self) -> None:
        expected = "No checkpoint of the audit log covers these lines yet, so they cannot be proven yet."
        assert proof_sentence(AccessProof(0, 2, None, ())) == expected
        assert proof_sentence(AccessProof(0, 2, 5, WITNESSES)) == expected

    def test_says_when_a_proof_failed(self) -> None:
        sentence = proof_sentence(AccessProof(0, 2, None, (), problem="the proof of leaf 4 does not verify"))
        assert sentence == (
            "These lines could NOT be proven to be in the audit log: the proof of leaf 4 does not verify."
        )
