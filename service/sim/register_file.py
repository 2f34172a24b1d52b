"""A register's existing records as a CSV file for ``tellonce import``: millions of
synthetic citizens, quickly.

``population.people`` asks Faker for every person, about a few thousand a second; a
national register is millions of rows. Here Faker (en_GB, seeded) fills small pools of
names, streets, towns and postcodes once, and each row combines them with a seeded
generator, so a million rows take seconds and the same ``count`` and ``seed`` always give
the same file. Row ``i``'s national id is ``national_id(i)``, so a benchmark can look a
citizen up without reading the file back. Nobody here is real: ids carry the ``ZZ``
prefix, which is never issued.
"""

from __future__ import annotations

import csv
import datetime as dt
import random
from pathlib import Path

from faker import Faker

from service.sim.population import DEFAULT_SEED, REFERENCE_DATE

# The columns: the national id, then the fields the register owns that a citizen has
# from birth (date_of_death is left out: these citizens are alive).
COLUMNS = ("national_id", "given_name", "family_name", "date_of_birth", "address", "postcode")
DEPARTMENT = "register"
_POOL = 400
_ROWS_PER_WRITE = 10_000


def national_id(index: int) -> str:
    """Row ``index``'s national id: unique for up to a hundred million rows."""
    return f"ZZ{index:08d}{'ABCD'[index % 4]}"


def write_register_file(path: Path, count: int, seed: int = DEFAULT_SEED) -> Path:
    """Write ``count`` citizens to ``path`` as CSV with a header row of ``COLUMNS``."""
    faker = Faker("en_GB")
    faker.seed_instance(seed)
    given = [faker.first_name() for _ in range(_POOL)]
    family = [faker.last_name() for _ in range(_POOL)]
    streets = [faker.street_name() for _ in range(_POOL)]
    towns = [faker.city() for _ in range(_POOL // 4)]
    postcodes = [faker.postcode() for _ in range(_POOL * 4)]
    # Reproducible synthetic data, not secrets: a seeded generator is the point.
    rng = random.Random(seed)
    oldest = REFERENCE_DATE - dt.timedelta(days=95 * 365)
    span = (REFERENCE_DATE - dt.timedelta(days=17 * 365) - oldest).days
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(COLUMNS)
        for start in range(0, count, _ROWS_PER_WRITE):
            writer.writerows(
                (
                    national_id(index),
                    rng.choice(given),
                    rng.choice(family),
                    (oldest + dt.timedelta(days=rng.randrange(span))).isoformat(),
                    f"{rng.randint(1, 240)} {rng.choice(streets)}, {rng.choice(towns)}",
                    rng.choice(postcodes),
                )
                for index in range(start, min(start + _ROWS_PER_WRITE, count))
            )
    return path
