"""Field AEAD: round trips, and every kind of tampering or misplacement refused."""

from __future__ import annotations

import datetime as dt
import pickle
import secrets

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.crypto.aead import OVERHEAD_BYTES, DataKey, decrypt_value, encrypt_value, key_id_of
from service.crypto.errors import CiphertextIntegrityError
from service.crypto.material import KeyMaterial

MATERIAL = secrets.token_bytes(32)
KEY = DataKey(7, "register", 1, MATERIAL)

citizen_ids = st.uuids().map(str)
field_names = st.from_regex(r"[a-z][a-z0-9_]{0,62}", fullmatch=True)
versions = st.integers(min_value=0, max_value=2**40)

# Each catalog field type as records serialises it: UTF-8 text of the canonical form.
serialised_values = st.one_of(
    st.text(max_size=300),
    st.dates().map(dt.date.isoformat),
    st.integers(min_value=-(2**63), max_value=2**63 - 1).map(str),
    st.booleans().map(lambda b: "true" if b else "false"),
    st.sampled_from(["valid", "revoked", "cancelled", "suspended"]),
).map(str.encode)


def seal(plaintext: bytes, citizen_id: str = "c-1", field: str = "given_name", version: int = 1) -> bytes:
    return encrypt_value(KEY, citizen_id=citizen_id, field=field, version=version, plaintext=plaintext)


def opens(
    ciphertext: bytes,
    citizen_id: str = "c-1",
    field: str = "given_name",
    version: int = 1,
    key: DataKey = KEY,
) -> bytes:
    return decrypt_value(key, citizen_id=citizen_id, field=field, version=version, ciphertext=ciphertext)


def one_byte_changed(text: str, position: int, delta: int) -> str:
    raw = bytearray(text.encode())
    raw[position % len(raw)] ^= delta
    return raw.decode("utf-8", errors="surrogateescape")


class TestRoundTrip:
    @given(plaintext=serialised_values, citizen_id=citizen_ids, field=field_names, version=versions)
    def test_every_field_type_round_trips(
        self, plaintext: bytes, citizen_id: str, field: str, version: int
    ) -> None:
        ciphertext = seal(plaintext, citizen_id, field, version)
        assert opens(ciphertext, citizen_id, field, version) == plaintext
        assert len(ciphertext) == len(plaintext) + OVERHEAD_BYTES

    def test_format_names_the_key_and_nonces_differ(self) -> None:
        first, second = seal(b"Ada"), seal(b"Ada")
        assert first[0] == 0x01
        assert key_id_of(first) == KEY.id
        assert first != second  # a fresh random nonce every time
        assert b"Ada" not in first


class TestTamperingRejected:
    @given(plaintext=serialised_values, position=st.integers(min_value=0), delta=st.integers(1, 255))
    def test_any_single_byte_change_is_rejected(self, plaintext: bytes, position: int, delta: int) -> None:
        ciphertext = bytearray(seal(plaintext))
        # Covers the format byte, the key id, the nonce, the body and the tag.
        ciphertext[position % len(ciphertext)] ^= delta
        with pytest.raises(CiphertextIntegrityError) as caught:
            opens(bytes(ciphertext))
        assert str(caught.value) == "ciphertext failed its integrity check"

    def test_every_position_of_one_ciphertext(self) -> None:
        ciphertext = seal(b"1990-04-01")
        for position in range(len(ciphertext)):
            for delta in (0x01, 0x80, 0xFF):
                tampered = bytearray(ciphertext)
                tampered[position] ^= delta
                with pytest.raises(CiphertextIntegrityError):
                    opens(bytes(tampered))

    @given(cut=st.integers(min_value=1, max_value=60))
    def test_truncation_and_extension_are_rejected(self, cut: int) -> None:
        ciphertext = seal(b"Grace Hopper")
        with pytest.raises(CiphertextIntegrityError):
            opens(ciphertext[:-cut] if cut < len(ciphertext) else b"")
        with pytest.raises(CiphertextIntegrityError):
            opens(ciphertext + b"\x00" * cut)

    @given(citizen_id=citizen_ids, position=st.integers(min_value=0), delta=st.integers(1, 127))
    def test_changed_citizen_id_is_rejected(self, citizen_id: str, position: int, delta: int) -> None:
        ciphertext = seal(b"Ada", citizen_id=citizen_id)
        other = one_byte_changed(citizen_id, position, delta)
        with pytest.raises(CiphertextIntegrityError):
            opens(ciphertext, citizen_id=other)

    @given(field=field_names, position=st.integers(min_value=0), delta=st.integers(1, 127))
    def test_changed_field_is_rejected(self, field: str, position: int, delta: int) -> None:
        ciphertext = seal(b"Ada", field=field)
        with pytest.raises(CiphertextIntegrityError):
            opens(ciphertext, field=one_byte_changed(field, position, delta))

    @given(version=versions, other=versions)
    def test_changed_version_is_rejected(self, version: int, other: int) -> None:
        ciphertext = seal(b"Ada", version=version)
        if other == version:
            other += 1
        with pytest.raises(CiphertextIntegrityError):
            opens(ciphertext, version=other)

    @given(other_id=st.integers(min_value=1, max_value=2**63 - 1))
    def test_changed_key_id_is_rejected_even_with_the_same_bytes(self, other_id: int) -> None:
        ciphertext = seal(b"Ada")
        if other_id == KEY.id:
            other_id += 1
        relabelled = DataKey(other_id, "register", 1, MATERIAL)
        with pytest.raises(CiphertextIntegrityError):
            opens(ciphertext, key=relabelled)
        # Rewriting the header to the other id does not help either: the id is in the AD.
        forged = bytes((0x01,)) + other_id.to_bytes(8, "big") + ciphertext[9:]
        with pytest.raises(CiphertextIntegrityError):
            opens(forged, key=relabelled)

    def test_another_key_is_rejected(self) -> None:
        ciphertext = seal(b"Ada")
        stranger = DataKey(KEY.id, "register", 1, secrets.token_bytes(32))
        with pytest.raises(CiphertextIntegrityError):
            opens(ciphertext, key=stranger)

    def test_a_negative_version_or_a_bare_header_is_rejected(self) -> None:
        ciphertext = seal(b"Ada")
        with pytest.raises(CiphertextIntegrityError):
            opens(ciphertext, version=-1)
        for short in (b"", ciphertext[:1], ciphertext[:9], ciphertext[:16], ciphertext[:21], ciphertext[:36]):
            with pytest.raises(CiphertextIntegrityError):
                opens(short)

    def test_unknown_format_is_rejected(self) -> None:
        ciphertext = bytearray(seal(b"Ada"))
        ciphertext[0] = 0x02
        with pytest.raises(CiphertextIntegrityError):
            opens(bytes(ciphertext))
        with pytest.raises(CiphertextIntegrityError):
            key_id_of(bytes(ciphertext))


