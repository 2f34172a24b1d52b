from __future__ import annotations

import datetime as dt

from service.catalog.loader import load_catalog
from service.records import values
from service.sim.population import people
from tests.conftest import DEMO_POLICIES


class TestPopulation:
    def test_same_seed_same_people(self) -> None:
        assert list(people(50, seed=3)) == list(people(50, seed=3))
        assert list(people(5, seed=3)) != list(people(5, seed=4))

    def test_national_ids_are_unique_and_reserved(self) -> None:
        ids = [p.national_id for p in people(2000)]
        assert len(set(ids)) == 2000
        assert all(i.startswith("ZZ") for i in ids)

    def test_every_value_fits_the_demo_catalog(self) -> None:
        catalog = load_catalog(DEMO_POLICIES)
        for person in people(300):
            assert dt.date.fromisoformat(person.date_of_birth) < dt.date(2026, 11, 29)
            for name, raw in person.register_fields.items():
                spec = catalog.field(name)
                assert spec is not None, name
                assert spec.owner == "register"
                values.validate(spec, raw)
            for owner, fields in person.owned.items():
                for name, raw in fields.items():
                    spec = catalog.field(name)
                    assert spec is not None, name
                    assert spec.owner == owner
                    values.validate(spec, raw)
