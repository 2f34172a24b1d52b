"""A stolen copy of the database, its WAL or a dump reveals no personal data.

Citizens are registered and updated through the API with distinctive values; then the
raw SQLite file and its WAL, or a ``pg_dump`` of the PostgreSQL database, and the logs
are scanned for every value. The audit table is part of the scan.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from tests.records.conftest import RecordsEnv, as_

WELFARE = as_("welfare", "consumer")


def _forms(value: str) -> list[bytes]:
    return [value.encode("utf-8"), value.encode("utf-16-le"), value.upper().encode(), value.lower().encode()]


def _raw_copy(database_url: str) -> bytes:
    if database_url.startswith("sqlite"):
        path = Path(database_url.split(":///", 1)[1])
        return b"".join(
            Path(f"{path}{suffix}").read_bytes()
            for suffix in ("", "-wal")
            if Path(f"{path}{suffix}").exists()
        )
    url = make_url(database_url)
    pg_dump = shutil.which("pg_dump") or "/usr/bin/pg_dump"
    return subprocess.run(
        [
            pg_dump,
            "-h",
            url.host or "127.0.0.1",
            "-p",
            str(url.port or 5432),
            "-U",
            url.username or "postgres",
            "--data-only",
            str(url.database),
        ],
        capture_output=True,
        check=True,
    ).stdout


class TestNoPlaintextAtRest:
    async def test_values_never_appear_in_the_store_or_the_logs(
        self, committed_records_env: RecordsEnv, capfd: pytest.CaptureFixture[str]
    ) -> None:
        secrets: list[str] = []
        for n in range(40):
            given, address = f"Quetzalcoatl{n:03d}", f"{n} Xylophone Crescent Zq"
            national_id = f"ZZ{n:06d}QX"
            secrets += [given, address, national_id]
            citizen_id, _ = await committed_records_env.register(
                national_id=national_id, given_name=given, address=address, date_of_birth="1961-04-12"
            )
            moved = f"{n} Zanzibar Mews Qk"
            secrets.append(moved)
            response = await committed_records_env.client.patch(
                f"/v1/citizens/{citizen_id}/fields",
                json={"fields": {"address": moved}, "reason": "moved"},
                headers=as_("register", "writer"),
            )
            assert response.status_code == 200
            read = await committed_records_env.client.get(
                f"/v1/citizens/{citizen_id}", params={"purpose": "benefit-eligibility"}, headers=WELFARE
            )
            assert read.json()["fields"]["address"]["value"] == moved
        raw = _raw_copy(committed_records_env.database_url)
        assert len(raw) > 10_000
        found = [s for s in secrets if any(form in raw for form in _forms(s))]
        assert found == []
        logs = capfd.readouterr()
        assert [s for s in secrets if s in logs.out or s in logs.err] == []
