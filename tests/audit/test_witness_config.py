"""``TELLONCE_AUDIT_WITNESSES``: each witness once, by name and by key; the quorum within them."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from service.audit.config import AuditSettings
from service.audit.witnessing import WitnessConfigInvalid, parse_witnesses, witness_config
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

    @pytest.mark.parametrize("digits", ["{0}00", "{0:.6}"])
    def test_a_key_id_not_of_eight_hex_digits_is_refused_as_such(self, digits: str) -> None:
        """Not "the id does not match its name and key": the id is malformed, whatever the key."""
        name, key_id, key = CosignatureSigner.generate("a.example/w").verifier_key().split("+", 2)
        with pytest.raises(WitnessConfigInvalid, match=r"entry 1: .*eight hex digits"):
            parse_witnesses(f"http://127.0.0.1:1={name}+{digits.format(key_id)}+{key}")


class TestQuorum:
    def test_the_default_quorum_without_witnesses_is_no_witnessing(self) -> None:
        config = witness_config(AuditSettings(witnesses=""))
        assert not config.enabled
        assert config.quorum == 0

    def test_a_quorum_without_witnesses_is_refused(self) -> None:
        with pytest.raises(WitnessConfigInvalid, match="lists no witness") as caught:
            witness_config(AuditSettings(witnesses="", witness_quorum=1))
        assert caught.value.variable == "TELLONCE_AUDIT_WITNESS_QUORUM"

    @pytest.mark.parametrize(("count", "quorum"), [(1, 1), (2, 1), (2, 2)])
    def test_a_quorum_within_the_witnesses_is_kept(self, count: int, quorum: int) -> None:
        signers = [CosignatureSigner.generate(f"w{n}.example/w") for n in range(count)]
        listed = " ".join(_entry(n + 1, signer) for n, signer in enumerate(signers))
        assert witness_config(AuditSettings(witnesses=listed, witness_quorum=quorum)).quorum == quorum

    def test_a_quorum_above_the_witnesses_is_refused(self) -> None:
        listed = _entry(1, CosignatureSigner.generate("a.example/w"))
        with pytest.raises(WitnessConfigInvalid, match="a quorum of 2 needs at least 2 witnesses") as caught:
            witness_config(AuditSettings(witnesses=listed, witness_quorum=2))
        assert caught.value.variable == "TELLONCE_AUDIT_WITNESS_QUORUM"
