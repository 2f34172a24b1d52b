"""The console's pure parts: the SVG chart, plain-language sentences, forms, diffs, filters."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import asdict
from datetime import UTC, date, datetime, timedelta
from typing import Any, ClassVar

import pytest
from starlette.datastructures import FormData

from service.audit.search import OwnerView, narrowed
from service.audit.value import value_by_owner
from service.catalog.schemas import Catalog
from service.console import audit_pages, chart, forms, wording
from service.console.views import AuditRow, UsageRow

SVG = "{http://www.w3.org/2000/svg}"


def parse_svg(text: str) -> ET.Element:
    return ET.fromstring(text)  # noqa: S314 - our own output, parsed to check it is well formed


def text_of(element: ET.Element, tag: str) -> str:
    found = element.find(f"{SVG}{tag}")
    assert found is not None
    return found.text or ""


CATALOG = Catalog.model_validate(
    {
        "departments": [
            {"id": "dwp", "name": "Department for Work and Pensions"},
            {"id": "hmrc", "name": "HM Revenue and Customs"},
            {"id": "welfare", "name": "Welfare"},
        ],
        "purposes": [{"id": "benefit-eligibility", "name": "Deciding eligibility for a benefit"}],
        "fields": [
            {"name": "address", "owner": "hmrc", "type": "string"},
            {"name": "national_id", "owner": "hmrc", "type": "string"},
            {"name": "date_of_birth", "owner": "hmrc", "type": "date"},
        ],
    }
)


class TestUsageChart:
    @pytest.mark.parametrize(
        ("maximum", "step"), [(0, 1), (4, 1), (9, 2), (11, 5), (48, 10), (230, 50), (999, 200)]
    )
    def test_ticks_are_round(self, maximum: int, step: int) -> None:
        assert chart.nice_step(maximum) == step

    def test_bars_stack_per_day_in_proportion(self) -> None:
        days = [date(2026, 3, 1), date(2026, 3, 2)]
        counts = [
            chart.DayCount(days[0], "dwp", 6),
            chart.DayCount(days[0], "hmrc", 2),
            chart.DayCount(days[1], "dwp", 4),
        ]
        svg = parse_svg(chart.usage_svg(counts, days, {"dwp": "DWP", "hmrc": "HMRC"}))
        bars = {text_of(r, "title"): r for r in svg.iter(f"{SVG}rect") if r.find(f"{SVG}title") is not None}
        assert set(bars) == {"DWP, 1 Mar: 6", "HMRC, 1 Mar: 2", "DWP, 2 Mar: 4"}
        heights = {label: float(rect.get("height", "0")) for label, rect in bars.items()}
        assert heights["DWP, 1 Mar: 6"] == pytest.approx(3 * heights["HMRC, 1 Mar: 2"], rel=0.01)
        assert heights["DWP, 1 Mar: 6"] == pytest.approx(1.5 * heights["DWP, 2 Mar: 4"], rel=0.01)
        # One colour per consumer, the same on both days.
        fills: dict[str, set[str | None]] = {label.split(",")[0]: set() for label in bars}
        for label, rect in bars.items():
            fills[label.split(",")[0]].add(rect.get("fill"))
        assert all(len(colours) == 1 for colours in fills.values())
        assert fills["DWP"] != fills["HMRC"]
        assert svg.get("role") == "img"
        assert text_of(svg, "desc") == "12 fields released over 2 days to 2 other departments."

    def test_names_are_escaped(self) -> None:
        day = date(2026, 3, 1)
        svg = chart.usage_svg([chart.DayCount(day, "x", 1)], [day], {"x": "<script>alert(1)</script>"})
        assert "<script>" not in svg
        assert "&lt;script&gt;" in svg
        parse_svg(svg)

    def test_no_accesses(self) -> None:
        days = [date(2026, 3, 1) + timedelta(days=i) for i in range(3)]
        svg = parse_svg(chart.usage_svg([], days, {}))
        assert text_of(svg, "desc") == "No fields released to other departments in these 3 days."


class TestCitizenSentences:
    def test_a_read_in_plain_language(self) -> None:
        sentence = wording.access_sentence(
            CATALOG,
            when=datetime(2026, 3, 3, 14, 5, tzinfo=UTC),
            department="dwp",
            action="read",
            fields=["address"],
            purpose="benefit-eligibility",
            decision="permit",
        )
        assert sentence == (
            "On 3 March 2026, the Department for Work and Pensions read your address "
            "for the purpose of deciding eligibility for a benefit."
        )

    def test_a_refused_check_of_several_fields(self) -> None:
        sentence = wording.access_sentence(
            CATALOG,
            when=datetime(2026, 12, 25, tzinfo=UTC),
            department="hmrc",
            action="verify",
            fields=["national_id", "date_of_birth", "address"],
            purpose="benefit-eligibility",
            decision="deny",
        )
        assert sentence.startswith(
            "On 25 December 2026, HM Revenue and Customs asked to check a fact about your national identity "
            "number, date of birth and address"
        )
        assert sentence.endswith("It was refused: no agreement allowed it.")

    def test_an_access_disclosed_when_the_investigation_closed(self) -> None:
        sentence = wording.access_sentence(
            CATALOG,
            when=datetime(2026, 3, 3, 14, 5, tzinfo=UTC),
            department="hmrc",
            action="read",
            fields=["address"],
            purpose="benefit-eligibility",
            decision="permit",
            disclosed_at=datetime(2026, 9, 1, 9, 0, tzinfo=UTC),
            disclosed_by="case-closed",
        )
        assert sentence == (
            "On 3 March 2026, HM Revenue and Customs read your address for the purpose of deciding "
            "eligibility for a benefit. This was kept from you during an investigation and disclosed "
            "when the investigation closed on 1 September 2026."
        )

    def test_an_access_disclosed_at_its_longest_delay(self) -> None:
        sentence = wording.access_sentence(
            CATALOG,
            when=datetime(2026, 3, 3, tzinfo=UTC),
            department="hmrc",
            action="read",
            fields=["address"],
            purpose=None,
            decision="permit",
            disclosed_at=datetime(2027, 3, 3, tzinfo=UTC),
            disclosed_by="max-delay",
        )
        assert sentence.endswith(
            "kept from you during an investigation and disclosed on 3 March 2027, when the longest "
            "time it could be kept from you had passed."
        )

    def test_a_department_without_an_article(self) -> None:
        assert wording.department_phrase(CATALOG, "welfare") == "Welfare"
        assert wording.department_phrase(CATALOG, "unknown-dept") == "unknown-dept"


class TestAgreementForm:
    def test_empty_optional_fields_are_left_out(self) -> None:
        values = {"id": "a-1", "consumer": "dwp", "fields": ["address"], "actions": ["read"], "purposes": []}
        values |= {"legal_basis": "", "valid_from": "", "valid_until": "2027-01-01", "when": "", "effect": ""}
        assert forms.draft_from_values(values) == {
            "id": "a-1",
            "consumer": "dwp",
            "fields": ["address"],
            "actions": ["read"],
            "purposes": [],
            "effect": "permit",
            "valid_until": "2027-01-01",
        }

    def test_diff_shows_the_changed_lines(self) -> None:
        old = {"id": "a-1", "consumer": "dwp", "fields": ["address"], "actions": ["read"]}
        new = old | {"valid_until": "2030-12-31", "actions": ["read", "verify"]}
        lines = forms.version_diff(old, new, "version 1", "version 2")
        assert [line.text for line in lines if line.kind == "remove"] == ["-actions: [read]"]
        assert [line.text for line in lines if line.kind == "add"] == [
            "+actions: [read, verify]",
            "+valid_until: 2030-12-31",
        ]

    def test_same_content_has_no_diff(self) -> None:
        content = {"id": "a-1", "consumer": "dwp"}
        assert forms.version_diff(content, dict(content), "1", "2") == []

    @pytest.mark.parametrize(
        ("loc", "field"), [(("fields", 2), "fields"), (("body", "legal_basis"), "legal_basis"), ((), "id")]
    )
    def test_errors_land_on_their_field(self, loc: tuple[str | int, ...], field: str) -> None:
        assert forms.field_for_loc(loc) == field

    def test_draft_survives_the_round_trip(self) -> None:
        content = {"id": "a-1", "fields": ["address"], "when": 'citizen.status == "active"'}
        assert forms.decode_draft(forms.encode_draft(content)) == content
        assert forms.decode_draft("not json") is None
        assert forms.decode_draft("[1, 2]") is None


class TestAuditFilter:
    def test_to_date_is_inclusive(self) -> None:
        query, errors = audit_pages.parse_query({"since": "2026-03-01", "until": "2026-03-31"}, CATALOG)
        assert errors == {}
        assert query.since == datetime(2026, 3, 1, tzinfo=UTC)
        assert query.until == datetime(2026, 4, 1, tzinfo=UTC)

    def test_problems_are_reported_by_field(self) -> None:
        _query, errors = audit_pages.parse_query(
            {"since": "2026-02-30", "consumer": "nobody", "decision": "maybe", "field": "address"}, CATALOG
        )
        assert set(errors) == {"since", "consumer", "decision"}

    def test_to_before_from_is_refused(self) -> None:
        _query, errors = audit_pages.parse_query({"since": "2026-03-02", "until": "2026-03-01"}, CATALOG)
        assert errors == {"until": ["The to date must be the same as or after the from date"]}

    def test_a_to_date_with_no_next_day_is_refused(self) -> None:
        query, errors = audit_pages.parse_query({"since": "2026-03-01", "until": "9999-12-31"}, CATALOG)
        assert errors == {"until": ["The to date must be before 9999-12-31"]}
        assert query.until is None

    def test_month_summary_groups_by_consumer(self) -> None:
        rows = [
            UsageRow("dwp", "hmrc", "address", "benefit-eligibility", "2026-03", 4),
            UsageRow("dwp", "hmrc", "national_id", "benefit-eligibility", "2026-03", 1),
            UsageRow("dwp", "hmrc", "address", "benefit-eligibility", "2026-02", 9),
            # Not value: a registration (no purpose) and the owner's use of its own field.
            UsageRow("register", "hmrc", "address", None, "2026-03", 7),
            UsageRow("hmrc", "hmrc", "address", "tax-administration", "2026-03", 3),
        ]
        summary = audit_pages.month_summary(rows, "2026-03")
        assert [(s["consumer"], s["count"]) for s in summary] == [("dwp", 5)]
        assert summary[0]["fields"] == [("address", 4), ("national_id", 1)]
        assert summary[0]["purposes"] == [("benefit-eligibility", 5)]
        # The demo's report folds the same rows to the same figure.
        assert value_by_owner(asdict(row) for row in rows if row.period == "2026-03") == {
            "hmrc": Counter({"dwp": 5})
        }


class TestAuditRows:
    ITEM: ClassVar[dict[str, Any]] = {
        "id": 7,
        "leaf_index": 6,
        "entry": {
            "time": "2026-03-01T10:00:00+00:00",
            "client_id": "tc_registrar",
            "department": "register",
            "action": "register",
            "citizen_id": "c-1",
            "fields_requested": ["national_id", "address", "licence_status"],
            "fields_released": ["national_id", "address", "licence_status"],
            "decision": "permit",
            "purpose": None,
            "status": 201,
        },
    }

    def test_an_owner_sees_only_its_own_fields_of_an_entry(self) -> None:
        item = {
            **self.ITEM,
            "entry": {
                **self.ITEM["entry"],
                "owners": ["register", "dvla"],
                "reasons": [
                    {"field": "address", "effect": "permit", "agreement": "a", "version": 1},
                    {"field": "licence_status", "effect": "permit", "agreement": "b", "version": 2},
                ],
                "legal_basis": ["Act A", "Act B"],
            },
        }
        shown = narrowed(item, OwnerView("dvla", frozenset({"licence_status", "points"})))
        assert shown["narrowed"] is True
        entry = shown["entry"]
        assert (entry["fields_requested"], entry["fields_released"]) == (
            ["licence_status"],
            ["licence_status"],
        )
        assert entry["reasons"] == [item["entry"]["reasons"][1]]
        assert (entry["owners"], entry["legal_basis"], entry["decision"]) == (["dvla"], [], "permit")
        # Who asked, when and why stays: that is the access to the owner's field.
        assert {k: entry[k] for k in ("client_id", "department", "time", "citizen_id")} == {
            k: item["entry"][k] for k in ("client_id", "department", "time", "citizen_id")
        }
        row = AuditRow.of(shown, {"tc_registrar": "Register office"})
        assert row.fields_released == ["licence_status"]
        assert row.client_name == "Register office"

    def test_an_entry_of_the_owners_fields_alone_is_shown_whole(self) -> None:
        item = {**self.ITEM, "entry": {**self.ITEM["entry"], "fields_requested": ["licence_status"]}}
        item["entry"]["fields_released"] = ["licence_status"]
        assert narrowed(item, OwnerView("dvla", frozenset({"licence_status"}))) is item

    def test_an_auditor_sees_every_field(self) -> None:
        assert narrowed(self.ITEM, None) is self.ITEM
        row = AuditRow.of(self.ITEM, {})
        assert row.fields_released == ["national_id", "address", "licence_status"]
        assert row.client_name is None


class TestDateInput:
    def values(self, **parts: dict[str, str]) -> dict[str, Any]:
        return {f"{name}_parts": value for name, value in parts.items()}

    def test_three_boxes_make_one_date(self) -> None:
        form = FormData([("valid_from-day", "31"), ("valid_from-month", "1"), ("valid_from-year", "2027")])
        values = forms.form_values(form)
        assert values["valid_from"] == "2027-01-31"
        assert values["valid_until"] == ""
        assert forms.date_errors(values) == []

    @pytest.mark.parametrize(
        ("parts", "message"),
        [
            ({"day": "31", "month": "", "year": "2027"}, "Valid from must include a month"),
            ({"day": "", "month": "", "year": "2027"}, "Valid from must include a day and a month"),
            ({"day": "30", "month": "2", "year": "2027"}, "Valid from must be a real date"),
            (
                {"day": "1", "month": "2", "year": "27"},
                "Valid from must be a real date, with the year in 4 digits",
            ),
        ],
    )
    def test_govuk_messages(self, parts: dict[str, str], message: str) -> None:
        assert forms.date_errors(self.values(valid_from=parts)) == [("valid_from", message)]

    def test_a_stored_date_fills_the_boxes(self) -> None:
        values = forms.values_from_content({"valid_until": "2027-12-31"})
        assert values["valid_until_parts"] == {"day": "31", "month": "12", "year": "2027"}
        assert values["valid_from_parts"] == {"day": "", "month": "", "year": ""}


class TestBasisInTheEditor:
    def test_the_basis_goes_round_the_form_and_the_default_is_left_out(self) -> None:
        consent = forms.values_from_content({"id": "a", "basis": "consent"})
        assert consent["basis"] == "consent"
        assert forms.draft_from_values(consent)["basis"] == "consent"
        statutory = forms.values_from_content({"id": "a"})
        assert statutory["basis"] == "statutory"
        assert "basis" not in forms.draft_from_values(statutory)
        posted = forms.form_values(FormData([("basis", "objectable")]))
        assert forms.draft_from_values(posted)["basis"] == "objectable"


class TestDisclosureInTheEditor:
    def test_delayed_disclosure_goes_round_the_form_and_the_default_is_left_out(self) -> None:
        stored = {"id": "a", "disclosure": "after-case-closed", "max_delay": "P365D"}
        values = forms.values_from_content(stored)
        draft = forms.draft_from_values(values)
        assert (draft["disclosure"], draft["max_delay"]) == ("after-case-closed", "P365D")
        plain = forms.draft_from_values(forms.values_from_content({"id": "a"}))
        assert "disclosure" not in plain
        assert "max_delay" not in plain
        posted = forms.form_values(FormData([("disclosure", "after-case-closed"), ("max_delay", " P30D ")]))
        assert forms.draft_from_values(posted)["max_delay"] == "P30D"
