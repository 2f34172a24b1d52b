"""The client's offline checks against the service's own code: its Merkle proofs (RFC 9162),
its signed checkpoints, and webhooks signed by the ``standardwebhooks`` library."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError
from standardwebhooks.webhooks import Webhook
from tellonce_client import (
    ProofError,
    VerifierKey,
    WebhookVerificationError,
    WebhookVerifier,
    open_checkpoint,
    verify_entry,
)
from tellonce_client.models import ConsentOut, InclusionProof
from tellonce_client.proofs import _parse_body, leaf_hash, verify_consistency, verify_inclusion

from service.audit import merkle
from service.audit.checkpoint import Checkpoint, NoteSigner
from service.openapi_examples import RESPONSE_EXAMPLES

# The consent the service's API documentation shows.
CONSENT_EXAMPLE = RESPONSE_EXAMPLES[("POST", "/v1/citizens/{citizen_id}/consents")]


def _tree(size: int) -> tuple[list[bytes], merkle.NodeReader]:
    leaves = [merkle.leaf_hash(f"entry {n}".encode()) for n in range(size)]
    nodes: dict[tuple[int, int], bytes] = {(0, n): leaf for n, leaf in enumerate(leaves)}
    level = 0
    while len([key for key in nodes if key[0] == level]) > 1:
        row = [nodes[(level, n)] for n in range(len([key for key in nodes if key[0] == level]))]
        for n in range(len(row) // 2):
            nodes[(level + 1, n)] = merkle.node_hash(row[2 * n], row[2 * n + 1])
        level += 1
    return leaves, lambda lvl, index: nodes[(lvl, index)]


class TestMerkleProofs:
    @given(st.integers(1, 70).flatmap(lambda size: st.tuples(st.just(size), st.integers(0, size - 1))))
    def test_inclusion_proofs_of_the_service_verify(self, case: tuple[int, int]) -> None:
        size, index = case
        leaves, read = _tree(size)
        root = merkle.root_hash(read, size)
        path = merkle.inclusion_proof(read, index, size)
        assert leaf_hash(f"entry {index}".encode()) == leaves[index]
        verify_inclusion(leaves[index], index, size, path, root)
        wrong = leaves[(index + 1) % size] if size > 1 else merkle.leaf_hash(b"other")
        with pytest.raises(ProofError):
            verify_inclusion(wrong, index, size, path, root)

    @given(st.integers(1, 70).flatmap(lambda second: st.tuples(st.integers(1, second), st.just(second))))
    def test_consistency_proofs_of_the_service_verify(self, case: tuple[int, int]) -> None:
        first, second = case
        _leaves, read = _tree(second)
        first_root, second_root = merkle.root_hash(read, first), merkle.root_hash(read, second)
        proof = merkle.consistency_proof(read, first, second)
        verify_consistency(first, second, first_root, second_root, proof)
        if first < second:
            with pytest.raises(ProofError):
                verify_consistency(first, second, merkle.leaf_hash(b"forged"), second_root, proof)
            with pytest.raises(ProofError):
                verify_consistency(first, second, first_root, merkle.leaf_hash(b"forged"), proof)

    @pytest.mark.parametrize("second", [0, 1, 5])
    def test_the_empty_tree_has_one_root(self, second: int) -> None:
        """Every tree extends the empty one, but only under the empty tree's own root:
        a size-0 checkpoint with any other root is refused, not taken on the log's word."""
        _leaves, read = _tree(max(second, 1))
        second_root = merkle.root_hash(read, second)
        verify_consistency(0, second, merkle.EMPTY_ROOT, second_root, [])
        forged = merkle.leaf_hash(b"forged")
        with pytest.raises(ProofError, match="empty tree"):
            verify_consistency(0, second, forged, forged if second == 0 else second_root, [])


class TestHostileProofs:
    def test_an_entry_that_is_not_unicode_is_a_proof_error(self) -> None:
        """A server may send, with the log's real checkpoint, an entry whose JSON holds a
        lone surrogate escape (which Python's JSON parser accepts): no UTF-8 encodes it."""
        signer = NoteSigner("tellonce.test/log", Ed25519PrivateKey.generate())
        note = signer.sign(Checkpoint("tellonce.test/log", 1, bytes(32)).body())
        proof = InclusionProof.model_validate(
            json.loads(
                '{"leaf_index": 0, "tree_size": 1, "leaf_hash": "AA==", "hashes": [], '
                '"entry": {"x": "\\ud800"}}'
            )
        )
        with pytest.raises(ProofError, match="not Unicode"):
            verify_entry(proof, note, signer.verifier_key())


