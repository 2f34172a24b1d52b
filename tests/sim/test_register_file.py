"""The register file the scale benchmark imports: the size asked for, unique national
ids, every value valid as the API validates it, the same file for the same seed."""

from __future__ import annotations

import csv
from pathlib import Path

from service.catalog.loader import load_catalog
from service.records.validation import canonical_national_id, validated_values
from service.sim.register_file import COLUMNS, DEPARTMENT, national_id, write_register_file
from tests.conftest import DEMO_POLICIES


class TestRegisterFile:
    def test_rows_are_valid_register_records_with_unique_ids(self, tmp_path: Path) -> None:
        catalog = load_catalog(DEMO_POLICIES)
        path = write_register_file(tmp_path / "register.csv", 25_000)
        with path.open(newline="", encoding="utf-8") as source:
            rows = list(csv.DictReader(source))
        assert len(rows) == 25_000
        assert tuple(rows[0]) == COLUMNS
        assert [row["national_id"] for row in rows[:3]] == [national_id(0), national_id(1), national_id(2)]
        assert len({row["national_id"] for row in rows}) == len(rows)
        for row in rows[::97]:
            assert canonical_national_id(row["national_id"]) == row["national_id"]
            fields = {name: value for name, value in row.items() if name != "national_id"}
            for name in fields:
                spec = catalog.field(name)
                assert spec is not None
                assert spec.owner == DEPARTMENT
            # Raises ValidationFailed, as the API would answer 422, on any bad value.
            validated_values(catalog, fields, ("fields",))

    def test_same_seed_same_file(self, tmp_path: Path) -> None:
        first = write_register_file(tmp_path / "a.csv", 500, seed=7).read_bytes()
        assert write_register_file(tmp_path / "b.csv", 500, seed=7).read_bytes() == first
        assert write_register_file(tmp_path / "c.csv", 500, seed=8).read_bytes() != first

    def test_national_ids_stay_unique_past_a_million(self) -> None:
        assert national_id(1_000_000) != national_id(0)
        assert len({national_id(i) for i in range(999_990, 1_000_010)}) == 20
