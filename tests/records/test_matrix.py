"""For every (consumer, field, purpose) in the test catalog, a value is released exactly
when an agreement permits it. The expectation comes from an oracle written here, read
straight from the policy files, not from the engine under test."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import yaml

from tests.records.conftest import RECORDS_POLICIES, RecordsEnv, as_

VALUES: dict[str, Any] = {
    "given_name": "Matrix",
    "date_of_birth": "1970-07-07",
    "address": "9 Grid Row",
    "licence_number": "GRID7001",
    "licence_status": "valid",
    "points": 3,
    "benefit_status": "claimed",
    "tax_code": "1257L",
    "self_employed": True,
}
WRITERS = {
    "register": ["given_name", "date_of_birth", "address"],
    "dvla": ["licence_number", "licence_status", "points"],
    "welfare": ["benefit_status"],
    "revenue": ["tax_code", "self_employed"],
}


def _oracle(folder: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    catalog = yaml.safe_load((folder / "catalog.yaml").read_text())
    agreements: list[dict[str, Any]] = []
    for path in sorted(folder.glob("*.yaml")):
        if path.name == "catalog.yaml":
            continue
        agreements.extend(yaml.safe_load(path.read_text())["agreements"])
    return catalog, agreements


def _expected(
    catalog: dict[str, Any], agreements: list[dict[str, Any]], consumer: str, field: str, purpose: str
) -> bool:
    owners = {f["name"]: f["owner"] for f in catalog["fields"]}
    if owners[field] == consumer:
        return True
    today = dt.date.today()
    permitted = False
    for agreement in agreements:
        applies = (
            agreement["consumer"] == consumer
            and field in agreement["fields"]
            and "read" in agreement["actions"]
            and purpose in agreement["purposes"]
            and agreement.get("valid_from", dt.date.min) <= today
            and agreement.get("valid_until", dt.date.max) >= today
        )
        if not applies:
            continue
        if agreement.get("effect", "permit") == "forbid":
            return False
        # The citizen in this test is alive and no case reference is sent.
        condition_holds = agreement.get("when") in (None, 'citizen.status == "active"')
        if condition_holds and not agreement.get("require_case_ref", False):
            permitted = True
    return permitted


class TestCrossDepartmentMatrix:
    async def test_every_consumer_field_purpose_combination(self, records_env: RecordsEnv) -> None:
        catalog, agreements = _oracle(RECORDS_POLICIES)
        citizen_id, _ = await records_env.register(**{name: VALUES[name] for name in WRITERS["register"]})
        for owner, fields in WRITERS.items():
            if owner == "register":
                continue
            response = await records_env.client.patch(
                f"/v1/citizens/{citizen_id}/fields",
                json={"fields": {name: VALUES[name] for name in fields}, "reason": "matrix set-up"},
                headers=as_(owner, "writer"),
            )
            assert response.status_code == 200, response.text
        field_names = [
            f["name"] for f in catalog["fields"] if f["name"] not in ("national_id", "date_of_death")
        ]
        cross_department_permits = 0
        for consumer in [d["id"] for d in catalog["departments"]]:
            for purpose in [p["id"] for p in catalog["purposes"]]:
                response = await records_env.client.get(
                    f"/v1/citizens/{citizen_id}",
                    params={"fields": ",".join(field_names), "purpose": purpose},
                    headers=as_(consumer, "consumer"),
                )
                assert response.status_code in (200, 403, 404), response.text
                body = response.json()
                released = body["fields"] if response.status_code == 200 else {}
                expected = {f for f in field_names if _expected(catalog, agreements, consumer, f, purpose)}
                # Released exactly what the oracle expects, and nothing more.
                assert set(released) == expected, (consumer, purpose)
                for field in expected:
                    assert released[field]["value"] == VALUES[field], (consumer, field, purpose)
                if response.status_code == 200:
                    withheld = {item["field"] for item in body["withheld"]}
                    assert withheld == set(field_names) - expected, (consumer, purpose)
                owners = {f["name"]: f["owner"] for f in catalog["fields"]}
                cross_department_permits += sum(1 for f in expected if owners[f] != consumer)
        # The oracle must see agreements at work, or the matrix only checks owners' own fields.
        assert cross_department_permits > 0