class TestCheckpoints:
    def test_a_note_signed_by_the_service_opens(self) -> None:
        signer = NoteSigner("tellonce.test/log", Ed25519PrivateKey.generate())
        body = Checkpoint("tellonce.test/log", 5, bytes(range(32))).body()
        opened = open_checkpoint(signer.sign(body), signer.verifier_key())
        assert (opened.origin, opened.size, opened.root_hash) == ("tellonce.test/log", 5, bytes(range(32)))

    def test_another_key_or_a_changed_body_is_refused(self) -> None:
        signer = NoteSigner("tellonce.test/log", Ed25519PrivateKey.generate())
        other = NoteSigner("tellonce.test/log", Ed25519PrivateKey.generate())
        note = signer.sign(Checkpoint("tellonce.test/log", 5, bytes(32)).body())
        with pytest.raises(ProofError):
            open_checkpoint(note, other.verifier_key())
        with pytest.raises(ProofError):
            open_checkpoint(note.replace("\n5\n", "\n6\n"), signer.verifier_key())

    @pytest.mark.parametrize(
        ("case", "why"),
        [
            # signed-note: no control character but newline, even in a body the key signed.
            ("tab", "control character"),
            # Every signature by the log's key must verify, a failing one after a good one too.
            ("failing-after-good", "does not verify"),
            # A line with the log key's name and hash but of another length is checked, and fails.
            ("wrong-length", "does not verify"),
            # A malformed signature line spoils the note.
            ("malformed-line", "signature line"),
            # At least one signature line.
            ("unsigned", "blank line and signature lines"),
        ],
    )
    def test_a_note_the_specs_refuse_is_refused(self, case: str, why: str) -> None:
        signer = NoteSigner("tellonce.test/log", Ed25519PrivateKey.generate())
        body = Checkpoint("tellonce.test/log", 5, bytes(32)).body()
        note = signer.sign(body)
        good = note[len(body) + 1 :]
        _dash, name, signature = good.rstrip("\n").split(" ")
        key_hash = base64.b64decode(signature)[:4]
        notes = {
            "tab": signer.sign(body + "an\textension\n"),
            "failing-after-good": f"{note}\u2014 {name} {base64.b64encode(key_hash + bytes(64)).decode()}\n",
            "wrong-length": f"{body}\n\u2014 {name} {base64.b64encode(key_hash + bytes(63)).decode()}\n",
            "malformed-line": f"{note}not a signature line\n",
            "unsigned": f"{body}\n",
        }
        with pytest.raises(ProofError, match=why):
            open_checkpoint(notes[case], signer.verifier_key())

    def test_an_empty_extension_line_is_refused(self) -> None:
        with pytest.raises(ProofError, match="extension lines"):
            _parse_body(Checkpoint("tellonce.test/log", 5, bytes(32)).body() + "ext\n" + "\n")

    @pytest.mark.parametrize("size", ["\u0665", "\u00b2", "+5", " 5"])
    def test_a_tree_size_not_in_ascii_digits_is_refused(self, size: str) -> None:
        """tlog-checkpoint: the size is ASCII decimal; other Unicode digits are a ProofError
        (a superscript two was a bare ValueError, an Arabic-Indic five read as 5)."""
        body = f"tellonce.test/log\n{size}\n{base64.b64encode(bytes(32)).decode()}\n"
        with pytest.raises(ProofError, match="tree size"):
            _parse_body(body)

    @pytest.mark.parametrize("key_hash", ["{0:.4} {1}", "\t{0}{1}", "{0}{1}00", "{0:.3}"])
    def test_a_verifier_key_hash_not_of_eight_hex_digits_is_refused(self, key_hash: str) -> None:
        """signed-note: the key hash is eight hex digits; ``bytes.fromhex`` also read
        whitespace between them, so a hash with a space or a tab in it was the same key."""
        vkey = NoteSigner("log", Ed25519PrivateKey.generate()).verifier_key()
        name, real, key = vkey.split("+", 2)
        with pytest.raises(ProofError, match="eight hex digits"):
            VerifierKey.parse(f"{name}+{key_hash.format(real[:4], real[4:])}+{key}")

    def test_a_verifier_key_name_with_a_space_is_refused(self) -> None:
        """signed-note: key names hold no Unicode space."""
        name, key = "a log", b"\x01" + Ed25519PrivateKey.generate().public_key().public_bytes_raw()
        key_hash = hashlib.sha256(name.encode() + b"\n" + key).digest()[:4].hex()
        with pytest.raises(ProofError, match="name"):
            VerifierKey.parse(f"{name}+{key_hash}+{base64.b64encode(key).decode()}")

    def test_a_verifier_key_with_a_wrong_hash_is_refused(self) -> None:
        vkey = NoteSigner("log", Ed25519PrivateKey.generate()).verifier_key()
        name, _hash, key = vkey.split("+", 2)
        with pytest.raises(ProofError):
            VerifierKey.parse(f"{name}+00000000+{key}")


