"""``TELLONCE_AUDIT_WITNESSES``: each witness once, by name and by key."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from service.audit.witnessing import WitnessConfigInvalid, parse_witnesses
from service.witness.cosignature import CosignatureSigner


def _entry(port: int, signer: CosignatureSigner) -> str:
    return f"http://127.0.0.1:{port}={signer.verifier_key()}"


class TestParseWitnesses:
    def test_two_witnesses_parse_in_order(self) -> None:
        first, second = CosignatureSigner.generate("a.example/w"), CosignatureSigner.generate("b.example/w")
        parsed = parse_witnesses(f"{_entry(1, first)} {_entry(2, second)}")
        assert [(w.url, w.name) for w in parsed] == [
            ("http://127.0.0.1:1", "a.example/w"),
            ("http://127.0.0.1:2", "b.example/w"),
        ]

    def test_a_name_given_twice_is_refused(self) -> None:
        signer = CosignatureSigner.generate("a.example/w")
        with pytest.raises(WitnessConfigInvalid, match="listed twice"):
            parse_witnesses(f"{_entry(1, signer)} {_entry(2, CosignatureSigner.generate('a.example/w'))}")

    def test_one_key_under_two_names_is_refused(self) -> None:
        """A cosignature does not sign the witness's name, so one witness's cosignature
        relabelled under a second name would count twice toward the quorum."""
        key = Ed25519PrivateKey.generate()
        first, twin = CosignatureSigner("a.example/w", key), CosignatureSigner("b.example/w", key)
        with pytest.raises(
            WitnessConfigInvalid, match=r"a\.example/w and b\.example/w have the same public key"
        ):
            parse_witnesses(f"{_entry(1, first)} {_entry(2, twin)}")