class TestSwappedCiphertexts:
    @given(
        a=st.tuples(citizen_ids, field_names, versions),
        b=st.tuples(citizen_ids, field_names, versions),
        plaintexts=st.tuples(serialised_values, serialised_values),
    )
    @settings(max_examples=200)
    def test_a_value_moved_to_another_row_never_decrypts(
        self, a: tuple[str, str, int], b: tuple[str, str, int], plaintexts: tuple[bytes, bytes]
    ) -> None:
        if a == b:
            return
        first = seal(plaintexts[0], *a)
        second = seal(plaintexts[1], *b)
        # Each row decrypts in place; swapped, neither yields anyone's plaintext.
        assert opens(first, *a) == plaintexts[0]
        with pytest.raises(CiphertextIntegrityError):
            opens(first, *b)
        with pytest.raises(CiphertextIntegrityError):
            opens(second, *a)

    def test_same_value_swapped_between_citizens_fields_and_versions(self) -> None:
        rows = [
            ("c-1", "given_name", 1),
            ("c-2", "given_name", 1),
            ("c-1", "address", 1),
            ("c-1", "given_name", 2),
        ]
        sealed = {row: seal(b"Ada Lovelace", *row) for row in rows}
        for source in rows:
            for target in rows:
                if source != target:
                    with pytest.raises(CiphertextIntegrityError):
                        opens(sealed[source], *target)


class TestKeysStayHidden:
    def test_data_key_repr_and_str_hide_the_bytes(self) -> None:
        for text in (repr(KEY), str(KEY), f"{KEY}", repr([KEY]), repr(KEY.material), str(KEY.material)):
            assert MATERIAL.hex() not in text
            assert repr(MATERIAL) not in text
        assert repr(KEY) == "DataKey(id=7, department='register', kek_version=1)"
        assert "hidden" in repr(KEY.material)

    def test_keys_refuse_pickling(self) -> None:
        with pytest.raises(TypeError):
            pickle.dumps(KEY)
        with pytest.raises(TypeError):
            pickle.dumps(KeyMaterial(MATERIAL))

    def test_material_compares_in_constant_time_and_is_unhashable(self) -> None:
        assert KeyMaterial(MATERIAL) == KeyMaterial(MATERIAL)
        assert KeyMaterial(MATERIAL) != KeyMaterial(secrets.token_bytes(32))
        with pytest.raises(TypeError):
            hash(KeyMaterial(MATERIAL))

    def test_bad_keys_are_refused(self) -> None:
        with pytest.raises(ValueError, match="32 bytes"):
            DataKey(1, "register", 1, b"short")
        with pytest.raises(ValueError, match="positive"):
            DataKey(0, "register", 1, MATERIAL)


class TestNonces:
    def test_nonces_never_repeat_across_calls_and_threads(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        from service.crypto.aead import HEADER_BYTES, NONCE_BYTES

        def nonces(count: int) -> list[bytes]:
            return [seal(b"x")[HEADER_BYTES : HEADER_BYTES + NONCE_BYTES] for _ in range(count)]

        # More than one pooled block per thread, in four threads at once.
        with ThreadPoolExecutor(4) as pool:
            batches = list(pool.map(nonces, [5000] * 4))
        everything = [n for batch in batches for n in batch] + nonces(5000)
        assert len(set(everything)) == len(everything) == 25_000

    def test_a_forked_child_draws_fresh_nonces(self) -> None:
        from service.crypto import aead

        seal(b"x")
        assert aead._NONCES.block
        # What os.register_at_fork runs in the child: the parent's block is dropped.
        aead._forget_nonces()
        assert (aead._NONCES.block, aead._NONCES.offset) == (b"", 0)
        assert seal(b"x")