class TestWebhooks:
    def _signed(self, secret: str, body: bytes, when: datetime) -> dict[str, str]:
        signature = Webhook(secret).sign("msg_1", when, body.decode())
        return {
            "webhook-id": "msg_1",
            "webhook-timestamp": str(int(when.timestamp())),
            "webhook-signature": f"v1,{base64.b64encode(b'rotated-away' * 3).decode()} {signature}",
        }

    def test_a_delivery_signed_by_the_reference_library_verifies(self) -> None:
        secret = "whsec_" + base64.b64encode(b"k" * 24).decode()
        body = json.dumps({"type": "citizen.fields_changed", "data": {}}).encode()
        headers = self._signed(secret, body, datetime.now(UTC))
        assert WebhookVerifier(secret).verify(headers, body)["type"] == "citizen.fields_changed"

    def test_a_delivery_with_its_timestamp_is_read_whole_and_as_its_event(self) -> None:
        """tellonce's body, ``{"type", "timestamp", "data"}``: ``verify`` returns all of it,
        ``verify_event`` the event, whose ``occurred_at`` the timestamp repeats."""
        secret = "whsec_" + base64.b64encode(b"k" * 24).decode()
        data = {
            "event_id": "evt-1",
            "citizen_id": "c-1",
            "fields": ["address"],
            "owner": "register",
            "occurred_at": "2026-11-29T08:00:00.123456Z",
        }
        payload = {"type": "citizen.fields_changed", "timestamp": data["occurred_at"], "data": data}
        body = json.dumps(payload, separators=(",", ":")).encode()
        headers = self._signed(secret, body, datetime.now(UTC))
        assert WebhookVerifier(secret).verify(headers, body) == payload
        event = WebhookVerifier(secret).verify_event(headers, body)
        assert event.occurred_at == datetime(2026, 11, 29, 8, 0, 0, 123456, tzinfo=UTC)

    def test_wrong_secret_stale_time_or_missing_headers_are_refused(self) -> None:
        secret = "whsec_" + base64.b64encode(b"k" * 24).decode()
        body = b'{"type":"citizen.fields_changed","data":{}}'
        headers = self._signed(secret, body, datetime.now(UTC))
        with pytest.raises(WebhookVerificationError):
            WebhookVerifier("whsec_" + base64.b64encode(b"x" * 24).decode()).verify(headers, body)
        with pytest.raises(WebhookVerificationError):
            WebhookVerifier(secret).verify(headers, body, now=time.time() - 600)
        with pytest.raises(WebhookVerificationError):
            WebhookVerifier(secret).verify({"webhook-id": "msg_1"}, body)

    @pytest.mark.parametrize(
        ("body", "why"),
        [
            (b"SECRET-NI123456 not json", "not JSON"),
            (b"\xff\xfe SECRET-NI123456", "not JSON"),
            (b"[" * 100_000, "not JSON"),
            (b'["SECRET-NI123456"]', "not a JSON object"),
            (b'"SECRET-NI123456"', "not a JSON object"),
        ],
    )
    def test_a_signed_body_that_is_not_a_json_object_is_refused(self, body: bytes, why: str) -> None:
        """Signed by the secret's holder, yet no payload: the verification error says so
        without showing the body."""
        secret = "whsec_" + base64.b64encode(b"k" * 24).decode()
        now = int(time.time())
        signature = WebhookVerifier(secret).sign("msg_1", now, body)
        headers = {"webhook-id": "msg_1", "webhook-timestamp": str(now), "webhook-signature": signature}
        for verify in (WebhookVerifier(secret).verify, WebhookVerifier(secret).verify_event):
            with pytest.raises(WebhookVerificationError, match=why) as refused:
                verify(headers, body)
            assert "SECRET" not in str(refused.value)
            # The decoder's error, which carries the body (its ``doc``), is not chained on.
            assert refused.value.__cause__ is None
            assert refused.value.__context__ is None or refused.value.__suppress_context__

    @pytest.mark.parametrize(
        "event", [{"type": "citizen.fields_changed"}, {"type": "citizen.fields_changed", "data": []}]
    )
    def test_a_signed_event_without_its_data_is_refused(self, event: dict[str, object]) -> None:
        secret = "whsec_" + base64.b64encode(b"k" * 24).decode()
        body = json.dumps(event).encode()
        headers = self._signed(secret, body, datetime.now(UTC))
        with pytest.raises(WebhookVerificationError, match="data"):
            WebhookVerifier(secret).verify_event(headers, body)


