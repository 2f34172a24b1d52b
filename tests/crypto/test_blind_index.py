"""Blind index: normalised, per field, and independent of every encryption key."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.crypto.aead import DataKey, encrypt_value
from service.crypto.blind_index import (
    BLIND_INDEX_BYTES,
    DEFAULT_IGNORABLE,
    NORMALISATION_VERSION,
    WHITESPACE,
    ascii_digits,
    invisible,
    normalise,
    normalise_unicode,
)
from service.crypto.providers import LocalKeyProvider
from tests.fixtures.crypto import make_keyring

ROOT = secrets.token_bytes(32)
KEYRING = make_keyring(ROOT)

# Printable ASCII with spaces drawn often, so that runs of them and leading, inner and
# trailing ones all turn up.
PRINTABLE_ASCII_WITH_SPACES = st.text(
    alphabet=st.one_of(st.just(" "), st.characters(min_codepoint=0x20, max_codepoint=0x7E)), max_size=30
)


class TestNormalisation:
    def test_equivalent_spellings_share_an_index(self) -> None:
        equivalents = [
            ("AB123456C", "ab123456c", "  AB123456C\t", "\u00a0ab123456c\n"),
            # Whitespace inside is not significant either (normalisation 3): the grouped
            # spelling of an NI number, no-break and other-width spaces, line breaks.
            (
                "AB123456C",
                "AB 12 34 56 C",
                "ab  12\u00a034\u202f56\u2009c",
                "AB\u300012\u168034\u2028\u202956C",
                "AB\t12\n34\u008556\u205fC",
            ),
            ("SW1A 1AA", "SW1A1AA", "sw1a\u00a01aa"),
            # Full-width letters and digits fold to ASCII under NFKC.
            ("AB123456C", "\uff21\uff22\uff11\uff12\uff13\uff14\uff15\uff16\uff23"),
            # Composed and decomposed accents; case folding of sharp s.
            ("Zoë", "Zoe\u0308", "ZOË"),
            ("Straße", "STRASSE", "strasse"),
            # The ligature ﬁ decomposes to "fi".
            ("ﬁnch", "Finch"),
        ]
        for group in equivalents:
            indexes = {KEYRING.blind_index("national_id", value) for value in group}
            assert len(indexes) == 1, group

    def test_different_values_differ(self) -> None:
        assert KEYRING.blind_index("national_id", "AB123456C") != KEYRING.blind_index(
            "national_id", "AB123456D"
        )
        assert KEYRING.blind_index("national_id", "AB 12 34 56 C") != KEYRING.blind_index(
            "national_id", "AB 12 34 56 D"
        )
        # A character that looks like a space but is neither whitespace nor invisible still
        # counts: U+2800 (braille blank) is a symbol that braille displays show. (U+200B and
        # U+3164, the Hangul filler, are default-ignorable and dropped as such.)
        assert KEYRING.blind_index("national_id", "a\u2800b") != KEYRING.blind_index("national_id", "ab")

    def test_the_version_is_four(self) -> None:
        # Rows indexed under an older version are rebuilt by `tellonce records reindex`.
        assert NORMALISATION_VERSION == 4

    @pytest.mark.parametrize(
        "mark",
        [
            "\u034f",  # combining grapheme joiner
            "\ufe0f",  # variation selector 16
            "\U000e0100",  # variation selector 17
            "\u180b",  # Mongolian free variation selector one
            "\u17b4",  # Khmer vowel inherent AQ
            "\u3164",  # Hangul filler
            "\uffa0",  # halfwidth Hangul filler
            "\u115f",  # Hangul choseong filler
            "\u00ad",  # soft hyphen (a format character)
            "\U000e0041",  # tag latin capital letter A (a format character)
        ],
    )
    def test_default_ignorable_marks_leave_the_index_alone(self, mark: str) -> None:
        # Normalisation 4: an id with an invisible mark after it, or inside it, is the id.
        # Under 3 the marks that are not format characters each made another id.
        for spelled in ("AB123456C" + mark, "AB12" + mark + "3456C", "\u00c9" + mark + "X"):
            plain = spelled.replace(mark, "")
            assert normalise(spelled) == normalise(plain), hex(ord(mark))
            assert KEYRING.blind_index("national_id", spelled) == KEYRING.blind_index("national_id", plain)

    def test_digits_of_any_script_are_ascii_digits(self) -> None:
        # Normalisation 4: Arabic-Indic, extended Arabic-Indic, Devanagari, Thai, Osmanya
        # (outside the BMP) and fullwidth (NFKC's already) digits are the ASCII ones.
        for zero in (0x30, 0x660, 0x6F0, 0x966, 0xE50, 0x104A0, 0xFF10):
            spelled = "AB" + "".join(chr(zero + d) for d in (1, 2, 3, 4, 5, 6)) + "C"
            assert normalise(spelled) == "ab123456c", hex(zero)
            assert KEYRING.blind_index("national_id", spelled) == KEYRING.blind_index(
                "national_id", "AB123456C"
            )
        assert ascii_digits("\u0661\u0662x") == "12x"
        # Only decimal digits: a superscript or a circled number is NFKC's to fold, and a
        # numeral that is not a digit (Roman, CJK) stays what it is.
        assert ascii_digits("\u00b2\u2460\u2163\u4e09") == "\u00b2\u2460\u2163\u4e09"

    def test_default_ignorable_is_unicodes_property(self) -> None:
        # DerivedCoreProperties.txt's Default_Ignorable_Code_Point, as the regex module
        # (which carries its own Unicode data) reads it: the hard-coded ranges are the property.
        import regex

        ignorable = regex.compile(r"\p{Default_Ignorable_Code_Point}")
        derived = {chr(code) for code in range(0x110000) if ignorable.match(chr(code))}
        assert derived == DEFAULT_IGNORABLE
        assert len(DEFAULT_IGNORABLE) == 4174

    @given(
        st.text(max_size=30),
        st.sampled_from(sorted(DEFAULT_IGNORABLE)),
        st.integers(min_value=0, max_value=30),
    )
    def test_an_invisible_character_anywhere_leaves_the_index_alone(
        self, value: str, mark: str, at: int
    ) -> None:
        marked = value[:at] + mark + value[at:]
        assert normalise(marked) == normalise(value)

    def test_whitespace_is_unicodes_white_space_property(self) -> None:
        # PropList.txt's White_Space: str.isspace() also takes U+001C..U+001F (information
        # separators, control characters that the rule drops as such), nothing else differs.
        separators = {chr(c) for c in range(0x1C, 0x20)}
        spaces = {chr(c) for c in range(0x110000) if chr(c).isspace()} - separators
        assert spaces == WHITESPACE
        assert len(WHITESPACE) == 25

    @given(st.text(max_size=30), st.sampled_from(sorted(WHITESPACE)), st.integers(min_value=0, max_value=30))
    def test_whitespace_anywhere_leaves_the_index_alone(self, value: str, space: str, at: int) -> None:
        spaced = value[:at] + space + value[at:]
        assert normalise(spaced) == normalise(value)
        assert KEYRING.blind_index("national_id", spaced) == KEYRING.blind_index("national_id", value)

    @given(st.text(max_size=50))
    def test_the_normalised_value_holds_no_whitespace(self, value: str) -> None:
        assert not WHITESPACE.intersection(normalise(value))

    @given(st.text(max_size=50))
    def test_normalising_is_idempotent(self, value: str) -> None:
        once = normalise(value)
        assert normalise(once) == once
        assert KEYRING.blind_index("postcode", value) == KEYRING.blind_index("postcode", once)

    @given(
        st.one_of(
            st.text(alphabet=st.characters(max_codepoint=127), max_size=30), PRINTABLE_ASCII_WITH_SPACES
        )
    )
    def test_the_ascii_shortcut_gives_the_full_rules_result(self, value: str) -> None:
        assert normalise(value) == normalise_unicode(value)

    def test_no_single_character_normalises_to_whitespace(self) -> None:
        # The full rule on every assigned code point alone: idempotent, and free of
        # whitespace (no compatibility decomposition or case fold brings one back).
        for code in range(0x110000):
            character = chr(code)
            if unicodedata.category(character) in ("Cn", "Cs"):
                continue
            once = normalise_unicode(character)
            assert normalise_unicode(once) == once, hex(code)
            assert not WHITESPACE.intersection(once), hex(code)
            assert not any(invisible(ch) for ch in once), hex(code)
            assert not any(unicodedata.category(ch) == "Nd" and not ch.isascii() for ch in once), hex(code)

    @given(st.text(max_size=50))
    def test_index_is_sixteen_bytes_and_deterministic(self, value: str) -> None:
        index = KEYRING.blind_index("postcode", value)
        assert len(index) == BLIND_INDEX_BYTES
        assert make_keyring(ROOT).blind_index("postcode", value) == index


class TestSeparation:
    @given(st.text(min_size=1, max_size=30))
    def test_each_field_has_its_own_key(self, value: str) -> None:
        assert KEYRING.blind_index("national_id", value) != KEYRING.blind_index("postcode", value)

    def test_another_root_gives_other_indexes(self) -> None:
        other = make_keyring()
        assert other.blind_index("national_id", "AB123456C") != KEYRING.blind_index(
            "national_id", "AB123456C"
        )

    def test_index_is_not_a_plain_or_root_keyed_hash(self) -> None:
        value = "AB123456C"
        index = KEYRING.blind_index("national_id", value)
        normalised = normalise(value).encode()
        assert index != hashlib.sha256(normalised).digest()[:16]
        assert index != hmac.new(ROOT, normalised, hashlib.sha256).digest()[:16]

    def test_independent_of_encryption_keys(self) -> None:
        # The index depends only on the blind-index root: data keys and KEKs can be
        # rotated, re-encrypted or shredded without touching any index.
        value = "AB123456C"
        before = KEYRING.blind_index("national_id", value)
        for _ in range(3):
            key = DataKey(1, "register", 1, secrets.token_bytes(32))
            ciphertext = encrypt_value(
                key, citizen_id="c", field="national_id", version=1, plaintext=value.encode()
            )
            assert before not in ciphertext
        assert KEYRING.blind_index("national_id", value) == before
        # And the blind-index root is not the KEK-wrapping key: same root, other label.
        provider = KEYRING.provider
        assert isinstance(provider, LocalKeyProvider)
        assert repr(provider.blind_index_root()) == "KeyMaterial(<32 bytes hidden>)"
        assert provider.blind_index_root().reveal() != ROOT
