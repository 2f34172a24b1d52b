"""Life events, lived by department systems over HTTP. How the departments hear of the
changes and act on them is in ``notifications.py``.

- **Moving house.** The citizen tells DVLA once. DVLA writes the new address to the
  register under its delegated ``write`` agreement. Every department subscribed to the
  address hears of it by webhook or by the event feed, and reads the new value for its
  purpose instead of writing to the citizen.
- **A death, registered once.** The register writes the date of death (the status becomes
  ``deceased``). DWP stops the benefit, DVLA cancels the licence and HMPO cancels the
  passport, each acting on the event: it reads the date of death for ``bereavement`` and
  writes its own field.
- **A driving licence renewal.** DVLA verifies the applicant is old enough without seeing
  the date of birth, reads the address, and renews.
- **A benefit claim.** DWP checks the right to reside, reads the licence status and the
  council tax band, and records the claim.
- **Discretionary support.** The council's support scheme may read a benefit status
  only with the citizen's consent: it is refused (``consent-required``), most applicants
  then consent through the citizen portal and the council asks again, and they revoke the
  consent once the application is decided.
- **The open register.** HMRC checks the open edition of the electoral register; some
  electors have opted out through the citizen portal, and are withheld.
- **A fraud investigation.** DWP reads a citizen's tax code under HMRC's agreement for
  fraud cases, which delays disclosure: each read names its case, and the citizen's access
  log and the portal's notices show it only once DWP closes the case (the first case is
  closed when the traffic stops) or a year has passed.
- **Over-reaching.** A wrong purpose, a field no agreement shares, a forbidden field, an
  expired agreement, a missing case reference, and a read after the owner revoked its
  agreement through the policy API. Each is refused and audited.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from faker import Faker

from service.sim.client import DepartmentClient
from service.sim.population import REFERENCE_DATE, Person
from service.sim.tally import Denial, Tally
from service.sim.webhooks import WebhookReceivers

# The agreement the council revokes half-way through. The next run's `policies apply`
# makes it active again, since the file still holds it.
REVOKED_AGREEMENT = "council-tax-band-for-benefits"
# The consent-based and the objectable agreement of the demo government.
SUPPORT_AGREEMENT = "benefits-for-discretionary-support"
OPEN_REGISTER_AGREEMENT = "open-register-for-address-checks"
# How often each life event happens, relative to the others.
WEIGHTS = {
    "move": 8,
    "renewal": 5,
    "claim": 5,
    "death": 2,
    "over-reach": 2,
    "support": 3,
    "open-register": 2,
    "fraud": 1,
}
# DWP's fraud cases: a few, each read under several times.
FRAUD_CASES = 3
# Keep at most this many examples of each kind of refusal for the report.
DENIAL_EXAMPLES = 2


@dataclass
class DemoCitizen:
    """A citizen the demo can pick: the register knows the id, other departments look it up."""

    person: Person
    citizen_id: str

    @property
    def national_id(self) -> str:
        return self.person.national_id


@dataclass
class Government:
    """The simulated department systems and what they know."""

    systems: dict[str, DepartmentClient]
    owners: dict[str, DepartmentClient]
    auditor: DepartmentClient
    citizens: list[DemoCitizen]
    tally: Tally
    receivers: WebhookReceivers
    seed: int
    rng: random.Random = field(init=False)
    faker: Faker = field(init=False)
    by_id: dict[str, DemoCitizen] = field(init=False)
    deceased: set[str] = field(default_factory=set)
    # Departments a citizen told directly about their latest change; any other department
    # that hears of it by event is a re-telling avoided.
    told: dict[str, set[str]] = field(default_factory=dict)
    # The case references DWP's fraud reads were made under, in the order first used.
    fraud_cases: list[str] = field(default_factory=list)
    revocation_started: bool = False
    revoked: bool = False
    feeds: dict[str, str | None] = field(default_factory=dict)
    # Citizens holding an open consent to the support scheme, and electors who opted out of
    # the open register: marked before the call, so two workers never ask twice (a 409).
    consenting: set[str] = field(default_factory=set)
    objected: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.faker = Faker("en_GB")
        self.faker.seed_instance(self.seed + 1)
        self.by_id = {c.citizen_id: c for c in self.citizens}

    def pick(self, predicate: Callable[[DemoCitizen], bool] = lambda _c: True) -> DemoCitizen | None:
        for _attempt in range(50):
            citizen = self.rng.choice(self.citizens)
            if citizen.citizen_id not in self.deceased and predicate(citizen):
                return citizen
        return None

    def deny(self, department: str, attempt: str, status: int) -> None:
        if status not in (403, 404):
            return
        if sum(1 for d in self.tally.denials if d.attempt == attempt) < DENIAL_EXAMPLES:
            self.tally.denials.append(Denial(department, attempt, status))
        self.tally.life_events["over-reach refused"] += 1


# --- life events ------------------------------------------------------------------------


async def move_house(gov: Government) -> None:
    citizen = gov.pick()
    if citizen is None:
        return
    dvla = gov.systems["dvla"]
    citizen_id = await dvla.lookup(citizen.national_id, "identity-verification")
    if citizen_id is None:
        return
    address = f"{gov.faker.building_number()} {gov.faker.street_name()}, {gov.faker.city()}"
    gov.told[citizen_id] = {"dvla"}
    response = await dvla.write(
        citizen_id,
        {"address": address, "postcode": gov.faker.postcode()},
        "the citizen told DVLA of a new address",
        purpose="address-update",
    )
    if response.ok:
        gov.tally.life_events["moved house"] += 1


async def register_death(gov: Government) -> None:
    citizen = gov.pick()
    if citizen is None:
        return
    gov.deceased.add(citizen.citizen_id)
    gov.told[citizen.citizen_id] = {"register"}
    register = gov.systems["register"]
    response = await register.write(
        citizen.citizen_id, {"date_of_death": REFERENCE_DATE.isoformat()}, "death registered"
    )
    if response.ok:
        gov.tally.life_events["death registered"] += 1


async def renew_licence(gov: Government) -> None:
    citizen = gov.pick(lambda c: "dvla" in c.person.owned)
    if citizen is None:
        return
    dvla = gov.systems["dvla"]
    purpose = "licence-administration"
    citizen_id = await dvla.lookup(citizen.national_id, purpose)
    if citizen_id is None:
        return
    adult = REFERENCE_DATE.replace(year=REFERENCE_DATE.year - 17)
    verified = await dvla.verify(citizen_id, purpose, {"date_of_birth": {"lte": adult.isoformat()}})
    if verified.value is None or not verified.value.results.get("date_of_birth"):
        return
    address = await dvla.read_values(citizen_id, ["address", "postcode"], purpose)
    if address is None:
        return
    response = await dvla.write(citizen_id, {"licence_status": "valid"}, "licence renewed")
    if response.ok:
        gov.tally.life_events["licence renewed"] += 1


async def claim_benefit(gov: Government) -> None:
    citizen = gov.pick()
    if citizen is None:
        return
    dwp = gov.systems["dwp"]
    purpose = "benefit-eligibility"
    citizen_id = await dwp.lookup(citizen.national_id, purpose)
    if citizen_id is None:
        return
    resides = await dwp.verify(
        citizen_id, purpose, {"immigration_status": {"in": ["citizen", "settled", "pre-settled"]}}
    )
    if not resides.ok:
        return
    # Partial answers are normal: after the revocation the band is withheld, with the reason.
    evidence = await dwp.read(citizen_id, ["licence_status", "council_tax_band"], purpose)
    if not evidence.ok:
        return
    response = await dwp.write(citizen_id, {"benefit_status": "claimed"}, "benefit claimed")
    if response.ok:
        gov.tally.life_events["benefit claimed"] += 1


async def apply_for_support(gov: Government, *, will_consent: bool | None = None) -> None:
    """A citizen applies to the council's discretionary support scheme, which may read their
    benefit status only with their consent: refused at first, then (for most applicants,
    or as ``will_consent`` says) the citizen consents through the portal, the council asks
    again, and the citizen revokes the consent once the application is decided."""
    citizen = gov.pick()
    if citizen is None:
        return
    portal, council = gov.systems["citizen-portal"], gov.systems["council"]
    purpose = "discretionary-support"
    read = await council.read(citizen.citizen_id, ["benefit_status"], purpose)
    consent_id: str | None = None
    if read.problem == "consent-required":
        gov.tally.refused_for_consent += 1
        consents = gov.rng.random() < 0.6 if will_consent is None else will_consent
        if consents and citizen.citizen_id not in gov.consenting:
            gov.consenting.add(citizen.citizen_id)
            given = await portal.give_consent(citizen.citizen_id, SUPPORT_AGREEMENT)
            if given.value is not None:
                consent_id = given.value.id
                gov.tally.actions["citizen consented to the support scheme"] += 1
                read = await council.read(citizen.citizen_id, ["benefit_status"], purpose)
    if read.ok:
        gov.tally.life_events["support application assessed"] += 1
    if consent_id is not None:
        revoked = await portal.change_consent(citizen.citizen_id, consent_id, "revoked")
        if revoked.ok:
            gov.tally.actions["citizen revoked a consent"] += 1
            gov.consenting.discard(citizen.citizen_id)


async def check_open_register(gov: Government) -> None:
    """HMRC checks an elector in the open register; some electors opted out first."""
    citizen = gov.pick()
    if citizen is None:
        return
    portal = gov.systems["citizen-portal"]
    if gov.rng.random() < 0.3 and citizen.citizen_id not in gov.objected:
        gov.objected.add(citizen.citizen_id)
        # An elector who opted out in an earlier run of the demo on this store already has.
        if OPEN_REGISTER_AGREEMENT not in await portal.objections(citizen.citizen_id):
            objected = await portal.object_to(citizen.citizen_id, OPEN_REGISTER_AGREEMENT)
            if objected.ok:
                gov.tally.actions["elector opted out of the open register"] += 1
    read = await gov.systems["hmrc"].read(citizen.citizen_id, ["electoral_registered"], "open-register")
    if read.ok:
        gov.tally.life_events["open register checked"] += 1
    elif read.status == 403:
        gov.tally.withheld_for_objection += 1


async def investigate_fraud(gov: Government) -> None:
    """DWP reads a tax code for a fraud investigation, naming its case: HMRC's agreement
    keeps such reads from the citizen until the case is closed."""
    citizen = gov.pick(lambda c: "hmrc" in c.person.owned)
    if citizen is None:
        return
    dwp = gov.systems["dwp"]
    citizen_id = await dwp.lookup(citizen.national_id, "benefit-eligibility")
    if citizen_id is None:
        return
    case_ref = f"FRAUD-{gov.seed}-{gov.rng.randrange(FRAUD_CASES) + 1}"
    read = await dwp.read(citizen_id, ["tax_code"], "fraud-investigation", case_ref=case_ref)
    if read.ok:
        if case_ref not in gov.fraud_cases:
            gov.fraud_cases.append(case_ref)
        gov.tally.life_events["fraud investigation read"] += 1


async def close_first_case(gov: Government) -> None:
    """DWP closes the first fraud case it opened: its reads are now disclosed to the citizens."""
    if not gov.fraud_cases:
        return
    closed = await gov.systems["dwp"].close_case(gov.fraud_cases[0])
    if closed.ok:
        gov.tally.actions["DWP closed a fraud case"] += 1


async def _overreach_read(
    gov: Government,
    department: str,
    attempt: str,
    fields: Sequence[str],
    purpose: str,
    *,
    lookup_purpose: str | None = None,
) -> None:
    citizen = gov.pick()
    if citizen is None:
        return
    system = gov.systems[department]
    citizen_id: str | None = citizen.citizen_id
    if lookup_purpose is not None:
        citizen_id = await system.lookup(citizen.national_id, lookup_purpose)
        if citizen_id is None:
            return
    response = await system.read(citizen_id or citizen.citizen_id, fields, purpose)
    gov.deny(department, attempt, response.status)


async def over_reach(gov: Government) -> None:
    attempts: list[Callable[[], Awaitable[None]]] = [
        lambda: _overreach_read(
            gov,
            "dwp",
            "tax code for benefit eligibility (wrong purpose)",
            ["tax_code"],
            "benefit-eligibility",
            lookup_purpose="benefit-eligibility",
        ),
        lambda: _overreach_read(
            gov,
            "council",
            "date of birth for council tax (forbidden)",
            ["date_of_birth"],
            "council-tax",
            lookup_purpose="council-tax",
        ),
        lambda: _overreach_read(
            gov,
            "hmrc",
            "licence status (agreement expired in 2020)",
            ["licence_status"],
            "tax-administration",
            lookup_purpose="tax-administration",
        ),
        lambda: _overreach_read(
            gov,
            "citizen-portal",
            "an address (no agreement)",
            ["address"],
            "identity-verification",
        ),
        lambda: _lookup_without_case_ref(gov),
    ]
    if gov.revoked:
        attempts.append(
            lambda: _overreach_read(
                gov,
                "dwp",
                "council tax band after the council revoked its agreement",
                ["council_tax_band"],
                "benefit-eligibility",
                lookup_purpose="benefit-eligibility",
            )
        )
    await gov.rng.choice(attempts)()


async def _lookup_without_case_ref(gov: Government) -> None:
    citizen = gov.pick()
    if citizen is None:
        return
    system = gov.systems["home-office"]
    response = await system.lookup_outcome(citizen.national_id, "immigration-control")
    gov.deny("home-office", "look-up without the required case reference", response.status)


LIFE_EVENTS: dict[str, Callable[[Government], Awaitable[None]]] = {
    "move": move_house,
    "renewal": renew_licence,
    "claim": claim_benefit,
    "death": register_death,
    "over-reach": over_reach,
    "support": apply_for_support,
    "open-register": check_open_register,
    "fraud": investigate_fraud,
}


# --- the timed run ----------------------------------------------------------------------


async def revoke(gov: Government) -> None:
    """The council withdraws an agreement through the policy API; it applies at once."""
    response = await gov.owners["council"].revoke(REVOKED_AGREEMENT)
    if response.ok:
        gov.revoked = True
        gov.tally.actions["council revoked an agreement"] += 1


async def live(gov: Government, duration: float, workers: int) -> None:
    """Run life events on ``workers`` concurrent department systems for ``duration`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + duration
    revoke_at = loop.time() + duration / 2
    kinds = list(WEIGHTS)
    weights = [WEIGHTS[k] for k in kinds]
    # One applicant to the support scheme first, who consents when refused: the story of a
    # consent-based agreement is told in every run, however short.
    await apply_for_support(gov, will_consent=True)

    async def worker() -> None:
        while loop.time() < deadline:
            if not gov.revocation_started and loop.time() >= revoke_at:
                gov.revocation_started = True  # set before awaiting, so only one worker revokes
                await revoke(gov)
            kind = gov.rng.choices(kinds, weights)[0]
            await LIFE_EVENTS[kind](gov)

    await asyncio.gather(*(worker() for _ in range(workers)))
    await close_first_case(gov)


async def settle(gov: Government, *, quiet: float, limit: float) -> None:
    """Wait until no notification arrived for ``quiet`` seconds, or ``limit`` passed."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    last_total = -1
    last_change = loop.time()
    while loop.time() < deadline:
        total = gov.tally.total_notifications + gov.tally.access_notices
        if total != last_total or not gov.receivers.deliveries.empty():
            last_total, last_change = total, loop.time()
        elif loop.time() - last_change >= quiet:
            return
        await asyncio.sleep(0.1)
