"""A reproducible synthetic population, made with Faker's en_GB locale.

The same seed always gives the same people, so a demo run, a test and a benchmark can
name the same citizen. Nobody here is real: national ids use the ``ZZ`` prefix that the
UK reserves for examples, and licence numbers follow the DVLA pattern from the made-up
name and date of birth.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Iterator
from dataclasses import dataclass, field

from faker import Faker

DEFAULT_SEED = 20261129
REFERENCE_DATE = dt.date(2026, 11, 29)


@dataclass(frozen=True)
class Person:
    """One synthetic citizen: what each department would hold about them."""

    index: int
    national_id: str
    given_name: str
    family_name: str
    date_of_birth: str
    address: str
    postcode: str
    owned: dict[str, dict[str, object]] = field(default_factory=dict)

    @property
    def register_fields(self) -> dict[str, object]:
        return {
            "given_name": self.given_name,
            "family_name": self.family_name,
            "date_of_birth": self.date_of_birth,
            "address": self.address,
            "postcode": self.postcode,
        }


def _licence_number(family_name: str, birth: dt.date, given_name: str, rng: random.Random) -> str:
    surname = "".join(ch for ch in family_name.upper() if ch.isalpha())[:5].ljust(5, "9")
    decade = str(birth.year)[2]
    month = f"{birth.month:02d}"
    day = f"{birth.day:02d}"
    year = str(birth.year)[3]
    initial = (given_name[:1] or "X").upper()
    check = rng.choice("ABCDEFGHJKLMNPRSTUVWXYZ")
    return f"{surname}{decade}{month}{day}{year}{initial}9{check}{rng.randint(10, 99)}"


def people(count: int, seed: int = DEFAULT_SEED) -> Iterator[Person]:
    """``count`` people, the same ones for the same seed."""
    faker = Faker("en_GB")
    faker.seed_instance(seed)
    # Reproducible synthetic data, not secrets: a seeded generator is the point.
    rng = random.Random(seed)  # noqa: S311
    for index in range(count):
        given, family = faker.first_name(), faker.last_name()
        birth = faker.date_of_birth(minimum_age=17, maximum_age=95)
        postcode = faker.postcode()
        address = f"{faker.building_number()} {faker.street_name()}, {faker.city()}"
        # ZZ is never issued, so no generated id can collide with a real person's.
        national_id = f"ZZ{index:06d}{'ABCD'[index % 4]}"
        age = (REFERENCE_DATE - birth).days // 365
        owned: dict[str, dict[str, object]] = {
            "hmrc": {"tax_code": rng.choice(["1257L", "1257L", "1257L", "BR", "K475", "D0", "1100L"])},
            "dwp": {
                "ni_number": f"ZZ{rng.randint(0, 999999):06d}{rng.choice('ABCD')}",
                "benefit_status": rng.choices(["none", "claimed", "awarded"], weights=[6, 1, 3])[0],
            },
            "council": {
                "council_tax_band": rng.choice("ABCDEFGH"),
                "electoral_registered": age >= 18 and rng.random() < 0.9,
            },
        }
        if age >= 17 and rng.random() < 0.8:
            owned["dvla"] = {
                "licence_number": _licence_number(family, birth, given, rng),
                "licence_status": rng.choices(["valid", "expired"], weights=[9, 1])[0],
            }
        if rng.random() < 0.75:
            owned["hmpo"] = {
                "passport_number": f"{rng.randint(100000000, 999999999)}",
                "passport_status": rng.choices(["valid", "expired"], weights=[5, 1])[0],
            }
        owned["home-office"] = {
            "immigration_status": rng.choices(
                ["citizen", "settled", "pre-settled", "visa"], weights=[85, 8, 4, 3]
            )[0]
        }
        yield Person(
            index=index,
            national_id=national_id,
            given_name=given,
            family_name=family,
            date_of_birth=birth.isoformat(),
            address=address,
            postcode=postcode,
            owned=owned,
        )