def _spec_signature(key: bytes, message_id: str, timestamp: str, body: bytes) -> str:
    """A ``v1,...`` value made from the spec alone: HMAC-SHA256 over ``id.timestamp.body``,
    the timestamp exactly as the header writes it."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


class TestWebhookHeadersToTheLetter:
    KEY = b"k" * 32
    SECRET = "whsec_" + base64.b64encode(KEY).decode()
    BODY = b'{"type":"citizen.fields_changed","timestamp":"t","data":{}}'

    def _headers(self, timestamp: str, signature: str) -> dict[str, str]:
        return {"webhook-id": "msg_1", "webhook-timestamp": timestamp, "webhook-signature": signature}

    @pytest.mark.parametrize(
        "written",
        [
            "+{now}",
            " {now} ",
            "{now}\n",
            "{now:_}",
            "0{now}",
            # Arabic-Indic digits, which int() reads as the same number.
            "{arabic}",
        ],
    )
    def test_a_timestamp_not_written_as_plain_digits_is_refused(self, written: str) -> None:
        """``webhook-timestamp`` is integer seconds, and the signed content holds it as the
        header writes it: a header rewritten to another spelling of the same number is not
        the content that was signed, whichever of the two spellings the signature is over."""
        now = int(time.time())
        arabic = "".join(chr(0x660 + int(digit)) for digit in str(now))
        header = written.format(now=now, arabic=arabic)
        for signed_timestamp in (str(now), header):
            signature = _spec_signature(self.KEY, "msg_1", signed_timestamp, self.BODY)
            with pytest.raises(WebhookVerificationError, match="webhook-timestamp"):
                WebhookVerifier(self.SECRET).verify(self._headers(header, signature), self.BODY)

    @pytest.mark.parametrize("digits", [20, 400, 4000, 5000])
    def test_a_timestamp_of_very_many_digits_is_refused_not_a_crash(self, digits: int) -> None:
        header = "9" * digits
        signature = _spec_signature(self.KEY, "msg_1", header, self.BODY)
        with pytest.raises(WebhookVerificationError, match="webhook-timestamp"):
            WebhookVerifier(self.SECRET).verify(self._headers(header, signature), self.BODY)

    @pytest.mark.parametrize("offset", [-301, 301, -(10**9), 10**9])
    def test_too_old_or_too_far_ahead_is_refused(self, offset: int) -> None:
        header = str(int(time.time()) + offset)
        signature = _spec_signature(self.KEY, "msg_1", header, self.BODY)
        with pytest.raises(WebhookVerificationError, match="tolerance"):
            WebhookVerifier(self.SECRET).verify(self._headers(header, signature), self.BODY)

    @pytest.mark.parametrize(
        "others",
        [
            "",
            "nocomma",
            "v1",
            "v1,",
            "v1,!!!not-base64",
            "v2,{value}",
            "v1a,{value}",
            "V1,{value}",
            "v1,{value}x",
            "v1,{unpadded}",
            "v1, {value}",
            "v1,é",
        ],
    )
    def test_malformed_or_unknown_values_never_match_and_do_not_hide_a_good_one(self, others: str) -> None:
        """A value of another version (``v1a`` is the asymmetric scheme), without a comma, or
        not base64 never matches, even around the right bytes; one matching ``v1`` value
        among them verifies."""
        now = str(int(time.time()))
        good = _spec_signature(self.KEY, "msg_1", now, self.BODY)
        value = good.removeprefix("v1,")
        bad = others.format(value=value, unpadded=value.rstrip("="))
        verifier = WebhookVerifier(self.SECRET)
        if bad:
            with pytest.raises(WebhookVerificationError):
                verifier.verify(self._headers(now, bad), self.BODY)
        for mixed in (f"{bad} {good}", f"{good} {bad}"):
            assert verifier.verify(self._headers(now, mixed.strip()), self.BODY)["type"]

    @pytest.mark.parametrize("secret", ["whsec_", "", "whsec_===="])
    def test_an_empty_secret_is_refused(self, secret: str) -> None:
        with pytest.raises(ValueError, match="whsec_"):
            WebhookVerifier(secret)


class TestConsentModel:
    def test_a_consent_answer_carries_the_actions_it_covers(self) -> None:
        answer = {**CONSENT_EXAMPLE, "actions": ["verify"]}
        assert ConsentOut.model_validate(answer).actions == ["verify"]

    def test_an_answer_without_actions_is_refused(self) -> None:
        """The service always names them: an answer without is not the service's."""
        answer = {key: value for key, value in CONSENT_EXAMPLE.items() if key != "actions"}
        with pytest.raises(ValidationError, match="actions"):
            ConsentOut.model_validate(answer)
